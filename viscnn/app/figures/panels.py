"""Small figures for the click-through panels: activation maps, input images with a receptive-field
box, kernels as pictures, and PNG rendering of arrays (feature visualizations, glyphs)."""

from __future__ import annotations

import base64
import io
from typing import Optional, Sequence, Tuple

import numpy as np


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def kernel_rgb(kernel: np.ndarray, scale: Optional[float] = None, upscale: int = 1) -> np.ndarray:
    """A 2D kernel as a picture on the app's diverging map (red positive, blue negative, near-white 0),
    symmetric about zero (uint8 [h, w, 3])."""
    from viscnn.app.figures.colors import diverging_rgb, symmetric_limit

    k = np.asarray(kernel, np.float64)
    if k.ndim != 2:
        k = k.reshape(k.shape[-2], k.shape[-1]) if k.ndim > 2 and np.prod(k.shape[:-2]) == 1 else np.atleast_2d(k.reshape(-1))
    m = scale if scale else symmetric_limit(k)
    out = diverging_rgb(k / m)
    if upscale > 1:
        out = out.repeat(upscale, 0).repeat(upscale, 1)
    return out


def heatmap(m: np.ndarray, title: str = "", diverging: bool = True, height: int = 220,
            colorbar_title: str = "") -> dict:
    """An activation map or kernel as a heatmap with square pixels, row 0 at the top, and its colour bar:
    signed values on the diverging map with symmetric limits, magnitudes on the sequential map."""
    from viscnn.app.figures.colors import SEQUENTIAL, diverging_colorscale, symmetric_limit

    m = np.asarray(m, np.float64)
    if m.ndim != 2:
        m = m.reshape(1, -1)
    scale = float(np.nanmax(np.abs(m))) if m.size and np.isfinite(m).any() else 0.0
    scale = scale if scale > 0 else 1.0  # 4 significant digits of the largest value (small gradients too)
    tr = {"type": "heatmap", "z": (np.round(m / scale, 4) * scale).tolist(), "showscale": True,
          "colorbar": {"thickness": 10, "len": 0.9, "title": {"text": colorbar_title, "side": "right"}},
          "hovertemplate": "y=%{y} x=%{x}: %{z:.4g}<extra></extra>"}
    if diverging:
        vmax = symmetric_limit(m)
        tr.update({"colorscale": diverging_colorscale(), "zmin": -vmax, "zmax": vmax, "zmid": 0})
    else:
        tr.update({"colorscale": SEQUENTIAL, "zmin": 0, "zmax": float(m.max()) or 1.0})
    return {"data": [tr], "layout": {
        "title": {"text": title, "font": {"size": 12}}, "height": height,
        "margin": {"l": 24, "r": 8, "t": 28 if title else 4, "b": 20},
        "yaxis": {"autorange": "reversed", "scaleanchor": "x", "constrain": "domain"},
        "xaxis": {"constrain": "domain"}}}


def image_figure(arr: np.ndarray, box: Optional[Tuple[int, int, int, int]] = None, title: str = "",
                 height: int = 240) -> dict:
    """An input image (uint8 [H, W] or [H, W, 3]) with an optional half-open (y0, y1, x0, x1) box."""
    a = np.asarray(arr, np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    h, w = a.shape[:2]
    shapes = []
    if box is not None:
        y0, y1, x0, x1 = box
        shapes.append({"type": "rect", "x0": x0 - 0.5, "x1": x1 - 0.5, "y0": y0 - 0.5, "y1": y1 - 0.5,
                       "line": {"color": "#ff7f0e", "width": 2}, "name": "receptive-field"})
    return {"data": [{"type": "image", "source": data_uri(png_bytes(a)), "hoverinfo": "skip",
                      "x0": 0, "y0": 0, "dx": 1, "dy": 1}],
            "layout": {"title": {"text": title, "font": {"size": 12}}, "height": height, "shapes": shapes,
                       "margin": {"l": 4, "r": 4, "t": 28 if title else 4, "b": 4},
                       "xaxis": {"visible": False, "range": [-0.5, w - 0.5]},
                       "yaxis": {"visible": False, "range": [h - 0.5, -0.5], "scaleanchor": "x"}}}


def scaled_box(box: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
    return tuple(int(v) for v in box)


def top_incoming(graph, node: int, edge_scores: np.ndarray, k: int = 5) -> Sequence[int]:
    """The ``k`` incoming edges of ``node`` with the largest |score| (global edge indices)."""
    li = int(graph.node_layer[node])
    layer = graph.layers[li]
    if layer.kind == "input":
        return []
    j = int(graph.node_channel[node])
    per_in = layer.in_channels // layer.groups
    start = layer.edge_offset + j * per_in
    idx = np.arange(start, start + per_in)
    s = np.abs(np.asarray(edge_scores)[idx])
    order = np.argsort(-s, kind="stable")[:k]
    return [int(v) for v in idx[order]]
