"""Grad-CAM (Selvaraju et al. 2017) at any layer with a spatial map.

``map = ReLU(sum_c mean_hw(d target / d A_c) * A_c)`` for the layer's output ``A``, then
bilinear upsampling to the input size. The layer's value is kept on the traced working copy,
where every ReLU is out of place, so a conv followed by ``ReLU(inplace=True)`` (VGG's
``features.*``) yields its own output, not the rectified one that hook-based tools read. The
backward pass stops at the layer.

The default layer is the last one with a spatial map before the network collapses it (a
ResNet's ``layer4``, a VGG's ``features``, a GoogLeNet's ``inception5b``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.errors import ViscnnError


def upsample_maps(maps: torch.Tensor, size: Tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize [N,1,h,w] maps to ``size`` (align_corners=False for the linear modes)."""
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps, size=tuple(size), mode=mode, **kw)


class GradCAM(Attribution):
    """Grad-CAM maps [N,1,H,W] (input size) or [N,1,h,w] (layer size, ``upsample=False``)."""

    name = "gradcam"
    signed = False

    def __init__(self, model: ModelLike, layer: Optional[str] = None, classes=None, device=None):
        super().__init__(model, classes, device)
        self.layer = layer
        if layer is not None:
            self.net.layer_node(layer)  # unknown / ambiguous layer: fail now

    def layer_for(self, input_shape) -> Tuple[str, str]:
        """``(layer name, node name)`` used for inputs of ``input_shape`` (C,H,W)."""
        if self.layer is not None:
            return self.layer, self.net.layer_node(self.layer)
        node = self.net.default_spatial_node(tuple(input_shape))
        return self.net.node_layer_name(node), node

    def attribute(self, inputs: torch.Tensor, target=None, labels=None, batch_size=None, relu: bool = True,
                  upsample: bool = True, interpolate_mode: str = "bilinear") -> torch.Tensor:
        return super().attribute(inputs, target, labels, batch_size, relu=relu, upsample=upsample,
                                 interpolate_mode=interpolate_mode)

    def combine(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The map before its ReLU, [N,1,h,w], from the layer's value ``a`` and gradient ``g`` [N,C,h,w];
        the variants (:mod:`viscnn.attribution.gradcam_variants`) override only this."""
        return (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)

    def _attribute(self, x, targets, labels, relu=True, upsample=True, interpolate_mode="bilinear") -> torch.Tensor:
        name, node = self.layer_for(x.shape[1:])
        p = self.forward_backward(x, targets, labels, rule="gradient", wrt_input=False, wrt_nodes=[node])
        a, g = p.taps[node], p.grads[node]
        if a.dim() != 4 or a.shape[2] * a.shape[3] <= 1:
            raise ViscnnError(f"layer {name} has no spatial map (output shape {list(a.shape[1:])}); "
                              "Grad-CAM needs a [C, H, W] map larger than 1x1")
        cam = self.combine(a, g)
        if relu:
            cam = F.relu(cam)
        return upsample_maps(cam, x.shape[2:], interpolate_mode) if upsample else cam
