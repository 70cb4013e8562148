"""Channel provenance: which graph nodes each channel of an fx value is made of.

A tensor's provenance is a :class:`Chan`: per channel (the tensor's ``dim`` axis: 1 for NCHW, 3
for a channels-last NHWC tensor), the set of node indices summed or multiplied into it. Ops that
mix channels without being a conv give a :class:`Mixed` marker naming the op; it only becomes an
error when a conv (or the class layer) reads it, so a classifier head of Linear layers after the
last conv is fine. A :class:`Grid` is the middle of a channel rearrangement (ShuffleNet's
``view(b, g, c/g, h, w)``): channels spread over several axes, exact but not yet readable.

Normalisations (BatchNorm, LayerNorm over channels, GroupNorm) are treated as per-channel: each
channel keeps its identity and sources. LayerNorm/GroupNorm couple the channels of a position
through their mean and variance; that is a shared rescaling, not a weighted sum of filters, so
the graph (like for BatchNorm's batch statistics in training) gives it no edges.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import FrozenSet, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Sources = FrozenSet[int]


@dataclass(frozen=True)
class Chan:
    """Per-channel sources along axis ``dim``. ``spatial`` > 1 marks a flattened (N, C*spatial) tensor."""

    sources: Tuple[Sources, ...]
    spatial: int = 1
    dim: int = 1


@dataclass(frozen=True)
class Squeezed:
    """A tensor whose channel dim was indexed away (``x[:, 0]``); ``unsqueeze(1)`` restores it."""

    sources: Sources


@dataclass(frozen=True, eq=False)
class Grid:
    """Channels spread over several axes: ``ids`` (int64, the tensor's shape with batch 1) holds,
    per element, the index into ``sources`` of the channel it came from."""

    ids: torch.Tensor
    sources: Tuple[Sources, ...]
    op: str
    where: str


#: Mixed.kind: a real channel mix / an op viscnn does not know / a known op in a form it cannot map.
MIX, UNKNOWN, FORM = "mix", "unknown", "form"


@dataclass(frozen=True)
class Mixed:
    """A value the graph cannot express; ``why`` says what about ``op`` is unsupported."""

    op: str
    where: str
    kind: str = MIX
    why: str = ""

    def reason(self) -> str:
        if self.kind == MIX:
            return "which mixes channels without being a conv, so its kernels have no single source filter"
        if self.kind == UNKNOWN:
            return ("an op viscnn does not know to keep channels apart (if it acts on each channel "
                    "separately, add it to viscnn.graph.provenance)")
        return f"an unsupported form of this op: {self.why}"


CONST = None  # constants, parameters, shapes: no graph sources

# Elementwise ops: act on each element, whatever the layout (NCHW, NHWC, a channel grid).
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
# Per-channel or spatial-only ops that expect channels in dim 1 (NCHW / NC / NCL).
NCHW_MODULES = (
    nn.PReLU, nn.BatchNorm2d, nn.BatchNorm1d, nn.InstanceNorm2d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)
# Normalisations over trailing axes (see the module docstring): any layout.
NORM_MODULES = (nn.LayerNorm, nn.GroupNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
PRESERVING_MODULES = ELEMENTWISE_MODULES + NCHW_MODULES

ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus,
    F.dropout, F.dropout2d, F.alpha_dropout, torch.clamp, torch.clamp_min, torch.clamp_max, torch.abs,
    torch.neg, operator.neg, torch.exp, torch.log, torch.sqrt, torch.square, torch.clone,
}
NCHW_FUNCTIONS = {
    F.prelu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d, F.pad,
    F.interpolate, F.batch_norm, F.instance_norm,
}
NORM_FUNCTIONS = {F.layer_norm, F.group_norm} | ({F.rms_norm} if hasattr(F, "rms_norm") else set())
try:  # torchvision wraps this for fx; in eval mode it is the identity, in training a per-sample scale
    from torchvision.ops import stochastic_depth as _sd

    ELEMENTWISE_FUNCTIONS.add(_sd)
except ImportError:  # pragma: no cover
    pass
try:  # timm's optional fused LayerNorm (same maths as F.layer_norm)
    from timm.layers.fast_norm import fast_layer_norm as _fln

    NORM_FUNCTIONS.add(_fln)
except Exception:  # pragma: no cover - timm is optional
    pass
PRESERVING_FUNCTIONS = ELEMENTWISE_FUNCTIONS | NCHW_FUNCTIONS
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


def union_binary(provs: Sequence, shapes: Sequence[Optional[tuple]], out_shape: Optional[tuple], op: str, where: str):
    """Provenance of an elementwise op over broadcast operands (residual add, SE scaling, layer
    scale...): per output channel, the union of the operands' sources; a one-channel operand
    broadcasts into every channel."""
    pairs = [(p, s) for p, s in zip(provs, shapes) if p is not CONST]
    for p, _ in pairs:
        if isinstance(p, Mixed):
            return p
    if not pairs:
        return CONST
    if any(isinstance(p, Grid) for p, _ in pairs):
        g = next(p for p, _ in pairs if isinstance(p, Grid))
        return Mixed(op, where, FORM, f"an operand's channels are spread over several axes by {g.op} ({g.where})")
    if all(isinstance(p, Squeezed) for p, _ in pairs):
        return Squeezed(frozenset().union(*(p.sources for p, _ in pairs)))
    if any(isinstance(p, Squeezed) for p, _ in pairs) or out_shape is None or any(s is None for _, s in pairs):
        return Mixed(op, where, FORM, "an operand without a channel axis is combined with one that has it")
    nd = len(out_shape)
    spatial = {p.spatial for p, _ in pairs}
    axes = {p.dim + nd - len(s) for p, s in pairs if len(p.sources) > 1 or s[p.dim] > 1}
    if len(spatial) > 1 or len(axes) > 1:
        return Mixed(op, where, FORM, "the operands' channels lie on different axes")
    axis = axes.pop() if axes else pairs[0][0].dim + nd - len(pairs[0][1])
    out_channels = out_shape[axis] if axis < nd else 1
    acc = [set() for _ in range(out_channels)]
    for p, _ in pairs:
        if len(p.sources) == out_channels:
            for a, s in zip(acc, p.sources):
                a |= s
        elif len(p.sources) == 1:  # broadcast along channels
            for a in acc:
                a |= p.sources[0]
        else:
            return Mixed(op, where, FORM, f"{len(p.sources)} channels do not broadcast to {out_channels}")
    return Chan(tuple(frozenset(a) for a in acc), spatial.pop(), axis)
