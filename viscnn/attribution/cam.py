"""CAM (Zhou et al. 2016): ``CAM_k = sum_c W[k, c] A_c`` for nets whose last conv features
``A`` pass through global average pooling into one Linear ``W`` that makes the logits.

The head is found in the traced graph, walking back from the output through dropout,
identity, flatten and reshape: the Linear, then the pooling (``AdaptiveAvgPool2d(1)``,
``F.adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``, or an ``AvgPool2d`` whose window is the
whole map). Anything else is a one-line error naming what was found instead. Forward only; for
such nets CAM is Grad-CAM at ``A`` without the ReLU, times ``H*W`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.attribution.gradcam import upsample_maps
from viscnn.attribution.relu_rules import describe
from viscnn.attribution.traced import TracedModel
from viscnn.errors import ViscnnError

_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity, nn.Flatten)
_PASS_FUNCS = {torch.flatten, F.dropout, torch.squeeze, torch.reshape}
_PASS_METHODS = {"flatten", "view", "reshape", "squeeze", "contiguous"}


@dataclass
class CamHead:
    feature_node: str  # the node holding A (the pooling's input)
    linear: str  # module path or node name of the Linear
    weight: torch.Tensor  # [K, C]
    pool_kernel: Optional[Tuple[int, int]] = None  # for a plain AvgPool2d: its window


def _skip(node, modules):
    while isinstance(node, fx.Node) and node.args and (
            (node.op == "call_module" and isinstance(modules[node.target], _PASS_MODULES))
            or (node.op == "call_function" and node.target in _PASS_FUNCS)
            or (node.op == "call_method" and node.target in _PASS_METHODS)):
        node = node.args[0]
    return node


def _attr(gm: fx.GraphModule, node) -> Optional[torch.Tensor]:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    return None


def _is_one(v) -> bool:
    return v == 1 or (isinstance(v, (tuple, list)) and all(e == 1 for e in v))


def find_cam_head(net: TracedModel) -> CamHead:
    """Locate GAP -> Linear at the end of ``net``'s graph; a one-line error when it is not there."""
    gm, modules = net.base, net.modules
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    lin = _skip(out, modules)
    err = ("CAM needs the last conv features to pass through global average pooling into one Linear that "
           "makes the logits; {}: {} (use gradcam)")
    if not isinstance(lin, fx.Node):
        raise ViscnnError(err.format(net.name, "the output is not computed from the input"))
    if lin.op == "call_module" and isinstance(modules[lin.target], nn.Linear):
        weight, lname = modules[lin.target].weight, lin.target
    elif lin.op == "call_function" and lin.target is F.linear and _attr(gm, lin.args[1]) is not None:
        weight, lname = _attr(gm, lin.args[1]), lin.name
    else:
        raise ViscnnError(err.format(net.name, f"the logits come from {describe(lin, modules)}"))
    pool = _skip(lin.args[0], modules)
    what = f"the input of {lname} comes from {describe(pool, modules)}" if isinstance(pool, fx.Node) else ""
    kernel = None
    if not isinstance(pool, fx.Node):
        raise ViscnnError(err.format(net.name, f"{lname} does not read a feature map"))
    if pool.op == "call_module" and isinstance(modules[pool.target], nn.AdaptiveAvgPool2d):
        ok = _is_one(modules[pool.target].output_size)
    elif pool.op == "call_module" and isinstance(modules[pool.target], nn.AvgPool2d):
        m = modules[pool.target]
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
        ok, kernel = not any(m.padding if isinstance(m.padding, tuple) else (m.padding,)), tuple(k)
    elif pool.op == "call_function" and pool.target is F.adaptive_avg_pool2d:
        ok = _is_one(pool.args[1] if len(pool.args) > 1 else pool.kwargs.get("output_size"))
    elif (pool.op == "call_method" and pool.target == "mean") or (pool.op == "call_function" and pool.target is torch.mean):
        dim = pool.args[1] if len(pool.args) > 1 else pool.kwargs.get("dim")
        ok = isinstance(dim, (tuple, list)) and sorted(d % 4 for d in dim) == [2, 3]
    else:
        ok = False
    if not ok:
        raise ViscnnError(err.format(net.name, what))
    feat = pool.args[0] if pool.args else pool.kwargs.get("input")
    if not isinstance(feat, fx.Node):
        raise ViscnnError(err.format(net.name, what))
    return CamHead(feat.name, lname, weight.detach(), kernel)


class CAM(Attribution):
    """Class activation maps [N,1,H,W] (input size) or [N,1,h,w] (``upsample=False``), not rectified
    unless ``relu=True`` (Zhou et al. show the raw map). Targets must be class logits."""

    name = "cam"
    signed = True

    def __init__(self, model: ModelLike, classes=None, device=None):
        super().__init__(model, classes, device)
        self.head = find_cam_head(self.net)

    @property
    def layer(self) -> str:
        return self.net.node_layer_name(self.head.feature_node)

    def attribute(self, inputs: torch.Tensor, target=None, labels=None, batch_size=None, relu: bool = False,
                  upsample: bool = True, interpolate_mode: str = "bilinear") -> torch.Tensor:
        return super().attribute(inputs, target, labels, batch_size, relu=relu, upsample=upsample,
                                 interpolate_mode=interpolate_mode)

    def _attribute(self, x, targets, labels, relu=False, upsample=True, interpolate_mode="bilinear") -> torch.Tensor:
        node = self.head.feature_node
        out, _, (a,) = self.net.run(x, "gradient", [node], need_output=True, grad=False)
        if a.dim() != 4:
            raise ViscnnError(f"CAM: the pooled features of {self.net.name} are not a [C, H, W] map")
        if self.head.pool_kernel is not None and tuple(a.shape[2:]) != self.head.pool_kernel:
            raise ViscnnError(f"CAM: the {self.head.pool_kernel[0]}x{self.head.pool_kernel[1]} average pool before "
                              f"{self.head.linear} is not global for a {a.shape[2]}x{a.shape[3]} map")
        from viscnn.importance.capture import model_logits

        logits = model_logits(out)
        w = self.head.weight.to(a.dtype)
        rows = targets.class_rows(logits)
        sel = torch.zeros(len(rows), w.shape[1], dtype=a.dtype, device=a.device)
        for i, terms in enumerate(rows):
            for coef, k in terms:
                if not 0 <= k < w.shape[0]:
                    raise ViscnnError(f"target class:{k}: the model has only {w.shape[0]} outputs")
                sel[i] += coef * w[k]
        if a.shape[1] != w.shape[1]:
            raise ViscnnError(f"CAM: {self.head.linear} has {w.shape[1]} inputs but the pooled map has {a.shape[1]} channels")
        cam = torch.einsum("bc,bchw->bhw", sel, a).unsqueeze(1)
        if relu:
            cam = F.relu(cam)
        return upsample_maps(cam, x.shape[2:], interpolate_mode) if upsample else cam
