"""What removing a kernel means: ``zero`` (its weights are zeroed, the plain masked model of
:func:`viscnn.importance.faithfulness.masked_model`) or ``mean`` (its output map is replaced by
that map's mean over a reference image set, a constant added to its filter's output).

Mean ablation is cheap because a kernel map is linear in its input: the image-mean of
``a_i ⋆ w_ji`` is ``mean(a_i) ⋆ w_ji``, so one conv of the mean layer inputs with the removed
kernels gives every filter's constant map. Zeroing leaves the next BatchNorm seeing a shifted
mean; mean ablation keeps the removed kernels' average effect and only drops their variation.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.capture import layer_modules
from viscnn.model_copy import working_copy

ABLATIONS = ("zero", "mean")
LayerMeans = Dict[str, torch.Tensor]  # layer name -> image-mean of the layer's input [C, H, W] (or [F])


def layer_input_means(model: nn.Module, graph: Graph, batches: Iterable, device=None) -> LayerMeans:
    """Image-means of every graph layer's input in the *full* model over ``batches`` (one pass)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    m = working_copy(model).to(device)
    mods = layer_modules(m, graph)
    sums: Dict[str, torch.Tensor] = {}
    n = 0

    def hook(name):
        def f(mod, inp, out):
            s = inp[0].detach().double().sum(0)
            sums[name] = s if name not in sums else sums[name] + s
        return f

    hs = [mod.register_forward_hook(hook(name)) for name, mod in mods.items()]
    try:
        with torch.no_grad():
            for x, _ in batches:
                m(x.to(device))
                n += x.shape[0]
    finally:
        for h in hs:
            h.remove()
    if not n:
        raise ViscnnError("no images to compute the mean-ablation maps from")
    return {k: (v / n).float() for k, v in sums.items()}


def _add_ablation_bias(mod, inp, out):
    return out + mod._viscnn_ablation_bias


def conv_mean_map(mod: nn.Conv2d, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a ⋆ w`` with ``mod``'s stride, padding (any padding mode), dilation and groups: the mean map
    [C_out, Ho, Wo] of kernels ``w`` (removed, or weighted by a soft mask) given the mean input ``a``."""
    if mod.padding_mode != "zeros":
        a = F.pad(a[None], mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
        return F.conv2d(a, w, None, mod.stride, 0, mod.dilation, mod.groups)[0]
    return F.conv2d(a[None], w, None, mod.stride, mod.padding, mod.dilation, mod.groups)[0]


def removed_mean_maps(model: nn.Module, graph: Graph, keep: np.ndarray, means: LayerMeans) -> Dict[str, torch.Tensor]:
    """Per layer, the summed image-mean maps of its removed kernels (``keep`` False): [C, Ho, Wo]
    for a conv ([Ho, Wo, C] for a channels-last Linear), [K] for the class layer."""
    mods = layer_modules(model, graph)
    out = {}
    for layer in graph.layers:
        if layer.kind == "input":
            continue
        k = torch.from_numpy(~keep[layer.edge_offset:layer.edge_offset + layer.num_edges])
        if not bool(k.any()):
            continue
        mod = mods[layer.name]
        w = mod.weight.detach()
        a = means[layer.name].to(w.device, w.dtype)
        if layer.kind == "conv" and layer.channels_last:  # a Linear over NHWC channels: a 1x1 conv, NHWC map
            out[layer.name] = a @ (w * k.view(w.shape).to(w)).T  # [H, W, C_out], added to the NHWC output
        elif layer.kind == "conv":
            out[layer.name] = conv_mean_map(mod, a, w * k.view(w.shape[0], w.shape[1], 1, 1).to(w))
        else:
            S = w.shape[1] // layer.in_channels
            mask = k.view(w.shape[0], layer.in_channels, 1).expand(-1, -1, S).reshape(w.shape).to(w)
            out[layer.name] = (w * mask) @ a.reshape(-1)
    return out


def ablated_model(model: nn.Module, graph: Graph, edges: np.ndarray, ablation: str = "zero",
                  means: Optional[LayerMeans] = None) -> nn.Module:
    """A working copy keeping only ``edges``; the others zeroed (``zero``) or replaced by their
    image-mean maps from ``means`` (``mean``, see :func:`layer_input_means`)."""
    from viscnn.importance.faithfulness import masked_model

    if ablation not in ABLATIONS:
        raise ViscnnError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    m = masked_model(model, graph, edges)
    if ablation == "zero":
        return m
    if means is None:
        raise ViscnnError("mean ablation needs the layer input means (layer_input_means on a reference image set)")
    keep = np.zeros(graph.num_edges, bool)
    keep[np.asarray(edges, np.int64)] = True
    maps = removed_mean_maps(model, graph, keep, means)
    mods = layer_modules(m, graph)
    for name, b in maps.items():
        mods[name].register_buffer("_viscnn_ablation_bias", b.clone())
        mods[name].register_forward_hook(_add_ablation_bias)
    return m
