"""Mean k x k input patch vs mean kernel of every conv (Alsallakh et al., Sec. 3, Fig. 5/6).

The mean patch is the mean, over images, input channels and output positions, of the k x k
patches a conv really reads: its *padded* input (zeros, or its reflect/replicate/circular
padding) sampled with its stride and dilation. When a stride leaves the bottom/right padding
unread (:mod:`.padding`), zeros are over-represented at the top/left of the mean patch, and
trained kernels tend to mirror that skew; the mean kernel (mean over output and input channels)
is shown next to it.

Streaming: the mean over channels commutes with padding and with taking patches (all linear), so
each batch adds only its channel-mean input map ``[H, W]`` to a float64 sum; at the end that mean
map is padded and unfolded once. Memory is one forward pass plus one map per conv, whatever the
number of images, and the result equals unfolding every image (the tests check it against an
explicit loop over positions).

Asymmetry of a k x k matrix ``P`` (``eps`` = 1e-8; all 0 for a 1x1 kernel):
  rot180      ``||P - rot180(P)||_F / (||P||_F + eps)``, 0 for a centro-symmetric patch, at most 2
  top_bottom  ``(mean(P[0, :]) - mean(P[-1, :])) / (mean(|P|) + eps)``, signed: < 0 when the top row
              is smaller (e.g. more padded zeros there)
  left_right  ``(mean(P[:, 0]) - mean(P[:, -1])) / (mean(|P|) + eps)``, signed likewise
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from viscnn.artifacts.taps import insert_taps, resolve_layers, run_batches, traced_copy
from viscnn.errors import ViscnnError
from viscnn.importance.convmath import padded_input

EPS = 1e-8


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


def asymmetry(p: np.ndarray, eps: float = EPS) -> Dict[str, float]:
    """``rot180``, ``top_bottom`` and ``left_right`` of a 2D matrix (module docstring)."""
    p = np.asarray(p, np.float64)
    if p.size <= 1:
        return {"rot180": 0.0, "top_bottom": 0.0, "left_right": 0.0}
    scale = np.abs(p).mean() + eps
    return {"rot180": float(np.linalg.norm(p - p[::-1, ::-1]) / (np.linalg.norm(p) + eps)),
            "top_bottom": float((p[0].mean() - p[-1].mean()) / scale) if p.shape[0] > 1 else 0.0,
            "left_right": float((p[:, 0].mean() - p[:, -1].mean()) / scale) if p.shape[1] > 1 else 0.0}


def mean_kernel(conv: nn.Conv2d) -> np.ndarray:
    """Mean of the weights over output and input channels: [kh, kw]."""
    return conv.weight.detach().double().mean((0, 1)).cpu().numpy()


def patch_from_mean_input(conv: nn.Conv2d, mean_input: torch.Tensor) -> np.ndarray:
    """Mean k x k patch of ``conv`` given the channel-and-image mean of its input [H, W]."""
    a, pad = padded_input(conv, mean_input.reshape(1, 1, *mean_input.shape[-2:]).double())
    k = _pair(conv.kernel_size)
    u = F.unfold(a, k, dilation=_pair(conv.dilation), padding=pad, stride=_pair(conv.stride))  # [1, kh*kw, L]
    if u.shape[-1] == 0:
        raise ViscnnError(f"conv has no output position on a {mean_input.shape[-2]}x{mean_input.shape[-1]} input")
    return u.mean(-1).reshape(k).cpu().numpy()


@dataclass
class PatchKernel:
    """Mean input patch and mean kernel of one conv."""

    layer: str
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    dilation: Tuple[int, int]
    padding: Tuple[int, int]
    in_size: Tuple[int, int]
    patch: np.ndarray  # float64 [kh, kw]
    kernel: np.ndarray  # float64 [kh, kw]
    images: int

    @property
    def downsampling(self) -> bool:
        return max(self.stride) > 1

    def to_json(self) -> dict:
        return {"layer": self.layer, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "dilation": list(self.dilation),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding), "in_size": list(self.in_size),
                "downsampling": self.downsampling, "images": self.images,
                "patch": self.patch.tolist(), "kernel": self.kernel.tolist(),
                "patch_asymmetry": asymmetry(self.patch), "kernel_asymmetry": asymmetry(self.kernel)}


def mean_patches(model: nn.Module, batches: Iterable, layers: Optional[Sequence[str]] = None,
                 device: str = "cpu") -> List[PatchKernel]:
    """Mean input patch and mean kernel of every conv (``layers``: module paths, default all)."""
    gm = traced_copy(model, device)
    chosen = resolve_layers(gm, layers)
    mods = dict(gm.named_modules())
    sums: Dict[object, torch.Tensor] = {}
    src_of = {}
    for name, node in chosen:
        src = node.args[0]
        src_of[name] = src

    def adder(key):
        def add(x: torch.Tensor) -> None:
            s = x.mean(1).sum(0).double()  # float32 reductions (faster), float64 running sum
            sums[key] = sums[key] + s if key in sums else s
        return add

    insert_taps(gm, {src: adder(src) for src in dict.fromkeys(src_of.values())})
    n = run_batches(gm, batches, device)
    out = []
    for name, _ in chosen:
        conv = mods[name]
        mean_in = sums[src_of[name]] / n
        pad = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        out.append(PatchKernel(name, _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation),
                               pad if isinstance(pad, str) else tuple(pad), tuple(mean_in.shape),
                               patch_from_mean_input(conv, mean_in), mean_kernel(conv), n))
    return out
