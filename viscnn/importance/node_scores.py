"""Node (whole-channel) scores that track what really happens when a channel is removed.

Why plain node Taylor ``|Σ_p g·h|`` at the conv output ranks channels badly: zeroing a conv
output channel is not a small perturbation. With BatchNorm after the conv, ``h = 0`` makes the
BN output the constant ``β - γμ/σ`` (often several σ away from where the channel lives), and the
ReLU after it turns that into ``relu(β - γμ/σ)``: a *large* move across a kink, where the
first-order term at ``h`` is wrong (a channel that is mostly below the ReLU threshold has a
large ``g·h`` yet removing it changes nothing). Single-kernel removals are small, which is why
kernel Taylor scores track kernel removal well.

Scores here (all per image, then averaged over the images, like every other score):

* :func:`replacement_taylor` — first order, but taken *after* the channel's elementwise chain
  (BN, ReLU, ...) with the exact replacement value that zeroing the conv produces:
  ``|Σ_p g_a·(a - f(0))|``, ``a = f(h)`` the post-activation map, ``g_a`` its gradient. The
  nonlinearity the plain score linearises is applied exactly. One forward+backward.
* :func:`exact_removal` — ``mean_images |target(channel zeroed) - target|``: one forward per
  channel; exact by definition, cheap for small models.
* :func:`node_scores_from_kernels` — sums/means of a node's incoming or outgoing kernel scores,
  from what :func:`viscnn.importance.accumulate.compute_scores` already returns.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.capture import channels_last, layer_modules, model_logits, nchw
from viscnn.importance.targets import Target, parse_target
from viscnn.model_copy import working_copy

Batches = Iterable[Tuple[torch.Tensor, Optional[torch.Tensor]]]
# modules that act per channel and per position: a conv's zeroed channel stays one channel after them
ELEMENTWISE = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU,
               nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d)
KERNEL_HOWS = ("in_sum", "in_mean", "out_sum")


def node_scores_from_kernels(graph: Graph, edge_scores: np.ndarray, how: str = "in_sum") -> np.ndarray:
    """Node scores [N] from edge scores [E] (e.g. ``compute_scores(...)["taylor"][1]``).

    ``in_sum``/``in_mean``: over the node's incoming kernels (its filter's kernels); ``out_sum``:
    over the kernels that read the node (next layers, class edges included). Input nodes get 0
    for ``in_*``."""
    if how not in KERNEL_HOWS:
        raise ViscnnError(f"unknown kernel aggregation {how!r}; choose from {', '.join(KERNEL_HOWS)}")
    e = np.asarray(edge_scores, np.float64)
    out = np.zeros(graph.num_nodes)
    if how.startswith("in_"):
        np.add.at(out, graph.edge_target, e)
        if how == "in_mean":
            cnt = np.bincount(graph.edge_target, minlength=graph.num_nodes)
            out = out / np.maximum(cnt, 1)
    else:
        lk = graph.links
        np.add.at(out, lk[:, 1], e[lk[:, 0]])
    return out.astype(np.float32)


def _conv_names(graph: Graph) -> List[str]:
    return [l.name for l in graph.layers if l.kind == "conv" and not l.channels_last]


def elementwise_chains(model: nn.Module, graph: Graph, x: torch.Tensor) -> Dict[str, List[str]]:
    """Per conv layer, the module names of the per-channel elementwise modules (BN, ReLU, ...)
    that directly consume its output, in order, found by tracing one forward of ``x``; a module
    run more than once per forward (ResNet's shared ``relu``) ends the chain before it.

    Zeroing the conv's channel sets their last output to ``chain(0)``; an empty chain means the
    conv output itself is what the next layers see."""
    names = {m: n for n, m in model.named_modules()}
    calls: List[Tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append((names[mod], mod, inp[0] if inp else None, out)))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    chains: Dict[str, List[str]] = {}
    convs = set(_conv_names(graph))
    n_calls: Dict[str, int] = {}
    for c in calls:
        n_calls[c[0]] = n_calls.get(c[0], 0) + 1
    for i, (name, _, _, out) in enumerate(calls):
        if name not in convs:
            continue
        chain, cur = [], out
        for n2, mod2, inp2, out2 in calls[i + 1:]:
            # a module called more than once (a shared ReLU) can't be hooked for one conv alone
            if not isinstance(mod2, ELEMENTWISE) or inp2 is not cur or n_calls[n2] > 1:
                break
            chain.append(n2)
            cur = out2
        chains[name] = chain
    return chains


def chain_zero(mods: Dict[str, nn.Module], chain: List[str], C: int, like: torch.Tensor) -> torch.Tensor:
    """``chain(0)`` per channel, [C] (BN in eval mode is affine, so a 1x1 zero map is enough)."""
    z = torch.zeros(1, C, 1, 1, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        for n in chain:
            z = mods[n](z)
    return z.reshape(C)


def _target(target: Union[str, Target], graph: Graph, classes) -> Target:
    return parse_target(target, graph, classes) if isinstance(target, str) else target


def replacement_taylor(model: nn.Module, graph: Graph, target: Union[str, Target], batches: Batches,
                       device=None, classes: Optional[Sequence[str]] = None, replace: str = "exact",
                       chain_len: Optional[int] = None) -> np.ndarray:
    """Node scores [N]: ``mean_images |Σ_p g_a·(a - chain(0))|`` at the end of each conv's
    elementwise chain (conv layers only; other nodes 0). Without BN/activation after the conv it
    is exactly the plain node Taylor score.

    For comparisons: ``replace="zero"`` uses ``|Σ g_a·a|`` (Taylor of zeroing the map ``a``
    itself); ``chain_len=k`` stops after the first ``k`` chain modules (``1``: post-BN)."""
    if replace not in ("exact", "zero"):
        raise ViscnnError(f"replace must be 'exact' or 'zero', not {replace!r}")
    tgt = _target(target, graph, classes)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    m = working_copy(model).to(device)
    mods = dict(m.named_modules())
    gmods = layer_modules(m, graph)
    convs = _conv_names(graph)
    sums = np.zeros(graph.num_nodes)
    n_img, chains = 0, None
    for x, y in batches:
        x = x.to(device)
        if chains is None:
            chains = {k: v[:chain_len] for k, v in elementwise_chains(m, graph, x[:1]).items()}
        ends = {(chains[c][-1] if chains.get(c) else c): c for c in convs}
        kept: Dict[str, torch.Tensor] = {}
        outputs: Dict[str, torch.Tensor] = {}

        def make(name):
            def hook(mod, inp, out):
                out = out.clone()
                if name in ends:
                    out.retain_grad()
                    kept[ends[name]] = out
                    return out.clone()  # later in-place ops (ResNet's ``out += identity``) hit this copy
                return out
            return hook

        def grab(name):
            return lambda mod, inp, out: outputs.__setitem__(name, _nchw(mod, out))

        hs = [mods[n].register_forward_hook(make(n)) for n in ends]
        hs += [mod.register_forward_hook(grab(n)) for n, mod in gmods.items()]
        try:
            with torch.enable_grad():
                xx = x.detach().requires_grad_(True)
                res = m(xx)
                vals = tgt.evaluate(model_logits(res) if tgt.needs_output else None, outputs,
                                    None if y is None else y.to(device))
                vals.sum().backward()
        finally:
            for h in hs:
                h.remove()
        for c in convs:
            a = kept[c]
            if a.grad is None:
                continue
            layer = graph.layer(c)
            d = a.detach() * a.grad
            if replace == "exact":
                d = d - chain_zero(mods, chains.get(c, []), layer.channels, a).view(1, -1, 1, 1) * a.grad
            s = d.reshape(d.shape[0], layer.channels, -1).sum(2).abs().double().sum(0)
            sums[layer.node_offset:layer.node_offset + layer.channels] += s.cpu().numpy()
        n_img += x.shape[0]
    if not n_img:
        raise ViscnnError("no images to score")
    return (sums / n_img).astype(np.float32)


def _nchw(mod: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A layer output as targets read it: channels first (a channels-last Linear's NHWC map permuted)."""
    return nchw(out) if channels_last(mod, out) else out


def _values(m: nn.Module, gmods: Dict[str, nn.Module], tgt: Target, x: torch.Tensor,
            labels: Optional[torch.Tensor]) -> torch.Tensor:
    outputs: Dict[str, torch.Tensor] = {}
    hs = [mod.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, _nchw(mod, o))) for n, mod in gmods.items()]
    try:
        res = m(x)
    finally:
        for h in hs:
            h.remove()
    return tgt.evaluate(model_logits(res) if tgt.needs_output else None, outputs, labels)


