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
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from viscnn.graph.structure import Graph

SUFFIXES = ("index", "value", "ptr", "totals", "complete")
DEFAULTS = {"mass": 0.999, "min_per_layer": 256, "max_fraction": 0.02}


def layer_bounds(graph: Graph) -> List[Tuple[int, int]]:
    """(first edge, end) per graph layer (the input layer has none)."""
    return [(l.edge_offset, l.edge_offset + (l.num_edges if l.kind != "input" else 0)) for l in graph.layers]


def sparsify(graph: Graph, scores: np.ndarray, mass: float = DEFAULTS["mass"], min_per_layer: int = DEFAULTS["min_per_layer"],
             max_fraction: float = DEFAULTS["max_fraction"]) -> Dict[str, np.ndarray]:
    """One row: {"index", "value", "counts" [L], "totals" [L], "complete" [L]}. Per layer the same edges,
    in the same order, as the first ones of a stable descending sort of |score| (ties by index)."""
    import torch

    s32 = np.nan_to_num(np.asarray(scores, np.float32).reshape(-1))  # the values as stored (float32)
    t_abs = torch.from_numpy(s32).abs()
    a_ = t_abs.numpy()
    idx, counts, totals, complete = [], [], [], []
    for a, b in layer_bounds(graph):
        seg_t = t_abs[a:b]
        seg = a_[a:b]
        tot = float(seg_t.sum(dtype=torch.float64)) if b > a else 0.0
        nnz = int(torch.count_nonzero(seg_t)) if b > a else 0
        cap = max(min_per_layer, int(np.ceil(max_fraction * (b - a))))
        if nnz <= cap:  # small layer or few nonzero: store it whole
            nz = np.flatnonzero(seg)
            o = nz[np.lexsort((nz, -seg[nz]))]
        else:  # the cap largest (a partial selection), then the mass cut inside them
            vals, top = _top(seg_t, cap)
            vals = vals.astype(np.float64)
            cum = np.cumsum(vals)
            need = int(np.searchsorted(cum, mass * tot - 1e-12 * tot, "left")) + 1
            n = min(max(need, min_per_layer), cap)
            thr = vals[n - 1]
            if (n < cap and vals[n] == thr) or n == cap:  # a tie may straddle the cut: take its lowest indices
                above = top[:n][vals[:n] > thr]
                o = np.concatenate([above, np.flatnonzero(seg == thr)[:n - len(above)]])
            else:
                o = top[:n]
            o = o[np.lexsort((o, -seg[o]))]
        idx.append(a + o)
        counts.append(len(o))
        totals.append(tot)
        complete.append(len(o) == nnz)
    index = np.concatenate(idx).astype(np.int64) if idx else np.zeros(0, np.int64)
    return {"index": index, "value": s32[index], "counts": np.asarray(counts, np.int64),
            "totals": np.asarray(totals, np.float64), "complete": np.asarray(complete, bool)}


def _top(seg, k: int):
    """(values, indices) of the k largest of a 1-D tensor, descending. A big layer is first cut to the
    entries above a quantile estimated from an even sample (one cheap pass), then ``torch.topk`` runs on
    those; where the estimate leaves fewer than k it falls back to the whole layer."""
    import torch

    n = seg.shape[0]
    if n > 16 * k and n > 65536:
        sample = seg[:: max(1, n // 16384)]
        t = torch.quantile(sample.double(), 1.0 - 3.0 * k / n).item()
        cand = torch.nonzero(seg > t).squeeze(1)
        if cand.shape[0] >= k:
            v, j = torch.topk(seg[cand], k, sorted=True)
            return v.numpy(), cand[j].numpy()
    v, j = torch.topk(seg, k, sorted=True)
    return v.numpy(), j.numpy()


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
    the stored ordering of a dense row (``edges_all.order.npy``)."""
    s = np.abs(np.nan_to_num(np.asarray(scores, np.float64)))
    parts = []
    for a, b in layer_bounds(graph):
        o = np.argsort(-s[a:b], kind="stable")
        parts.append(a + o[s[a:b][o] > 0])
    out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return out.astype(np.int32 if graph.num_edges < 2**31 else np.int64)
