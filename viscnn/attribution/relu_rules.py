"""ReLU backward rules applied to the torch.fx graph of a working copy, not to module hooks.

Hook-based tools only see ``nn.ReLU`` modules, so on nets whose ReLUs are ``F.relu`` calls
(GoogLeNet, Inception) their guided backprop and DeconvNet silently return the plain gradient.
Here every ReLU *node* of the traced graph is replaced by one function with the method's
backward rule, whatever its spelling:

  ``nn.ReLU`` (in-place or not, reused modules: one node per call), ``F.relu``, ``F.relu_``,
  ``torch.relu``, ``torch.relu_``, ``F.relu(inplace=True)``, ``Tensor.relu()``/``.relu_()``,
  and ``clamp``/``clamp_min``/``clip`` with ``min=0`` and no max (a ReLU too).

Rules (the forward is always ``max(x, 0)``):

  gradient    the ordinary derivative ``g * (x > 0)``
  deconvnet   Zeiler & Fergus: ``relu(g)``, the forward mask is ignored
  guided      Springenberg et al.: ``g * (x > 0) * (g > 0)``

In-place ReLUs stay in place (the rule's in-place variant: no new tensor, the user's memory
profile) and later graph uses of the tensor they overwrote read the new node; a value kept for
the method (a Grad-CAM layer, a target map) that an in-place op would overwrite is cloned first
(:mod:`viscnn.attribution.traced`). An in-place ReLU on a view runs out of place, and is refused
when the viewed tensor is read again later (its effect there cannot be kept).

Max-pooling needs no rule: autograd of ``max_pool2d`` sends the signal back to the arg-max
position of each window, which is exactly DeconvNet's "switches"; convolutions are transposed by autograd with the same filters (the DeconvNet's
"transposed versions"), and BatchNorm in eval mode is the fixed affine map it is forward.

Other activations (SiLU, GELU, Hardswish, LeakyReLU, ELU, ReLU6, Sigmoid, Tanh, ...) have no
agreed guided/DeconvNet rule: for those methods they are a one-line error naming the op and
where it is, when they feed a conv or a Linear. One after the last weighted layer (an output
sigmoid) only passes the plain gradient. Activations written as arbitrary arithmetic
(``torch.where(x > 0, x, 0)``, ``torch.maximum(x, 0)``) are not recognised.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from viscnn.errors import UnsupportedOperationError, ViscnnError

RULES = ("gradient", "deconvnet", "guided")


class _DeconvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp_min(0)


class _DeconvReLU_(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.mark_dirty(x)
        return x.clamp_min_(0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp_min(0)


def _guided_backward(g, out):
    return torch.ops.aten.threshold_backward(g.clamp_min(0), out, 0)  # g+ where out > 0: two passes, like relu's


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return _guided_backward(g, out)


class _GuidedReLU_(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.mark_dirty(x)
        x.clamp_min_(0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return _guided_backward(g, out)


def gradient_relu(x: torch.Tensor) -> torch.Tensor:
    """An ordinary out-of-place ReLU (the ``gradient`` rule)."""
    return torch.relu(x)


def deconvnet_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU whose backward is ``relu(grad)`` (Zeiler & Fergus)."""
    return _DeconvReLU.apply(x)


def guided_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU whose backward is ``grad * (x > 0) * (grad > 0)`` (guided backprop)."""
    return _GuidedReLU.apply(x)


def gradient_relu_(x: torch.Tensor) -> torch.Tensor:
    """In-place :func:`gradient_relu` (where the user's model is in place: no new tensor)."""
    return torch.relu_(x)


def deconvnet_relu_(x: torch.Tensor) -> torch.Tensor:
    """In-place :func:`deconvnet_relu`."""
    return _DeconvReLU_.apply(x)


def guided_relu_(x: torch.Tensor) -> torch.Tensor:
    """In-place :func:`guided_relu`."""
    return _GuidedReLU_.apply(x)


RULE_FUNCTIONS = {"gradient": gradient_relu, "deconvnet": deconvnet_relu, "guided": guided_relu}
INPLACE_RULE_FUNCTIONS = {"gradient": gradient_relu_, "deconvnet": deconvnet_relu_, "guided": guided_relu_}

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
_INPLACE_FUNCS = {torch.relu_}
_CLAMP_FUNCS = {torch.clamp, torch.clip, torch.clamp_min}
_CLAMP_METHODS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}
_OTHER_MODULES = (nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.PReLU,
                  nn.RReLU, nn.ReLU6, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Softsign,
                  nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.GLU, nn.LogSigmoid)
