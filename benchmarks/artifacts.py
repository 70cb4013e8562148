"""Artifact analysis cost on ResNet-50 (random weights, CPU unless --device).

1. Mean maps of every conv layer (53) at 224x224 for 8 uniform random inputs
   (:func:`viscnn.artifacts.mean_maps.mean_maps`, the whole call: working copy, fx trace, taps,
   forward) against one plain no-grad forward of the same 8 images through the model. Times are
   medians, the two runs interleaved so that both see the same machine load. Goal: <= 1.5x.
2. Mean input patches of every conv over N uniform random images at 64x64 (batch 32), N = 128
   and N = 512, each in a fresh process after one warm-up forward: time and extra peak RSS (VmHWM
   after the run minus RSS before it, glibc told to return large blocks so RSS tracks live tensors). Goal: the memory
   does not grow with N (the accumulators are one map per conv input).

Usage: ``python benchmarks/artifacts.py [--quick] [--device cuda] [--repeats 5]``; ``--quick``
runs 2 repeats and patches over 64 vs 256 images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _model():
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


def time_mean_maps(device: str, repeats: int) -> dict:
    import torch

    from viscnn.artifacts.analysis import IMAGENET
    from viscnn.artifacts.baselines import make_baseline
    from viscnn.artifacts.mean_maps import mean_maps

    model = _model().to(device)
    x = make_baseline("random:8", (3, 224, 224), IMAGENET).to(device)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain():
        with torch.no_grad():
            model(x)

    def maps():
        return mean_maps(model, [x], device=device)

    n_layers = len(maps())  # warm-up, both
    plain()
    t = {"plain": [], "mean_maps": []}
    for _ in range(repeats):
        for name, op in (("plain", plain), ("mean_maps", maps)):
            sync()
            t0 = time.perf_counter()
            op()
            sync()
            t[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
    return {"plain_s": med["plain"], "mean_maps_s": med["mean_maps"], "layers": n_layers}


def patches_worker(n: int, size: int, device: str) -> dict:
    from viscnn.artifacts.analysis import IMAGENET
    from viscnn.artifacts.baselines import baseline_batches
    from viscnn.artifacts.patches import mean_patches

    import torch

    model = _model()
    with torch.no_grad():  # warm-up: the first forward in a process builds the conv kernels
        model(next(iter(baseline_batches("random:32", (3, size, size), IMAGENET, 32))).to(device))
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    t0 = time.perf_counter()
    res = mean_patches(model, baseline_batches(f"random:{n}", (3, size, size), IMAGENET, 32), device=device)
    dt = time.perf_counter() - t0
    return {"images": res[0].images, "layers": len(res), "time_s": dt, "extra_mib": (_rss_kib("VmHWM") - base) / 1024}


def _sub(args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 repeats; patches over 64 vs 256 images")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(patches_worker(args.worker[0], args.worker[1], args.device)))
        return 0
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    repeats = 2 if args.quick else args.repeats
    counts = (64, 256) if args.quick else (128, 512)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, median of {repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")
    t = time_mean_maps(args.device, repeats)
    ratio = t["mean_maps_s"] / t["plain_s"]
    print(f"\nResNet-50, 8 random images at 224x224, mean maps of all {t['layers']} conv layers")
    print(f"  plain forward   {t['plain_s'] * 1000:8.1f} ms")
    print(f"  mean maps       {t['mean_maps_s'] * 1000:8.1f} ms   ratio {ratio:.2f}x (goal <= 1.5)")
    rows = [_sub(["--worker", str(n), str(args.patch_size), "--device", args.device]) for n in counts]
    print(f"\nResNet-50, mean input patches of all {rows[0]['layers']} convs, {args.patch_size}x{args.patch_size}, batch 32")
    for r in rows:
        print(f"  {r['images']:4d} images   {r['time_s']:7.2f} s   extra peak RSS {r['extra_mib']:7.1f} MiB")
    growth = rows[1]["extra_mib"] - rows[0]["extra_mib"]
    flat = growth <= max(16.0, 0.1 * rows[0]["extra_mib"])
    print(f"  memory growth {counts[0]} -> {counts[1]} images: {growth:+.1f} MiB ({'flat' if flat else 'GROWS'})")
    ok = ratio <= 1.5 and flat
    print(json.dumps({"mean_maps": dict(t, ratio=ratio), "patches": rows}))
    print("goals met" if ok else "goals NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
