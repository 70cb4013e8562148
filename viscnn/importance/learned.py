"""The ``learned`` circuit method: a per-kernel mask optimised so the masked model keeps the
target's per-image values, binarised to exactly the requested number of conv kernels.

Why: Taylor scores (one-shot or iterative) rank kernels by how much the target would move
without them, not by how well the kept set *reproduces* the target image by image. Here the
objective is the reproduction error itself, ``mean((v_masked - v_full)^2) / var(v_full)`` over
the scoring images. The mask is ``sigmoid(theta + b)``, logits started from the Taylor ranking,
with ``b`` found by bisection each step so that the mask's total follows a geometric schedule from
all kernels down to ``n`` (so no sparsity weight needs tuning); Adam on ``theta``. An optional
last phase (``soft_fraction < 1``) trains a straight-through top-n mask whose forward pass is the
cleaned binary circuit's. Then the top ``n`` by logit, cleaned to input -> target paths by
:func:`viscnn.importance.methods.select_connected`. Removal inside the optimisation follows
``ablation`` (zero, or mean maps: a kernel at mask m contributes ``m * (a ⋆ w) + (1 - m) * (mean(a) ⋆ w)``).
Measured on the default model it does not yet beat ``taylor`` (docs/circuit_methods.md).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from viscnn.graph.structure import Graph
from viscnn.importance.ablation import LayerMeans
from viscnn.importance.capture import layer_modules, model_logits
from viscnn.importance.targets import Target
from viscnn.model_copy import working_copy


def _conv_bias(mod: nn.Conv2d, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(a[None], w, None, mod.stride, mod.padding, mod.dilation, mod.groups)[0]


def _shift(theta: torch.Tensor, goal: float) -> float:
    """The offset b with sum(sigmoid(theta + b)) = goal (bisection; the sum is monotone in b)."""
    lo, hi = -40.0 - float(theta.max()), 40.0 - float(theta.min())
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(torch.sigmoid(theta + mid).sum()) < goal else (lo, mid)
    return (lo + hi) / 2


def learn_mask(model: nn.Module, graph: Graph, target: Target, batches_fn, n: int, *, steps: int = 60,
               lr: float = 0.1, soft_fraction: float = 1.0, ablation: str = "zero",
               means: Optional[LayerMeans] = None, device=None, seed: int = 0, init_scores: Optional[np.ndarray] = None,
               progress: Optional[Callable[[str], None]] = None) -> Tuple[np.ndarray, dict]:
    """(bool [E] live conv kernels, settings) of the learned mask with ``n`` conv kernels."""
    from viscnn.importance.methods import conv_edges, edge_scores, fixed_edges, live_conv, select_connected

    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    m = working_copy(model).to(device)
    mods = layer_modules(m, graph)
    convs = [(l, mods[l.name]) for l in graph.layers if l.kind == "conv"]
    if any(mod.padding_mode != "zeros" for _, mod in convs) and ablation == "mean":
        from viscnn.errors import ViscnnError

        raise ViscnnError("the learned method's mean ablation supports zero-padded convs only")
    data = [(x.to(device), None if y is None else y.to(device)) for x, y in batches_fn()]
    outputs: Dict[str, torch.Tensor] = {}
    hooks = [mod.register_forward_hook(lambda mm, i, o, name=name: outputs.__setitem__(name, o))
             for name, mod in mods.items()] if target.layers else []
    # full-model values and the Taylor start
    with torch.no_grad():
        full = [target.evaluate(model_logits(m(x)), outputs, y) for x, y in data]
    scale = torch.cat(full).var().clamp_min(1e-12)
    sinks = np.asarray(target.sink_nodes(graph), np.int64)
    fixed = fixed_edges(graph, sinks)
    conv = conv_edges(graph)
    if init_scores is None:
        init_scores = edge_scores(model, graph, target, batches_fn(), "taylor", device)
    cidx = np.flatnonzero(conv)
    rank = np.empty(len(cidx))
    rank[np.argsort(-init_scores[cidx], kind="stable")] = np.arange(len(cidx))
    theta = torch.tensor(3.0 - rank / max(len(cidx), 1), dtype=torch.float32,
                         device=device, requires_grad=True)
    offs = np.cumsum([0] + [l.num_edges for l, _ in convs])
    W0 = {l.name: mod.weight.detach().clone() for l, mod in convs}
    for _, mod in convs:
        mod.weight.requires_grad_(False)
    opt = torch.optim.Adam([theta], lr=lr)
    best, best_loss = None, float("inf")

    def run(mask: torch.Tensor) -> torch.Tensor:
        for (l, mod), a, b in zip(convs, offs[:-1], offs[1:]):
            mk = mask[a:b].view(l.channels, -1, 1, 1)
            mod.weight = W0[l.name] * mk  # a plain tensor attribute in place of the parameter
            if ablation == "mean":
                mod._viscnn_bias = _conv_bias(mod, means[l.name].to(device), W0[l.name] * (1 - mk))
        loss = 0.0
        for (x, y), f in zip(data, full):
            v = target.evaluate(model_logits(m(x)), outputs, y)
            loss = loss + ((v - f) ** 2).sum()
        return loss / sum(len(f) for f in full) / scale

    bias_hooks = [mod.register_forward_hook(lambda mm, i, o: o + mm._viscnn_bias) for _, mod in convs] \
        if ablation == "mean" else []
    for _, mod in convs:
        del mod.weight  # drop the Parameter so a tensor can stand in
    N = len(cidx)
    soft_steps = int(steps * soft_fraction)
    try:
        for it in range(steps):
            soft = torch.sigmoid(theta)
            if it < soft_steps:  # soft mask, shifted so its size follows a geometric schedule N -> n
                goal = N * (n / N) ** min(1.0, (it + 1) / max(1, int(soft_steps * 0.8)))
                soft = torch.sigmoid(theta + _shift(theta.detach(), goal))
                loss = loss_fit = run(soft)
            else:  # straight-through top-n: the forward pass is the binary circuit's
                top = np.zeros(graph.num_edges, bool)
                top[cidx[torch.topk(theta.detach(), n).indices.cpu().numpy()]] = True
                hard = torch.from_numpy(live_conv(graph, top, fixed, sinks)[cidx]).to(soft)  # the circuit's own model
                loss = loss_fit = run(hard + soft - soft.detach())
                if float(loss_fit) < best_loss:
                    best_loss, best = float(loss_fit), theta.detach().clone()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress and it % 10 == 0:
                progress(f"learned: step {it} fit {float(loss_fit):.4f} size {float(soft.sum()):.0f}")
    finally:
        for h in hooks + bias_hooks:
            h.remove()
    if best is None:
        best, best_loss = theta.detach(), float(loss_fit.detach())
    s = np.zeros(graph.num_edges)
    s[cidx] = best.cpu().numpy().astype(np.float64)   # the logits' order
    live = select_connected(graph, s, conv, n, fixed, sinks)
    return live, {"steps": steps, "lr": lr, "train_loss": best_loss}
