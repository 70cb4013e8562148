"""Guided Grad-CAM (Selvaraju et al.): guided backprop times the upsampled Grad-CAM map.

The Grad-CAM map uses the ordinary gradient, the guided part the guided ReLU rule, both on
the same traced working copy (one copy of the weights). The paper upsamples bilinearly
(Captum defaults to ``nearest``; pass ``interpolate_mode="nearest"`` to match it)."""

from __future__ import annotations

from typing import Optional

import torch

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.attribution.gradcam import GradCAM
from viscnn.attribution.guided_backprop import GuidedBackprop


class GuidedGradCAM(Attribution):
    """Guided Grad-CAM, signed, shape [N,C,H,W]."""

    name = "guided_gradcam"
    rule = "guided"

    def __init__(self, model: ModelLike, layer: Optional[str] = None, classes=None, device=None):
        super().__init__(model, classes, device)
        self.gradcam = GradCAM(self.net, layer, classes)
        self.guided = GuidedBackprop(self.net, classes)

    def attribute(self, inputs: torch.Tensor, target=None, labels=None, batch_size=None,
                  interpolate_mode: str = "bilinear") -> torch.Tensor:
        return super().attribute(inputs, target, labels, batch_size, interpolate_mode=interpolate_mode)

    def _attribute(self, x, targets, labels, interpolate_mode="bilinear") -> torch.Tensor:
        cam = self.gradcam._attribute(x, targets, labels, relu=True, upsample=True, interpolate_mode=interpolate_mode)
        return self.guided._attribute(x, targets, labels) * cam
