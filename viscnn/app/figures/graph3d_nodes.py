"""The 3D graph's nodes: which are drawn (level of detail), their traces, and reading them back from a figure."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from viscnn.app.figures import colors
from viscnn.app.figures.graph3d_labels import ASPECT, scene_ranges


def _links_of(graph, edges: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(edge, source node) rows of ``graph.links`` for the given sorted edges."""
    edges = np.asarray(edges, np.int64)
    owner, src = graph.link_rows(edges)
    return edges[owner], src


def _r(a: np.ndarray) -> list:
    """Rounded coordinates as a JSON-friendly list (NaN -> None, a gap between segments)."""
    r = np.round(a.astype(np.float64), 3)
    out = r.tolist()
    if np.isnan(r).any():
        out = [None if v != v else v for v in out]
    return out


MAX_NODES = 4000  # a graph with more nodes draws a bounded subset (level of detail for nodes)
MAX_CIRCUIT_NODES = 2500
MAX_CONTEXT_NODES = 1000


def drawn_nodes(graph, circuit_nodes: np.ndarray, node_scores: Optional[np.ndarray] = None, must=(),
                selected: Optional[int] = None) -> np.ndarray:
    """Sorted node indices the 3D graph draws: all of them up to :data:`MAX_NODES`. Beyond (ResNet-50:
    26,583 nodes, 4.2 MB of node trace), ``must`` (the drawn edges' ends) and the selected node, the
    circuit's highest-|score| nodes up to :data:`MAX_CIRCUIT_NODES`, every input and class node, and per
    conv layer an evenly spaced sample of the other channels (about :data:`MAX_CONTEXT_NODES` in all, in
    proportion to the layer's width), so the payload stays bounded while the layers keep their shape."""
    n = graph.num_nodes
    if n <= MAX_NODES:
        return np.arange(n)
    keep = np.zeros(n, bool)
    keep[np.asarray(list(must), np.int64)] = True
    if selected is not None and 0 <= selected < n:
        keep[selected] = True
    cn = np.asarray(circuit_nodes, np.int64)
    room = MAX_CIRCUIT_NODES - int(keep.sum())
    if len(cn) <= room or node_scores is None:
        keep[cn[:max(room, 0)] if node_scores is None else cn] = True
    elif room > 0:
        keep[cn[np.argsort(-np.abs(np.asarray(node_scores, np.float64)[cn]), kind="stable")[:room]]] = True
    conv = sum(l.channels for l in graph.layers if l.kind == "conv") or 1
    for l in graph.layers:
        sl = slice(l.node_offset, l.node_offset + l.channels)
        if l.kind != "conv":
            keep[sl] = True
            continue
        k = max(4, int(round(MAX_CONTEXT_NODES * l.channels / conv)))
        keep[l.node_offset + np.unique(np.linspace(0, l.channels - 1, min(k, l.channels)).round().astype(np.int64))] = True
    return np.flatnonzero(keep)


def edge_ends(graph, edges: np.ndarray) -> np.ndarray:
    """The target and every source node of the given edges."""
    edges = np.asarray(edges, np.int64)
    if not len(edges):
        return np.zeros(0, np.int64)
    _, src = _links_of(graph, edges)
    return np.unique(np.concatenate([graph.edge_target[edges].astype(np.int64), src]))


NODE_WIDTHS = ((4.5, 3.5), (8.0, 6.0), (11.0, 9.0), (16.0, 12.0), (99.0, 16.0))  # (marker size below, px width)
NODE_PX_PER_UNIT = 340.0  # screen pixels per normalised scene unit at the default camera (the app's panel)
NODE_PTS = 6  # points per drawn node: a segment along x and one along z, each with a gap after it
# more drawn nodes than this: one marker trace (6 points per node with their hover and colour would put
# ~0.5 kB per node in every threshold change; the first paint that crosses save matters on small graphs)
CROSS_MAX_NODES = 800


