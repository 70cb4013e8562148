"""``viscnn circuit``: scores for a target over an image set, a thresholded circuit, and its faithfulness.

  viscnn circuit --model SPEC [--weights FILE] --target SPEC --images SPEC [--metric taylor]
                 (--mass 0.9 | --keep 0.05 | --min-score X) [--out FILE.json|FILE.html]
"""

from __future__ import annotations

import json


def add_circuit_cmd(sub) -> None:
    from viscnn.cli import add_model_args
    from viscnn.importance.metrics import METRICS

    p = sub.add_parser("circuit", help="extract the circuit of kernels behind a target and report its faithfulness")
    add_model_args(p)
    p.add_argument("--target", required=True, help="loss | class:K | class:NAME | unit:LAYER:CH | neuron:LAYER:CH:Y:X | "
                                                  "linear combinations such as 'unit:features.8:3 - 0.5*unit:features.8:9'")
    p.add_argument("--images", required=True, help="folder:PATH | PATH | tensor:FILE.pt | random:N[:SEED] | "
                                                  "fmnist:train|test[:CLASS][:N] | torchvision:NAME:ROOT")
    p.add_argument("--metric", default="taylor", choices=METRICS)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--mass", type=float, help="per layer, keep the edges holding this fraction of the |score| mass")
    g.add_argument("--keep", type=float, help="keep the top K edges (K >= 1) or this fraction of all edges (0 < K < 1)")
    g.add_argument("--min-score", type=float, help="keep edges with |score| >= this")
    p.add_argument("--out", help="write the circuit JSON (with the faithfulness report) to FILE.json, or a "
                                 "standalone HTML view of it to FILE.html")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="input size (default: prepped model's, else 224 224)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, help="use at most this many images")
    p.add_argument("--random-circuits", type=int, default=5, help="random circuits of equal size to compare with")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _model_context(args):
    """(model, graph, classes, normalize, input shape) for a model spec."""
    from viscnn.graph import build_graph
    from viscnn.graph.build import infer_input_channels
    from viscnn.model_spec import load_model, prepped_input_shape, prepped_manifest

    model = load_model(args.model, args.weights, args.models_dir)
    shape = prepped_input_shape(args.model, args.models_dir)
    meta = prepped_manifest(args.model, args.models_dir) or {}
    classes, normalize = meta.get("classes"), meta.get("normalize")
    c = shape[0] if shape else infer_input_channels(model)
    hw = tuple(args.input_size) if args.input_size else (tuple(shape[1:]) if shape else (224, 224))
    from viscnn.errors import UnsupportedOperationError

    try:  # class nodes when the logits are a Linear of conv channels; else conv layers only
        graph = build_graph(model, hw, in_channels=c, include_classes=True, model_name=args.model)
    except UnsupportedOperationError:
        graph = build_graph(model, hw, in_channels=c, model_name=args.model)
    return model, graph, classes, normalize, (c, *hw)


def run(args) -> int:
    from viscnn.data import open_images
    from viscnn.errors import ViscnnError
    from viscnn.importance.accumulate import compute_scores
    from viscnn.importance.circuits import extract_circuit
    from viscnn.importance.faithfulness import faithfulness
    from viscnn.importance.targets import parse_target
    from viscnn.io import atomic_write_text

    model, graph, classes, normalize, shape = _model_context(args)
    src = open_images(args.images, shape)
    if classes is None and src.classes:
        classes = src.classes
    target = parse_target(args.target, graph, classes)
    if args.keep is not None and args.keep >= 1:
        if not float(args.keep).is_integer():
            raise ViscnnError(f"--keep {args.keep}: give a whole number of edges or a fraction below 1")
        keep = int(args.keep)
    else:
        keep = args.keep
    batches = lambda: src.batches(args.batch_size, shape, normalize, args.limit)
    scores = compute_scores(model, graph, target, batches(), [args.metric], device=args.device, classes=classes)
    ns, es = scores[args.metric]
    circuit = extract_circuit(graph, ns, es, mass=args.mass, keep=keep, min_score=args.min_score,
                              target_nodes=target.sink_nodes(graph))
    circuit.settings.update({"metric": args.metric, "target": str(target), "images": args.images, "model": args.model})
    rep = faithfulness(model, graph, target, circuit, batches(), n_random=args.random_circuits, device=args.device)
    f, r = rep["circuit"], rep["random"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    print(f"circuit for {target} on {rep['images']} images ({args.metric}, {circuit.settings['rule']}): "
          f"{len(circuit.nodes)} nodes, {len(circuit.edges)} of {graph.num_edges} kernels "
          f"({100 * len(circuit.edges) / max(graph.num_edges, 1):.2f}%)")
    if not len(circuit.edges):
        import sys

        print("warning: the circuit is empty: no path from the input to the target survives this threshold; "
              "loosen it (a larger --keep or --mass, a lower --min-score)", file=sys.stderr)
    print(f"faithfulness   pearson {fmt(f['pearson'])}  spearman {fmt(f['spearman'])}  relative error {fmt(f['relative_error'])}")
    print(f"random x{args.random_circuits:<3}   pearson {fmt(r['pearson'])}  spearman {fmt(r['spearman'])}  "
          f"relative error {fmt(r['relative_error'])}  (mean of random circuits with the same kernels per layer)")
    if args.out and str(args.out).lower().endswith((".html", ".htm")):
        _write_html(args, graph, circuit, model, rep)
    elif args.out:
        d = circuit.to_json(graph)
        d["faithfulness"] = rep
        atomic_write_text(args.out, json.dumps(d))
        print(f"wrote {args.out}")
    return 0


def _write_html(args, graph, circuit, model, report) -> None:
    """The same standalone HTML the app's "Export snapshot" writes, with prepped pictures when the
    model is a prepped one."""
    from viscnn.app.snapshot import write_snapshot_html
    from viscnn.prepped import PreppedModel, list_models

    prepped = PreppedModel.open(args.model, args.models_dir) if args.model in list_models(args.models_dir) else None
    settings = dict(circuit.settings, faithfulness=report)
    write_snapshot_html(args.out, graph, circuit, prepped=prepped, model=model, settings=settings,
                        title=f"{args.model}: circuit for {circuit.settings.get('target')}")
    print(f"wrote {args.out}")
