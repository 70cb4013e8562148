"""The journey's comparison figure: one image, one method, several models (or one model at
several input sizes), as 2D maps ready to show side by side.

``normalize="per_map"`` scales each map to its own maximum (shapes comparable); ``"raw"``
keeps the values and returns one shared colour limit (magnitudes comparable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from viscnn.attribution.methods import make_method
from viscnn.attribution.render import map_rgb, to_2d
from viscnn.errors import ViscnnError


@dataclass
class Comparison:
    labels: List[str]
    maps: List[np.ndarray]  # 2D maps (normalised to [-1, 1] / [0, 1] for "per_map", raw otherwise)
    signed: bool
    limit: float  # the colour limit shared by every map (1.0 for "per_map")
    normalize: str

    def pictures(self) -> List[np.ndarray]:
        """uint8 RGB pictures on one colour scale."""
        return [map_rgb(m, self.signed, self.limit) for m in self.maps]


def _finish(labels, maps, signed, normalize) -> Comparison:
    if normalize not in ("raw", "per_map"):
        raise ViscnnError(f"unknown normalisation {normalize!r}: use 'raw' or 'per_map'")
    if normalize == "per_map":
        out = []
        for m in maps:
            mx = float(np.abs(m).max()) if m.size else 0.0
            out.append(m / mx if mx > 0 else np.zeros_like(m))
        return Comparison(list(labels), out, signed, 1.0, normalize)
    lim = max((float(np.abs(m).max()) for m in maps if m.size), default=0.0) or 1.0
    return Comparison(list(labels), list(maps), signed, lim, normalize)


def _one_map(method, image: torch.Tensor, target) -> Tuple[np.ndarray, bool]:
    attr = method.attribute(image[None], target)
    return to_2d(attr[0].detach().cpu().numpy(), method.signed), method.signed


def compare_models(models: Union[Mapping[str, nn.Module], Sequence[nn.Module]], image: torch.Tensor, method: str,
                   target=None, layer: Optional[str] = None, normalize: str = "per_map",
                   classes=None) -> Comparison:
    """One image [C,H,W] and one method across models (a dict name -> model, or a list)."""
    items = list(models.items()) if isinstance(models, Mapping) else [(f"model {k}", m) for k, m in enumerate(models)]
    if not items:
        raise ViscnnError("no models to compare")
    labels, maps, signed = [], [], True
    for name, model in items:
        m, signed = _one_map(make_method(method, model, layer=layer, classes=classes), image, target)
        labels.append(name)
        maps.append(m)
    return _finish(labels, maps, signed, normalize)


def compare_sizes(model: nn.Module, image: torch.Tensor, sizes: Sequence[Tuple[int, int]], method: str,
                  target=None, layer: Optional[str] = None, normalize: str = "per_map", classes=None) -> Comparison:
    """One model and one image [C,H,W] resized (bilinear, antialiased) to each ``(H, W)`` of ``sizes``;
    each map stays at its own input size."""
    meth = make_method(method, model, layer=layer, classes=classes)
    labels, maps = [], []
    for h, w in sizes:
        x = F.interpolate(image[None].float(), size=(int(h), int(w)), mode="bilinear", align_corners=False,
                          antialias=True)[0]
        m, _ = _one_map(meth, x, target)
        labels.append(f"{h}x{w}")
        maps.append(m)
    return _finish(labels, maps, meth.signed, normalize)