_OTHER_FUNCS = {F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.selu, F.celu, F.prelu, F.rrelu,
                F.relu6, F.hardtanh, F.mish, F.softplus, F.softsign, F.tanhshrink, F.hardshrink, F.softshrink,
                F.threshold, F.glu, F.logsigmoid, torch.sigmoid, torch.tanh, torch.selu, torch.celu, torch.prelu,
                torch.rrelu, torch.threshold, F.sigmoid, F.tanh, torch.special.expit}
_OTHER_METHODS = {"sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh", "hardtanh_"}
_WEIGHTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                     nn.Linear, nn.Bilinear)
_WEIGHTED_FUNCS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear}


def _arg(node: fx.Node, pos: int, name: str, default=None):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _is_clamp_relu(node: fx.Node) -> Optional[bool]:
    """True/False for a clamp node that is/is not ``max(x, 0)``; None for other nodes."""
    if not ((node.op == "call_function" and node.target in _CLAMP_FUNCS) or
            (node.op == "call_method" and node.target in _CLAMP_METHODS)):
        return None
    lo = _arg(node, 1, "min")
    hi = None if str(node.target).startswith("clamp_min") or node.target is torch.clamp_min else _arg(node, 2, "max")
    return isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo == 0 and hi is None


def classify(node: fx.Node, modules: Dict[str, nn.Module], inplace_modules: Dict[str, bool]) -> Tuple[str, bool]:
    """``("relu", in_place)``, ``("other", False)`` for a non-ReLU activation, or ``("", False)``."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.ReLU):
            return "relu", bool(inplace_modules.get(node.target, m.inplace))
        if isinstance(m, _OTHER_MODULES):
            return "other", False
        if any(isinstance(c, (nn.ReLU,) + _OTHER_MODULES) for c in m.modules()):
            return "other", False  # a torch.nn leaf (e.g. TransformerEncoderLayer) fx cannot see inside
        return "", False
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return "relu", node.target in _INPLACE_FUNCS or bool(_arg(node, 1, "inplace", False))
        clamp = _is_clamp_relu(node)
        if clamp is not None:
            return ("relu", False) if clamp else ("other", False)
        if node.target in _OTHER_FUNCS:
            return "other", False
        return "", False
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return "relu", node.target == "relu_"
        clamp = _is_clamp_relu(node)
        if clamp is not None:
            return ("relu", node.target.endswith("_")) if clamp else ("other", False)
        if node.target in _OTHER_METHODS:
            return "other", False
    return "", False


def describe(node: fx.Node, modules: Dict[str, nn.Module]) -> str:
    """``module features.1 (SiLU)`` or ``F.silu (fx node 'silu' inside blocks.0, File ..., line N)``."""
    from viscnn.graph.build import _user_line

    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} module {node.target}"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    kind = f"Tensor.{name}" if node.op == "call_method" else name
    stack = node.meta.get("nn_module_stack") or {}
    inside = list(stack.values())[-1][0] if stack else ""
    return f"{kind} (fx node {node.name!r}" + (f" inside {inside}" if inside else "") + ")" + _user_line(node)


def _feeds_weighted_layer(gm: fx.GraphModule, modules: Dict[str, nn.Module]) -> Dict[fx.Node, bool]:
    feeds: Dict[fx.Node, bool] = {}
    for node in reversed(list(gm.graph.nodes)):
        out = False
        for u in node.users:
            if (u.op == "call_module" and isinstance(modules.get(u.target), _WEIGHTED_MODULES)) or \
                    (u.op == "call_function" and u.target in _WEIGHTED_FUNCS) or feeds.get(u, False):
                out = True
                break
        feeds[node] = out
    return feeds


def check_rule(gm: fx.GraphModule, rule: str) -> None:
    """Raise a one-line error if ``rule`` cannot be applied everywhere in ``gm``."""
    if rule not in RULES:
        raise ViscnnError(f"unknown ReLU rule {rule!r}; rules: {', '.join(RULES)}")
    if rule == "gradient":
        return
    modules = dict(gm.named_modules())
    feeds = _feeds_weighted_layer(gm, modules)
    for node in gm.graph.nodes:
        kind, _ = classify(node, modules, {})
        if kind == "other" and feeds[node]:
            what = "guided backprop" if rule == "guided" else "DeconvNet"
            raise UnsupportedOperationError(
                f"{what} has a rule for ReLU only; this model has {describe(node, modules)} before a conv/linear layer")


_VIEWS = {"view", "reshape", "flatten", "narrow", "select", "squeeze", "unsqueeze", "permute", "transpose", "t",
          "expand", "view_as", "unflatten", "getitem", "split", "chunk", "unbind", "as_strided", "diagonal"}


def _check_not_a_read_view(node: fx.Node, src: fx.Node, order, modules) -> bool:
    """Whether ``src`` is a view. An in-place ReLU on a view also changes the viewed tensor; made
    out of place, that change would be lost: refuse it when the viewed tensor is read again later."""
    chain, base = [], src
    while base.op in ("call_method", "call_function") and base.args and isinstance(base.args[0], fx.Node) and (
            (base.target if base.op == "call_method" else getattr(base.target, "__name__", "")) in _VIEWS):
        base = base.args[0]
        chain.append(base)
    for b in chain:
        if any(order[u] > order[node] for u in b.users):
            raise UnsupportedOperationError(f"in-place ReLU {describe(node, modules)} overwrites a view of a tensor "
                                            "that is read again later; viscnn cannot rewrite it out of place")
    return bool(chain)


def apply_rule(gm: fx.GraphModule, rule: str, inplace_modules: Optional[Dict[str, bool]] = None) -> fx.GraphModule:
    """A new GraphModule (sharing ``gm``'s parameters) with every ReLU node computed by ``rule``'s
    function. ``inplace_modules``: the user's ``inplace`` flags by module path (working copies
    turn them off; the graph keeps their in-place meaning)."""
    check_rule(gm, rule)
    fn = RULE_FUNCTIONS[rule]
    modules = dict(gm.named_modules())
    inplace_modules = inplace_modules or {}
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    alias: Dict[fx.Node, fx.Node] = {}  # old node -> the node now holding its (in-place updated) value

    def look(n):
        return env[alias.get(n, n)] if isinstance(n, fx.Node) else n

    order = {n: i for i, n in enumerate(gm.graph.nodes)}

    for node in gm.graph.nodes:
        kind, inplace = classify(node, modules, inplace_modules)
        if kind == "relu":
            src = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
            f = fn
            if inplace and isinstance(src, fx.Node):  # every name of the overwritten tensor now reads ``node``
                if not _check_not_a_read_view(node, src, order, modules) and src.op != "placeholder":
                    f = INPLACE_RULE_FUNCTIONS[rule]  # in place where the user's model is (no new tensor)
            new = graph.create_node("call_function", f, (fx.map_arg(src, look),), name=node.name)  # same name: taps
            new.meta = dict(node.meta)
            env[node] = new
            if inplace and isinstance(src, fx.Node):
                holder = alias.get(src, src)
                for k in [k for k, v in alias.items() if v is holder]:
                    alias[k] = node
                alias[holder] = alias[src] = node
            continue
        new = graph.node_copy(node, lambda n: look(n))
        env[node] = new
    out = fx.GraphModule(gm, graph, gm.__class__.__name__)
    out.graph.lint()
    return out


def count_relus(gm: fx.GraphModule) -> int:
    """How many ReLU nodes ``gm`` has (each call of a reused module counts)."""
    modules = dict(gm.named_modules())
    return sum(classify(n, modules, {})[0] == "relu" for n in gm.graph.nodes)

