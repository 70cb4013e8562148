"""Shapes without arithmetic, for the padding audit: a meta-tensor trace of the model, a shape
recorder that (unlike ``ShapeProp``) prints no traceback when a size does not fit, and a
pure-Python walk of the spatial sizes through convs, pools, pads and pointwise ops so that the
search for clean input sizes costs microseconds per candidate. The walk is only trusted where it
reproduces a real propagation (:meth:`viscnn.artifacts.padding.PaddingAuditor._check_fast`).
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from viscnn.errors import ViscnnError
from viscnn.graph.fx_tracer import ThreadSafeTracer
from viscnn.receptive_field.ops import _spatial


class TooSmall(Exception):
    """An op of the walk gets no output position."""


def meta_trace(model: nn.Module) -> fx.GraphModule:
    """An eval-mode fx trace of ``model`` whose parameters and buffers are meta tensors (no weight
    copy, no arithmetic); the user's model is not touched."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False) for p in model.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
    m = copy.deepcopy(model, memo).eval()
    try:
        g = ThreadSafeTracer().trace(m)
    except Exception as e:
        raise ViscnnError(f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}") from None
    return fx.GraphModule(m, g, type(model).__name__)


class ShapeRecorder(fx.Interpreter):
    """Shape propagation that records ``tensor_meta`` like ShapeProp, without printing tracebacks."""

    current: Optional[fx.Node] = None

    def run_node(self, n: fx.Node):
        self.current = n
        n.meta.pop("tensor_meta", None)
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        elif isinstance(result, (tuple, list)) and all(isinstance(r, torch.Tensor) for r in result):
            n.meta["tensor_meta"] = type(result)(_extract_tensor_metadata(r) for r in result)
        return result


def _is_adaptive(n: fx.Node, modules) -> bool:
    if n.op == "call_module":
        return isinstance(modules.get(n.target), (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
    return n.op == "call_function" and n.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d)


def walk_sizes(gm: fx.GraphModule, modules, ops: Dict[fx.Node, object], pad_of: Callable, size: Tuple[int, int]
               ) -> Optional[Dict[fx.Node, Tuple[int, int]]]:
    """Spatial size of every 4D node at input ``size``, from the last propagation's structure:
    ``ops`` (conv/pool descriptors with k, s, p, d, ceil_mode, op_input), ``pad_of(node)`` (an explicit
    pad's (left, right, top, bottom), source, mode, or None), adaptive pools keep their output size,
    any other op takes the size of its input that had the same size. None when a node fits none of
    these; raises :class:`TooSmall` when a window op gets no output position."""
    from viscnn.artifacts.padding import output_length

    out: Dict[fx.Node, Tuple[int, int]] = {}
    for n in gm.graph.nodes:
        ref = _spatial(n)
        if ref is None:
            continue
        if n.op == "placeholder":
            out[n] = tuple(size)
            continue
        op = ops.get(n)
        pad = pad_of(n) if op is None else None
        if op is not None:
            if op.op_input not in out:
                return None
            hw = out[op.op_input]
            o = tuple(output_length(hw[i], op.k[i], op.s[i], op.p[i], op.p[i], op.d[i], op.ceil_mode) for i in range(2))
            if min(o) < 1:
                raise TooSmall
            out[n] = o
        elif pad is not None:
            (l, r, t, b), src, _ = pad
            if src not in out:
                return None
            out[n] = (out[src][0] + t + b, out[src][1] + l + r)
        elif _is_adaptive(n, modules):
            out[n] = ref
        else:
            same = [a for a in n.all_input_nodes if a in out and _spatial(a) == ref]
            if not same:
                return None
            out[n] = out[same[0]]
    return out
