"""The 2D circuit view: a layered diagram (dash-cytoscape, preset positions) with feature-visualization
thumbnails on the nodes and kernel glyphs on the edges (each kernel is a small node on its edge)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

MAX_EDGES_2D = 80
COL = 220
ROW = 90

STYLESHEET = [
    {"selector": "node.filter", "style": {
        "width": 46, "height": 46, "shape": "round-rectangle", "background-color": "#eee", "label": "data(label)",
        "font-size": 9, "text-valign": "bottom", "text-margin-y": 3, "border-width": 1, "border-color": "#999"}},
    {"selector": "node.filter[img]", "style": {"background-image": "data(img)", "background-fit": "cover"}},
    {"selector": "node.kernel", "style": {
        "width": 18, "height": 18, "shape": "rectangle", "background-image": "data(img)",
        "background-fit": "cover", "border-width": 1, "border-color": "#666"}},
    {"selector": "edge", "style": {"width": "data(w)", "line-color": "data(color)", "curve-style": "bezier",
                                   "opacity": 0.8}},
    {"selector": "edge.in", "style": {"target-arrow-shape": "triangle", "target-arrow-color": "data(color)",
                                      "arrow-scale": 0.6}},
    {"selector": ":selected", "style": {"border-width": 3, "border-color": "#ff7f0e"}},
]


def circuit_elements(graph, nodes: Sequence[int], edges: Sequence[int], edge_scores: np.ndarray,
                     node_img: Callable[[int], Optional[str]], kernel_img: Callable[[int], str],
                     max_edges: int = MAX_EDGES_2D) -> List[dict]:
    """Elements for the top ``max_edges`` circuit edges and the nodes they touch, laid out by layer."""
    edges = np.asarray(edges, np.int64)
    s = np.asarray(edge_scores, np.float64)
    if len(edges) > max_edges:
        edges = np.sort(edges[np.argsort(-np.abs(s[edges]), kind="stable")[:max_edges]])
    links = graph.links
    lo = np.searchsorted(links[:, 0], edges, "left")
    src_of = {int(e): int(links[l, 1]) for e, l in zip(edges, lo)}
    used = set(int(n) for n in graph.edge_target[edges]) | set(src_of.values())
    if len(edges) == 0:
        used = set(int(n) for n in nodes[:max_edges])
    pos: Dict[int, tuple] = {}
    by_depth: Dict[int, List[int]] = {}
    for n in sorted(used):
        by_depth.setdefault(graph.layers[int(graph.node_layer[n])].depth, []).append(n)
    for depth, ns in by_depth.items():
        for r, n in enumerate(ns):
            pos[n] = (depth * COL, (r - (len(ns) - 1) / 2) * ROW)
    els = []
    for n in sorted(used):
        img = node_img(n)
        els.append({"data": {"id": f"n{n}", "label": graph.node_id(n), "node": n, **({"img": img} if img else {})},
                    "position": {"x": pos[n][0], "y": pos[n][1]}, "classes": "filter"})
    top = float(np.abs(s[edges]).max()) if len(edges) else 1.0
    for e in edges:
        e = int(e)
        a, b = src_of[e], int(graph.edge_target[e])
        w = round(1 + 5 * float(np.sqrt(abs(s[e]) / (top or 1.0))), 2)
        color = "#b2182b" if s[e] >= 0 else "#2166ac"
        mid = ((pos[a][0] + pos[b][0]) / 2, (pos[a][1] + pos[b][1]) / 2)
        els.append({"data": {"id": f"k{e}", "edge": e, "img": kernel_img(e)},
                    "position": {"x": mid[0], "y": mid[1]}, "classes": "kernel"})
        els.append({"data": {"id": f"l{e}a", "source": f"n{a}", "target": f"k{e}", "w": w, "color": color}})
        els.append({"data": {"id": f"l{e}b", "source": f"k{e}", "target": f"n{b}", "w": w, "color": color},
                    "classes": "in"})
    return els
