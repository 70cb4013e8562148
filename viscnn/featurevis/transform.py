"""Random transforms applied to the image at every optimisation step (transformation robustness).

Lucent's standard set is pad 12, jitter 8, scale 0.9-1.1, rotate +-10 degrees, jitter 4 at 224 px;
here the pad/jitter are scaled to the canvas (2 px at 28 px) and folded into one step: pad with
gray, scale+rotate about the centre with one ``grid_sample``, then crop a random window of the
original size (the jitter), so the model always sees its own input size (models with a Linear head
need it). One transform per step is shared by the whole batch and drawn from a generator seeded
by (seed, step): a unit's result is the same whether it is rendered alone or in a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
ANGLES = tuple(range(-10, 11)) + (0,) * 5


@dataclass
class TransformSpec:
    pad: int
    scales: Sequence[float] = SCALES
    angles: Sequence[float] = ANGLES

    @classmethod
    def for_size(cls, size: Tuple[int, int]) -> "TransformSpec":
        return cls(pad=max(1, round(12 * max(size) / 224)))


def random_transform(x: torch.Tensor, spec: TransformSpec, gen: torch.Generator) -> torch.Tensor:
    """Pad with 0.5, scale and rotate by a random choice, crop a random window of x's size."""
    n, c, h, w = x.shape
    p = spec.pad
    si = int(torch.randint(len(spec.scales), (1,), generator=gen))
    ai = int(torch.randint(len(spec.angles), (1,), generator=gen))
    oy = int(torch.randint(2 * p + 1, (1,), generator=gen))
    ox = int(torch.randint(2 * p + 1, (1,), generator=gen))
    xp = F.pad(x, (p, p, p, p), value=0.5)
    s, a = spec.scales[si], math.radians(spec.angles[ai])
    if s != 1 or a != 0:
        cos, sin = math.cos(a) / s, math.sin(a) / s
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(n, 2, 3), list(xp.shape), align_corners=False)
        # the border of the padded image is gray, so "border" fills the corners with gray too
        xp = F.grid_sample(xp, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return xp[:, :, oy:oy + h, ox:ox + w]


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
