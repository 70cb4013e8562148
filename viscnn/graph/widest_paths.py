"""Widest (bottleneck) paths through a set of kernel edges: for each edge, the largest min weight over
the input-to-end paths through it, from two passes of dynamic programming over the layers (which are
in topological order: a kernel's sources lie in earlier layers), with pointers to trace that path.

Used by the 2D circuit (draw whole paths) and for an empty circuit's strictest threshold that still
keeps a path (the widest path's bottleneck is exactly that threshold for top-k and min-score).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np


def _layer_runs(graph, edges: np.ndarray):
    """Slices of sorted ``edges``, one per layer, in layer (topological) order."""
    lay = np.asarray(graph.node_layer)[np.asarray(graph.edge_target)[edges]]
    cuts = np.flatnonzero(np.diff(lay)) + 1
    bounds = np.concatenate([[0], cuts, [len(edges)]]).astype(np.int64)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def sinks(graph, edges: np.ndarray, src: Optional[np.ndarray] = None) -> np.ndarray:
    """Circuit nodes where paths end: targets of circuit edges that feed no circuit edge (``src``: the
    edges' source nodes, when already known)."""
    if src is None:
        _, src = graph.link_rows(edges)
    ends = np.zeros(graph.num_nodes, bool)
    ends[np.asarray(graph.edge_target)[edges]] = True
    ends[src] = False
    return np.flatnonzero(ends)


def _scatter_best(best: np.ndarray, ptr: np.ndarray, keys: np.ndarray, vals: np.ndarray, payload: np.ndarray) -> None:
    """In place: ``best[k] = max(best[k], vals of key k)``, and ``ptr[k]`` = the payload of a value that
    raised it. ``ufunc.at`` and masks only: a lexsort per layer cost 10x the rest."""
    cand = np.zeros_like(best)
    np.maximum.at(cand, keys, vals)
    better = cand > best
    hit = better[keys] & (vals == cand[keys])
    ptr[keys[hit]] = payload[hit]
    best[better] = cand[better]


class WidestPaths:
    """The two dynamic-programming passes over a circuit (``edges``: graph edge indices, any order;
    ``scores``: per-edge weights of the whole graph, their |value| counts): :attr:`score` per circuit
    edge (0 when no complete path crosses it) and :meth:`path` to trace the best path through an edge.
    ``ends``: the nodes paths must reach (default: :func:`sinks`, where the circuit's edges stop)."""

    def __init__(self, graph, edges, scores, ends: Optional[np.ndarray] = None):
        self.edges = e = np.sort(np.asarray(edges, np.int64))
        w = np.abs(np.asarray(scores)[e].astype(np.float64))  # not the whole graph's scores to float64
        self.w = w
        self.tgt = tgt = np.asarray(graph.edge_target)[e].astype(np.int64)
        owner, src = graph.link_rows(e)
        n = graph.num_nodes
        is_input = np.zeros(n, bool)
        for l in graph.layers:
            if l.kind == "input":
                is_input[l.node_offset:l.node_offset + l.channels] = True
        self.is_input = is_input
        fwd = np.where(is_input, np.inf, 0.0)
        self.in_ptr = np.full(n, -1, np.int64)  # node -> position of its best incoming edge
        self.best_src = np.full(len(e), -1, np.int64)  # edge -> its best-fed source node
        runs = _layer_runs(graph, e)
        link_runs = np.searchsorted(owner, [[r.start, r.stop] for r in runs]).reshape(-1, 2)
        fed = np.zeros(len(e))
        for r, (la, lb) in zip(runs, link_runs):  # forward: best bottleneck from the input to each node
            o, s = owner[la:lb] - r.start, src[la:lb]
            f_r, b_r = np.zeros(r.stop - r.start), np.full(r.stop - r.start, -1, np.int64)
            _scatter_best(f_r, b_r, o, fwd[s], s)
            fed[r], self.best_src[r] = f_r, b_r
            via = np.minimum(w[r], f_r)
            _scatter_best(fwd, self.in_ptr, tgt[r], via, np.arange(r.start, r.stop))
        bwd = np.zeros(n)
        bwd[sinks(graph, e, src) if ends is None else np.asarray(ends, np.int64)] = np.inf
        self.out_ptr = np.full(n, -1, np.int64)  # node -> position of its best outgoing edge
        self.score = np.zeros(len(e))
        for r, (la, lb) in reversed(list(zip(runs, link_runs))):  # backward: best bottleneck to a sink
            down = np.minimum(w[r], bwd[tgt[r]])
            self.score[r] = np.minimum(down, fed[r])
            o = owner[la:lb]
            _scatter_best(bwd, self.out_ptr, src[la:lb], down[o - r.start], o)

    def path(self, i: int) -> List[int]:
        """Positions (into :attr:`edges`) of the best input-to-sink path through position ``i``."""
        out = [i]
        v = int(self.best_src[i])
        while v >= 0 and not self.is_input[v]:
            p = int(self.in_ptr[v])
            out.append(p)
            v = int(self.best_src[p])
        v = int(self.tgt[i])
        while self.out_ptr[v] >= 0:
            p = int(self.out_ptr[v])
            out.append(p)
            v = int(self.tgt[p])
        return out

    def union_of_paths(self, starts: np.ndarray) -> np.ndarray:
        """Sorted positions of the best paths through every position in ``starts`` (all traced at once,
        one vectorised step per layer instead of one Python step per edge)."""
        sel = np.zeros(len(self.edges), bool)
        starts = np.asarray(starts, np.int64)
        sel[starts] = True
        v = np.unique(self.best_src[starts])
        while len(v):  # towards the input
            v = v[(v >= 0) & ~self.is_input[np.maximum(v, 0)]]
            p = self.in_ptr[v]
            sel[p] = True
            v = np.unique(self.best_src[p])
        v = np.unique(self.tgt[starts])
        while len(v):  # towards the sinks
            p = self.out_ptr[v]
            p = p[p >= 0]
            sel[p] = True
            v = np.unique(self.tgt[p])
        return np.flatnonzero(sel)

    def strongest_paths(self, budget: int) -> np.ndarray:
        """Sorted positions of the whole best paths of the edges with the highest path scores (then
        |score|), as many as fit in ``budget`` edges together: a prefix of that order, found by bisection
        (the union only grows with the prefix). Empty when no complete path exists."""
        live = int(np.count_nonzero(self.score > 0))
        if budget <= 0 or live == 0:
            return np.zeros(0, np.int64)
        head = min(budget, live)
        top = np.argpartition(-self.score, head - 1)[:head] if len(self.score) > head else np.arange(len(self.score))
        order = top[np.lexsort((-self.w[top], -self.score[top]))]
        order = order[self.score[order] > 0]
        lo, hi = 0, len(order)  # the largest prefix whose union fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self.union_of_paths(order[:mid])) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return self.union_of_paths(order[:lo]) if lo else np.zeros(0, np.int64)


def path_scores(graph, edges, scores) -> np.ndarray:
    """float64 [len(edges)], in the order of ``edges``: each circuit edge's best bottleneck min |score|
    over the input-to-sink paths of circuit edges through it (0: on no complete path)."""
    edges = np.asarray(edges, np.int64)
    wp = WidestPaths(graph, edges, scores)
    return wp.score[np.searchsorted(wp.edges, edges)]


