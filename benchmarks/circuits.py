"""Faithfulness of circuits on the trained default model (prepped_models/fmnist), every class.

For each of the 10 class targets (the class logit): each method's circuit (``learned``, the default
for ``keep``; ``taylor``, the one-shot method, beside it; ``iterative`` on request) with 5% of the
conv kernels, found on 200 test images of the class (``fmnist:test:K:200``) and measured on the
200 *next* test images of the class (``fmnist:test:K:200:200``): Pearson (goal >= 0.9), relative
error mean|Δ|/mean|full| (goal <= 0.2), the best of 20 random circuits with the same kernels per
layer (class-layer kernels drawn into the class only), accuracy with the class layer whole, the
rate at which 50 test images of each other class are now called the class, and the wall time of
finding the circuit (goal <= 30 s per class on 2 CPU cores); then a faithfulness-vs-size curve
per method (mean Pearson and
relative error over the classes). Sizes count conv kernels; class-layer edges into the class are
free (see viscnn/importance/methods.py). Usage:
``python benchmarks/circuits.py [--methods taylor,learned,iterative] [--ablation zero|mean] [--threads 2] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import os
import time

GOAL_PEARSON, GOAL_REL, GOAL_SECONDS = 0.9, 0.2, 30.0


def _setup():
    from types import SimpleNamespace

    from viscnn.importance.cli import _model_context

    return _model_context(SimpleNamespace(model="fmnist", weights=None, models_dir=None, input_size=None))


def _other_batches(k: int, shape, norm, per_class: int = 50):
    from viscnn.data import open_images

    for c in range(10):
        if c != k:
            yield from open_images(f"fmnist:test:{c}:{per_class}", shape).batches(per_class, shape, norm)


def run(methods, ablation: str, n_random: int, curve_classes, step: float, only=None, device: str = "cpu") -> dict:
    import numpy as np

    from viscnn.data import open_images
    from viscnn.importance.ablation import layer_input_means
    from viscnn.importance.faithfulness import faithfulness
    from viscnn.importance.methods import CURVE_SIZES, circuits_by_size, find_circuit
    from viscnn.importance.targets import parse_target

    from viscnn.data.fashion_mnist import CLASSES as classes

    model, graph, _, norm, shape = _setup()
    model = model.to(device)
    rows, curves = [], {m: [] for m in methods}
    for k, name in enumerate(classes):
        if only is not None and k not in only:
            continue
        target = parse_target(f"class:{k}", graph, classes)
        score_src = open_images(f"fmnist:test:{k}:200", shape)
        meas_src = open_images(f"fmnist:test:{k}:200:200", shape)
        sb = lambda: score_src.batches(200, shape, norm)
        mb = lambda: meas_src.batches(200, shape, norm)
        means = layer_input_means(model, graph, sb(), device) if ablation == "mean" else None
        for method in methods:
            t0 = time.perf_counter()
            c = find_circuit(model, graph, target, sb, method, keep=0.05, ablation=ablation, means=means, step=step,
                             device=device)
            _sync(device)
            dt = time.perf_counter() - t0
            rep = faithfulness(model, graph, target, c, mb(), n_random=n_random, ablation=ablation, means=means,
                               other_batches=_other_batches(k, shape, norm), device=device)
            rows.append({**rep.get("predictions", {}), "class": name, "method": method, "seconds": dt, "kernels": c.settings["conv_kernels"],
                         "edges": len(c.edges), **{f: rep["circuit"][f] for f in ("pearson", "relative_error")},
                         "random_best_pearson": rep["random"]["pearson_best"],
                         "random_best_rel": rep["random"]["relative_error_best"]})
            if k in curve_classes:
                pts = []
                for cc in circuits_by_size(model, graph, target, sb, method, CURVE_SIZES, ablation=ablation, means=means,
                                           step=step, device=device):
                    r = faithfulness(model, graph, target, cc, mb(), n_random=0, ablation=ablation, means=means,
                                     device=device)
                    pts.append((r["circuit"]["pearson"], r["circuit"]["relative_error"]))
                curves[method].append(pts)
            print(_row(rows[-1]), flush=True)
    return {"rows": rows, "curves": curves, "sizes": list(CURVE_SIZES)}


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _f(v, w=6, p=3):
    return f"{'n/a':>{w}}" if v is None else f"{v:>{w}.{p}f}"


def _row(r) -> str:
    ok = (r["pearson"] or -1) >= GOAL_PEARSON and (r["relative_error"] or 9) <= GOAL_REL
    beat = (r["pearson"] or -1) > (r["random_best_pearson"] or -1)
    return (f"{r['class']:<12} {r['method']:<10} {r['kernels']:>5} {_f(r['pearson'])} {_f(r['relative_error'])} "
            f"{_f(r['random_best_pearson'])} {_f(r['random_best_rel'])} {'yes' if beat else 'NO':>5} "
            f"{_f(r.get('accuracy_full'), 5, 2)} {_f(r.get('accuracy_circuit'), 5, 2)} "
            f"{_f(r.get('others_called_class_full'), 5, 2)} {_f(r.get('others_called_class_circuit'), 5, 2)} "
            f"{r['seconds']:>6.1f}  {'GOAL' if ok else ''}")


HEADER = (f"{'class':<12} {'method':<10} {'kern':>5} {'pear':>6} {'rel':>6} {'rndP':>6} {'rndRel':>6} {'beat':>5} "
          f"{'accF':>5} {'accC':>5} {'fpF':>5} {'fpC':>5} {'sec':>6}")


def _classes(cc: str) -> set:
    if cc == "none":
        return set()
    if "-" in cc:
        a, b = cc.split("-")
        return set(range(int(a), int(b) + 1))
    return {int(v) for v in cc.split(",")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="taylor,learned",
                    help="methods to compare (learned: the default for keep; taylor: the one-shot method)")
    ap.add_argument("--ablation", default="zero", choices=("zero", "mean"))
    ap.add_argument("--random", type=int, default=20, help="random circuits per class")
    ap.add_argument("--curve-classes", default="0-9", help="classes with a size curve: 0-9, 1,7, or none")
    ap.add_argument("--step", type=float, default=0.2, help="iterative: fraction removed per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where circuits are found and measured")
    ap.add_argument("--classes", default="0-9", help="class targets: 0-9 or 1,7")
    ap.add_argument("--json", help="also write every row and curve point to this file")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.exit(2, f"--device {args.device}: CUDA is not available on this machine\n")
    curve_classes, only = _classes(args.curve_classes), _classes(args.classes)
    methods = args.methods.split(",")
    print(f"circuits with 5% of the conv kernels, found on fmnist:test:K:200, measured on fmnist:test:K:200:200 "
          f"(ablation {args.ablation}, best of {args.random} random circuits, {args.threads} threads, {args.device})")
    print("pear/rel: circuit vs full logit (goal >= 0.9 / <= 0.2); rndP/rndRel: best random; acc: accuracy on the "
          "class's images (F full, C circuit with the class layer whole); fp: other images called the class")
    print(HEADER)
    res = run(methods, args.ablation, args.random, curve_classes, args.step, only, args.device)
    print("\nsummary")
    for m in methods:
        rs = [r for r in res["rows"] if r["method"] == m]
        ps = [r["pearson"] or 0 for r in rs]
        goal = sum((r["pearson"] or -1) >= GOAL_PEARSON and (r["relative_error"] or 9) <= GOAL_REL for r in rs)
        beat = sum((r["pearson"] or -1) > (r["random_best_pearson"] or -1) for r in rs)
        print(f"  {m:<10} mean pearson {np.mean(ps):.3f}  min {np.min(ps):.3f}  mean rel {np.mean([r['relative_error'] for r in rs]):.3f}"
              f"  goal met {goal}/{len(rs)}  beats best random {beat}/{len(rs)}  max time {max(r['seconds'] for r in rs):.1f} s"
              f"  (goal <= {GOAL_SECONDS:.0f} s)")
    if any(res["curves"].values()):
        print("\nfaithfulness vs size (mean over the curve classes: pearson / relative error; min pearson; "
              "classes meeting the goal)")
        print(f"{'size':<10}" + "".join(f"{m:>36}" for m in methods))
        smallest = {}
        for i, s in enumerate(res["sizes"]):
            cells = []
            for m in methods:
                pts = [c[i] for c in res["curves"][m]]
                ps = [x[0] if x[0] is not None else 0 for x in pts]
                p = np.mean(ps) if pts else float("nan")
                r = np.mean([x[1] for x in pts]) if pts else float("nan")
                ok = sum(a >= GOAL_PEARSON and (b if b is not None else 9) <= GOAL_REL for a, (_, b) in zip(ps, pts))
                if pts and ok == len(pts):
                    smallest.setdefault(m, s)
                cells.append(f"{p:>7.3f} / {r:<6.3f} min {min(ps, default=float('nan')):.3f} {ok:>2}/{len(pts)}")
            print(f"{100 * s:>5.1f}%    " + "".join(f"{c:>36}" for c in cells))
        for m in methods:
            where = f"{100 * smallest[m]:.1f}%" if m in smallest else "none of the sizes"
            print(f"  {m}: smallest size where every curve class meets the goal: {where}")
    if args.json:
        from viscnn.io import atomic_write_text
        import json

        atomic_write_text(args.json, json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
