"""The 3D graph: layers along x, nodes placed in each layer's (y, z) plane by a 2D layout, and the
circuit's edges drawn as a few line traces (bucketed by sign and importance), never one per edge.

Level of detail: at most ``max_edges`` edges (the most important) are shipped to the browser; the
caller shows how many were hidden. Click payloads carry ``customdata``: a node's index (>= 0), or
``-(edge + 1)`` for an edge. Each edge is drawn as source, midpoint, target, gap: the two end vertices
carry their node's index, so a click near a node picks the node even where an edge's line wins the
pick, and only a click on the middle of an edge picks the edge.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from viscnn.app.figures import colors

MAX_EDGES = 1500
LAYER_GAP = 4.0
N_BUCKETS = 4
PTS = 4  # points per drawn edge: source, midpoint, target, gap
WIDTHS = (1.5, 2.5, 4.0, 6.5)
ALPHAS = (0.5, 0.65, 0.85, 0.95)
LABEL_FONT = 11
SELECTED = "#ff7f0e"
PANEL_PX = 760  # the narrowest scene width the label rule plans for (the app's panel at 1400 px)
ASPECT = {"x": 2.0, "y": 0.9, "z": 1.35}


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


def _links_of(graph, edges: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(edge, source node) rows of ``graph.links`` for the given sorted edges."""
    edges = np.asarray(edges, np.int64)
    owner, src = graph.link_rows(edges)
    return edges[owner], src


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


LINE_HEIGHT = 1.2  # a vertical name needs this many font sizes of room from its neighbour


def _label_gap_px(graph, pos: np.ndarray, panel_px: int) -> float:
    """The smallest distance in pixels between two layers along the depth axis at the default camera."""
    xs = np.unique(np.round(pos[[l.node_offset for l in graph.layers], 0], 6))
    if len(xs) < 2:
        return float(panel_px)
    span = float(xs.max() - xs.min()) or 1.0
    return float(np.diff(xs).min()) * panel_px * 0.8 / span


def label_style(graph, pos: np.ndarray, panel_px: int = PANEL_PX) -> Tuple[int, int]:
    """(angle, font size) of the layer names: horizontal when every name fits between its neighbours,
    else vertical (needing a line height of room), with a smaller font where even that is tight."""
    gap = _label_gap_px(graph, pos, panel_px)
    widest = max(len(l.name) for l in graph.layers) * LABEL_FONT * 0.62
    if widest < gap:
        return 0, LABEL_FONT
    return -90, int(min(LABEL_FONT, max(7, gap / LINE_HEIGHT)))


def label_angle(graph, pos: np.ndarray, panel_px: int = PANEL_PX) -> int:
    return label_style(graph, pos, panel_px)[0]


def layer_labels(graph, pos: np.ndarray, panel_px: int = PANEL_PX) -> List[dict]:
    """Layer names above each layer as scene annotations: drawn as page text that follows the camera.
    (A scatter3d text trace looks the same but triangulates every glyph on the CPU: ~0.3 s of first paint.)
    Deep models get vertical names so that neighbours never overlap; where even the smallest font does
    not fit between neighbours (GoogLeNet: 59 layers), only every name that has a line height of room
    from the last one drawn is written — the others are on the nodes' hover."""
    top = float(pos[:, 2].max()) + 0.6 if len(pos) else 1.0
    ang, font = label_style(graph, pos, panel_px)
    xs = np.array([float(pos[l.node_offset, 0]) for l in graph.layers]) if graph.layers else np.zeros(0)
    span = float(xs.max() - xs.min()) if len(xs) else 0.0
    px = panel_px * 0.8 / (span or 1.0)
    need = font * LINE_HEIGHT if ang else 0.0
    out, last = [], None
    for i in np.argsort(xs, kind="stable"):
        if last is not None and ang and (xs[i] - last) * px < need:
            continue
        layer = graph.layers[int(i)]
        out.append({"x": float(xs[i]), "y": 0.0, "z": top, "text": layer.name, "showarrow": False,
                    "font": {"size": font, "color": "#444"}, "textangle": ang, "yanchor": "bottom",
                    "xanchor": "center", "hovertext": f"layer {layer.name}"})
        last = xs[i]
    return out


