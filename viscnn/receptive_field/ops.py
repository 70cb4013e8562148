"""How fx nodes are classified for receptive fields: the op tables and small node and layout helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

def _spatial(node: fx.Node) -> Optional[Tuple[int, int]]:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if tm is None or not hasattr(tm, "shape") or len(tm.shape) != 4:
        return None
    return int(tm.shape[2]), int(tm.shape[3])


def _arg(node: fx.Node, pos: int, name: str, default):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


_GLOBAL_MODULES = (nn.InstanceNorm2d, nn.GroupNorm, nn.Softmax2d)
_POOL_FUNCS = {F.max_pool2d: "max", F.avg_pool2d: "avg", F.lp_pool2d: "lp"}
try:  # the *_with_indices variant fx may record
    _POOL_FUNCS[torch.nn.functional.max_pool2d_with_indices] = "max"
except AttributeError:  # pragma: no cover
    pass
_SPATIAL_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
_UNSUPPORTED_MODULES = (nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Unfold, nn.Fold)
_SPATIAL_FUNCS = {F.conv2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.pad, *_POOL_FUNCS}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "norm", "std", "var", "logsumexp", "prod"}
_SOFTMAX = {torch.softmax, F.softmax, F.log_softmax, torch.log_softmax}
_SPLITS = {"split", "chunk", "tensor_split", "unbind"}


@dataclass(frozen=True)
class _Sp:
    """Where a tensor keeps the image's rows and columns: axes ``ay``/``ax`` (None: a single row or
    column, no axis of its own, size 1) and their sizes."""

    ay: Optional[int]
    ax: Optional[int]
    h: int
    w: int


def _shape(node) -> Optional[tuple]:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(int(v) for v in tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _vary(t: torch.Tensor) -> list:
    return [d for d in range(t.dim()) if t.shape[d] > 1 and bool((t != t.narrow(d, 0, 1)).any())]


def _along(t: torch.Tensor, d: Optional[int]) -> np.ndarray:
    """The values of ``t`` along axis ``d`` (index 0 on every other axis); one value for None."""
    if d is None:
        return t.reshape(-1)[:1].numpy().astype(np.int64)
    return t[tuple(slice(None) if i == d else 0 for i in range(t.dim()))].numpy().astype(np.int64)


def _what(node: fx.Node, modules) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} {node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{'Tensor.' if node.op == 'call_method' else ''}{name} (fx node {node.name})"
