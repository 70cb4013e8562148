"""``viscnn prep CONFIG.toml [flags]``: every config key can also be given as a flag (a flag's paths are
relative to the current directory, the file's to the file)."""

from __future__ import annotations

import argparse
from pathlib import Path

FLAGS = {  # flag -> (dotted config key, type)
    "--name": ("name", str), "--model": ("model", str), "--weights": ("weights", str),
    "--data-kind": ("data.kind", str), "--data-root": ("data.root", str), "--split": ("data.split", str),
    "--dataset": ("data.dataset", str), "--images-per-class": ("data.images_per_class", int),
    "--bad-images": ("data.bad_images", str),
    "--batch-size": ("run.batch_size", int), "--device": ("run.device", str), "--seed": ("run.seed", int),
    "--featurevis-steps": ("featurevis.steps", int), "--exemplars-k": ("exemplars.k", int),
    "--app-images-per-class": ("app.images_per_class", int),
    "--sparse-scores": ("run.sparse_scores", str), "--sparse-max-fraction": ("run.sparse_max_fraction", float),
    "--class-kernel-score": ("run.class_kernel_score", str),
}


def add_prep_cmd(sub) -> None:
    p = sub.add_parser("prep", help="preprocess a model into prepped_models/NAME (resumable; torchrun for many processes)")
    p.add_argument("config", nargs="?", help="TOML config file (flags override its keys)")
    for flag, (key, typ) in FLAGS.items():
        p.add_argument(flag, type=typ, dest=key.replace(".", "__"), help=f"config key {key}")
    p.add_argument("--stages", nargs="+", help="stages to run (default: all)")
    p.add_argument("--metrics", nargs="+", help="score metrics to compute")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="preprocess.size")
    p.add_argument("--channels", type=int, help="preprocess.channels")
    p.add_argument("--mean", nargs="+", type=float, help="preprocess.mean")
    p.add_argument("--std", nargs="+", type=float, help="preprocess.std")
    p.add_argument("--featurevis-layers", nargs="+", metavar="LAYER", help="featurevis.layers (default: all conv layers)")
    p.add_argument("--out", "--models-dir", dest="out",
                   help="models folder to write NAME/ into (default: models_dir in the config, else prepped_models/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from viscnn.prep import load_config, run_prep

    over = {key: getattr(args, key.replace(".", "__")) for key, _ in FLAGS.values()}
    over.update({"run.stages": args.stages, "run.metrics": args.metrics, "preprocess.size": args.size,
                 "preprocess.channels": args.channels, "preprocess.mean": args.mean, "preprocess.std": args.std,
                 "featurevis.layers": args.featurevis_layers})
    # relative paths inside a config file are relative to that file; flags are relative to the cwd
    base = Path(args.config).resolve().parent if args.config else Path.cwd()
    for key in ("weights", "data.root"):
        if over.get(key):
            over[key] = str(Path(over[key]).resolve())
    if over.get("model"):
        from viscnn.model_spec import resolve_spec

        over["model"] = resolve_spec(over["model"], Path.cwd())
    cfg = load_config(args.config, over, base_dir=base)
    out = run_prep(cfg, Path(args.out) if args.out else None)
    print(f"prepped {cfg.name} -> {out}")
    return 0
