"""Channel provenance: which graph nodes each channel of an fx value is made of.

A tensor's provenance is a :class:`Chan`: per channel (dim 1), the set of node indices summed
or multiplied into it. Ops that mix channels without being a conv give a :class:`Mixed` marker
naming the op; it only becomes an error when a conv (or the class layer) reads it, so a
classifier head of Linear layers after the last conv is fine.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Sources = FrozenSet[int]


@dataclass(frozen=True)
class Chan:
    """Per-channel sources. ``spatial`` > 1 marks a flattened (N, C*spatial) tensor."""

    sources: Tuple[Sources, ...]
    spatial: int = 1


@dataclass(frozen=True)
class Squeezed:
    """A tensor whose channel dim was indexed away (``x[:, 0]``); ``unsqueeze(1)`` restores it."""

    sources: Sources


@dataclass(frozen=True)
class Mixed:
    """A value that mixes channels in a way the graph cannot express."""

    op: str
    where: str


CONST = None  # constants, parameters, shapes: no graph sources

# Ops that act on each channel separately (elementwise or spatial-only), by module type.
PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.PReLU, nn.Identity,
    nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)

PRESERVING_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus,
    F.prelu, F.dropout, F.dropout2d, F.alpha_dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, F.lp_pool2d, F.pad, F.interpolate, F.batch_norm, F.instance_norm, torch.clamp,
    torch.clamp_min, torch.clamp_max, torch.abs, torch.neg, operator.neg, torch.exp, torch.log, torch.sqrt,
    torch.square, torch.clone,
}
try:  # torchvision wraps this for fx; in eval mode it is the identity, in training a per-sample scale
    from torchvision.ops import stochastic_depth as _sd

    PRESERVING_FUNCTIONS.add(_sd)
except ImportError:  # pragma: no cover
    pass
PRESERVING_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_max",
    "abs", "neg", "exp", "sqrt", "square", "contiguous", "clone", "detach", "float", "double", "half", "to",
    "type_as", "requires_grad_",
}
ELEMENTWISE_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.pow,
    operator.pow,
}
ELEMENTWISE_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum", "pow"}
CONST_METHODS = {"size", "dim", "numel"}


def union_binary(provs, out_channels: Optional[int], op: str, where: str):
    """Provenance of an elementwise op over broadcast operands (residual add, SE scaling...)."""
    tensors = [p for p in provs if p is not CONST]
    for p in tensors:
        if isinstance(p, Mixed):
            return p
    if not tensors:
        return CONST
    if all(isinstance(p, Squeezed) for p in tensors):
        return Squeezed(frozenset().union(*(p.sources for p in tensors)))
    if any(isinstance(p, Squeezed) for p in tensors) or out_channels is None:
        return Mixed(op, where)
    spatial = {p.spatial for p in tensors}
    if len(spatial) > 1:
        return Mixed(op, where)
    acc = [set() for _ in range(out_channels)]
    for p in tensors:
        if len(p.sources) == out_channels:
            for a, s in zip(acc, p.sources):
                a |= s
        elif len(p.sources) == 1:  # broadcast along channels
            for a in acc:
                a |= p.sources[0]
        else:
            return Mixed(op, where)
    return Chan(tuple(frozenset(a) for a in acc), spatial.pop())
