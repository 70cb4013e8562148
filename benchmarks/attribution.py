"""Time and peak memory of viscnn's attribution methods on ResNet-18 (random weights, batch 16,
224x224): Grad-CAM against one plain forward+backward, and every method against Captum's
equivalent, printed as ratios. Integrated gradients and SmoothGrad use 8 points (steps / noisy
samples) and 32 images per forward+backward on both sides.

  plain f+b     forward + backward of the target logits through the model as shipped (weight grads on)
  input-grad    the same with weight gradients off (what a pixel-space method needs at least)
  viscnn        the method on its traced working copy (built once, outside the timing; the
                one-time setup is printed on its own line)
  captum        Captum's class on the user's model (its ReLU hooks work there: nn.ReLU modules)

Time: best of ``--repeats`` alternating runs in this process (both sides see the same load).
Extra memory: peak RSS during one run minus RSS before it, each computation in a fresh process
after one warm-up run (CPU; glibc's mmap threshold fixed so freed tensors leave RSS), or peak
allocated minus allocated before it (CUDA).

Usage: ``python benchmarks/attribution.py [--device cuda] [--quick] [--repeats 3]``
(``--quick``: batch 4 at 112x112, 2 repeats).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

OURS = {"saliency": "Saliency", "input_x_gradient": "InputXGradient", "guided_backprop": "GuidedBackprop",
        "deconvnet": "Deconvolution", "gradcam": "GradCAM", "guided_gradcam": "GuidedGradCAM",
        "integrated_gradients": "IntegratedGradients", "smoothgrad": "SmoothGrad"}
PATH_POINTS = 8  # IG steps and SmoothGrad samples (each a forward+backward of the batch)
PER_PASS = 32  # images per forward+backward for both sides (viscnn internal_batch_size, Captum's batch sizes)
KWARGS = {"integrated_gradients": {"steps": PATH_POINTS, "internal_batch_size": PER_PASS},
          "smoothgrad": {"samples": PATH_POINTS, "internal_batch_size": PER_PASS}}


def _setup(batch: int, size: int, dev: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    target = torch.arange(batch, device=dev) * 37 % 1000
    return model, x, target


def _ops(model, x, target):
    """name -> (setup() -> run callable). Setup is excluded from timing and memory."""

    def plain(weight_grads):
        def setup():
            def run():
                for p in model.parameters():  # every run: other setups share the model
                    p.requires_grad_(weight_grads)
                model.zero_grad(set_to_none=True)
                xx = x.clone().requires_grad_(not weight_grads)
                out = model(xx)
                out.gather(1, target.view(-1, 1)).sum().backward()
            return run
        return setup

    def ours(name):
        def setup():
            import viscnn.attribution as A

            meth = getattr(A, OURS[name])(model, **KWARGS.get(name, {}))
            return lambda: meth.attribute(x, target)
        return setup

    def captum(name):
        def setup():
            import captum.attr as C

            if name == "gradcam":
                lgc = C.LayerGradCam(model, model.layer4)
                return lambda: C.LayerAttribution.interpolate(
                    lgc.attribute(x, target=target, relu_attributions=True), tuple(x.shape[2:]), "bilinear")
            if name == "integrated_gradients":
                ig = C.IntegratedGradients(model)
                return lambda: ig.attribute(x, target=target, n_steps=PATH_POINTS, method="gausslegendre",
                                            internal_batch_size=PER_PASS)
            if name == "smoothgrad":
                nt = C.NoiseTunnel(C.Saliency(model))
                sd = float(0.15 * (x.max() - x.min()))
                return lambda: nt.attribute(x.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=PATH_POINTS,
                                            nt_samples_batch_size=max(1, PER_PASS // len(x)), stdevs=sd, target=target)
            if name == "guided_gradcam":
                ggc = C.GuidedGradCam(model, model.layer4)
                return lambda: ggc.attribute(x, target=target, interpolate_mode="bilinear")
            cls = {"saliency": C.Saliency, "input_x_gradient": C.InputXGradient, "guided_backprop": C.GuidedBackprop,
                   "deconvnet": C.Deconvolution}[name]
            m = cls(model)
            return lambda: m.attribute(x.clone().requires_grad_(), target=target)
        return setup

    ops = {"plain": plain(True), "input_grad": plain(False)}
    for n in OURS:
        ops[f"viscnn:{n}"] = ours(n)
        ops[f"captum:{n}"] = captum(n)
    return ops


def _sync(dev):
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker(name: str, batch: int, size: int, dev: str) -> None:
    """Print one JSON line: extra peak memory (MiB) of one run of ``name`` after a warm-up."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    model, x, target = _setup(batch, size, dev)
    t0 = time.perf_counter()
    run = _ops(model, x, target)[name]()
    setup_s = time.perf_counter() - t0
    run()
    _sync(dev)
    gc.collect()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        _sync(dev)
        extra = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        base = _kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the RSS high-water mark to the current RSS
        except OSError:
            pass
        run()
        extra = (_kib("VmHWM") - base) / 1024
    print(json.dumps({"name": name, "extra_mib": extra, "setup_s": setup_s}))


