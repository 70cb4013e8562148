"""Sparse per-set edge scores: per row (an image set) and layer, only the top edges that can enter a circuit.

At ImageNet scale dense per-class edge scores do not fit (ResNet-50: 13.4M kernels x 1,001 sets x 4 bytes
= 54 GB per metric). A sparse row keeps, per layer, the fewest highest-|score| edges holding ``mass`` of
the layer's |score| total, at least ``min_per_layer`` (all of a smaller layer) and at most
``max_fraction`` of the layer's edges; it also keeps the layer's true |score| total and whether every
nonzero edge was stored, so a threshold (:class:`viscnn.importance.ranked.RankedEdges`) is exact
wherever it lies inside the stored edges, and says so where it does not.

On disk (``scores/METRIC/``, group ``G`` = ``edges`` for the loss rows of the class sets, ``class_edges``
for the own-class rows), plain .npy:
  G.sparse.index.npy    int32 (int64 past 2^31 edges) [nnz] global edge indices: row by row, layer by
                        layer, |score| descending (ties in index order)
  G.sparse.value.npy    float32 [nnz] the signed mean scores
  G.sparse.ptr.npy      int64 [R, L+1] row r, layer l: entries ptr[r, l]:ptr[r, l+1]
  G.sparse.totals.npy   float64 [R, L] the layer's sum of |score| over all its edges
  G.sparse.complete.npy bool [R, L] every nonzero edge of the layer is stored
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from viscnn.graph.structure import Graph

SUFFIXES = ("index", "value", "ptr", "totals", "complete")
DEFAULTS = {"mass": 0.999, "min_per_layer": 256, "max_fraction": 0.015}


def layer_bounds(graph: Graph) -> List[Tuple[int, int]]:
    """(first edge, end) per graph layer (the input layer has none)."""
    return [(l.edge_offset, l.edge_offset + (l.num_edges if l.kind != "input" else 0)) for l in graph.layers]


def sparsify(graph: Graph, scores: np.ndarray, mass: float = DEFAULTS["mass"], min_per_layer: int = DEFAULTS["min_per_layer"],
             max_fraction: float = DEFAULTS["max_fraction"]) -> Dict[str, np.ndarray]:
    """One row: {"index", "value", "counts" [L], "totals" [L], "complete" [L]}. Per layer the same edges,
    in the same order, as the first ones of a stable descending sort of |score| (ties by index)."""
    s32 = np.asarray(scores, np.float32).reshape(-1)  # the values as stored (float32; NaN as 0, in RowParts.add)
    parts = RowParts()
    for a, b in layer_bounds(graph):
        parts.add(a, s32[a:b], mass, min_per_layer, max_fraction)
    return parts.row()


class RowParts:
    """A sparse row assembled layer by layer (in graph order): :func:`sparsify` on a whole row, or the
    scoring pass on each layer's segment as soon as it is computed; both give the same row."""

    def __init__(self):
        self.index, self.value, self.counts, self.totals, self.complete = [], [], [], [], []

    def add(self, offset: int, seg, mass: float, min_per_layer: int, max_fraction: float, nonneg: bool = False) -> None:
        """One layer's signed float32 scores ``seg`` (a 1-D array or tensor; NaN as 0), its first edge
        ``offset``; ``nonneg``: the caller made ``seg`` with np.abs (its |.| pass is skipped)."""
        if not isinstance(seg, np.ndarray):
            import torch

            if isinstance(seg, torch.Tensor):
                seg = seg.detach().to("cpu", torch.float32).numpy()
        seg = np.asarray(seg, np.float32)
        s = seg if nonneg else np.abs(seg, out=_scratch("abs", seg.shape[0], np.float32))
        tot = float(s.sum(dtype=np.float64))
        if not np.isfinite(tot):  # NaN (or inf) somewhere: stored as np.nan_to_num makes them
            seg = np.nan_to_num(seg)
            s = np.abs(seg)
            tot = float(s.sum(dtype=np.float64))
        o, full = _select(s, tot, mass, min_per_layer, max_fraction)
        self.index.append(offset + o)
        self.value.append(seg[o])
        self.counts.append(len(o))
        self.totals.append(tot)
        self.complete.append(full)

    def row(self) -> Dict[str, np.ndarray]:
        cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)
        return {"index": cat(self.index, np.int64), "value": cat(self.value, np.float32),
                "counts": np.asarray(self.counts, np.int64), "totals": np.asarray(self.totals, np.float64),
                "complete": np.asarray(self.complete, bool)}


