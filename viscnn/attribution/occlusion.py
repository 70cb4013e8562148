"""Occlusion (Zeiler & Fergus 2014, Captum's ``Occlusion``): slide a window over the input, replace it
by a baseline, and credit every covered input element with the target's drop ``target(x) - target(x
occluded)``, averaged over the windows that cover it. Forward passes only, many windows per pass.

``window`` is (h, w) over all channels or (c, h, w), by default square with 1/8 of the input's shorter
side (at least 2: 64 windows); ``strides`` likewise (default: the window, no overlap). Windows start at
the top-left corner and every stride after it, as in Captum, the last one in each dimension clipped at
the border, so every input element is covered (strides larger than the window leave gaps, which get 0).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.attribution.target_spec import PerImageTargets
from viscnn.errors import ViscnnError

Shape = Union[int, Sequence[int]]


def _full(v: Shape, c: int, name: str) -> Tuple[int, int, int]:
    t = (int(v),) * 2 if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) == 2:
        t = (c,) + t
    if len(t) != 3 or min(t) < 1:
        raise ViscnnError(f"occlusion {name} must be h,w or c,h,w of positive sizes, got {v!r}")
    return t  # type: ignore[return-value]


class Occlusion(Attribution):
    """Occlusion, signed (positive: occluding it lowers the target), shape [N,C,H,W]."""

    name = "occlusion"

    def __init__(self, model: ModelLike, classes=None, device=None, window: Shape = None, strides: Shape = None,
                 baseline: float = 0.0, internal_batch_size: int = 64):
        super().__init__(model, classes, device)
        self.window, self.strides, self.baseline = window, strides, float(baseline)
        self.internal_batch_size = int(internal_batch_size)

    def positions(self, shape) -> Tuple[Tuple[int, int, int], list]:
        """``(window (c,h,w), [(c0, y0, x0), ...])`` for inputs of ``shape`` (C,H,W): ceil((n - w) / s) + 1
        starts per dimension, as Captum places them."""
        C, H, W = shape
        win = _full(self.window if self.window is not None else max(2, round(min(H, W) / 8)), C, "window")
        st = _full(self.strides if self.strides is not None else win, C, "strides")
        if win[0] > C or win[1] > H or win[2] > W:
            raise ViscnnError(f"occlusion window {win} is larger than the input {tuple(shape)}")
        starts = [[k * s for k in range(-(-(n - w) // s) + 1)] for n, w, s in zip((C, H, W), win, st)]
        return win, [(c, y, x) for c in starts[0] for y in starts[1] for x in starts[2]]

    def _attribute(self, x, targets, labels) -> torch.Tensor:
        targets = self.pin_predicted(x, targets)
        N = len(x)
        full = self.target_values(x, targets, labels)
        (wc, wh, ww), pos = self.positions(tuple(x.shape[1:]))
        total, count = torch.zeros_like(x), torch.zeros_like(x[:1])
        per = max(1, self.internal_batch_size // N)
        for a in range(0, len(pos), per):
            chunk = pos[a:a + per]
            xs = x.unsqueeze(0).repeat(len(chunk), 1, 1, 1, 1)
            for i, (c, y, w) in enumerate(chunk):
                xs[i, :, c:c + wc, y:y + wh, w:w + ww] = self.baseline
            v = self.target_values(xs.reshape(-1, *x.shape[1:]), PerImageTargets(targets.items * len(chunk)),
                                   None if labels is None else labels.repeat(len(chunk)))
            drop = (full.unsqueeze(0) - v.reshape(len(chunk), N)).to(x.dtype)
            for i, (c, y, w) in enumerate(chunk):
                total[:, c:c + wc, y:y + wh, w:w + ww] += drop[i].reshape(N, 1, 1, 1)
                count[:, c:c + wc, y:y + wh, w:w + ww] += 1
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))  # strides > window leave gaps
