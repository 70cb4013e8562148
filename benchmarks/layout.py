"""Time of the per-layer MDS embedding behind the ``mds`` layout, for layers of random nodes.

Each layer: n nodes with random per-class importance vectors (10 classes, drawn around 8
random cluster centres so there is structure to keep), L2-normalised as the layout does.
Layers above ``viscnn.layout.LANDMARK_THRESHOLD`` nodes use landmark MDS; for those the full
SMACOF time is printed too when ``--full`` is given (slow: O(n^2) memory and time per iteration).
Also times one rotation step (best_rotation over MAX_ALIGN_EDGES edges).

``--resnet50 C [C ...]``: instead, all three layouts (``compute_layout``) of a random torchvision
ResNet-50 graph at 64x64 (26,583 nodes, 13.4M kernels, 40M links, 2,048-node layers) with
lognormal node scores for C classes and lognormal edge scores, as the prep ``layouts`` stage runs them.

Usage: ``python benchmarks/layout.py [--sizes 64 512 2048 4096] [--repeats 3] [--full] [--resnet50 20 1000]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from viscnn import layout as L


def random_layer(n: int, n_classes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.random((8, n_classes))
    v = np.abs(centres[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, n_classes)))
    return L.normalized_class_vectors(v.T, np.arange(n))


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 2048, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full", action="store_true", help="also time full SMACOF above the landmark threshold")
    p.add_argument("--resnet50", type=int, nargs="+", metavar="CLASSES", help="time whole ResNet-50 layouts instead")
    a = p.parse_args()
    if a.resnet50:
        return resnet50_layouts(a.resnet50)
    L.metric_mds(random_layer(16))  # warm up (first-call overheads outside the timings)
    print(f"landmark threshold {L.LANDMARK_THRESHOLD} nodes, {L.N_LANDMARKS} landmarks; best of {a.repeats}")
    print(f"{'nodes':>6} {'method':>9} {'seconds':>8} {'stress':>7} {'classical stress':>16}")
    for n in a.sizes:
        v = random_layer(n, seed=n)
        method = "landmark" if n > L.LANDMARK_THRESHOLD else "full"
        dt, pos = timed(lambda: L.mds_embedding(v, seed=0), a.repeats)
        d = L.pairwise_distances(v)
        print(f"{n:>6} {method:>9} {dt:>8.3f} {L.kruskal_stress(pos, d):>7.3f} "
              f"{L.kruskal_stress(L.classical_mds(v), d):>16.3f}")
        if a.full and method == "landmark":
            dt, pos = timed(lambda: L.metric_mds(v), 1)
            print(f"{n:>6} {'full':>9} {dt:>8.3f} {L.kruskal_stress(pos, d):>7.3f}")
    rng = np.random.default_rng(0)
    e = L.MAX_ALIGN_EDGES
    t, s, w = rng.normal(size=(e, 2)), rng.normal(size=(e, 2)), rng.random(e)
    dt, _ = timed(lambda: L.best_rotation(t, s, w), a.repeats)
    print(f"rotation search over {e} edges: {dt:.3f} s")


def resnet50_layouts(class_counts) -> None:
    import torchvision

    from viscnn.graph import build_graph

    t = time.perf_counter()
    g = build_graph(torchvision.models.resnet50(num_classes=20), (64, 64), include_classes=True)
    print(f"ResNet-50 graph: {g.num_nodes} nodes, {g.num_edges} kernels ({time.perf_counter() - t:.1f} s to build)")
    rng = np.random.default_rng(0)
    es = rng.lognormal(size=g.num_edges).astype(np.float32)
    for c in class_counts:
        ns = rng.lognormal(size=(c, g.num_nodes)).astype(np.float32)
        L.align._edge_cache = None  # as in a fresh prep run: the first layout selects the alignment edges
        times = {}
        for name in L.LAYOUTS:
            t = time.perf_counter()
            L.compute_layout(name, g, ns, es)
            times[name] = time.perf_counter() - t
        print(f"{c:>5} classes: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + f"; all {sum(times.values()):.1f} s")


if __name__ == "__main__":
    main()