def add_rows(parts: Sequence[RowParts], offset: int, segs: np.ndarray, mass: float, min_per_layer: int,
             max_fraction: float, nonneg: bool = False, divisors=None, during=None) -> None:
    """``parts[r].add(offset, segs[r], ...)`` for every row, on a small thread pool: numpy releases the GIL
    in the passes over a row, and between two layers' scores the scoring pass leaves the cores idle.

    ``divisors`` [R]: row r is first ``segs[r] / divisors[r]`` rounded once to float32 (any input dtype;
    with ``nonneg``, its |.|: ``batch_set_score``'s |total| / count, as |x / n| = |x| / n exactly), made
    by the worker into its own buffer, so no [R, n] float32 copy is assembled. ``during()`` runs on the
    calling thread while the workers run."""
    def one(r):
        seg = segs[r]
        if divisors is not None:
            seg = np.divide(seg, divisors[r], out=_scratch("seg", seg.shape[0], np.float32), casting="same_kind")
            if nonneg:
                np.abs(seg, out=seg)
        parts[r].add(offset, seg, mass, min_per_layer, max_fraction, nonneg)

    jobs = [_pool().submit(one, r) for r in range(len(parts))] if len(parts) > 1 else []
    if during is not None:
        during()
    if not jobs:
        for r in range(len(parts)):
            one(r)
    for j in jobs:
        j.result()


_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, torch.get_num_threads())), thread_name_prefix="viscnn-sparsify")
    return _POOL


def select_layer(seg, mass: float, min_per_layer: int, max_fraction: float):
    """The stored edges of one layer: (local indices, |score| total, every nonzero edge stored).

    The fewest highest-|score| edges holding ``mass`` of the layer's |score| total, at least
    ``min_per_layer``, at most ``max_fraction`` of the layer (all nonzero edges when that many or fewer),
    in the order of a stable descending sort of |score| (ties by index). A layer past ``SAMPLE_ABOVE``
    edges is first cut to the entries above a threshold estimated from an odd-stride sample (one pass), and
    only those are ranked; where the estimate leaves fewer than the cap, all nonzero entries are. This
    runs once per class, metric and layer (ResNet-50: 13.6M edges per row), so it makes as few passes
    over the layer as it can: |.|, the float64 total, one comparison; the rest is on the ~1.5x cap
    candidates (tested against a full stable argsort)."""
    s = np.abs(np.asarray(seg, np.float32))
    tot = float(s.sum(dtype=np.float64))
    o, full = _select(s, tot, mass, min_per_layer, max_fraction)
    return o, tot, full


