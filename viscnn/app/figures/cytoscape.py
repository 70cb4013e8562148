"""The 2D circuit view: a layered diagram (dash-cytoscape, preset positions) with feature-visualization
thumbnails on the nodes and kernel glyphs on the edges (each kernel is a small node on its edge).

:func:`circuit_elements` is pure: graph + circuit + scores in, cytoscape elements and a summary out.

Layout rule (all sizes in px at zoom 1; the diagram is sized for a ``BOX_W`` x ``BOX_H`` viewer):

* One column group per layer, ordered by (depth, layer index); layers that share a depth (a ResNet
  block's conv and its 1x1 downsample conv) get their own groups side by side, never stacked.
* Each group's title (the layer name, wrapped at dots onto at most two lines) sits in a band at the
  top; node labels are the channel number only (the full id, e.g. ``conv2:3``, is in ``data.title``),
  class nodes are labelled boxes showing the class name.
* Rows are ``ROW_PITCH`` apart (node box + label + gap), so labels never overlap the row below; a
  group taller than the box wraps into sub-columns (filled row by row, so the vertical order is kept)
  instead of growing past ``BOX_H``. Nodes are ordered by the mean height of their drawn sources
  (barycenter), which keeps lines short and crossings few.
* Between two groups is a gap of one or more ``LANE_W`` lanes holding the kernel glyphs of the edges
  into the group on its right; each glyph sits on its edge's line at the lane (for neighbouring
  columns that is about the midpoint), pushed apart vertically so glyphs do not overlap; more lanes
  are opened when a gap has more glyphs than fit in one (at most ``MAX_LANES``: past that, with a
  raised cap, a lane's glyphs are packed closer and may overlap).

With the default cap (``MAX_EDGES_2D`` edges) a circuit of a small CNN such as the default model
fits the box at zoom ~1; deeper networks (ResNets: ~20 layer groups) are wider and need zooming out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from viscnn.app.figures.colors import diverging_css, symmetric_limit

MAX_EDGES_2D = 40  # default cap on drawn edges (the caller may let the user raise it)
MAX_EDGES_2D_LIMIT = 400  # the most a caller should allow

# -- geometry (px at zoom 1) --------------------------------------------------------------------------
BOX_W, BOX_H = 700, 420  # the viewer's box the default-cap diagram is sized for
PAD = 10  # margin kept inside the box on each side (set the cytoscape layout's padding to this)
NODE = 36  # filter node box (thumbnail)
CLASS_W = 84  # class node box width (height NODE); the class name is written inside
KERNEL = 16  # kernel glyph box
FONT = 11  # label font size
CHAR_W = 6.5  # estimated width of one label character at FONT (sans-serif, conservative)
LABEL_H = 13  # height of one label line
LABEL_GAP = 2  # between a node box and its label
ROW_GAP = 4  # between a label and the next row's box
COL_GAP = 6  # between sub-columns of one group
ROW_PITCH = NODE + LABEL_GAP + LABEL_H + ROW_GAP  # 55
CLASS_PITCH = NODE + ROW_GAP + 4
LANE_W = 28  # one lane of kernel glyphs between two groups (also the minimum gap)
MAX_LANES = 4  # at most this many lanes per gap: past that (a raised cap) glyphs in a lane may overlap
GLYPH_PITCH = KERNEL + 3  # vertical spacing of glyphs in a lane
TITLE_CHARS = 12  # per title line
TITLE_GAP = 4  # between the title band and the first row
SEL_COLOR = "#ff7f0e"

STYLESHEET = [
    {"selector": "node.filter", "style": {
        "width": NODE, "height": NODE, "shape": "round-rectangle", "background-color": "#eeeeee",
        "label": "data(label)", "font-size": FONT, "color": "#222", "text-valign": "bottom",
        "text-halign": "center", "text-margin-y": LABEL_GAP, "border-width": 1, "border-color": "#999"}},
    {"selector": "node.filter[img]", "style": {"background-image": "data(img)", "background-fit": "cover",
                                               "background-image-smoothing": "no"}},
    {"selector": "node.input", "style": {"background-color": "#d9d9d9"}},
    {"selector": "node.stretched", "style": {"border-style": "dashed", "border-width": 2, "border-color": "#444"}},
    {"selector": "node.cls", "style": {
        "width": CLASS_W, "height": NODE, "shape": "round-rectangle", "background-color": "#fff",
        "background-image": "none", "border-width": 1, "border-color": "#666", "text-valign": "center",
        "text-margin-y": 0, "text-wrap": "wrap", "text-max-width": CLASS_W - 6, "font-size": FONT}},
    {"selector": "node.kernel", "style": {
        "width": KERNEL, "height": KERNEL, "shape": "rectangle", "background-image": "data(img)",
        "background-fit": "cover", "background-image-smoothing": "no", "border-width": 1, "border-color": "#666"}},
    {"selector": "node.title", "style": {
        "width": 1, "height": 1, "background-opacity": 0, "border-width": 0, "label": "data(label)",
        "font-size": FONT, "font-weight": "bold", "color": "#444", "text-valign": "center",
        "text-halign": "center", "text-wrap": "wrap", "events": "no"}},
    {"selector": "edge", "style": {"width": "data(w)", "line-color": "data(color)", "curve-style": "straight",
                                   "opacity": 0.85}},
    {"selector": "edge.in", "style": {"target-arrow-shape": "triangle", "target-arrow-color": "data(color)",
                                      "arrow-scale": 0.6}},
    {"selector": "node.ablated", "style": {"border-width": 3, "border-color": "#111", "border-style": "dotted"}},
    {"selector": "node:selected", "style": {"border-width": 3, "border-color": SEL_COLOR}},
    {"selector": "edge:selected", "style": {"line-color": SEL_COLOR, "target-arrow-color": SEL_COLOR}},
    {"selector": "node.sel", "style": {"border-width": 4, "border-color": SEL_COLOR, "border-style": "solid"}},
    {"selector": "edge.sel", "style": {"line-color": SEL_COLOR, "target-arrow-color": SEL_COLOR, "opacity": 1,
                                       "z-index": 9}},
]


@dataclass(frozen=True)
class Circuit2D:
    """What :func:`circuit_elements` returns.

    ``elements``: the cytoscape elements (ids ``n{node}``, ``k{edge}``, ``l{edge}a``/``l{edge}b`` as
    before, plus ``l{edge}a{j}`` for a kernel's further sources and ``t{layer}`` column titles);
    ``shown_edges`` of ``total_edges`` circuit edges are drawn (the top ``max_edges`` by |score|);
    ``width``/``height``: the diagram's extent in px at zoom 1 (node boxes, labels, titles, glyphs).
    """

    elements: List[dict]
    shown_edges: int
    total_edges: int
    width: float
    height: float


def label_width(text: str) -> float:
    """Estimated width in px of a label at FONT (its longest line)."""
    return max((len(line) for line in str(text).split("\n")), default=0) * CHAR_W


def resolve_selection(graph, selected) -> Tuple[Optional[int], Optional[int]]:
    """(node, edge) for the app's selection string: ``"LAYER:CH"`` is a node, ``"e17"`` edge 17."""
    if not selected or not isinstance(selected, str):
        return None, None
    if re.fullmatch(r"e\d+", selected):
        e = int(selected[1:])
        return (None, e) if e < graph.num_edges else (None, None)
    try:
        return graph.node_index(selected), None
    except Exception:  # ViscnnError for an unknown id: nothing is selected here
        return None, None


def class_name(graph, n: int, labels: Optional[Sequence[str]]) -> str:
    """The class name of a class node from its display label ``"fc:7 (Sneaker)"``, else its id."""
    nid = graph.node_id(n)
    if labels is None:
        return nid
    lab = str(labels[n])
    if lab.startswith(nid + " (") and lab.endswith(")"):
        return lab[len(nid) + 2:-1]
    return lab


def _wrap(text: str, chars: int, lines: int) -> str:
    """Word-wrap ``text`` to at most ``lines`` lines of ``chars`` characters (ellipsis when cut)."""
    out: List[str] = []
    cur = ""
    for word in text.split():
        while len(word) > chars:  # a word longer than a line is broken
            if cur:
                out.append(cur)
                cur = ""
            out.append(word[:chars])
            word = word[chars:]
        if not cur:
            cur = word
        elif len(cur) + 1 + len(word) <= chars:
            cur += " " + word
        else:
            out.append(cur)
            cur = word
    if cur:
        out.append(cur)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][:chars - 1] + "…"
    return "\n".join(out)


