"""One forward+backward of a working copy that keeps, for every graph layer, the layer's input
``a``, output ``y`` and the target's gradient ``g = ∂target/∂y``, all NCHW (a channels-last
Linear's NHWC tensors are kept as NCHW views).

Safe with in-place ops: every kept tensor's version counter is checked after the forward; if a
later in-place op (``F.relu_(conv(x))``, ``out += identity``) touched one, the pass is redone
with each layer output cloned before the rest of the network sees it. A target inside the
network stops the forward pass right after its last layer (a private exception from a hook).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.targets import Target


class _Stop(Exception):
    """Raised from a forward hook once the target's layers have run."""


@dataclass
class Captured:
    x: torch.Tensor  # the model input (detached)
    x_grad: Optional[torch.Tensor]
    values: torch.Tensor  # per-image target values [B] (detached)
    logits: Optional[torch.Tensor]
    inputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # layer name -> a
    outputs: Dict[str, torch.Tensor] = field(default_factory=dict)  # layer name -> y
    grads: Dict[str, torch.Tensor] = field(default_factory=dict)  # layer name -> g
    # conv layer name -> the map at the end of its elementwise chain (BN, ReLU...) and its gradient
    post: Dict[str, torch.Tensor] = field(default_factory=dict)
    post_grads: Dict[str, torch.Tensor] = field(default_factory=dict)


def model_logits(out) -> torch.Tensor:
    """The logits tensor of a model output (a tensor, a tuple's first item, or ``.logits``)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ViscnnError(f"cannot find the logits in a model output of type {type(out).__name__}")


def channels_last(mod: nn.Module, out: torch.Tensor) -> bool:
    """A Linear over the channels of an NHWC map: a 1x1 conv layer of the graph."""
    return isinstance(mod, nn.Linear) and out.dim() == 4


def nchw(t: torch.Tensor) -> torch.Tensor:
    """NHWC -> NCHW view: every kept a/y/g is channels-first, whatever the module's layout, so
    targets (``unit:``/``neuron:``) and scores index layers the same way."""
    return t.permute(0, 3, 1, 2)


def layer_modules(model: nn.Module, graph: Graph) -> Dict[str, nn.Module]:
    mods = dict(model.named_modules())
    out = {}
    for l in graph.layers:
        if l.kind == "input":
            continue
        if l.name not in mods:
            raise ViscnnError(f"graph layer {l.name} is not a module of this model (graph built from another model?)")
        out[l.name] = mods[l.name]
    return out


def capture(model: nn.Module, modules: Dict[str, nn.Module], graph: Graph, target: Target, x: torch.Tensor,
            labels: Optional[torch.Tensor] = None, clone: bool = False, need_grads: bool = True,
            post_modules: Optional[Dict[str, nn.Module]] = None) -> Optional[Captured]:
    """Run ``model`` (a working copy) on ``x`` and backprop ``target.sum()``.

    ``post_modules``: conv layer name -> the last module of its elementwise chain, whose output
    and gradient are kept too (for replacement-Taylor node scores).

    Returns None when an in-place op modified a kept tensor (call again with ``clone=True``).
    """
    caps = capture_targets(model, modules, graph, [target], x, labels, clone, need_grads, post_modules)
    return None if caps is None else caps[0]


def capture_targets(model: nn.Module, modules: Dict[str, nn.Module], graph: Graph, targets: Sequence[Target],
                    x: torch.Tensor, labels: Optional[torch.Tensor] = None, clone: bool = False,
                    need_grads: bool = True, post_modules: Optional[Dict[str, nn.Module]] = None
                    ) -> Optional[List[Captured]]:
    """:func:`capture` for several targets from one forward pass: one backward per target (the graph
    retained until the last), each with its own gradients; the kept a/y/post maps are shared. The
    scoring pass's loss and own-class logit cost one forward this way instead of two (the same values:
    the same forward, and each backward is the one a separate capture would run)."""
    inputs: Dict[str, torch.Tensor] = {}
    outputs: Dict[str, torch.Tensor] = {}
    grads: Dict[str, torch.Tensor] = {}
    post_grads: Dict[str, torch.Tensor] = {}
    sink = {"grads": grads, "post": post_grads}  # the dicts this backward's tensor hooks write into
    versions = []
    needed = set().union(*(t.layers for t in targets))
    stop = all(t.stop_layer(graph) is not None for t in targets)

    def make_hook(name):
        def hook(mod, inp, out):
            a = inp[0]
            if clone:
                a = a.clone()
            cl = channels_last(mod, out)
            inputs[name], outputs[name] = (nchw(a), nchw(out)) if cl else (a, out)
            versions.append((a, a._version))
            versions.append((out, out._version))
            if need_grads and out.requires_grad:
                out.register_hook(lambda gr: sink["grads"].__setitem__(name, nchw(gr) if cl else gr))
            if stop and needed.issubset(outputs):
                raise _Stop
            return out.clone() if clone else None
        return hook

    post: Dict[str, torch.Tensor] = {}

    def make_post_hook(name):
        def hook(mod, inp, out):
            post[name] = out
            versions.append((out, out._version))
            if need_grads and out.requires_grad:
                out.register_hook(lambda gr: sink["post"].__setitem__(name, gr))
            return out.clone() if clone else None
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    handles += [m.register_forward_hook(make_post_hook(n)) for n, m in (post_modules or {}).items()]
    x_leaf = x.detach().requires_grad_(need_grads)
    logits = None
    results = []
    try:
        with torch.enable_grad():
            try:
                logits = model_logits(model(x_leaf.clone()))
            except _Stop:
                pass
            if any(t._version != v for t, v in versions):
                return None
            for i, target in enumerate(targets):
                values = target.evaluate(logits, outputs, labels)
                x_grad = None
                if need_grads:
                    if not values.requires_grad:
                        raise ViscnnError(f"target {target} does not depend on the input")
                    sink["grads"], sink["post"] = grads, post_grads = {}, {}
                    x_leaf.grad = None
                    torch.autograd.backward(values.sum(), inputs=[x_leaf], retain_graph=i + 1 < len(targets))
                    x_grad = x_leaf.grad
                results.append((values.detach(), x_grad, grads, post_grads))
    finally:
        for h in handles:
            h.remove()
    ins, outs = {k: v.detach() for k, v in inputs.items()}, {k: v.detach() for k, v in outputs.items()}
    posts = {k: v.detach() for k, v in post.items()}
    return [Captured(x_leaf.detach(), xg, vals, None if logits is None else logits.detach(), ins, outs, gr, posts, pg)
            for vals, xg, gr, pg in results]
