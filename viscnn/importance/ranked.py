"""Per-layer edge orderings, so a threshold change costs O(edges kept), not a sort of every edge.

:class:`RankedEdges` holds, per layer, the nonzero edges sorted by |score| (descending, ties in index
order: the order :func:`viscnn.importance.circuits.extract_circuit` uses), their cumulative |score| and
the layer's true |score| total. It is built once per score vector (a dense one is sorted once; a sparse
prepped row is stored sorted, :mod:`viscnn.importance.sparse_scores`) and answers ``mass``, ``keep`` and
``min_score`` by binary search. Built from a sparse row (only each layer's top edges stored), it also
says whether the answer is *exact*: the same edges the dense scores would give.

:func:`extract_circuit_ranked` is the fast twin of ``extract_circuit``: the same circuit (tested against
it), with connectivity propagated over the kept edges' links only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.circuits import keep_count


@dataclass
class RankedEdges:
    order: np.ndarray  # int64 global edge indices, grouped by layer, |score| descending within a layer
    values: np.ndarray  # float64 signed scores aligned with order
    starts: np.ndarray  # int64 [L + 1]: layer l's entries are order[starts[l]:starts[l + 1]]
    totals: np.ndarray  # float64 [L]: the layer's sum of |score| over all its edges
    complete: np.ndarray  # bool [L]: every nonzero edge of the layer is stored
    num_edges: int
    dense: Optional[np.ndarray] = None  # the full signed score vector, where there is one (score lookups)

    @classmethod
    def from_dense(cls, graph: Graph, edge_scores: np.ndarray) -> "RankedEdges":
        s = np.nan_to_num(np.abs(np.asarray(edge_scores, np.float64).reshape(-1)))
        if s.shape[0] != graph.num_edges:
            raise ViscnnError(f"scores do not fit the graph: {s.shape[0]} edges given, graph has {graph.num_edges}")
        signed = np.asarray(edge_scores, np.float64).reshape(-1)
        parts, starts, totals = [], [0], []
        for l in graph.layers:
            a, b = l.edge_offset, l.edge_offset + (l.num_edges if l.kind != "input" else 0)
            seg = s[a:b]
            totals.append(seg.sum() if b > a else 0.0)
            o = np.argsort(-seg, kind="stable")
            o = o[seg[o] > 0]
            parts.append(a + o)
            starts.append(starts[-1] + len(o))
        order = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return cls(order, signed[order], np.asarray(starts, np.int64), np.asarray(totals, np.float64),
                   np.ones(len(graph.layers), bool), graph.num_edges, dense=np.asarray(edge_scores).reshape(-1))

    def __post_init__(self) -> None:  # built eagerly: one RankedEdges is shared by request threads
        self._absv = np.abs(self.values)
        self._cum = np.zeros(len(self.values))
        for l in range(len(self.totals)):  # cumulative |score| restarting at each layer
            a, b = self.starts[l], self.starts[l + 1]
            self._cum[a:b] = np.cumsum(self._absv[a:b])
        if self.dense is None:
            self._sorted = np.argsort(self.order, kind="stable")
            self._okeys = self.order[self._sorted]

    # -- per layer ------------------------------------------------------------------------
    def _abs(self) -> np.ndarray:
        return self._absv

    def select(self, *, mass: Optional[float] = None, keep: Union[int, float, None] = None,
               min_score: Optional[float] = None) -> Tuple[np.ndarray, bool]:
        """(sorted global indices of the edges passing the threshold, exact)."""
        av = self._abs()
        L = len(self.totals)
        take: List[np.ndarray] = []
        exact = True
        if mass is not None:
            if not 0 < mass <= 1:
                raise ViscnnError(f"mass must be in (0, 1], got {mass}")
            for l in range(L):
                a, b, tot = self.starts[l], self.starts[l + 1], self.totals[l]
                if b <= a or tot <= 0:
                    continue
                n = int(np.searchsorted(self._cum[a:b], mass * tot - 1e-12 * tot, "left")) + 1
                if n > b - a and not self.complete[l]:
                    exact = False
                take.append(self.order[a:a + min(n, b - a)])
        elif keep is not None:
            k = keep_count(keep, self.num_edges)
            if k > 0 and len(av):
                if k >= len(av):
                    t = 0.0
                    take.append(self.order)
                    exact = bool(self.complete.all())
                else:
                    t = -np.partition(-av, k - 1)[k - 1]  # the k-th largest |score|
                    above = av > t
                    tie = np.flatnonzero(av == t)[:k - int(above.sum())]
                    above[tie] = True
                    take.append(self.order[above])
                    exact = _exact_above(self, t)
        else:
            t = float(min_score)
            for l in range(L):
                a, b = self.starts[l], self.starts[l + 1]
                n = int(np.searchsorted(-av[a:b], -t, "right"))  # entries with |score| >= t
                take.append(self.order[a:a + n])
            exact = _exact_above(self, t, inclusive=True)
        kept = np.sort(np.concatenate(take)) if take else np.zeros(0, np.int64)
        return kept.astype(np.int64), exact

    def score_of(self, edges: np.ndarray) -> np.ndarray:
        """Signed scores of stored edges (0 for an edge not stored)."""
        edges = np.asarray(edges, np.int64)
        if self.dense is not None:
            return np.asarray(self.dense[edges], np.float64)
        i = np.searchsorted(self._okeys, edges)
        i = np.minimum(i, max(len(self._okeys) - 1, 0))
        hit = (self._okeys[i] == edges) if len(self._okeys) else np.zeros(len(edges), bool)
        return np.where(hit, self.values[self._sorted[i]] if len(self._okeys) else 0.0, 0.0)


def _exact_above(r: RankedEdges, t: float, inclusive: bool = False) -> bool:
    """Whether no unstored edge can pass ``|score| > t`` (or ``>= t``): every incomplete layer's
    smallest stored |score| bounds its unstored ones."""
    av = r._abs()
    for l in np.flatnonzero(~r.complete):
        a, b = r.starts[l], r.starts[l + 1]
        low = av[b - 1] if b > a else np.inf
        if (t < low) if not inclusive else (t <= low):
            return False
    return True


# -- connectivity over the kept edges only ------------------------------------------------------
def connectivity_of_kept(graph: Graph, kept: np.ndarray, target_nodes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``circuits.connectivity`` with every node allowed, computed over the kept edges' links only."""
    ptr = graph.link_ptr
    kept = np.asarray(kept, np.int64)
    lens = ptr[kept + 1] - ptr[kept]
    rows = np.repeat(ptr[kept], lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
    le = graph.links[rows, 0].astype(np.int64)
    ls = graph.links[rows, 1].astype(np.int64)
    et = graph.edge_target[le].astype(np.int64)
    lay = graph.edges[le, 0]
    bounds = np.searchsorted(lay, np.arange(len(graph.layers) + 1))
    segs = [(bounds[i], bounds[i + 1]) for i in range(len(graph.layers)) if bounds[i + 1] > bounds[i]]
    fwd = np.zeros(graph.num_nodes, bool)
    fwd[:graph.layers[0].channels] = True
    for a, b in segs:
        fwd[et[a:b][fwd[ls[a:b]]]] = True
    bwd = np.zeros(graph.num_nodes, bool)
    bwd[target_nodes] = True
    for a, b in reversed(segs):
        bwd[ls[a:b][bwd[et[a:b]]]] = True
    live = fwd & bwd
    ok = live[ls] & live[et]
    # an edge stays when any of its links does; its links are the contiguous run of ``lens`` rows
    has = lens > 0
    any_ok = np.zeros(len(kept), bool)
    if len(ok):
        any_ok[has] = np.add.reduceat(ok, (np.cumsum(lens) - lens)[has]) > 0
    edges = kept[any_ok]
    touched = np.zeros(graph.num_nodes, bool)
    touched[graph.edge_target[edges]] = True
    touched[ls[np.repeat(any_ok, lens)]] = True
    nodes = np.flatnonzero(live & touched)
    return nodes.astype(np.int64), edges.astype(np.int64)


def extract_circuit_ranked(graph: Graph, ranked: RankedEdges, node_scores: np.ndarray, *, mass: Optional[float] = None,
                           keep: Union[int, float, None] = None, min_score: Optional[float] = None,
                           target_nodes: Optional[Sequence[int]] = None):
    """``extract_circuit``'s circuit from a :class:`RankedEdges`; ``settings["exact"]`` is False where
    sparse scores could not decide the threshold (the circuit then uses every stored edge it reaches)."""
    from viscnn.importance.circuits import Circuit, check_one_threshold, resolve_targets, threshold_settings

    check_one_threshold(mass, keep, min_score)
    node_scores = np.asarray(node_scores, np.float64).reshape(-1)
    if node_scores.shape[0] != graph.num_nodes:
        raise ViscnnError(f"scores do not fit the graph: {node_scores.shape[0]} nodes given, graph has {graph.num_nodes}")
    kept, exact = ranked.select(mass=mass, keep=keep, min_score=min_score)
    settings = threshold_settings(mass, keep, min_score)
    target_nodes = resolve_targets(graph, target_nodes)
    nodes, edges = connectivity_of_kept(graph, kept, target_nodes)
    settings["target_nodes"] = [graph.node_id(int(i)) for i in target_nodes]
    if not bool(ranked.complete.all()):
        settings["exact"] = bool(exact)
    return Circuit(nodes, edges, node_scores[nodes], ranked.score_of(edges), settings)
