"""DeconvNet (Zeiler & Fergus 2014): back-project a target to pixel space.

At every ReLU the backward signal is rectified (``relu(grad)``, the forward mask ignored);
max-pooling routes the signal through the forward pass's switches (autograd of max-pool does
exactly that); convolutions use the transposed filters. The rule is applied to every ReLU
node of the traced graph (modules, ``F.relu``, in-place, reused modules), see
:mod:`viscnn.attribution.relu_rules`.
"""

from __future__ import annotations

from typing import List

import torch

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.errors import ViscnnError


class Deconvolution(Attribution):
    """DeconvNet back-projection of the target, signed, shape [N,C,H,W] (Captum's Deconvolution)."""

    name = "deconvnet"
    rule = "deconvnet"

    def _attribute(self, x, targets, labels) -> torch.Tensor:
        return self.forward_backward(x, targets, labels).grads["input"]


def unit_max_targets(net: Attribution, inputs: torch.Tensor, layer: str, channel: int) -> List[str]:
    """Per image ``neuron:LAYER:CH:Y:X`` at the strongest activation of that channel (the
    Zeiler–Fergus figure: all other activations of the layer set to zero, the maximum back-projected)."""
    x = net.prepare(inputs)
    node = net.net.layer_node(layer)
    _, _, (m,) = net.net.run(x, "gradient", [node], need_output=False, grad=False)
    if m.dim() != 4:
        raise ViscnnError(f"layer {layer} has no spatial map (output shape {tuple(m.shape[1:])})")
    if not 0 <= channel < m.shape[1]:
        raise ViscnnError(f"layer {layer} has {m.shape[1]} channels; {channel} is out of range")
    flat = m[:, channel].reshape(m.shape[0], -1).argmax(1)
    w = m.shape[3]
    return [f"neuron:{layer}:{channel}:{int(i) // w}:{int(i) % w}" for i in flat]


def deconvnet_of_unit(model: ModelLike, inputs: torch.Tensor, layer: str, channel: int) -> torch.Tensor:
    """DeconvNet of one unit's strongest activation in each image (e.g. its top exemplars)."""
    d = model if isinstance(model, Deconvolution) else Deconvolution(model)
    return d.attribute(inputs, unit_max_targets(d, inputs, layer, channel))
