"""Per-layer mean feature maps and the per-channel maps of one layer (the drill-down).

Averaging a layer's maps over its channels (and over the inputs) reinforces artifacts that recur
in many maps (padding lines, grids) and washes out the input-specific activations (Alsallakh et
al., Sec. 2.1). Each map is reduced inside the forward pass by a tap (:mod:`.taps`), so one pass
over the inputs gives every layer's map with memory independent of the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from viscnn.artifacts.taps import insert_taps, resolve_layers, run_batches, stage_node, traced_copy
from viscnn.errors import ViscnnError


@dataclass
class MeanMap:
    """Mean over channels and inputs of one layer's map at one stage."""

    layer: str  # conv module path
    stage: str  # "conv" | "act" | "pool"
    tap: str  # fx node whose output was averaged (the conv itself for stage "conv")
    channels: int
    size: Tuple[int, int]
    map: np.ndarray  # float64 [H, W]
    images: int
    stride: Tuple[int, int] = (1, 1)  # the conv's stride (downsampling layers are marked)

    @property
    def title(self) -> str:
        return f"{self.size[0]}\u00d7{self.size[1]}, {self.channels} ch"

    def to_json(self, digits: int = 6) -> dict:
        return {"layer": self.layer, "stage": self.stage, "tap": self.tap, "channels": self.channels,
                "size": list(self.size), "stride": list(self.stride), "images": self.images, "title": self.title,
                "map": _round(self.map, digits)}


@dataclass
class ChannelMaps:
    """Every channel's map of one layer, averaged over the inputs (the drill-down)."""

    layer: str
    stage: str
    tap: str
    maps: np.ndarray  # float64 [C, H, W]
    images: int

    @property
    def title(self) -> str:
        return f"{self.maps.shape[1]}\u00d7{self.maps.shape[2]}"


class _Acc:
    """Running float64 sums of a reduction, keyed by layer."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.channels: Dict[str, int] = {}

    def mean_adder(self, keys: List[str]):
        def add(x: torch.Tensor) -> None:
            if x.dim() != 4:
                raise ViscnnError(f"layer {keys[0]} does not output a 4D [N, C, H, W] map")
            s = x.mean(1).sum(0).double()  # float32 reductions (faster), float64 running sum
            for k in keys:
                self.sums[k] = self.sums[k] + s if k in self.sums else s.clone()
                self.channels[k] = int(x.shape[1])
        return add

    def channel_adder(self, key: str):
        def add(x: torch.Tensor) -> None:
            s = x.sum(0, dtype=torch.float64)
            self.sums[key] = self.sums[key] + s if key in self.sums else s
        return add


def mean_maps(model: nn.Module, batches: Iterable, layers: Optional[Sequence[str]] = None, stage: str = "conv",
              device: str = "cpu") -> List[MeanMap]:
    """Mean map of every conv layer (``layers``: module paths, default all Conv2d in forward order).

    ``batches`` yields [B, C, H, W] model inputs (or (x, y) pairs) and is consumed once."""
    gm = traced_copy(model, device)
    chosen = resolve_layers(gm, layers)
    mods = dict(gm.named_modules())
    by_node: Dict[object, List[str]] = {}
    taps: Dict[str, str] = {}
    for name, node in chosen:
        t = stage_node(gm, node, stage)
        by_node.setdefault(t, []).append(name)
        taps[name] = t.name
    acc = _Acc()
    insert_taps(gm, {node: acc.mean_adder(keys) for node, keys in by_node.items()})
    n = run_batches(gm, batches, device)
    out = []
    for name, node in chosen:
        if name not in acc.sums:
            raise ViscnnError(f"layer {name} was not reached by the forward pass")
        m = (acc.sums[name] / n).cpu().numpy()
        st = mods[name].stride
        out.append(MeanMap(name, stage, taps[name], acc.channels[name], tuple(m.shape), m, n,
                           tuple(st) if not isinstance(st, int) else (st, st)))
    return out


def channel_maps(model: nn.Module, layer: str, batches: Iterable, stage: str = "conv", device: str = "cpu") -> ChannelMaps:
    """Per-channel maps of ``layer`` (a conv module path) at ``stage``, averaged over the inputs."""
    gm = traced_copy(model, device)
    [(name, node)] = resolve_layers(gm, [layer])
    t = stage_node(gm, node, stage)
    acc = _Acc()
    insert_taps(gm, {t: acc.channel_adder(name)})
    n = run_batches(gm, batches, device)
    return ChannelMaps(name, stage, t.name, (acc.sums[name] / n).cpu().numpy(), n)


def _round(a: np.ndarray, digits: int) -> list:
    """Nested lists with ``digits`` significant digits (JSON stays small, values stay exact enough)."""
    a = np.asarray(a, np.float64)
    return [[float(f"{v:.{digits}g}") for v in row] for row in a]
