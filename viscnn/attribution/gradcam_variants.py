"""Grad-CAM's best-known variants, as thin subclasses that change only how the layer's value ``A`` and
gradient ``g = d target / d A`` make the map (everything else, layer choice, ReLU, upsampling, the
traced copy behind in-place ReLUs, is :class:`~viscnn.attribution.gradcam.GradCAM`'s).

* Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19, the closed form for ``Y = exp(S)``):
  ``alpha = g^2 / (2 g^2 + sum_ab A_ab * g^3)`` per pixel (0 where g = 0 or the denominator is 0),
  channel weight ``sum_ij alpha_ij ReLU(g_ij)``. The map depends on the gradient's scale (the g^3 term).
  pytorch-grad-cam adds 1e-6 to the denominator, which is not negligible where g^2 is near 1e-6 (random
  ResNet-18 at 48 px: its maps differ from these by 2-11 %); torchcam 0.5's ``GradCAMpp`` sums ``A * g^3``
  pixel by pixel in the denominator and leaves ``alpha = g^2`` (its in-place division acts on a masked
  copy), so it is not this method.
* XGrad-CAM (Fu et al. 2020): channel weight ``sum_ij g_ij A_ij / sum_ij A_ij`` (0 where that sum is 0).
* Layer-CAM (Jiang et al. 2021): no channel weight; each pixel weighted by its own ``ReLU(g)``, which
  keeps fine detail at early layers.
"""

from __future__ import annotations

import torch

from viscnn.attribution.gradcam import GradCAM


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ maps [N,1,H,W]."""

    name = "gradcam_plusplus"

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g2 = g * g
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g2 * g
        ok = (g != 0) & (denom != 0)
        alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(g))
        w = (alpha * torch.relu(g)).sum((2, 3), keepdim=True)
        return (w * a).sum(1, keepdim=True)


class XGradCAM(GradCAM):
    """XGrad-CAM maps [N,1,H,W]."""

    name = "xgradcam"

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        total = a.sum((2, 3), keepdim=True)
        ok = total != 0
        w = torch.where(ok, (g * a).sum((2, 3), keepdim=True) / torch.where(ok, total, torch.ones_like(total)),
                        torch.zeros_like(total))
        return (w * a).sum(1, keepdim=True)


class LayerCAM(GradCAM):
    """Layer-CAM maps [N,1,H,W]."""

    name = "layercam"

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (torch.relu(g) * a).sum(1, keepdim=True)
