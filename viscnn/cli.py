"""The ``viscnn`` command: one subcommand per module in ``viscnn/commands``.

User errors (:class:`ViscnnError`) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from viscnn.errors import ViscnnError


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="torchvision:NAME[:WEIGHTS], path/to/file.py:factory, or a prepped model name")
    p.add_argument("--weights", help="state_dict file to load (torch.load weights_only=True)")
    p.add_argument("--models-dir", help="folder of prepped models (default: the repo's prepped_models/)")


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
        return args.func(args) or 0
    except ViscnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
