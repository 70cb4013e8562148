"""Reduce feature maps *during* the forward pass, at exact points of the traced dataflow.

Module forward hooks cannot name "the ReLU after conv2": torchvision's Bottleneck calls one ReLU
module three times. So the model is traced (torch.fx) from a working copy (the user's model is
never touched) and a tap module is inserted after each chosen fx node; it adds a reduction of the
tensor flowing past to an accumulator and passes the tensor on unchanged. Only the reductions are
kept, so memory is one forward pass plus the accumulators, whatever the number of images.
Each tap runs right after its node and before any consumer, so later in-place ops cannot alter
what it sees.
"""

from __future__ import annotations

import copy
import operator
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph.fx_tracer import ThreadSafeTracer
from viscnn.model_copy import working_copy

STAGES = ("conv", "act", "pool")

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus)
_ACT_FUNCS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
              F.hardsigmoid, F.hardtanh, torch.sigmoid, torch.tanh, F.softplus, torch.nn.functional.prelu}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_min"}
_CHAN_MODULES = (nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
_CHAN_FUNCS = {F.batch_norm, F.dropout, F.dropout2d}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add, operator.mul, torch.mul}
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
_POOL_FUNCS = {F.max_pool2d, F.avg_pool2d, F.lp_pool2d}


class _Tap(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], None]):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        self.fn(x)
        return x


def light_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of the module tree whose parameters and buffers *are* the user's tensors
    (no weight copy). Safe because the copy only runs eval-mode forwards under ``no_grad`` (nothing
    writes a parameter or a batch-norm statistic), and it is never moved to another device
    (``Module.to`` swaps ``.data`` in place; see :func:`traced_copy`). In-place flags stay as they
    are: a tap reduces its tensor as soon as it is produced, before any consumer (in-place or not)
    runs, and in-place ReLUs keep the forward as fast as the user's own."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    m = copy.deepcopy(model, memo)
    m.eval()
    return m


def _on(model: nn.Module, device: str) -> bool:
    t = next(iter(model.parameters()), None)
    return t is None or t.device == torch.device(device)


def traced_copy(model: nn.Module, device: str = "cpu") -> fx.GraphModule:
    """An fx GraphModule of an eval-mode copy of ``model`` on ``device``:
    weights shared when the model is already there (a ResNet-50 deep copy costs as much as a
    quarter of the forward being analysed), a full :func:`working_copy` otherwise."""
    m = light_copy(model) if _on(model, device) else working_copy(model).to(device)
    try:
        g = ThreadSafeTracer().trace(m)
    except Exception as e:
        raise ViscnnError(f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}") from None
    return fx.GraphModule(m, g, type(model).__name__)


def conv_nodes(gm: fx.GraphModule) -> Dict[str, fx.Node]:
    """Module path -> fx node of every Conv2d call (the graph's conv layers)."""
    mods = dict(gm.named_modules())
    return {n.target: n for n in gm.graph.nodes if n.op == "call_module" and isinstance(mods[n.target], nn.Conv2d)}


def _kind(gm: fx.GraphModule, n: fx.Node, mods) -> str:
    if n.op == "call_module":
        m = mods[n.target]
        return ("act" if isinstance(m, _ACT_MODULES) else "chan" if isinstance(m, _CHAN_MODULES)
                else "pool" if isinstance(m, _POOL_MODULES) else "")
    if n.op == "call_function":
        return ("act" if n.target in _ACT_FUNCS else "chan" if n.target in _CHAN_FUNCS
                else "add" if n.target in _ADD_FUNCS else "pool" if n.target in _POOL_FUNCS else "")
    if n.op == "call_method":
        return ("act" if n.target in _ACT_METHODS else "add" if n.target in ("add", "add_", "mul", "mul_") else "")
    return ""


def stage_node(gm: fx.GraphModule, conv: fx.Node, stage: str) -> fx.Node:
    """The fx node whose output is ``conv``'s map at ``stage``.

    conv: the conv's own output. act: follow the conv's single-consumer chain of per-channel ops
    (batch norm, dropout, a residual add/multiply) to the first activation; if the chain ends
    without one (a linear bottleneck), its last node. pool: from there, on through directly
    following max/avg/LP pooling (the act node when none follows)."""
    if stage not in STAGES:
        raise ViscnnError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    if stage == "conv":
        return conv
    mods = dict(gm.named_modules())
    cur = conv
    while True:
        users = list(cur.users)
        if len(users) != 1:
            break
        k = _kind(gm, users[0], mods)
        if k not in ("chan", "add", "act"):
            break
        cur = users[0]
        if k == "act":
            break
    if stage == "pool":
        while len(cur.users) == 1 and _kind(gm, next(iter(cur.users)), mods) == "pool":
            cur = next(iter(cur.users))
    return cur


def insert_taps(gm: fx.GraphModule, taps: Dict[fx.Node, Callable[[torch.Tensor], None]]) -> None:
    """Insert one tap after each node (its callable sees the node's output tensor)."""
    for i, (node, fn) in enumerate(taps.items()):
        name = f"_viscnn_tap_{i}"
        gm.add_submodule(name, _Tap(fn))
        with gm.graph.inserting_after(node):
            t = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(t, delete_user_cb=lambda u: u is not t)
    gm.recompile()


def run_batches(gm: fx.GraphModule, batches: Iterable, device: str = "cpu") -> int:
    """Forward every batch (tensors or (x, y) pairs) without grads; returns the image count."""
    n = 0
    with torch.no_grad():
        for b in batches:
            x = b[0] if isinstance(b, (tuple, list)) else b
            try:
                gm(x.to(device))
            except ViscnnError:
                raise
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0]
                raise ViscnnError(f"running the model on a {'x'.join(map(str, x.shape))} input failed: "
                                  f"{type(e).__name__}: {first}") from None
            n += x.shape[0]
    if n == 0:
        raise ViscnnError("no input images: the baseline or image set is empty")
    return n


def resolve_layers(gm: fx.GraphModule, layers: Optional[Sequence[str]]) -> List[Tuple[str, fx.Node]]:
    convs = conv_nodes(gm)
    if layers is None:
        return list(convs.items())
    out = []
    for name in layers:
        if name not in convs:
            shown = ", ".join(list(convs)[:30]) + (" ..." if len(convs) > 30 else "")
            raise ViscnnError(f"no conv layer {name!r} in {gm.__class__.__name__}; conv layers: {shown}")
        out.append((name, convs[name]))
    return out