def _memory(name, args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--size", str(args.size),
           "--device", args.device]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"extra_mib": float("nan"), "setup_s": float("nan"), "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="batch 4 at 112x112, 2 repeats")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-computation memory processes")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batch = args.batch or (4 if args.quick else 16)
    args.size = args.size or (112 if args.quick else 224)
    repeats = 2 if args.quick else args.repeats
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; skipping the cuda benchmark")
        return 0
    if args.worker:
        worker(args.worker, args.batch, args.size, args.device)
        return 0
    try:
        import captum

        cap_version = captum.__version__
    except ImportError:
        cap_version = None
    import warnings

    warnings.filterwarnings("ignore")
    model, x, target = _setup(args.batch, args.size, args.device)
    ops = _ops(model, x, target)
    names = ["plain", "input_grad"] + [f"viscnn:{n}" for n in OURS] + ([f"captum:{n}" for n in OURS] if cap_version else [])
    t0 = time.perf_counter()
    runs = {n: ops[n]() for n in names}
    print(f"ResNet-18 (random weights), batch {args.batch}, 3x{args.size}x{args.size}, {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, captum {cap_version or 'not installed'}")
    print(f"setup of every method (traced working copies, Captum objects): {time.perf_counter() - t0:.2f} s")
    best = {n: float("inf") for n in names}
    for n in names:  # warm-up
        runs[n]()
    for _ in range(repeats):
        for n in names:
            _sync(args.device)
            t = time.perf_counter()
            runs[n]()
            _sync(args.device)
            best[n] = min(best[n], time.perf_counter() - t)
    mem = {} if args.no_memory else {n: _memory(n, args) for n in names}
    ms = lambda n: 1000 * best[n]
    mb = lambda n: mem.get(n, {}).get("extra_mib", float("nan"))
    print(f"{'plain forward+backward':<28} {ms('plain'):9.1f} ms   extra memory {mb('plain'):8.1f} MiB")
    print(f"{'input-grad forward+backward':<28} {ms('input_grad'):9.1f} ms   extra memory {mb('input_grad'):8.1f} MiB")
    r = best["viscnn:gradcam"] / best["plain"]
    print(f"Grad-CAM (viscnn, layer4)    {ms('viscnn:gradcam'):9.1f} ms   = {r:.2f}x one plain forward+backward "
          f"(goal <= 1.3x: {'met' if r <= 1.3 else 'NOT met'})")
    if not cap_version:
        print("captum is not installed: no comparison")
        return 0
    print(f"{'method':<22} {'viscnn ms':>10} {'captum ms':>10} {'time ratio':>11} {'viscnn MiB':>11} {'captum MiB':>11} "
          f"{'mem ratio':>10}")
    for n in OURS:
        a, b = best[f"viscnn:{n}"], best[f"captum:{n}"]
        ma, mc = mb(f"viscnn:{n}"), mb(f"captum:{n}")
        mr = ma / mc if mc and mc == mc and mc > 0 else float("nan")
        print(f"{n:<22} {1000 * a:10.1f} {1000 * b:10.1f} {a / b:10.2f}x {ma:11.1f} {mc:11.1f} {mr:9.2f}x")
    print("ratios are viscnn / captum (below 1: viscnn is faster / smaller)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
