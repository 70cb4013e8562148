"""Weight pictures: what the filters themselves look like.

The first conv layer's kernels as small RGB images (each filter min-max normalised on its own,
as in Krizhevsky et al. / the "journey"); any conv layer's kernels as grey tiles, one row per
output channel and one column per input channel; the same layer of two models (trained vs
random weights) side by side. Arrays are floats in [0, 1]; :func:`save_png` writes them.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from viscnn.attribution.render import strip, to_uint8
from viscnn.errors import ViscnnError


def first_conv(model: nn.Module) -> Tuple[str, nn.Conv2d]:
    """(module path, module) of the first Conv2d in registration order."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ViscnnError(f"{type(model).__name__} has no Conv2d layer")


def conv_weight(model: nn.Module, layer: Optional[str] = None) -> Tuple[str, np.ndarray]:
    """(layer name, weight [O, I, kh, kw] as float64) of ``layer`` (default: the first conv)."""
    if layer is None:
        name, m = first_conv(model)
    else:
        mods = dict(model.named_modules())
        if layer not in mods or not isinstance(mods[layer], (nn.Conv2d, nn.ConvTranspose2d)):
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            raise ViscnnError(f"{layer!r} is not a Conv2d of {type(model).__name__} (convs: {', '.join(convs[:8])}"
                              f"{' ...' if len(convs) > 8 else ''})")
        name, m = layer, mods[layer]
    with torch.no_grad():
        return name, m.weight.detach().double().cpu().numpy()


def _norm(a: np.ndarray, axes) -> np.ndarray:
    lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (a - lo) / span, 0.5)


def grid(tiles: np.ndarray, cols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tile [n, h, w] or [n, h, w, 3] pictures into a grid with ``cols`` columns."""
    n, h, w = tiles.shape[:3]
    rows = max(1, -(-n // cols))
    extra = tiles.shape[3:]
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *extra), fill, np.float64)
    for k in range(n):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tiles[k]
    return out


def rgb_filters(model: nn.Module, layer: Optional[str] = None) -> np.ndarray:
    """The filters of a 3-input-channel conv (default: the first) as RGB images [O, kh, kw, 3],
    each filter normalised to [0, 1] on its own."""
    name, w = conv_weight(model, layer)
    if w.shape[1] != 3:
        raise ViscnnError(f"conv {name} reads {w.shape[1]} channels; RGB filter pictures need 3 (use kernel_tiles)")
    return _norm(w, (1, 2, 3)).transpose(0, 2, 3, 1)


def rgb_filter_grid(model: nn.Module, layer: Optional[str] = None, cols: int = 16, pad: int = 1) -> np.ndarray:
    """:func:`rgb_filters` tiled in a grid [H, W, 3]."""
    f = rgb_filters(model, layer)
    return grid(f, min(cols, len(f)), pad)


def kernel_tiles(model: nn.Module, layer: Optional[str] = None, normalize: str = "kernel",
                 max_out: Optional[int] = 64, max_in: Optional[int] = 64, pad: int = 1) -> np.ndarray:
    """A conv layer's 2D kernels as grey tiles [H, W]: row = output channel, column = input channel.

    ``normalize``: ``"kernel"`` (each kernel min-max on its own) or ``"layer"`` (one symmetric scale
    for the layer, so 0.5 grey is a zero weight and tiles are comparable)."""
    name, w = conv_weight(model, layer)
    w = w[:max_out, :max_in] if max_out or max_in else w
    o, i, kh, kw = w.shape
    if normalize == "kernel":
        t = _norm(w, (2, 3))
    elif normalize == "layer":
        lim = float(np.abs(w).max()) or 1.0
        t = 0.5 + 0.5 * w / lim
    else:
        raise ViscnnError(f"unknown kernel normalisation {normalize!r}: use 'kernel' or 'layer'")
    return grid(t.reshape(o * i, kh, kw), i, pad)


def side_by_side(model_a: nn.Module, model_b: nn.Module, layer: Optional[str] = None, kind: str = "rgb",
                 gap: int = 6, **kwargs) -> np.ndarray:
    """The same layer of two models as one uint8 RGB picture (``kind``: ``"rgb"`` or ``"tiles"``)."""
    if kind == "rgb":
        a, b = rgb_filter_grid(model_a, layer, **kwargs), rgb_filter_grid(model_b, layer, **kwargs)
    elif kind == "tiles":
        a, b = kernel_tiles(model_a, layer, **kwargs), kernel_tiles(model_b, layer, **kwargs)
    else:
        raise ViscnnError(f"unknown weight picture kind {kind!r}: use 'rgb' or 'tiles'")
    return strip(to_uint8(a), to_uint8(b), gap=gap)
