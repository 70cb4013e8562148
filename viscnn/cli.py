"""The ``viscnn`` command: one subcommand per module in ``viscnn/commands``.

User errors (:class:`ViscnnError`) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from viscnn.errors import ViscnnError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model",
                   help="torchvision:NAME[:WEIGHTS][:k=v,...], path/to/file.py:factory, or a prepped model name "
                        "(required unless --config names it)")
    p.add_argument("--weights", help="state_dict file to load (torch.load weights_only=True)")
    p.add_argument("--models-dir", help="folder of prepped models (default: $VISCNN_MODELS_DIR, else the repo's prepped_models/)")
    for c in (p, p._optionals):  # a command's own --mean/--std (viscnn artifacts) replaces these
        c.conflict_handler = "resolve"
    g = p.add_argument_group("preprocessing of a model that is not prepped (a prepped model's manifest has its own)")
    g.add_argument("--config", metavar="FILE.toml",
                   help="take the model, weights, input size, channels, mean/std (and folder classes) from a prep config")
    g.add_argument("--channels", type=int, choices=(1, 3), help="input channels")
    g.add_argument("--mean", nargs="+", type=float, help="per-channel mean the model was trained with (default none)")
    g.add_argument("--std", nargs="+", type=float, help="per-channel std the model was trained with")
    p.set_defaults(_model_args=True)


def apply_model_args(args: argparse.Namespace) -> None:
    """Fill --model/--weights from --config and record the preprocessing, so every command that reads
    ``prepped_manifest(spec)`` (circuit, attribute, featurevis, graph) sees the same input shape and
    normalisation for a file spec as for a prepped model."""
    from viscnn.model_spec import prepped_manifest, set_preprocess

    meta = {}
    if args.config:
        from viscnn.prep import load_config

        cfg = load_config(args.config)
        args.model = args.model or cfg.model_spec()
        if args.weights is None and cfg["weights"]:
            args.weights = str(cfg.path(cfg["weights"]))
        pp = cfg["preprocess"]
        meta = {"input_shape": [pp["channels"], *pp["size"]], "normalize": {"mean": pp["mean"], "std": pp["std"]}}
        classes = _config_classes(cfg)
        if classes:
            meta["classes"] = classes
    if not args.model:
        raise ViscnnError("--model is required (or --config FILE.toml naming one)")
    given = [v if isinstance(v, list) else None for v in (getattr(args, "mean", None), getattr(args, "std", None))]
    if args.channels or any(given):
        c = args.channels or (meta.get("input_shape") or [len(given[0] or given[1] or [])])[0]
        mean = given[0] or [0.0] * c
        std = given[1] or [1.0] * c
        if len(mean) not in (1, c) or len(std) not in (1, c) or min(std) <= 0:
            raise ViscnnError(f"--mean/--std need 1 or {c} values (std > 0); got {mean} / {std}")
        hw = (meta.get("input_shape") or [c, *(getattr(args, "input_size", None) or getattr(args, "size", None) or (224, 224))])[1:]
        meta.update(input_shape=[c, *hw], normalize={"mean": mean, "std": std})
    if meta:
        set_preprocess(args.model, {**(prepped_manifest(args.model, args.models_dir) or {}), **meta})


def _config_classes(cfg):
    d = cfg["data"]
    if d["kind"] == "fashion-mnist":
        from viscnn.data.fashion_mnist import CLASSES

        return list(CLASSES)
    root = cfg.path(d["root"])
    if d["kind"] == "folder" and root.is_dir():
        from viscnn.data.images import scan_class_folders

        return scan_class_folders(root)[0]
    return None


def _serve_defaults(args: argparse.Namespace) -> None:
    """``viscnn serve [--models-dir DIR]`` without a name opens ``fmnist`` if DIR has it, else its first
    model; a half-prepped model is refused with a clear message instead of a blank page."""
    from viscnn.paths import default_models_dir
    from viscnn.prepped import list_models, missing_stages

    root = args.models_dir or default_models_dir()
    models = list_models(root)
    if args.name is None:
        args.name = "fmnist" if "fmnist" in models or not models else models[0]
        return
    if args.name not in models and args.name in list_models(root, include_incomplete=True):
        import json
        from pathlib import Path

        man = json.loads((Path(root) / args.name / "manifest.json").read_text())
        raise ViscnnError(f"prepped model {args.name!r} in {root} is incomplete (stages not done: "
                          f"{', '.join(missing_stages(man))}); rerun `viscnn prep` on its config to finish it")


def _graph_cmd(sub) -> None:
    p = sub.add_parser("graph", help="print per-layer node and kernel-edge counts of a model's graph")
    add_model_args(p)
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="input image size (default 224 224, or the prepped model's)")
    p.add_argument("--in-channels", type=int, help="input image channels (default: the first conv's in_channels)")
    p.add_argument("--classes", action="store_true", help="add the final Linear's outputs as a layer of class nodes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also save the graph (graph.json + edges.npy) to this folder")
    p.set_defaults(func=run_graph)


def run_graph(args) -> int:
    import json

    from viscnn.graph import build_graph
    from viscnn.model_spec import load_model, prepped_input_shape

    model = load_model(args.model, args.weights, args.models_dir)
    shape = prepped_input_shape(args.model, args.models_dir)
    size = tuple(args.input_size) if args.input_size else (tuple(shape[1:]) if shape else (224, 224))
    c_in = args.in_channels or (shape[0] if shape else None)
    g = build_graph(model, size, in_channels=c_in, include_classes=args.classes, model_name=args.model)
    if args.out:
        g.save(args.out)
    s = g.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"{args.model}: input {'x'.join(map(str, s['input_shape']))} ({s['input_nodes']} input-channel nodes, not counted below)")
    w = max(len(l["name"]) for l in s["layers"])
    print(f"{'layer':<{w}}  {'kind':<6} {'nodes':>7} {'edges':>10}  kernel  stride  pad  dil  groups  out")
    for l in s["layers"]:
        print(f"{l['name']:<{w}}  {l['kind']:<6} {l['nodes']:>7} {l['edges']:>10}  "
              f"{'x'.join(map(str, l['kernel_size'])):<6}  {'x'.join(map(str, l['stride'])):<6}  "
              f"{'x'.join(map(str, l['padding'])):<3}  {'x'.join(map(str, l['dilation'])):<3}  {l['groups']:>6}  "
              f"{'x'.join(map(str, l['out_size']))}")
    print(f"total: {s['nodes']} conv nodes, {s['edges']} kernel edges, {s['links']} source links"
          + (f"; class layer: {s['class_nodes']} nodes, {s['class_edges']} edges" if s["class_nodes"] else ""))
    return 0


COMMANDS = [_graph_cmd]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="viscnn", description="A CNN microscope.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    for extra in _optional_commands():
        extra(sub)
    if "serve" in sub.choices:  # no name: the models folder's default model (see _serve_defaults)
        sub.choices["serve"].set_defaults(name=None)
    return p


def _optional_commands():
    """Subcommands registered by later modules (prep, circuit, serve)."""
    import importlib

    out = []
    for mod, fn in (("viscnn.importance.cli", "add_circuit_cmd"), ("viscnn.prep.cli", "add_prep_cmd"),
                    ("viscnn.app.cli", "add_serve_cmd"), ("viscnn.featurevis.cli", "add_featurevis_cmd"),
                    ("viscnn.artifacts.cli", "add_artifacts_cmd"), ("viscnn.attribution.cli", "add_attribute_cmd")):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue
            raise
        out.append(getattr(m, fn))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "_model_args", False):
            apply_model_args(args)
        if args.command == "serve":
            _serve_defaults(args)
        return args.func(args) or 0
    except ViscnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from viscnn.model_spec import clear_preprocess

        clear_preprocess()


if __name__ == "__main__":
    raise SystemExit(main())
