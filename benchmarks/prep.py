"""Prep of the default model over all 60k Fashion-MNIST training images vs one training epoch.

Both run in this process with the same thread count, one after the other:
    .venv/bin/python benchmarks/prep.py [--threads 1] [--stages ...]
Goal (issue 5): whole prep <= 3x one training epoch.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from viscnn.paths import REPO_DIR
from viscnn.prep import load_config, run_prep
from viscnn.zoo.train_fmnist import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stages", nargs="+")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _, acc, epoch_s = train(epochs=1, threads=a.threads, log=lambda m: None)
    epoch = epoch_s[0]
    print(f"one training epoch (60k images, {a.threads} thread(s)): {epoch:.1f} s (test acc after 1 epoch {acc:.3f})")
    cfg_path = REPO_DIR / "prepped_models" / "fmnist.toml"
    cfg = load_config(cfg_path, {"run.stages": a.stages}, base_dir=cfg_path.parent)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        last = [t0]

        def log(msg):
            if "] done in" in msg:
                stage = msg[1:msg.index("]")]
                now = time.perf_counter()
                times[stage] = now - last[0]
                last[0] = now

        torch.set_num_threads(a.threads)
        run_prep(cfg, Path(tmp), log=log)
        total = time.perf_counter() - t0
    for stage, s in times.items():
        print(f"  prep stage {stage:<10} {s:7.1f} s  ({s / epoch:.2f}x epoch)")
    print(f"whole prep: {total:.1f} s = {total / epoch:.2f}x one training epoch (goal <= 3x)")


if __name__ == "__main__":
    main()
