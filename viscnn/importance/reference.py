"""Slow, obviously-right references for the fast edge scores (tests and the benchmark).

* :func:`loop_kernel_maps`: every kernel map ``a_i ⋆ w_ji`` by its own single-channel conv.
* :func:`dissected_edge_scores`: the *materialised* (dissected) computation: every conv (and
  channels-last Linear, as a 1x1 conv) of a working copy is replaced by the sum of its kernel
  maps, each map kept in the autograd graph with ``retain_grad``, so ``Σ_p ∂target/∂h_ji · h_ji``
  is taken from the maps' own gradients.
"""

from __future__ import annotations

import types
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from viscnn.graph.structure import Graph
from viscnn.importance.capture import channels_last, layer_modules, model_logits, nchw
from viscnn.importance.convmath import as_conv, kernel_maps, padded_input
from viscnn.importance.targets import Target
from viscnn.model_copy import working_copy


def loop_kernel_maps(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """[B, out, in/groups, Ho, Wo]: one F.conv2d per kernel (tiny convs only)."""
    w = conv.weight.detach()
    cout, cg = w.shape[:2]
    per_out = cout // conv.groups
    ap, pad = padded_input(conv, a)
    maps = []
    for j in range(cout):
        row = []
        for il in range(cg):
            i = (j // per_out) * cg + il
            row.append(F.conv2d(ap[:, i:i + 1], w[j:j + 1, il:il + 1], None, conv.stride, pad, conv.dilation))
        maps.append(torch.cat(row, 1))
    return torch.stack(maps, 1)


def _dissected_forward(self, a, keep=None):
    h = kernel_maps(self, a, slice(None))  # [B, G, J, cg, Ho, Wo]
    h = h.reshape(a.shape[0], self.out_channels, -1, *h.shape[-2:])
    if h.requires_grad:
        h.retain_grad()
    (self if keep is None else keep)._viscnn_maps = h
    y = h.sum(2)
    return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def _dissected_linear_forward(self, x):
    """A channels-last Linear as the sum of its 1x1 kernel maps (NHWC in and out)."""
    if x.dim() != 4:
        return F.linear(x, self.weight, self.bias)
    y = _dissected_forward(as_conv(self), x.permute(0, 3, 1, 2), keep=self)
    return y.permute(0, 2, 3, 1)


class DissectedScorer:
    """Materialised reference: a working copy whose convs are sums of kept kernel maps."""

    def __init__(self, model: nn.Module, graph: Graph, target: Target):
        self.model = working_copy(model)
        self.graph, self.target = graph, target
        self.all_modules = layer_modules(self.model, graph)
        self.convs = {n: mod for n, mod in self.all_modules.items()
                      if isinstance(mod, nn.Conv2d) or graph.layer(n).channels_last}
        for mod in self.convs.values():
            fwd = _dissected_linear_forward if isinstance(mod, nn.Linear) else _dissected_forward
            mod.forward = types.MethodType(fwd, mod)

    def __call__(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, Dict[str, torch.Tensor]]:
        """{metric: {conv layer name: per-image edge scores [B, out*in/groups]}} for ``taylor``,
        ``taylor_signed``, ``actgrad_abs`` and ``activation``."""
        outputs = {}
        hooks = [mod.register_forward_hook(
            lambda mm, i, o, n=n: (outputs.__setitem__(n, nchw(o) if channels_last(mm, o) else o), o.clone())[1])
            for n, mod in self.all_modules.items()]
        xx = x.detach().requires_grad_(True)
        try:
            res = self.model(xx)
            logits = model_logits(res) if self.target.needs_output else None
            values = self.target.evaluate(logits, outputs, labels)
            values.sum().backward()
        finally:
            for h in hooks:
                h.remove()
        out = {k: {} for k in ("taylor", "taylor_signed", "actgrad_abs", "activation")}
        for n, mod in self.convs.items():
            h = mod._viscnn_maps.detach()
            gh = mod._viscnn_maps.grad
            mod._viscnn_maps = None
            B = h.shape[0]
            gh = torch.zeros_like(h) if gh is None else gh
            t = (gh * h).sum((3, 4))
            out["taylor_signed"][n] = t.reshape(B, -1)
            out["taylor"][n] = t.abs().reshape(B, -1)
            out["actgrad_abs"][n] = (gh * h).abs().mean((3, 4)).reshape(B, -1)
            out["activation"][n] = h.abs().mean((3, 4)).reshape(B, -1)
        return out


def dissected_edge_scores(model: nn.Module, graph: Graph, target: Target, x: torch.Tensor,
                          labels: Optional[torch.Tensor] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """One-shot :class:`DissectedScorer`."""
    return DissectedScorer(model, graph, target)(x, labels)
