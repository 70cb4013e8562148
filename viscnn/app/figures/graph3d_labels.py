"""The 3D graph's scene framing and names: aspect, axis ranges, the camera, and layer and class labels."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

LABEL_FONT = 11
PANEL_PX = 760  # the narrowest scene width the label rule plans for (the app's panel at 1400 px)
ASPECT = {"x": 2.0, "y": 0.9, "z": 1.35}

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
