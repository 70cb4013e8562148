"""Pictures of attributions and weights as uint8 RGB arrays, and a PNG writer (Pillow).

Colours come from the app's one visual language (:mod:`viscnn.app.figures.colors`): signed
values on the diverging map (red = positive, blue = negative, white = zero, limits symmetric
about zero), magnitudes on the sequential map (Viridis, the app's ``SEQUENTIAL``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from viscnn.app.figures.colors import diverging_rgb, symmetric_limit
from viscnn.io import atomic_write_bytes

# Viridis (Plotly's, the app's sequential scale), dark = low.
_VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]
_VSTOPS = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in _VIRIDIS], np.float64)


def sequential_rgb(t) -> np.ndarray:
    """uint8 [..., 3] colours of ``t`` in [0, 1] (clipped) on the sequential map."""
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    x = t * (len(_VSTOPS) - 1)
    i = np.clip(np.floor(x).astype(np.int64), 0, len(_VSTOPS) - 2)
    f = (x - i)[..., None]
    return np.round(_VSTOPS[i] * (1 - f) + _VSTOPS[i + 1] * f).astype(np.uint8)


def to_2d(attr: np.ndarray, signed: bool) -> np.ndarray:
    """[C,H,W] -> [H,W]: the channel sum for signed values, the channel max of |value| otherwise."""
    a = np.asarray(attr, np.float64)
    if a.ndim == 2:
        return a
    return a.sum(0) if signed else np.abs(a).max(0)


def map_rgb(m: np.ndarray, signed: bool, limit: Optional[float] = None) -> np.ndarray:
    """Colour a 2D map: diverging in [-limit, limit] if ``signed``, else sequential in [0, limit]."""
    m = np.asarray(m, np.float64)
    if signed:
        lim = limit if limit else symmetric_limit(m)
        return diverging_rgb(m / lim)
    lim = limit if limit else (float(np.nanmax(m)) if m.size and np.nanmax(m) > 0 else 1.0)
    return sequential_rgb(m / lim)


def image_rgb(x: np.ndarray) -> np.ndarray:
    """A model input [C,H,W] (any normalisation) as a displayable uint8 RGB image (min-max)."""
    a = np.asarray(x, np.float64)
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, 0)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.round(a.transpose(1, 2, 0) * 255).astype(np.uint8)


def overlay(img: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a heat map over a (grey) image, both uint8 [H,W,3]."""
    grey = img.astype(np.float64).mean(-1, keepdims=True)
    return np.round((1 - alpha) * grey + alpha * heat.astype(np.float64)).astype(np.uint8)


def strip(*pictures: np.ndarray, gap: int = 4) -> np.ndarray:
    """Pictures of equal height side by side with a white gap."""
    h = max(p.shape[0] for p in pictures)
    parts = []
    for k, p in enumerate(pictures):
        p = p if p.ndim == 3 else np.repeat(p[..., None], 3, -1)
        if p.shape[0] < h:
            p = np.concatenate([p, np.full((h - p.shape[0], *p.shape[1:]), 255, np.uint8)])
        if k:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(p)
    return np.concatenate(parts, 1)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (grey [H,W] or RGB [H,W,3]) or uint8 as uint8."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def save_png(path, picture: np.ndarray) -> None:
    """Write a [H,W] or [H,W,3] picture (uint8, or floats in [0, 1]) as a PNG, atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(picture)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