def node_traces(graph, pos: np.ndarray, circuit_nodes: Sequence[int], node_scores: np.ndarray,
                labels: Optional[Sequence[str]] = None, selected: Optional[int] = None,
                node_signs: Optional[np.ndarray] = None, drawn_edges: Sequence[int] = (),
                rng: Optional[Dict[str, list]] = None) -> List[dict]:
    """The drawn nodes (:func:`drawn_nodes`) as a few line traces named "nodes". Circuit nodes: size =
    |score| (sqrt scale), colour = the signed score on the diverging map; other nodes small and grey.
    Hover: id, layer, score, rank; every point's ``customdata`` is its node index.

    A node is a small cross of two segments (along the depth axis x and the vertical z) as thick as they
    are long: a blob from every side an orbit around z shows, one trace per size class: line traces, not a marker trace, because gl3d's marker trace
    compiles six more WebGL programs and triangulates its glyph on the CPU, about 0.3-0.4 s of the
    first paint in software WebGL (the app with and without it, 5 cold loads each)."""
    n = graph.num_nodes
    raw = np.asarray(node_scores, np.float64)
    ns = np.abs(raw)
    sg = np.sign(np.asarray(node_signs, np.float64)) if node_signs is not None else np.sign(raw)
    inc = np.zeros(n, bool)
    cn = np.asarray(circuit_nodes, np.int64)
    inc[cn] = True
    top = float(ns[inc].max()) if inc.any() else 1.0
    rel = np.sqrt(ns / (top or 1.0))
    size = np.where(inc, 5 + 9 * rel, 3.0)
    color = np.where(inc, np.round(np.where(sg < 0, -rel, rel), 3), 0.0)
    if selected is not None and 0 <= selected < n:
        size[selected] = 18
    order = cn[np.argsort(-ns[cn], kind="stable")]
    rank = np.zeros(n, np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    d = drawn_nodes(graph, cn, raw, edge_ends(graph, drawn_edges) if n > MAX_NODES else (), selected)
    text = labels if labels is not None else [graph.node_id(int(i)) for i in range(n)]
    c = color[d]
    rgb = colors.diverging_rgb(np.where(c >= 0, 1, -1) * np.maximum(np.abs(c), 0.25))  # one vectorised call
    css = np.array([f"rgb({r},{g},{b})" if inc[i] else colors.INACTIVE for i, (r, g, b) in zip(d.tolist(), rgb.tolist())],
                   dtype=object)
    hover = []
    for i in d.tolist():
        lay = graph.layers[int(graph.node_layer[i])]
        where = f"rank {rank[i]} of {len(cn)} circuit nodes" if inc[i] else "not in the circuit"
        name = text[i] if text[i].startswith(lay.name + ":") else f"{text[i]} · {lay.name}"  # ids carry the layer
        hover.append(f"{name} ({lay.kind})<br>score {raw[i]:.4g} · {where}")
    if len(d) > CROSS_MAX_NODES:  # a big graph: one point per node keeps the payload of a threshold change small
        return [{"type": "scatter3d", "mode": "markers", "name": "nodes", "x": _r(pos[d, 0]), "y": _r(pos[d, 1]),
                 "z": _r(pos[d, 2]), "customdata": d.tolist(), "text": hover,
                 "marker": {"size": np.round(size[d], 1).tolist(), "color": css.tolist(), "line": {"width": 0},
                            "opacity": 0.95},
                 "hovertemplate": "%{text}<extra></extra>", "showlegend": False}]
    hover = np.array(hover, dtype=object)
    rng = rng or scene_ranges(pos)
    per_px = np.array([(rng[a][1] - rng[a][0]) / ASPECT[a] / NODE_PX_PER_UNIT for a in "xyz"])  # data units per px
    width_of = np.array([w for _, w in NODE_WIDTHS])
    cls = np.searchsorted(np.array([b for b, _ in NODE_WIDTHS]), size[d], side="right")
    traces = []
    for k in np.unique(cls).tolist():
        m = cls == k
        dd, w = d[m], float(width_of[k])
        xyz = np.full((len(dd), NODE_PTS, 3), np.nan, np.float64)
        for k_seg, ax in enumerate((0, 2)):  # segment k: points 3k (minus) and 3k+1 (plus), then a gap
            off = np.zeros(3)
            off[ax] = per_px[ax] * w * 0.35  # arms shorter than the line is thick: a blob, not a plus sign
            xyz[:, 3 * k_seg] = pos[dd] - off
            xyz[:, 3 * k_seg + 1] = pos[dd] + off
        xyz = xyz.reshape(-1, 3)
        cd = np.repeat(dd, NODE_PTS).astype(object)
        cd[2::3] = None  # the gap after each segment
        tx = np.repeat(hover[m], NODE_PTS)
        tx[2::3] = ""
        traces.append({
            "type": "scatter3d", "mode": "lines", "name": "nodes", "x": _r(xyz[:, 0]), "y": _r(xyz[:, 1]),
            "z": _r(xyz[:, 2]), "customdata": [None if v is None else int(v) for v in cd], "text": tx.tolist(),
            "line": {"color": np.repeat(css[m], NODE_PTS).tolist(), "width": w},
            "hovertemplate": "%{text}<extra></extra>", "showlegend": False, "connectgaps": False,
        })
    return traces


def nodes_of(fig: dict) -> Dict[int, Tuple[float, str, str]]:
    """{node index: (drawn width in px, colour, hover text)} of a figure from :func:`graph_figure`."""
    out = {}
    for t in fig["data"]:
        if t.get("name") != "nodes":
            continue
        if t["mode"] == "markers":  # a big graph's nodes (CROSS_MAX_NODES)
            for j, n in enumerate(t["customdata"]):
                out[int(n)] = (t["marker"]["size"][j], t["marker"]["color"][j], t["text"][j])
            continue
        for j in range(0, len(t["customdata"]), NODE_PTS):
            out[int(t["customdata"][j])] = (t["line"]["width"], t["line"]["color"][j], t["text"][j])
    return out