def _select(s: np.ndarray, tot: float, mass: float, min_per_layer: int, max_fraction: float):
    """:func:`select_layer` on ``s`` = |scores| (float32) with its float64 total: (indices, complete)."""
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), True
    cap = max(min_per_layer, int(np.ceil(max_fraction * n)))
    cand, nnz = None, None
    if n > SAMPLE_ABOVE and 8 * cap < n:
        # an odd stride: a power-of-two one samples a few input channels of every [out, in] row only, and a
        # threshold from those left fewer than ``cap`` candidates on ResNet-50's layer4 (then all 52% nonzero
        # entries were ranked, 6 ms a row instead of 1); a second, lower threshold before that fallback
        sample = s[::max(1, n // 16384) | 1]
        ranks = [min(sample.shape[0], max(1, int(sample.shape[0] * (1.0 - e * cap / n)))) - 1 for e in (1.5, 6.0)]
        sample = np.partition(sample, sorted(set(ranks)))  # ~1.5x, then ~6x cap expected above
        for r in ranks:
            thr = sample[r]
            cand = np.flatnonzero(np.greater(s, thr, out=_scratch("mask", n, bool)))  # ascending, every one nonzero
            if thr <= 0 or cand.shape[0] >= cap:
                break
        if thr <= 0:  # every nonzero entry
            nnz = cand.shape[0]
        elif cand.shape[0] < cap:
            cand = None
        elif cand.shape[0] == cap:
            nnz = int(np.count_nonzero(s))
        else:
            nnz = cap + 1  # more nonzero entries than the cap
    if cand is None:
        cand = np.flatnonzero(s)
        nnz = cand.shape[0]
    top = _ranked(s, cand, min(cap, nnz))
    if nnz <= cap:  # few nonzero: store them all
        return top, True
    cum = np.cumsum(s[top].astype(np.float64))
    need = int(np.searchsorted(cum, mass * tot - 1e-12 * tot, "left")) + 1
    k = min(max(need, min_per_layer), cap)
    return top[:k], False


SAMPLE_ABOVE = 4096  # layers with more edges cut to candidates from a sampled threshold first
_LOCAL = threading.local()


def _scratch(name: str, n: int, dtype) -> np.ndarray:
    """A reused per-thread buffer of ``n`` items: a fresh array per layer and row costs page faults
    (large allocations are mmapped and returned to the OS), which on a VM doubled the pass's system time."""
    buf = getattr(_LOCAL, name, None)
    if buf is None or buf.shape[0] < n:
        buf = np.empty(max(n, 1 << 16), dtype)
        setattr(_LOCAL, name, buf)
    return buf[:n]


def _ranked(s: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` first of ``cand`` (ascending indices into ``s`` >= 0) by descending ``s``, ties by index
    (int64). The k-th largest value by a float32 partition; every entry above it and the first entries
    equal to it (in index order) are the k; those are sorted by one int64 key each (the complemented
    float32 bits of ``s`` above the index: unique keys whose ascending order is the stable descending one)."""
    v = s[cand]
    if k < v.shape[0]:
        if k <= 0:
            return np.zeros(0, np.int64)
        kth = np.partition(v, v.shape[0] - k)[v.shape[0] - k]
        keep = v > kth
        keep[np.flatnonzero(v == kth)[:k - int(np.count_nonzero(keep))]] = True
        cand, v = cand[keep], v[keep]
    keys = ((0x7FFFFFFF - v.view(np.int32).astype(np.int64)) << 32) | cand.astype(np.int64)
    keys.sort()
    return keys & 0xFFFFFFFF


def save_row(path: Path, row: Dict[str, np.ndarray]) -> None:
    """One row as an .npz (no pickle), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    np.savez(tmp, **row)
    os.replace(tmp, path)


def load_row(path: Path) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_group(folder: Path, group: str, row_files: List[Path], num_edges: int) -> None:
    """The CSR files of the rows saved by :func:`save_row` (in row order), streamed: index/value are
    written through memory-mapped temp files and renamed into place, so no more than one row is in
    memory and no file is ever half-written."""
    from numpy.lib.format import open_memmap

    from viscnn.io import atomic_save_npy

    counts = []
    for f in row_files:
        with np.load(f, allow_pickle=False) as z:
            counts.append(z["counts"])
    itype = np.int32 if num_edges < 2**31 else np.int64
    L = len(counts[0]) if counts else 0
    R = len(row_files)
    ptr, totals, complete = np.zeros((R, L + 1), np.int64), np.zeros((R, L)), np.zeros((R, L), bool)
    nnz = int(sum(c.sum() for c in counts))
    folder.mkdir(parents=True, exist_ok=True)
    tmps = {k: folder / f".{group}.sparse.{k}.npy.tmp" for k in ("index", "value")}
    index = open_memmap(tmps["index"], mode="w+", dtype=itype, shape=(nnz,))
    value = open_memmap(tmps["value"], mode="w+", dtype=np.float32, shape=(nnz,))
    at = 0
    for r, f in enumerate(row_files):
        row = load_row(f)
        n = int(row["counts"].sum())
        index[at:at + n] = row["index"]
        value[at:at + n] = row["value"]
        ptr[r] = at + np.concatenate([[0], np.cumsum(row["counts"])])
        totals[r], complete[r] = row["totals"], row["complete"]
        at += n
    index.flush()
    value.flush()
    del index, value
    atomic_save_npy(folder / f"{group}.sparse.ptr.npy", ptr)
    atomic_save_npy(folder / f"{group}.sparse.totals.npy", totals)
    atomic_save_npy(folder / f"{group}.sparse.complete.npy", complete)
    for k, t in tmps.items():
        os.replace(t, folder / f"{group}.sparse.{k}.npy")


def group_files(group: str) -> List[str]:
    return [f"{group}.sparse.{k}.npy" for k in SUFFIXES]


def ranked_row(arrays: Dict[str, np.ndarray], r: int, num_edges: int):
    """Row ``r`` of a stored group as a :class:`~viscnn.importance.ranked.RankedEdges` (no sort)."""
    from viscnn.importance.ranked import RankedEdges

    ptr = arrays["ptr"][r]
    a, b = int(ptr[0]), int(ptr[-1])
    return RankedEdges(np.asarray(arrays["index"][a:b], np.int64), np.asarray(arrays["value"][a:b], np.float64),
                       np.asarray(ptr - a, np.int64), np.asarray(arrays["totals"][r], np.float64),
                       np.asarray(arrays["complete"][r], bool), num_edges)


def dense_row(arrays: Dict[str, np.ndarray], r: int, num_edges: int) -> np.ndarray:
    """Row ``r`` as a dense float32 [E] vector, 0 for the edges not stored."""
    ptr = arrays["ptr"][r]
    out = np.zeros(num_edges, np.float32)
    out[np.asarray(arrays["index"][ptr[0]:ptr[-1]], np.int64)] = arrays["value"][ptr[0]:ptr[-1]]
    out.flags.writeable = False
    return out


def ranking_of_dense(graph: Graph, scores: np.ndarray) -> np.ndarray:
    """Global indices of the nonzero edges, layer by layer, |score| descending (ties in index order):
    the stored ordering of a dense row (``edges_all.order.npy``). A float32 row is ranked by
    :func:`_ranked` on its nonzero entries (one int64 key sort instead of a stable argsort of every edge)."""
    x = np.asarray(scores)
    parts = []
    if x.dtype == np.float32:
        s = np.abs(np.nan_to_num(x))
        for a, b in layer_bounds(graph):
            nz = np.flatnonzero(s[a:b])
            parts.append(a + _ranked(s[a:b], nz, nz.shape[0]))
    else:
        s = np.abs(np.nan_to_num(np.asarray(x, np.float64)))
        for a, b in layer_bounds(graph):
            o = np.argsort(-s[a:b], kind="stable")
            parts.append(a + o[s[a:b][o] > 0])
    out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return out.astype(np.int32 if graph.num_edges < 2**31 else np.int64)
