"""Half-open pixel intervals on whole numpy arrays: a layer's RFTable and how one op maps them, per dimension."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from viscnn.errors import UnsupportedOperationError, ViscnnError

_EMPTY_LO = np.iinfo(np.int64).max // 4
_EMPTY_HI = -_EMPTY_LO

Box = Tuple[int, int, int, int]


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)


@dataclass
class RFTable:
    """Per-dimension half-open input intervals of every output row and column of one layer."""

    rows: np.ndarray  # int64 [H_out, 2]
    cols: np.ndarray  # int64 [W_out, 2]

    def box(self, y: int, x: int) -> Box:
        if not (0 <= y < len(self.rows) and 0 <= x < len(self.cols)):
            raise ViscnnError(f"position ({y}, {x}) is outside the layer's {len(self.rows)}x{len(self.cols)} map")
        (y0, y1), (x0, x1) = self.rows[y], self.cols[x]
        return int(y0), int(y1), int(x0), int(x1)


# -- interval maps of one spatial op, one dimension -------------------------------------------------
def _window(lo, hi, k, s, p, d, size_in, mode="zeros", clip=True):
    """Output interval [lo, hi) of a sliding window (kernel k, stride s, left pad p, dilation d)
    -> input interval, in real input coordinates."""
    empty = lo >= hi
    plo = lo * s - p  # first input index touched, may be in the padding
    phi = (hi - 1) * s - p + d * (k - 1) + 1
    return _pad_map(np.where(empty, _EMPTY_LO, plo), np.where(empty, _EMPTY_HI, phi), size_in, mode, clip)


def _pad_map(lo, hi, size_in, mode, clip=True):
    """Interval in padded coordinates (0 = first real pixel) -> real pixels it reads."""
    if not clip:
        return lo, hi
    if mode in ("zeros", "constant"):
        nlo, nhi = np.maximum(lo, 0), np.minimum(hi, size_in)
    else:
        nlo, nhi = np.empty_like(lo), np.empty_like(hi)
        for n, (a, b) in enumerate(zip(lo, hi)):
            if a >= b:
                nlo[n], nhi[n] = _EMPTY_LO, _EMPTY_HI
                continue
            idx = np.arange(a, b)
            if mode == "reflect":
                period = 2 * (size_in - 1) if size_in > 1 else 1
                idx = np.abs(np.mod(idx, period))
                idx = np.where(idx >= size_in, period - idx, idx)
            elif mode == "replicate":
                idx = np.clip(idx, 0, size_in - 1)
            elif mode == "circular":
                idx = np.mod(idx, size_in)
            else:
                raise UnsupportedOperationError(f"padding mode {mode!r} is not supported for receptive fields")
            nlo[n], nhi[n] = idx.min(), idx.max() + 1
    empty = nlo >= nhi
    return np.where(empty, _EMPTY_LO, nlo), np.where(empty, _EMPTY_HI, nhi)


def _adaptive(lo, hi, size_in, size_out):
    empty = lo >= hi
    start = (lo * size_in) // size_out
    end = -((-hi * size_in) // size_out)  # ceil(hi * size_in / size_out)
    return np.where(empty, _EMPTY_LO, start), np.where(empty, _EMPTY_HI, end)


def _remap(lo: np.ndarray, hi: np.ndarray, idx: np.ndarray):
    """Output interval [lo, hi) of a rearrangement whose output position k holds input position
    idx[k] -> the input interval spanning those positions."""
    n = len(idx)
    if n and np.array_equal(idx, np.arange(n)):
        return lo, hi
    nlo, nhi = np.full(lo.shape, _EMPTY_LO, np.int64), np.full(hi.shape, _EMPTY_HI, np.int64)
    for k, (a, b) in enumerate(zip(lo, hi)):
        a, b = max(int(a), 0), min(int(b), n)
        if a < b:
            nlo[k], nhi[k] = idx[a:b].min(), idx[a:b].max() + 1
    return nlo, nhi


def _pad4(padding) -> Tuple[int, int, int, int]:
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(int(v) for v in padding)
    if len(padding) == 2:  # (left/right for W) only
        return (padding[0], padding[1], 0, 0)
    if len(padding) >= 4:
        return padding[:4]
    raise UnsupportedOperationError(f"padding {padding!r} is not supported for receptive fields")
