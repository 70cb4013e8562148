"""``viscnn artifacts``: mean feature maps under a baseline, drill-down, mean patch vs mean kernel,
padding audit, and a second input size or model side by side.

  viscnn artifacts --model SPEC [--weights F] [--models-dir D] --input-size H W [--baseline SPEC]
                   [--images SPEC] [--compare-size H W | --compare-model SPEC] --out DIR
  viscnn artifacts --model SPEC --input-size H W --padding [--json]

``--out DIR`` gets ``artifacts.json`` (every number; written to a temp file, then renamed),
``drilldown.npy`` (the drill-down layer's channel maps, float32 [C, H, W]) and PNG figures:
``mean_maps.png``, ``drilldown.png``, ``patches.png``, ``padding.png`` (and ``compare.png``,
``patches_b.png``, ``padding_b.png`` with a comparison).

Normalisation: a prepped model's manifest ``normalize``; ImageNet's mean/std for a 3-channel
torchvision model; none otherwise; ``--mean``/``--std`` override.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_artifacts_cmd(sub) -> None:
    from viscnn.artifacts.taps import STAGES
    from viscnn.cli import add_model_args

    p = sub.add_parser("artifacts", help="feature-map artifacts: mean maps, drill-down, mean patch vs kernel, padding audit")
    add_model_args(p)
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="input size (default: prepped model's, else 224 224)")
    p.add_argument("--in-channels", type=int, help="input channels (default: prepped model's, else the first conv's)")
    p.add_argument("--baseline", default="random:8", help="random:K[:SEED] | zero | black | white | "
                   "stimulus:dot|square|bar|hbar|vbar|checker[:size=,y=,x=,length=,extent=,orient=,bg=,contrast=] | "
                   "images:IMAGESPEC | images (= --images) (default random:8)")
    p.add_argument("--images", help="image set for the mean patches (as viscnn circuit --images); default: "
                                    "uniform random images")
    p.add_argument("--patch-images", type=int, default=256, help="images averaged for the mean patches (default 256)")
    p.add_argument("--stage", default="conv", choices=STAGES, help="map after the conv, its activation, or its pooling")
    p.add_argument("--layer", help="drill-down layer (a conv module path; default: the highest-scoring mean map)")
    p.add_argument("--per-map-scale", action="store_true", help="drill-down: scale each map on its own")
    p.add_argument("--mean", help="normalisation mean per channel, comma separated (pixels in [0, 1])")
    p.add_argument("--std", help="normalisation std per channel, comma separated")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--compare-size", nargs=2, type=int, metavar=("H", "W"), help="the same analysis at a second input size")
    g.add_argument("--compare-model", help="the same analysis for a second model spec")
    p.add_argument("--compare-weights", help="state_dict for --compare-model")
    p.add_argument("--padding", action="store_true", help="only the padding audit (printed; see --json)")
    p.add_argument("--json", action="store_true", help="with --padding: print the audit as one JSON object")
    p.add_argument("--search", type=int, default=256, help="padding audit: how far to search for clean sizes (default 256)")
    p.add_argument("--out", help="output folder (required unless --padding)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _floats(text: str, what: str) -> list:
    from viscnn.errors import ViscnnError

    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ViscnnError(f"--{what} {text!r}: expected numbers separated by commas") from None
    if not vals or (what == "std" and min(vals) <= 0):
        raise ViscnnError(f"--{what} {text!r}: expected {'positive ' if what == 'std' else ''}numbers separated by commas")
    return vals


def _context(spec: str, weights, models_dir, input_size, in_channels, mean=None, std=None):
    """(model, (C, H, W), normalize) for a model spec."""
    from viscnn.artifacts.analysis import IMAGENET
    from viscnn.errors import ViscnnError
    from viscnn.graph.build import infer_input_channels
    from viscnn.model_spec import load_model, prepped_input_shape, prepped_manifest

    model = load_model(spec, weights, models_dir)
    shape = prepped_input_shape(spec, models_dir)
    normalize = (prepped_manifest(spec, models_dir) or {}).get("normalize")
    c = in_channels or (shape[0] if shape else infer_input_channels(model))
    hw = tuple(input_size) if input_size else (tuple(shape[1:]) if shape else (224, 224))
    if min(hw) < 1:
        raise ViscnnError(f"input size {hw[0]}x{hw[1]} is not a valid image size")
    if normalize is None and spec.startswith("torchvision:") and c == 3:
        normalize = IMAGENET
    if mean or std:
        if not (mean and std):
            raise ViscnnError("give both --mean and --std")
        normalize = {"mean": _floats(mean, "mean"), "std": _floats(std, "std")}
    return model, (c, *hw), normalize


def _baseline(args) -> str:
    from viscnn.errors import ViscnnError

    b = args.baseline.strip()
    if b == "images":
        if not args.images:
            raise ViscnnError("--baseline images needs --images SPEC")
        return f"images:{args.images}"
    return b


def run(args) -> int:
    from viscnn.artifacts.padding import PaddingAuditor
    from viscnn.errors import ViscnnError

    model, shape, normalize = _context(args.model, args.weights, args.models_dir, args.input_size, args.in_channels,
                                       args.mean, args.std)
    if args.padding:
        report = PaddingAuditor(model, shape[0], args.model).report(shape[1:], args.search)
        if args.compare_size:
            report["compare"] = PaddingAuditor(model, shape[0], args.model).report(tuple(args.compare_size), args.search)
        if args.json:
            print(json.dumps(report))
        else:
            _print_padding(report)
            if args.compare_size:
                _print_padding(report["compare"])
        return 0
    if args.json:
        raise ViscnnError("--json goes with --padding; the full analysis is written to --out DIR/artifacts.json")
    if not args.out:
        raise ViscnnError("--out DIR is required (or use --padding for the padding audit alone)")
    if args.compare_weights and not args.compare_model:
        raise ViscnnError("--compare-weights goes with --compare-model")
    return _full(args, model, shape, normalize)


def _full(args, model, shape, normalize) -> int:
    import numpy as np

    from viscnn.artifacts import compare as C
    from viscnn.artifacts import figures as FG
    from viscnn.artifacts.analysis import analyse, check_layer
    from viscnn.artifacts.baselines import baseline_batches
    from viscnn.io import atomic_save_npy, atomic_write_text

    baseline = _baseline(args)
    next(iter(baseline_batches(baseline, shape, normalize, 1, 1)))  # bad baseline: fail before any work
    check_layer(model, args.layer)
    kw = dict(images=args.images, patch_images=args.patch_images, stage=args.stage, batch_size=args.batch_size,
              device=args.device, search=args.search)
    other = None
    if args.compare_size or args.compare_model:  # validate the second setting before the long first run
        if args.compare_model:
            mb, shape_b, norm_b = _context(args.compare_model, args.compare_weights, args.models_dir,
                                           args.input_size, args.in_channels, args.mean, args.std)
            label_b = args.compare_model
        else:
            mb, shape_b, norm_b = model, (shape[0], *args.compare_size), normalize
            label_b = f"{args.compare_size[0]}x{args.compare_size[1]}"
        from viscnn.artifacts.padding import PaddingAuditor

        PaddingAuditor(mb, shape_b[0], label_b).audit(shape_b[1:])
        other = (mb, shape_b, norm_b, label_b)
    a = analyse(model, shape, normalize, baseline, layer=args.layer, model_name=args.model, **kw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = f"{shape[1]}x{shape[2]}"
    figures = ["mean_maps.png", "patches.png", "padding.png"]
    FG.layer_strip(a.mean_maps, out / "mean_maps.png", f"{args.model} at {size}: mean {args.stage} maps, baseline {baseline}")
    FG.patch_kernel_table(a.patches, out / "patches.png",
                          f"{args.model} at {size}: mean input patch (minus its mean) | mean kernel, over {a.patch_source}")
    FG.padding_table(a.padding, out / "padding.png", f"{args.model}: padding audit at {size}")
    doc = a.to_json()
    if a.drill is not None:
        order, scores = a.drill_order, a.drill_scores
        FG.drill_grid(a.drill.maps, order, scores, out / "drilldown.png",
                      f"{a.drill.layer} ({a.drill.title.replace(chr(215), 'x')}, {len(order)} ch, by {a.score_name})", shared=not args.per_map_scale)
        atomic_save_npy(out / "drilldown.npy", a.drill.maps.astype(np.float32))
        doc["drilldown"]["maps_file"] = "drilldown.npy"
        figures.insert(1, "drilldown.png")
    if other is not None:
        mb, shape_b, norm_b, label_b = other
        b = analyse(mb, shape_b, norm_b, baseline, drill=False, model_name=args.compare_model or args.model, **kw)
        rows = C.compare_mean_maps(a.mean_maps, b.mean_maps)
        labels = (size if args.compare_size else args.model, label_b)
        FG.compare_figure(rows, out / "compare.png", labels)
        FG.patch_kernel_table(b.patches, out / "patches_b.png", f"{label_b}: mean input patch (minus its mean) | mean kernel")
        FG.padding_table(b.padding, out / "padding_b.png", f"{label_b}: padding audit")
        figures += ["compare.png", "patches_b.png", "padding_b.png"]
        bj = b.to_json()
        doc["compare"] = {"label_a": labels[0], "label_b": labels[1], "input_shape": list(shape_b),
                          "padding": bj["padding"], "mean_maps": C.rows_to_json(rows),
                          "patches": bj["patches"], "patch_asymmetry": C.compare_patches(a.patches, b.patches),
                          "padding_rows": C.compare_padding(a.padding, b.padding)}
    doc["figures"] = figures
    atomic_write_text(out / "artifacts.json", json.dumps(doc))
    flagged = [e["layer"] for e in a.padding["padding"] if e["unused_pad"]["bottom"] or e["unused_pad"]["right"]]
    print(f"{args.model} at {size}: {len(a.mean_maps)} conv layers, baseline {baseline}, "
          f"patches over {a.patch_source}; {len(flagged)} layers leave padding unused"
          + (f" ({', '.join(flagged[:6])}{' ...' if len(flagged) > 6 else ''})" if flagged else ""))
    if a.drill is not None:
        print(f"drill-down: {a.drill.layer}, top channels {a.drill_order[:5]} by {a.score_name}")
    print(f"wrote {out / 'artifacts.json'} and {', '.join(figures)}")
    return 0


def _print_padding(report: dict) -> None:
    size = "x".join(map(str, report["input_size"]))
    print(f"padding audit at {size}: {len(report['padding'])} conv/pool layers with stride > 1")
    rows = report["padding"]
    w = max([len(e["layer"]) for e in rows] + [5])
    print(f"{'layer':<{w}}  kind  input    k      s    pad t/b/l/r  unused b/r  unread b/r")
    for e in rows:
        p, u, r = e["pad"], e["unused_pad"], e["unread"]
        flag = "  <-" if u["bottom"] or u["right"] or r["bottom"] or r["right"] else ""
        print(f"{e['layer']:<{w}}  {e['kind']:<4}  {'x'.join(map(str, e['in_size'])):<7}  "
              f"{'x'.join(map(str, e['kernel'])):<5}  {'x'.join(map(str, e['stride'])):<3}  "
              f"{p['top']}/{p['bottom']}/{p['left']}/{p['right']:<6}  {u['bottom']}/{u['right']:<8}  {r['bottom']}/{r['right']}{flag}")
    sizes = ", ".join("x".join(map(str, s)) for s in report["suggested_sizes"]) or "none found"
    print(f"{'no layer leaves padding unused' if report['clean'] else 'padding left unused'}; "
          f"nearest sizes with none unused: {sizes}")
