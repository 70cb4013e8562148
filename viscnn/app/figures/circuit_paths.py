"""Which circuit edges the capped 2D diagram draws: the kernels of the circuit's strongest complete
paths from the input to the target.

A per-layer quota of top edges leaves a deep circuit (ResNet-50: 53 layers, 40 drawn edges) in
disconnected fragments. Here every circuit edge gets a *path score*: the weakest |score| on the best
input-to-sink path through it (the widest path, from two passes of dynamic programming over the
layers, which are in topological order). The diagram then takes whole paths: for the edges in order
of path score, the best path through each (traced back from the passes' pointers) while the cap has
room (skipping one that does not fit). Bottleneck scores tie a lot (every edge whose best path crosses the same weakest kernel), so
ranking edges alone would cut paths apart; tracing them does not.
"""

from __future__ import annotations

from typing import List

import numpy as np

from viscnn.graph.widest_paths import WidestPaths


def capped_path_edges(graph, edges, scores, max_edges: int, paths=None) -> np.ndarray:
    """At most ``max_edges`` of the circuit ``edges``, sorted: whole best paths, taken for the edges in
    order of path score (then |score|) when they fit (a path longer than the room left is skipped, so
    fewer than ``max_edges`` may be drawn), then, while room is left, the strongest edges on no complete
    path (a circuit in fragments is still drawn)."""
    edges = np.asarray(edges, np.int64)
    if len(edges) <= max_edges:
        return np.sort(edges)
    wp = paths if paths is not None else WidestPaths(graph, edges, scores)
    w = wp.w
    chosen: set = set()
    for i in _ranked(wp.score, w, 8 * max_edges):  # at most 8 tries per edge of room
        if wp.score[i] <= 0 or len(chosen) >= max_edges:
            break
        if i in chosen:
            continue
        new = [p for p in wp.path(int(i)) if p not in chosen]
        if len(chosen) + len(new) <= max_edges:  # a path that does not fit is skipped: a later one may
            chosen.update(new)
    loose = np.flatnonzero(wp.score <= 0)  # on no complete path: fragments, drawn if room is left
    room = max_edges - len(chosen)
    if room > 0 and len(loose):
        chosen.update(loose[np.argsort(-w[loose], kind="stable")[:room]].tolist())
    return np.sort(wp.edges[np.fromiter(chosen, np.int64, len(chosen))])


def _ranked(score: np.ndarray, w: np.ndarray, head: int) -> List[int]:
    """The first ``head`` positions by path score, then |score|, descending, from a partial selection
    (a full lexsort of a million edges took 0.2 s; the caller never looks further)."""
    top = np.argpartition(-score, head)[:head] if len(score) > head else np.arange(len(score))
    return top[np.lexsort((-w[top], -score[top]))].tolist()