def _screen_up(pos: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(u, scale): how much one data unit along y and z moves a point up the screen at the default
    camera, per axis ([y, z]); Plotly normalises each axis by its range and the aspect ratio."""
    rng = scene_ranges(pos)
    e = np.array([DEFAULT_EYE["y"], DEFAULT_EYE["z"]], np.float64)
    d = -e / np.linalg.norm(e)  # viewing direction in the (y, z) plane
    up = np.array([0.0, 1.0]) - d[1] * d  # the z axis minus its part along the view
    up /= np.linalg.norm(up)
    per_unit = np.array([ASPECT[a] / ((rng[a][1] - rng[a][0]) or 1.0) for a in "yz"])
    return up, per_unit


def class_labels(graph, pos: np.ndarray, classes: Sequence[str], max_classes: int = 30) -> List[dict]:
    """Class names beside the class layer's nodes (up to ``max_classes``; more are on hover only),
    pushed apart along the screen's vertical at the default camera (depth into the screen, y, also moves
    a point up the screen) so that names of nearby classes do not overlap; only z is moved."""
    last = graph.layers[-1]
    if last.kind != "linear" or len(classes) != last.channels or last.channels > max_classes:
        return []
    p = pos[last.node_offset:last.node_offset + last.channels].astype(np.float64)
    up, per_unit = _screen_up(pos)
    v = p[:, 1] * per_unit[0] * up[0] + p[:, 2] * per_unit[1] * up[1]  # screen height (normalised)
    gap = 0.07 * ASPECT["z"] * up[1]  # about a line of 10 px text in a ~600 px tall scene
    order = np.argsort(v, kind="stable")
    w = v[order].copy()
    for i in range(1, len(w)):
        w[i] = max(w[i], w[i - 1] + gap)
    w -= (w.mean() - v[order].mean())  # keep the group centred where the nodes are
    vs = np.empty_like(w)
    vs[order] = w
    zs = p[:, 2] + (vs - v) / (per_unit[1] * up[1])
    return [{"x": float(p[c, 0]), "y": float(p[c, 1]), "z": round(float(zs[c]), 3), "text": name,
             "showarrow": False, "xanchor": "left", "xshift": 10, "font": {"size": 10, "color": "#333"}}
            for c, name in enumerate(classes)]


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


def scene_ranges(pos: np.ndarray, pad: float = 0.08) -> Dict[str, list]:
    """Fixed axis ranges with a margin, so the default camera frames every node and label."""
    out = {}
    for i, ax in enumerate("xyz"):
        lo, hi = float(pos[:, i].min()), float(pos[:, i].max())
        w = (hi - lo) or 1.0
        # x: room for the first layer's name, and on the right for the class names beside the last layer
        lo_pad, hi_pad = (pad * 1.5, pad * 2.5) if ax == "x" else (pad, pad + (0.25 if ax == "z" else 0))
        out[ax] = [round(lo - lo_pad * w, 3), round(hi + hi_pad * w, 3)]
    return out


def camera_center(pos: np.ndarray, node: int) -> Dict[str, float]:
    """The camera centre (Plotly's normalised scene coordinates) that puts ``node`` in the middle."""
    rng = scene_ranges(pos)
    c = {}
    for i, ax in enumerate("xyz"):
        lo, hi = rng[ax]
        c[ax] = round(((float(pos[node, i]) - lo) / ((hi - lo) or 1.0) - 0.5) * ASPECT[ax], 4)
    return c


DEFAULT_EYE = {"x": 0.0, "y": -2.2, "z": 0.92}  # frames the scene box (ASPECT, scene_ranges) with a small margin


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
