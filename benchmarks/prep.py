"""Prep of the default model over all 60k Fashion-MNIST training images vs one training epoch.

Both run in this process with the same thread count, one after the other:
    .venv/bin/python benchmarks/prep.py [--threads 1] [--stages ...] [--device cuda]
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
    p.add_argument("--device", default="cpu", help="cpu or cuda: both the training epoch and prep run there")
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.exit(2, f"--device {a.device}: CUDA is not available on this machine\n")
    torch.set_num_threads(a.threads)
    _, acc, epoch_s = train(epochs=1, threads=a.threads, log=lambda m: None, device=a.device)
    epoch = epoch_s[0]
    print(f"[{a.device}] one training epoch (60k images, {a.threads} thread(s)): {epoch:.1f} s "
          f"(test acc after 1 epoch {acc:.3f})")
    cfg_path = REPO_DIR / "prepped_models" / "fmnist.toml"
    cfg = load_config(cfg_path, {"run.stages": a.stages, "run.device": a.device}, base_dir=cfg_path.parent)
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
