"""The 3D graph: layers along x, nodes placed in each layer's (y, z) plane by a 2D layout, and the
circuit's edges drawn as a few line traces (bucketed by sign and importance), never one per edge.

Level of detail: at most ``max_edges`` edges (the most important) are shipped to the browser; the
caller shows how many were hidden. Click payloads carry ``customdata``: a node's index (>= 0), or
``-(edge + 1)`` for a point of an edge's line.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

MAX_EDGES = 1500
LAYER_GAP = 4.0
N_BUCKETS = 4
POS_COLOR = (214, 39, 40)
NEG_COLOR = (31, 119, 180)
WIDTHS = (1.0, 2.0, 3.5, 6.0)
ALPHAS = (0.25, 0.45, 0.7, 0.95)


def node_positions(graph, xy: np.ndarray, layer_gap: float = LAYER_GAP) -> np.ndarray:
    """float32 [N, 3]: x = layer depth * gap; (y, z) = the layer's 2D layout, centred and scaled so
    that a layer's radius grows with the square root of its width."""
    xy = np.asarray(xy, np.float64)
    pos = np.zeros((graph.num_nodes, 3), np.float64)
    widest = max(l.channels for l in graph.layers)
    for layer in graph.layers:
        sl = slice(layer.node_offset, layer.node_offset + layer.channels)
        p = xy[sl] - xy[sl].mean(0)
        scale = float(np.abs(p).max()) if layer.channels > 1 else 1.0
        p = p / (scale or 1.0) * (0.6 + 2.4 * np.sqrt(layer.channels / widest))
        pos[sl, 0] = layer.depth * layer_gap
        pos[sl, 1:] = p
    return pos.astype(np.float32)


def select_drawn(edges: np.ndarray, scores: np.ndarray, max_edges: int = MAX_EDGES) -> np.ndarray:
    """The ``max_edges`` circuit edges with the largest |score| (all of them if fewer), sorted."""
    edges = np.asarray(edges, np.int64)
    if len(edges) <= max_edges:
        return edges
    s = np.abs(np.asarray(scores)[edges])
    top = np.argpartition(-s, max_edges - 1)[:max_edges]
    return np.sort(edges[top])


