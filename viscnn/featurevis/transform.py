"""Random transforms applied to the image at every optimisation step (transformation robustness).

Lucent's standard set is pad 12, jitter 8, scale 0.9-1.1, rotate +-10 degrees, jitter 4 at 224 px;
here the pad/jitter are scaled to the canvas (2 px at 28 px) and folded into one step: pad with
gray, scale+rotate about the centre of the padded image, then crop a random window of the original
size (the jitter), so the model always sees its own input size (models with a Linear head need it).
One transform per step is shared by the whole batch and drawn from a generator seeded by
(seed, step): a unit's result is the same whether it is rendered alone or in a batch.

The three steps compose to one affine map from output pixels to input pixels, so they run as a
single ``grid_sample`` straight into the output window, on *signed* images (gray = 0, so the
zero fill is the gray pad) with the whole batch as the channels of one image: one sampling grid
for all. The tests check it against the literal pad / grid_sample / crop.

For large batches (many image planes) the same bilinear map runs as a sparse matrix: the grid is
shared, so it becomes a CSR matrix with 4 entries per output pixel, applied to all planes at once
(forward M·x, backward Mᵀ·g). CPU ``grid_sample`` recomputes the weights for every plane and its
backward scatters one plane at a time; on 64 AlexNet-sized RGB images the sparse form's backward
is ~2.5x faster. The tests check it against ``grid_sample`` values and gradients.
"""

from __future__ import annotations

import math
import warnings
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


def draw_transform(spec: TransformSpec, gen: torch.Generator) -> Tuple[float, float, int, int]:
    """(scale, angle in radians, crop row, crop column) from the generator, in a fixed order."""
    si = int(torch.randint(len(spec.scales), (1,), generator=gen))
    ai = int(torch.randint(len(spec.angles), (1,), generator=gen))
    oy = int(torch.randint(2 * spec.pad + 1, (1,), generator=gen))
    ox = int(torch.randint(2 * spec.pad + 1, (1,), generator=gen))
    return spec.scales[si], math.radians(spec.angles[ai]), oy, ox


def transform_theta(size: Tuple[int, int], pad: int, scale: float, angle: float, oy: int, ox: int) -> torch.Tensor:
    """[1, 2, 3] ``affine_grid`` matrix, in the image's own normalised coordinates, of: pad by ``pad``,
    scale+rotate about the padded image's centre (``affine_grid`` convention, align_corners=False),
    crop the window at (oy, ox)."""
    h, w = size
    hp, wp = h + 2 * pad, w + 2 * pad
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    a = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    pre = torch.diag(torch.tensor([w / wp, h / hp], dtype=torch.float64))  # window -> padded coordinates
    shift = torch.tensor([(2 * ox + w) / wp - 1, (2 * oy + h) / hp - 1], dtype=torch.float64)
    post = torch.diag(torch.tensor([wp / w, hp / h], dtype=torch.float64))  # padded -> image coordinates
    return torch.cat([post @ a @ pre, (post @ a @ shift)[:, None]], 1)[None].float()


#: Image planes (batch x channels) from which the shared-grid sparse resampling replaces grid_sample.
SPARSE_MIN_PLANES = 32


def bilinear_matrices(grid: torch.Tensor, in_hw: Tuple[int, int], dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """CSR ``M`` [out pixels, in pixels] of ``grid_sample(bilinear, zeros, align_corners=False)`` for a
    [1, Ho, Wo, 2] grid, and its transpose. Every row keeps 4 entries (weight 0 outside the image)."""
    h, w = in_hw
    g = grid[0].reshape(-1, 2).double()
    ix, iy = ((g[:, 0] + 1) * w - 1) / 2, ((g[:, 1] + 1) * h - 1) / 2
    x0, y0 = ix.floor(), iy.floor()
    fx, fy = ix - x0, iy - y0
    x0, y0 = x0.long(), y0.long()
    cols, vals = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xx, yy = x0 + dx, y0 + dy
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            cols.append(torch.where(inside, yy * w + xx, 0))
            vals.append(torch.where(inside, wy * wx, 0))
    col, val = torch.stack(cols, 1).reshape(-1), torch.stack(vals, 1).reshape(-1).to(dtype)
    p_out = g.shape[0]
    row = torch.arange(p_out).repeat_interleave(4)
    m = _csr(torch.arange(0, 4 * p_out + 1, 4), col, val, (p_out, h * w))
    order = torch.argsort(col, stable=True)  # the transpose: entries by input pixel, rows in order
    crow_t = torch.zeros(h * w + 1, dtype=torch.long)
    crow_t[1:] = torch.bincount(col, minlength=h * w).cumsum(0)
    mt = _csr(crow_t, row[order], val[order], (h * w, p_out))
    return m, mt


def _csr(crow, col, val, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used here for one spmm, tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


class _SparseResample(torch.autograd.Function):
    """[planes, in pixels] -> [planes, out pixels] through the CSR matrix M (and Mᵀ backward)."""

    @staticmethod
    def forward(ctx, x, m, mt):
        ctx.mt = mt
        return torch.sparse.mm(m, x.t()).t()

    @staticmethod
    def backward(ctx, g):
        return torch.sparse.mm(ctx.mt, g.t()).t(), None, None


def random_transform(x: torch.Tensor, spec: TransformSpec, gen: torch.Generator) -> torch.Tensor:
    """Pad with gray, scale and rotate by a random choice, crop a random window of x's size.

    ``x`` is a batch of *signed* images (gray = 0, see :meth:`FourierImage.signed`)."""
    n, c, h, w = x.shape
    s, a, oy, ox = draw_transform(spec, gen)
    p = spec.pad
    if s == 1 and a == 0:  # a pure shift by whole pixels: exact, no resampling
        return F.pad(x, (p - ox, ox - p, p - oy, oy - p))
    grid = F.affine_grid(transform_theta((h, w), p, s, a, oy, ox).to(x.device, x.dtype), [1, 1, h, w],
                         align_corners=False)
    if n * c >= SPARSE_MIN_PLANES and x.device.type == "cpu":
        m, mt = bilinear_matrices(grid, (h, w), x.dtype)
        return _SparseResample.apply(x.reshape(n * c, h * w), m, mt).view(n, c, h, w)
    out = F.grid_sample(x.reshape(1, n * c, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(n, c, h, w)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
