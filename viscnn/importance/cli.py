"""``viscnn circuit``: scores for a target over an image set, a thresholded circuit, and its faithfulness.

  viscnn circuit --model SPEC [--weights FILE] --target SPEC --images SPEC [--metric taylor]
                 [--method taylor|iterative|learned] (--keep 0.05 | --mass 0.9 | --min-score X)
                 [--measure-images SPEC] [--ablation zero|mean] [--out FILE.json|FILE.html]

``--keep`` counts conv kernels (class-layer edges into the target are free, see
:mod:`viscnn.importance.methods`); ``--mass``/``--min-score`` use the one-shot ``taylor`` method.
Faithfulness is measured on ``--measure-images``, by default the images right after ``--images``
(``fmnist:test:K:200`` -> ``fmnist:test:K:200:200``) when the spec allows, else ``--images``.
"""

from __future__ import annotations

import sys

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
    from viscnn.importance.ablation import ABLATIONS
    from viscnn.importance.methods import DEFAULT_METHOD, METHODS

    p.add_argument("--metric", default="taylor", choices=METRICS)
    p.add_argument("--method", choices=METHODS, help=f"circuit method (default {DEFAULT_METHOD}; taylor with --mass/--min-score)")
    p.add_argument("--step", type=float, default=0.2, help="iterative: fraction of the remaining kernels removed per round")
    p.add_argument("--ablation", default="zero", choices=ABLATIONS, help="removed kernels: zeroed, or replaced by their image-mean map")
    p.add_argument("--measure-images", help="images to measure faithfulness on (default: held out, see above)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--mass", type=float, help="per layer, keep the edges holding this fraction of the |score| mass")
    g.add_argument("--keep", type=float, help="keep K conv kernels (K >= 1) or this fraction of the conv kernels (0 < K < 1)")
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
    from viscnn.importance.faithfulness import heldout_spec
    from viscnn.importance.methods import DEFAULT_METHOD, find_circuit
    from viscnn.importance.strictest import strictest_by_paths

    method = args.method or ("taylor" if keep is None else DEFAULT_METHOD)
    if method != "taylor" and keep is None:
        raise ViscnnError(f"--method {method} needs --keep (a count or fraction of conv kernels); "
                          "--mass and --min-score work with --method taylor only")
    batches = lambda: src.batches(args.batch_size, shape, normalize, args.limit)
    means = None
    if args.ablation == "mean":
        from viscnn.importance.ablation import layer_input_means

        means = layer_input_means(model, graph, batches(), args.device)
    circuit = find_circuit(model, graph, target, batches, method, means=means, keep=keep, mass=args.mass, min_score=args.min_score,
                           metric=args.metric, ablation=args.ablation, step=args.step, device=args.device,
                           progress=None if method == "taylor" else (lambda msg: print(msg, file=sys.stderr, flush=True)))
    mspec = args.measure_images or heldout_spec(args.images)
    msrc = open_images(mspec, shape) if mspec else src
    circuit.settings.update({"metric": args.metric, "target": str(target), "images": args.images, "model": args.model,
                             "measure_images": mspec or args.images})
    rep = faithfulness(model, graph, target, circuit, msrc.batches(args.batch_size, shape, normalize, args.limit),
                       n_random=args.random_circuits, device=args.device, ablation=args.ablation, means=means)
    rep["measure_images"], rep["held_out"] = mspec or args.images, bool(mspec)
    f, r = rep["circuit"], rep["random"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    print(f"circuit for {target} ({method}, {args.metric}, {circuit.settings['rule']}), measured on {rep['images']} "
          f"{'held-out' if mspec else 'of the same'} images ({rep['measure_images']}): "
          f"{len(circuit.nodes)} nodes, {len(circuit.edges)} of {graph.num_edges} kernels "
          f"({100 * len(circuit.edges) / max(graph.num_edges, 1):.2f}%)")
    if not len(circuit.edges):
        hint = ""
        if method == "taylor":
            from viscnn.importance.accumulate import compute_scores

            ns, es = compute_scores(model, graph, target, batches(), [args.metric], device=args.device)[args.metric]
            rule = circuit.settings["rule"]
            v = strictest_by_paths(graph, es, rule, target.sink_nodes(graph))
            if v is not None:
                val = f"{int(v)}" if rule == "keep" else f"{v:.6g}"
                hint = f"; the strictest threshold that keeps a path is --{rule.replace('_', '-')} {val}"
        print("warning: the circuit is empty: no path from the input to the target survives this threshold; "
              "loosen it (a larger --keep or --mass, a lower --min-score)" + hint, file=sys.stderr)
    if not mspec:
        print("note: measured on the images the circuit was found on (no held-out set; give --measure-images)")
    print(f"faithfulness   pearson {fmt(f['pearson'])}  spearman {fmt(f['spearman'])}  relative error {fmt(f['relative_error'])}")
    print(f"random x{args.random_circuits:<3}   pearson {fmt(r['pearson'])}  spearman {fmt(r['spearman'])}  "
          f"relative error {fmt(r['relative_error'])}  (mean of random circuits with the same kernels per layer; "
          f"best pearson {fmt(r['pearson_best'])})")
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