def title_text(name: str, chars: int = TITLE_CHARS, lines: int = 2) -> str:
    """A layer name wrapped at its dots onto at most ``lines`` lines (the tail kept: it names the conv)."""
    parts = re.findall(r"[^.]+\.?", name) or [name]
    out: List[str] = []
    for p in reversed(parts):
        if out and len(out[0]) + len(p) <= chars:
            out[0] = p + out[0]
        else:
            out.insert(0, p if len(p) <= chars else p[:chars - 1] + "…")
    if len(out) > lines:
        out = out[-lines:]
        out[0] = "…" + out[0][-(chars - 1):]
    return "\n".join(out)


def _spread(ys: List[float], gap: float, lo: float, hi: float) -> List[float]:
    """Sorted positions pushed apart to at least ``gap`` and kept inside [lo, hi] where possible."""
    out = list(ys)
    for i in range(len(out)):
        out[i] = max(out[i], lo if i == 0 else out[i - 1] + gap)
    if out and out[-1] > hi:
        out[-1] = hi
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - gap)
        if out[0] < lo:  # does not fit: centre the run
            shift = (lo + hi) / 2 - (out[0] + out[-1]) / 2
            out = [y + shift for y in out]
    return out


def capped_edges(graph, edges: np.ndarray, scores: np.ndarray, max_edges: int, paths=None) -> np.ndarray:
    """The ``max_edges`` edges the 2D diagram draws, sorted: whole input-to-target paths, strongest
    (widest) first (:mod:`viscnn.app.figures.circuit_paths`). A global top-k by |score| is taken almost
    whole by the input->conv1 kernels, a per-layer share leaves a deep circuit in fragments."""
    from viscnn.app.figures.circuit_paths import capped_path_edges

    return capped_path_edges(graph, edges, scores, max_edges, paths)


