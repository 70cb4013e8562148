"""Guided backpropagation (Springenberg et al. 2015): at every ReLU the backward signal keeps
only positions where both the forward input and the incoming gradient are positive. Applied
to every ReLU node of the traced graph (see :mod:`viscnn.attribution.relu_rules`)."""

from __future__ import annotations

import torch

from viscnn.attribution.base import Attribution


class GuidedBackprop(Attribution):
    """Guided backprop of the target, signed, shape [N,C,H,W] (Captum's GuidedBackprop)."""

    name = "guided_backprop"
    rule = "guided"

    def _attribute(self, x, targets, labels) -> torch.Tensor:
        return self.forward_backward(x, targets, labels).grads["input"]
