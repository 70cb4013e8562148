"""Feature-visualisation speed and quality.

Speed (default): in one run, per model, units per second for a whole layer rendered in one batch
with early exit, vs one unit at a time through the full model (VISCNN's way), same steps, same
recipe. The one-at-a-time side times ``--single-units`` units and reports the per-unit rate.

    .venv/bin/python benchmarks/featurevis.py                        # random AlexNet + default model
    .venv/bin/python benchmarks/featurevis.py --model torchvision:alexnet --layer features.3 --steps 16
    .venv/bin/python benchmarks/featurevis.py --device cuda                 # on a GPU

Quality (``--quality``, on the default model, trained if prepped_models/fmnist/weights.pt exists):
fraction of units whose visualisation beats their best dataset exemplar (test split) on their own
objective, per layer, and the median gain of edge visualisations over their random start.

    .venv/bin/python benchmarks/featurevis.py --quality --steps 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from viscnn.featurevis.data import array_batches  # noqa: E402
from viscnn.featurevis.render import render, render_edges, render_layer  # noqa: E402
from viscnn.featurevis.validate import validate  # noqa: E402

FMNIST_NORM = ([0.2860405969887955], [0.35302424451492254])
IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "prepped_models" / "fmnist" / "weights.pt"


def load(spec: str):
    """(model, size, normalize, description)."""
    if spec == "fmnist":
        from viscnn.zoo.fmnist import fmnist_cnn

        m = fmnist_cnn()
        desc = "default fmnist model, random init"
        if DEFAULT_WEIGHTS.is_file():
            m.load_state_dict(torch.load(DEFAULT_WEIGHTS, weights_only=True))
            desc = f"default fmnist model, trained ({DEFAULT_WEIGHTS.relative_to(DEFAULT_WEIGHTS.parents[2])})"
        return m.eval(), (28, 28), FMNIST_NORM, desc
    from viscnn.model_spec import load_model

    torch.manual_seed(0)
    return load_model(spec).eval(), (224, 224), IMAGENET_NORM, f"{spec} (random init)"


def n_channels(model, layer):
    return dict(model.named_modules())[layer].out_channels


def speed(spec: str, layer: str, steps: int, single_units: int, batch_size: int, repeats: int, device: str = "cpu") -> dict:
    model, size, norm, desc = load(spec)
    c = n_channels(model, layer)
    kw = dict(size=size, steps=steps, normalize=norm, seed=0, device=device)
    if device.startswith("cuda"):  # warm up kernels and the allocator so neither side pays for them
        render(model, [f"{layer}:0"], batch_size=1, early_exit=False, **(kw | {"steps": 2}))
    units = [f"{layer}:{ch}" for ch in range(min(single_units, c))]
    tb = ts = float("inf")
    for _ in range(repeats):  # alternate the two sides and keep each one's best time: the machine is shared
        t0 = time.perf_counter()
        batched = render_layer(model, layer, batch_size=batch_size or c, early_exit=True, **kw)
        tb = min(tb, time.perf_counter() - t0)  # results come back to the CPU: the GPU has finished
        t0 = time.perf_counter()
        single = render(model, units, batch_size=1, early_exit=False, **kw)
        ts = min(ts, time.perf_counter() - t0)
    # same recipe and seeds: the one-at-a-time units must match their batched twins
    diff = int(np.abs(single.images.astype(int) - batched.images[:len(units)].astype(int)).max())
    r = {"model": desc, "layer": layer, "size": list(size), "steps": steps, "layer_units": c,
         "batched_s": round(tb, 2), "batched_units_per_s": round(c / tb, 3),
         "single_units_timed": len(units), "single_s": round(ts, 2), "single_units_per_s": round(len(units) / ts, 3),
         "speedup_per_unit": round((c / tb) / (len(units) / ts), 1), "max_uint8_diff_batched_vs_single": diff,
         "threads": torch.get_num_threads(), "repeats": repeats, "device": device}
    print(f"[{device}] {desc} {layer} ({c} units, {size[0]}x{size[1]}, {steps} steps): batched+early exit {r['batched_units_per_s']} "
          f"units/s; one at a time, full model {r['single_units_per_s']} units/s ({len(units)} timed); "
          f"speedup {r['speedup_per_unit']}x per unit; max pixel diff {diff}", flush=True)
    return r


def quality(steps: int, n_images: int, n_edges: int) -> dict:
    from viscnn.data.fashion_mnist import load_fashion_mnist
    from viscnn.graph import build_graph

    model, size, norm, desc = load("fmnist")
    images, _ = load_fashion_mnist("test")
    images = images[:n_images]
    graph = build_graph(model, size)
    out = {"model": desc, "steps": steps, "real_images": len(images), "layers": {}}
    total, beat = 0, 0
    for layer in [l.name for l in graph.conv_layers()]:
        t0 = time.perf_counter()
        r = render_layer(model, layer, size=size, steps=steps, normalize=norm, seed=0)
        validate(r, model, array_batches(images, 500), normalize=norm)
        n, b = len(r.objective), int(r.beats_real.sum())
        total, beat = total + n, beat + b
        out["layers"][layer] = {"units": n, "beats_real": b, "fraction": round(b / n, 3),
                                "median_ratio_to_best_real": round(float(np.median(r.objective / np.maximum(r.best_real, 1e-9))), 2),
                                "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{layer}: {b}/{n} units beat their best real image ({out['layers'][layer]})", flush=True)
    out["fraction_beating_real"] = round(beat / total, 3)
    rng = np.random.RandomState(0)
    e = graph.edges[rng.choice(len(graph.edges), size=min(n_edges, len(graph.edges)), replace=False)]
    edges = [(graph.layers[li].name, int(j), int(i)) for li, j, i in e]
    for at in (None, "center"):
        r = render_edges(model, edges, size=size, steps=steps, normalize=norm, seed=0, at=at)
        validate(r, model, array_batches(images, 500), normalize=norm)
        gain = r.objective - r.start
        key = "edges_mean" if at is None else "edges_center"
        out[key] = {"edges": len(edges), "median_gain": float(np.median(gain)),
                    "median_abs_start": float(np.median(np.abs(r.start))),
                    "fraction_gain_positive": round(float((gain > 0).mean()), 3),
                    "fraction_beats_real": round(float(r.beats_real.mean()), 3)}
        print(f"{key}: {out[key]}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="torchvision:NAME or fmnist (repeatable)")
    ap.add_argument("--layer", action="append", help="layer per --model (default features.0 / conv3)")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default 32; 256 with --quality)")
    ap.add_argument("--single-units", type=int, default=3, help="units timed one at a time")
    ap.add_argument("--batch-size", type=int, default=0, help="batch size (default: the whole layer)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timing repeats; the best of each side is kept")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (speed benchmark)")
    ap.add_argument("--quality", action="store_true", help="fraction beating real images, edge gains")
    ap.add_argument("--images", type=int, default=10000, help="--quality: Fashion-MNIST test images")
    ap.add_argument("--edges", type=int, default=64, help="--quality: random edges to render")
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quality:
        res = quality(a.steps or 256, a.images, a.edges)
    else:
        models = a.model or ["torchvision:alexnet", "fmnist"]
        layers = a.layer or [("features.0" if m.startswith("torchvision:alexnet") else "conv3") for m in models]
        if len(layers) != len(models):
            ap.error("give one --layer per --model")
        res = [speed(m, l, a.steps or 32, a.single_units, a.batch_size, a.repeats, a.device) for m, l in zip(models, layers)]
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