def exact_removal(model: nn.Module, graph: Graph, target: Union[str, Target], batches: Batches,
                  at: str = "conv", device=None, classes: Optional[Sequence[str]] = None,
                  signed: bool = False) -> Tuple[np.ndarray, dict]:
    """Node scores [N]: ``mean_images |target(channel zeroed) - target(full)|`` (``signed``: the
    mean of the signed change), for every conv channel (other nodes 0), one forward per channel
    and batch. ``at="conv"`` zeroes the conv output; ``at="post"`` the end of its elementwise chain
    (the map the next layers see). A ``loss`` target without labels uses the *full* model's
    prediction as the label for every removal. Returns ``(scores, {"forwards", "seconds"})``."""
    if at not in ("conv", "post"):
        raise ViscnnError(f"at must be 'conv' or 'post', not {at!r}")
    tgt = _target(target, graph, classes)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    m = working_copy(model).to(device)
    mods = dict(m.named_modules())
    gmods = layer_modules(m, graph)
    convs = _conv_names(graph)
    data = [(x.to(device), None if y is None else y.to(device)) for x, y in batches]
    if not data:
        raise ViscnnError("no images to score")
    chains = elementwise_chains(m, graph, data[0][0][:1]) if at == "post" else {}
    sums = np.zeros(graph.num_nodes)
    n_img, forwards, t0 = 0, 0, time.perf_counter()
    with torch.no_grad():
        for x, y in data:
            logits = model_logits(m(x)) if tgt.needs_output else None
            labels = y if y is not None else (logits.argmax(1) if logits is not None else None)
            base = _values(m, gmods, tgt, x, labels)
            forwards += 1
            for c in convs:
                layer = graph.layer(c)
                where = mods[chains[c][-1]] if chains.get(c) else mods[c]
                for ch in range(layer.channels):
                    def hook(mod, inp, out, ch=ch):
                        out = out.clone()
                        out[:, ch] = 0
                        return out
                    h = where.register_forward_hook(hook)
                    try:
                        d = _values(m, gmods, tgt, x, labels) - base
                    finally:
                        h.remove()
                    forwards += 1
                    sums[layer.node_offset + ch] += float((d if signed else d.abs()).double().sum())
            n_img += x.shape[0]
    return (sums / n_img).astype(np.float32), {"forwards": forwards, "seconds": time.perf_counter() - t0}
