"""The ``learned`` circuit method: a per-kernel mask optimised so the masked model keeps the
target's per-image values, binarised to exactly the requested number of conv kernels.

Why: Taylor scores (one-shot or iterative) rank kernels by how much the target would move
without each one alone, not by how well the kept set *together* reproduces the target image by
image. Here the objective is that reproduction error itself, ``mean((v_masked - v_full)^2) /
var(v_full)`` over the scoring images.

The mask is ``sigmoid((theta + b) / T)``. ``theta`` starts from the Taylor ranking (a logit of the
rank, so the start is already a sharp selection, not a uniform shrink); each step ``b`` is found by
bisection so that the mask's total follows a geometric schedule from all kernels down to ``n``
(no sparsity weight to tune), and the temperature ``T`` falls geometrically from 1 to
``final_temperature`` so the mask ends nearly binary and the binarised circuit is the mask that
was optimised. Adam on ``theta``. Then the top ``n`` by ``theta``, cleaned to input -> target
paths by :func:`viscnn.importance.methods.select_connected`. Removal inside the optimisation
follows ``ablation`` (zero, or mean maps: a kernel at mask m contributes
``m * (a ⋆ w) + (1 - m) * (mean(a) ⋆ w)``). Measured on the default model: docs/circuit_methods.md.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.ablation import LayerMeans, conv_mean_map
from viscnn.importance.capture import layer_modules, model_logits
from viscnn.importance.targets import Target
from viscnn.model_copy import working_copy

SHRINK_FRACTION = 0.6   # share of the steps over which the mask's size goes from all kernels to n
ANNEAL_FRACTION = 0.9   # share of the steps over which the temperature falls to its final value
BATCH = 64              # images per step: ~4x faster than all 200, and its noise generalised better
                        # (held-out Pearson and relative error, docs/circuit_methods.md)


def _shift(theta: torch.Tensor, goal: float, temperature: float) -> float:
    """The offset b with sum(sigmoid((theta + b) / T)) = goal (bisection; the sum is monotone in b)."""
    lo, hi = -60.0 * temperature - float(theta.max()), 60.0 * temperature - float(theta.min())
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(torch.sigmoid((theta + mid) / temperature).sum()) < goal else (lo, mid)
    return (lo + hi) / 2


def schedule(it: int, steps: int, total: int, n: int, final_temperature: float) -> Tuple[float, float]:
    """(mask size goal, temperature) at step ``it`` of ``steps``."""
    frac = min(1.0, (it + 1) / max(1.0, SHRINK_FRACTION * steps))
    temp = final_temperature ** min(1.0, it / max(1.0, ANNEAL_FRACTION * steps))
    return total * (n / total) ** frac, temp


def rank_logits(scores: np.ndarray) -> np.ndarray:
    """Start logits from a ranking: 0.5 * log((N - rank) / (rank + 1)), top ranks high, the median at 0."""
    n = len(scores)
    rank = np.empty(n)
    rank[np.argsort(-scores, kind="stable")] = np.arange(n)
    return 0.5 * np.log((n - rank) / (rank + 1.0))


def learn_mask(model: nn.Module, graph: Graph, target: Target, batches_fn, n: int, *, steps: int = 200,
               lr: float = 0.1, final_temperature: float = 0.05, ablation: str = "zero",
               means: Optional[LayerMeans] = None, device=None, init_scores: Optional[np.ndarray] = None,
               progress: Optional[Callable[[str], None]] = None, batch: int = BATCH,
               seed: int = 0) -> Tuple[np.ndarray, dict]:
    """(bool [E] live conv kernels, settings) of the learned mask with ``n`` conv kernels.

    Each step fits a random ``batch`` of the scoring images (all of them if ``batch`` is 0 or
    larger than the set; the draws are seeded by ``seed``)."""
    from viscnn.importance.methods import conv_edges, edge_scores, fixed_edges, select_connected

    if steps < 1 or not 0 < final_temperature <= 1 or lr <= 0 or batch < 0:
        raise ViscnnError(f"learned method: need steps >= 1, lr > 0, 0 < final_temperature <= 1, batch >= 0 "
                          f"(got {steps}, {lr}, {final_temperature}, {batch})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    m = working_copy(model).to(device)
    mods = layer_modules(m, graph)
    pname = {mod: name for name, mod in m.named_modules()}
    convs = [(l, mods[l.name], pname[mods[l.name]] + ".weight") for l in graph.layers if l.kind == "conv"]
    if ablation == "mean" and any(mod.weight.dim() != 4 for _, mod, _ in convs):
        raise ViscnnError("the learned method's mean ablation supports Conv2d layers only")
    data = [(x.to(device), None if y is None else y.to(device)) for x, y in batches_fn()]
    if not data:
        raise ViscnnError("learned method: no scoring images")
    outputs: Dict[str, torch.Tensor] = {}
    bias: Dict[str, torch.Tensor] = {}
    hooks = [mod.register_forward_hook(lambda mm, i, o, name=name: outputs.__setitem__(name, o))
             for name, mod in mods.items()] if target.layers else []
    hooks += [mod.register_forward_hook(lambda mm, i, o, name=l.name: o + bias[name] if name in bias else o)
              for l, mod, _ in convs] if ablation == "mean" else []
    try:
        with torch.no_grad():
            full = [target.evaluate(model_logits(m(x)), outputs, y) for x, y in data]
        scale = torch.cat(full).var().clamp_min(1e-12)
        count = sum(len(f) for f in full)
        sinks = np.asarray(target.sink_nodes(graph), np.int64)
        fixed = fixed_edges(graph, sinks)
        conv = conv_edges(graph)
        cidx = np.flatnonzero(conv)
        if init_scores is None:
            init_scores = edge_scores(model, graph, target, batches_fn(), "taylor", device)
        theta = torch.tensor(rank_logits(init_scores[cidx]), dtype=torch.float32, device=device, requires_grad=True)
        offs = np.cumsum([0] + [l.num_edges for l, _, _ in convs])
        W0 = {l.name: mod.weight.detach() for l, mod, _ in convs}
        opt = torch.optim.Adam([theta], lr=lr)

        X, F = torch.cat([x for x, _ in data]), torch.cat(full)
        Y = None if any(y is None for _, y in data) else torch.cat([y for _, y in data])
        gen = torch.Generator().manual_seed(seed)

        def fit(mask: torch.Tensor) -> torch.Tensor:
            params = {}
            for (l, mod, pn), a, b in zip(convs, offs[:-1], offs[1:]):
                mk = mask[a:b].view(mod.weight.shape[0], -1, *([1] * (mod.weight.dim() - 2)))
                params[pn] = W0[l.name] * mk
                if ablation == "mean":
                    bias[l.name] = conv_mean_map(mod, means[l.name].to(device), W0[l.name] * (1 - mk))
            idx = torch.randperm(count, generator=gen)[:batch].to(device) if 0 < batch < count else None
            x, f = (X, F) if idx is None else (X[idx], F[idx])
            y = Y if Y is None or idx is None else Y[idx]
            v = target.evaluate(model_logits(functional_call(m, params, (x,))), outputs, y)
            return ((v - f) ** 2).mean() / scale

        for it in range(steps):
            goal, temp = schedule(it, steps, len(cidx), n, final_temperature)
            mask = torch.sigmoid((theta + _shift(theta.detach(), goal, temp)) / temp)
            loss = fit(mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress and (it % 20 == 0 or it == steps - 1):
                progress(f"learned: step {it + 1}/{steps}, mask size {goal:.0f}, fit {float(loss.detach()):.4f}")
    finally:
        for h in hooks:
            h.remove()
    s = np.zeros(graph.num_edges)
    s[cidx] = theta.detach().cpu().numpy().astype(np.float64)   # the logits' order
    live = select_connected(graph, s, conv, n, fixed, sinks)
    return live, {"steps": steps, "lr": lr, "final_temperature": final_temperature, "batch": batch,
                  "seed": seed, "train_loss": float(loss.detach())}