def circuit_elements(graph, nodes: Sequence[int], edges: Sequence[int], edge_scores: np.ndarray,
                     node_img: Callable[[int], Optional[str]], kernel_img: Callable[[int], str],
                     max_edges: int = MAX_EDGES_2D, signs: Optional[np.ndarray] = None,
                     labels: Optional[Sequence[str]] = None, selected: Optional[str] = None,
                     is_stretched: Optional[Callable[[int], bool]] = None,
                     ablated: Tuple[Sequence[int], Sequence[int]] = ((), ()), paths=None) -> Circuit2D:
    """Elements for at most ``max_edges`` circuit edges (:func:`capped_edges`: the strongest whole
    paths) and the nodes they touch.

    ``node_img(n)``: thumbnail URL of a node (None for none); never asked for class nodes, which are
    labelled boxes. ``kernel_img(e)``: glyph URL of a kernel. ``signs``: per-edge signs for the colour
    (the 3D view's; None = the scores' own sign); colour intensity and width follow |score|.
    ``labels``: display label per node (``"fc:7 (Sneaker)"``; class nodes show the class name).
    ``selected``: the app's selection string (``"conv2:3"`` or ``"e17"``); the matching element gets
    ``"selected": True`` and class ``sel``. ``is_stretched(n)``: whether node ``n``'s thumbnail is
    contrast-stretched (marked with class ``stretched`` and a note in ``data.title``).
    ``ablated``: (nodes, edges) zeroed by the user's ablations, drawn with a dotted black border.
    ``paths``: the circuit's :class:`~viscnn.graph.widest_paths.WidestPaths`, when already made.
    """
    abl_nodes, abl_edges = {int(n) for n in ablated[0]}, {int(e) for e in ablated[1]}
    edges = np.asarray(edges, np.int64)
    total = len(edges)
    s = np.asarray(edge_scores)  # indexed per drawn edge below: no float64 copy of all E scores
    max_edges = max(0, int(max_edges))
    if total > max_edges:
        edges = capped_edges(graph, edges, s, max_edges, paths)
    nodes = np.asarray(nodes, np.int64)
    in_circuit = set(int(n) for n in nodes)
    links = graph.links
    lo, hi = graph.link_ptr[edges], graph.link_ptr[np.asarray(edges, np.int64) + 1]
    srcs: Dict[int, List[int]] = {}  # edge -> source nodes drawn (primary first)
    for e, a, b in zip(edges, lo, hi):
        allsrc = [int(v) for v in links[a:b, 1]]
        mine = [v for v in allsrc if v in in_circuit] or allsrc[:1]
        srcs[int(e)] = mine
    tgt = {int(e): int(graph.edge_target[e]) for e in edges}
    used = set(tgt.values()) | {v for vs in srcs.values() for v in vs}
    if len(edges) == 0:
        used = set(int(n) for n in nodes[:max_edges])
    sel_node, sel_edge = resolve_selection(graph, selected)

    # -- groups: one per layer, ordered by (depth, layer index) ------------------------------------
    by_layer: Dict[int, List[int]] = {}
    for n in sorted(used):
        by_layer.setdefault(int(graph.node_layer[n]), []).append(n)
    order = sorted(by_layer, key=lambda li: (graph.layers[li].depth, li))
    gi_of = {li: g for g, li in enumerate(order)}
    titles = [title_text(graph.layers[li].name) for li in order]
    title_h = LABEL_H * max((t.count("\n") + 1 for t in titles), default=1)
    rows_top = PAD + title_h + TITLE_GAP
    avail = BOX_H - PAD - rows_top  # height for rows
    is_cls = [graph.layers[li].kind == "linear" for li in order]

    def disp(n: int) -> str:
        return _wrap(class_name(graph, n, labels), 12, 2) if is_cls[gi_of[int(graph.node_layer[n])]] \
            else str(int(graph.node_channel[n]))

    shape = []  # per group: (ncols, nrows, cell_w, pitch, box_w, width)
    for g, li in enumerate(order):
        ns = by_layer[li]
        box_w = CLASS_W if is_cls[g] else NODE
        pitch = CLASS_PITCH if is_cls[g] else ROW_PITCH
        box_h = NODE if is_cls[g] else NODE + LABEL_GAP + LABEL_H
        rows_max = max(1, int((avail - box_h) // pitch) + 1)
        ncols = math.ceil(len(ns) / rows_max)
        nrows = math.ceil(len(ns) / ncols)
        lab_w = 0.0 if is_cls[g] else max(label_width(disp(n)) for n in ns)
        cell_w = max(box_w, lab_w) + COL_GAP
        width = max(ncols * cell_w - COL_GAP, label_width(titles[g]) - LANE_W)
        shape.append((ncols, nrows, cell_w, pitch, box_w, width))

    # -- gaps: lanes for the glyphs of the edges into the group on the right ------------------------
    into: Dict[int, List[int]] = {}
    for e in edges:
        into.setdefault(gi_of[int(graph.node_layer[tgt[int(e)]])], []).append(int(e))
    lane_h = avail - KERNEL
    lanes = [min(MAX_LANES, max(1 if g else 0, math.ceil(len(into.get(g, [])) * GLYPH_PITCH / lane_h)))
             for g in range(len(order))]
    x0 = []
    x = PAD
    for g in range(len(order)):
        x += lanes[g] * LANE_W
        x0.append(x)
        x += shape[g][5]

    # -- rows: barycenter order, row-major fill, groups centred vertically -------------------------
    pos: Dict[int, Tuple[float, float]] = {}
    incoming: Dict[int, List[int]] = {}
    for e in edges:
        incoming.setdefault(tgt[int(e)], []).extend(srcs[int(e)])
    mid_y = rows_top + avail / 2
    for g, li in enumerate(order):
        ncols, nrows, cell_w, pitch, box_w, width = shape[g]
        ns = by_layer[li]
        bary = {n: np.mean([pos[v][1] for v in incoming.get(n, []) if v in pos])
                for n in ns if any(v in pos for v in incoming.get(n, []))}
        fill = float(np.mean(list(bary.values()))) if bary else 0.0
        ns = sorted(ns, key=lambda n: (bary.get(n, fill), n))
        content_w = ncols * cell_w - COL_GAP
        left = x0[g] + (width - content_w) / 2
        y_first = mid_y - (nrows - 1) * pitch / 2 - (0 if is_cls[g] else (LABEL_GAP + LABEL_H) / 2)
        for k, n in enumerate(ns):
            r, c = divmod(k, ncols)
            pos[n] = (left + c * cell_w + cell_w / 2 - COL_GAP / 2, y_first + r * pitch)

    # -- elements ------------------------------------------------------------------------------
    els: List[dict] = []
    boxes: List[Tuple[float, float, float, float]] = []
    for g, li in enumerate(order):
        cx, cy = x0[g] + shape[g][5] / 2, PAD + title_h / 2
        els.append({"data": {"id": f"t{li}", "label": titles[g], "title": graph.layers[li].name},
                    "position": {"x": round(cx, 1), "y": round(cy, 1)}, "classes": "title",
                    "selectable": False, "grabbable": False, "pannable": True})
        tw = label_width(titles[g])
        boxes.append((cx - tw / 2, PAD, cx + tw / 2, PAD + title_h))
    for n in sorted(used):
        layer = graph.layers[int(graph.node_layer[n])]
        nid = graph.node_id(n)
        full = str(labels[n]) if labels is not None else nid
        data = {"id": f"n{n}", "label": disp(n), "node": n, "nid": nid, "title": full}
        classes = ["filter"]
        if layer.kind == "linear":
            classes.append("cls")
        else:
            if layer.kind == "input":
                classes.append("input")
            img = node_img(n)
            if img:
                data["img"] = img
                if is_stretched is not None and is_stretched(n):
                    data["stretched"] = True
                    data["title"] = (f"{full} (thumbnail contrast-stretched: the feature visualization "
                                     "is nearly uniform)")
                    classes.append("stretched")
        el = {"data": data, "position": {"x": round(pos[n][0], 1), "y": round(pos[n][1], 1)}}
        if n == sel_node:
            el["selected"] = True
            classes.append("sel")
        if n in abl_nodes:
            classes.append("ablated")
            data["title"] += " (ablated: zeroed)"
        el["classes"] = " ".join(classes)
        els.append(el)
        x, y = pos[n]
        if layer.kind == "linear":
            boxes.append((x - CLASS_W / 2, y - NODE / 2, x + CLASS_W / 2, y + NODE / 2))
        else:
            half = max(NODE, label_width(data["label"])) / 2
            boxes.append((x - half, y - NODE / 2, x + half, y + NODE / 2 + LABEL_GAP + LABEL_H))

    lim = symmetric_limit(s[edges].astype(np.float64)) if len(edges) else 1.0
    sg = np.asarray(signs) if signs is not None else s  # only its sign is read, per drawn edge
    kpos: Dict[int, Tuple[float, float]] = {}
    for g, es in into.items():
        gap_left = x0[g] - lanes[g] * LANE_W
        want = sorted(((pos[srcs[e][0]][1] + pos[tgt[e]][1]) / 2, e) for e in es)  # by midpoint height
        for j in range(lanes[g]):
            lx = gap_left + (j + 0.5) * LANE_W
            mine = want[j::lanes[g]]
            # on the line from the source at the lane's x (about the midpoint for neighbouring columns)
            ys = []
            for _, e in mine:
                (ax, ay), (bx, by) = pos[srcs[e][0]], pos[tgt[e]]
                t = (lx - ax) / (bx - ax) if bx != ax else 0.5
                ys.append((ay + (by - ay) * min(max(t, 0.0), 1.0), e))
            ys.sort()
            # packed closer (overlapping) only when even MAX_LANES lanes cannot hold the gap's glyphs
            pitch = GLYPH_PITCH if len(ys) < 2 else min(GLYPH_PITCH, (lane_h - 1) / (len(ys) - 1))
            spread = _spread([y for y, _ in ys], pitch, rows_top + KERNEL / 2, rows_top + avail - KERNEL / 2)
            for (_, e), y in zip(ys, spread):
                kpos[e] = (lx, y)
    for e in edges:
        e = int(e)
        mag = abs(float(s[e])) / lim
        sign = -1.0 if sg[e] < 0 else 1.0
        color = diverging_css(sign * (0.4 + 0.6 * min(mag, 1.0)))
        w = round(1 + 3 * math.sqrt(min(mag, 1.0)), 2)
        on = e == sel_edge
        kx, ky = kpos[e]
        kel = {"data": {"id": f"k{e}", "edge": e, "img": kernel_img(e), "title": f"kernel e{e}",
                        "score": round(float(s[e]), 6), "sign": int(sign)},
               "position": {"x": round(kx, 1), "y": round(ky, 1)},
               "classes": "kernel" + (" sel" if on else "") + (" ablated" if e in abl_edges else "")}
        if on:
            kel["selected"] = True
        els.append(kel)
        boxes.append((kx - KERNEL / 2, ky - KERNEL / 2, kx + KERNEL / 2, ky + KERNEL / 2))
        a = srcs[e]
        for j, src in enumerate(a):
            line = {"data": {"id": f"l{e}a" if j == 0 else f"l{e}a{j}", "source": f"n{src}", "target": f"k{e}",
                             "w": w, "color": color}}
            if on:
                line["classes"] = "sel"
            els.append(line)
        els.append({"data": {"id": f"l{e}b", "source": f"k{e}", "target": f"n{tgt[e]}", "w": w, "color": color},
                    "classes": "in sel" if on else "in"})
    if boxes:
        bx = np.array(boxes)
        width, height = float(bx[:, 2].max() - bx[:, 0].min()), float(bx[:, 3].max() - bx[:, 1].min())
    else:
        width = height = 0.0
    return Circuit2D(els, int(len(edges)), int(total), round(width, 1), round(height, 1))

