"""Saliency (Simonyan et al.): the gradient of the target w.r.t. the input pixels.

``Saliency`` returns ``|grad|`` by default, like Captum (``abs=False`` gives the signed
gradient); ``InputXGradient`` returns ``grad * input``. Both use the ordinary ReLU derivative.
"""

from __future__ import annotations

import torch

from viscnn.attribution.base import Attribution


class Saliency(Attribution):
    """``|d target / d input|`` (``abs=True``) or the signed gradient, shape [N,C,H,W]."""

    name = "saliency"
    signed = False

    def attribute(self, inputs: torch.Tensor, target=None, labels=None, batch_size=None, abs: bool = True) -> torch.Tensor:
        return super().attribute(inputs, target, labels, batch_size, abs=abs)

    def _attribute(self, x, targets, labels, abs: bool = True) -> torch.Tensor:
        g = self.forward_backward(x, targets, labels).grads["input"]
        return g.abs() if abs else g


class Gradient(Saliency):
    """The signed gradient (``Saliency(abs=False)``), as its own method for the CLI and the app."""

    name = "gradient"
    signed = True

    def attribute(self, inputs: torch.Tensor, target=None, labels=None, batch_size=None, abs: bool = False) -> torch.Tensor:
        return super().attribute(inputs, target, labels, batch_size, abs=abs)


class InputXGradient(Attribution):
    """``input * d target / d input``, shape [N,C,H,W] (Captum's InputXGradient)."""

    name = "input_x_gradient"

    def _attribute(self, x, targets, labels) -> torch.Tensor:
        p = self.forward_backward(x, targets, labels)
        return p.grads["input"] * p.x
