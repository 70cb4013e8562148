"""The Grad-CAM crop: the region of interest of each image, where its normalised map is high.

Per image the map is upsampled to the input size, min-max normalised to [0, 1], and the input
is kept where the map exceeds ``threshold`` (zero elsewhere); the bounding box of the kept
pixels is returned as ``(y0, x0, y1, x1)`` with exclusive ends (``img[:, y0:y1, x0:x1]``).
A map with no pixel above the threshold (a constant map) gives an empty mask and the box
``(0, 0, 0, 0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from viscnn.attribution.gradcam import upsample_maps
from viscnn.errors import ViscnnError


@dataclass
class Crop:
    masked: torch.Tensor  # [N, C, H, W] the input where the map is above the threshold, 0 elsewhere
    mask: torch.Tensor  # [N, 1, H, W] bool
    boxes: torch.Tensor  # [N, 4] long (y0, x0, y1, x1), exclusive ends
    normalized: torch.Tensor  # [N, 1, H, W] the map in [0, 1]


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of [N, 1, H, W] to [0, 1] (a constant map becomes 0)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def gradcam_crop(inputs: torch.Tensor, cam_map: torch.Tensor, threshold: float = 0.5) -> Crop:
    """Mask ``inputs`` [N,C,H,W] where ``cam_map`` [N,1,h,w] (normalised per image) exceeds ``threshold``."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ViscnnError(f"crop threshold {threshold} is outside [0, 1]")
    if inputs.dim() != 4 or cam_map.dim() != 4 or cam_map.shape[0] != inputs.shape[0] or cam_map.shape[1] != 1:
        raise ViscnnError(f"gradcam_crop needs inputs [N,C,H,W] and maps [N,1,h,w]; got {tuple(inputs.shape)} "
                          f"and {tuple(cam_map.shape)}")
    m = normalize_maps(upsample_maps(cam_map.detach().to(inputs.dtype), inputs.shape[2:]))
    mask = m > threshold
    boxes = torch.zeros(inputs.shape[0], 4, dtype=torch.long)
    for i in range(inputs.shape[0]):
        ys, xs = torch.nonzero(mask[i, 0], as_tuple=True)
        if len(ys):
            boxes[i] = torch.stack([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]).cpu()
    return Crop(inputs * mask.to(inputs.dtype), mask, boxes, m)
