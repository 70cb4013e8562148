"""For an empty circuit: the strictest threshold that still keeps a path from the input to the target,
in one widest-path pass instead of a bisection of circuit extractions.

A threshold keeps a path exactly when it keeps every edge of some path, so the answer is set by the
path whose weakest edge is strongest (its bottleneck b*):
- ``min_score``: b* itself (edges with |score| >= b*);
- ``keep`` (top-k): the number of edges with |score| >= b* (any smaller k drops the b* edge, and no
  path avoids every edge <= b*);
- ``mass`` (per layer, the top edges holding that share of the layer's |score|): an edge is kept once the
  mass passes the share of its layer held by the edges ranked above it, so the bottleneck is taken
  over that share (the smallest worst share along a path).
:func:`viscnn.importance.methods.strictest_threshold` (bisection) is the slow reference in the tests.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from viscnn.graph import Graph
from viscnn.graph.widest_paths import WidestPaths


def share_above(graph: Graph, ae: np.ndarray) -> np.ndarray:
    """Per edge, the share of its layer's |score| held by the edges ranked above it (stable order by
    descending |score|, as the mass threshold ranks them)."""
    out = np.ones(len(ae))
    for l in graph.layers:
        if l.kind == "input" or l.num_edges == 0:
            continue
        a, b = l.edge_offset, l.edge_offset + l.num_edges
        s = ae[a:b]
        tot = float(s.sum())
        if tot <= 0:
            continue
        order = np.argsort(-s, kind="stable")
        ranked = s[order].astype(np.float64)
        out[a + order] = (np.cumsum(ranked) - ranked) / tot
    return out


def strictest_by_paths(graph: Graph, edge_scores: np.ndarray, rule: str,
                       target_nodes: Sequence[int]) -> Optional[float]:
    """The strictest ``rule`` value (``keep`` count, ``mass``, ``min_score``) whose circuit keeps a path to
    ``target_nodes``; None when no path of nonzero edges exists at all."""
    ae = np.abs(np.nan_to_num(np.asarray(edge_scores, np.float64).reshape(-1)))
    usable = np.flatnonzero(ae > 0)
    ends = np.asarray(target_nodes, np.int64)
    if not len(usable) or not len(ends):
        return None
    if rule == "mass":
        weight = 2.0 - share_above(graph, ae)  # in (1, 2]: larger = kept at a smaller mass
    elif rule in ("keep", "min_score"):
        weight = ae
    else:
        raise ValueError(f"unknown threshold rule {rule!r}")
    wp = WidestPaths(graph, usable, weight, ends=ends)
    best = float(wp.score.max())
    if best <= 0:
        return None
    if rule == "min_score":
        return best
    if rule == "keep":
        return float(np.count_nonzero(ae >= best))
    # kept once mass * (1 - 1e-12) passes the share above (viscnn.importance.circuits._mass_keep)
    return min(1.0, (2.0 - best) + 1e-9)
