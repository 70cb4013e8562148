"""The app's one visual language: a single diverging colormap for every signed value (red = positive,
blue = negative, near-white = zero, limits symmetric about zero) and a single sequential map for
magnitudes. Every figure, glyph and legend takes its colours from here, so they cannot disagree."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

# ColorBrewer RdBu (9 classes), ordered from the most negative to the most positive value.
_STOPS_HEX = ["#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b"]
POS = _STOPS_HEX[-1]
NEG = _STOPS_HEX[0]
ZERO = _STOPS_HEX[4]
# Magnitudes (|score|, activations after ReLU): one sequential map, dark = large.
SEQUENTIAL = "Viridis"
INACTIVE = "#c8c8c8"  # nodes outside the circuit


def _rgb(h: str) -> np.ndarray:
    return np.array([int(h[i:i + 2], 16) for i in (1, 3, 5)], np.float64)


_STOPS = np.stack([_rgb(h) for h in _STOPS_HEX])  # [9, 3]


def diverging_colorscale() -> List[list]:
    """The diverging map as a Plotly colorscale (use with zmin = -zmax)."""
    n = len(_STOPS_HEX) - 1
    return [[round(i / n, 4), h] for i, h in enumerate(_STOPS_HEX)]


def symmetric_limit(values, floor: float = 1e-12) -> float:
    """max |value| (1.0 for an all-zero or empty input), the limit of a symmetric colour range."""
    a = np.asarray(values, np.float64)
    m = float(np.nanmax(np.abs(a))) if a.size else 0.0
    return m if m > floor else 1.0


def diverging_rgb(t) -> np.ndarray:
    """uint8 [..., 3] colours of ``t`` in [-1, 1] (clipped) on the diverging map."""
    t = np.clip(np.asarray(t, np.float64), -1.0, 1.0)
    x = (t + 1.0) / 2.0 * (len(_STOPS) - 1)
    i = np.clip(np.floor(x).astype(np.int64), 0, len(_STOPS) - 2)
    f = (x - i)[..., None]
    return np.round(_STOPS[i] * (1 - f) + _STOPS[i + 1] * f).astype(np.uint8)


def diverging_css(t: float, alpha: Optional[float] = None) -> str:
    """A CSS colour for one value in [-1, 1]."""
    r, g, b = (int(v) for v in diverging_rgb(t))
    return f"rgb({r},{g},{b})" if alpha is None else f"rgba({r},{g},{b},{alpha})"