def _links_of(graph, edges: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(edge, source node) rows of ``graph.links`` for the given sorted edges."""
    links = graph.links
    lo = np.searchsorted(links[:, 0], edges, "left")
    hi = np.searchsorted(links[:, 0], edges, "right")
    counts = hi - lo
    idx = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    return links[idx, 0].astype(np.int64), links[idx, 1].astype(np.int64)


def _rgba(rgb, a) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{a})"


def edge_traces(graph, pos: np.ndarray, drawn: np.ndarray, scores: np.ndarray,
                signs: Optional[np.ndarray] = None) -> List[dict]:
    """Scatter3d line traces for ``drawn`` edges: one per (sign, importance bucket) that is used."""
    if len(drawn) == 0:
        return []
    e, src = _links_of(graph, np.asarray(drawn, np.int64))
    tgt = graph.edge_target[e].astype(np.int64)
    s = np.asarray(scores, np.float64)[e]
    sg = np.sign(np.asarray(signs, np.float64)[e]) if signs is not None else np.sign(s)
    mag = np.abs(s)
    top = float(mag.max()) or 1.0
    bucket = np.minimum((np.sqrt(mag / top) * N_BUCKETS).astype(np.int64), N_BUCKETS - 1)
    traces = []
    for neg in (False, True):
        for b in range(N_BUCKETS):
            m = (bucket == b) & ((sg < 0) if neg else (sg >= 0))
            if not m.any():
                continue
            a, c = src[m], tgt[m]
            k = len(a)
            xyz = np.full((k * 3, 3), np.nan, np.float32)
            xyz[0::3] = pos[a]
            xyz[1::3] = pos[c]
            cd = np.repeat(-(e[m] + 1), 3)
            traces.append({
                "type": "scatter3d", "mode": "lines", "name": f"{'-' if neg else '+'} edges q{b + 1}",
                "x": _r(xyz[:, 0]), "y": _r(xyz[:, 1]), "z": _r(xyz[:, 2]), "customdata": cd.tolist(),
                "line": {"color": _rgba(NEG_COLOR if neg else POS_COLOR, ALPHAS[b]), "width": WIDTHS[b]},
                "hovertemplate": "edge %{customdata}<extra></extra>", "showlegend": False,
                "connectgaps": False,
            })
    return traces


def _r(a: np.ndarray) -> list:
    """Rounded coordinates as a JSON-friendly list (NaN -> None, a gap between segments)."""
    r = np.round(a.astype(np.float64), 3)
    out = r.tolist()
    if np.isnan(r).any():
        out = [None if v != v else v for v in out]
    return out


def node_trace(graph, pos: np.ndarray, circuit_nodes: Sequence[int], node_scores: np.ndarray,
               labels: Optional[Sequence[str]] = None, selected: Optional[int] = None) -> dict:
    """All nodes as one marker trace; circuit nodes are larger and coloured by score."""
    n = graph.num_nodes
    ns = np.abs(np.asarray(node_scores, np.float64))
    inc = np.zeros(n, bool)
    inc[np.asarray(circuit_nodes, np.int64)] = True
    top = float(ns[inc].max()) if inc.any() else 1.0
    size = np.where(inc, 4 + 8 * np.sqrt(ns / (top or 1.0)), 3.0)
    color = np.where(inc, np.round(np.sqrt(ns / (top or 1.0)), 3), -1.0)
    if selected is not None and 0 <= selected < n:
        size[selected] = 16
    text = labels if labels is not None else [graph.node_id(i) for i in range(n)]
    return {
        "type": "scatter3d", "mode": "markers", "name": "nodes", "x": _r(pos[:, 0]), "y": _r(pos[:, 1]),
        "z": _r(pos[:, 2]), "customdata": list(range(n)), "text": list(text),
        "marker": {"size": np.round(size, 1).tolist(), "color": color.tolist(), "cmin": -1, "cmax": 1,
                   "colorscale": [[0, "#d0d0d0"], [0.499, "#d0d0d0"], [0.5, "#fde0c5"], [1, "#b2182b"]],
                   "line": {"width": 0}, "opacity": 0.95},
        "hovertemplate": "%{text}<extra></extra>", "showlegend": False,
    }


def layer_labels(graph, pos: np.ndarray) -> List[dict]:
    """Layer names above each layer as scene annotations: drawn as page text that follows the camera.
    (A scatter3d text trace looks the same but triangulates every glyph on the CPU: ~0.3 s of first paint.)"""
    top = float(pos[:, 2].max()) + 1.0 if len(pos) else 1.0
    return [{"x": float(pos[layer.node_offset, 0]), "y": 0.0, "z": top, "text": layer.name, "showarrow": False,
             "font": {"size": 11, "color": "#555"}} for layer in graph.layers]


def graph_figure(graph, pos: np.ndarray, circuit_nodes: Sequence[int], drawn_edges: np.ndarray,
                 node_scores: np.ndarray, edge_scores: np.ndarray, signs: Optional[np.ndarray] = None,
                 labels: Optional[Sequence[str]] = None, selected: Optional[int] = None,
                 uirevision: str = "graph") -> dict:
    """The whole 3D figure as a plain Plotly dict (no validation pass: it is rebuilt on every change)."""
    data = edge_traces(graph, pos, drawn_edges, edge_scores, signs)
    data.append(node_trace(graph, pos, circuit_nodes, node_scores, labels, selected))
    axis = {"visible": False, "showspikes": False}
    return {"data": data, "layout": {
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "uirevision": uirevision, "showlegend": False,
        "scene": {"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "manual",
                  "aspectratio": {"x": 2.2, "y": 1.0, "z": 1.0}, "annotations": layer_labels(graph, pos),
                  "camera": {"eye": {"x": 0.0, "y": -2.6, "z": 0.9}}},
        "paper_bgcolor": "white", "hovermode": "closest",
    }}


def count_drawn(fig: dict) -> int:
    """Edges drawn in a figure from :func:`graph_figure` (each edge is 3 points: source, target, gap)."""
    return sum(len(t["x"]) // 3 for t in fig["data"] if t.get("mode") == "lines")
