"""The 3D graph: layers along x, nodes placed in each layer's (y, z) plane by a 2D layout, and the
circuit's edges drawn as a few line traces (bucketed by sign and importance), never one per edge.

Level of detail: at most ``max_edges`` edges (the most important) are shipped to the browser; the
caller shows how many were hidden. Click payloads carry ``customdata``: a node's index (>= 0), or
``-(edge + 1)`` for an edge. Each edge is drawn as source, midpoint, target, gap: the two end vertices
carry their node's index, so a click near a node picks the node even where an edge's line wins the
pick, and only a click on the middle of an edge picks the edge.

The nodes (which are drawn, their traces) are in :mod:`~viscnn.app.figures.graph3d_nodes`, the scene's
framing (ranges, camera) and layer and class names in :mod:`~viscnn.app.figures.graph3d_labels`; both are
re-exported here.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from viscnn.app.figures import colors
from viscnn.app.figures.graph3d_labels import (  # noqa: F401  (re-exported: callers use graph3d.X)
    ASPECT, DEFAULT_EYE, LABEL_FONT, LINE_HEIGHT, PANEL_PX, _screen_up, camera_center, class_labels, label_angle,
    label_style, layer_labels, scene_ranges)
from viscnn.app.figures.graph3d_nodes import (  # noqa: F401  (re-exported: callers use graph3d.X)
    CROSS_MAX_NODES, MAX_CIRCUIT_NODES, MAX_CONTEXT_NODES, MAX_NODES, NODE_PTS, NODE_PX_PER_UNIT, NODE_WIDTHS,
    _links_of, _r, drawn_nodes, edge_ends, node_traces, nodes_of)

MAX_EDGES = 1500
LAYER_GAP = 4.0
N_BUCKETS = 4
PTS = 4  # points per drawn edge: source, midpoint, target, gap
WIDTHS = (1.5, 2.5, 4.0, 6.5)
ALPHAS = (0.5, 0.65, 0.85, 0.95)
SELECTED = "#ff7f0e"


def layer_x(graph, layer_gap: float = LAYER_GAP) -> np.ndarray:
    """float64 [L]: each layer's position along the depth axis. Layers at the same depth (a block's
    conv and its 1x1 skip conv, Inception's parallel branches) sit side by side, half a gap apart in
    graph order, never on top of each other; the next depth starts a full gap after the last of them."""
    by_depth: Dict[int, List[int]] = {}
    for i, layer in enumerate(graph.layers):
        by_depth.setdefault(layer.depth, []).append(i)
    x = np.zeros(len(graph.layers), np.float64)
    cur = 0.0
    for n, depth in enumerate(sorted(by_depth)):
        if n:
            cur += 1.0
        for k, i in enumerate(by_depth[depth]):
            if k:
                cur += 0.5
            x[i] = cur * layer_gap
    return x


def node_positions(graph, xy: np.ndarray, layer_gap: float = LAYER_GAP) -> np.ndarray:
    """float32 [N, 3]: x = the layer's place along depth (:func:`layer_x`); (y, z) = the layer's 2D
    layout, centred and scaled so that a layer's radius grows with the square root of its width."""
    xy = np.asarray(xy, np.float64)
    pos = np.zeros((graph.num_nodes, 3), np.float64)
    widest = max(l.channels for l in graph.layers)
    lx = layer_x(graph, layer_gap)
    for li, layer in enumerate(graph.layers):
        sl = slice(layer.node_offset, layer.node_offset + layer.channels)
        p = xy[sl] - xy[sl].mean(0)
        scale = float(np.abs(p).max()) if layer.channels > 1 else 1.0
        p = p / (scale or 1.0) * (0.6 + 2.4 * np.sqrt(layer.channels / widest))
        pos[sl, 0] = lx[li]
        pos[sl, 1:] = p
    return pos.astype(np.float32)


def select_drawn(edges: np.ndarray, scores: np.ndarray, max_edges: int = MAX_EDGES, graph=None,
                 paths=None) -> np.ndarray:
    """At most ``max_edges`` circuit edges (all of them if fewer), sorted. With the ``graph``: first the
    circuit's strongest whole input-to-target paths, up to half the budget
    (:meth:`viscnn.graph.widest_paths.WidestPaths.strongest_paths`), then the largest |score| left;
    without it, the largest |score| only. (Top |score| alone drew 1,500 kernels of a ResNet-50 circuit
    of which none lay on a drawn path from the input to the target.) ``paths``: the circuit's
    :class:`~viscnn.graph.widest_paths.WidestPaths` when already made (the 2D diagram shares it)."""
    edges = np.asarray(edges, np.int64)
    if len(edges) <= max_edges:
        return edges
    s = np.abs(np.asarray(scores)[edges]).astype(np.float64)
    first = np.zeros(0, np.int64)
    if graph is not None or paths is not None:
        from viscnn.graph.widest_paths import WidestPaths

        order = np.argsort(edges, kind="stable")
        wp = paths if paths is not None else WidestPaths(graph, edges, scores)
        first = order[wp.strongest_paths(max_edges // 2)]  # positions into ``edges``
        s[first] = -np.inf
    rest = max_edges - len(first)
    top = np.argpartition(-s, rest - 1)[:rest] if rest > 0 else np.zeros(0, np.int64)
    return np.sort(np.concatenate([edges[first], edges[top]]))


def edge_color(negative: bool, bucket: int) -> str:
    """The line colour of an importance bucket: the diverging map's end colour, more opaque when larger."""
    h = colors.NEG if negative else colors.POS
    return f"rgba({int(h[1:3], 16)},{int(h[3:5], 16)},{int(h[5:7], 16)},{ALPHAS[bucket]})"


def edge_buckets(scores: np.ndarray) -> np.ndarray:
    """Importance bucket 0..N_BUCKETS-1 of each |score|, relative to the largest (sqrt scale)."""
    mag = np.abs(np.asarray(scores, np.float64))
    top = float(mag.max()) if mag.size else 1.0
    return np.minimum((np.sqrt(mag / (top or 1.0)) * N_BUCKETS).astype(np.int64), N_BUCKETS - 1)


def edge_traces(graph, pos: np.ndarray, drawn: np.ndarray, scores: np.ndarray,
                signs: Optional[np.ndarray] = None, labels: Optional[Sequence[str]] = None) -> List[dict]:
    """Scatter3d line traces for ``drawn`` edges: one per (sign, importance bucket) that is used.
    Colour = sign (of ``signs`` when given, else of the scores); width and opacity = |score| bucket."""
    if len(drawn) == 0:
        return []
    e, src = _links_of(graph, np.asarray(drawn, np.int64))
    tgt = graph.edge_target[e].astype(np.int64)
    s = np.asarray(scores)[e].astype(np.float64)  # index first: never convert all E scores
    sg = np.sign(np.asarray(signs)[e].astype(np.float64)) if signs is not None else np.sign(s)
    bucket = edge_buckets(s)
    uniq = np.unique(e)
    rank = {int(v): r + 1 for r, v in enumerate(uniq[np.argsort(-np.abs(np.asarray(scores)[uniq]), kind="stable")])}
    text = labels if labels is not None else [graph.node_id(i) for i in range(graph.num_nodes)]
    traces = []
    for neg in (False, True):
        for b in range(N_BUCKETS):
            m = (bucket == b) & ((sg < 0) if neg else (sg >= 0))
            if not m.any():
                continue
            a, c, em = src[m], tgt[m], e[m]
            k = len(a)
            xyz = np.full((k * PTS, 3), np.nan, np.float32)
            xyz[0::PTS] = pos[a]
            xyz[1::PTS] = (pos[a] + pos[c]) / 2
            xyz[2::PTS] = pos[c]
            cd = np.empty(k * PTS, object)
            cd[0::PTS], cd[1::PTS], cd[2::PTS], cd[3::PTS] = a, -(em + 1), c, None
            tx = [""] * (k * PTS)  # the ends say nothing: the nodes drawn there have their own hover
            sm = s[m]
            for j in range(k):
                ej = int(em[j])
                # short: ~1500 of these go out with every threshold change (the layer is in the node ids)
                tx[j * PTS + 1] = (f"edge e{ej}: {text[a[j]]} → {text[c[j]]}, weight[{int(graph.edges[ej, 1])}, "
                                   f"{int(graph.edges[ej, 2])}]<br>score {sm[j]:.4g} · rank {rank[ej]} of {len(uniq)} drawn")
            traces.append({
                "type": "scatter3d", "mode": "lines", "name": f"{'-' if neg else '+'} edges q{b + 1}",
                "x": _r(xyz[:, 0]), "y": _r(xyz[:, 1]), "z": _r(xyz[:, 2]),
                "customdata": [None if v is None else int(v) for v in cd], "text": tx,
                "line": {"color": edge_color(neg, b), "width": WIDTHS[b]},
                "hovertemplate": "%{text}<extra></extra>", "showlegend": False, "connectgaps": False,
            })
    return traces


def ablated_trace(graph, pos: np.ndarray, nodes: Sequence[int], edges: Sequence[int],
                  labels: Optional[Sequence[str]] = None) -> dict:
    """Black crosses on the ablated nodes and on the middles of the ablated edges (zeroed kernels)."""
    text = labels if labels is not None else [graph.node_id(i) for i in range(graph.num_nodes)]
    xs, hover = [], []
    for n in nodes:
        xs.append(pos[int(n)])
        hover.append(f"ablated (zeroed): {text[int(n)]}")
    if len(edges):
        src = np.zeros(graph.num_edges, np.int64)
        src[graph.links[:, 0]] = graph.links[:, 1]
        for e in edges:
            a, b = pos[int(src[int(e)])], pos[int(graph.edge_target[int(e)])]
            xs.append((a + b) / 2)
            hover.append(f"ablated (zeroed): kernel e{int(e)}")
    p = np.asarray(xs, np.float64).reshape(-1, 3)
    return {"type": "scatter3d", "mode": "markers", "name": "ablated", "x": _r(p[:, 0]), "y": _r(p[:, 1]),
            "z": _r(p[:, 2]), "text": hover, "hovertemplate": "%{text}<extra></extra>", "showlegend": False,
            "marker": {"size": 7, "color": "#111", "symbol": "x"}}


def graph_figure(graph, pos: np.ndarray, circuit_nodes: Sequence[int], drawn_edges: np.ndarray,
                 node_scores: np.ndarray, edge_scores: np.ndarray, signs: Optional[np.ndarray] = None,
                 labels: Optional[Sequence[str]] = None, selected: Optional[int] = None,
                 uirevision: str = "graph", classes: Sequence[str] = (), node_signs: Optional[np.ndarray] = None,
                 center_on: Optional[int] = None, ablated_nodes: Sequence[int] = (),
                 ablated_edges: Sequence[int] = ()) -> dict:
    """The whole 3D figure as a plain Plotly dict (no validation pass: it is rebuilt on every change).
    ``center_on`` (a node) moves the camera to it and starts a new view revision (search)."""
    rng = scene_ranges(pos)
    data = edge_traces(graph, pos, drawn_edges, edge_scores, signs, labels)
    data += node_traces(graph, pos, circuit_nodes, node_scores, labels, selected, node_signs, drawn_edges, rng)
    if selected is not None and 0 <= selected < graph.num_nodes:  # an orange ring around the selection
        data.append({"type": "scatter3d", "mode": "markers", "name": "selected", "x": [float(pos[selected, 0])],
                     "y": [float(pos[selected, 1])], "z": [float(pos[selected, 2])], "customdata": [int(selected)],
                     "marker": {"size": 22, "color": "rgba(0,0,0,0)", "symbol": "circle-open",
                                "line": {"color": SELECTED, "width": 3}},
                     "hoverinfo": "skip", "showlegend": False})
    if len(ablated_nodes) or len(ablated_edges):
        data.append(ablated_trace(graph, pos, ablated_nodes, ablated_edges, labels))
    camera = {"eye": dict(DEFAULT_EYE), "center": {"x": 0, "y": 0, "z": 0}, "up": {"x": 0, "y": 0, "z": 1}}
    if center_on is not None and 0 <= center_on < graph.num_nodes:
        c = camera_center(pos, center_on)
        camera = {"center": c, "eye": {k: c[k] + v * 0.45 for k, v in DEFAULT_EYE.items()},
                  "up": {"x": 0, "y": 0, "z": 1}}
        uirevision = f"{uirevision}:center{center_on}"

    def axis(ax):
        # An axis drawn with nothing on it, not a hidden one: gl3d triangulates every tick label and axis title
        # on the CPU (vectorize-text) even on a hidden axis, whose ticks and title cannot be set (~0.25 s of the
        # first paint in software WebGL); a visible axis takes an empty tick list and title.
        return {"visible": True, "showspikes": False, "range": rng[ax], "autorange": False, "tickmode": "array",
                "tickvals": [], "ticktext": [], "showticklabels": False, "ticks": "", "title": {"text": ""},
                "showgrid": False, "zeroline": False, "showline": False, "showbackground": False,
                "showaxeslabels": False}

    return {"data": data, "layout": {
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "uirevision": uirevision, "showlegend": False,
        "scene": {"xaxis": axis("x"), "yaxis": axis("y"), "zaxis": axis("z"), "aspectmode": "manual",
                  "aspectratio": dict(ASPECT),
                  "annotations": layer_labels(graph, pos) + class_labels(graph, pos, classes),
                  "camera": camera, "dragmode": "orbit"},
        "paper_bgcolor": "white", "hovermode": "closest",
        "hoverlabel": {"bgcolor": "white", "font": {"size": 12}},
    }}


def count_drawn(fig: dict) -> int:
    """Edges drawn in a figure from :func:`graph_figure` (each edge is PTS points)."""
    return sum(len(t["x"]) // PTS for t in fig["data"] if t.get("mode") == "lines" and t.get("name") != "nodes")


def drawn_edges_of(fig: dict) -> List[int]:
    """The global indices of the edges drawn in a figure (from the midpoints' customdata)."""
    return sorted({-v - 1 for t in fig["data"] if t.get("mode") == "lines" and t.get("name") != "nodes"
                   for v in t["customdata"][1::PTS]})
