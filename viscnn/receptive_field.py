"""Exact receptive fields: which input pixels can influence a unit at (layer, y, x).

The :class:`~viscnn.graph.Graph` records convs only, but pooling, padding and adaptive pooling
between them change the receptive field too, so this module traces the model itself with torch.fx
and walks its dataflow *backwards* from the target layer to the image, mapping per-dimension
intervals through every spatial op (Conv2d, max/avg/LP pool, adaptive pool, F.pad and pad modules,
including reflect/replicate/circular padding) along *every* path. Branches (residual adds,
Inception concatenations) are merged by union, and each interval is clipped to the real pixels of
its tensor at every stage, so the box is exact even where a stride leaves the last input rows unread
or a deep unit's window hangs over an earlier layer's padding.

All these ops are separable (an output row's input rows do not depend on the column), so a layer's
boxes are two tables, ``rows[y] = (y0, y1)`` and ``cols[x] = (x0, x1)``, half-open; the walk runs on
whole tables at once with numpy. Pointwise ops (activations, batch norm, residual adds) keep the
interval; an operand broadcast along space (a squeeze-excitation gate of size 1x1) and ops that mix
all positions (global means, instance/group/layer norm, softmax over space) widen it to the whole
map. An op that changes the spatial size in a way this module does not know raises.

A max-pool's gradient reaches only the arg-max of each window, so for one input the gradient
support can be smaller than the box; the box is the union over all inputs (what *can* influence
the unit), which is what the tests check against gradient supports.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from viscnn.errors import UnsupportedOperationError, ViscnnError

_EMPTY_LO = np.iinfo(np.int64).max // 4
_EMPTY_HI = -_EMPTY_LO

Box = Tuple[int, int, int, int]


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)


@dataclass
class RFTable:
    """Per-dimension half-open input intervals of every output row and column of one layer."""

    rows: np.ndarray  # int64 [H_out, 2]
    cols: np.ndarray  # int64 [W_out, 2]

    def box(self, y: int, x: int) -> Box:
        if not (0 <= y < len(self.rows) and 0 <= x < len(self.cols)):
            raise ViscnnError(f"position ({y}, {x}) is outside the layer's {len(self.rows)}x{len(self.cols)} map")
        (y0, y1), (x0, x1) = self.rows[y], self.cols[x]
        return int(y0), int(y1), int(x0), int(x1)


# -- interval maps of one spatial op, one dimension -------------------------------------------------
def _window(lo, hi, k, s, p, d, size_in, mode="zeros", clip=True):
    """Output interval [lo, hi) of a sliding window (kernel k, stride s, left pad p, dilation d)
    -> input interval, in real input coordinates."""
    empty = lo >= hi
    plo = lo * s - p  # first input index touched, may be in the padding
    phi = (hi - 1) * s - p + d * (k - 1) + 1
    return _pad_map(np.where(empty, _EMPTY_LO, plo), np.where(empty, _EMPTY_HI, phi), size_in, mode, clip)


def _pad_map(lo, hi, size_in, mode, clip=True):
    """Interval in padded coordinates (0 = first real pixel) -> real pixels it reads."""
    if not clip:
        return lo, hi
    if mode in ("zeros", "constant"):
        nlo, nhi = np.maximum(lo, 0), np.minimum(hi, size_in)
    else:
        nlo, nhi = np.empty_like(lo), np.empty_like(hi)
        for n, (a, b) in enumerate(zip(lo, hi)):
            if a >= b:
                nlo[n], nhi[n] = _EMPTY_LO, _EMPTY_HI
                continue
            idx = np.arange(a, b)
            if mode == "reflect":
                period = 2 * (size_in - 1) if size_in > 1 else 1
                idx = np.abs(np.mod(idx, period))
                idx = np.where(idx >= size_in, period - idx, idx)
            elif mode == "replicate":
                idx = np.clip(idx, 0, size_in - 1)
            elif mode == "circular":
                idx = np.mod(idx, size_in)
            else:
                raise UnsupportedOperationError(f"padding mode {mode!r} is not supported for receptive fields")
            nlo[n], nhi[n] = idx.min(), idx.max() + 1
    empty = nlo >= nhi
    return np.where(empty, _EMPTY_LO, nlo), np.where(empty, _EMPTY_HI, nhi)


def _adaptive(lo, hi, size_in, size_out):
    empty = lo >= hi
    start = (lo * size_in) // size_out
    end = -((-hi * size_in) // size_out)  # ceil(hi * size_in / size_out)
    return np.where(empty, _EMPTY_LO, start), np.where(empty, _EMPTY_HI, end)


def _spatial(node: fx.Node) -> Optional[Tuple[int, int]]:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    if tm is None or not hasattr(tm, "shape") or len(tm.shape) != 4:
        return None
    return int(tm.shape[2]), int(tm.shape[3])


def _arg(node: fx.Node, pos: int, name: str, default):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


_GLOBAL_MODULES = (nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.Softmax2d)
_POOL_FUNCS = {F.max_pool2d: "max", F.avg_pool2d: "avg", F.lp_pool2d: "lp"}
try:  # the *_with_indices variant fx may record
    _POOL_FUNCS[torch.nn.functional.max_pool2d_with_indices] = "max"
except AttributeError:  # pragma: no cover
    pass


class ReceptiveFields:
    """Traces ``model`` once (eval copy, shapes on a zero image of ``input_size``) and answers
    receptive-field queries for any layer (a module path that is called exactly once, or "input")."""

    def __init__(self, model: Union[nn.Module, fx.GraphModule], input_size: Sequence[int],
                 in_channels: Optional[int] = None):
        from viscnn.graph.build import infer_input_channels, trace

        if isinstance(model, fx.GraphModule):
            gm = model
        else:
            gm = trace(model)
        h, w = _pair(tuple(input_size)) if len(input_size) == 2 else _pair(input_size[0])
        self.input_size = (h, w)
        c = in_channels or infer_input_channels(gm)
        with torch.no_grad():
            try:
                ShapeProp(gm).propagate(torch.zeros(1, c, h, w))
            except Exception as e:
                raise ViscnnError(f"running the model on a 1x{c}x{h}x{w} input failed: {type(e).__name__}: {e}") from None
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes = list(gm.graph.nodes)
        self._cache: Dict[Tuple[str, bool], RFTable] = {}

    # -- public ------------------------------------------------------------------------------------
    def layer_node(self, layer: str) -> fx.Node:
        if layer == "input":
            return next(n for n in self.nodes if n.op == "placeholder")
        hits = [n for n in self.nodes if n.op == "call_module" and n.target == layer]
        if not hits:
            convs = [n.target for n in self.nodes if n.op == "call_module" and isinstance(self.modules[n.target], nn.Conv2d)]
            raise ViscnnError(f"no module {layer!r} in the traced model; conv layers: {', '.join(convs[:40])}")
        if len(hits) > 1:
            raise ViscnnError(f"module {layer!r} is called {len(hits)} times; its receptive field is ambiguous")
        if _spatial(hits[0]) is None:
            raise ViscnnError(f"layer {layer!r} does not output a 4D [N, C, H, W] map")
        return hits[0]

    def table(self, layer: str, clip: bool = True) -> RFTable:
        key = (layer, clip)
        if key not in self._cache:
            self._cache[key] = self._walk(self.layer_node(layer), clip)
        return self._cache[key]

    def box(self, layer: str, y: int, x: int) -> Box:
        return self.table(layer).box(y, x)

    def params(self, layer: str) -> Optional[dict]:
        """Affine form of the *unclipped* field, ``[start + stride*y, start + stride*y + size)`` per
        dimension, or None when it is not uniform (e.g. adaptive pooling of a non-divisible size).
        Clip it to the image for a display box; :meth:`box` is the exact, clipped one."""
        t = self.table(layer, clip=False)
        out = {}
        for name, arr in (("y", t.rows), ("x", t.cols)):
            size = arr[:, 1] - arr[:, 0]
            if (size <= 0).any() or (size != size[0]).any():
                return None
            steps = np.diff(arr[:, 0])
            if len(steps) and (steps != steps[0]).any():
                return None
            out[name] = (int(arr[0, 0]), int(steps[0]) if len(steps) else 1, int(size[0]))
        return {"start": (out["y"][0], out["x"][0]), "stride": (out["y"][1], out["x"][1]),
                "size": (out["y"][2], out["x"][2])}

    # -- the backward walk ------------------------------------------------------------------------
    def _walk(self, target: fx.Node, clip: bool) -> RFTable:
        h, w = _spatial(target)
        state: Dict[fx.Node, list] = {
            target: [np.arange(h, dtype=np.int64), np.arange(h, dtype=np.int64) + 1,
                     np.arange(w, dtype=np.int64), np.arange(w, dtype=np.int64) + 1]}
        order = {n: i for i, n in enumerate(self.nodes)}
        for node in reversed(self.nodes[: order[target] + 1]):
            if node not in state:
                continue
            if node.op == "placeholder":
                ylo, yhi, xlo, xhi = (np.broadcast_to(a, (n,)) for a, n in zip(state[node], (h, h, w, w)))
                return RFTable(np.stack([ylo, yhi], 1), np.stack([xlo, xhi], 1))
            for src, iv in self._map(node, state[node], clip):
                if src in state:
                    old = state[src]
                    state[src] = [np.minimum(old[0], iv[0]), np.maximum(old[1], iv[1]),
                                  np.minimum(old[2], iv[2]), np.maximum(old[3], iv[3])]
                else:
                    state[src] = list(iv)
        raise ViscnnError(f"layer {target.target!r} does not depend on the model input")

    def _map(self, node: fx.Node, iv, clip: bool):
        """Yield (input node, its intervals) for every 4D tensor input of ``node``."""
        ylo, yhi, xlo, xhi = iv
        out_hw = _spatial(node)
        srcs = [a for a in node.all_input_nodes if _spatial(a) is not None]
        if node.op == "call_module":
            m = self.modules[node.target]
            src = node.args[0]
            if isinstance(m, nn.Conv2d):
                hw = _spatial(src)
                k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
                if isinstance(m.padding, str):
                    p = (0, 0) if m.padding == "valid" else tuple((d[i] * (k[i] - 1)) // 2 for i in range(2))
                else:
                    p = _pair(m.padding)
                mode = m.padding_mode
                yield src, (*_window(ylo, yhi, k[0], s[0], p[0], d[0], hw[0], mode, clip),
                            *_window(xlo, xhi, k[1], s[1], p[1], d[1], hw[1], mode, clip))
                return
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)):
                k = _pair(m.kernel_size)
                s = _pair(m.stride if m.stride is not None else m.kernel_size)
                p = _pair(getattr(m, "padding", 0))
                d = _pair(getattr(m, "dilation", 1))
                yield src, self._pool(src, iv, k, s, p, d, clip)
                return
            if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                hw = _spatial(src)
                yield src, (*_adaptive(ylo, yhi, hw[0], out_hw[0]), *_adaptive(xlo, xhi, hw[1], out_hw[1]))
                return
            if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
                mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}.get(type(m), "zeros")
                yield src, self._pad(src, iv, _pad4(m.padding), mode, clip)
                return
            if isinstance(m, _GLOBAL_MODULES):
                yield src, self._full(src)
                return
            if isinstance(m, (nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Unfold, nn.Fold)):
                raise UnsupportedOperationError(f"receptive fields through {type(m).__name__} ({node.target}) are not supported")
        elif node.op == "call_function":
            fn = node.target
            if fn is F.conv2d:
                src, wnode = node.args[0], _arg(node, 1, "weight", None)
                k = tuple(int(v) for v in wnode.meta["tensor_meta"].shape[2:])
                s, p, d = (_pair(_arg(node, i, n, dv)) if not isinstance(_arg(node, i, n, dv), str) else None
                           for i, n, dv in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
                if p is None:
                    pad = _arg(node, 4, "padding", 0)
                    p = (0, 0) if pad == "valid" else tuple((d[i] * (k[i] - 1)) // 2 for i in range(2))
                hw = _spatial(src)
                yield src, (*_window(ylo, yhi, k[0], s[0], p[0], d[0], hw[0], "zeros", clip),
                            *_window(xlo, xhi, k[1], s[1], p[1], d[1], hw[1], "zeros", clip))
                return
            if fn in _POOL_FUNCS:
                src = node.args[0]
                kind = _POOL_FUNCS[fn]
                off = 1 if kind == "lp" else 0  # lp_pool2d(input, norm_type, kernel_size, stride)
                k = _pair(_arg(node, 1 + off, "kernel_size", None))
                sv = _arg(node, 2 + off, "stride", None)
                s = _pair(sv) if sv not in (None, [], ()) else k
                p = _pair(_arg(node, 3, "padding", 0)) if kind != "lp" else (0, 0)
                d = _pair(_arg(node, 4, "dilation", 1)) if kind == "max" else (1, 1)
                yield src, self._pool(src, iv, k, s, p, d, clip)
                return
            if fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
                src = node.args[0]
                hw = _spatial(src)
                yield src, (*_adaptive(ylo, yhi, hw[0], out_hw[0]), *_adaptive(xlo, xhi, hw[1], out_hw[1]))
                return
            if fn is F.pad:
                src = node.args[0]
                mode = _arg(node, 2, "mode", "constant")
                yield src, self._pad(src, iv, _pad4(_arg(node, 1, "pad", None)), mode, clip)
                return
            if fn is operator.getitem and out_hw is None:
                return
            if fn in (torch.mean, torch.sum, torch.amax, torch.amin, torch.softmax, F.softmax, F.log_softmax,
                      F.instance_norm, F.group_norm, F.layer_norm, torch.flatten, F.interpolate):
                if out_hw is None or fn in (F.instance_norm, F.group_norm, F.layer_norm):
                    for a in srcs:
                        yield a, self._full(a)
                    return
                if fn is F.interpolate:
                    raise UnsupportedOperationError("receptive fields through F.interpolate are not supported")
                dim = _arg(node, 1, "dim", None)
                dims = [dim] if isinstance(dim, int) else list(dim or [])
                if any(dd % 4 in (2, 3) for dd in dims):
                    for a in srcs:
                        yield a, self._full(a)
                    return
        elif node.op == "call_method":
            t = node.target
            same = out_hw is not None and all(_spatial(a) == out_hw for a in srcs)
            if t in ("mean", "sum", "amax", "amin", "max", "min", "softmax", "log_softmax", "norm"):
                dims = [a for a in list(node.args[1:]) + [node.kwargs.get("dim")] if isinstance(a, int)]
                if not same or any(dd % 4 in (2, 3) for dd in dims):
                    for a in srcs:
                        yield a, self._full(a)
                    return
            elif t in ("view", "reshape") and not same or t in ("flatten", "permute", "transpose", "roll", "flip"):
                for a in srcs:  # conservative: the whole map (flip/roll move pixels, no box is exact)
                    yield a, self._full(a)
                return
        # pointwise (activations, batch norm, dropout, residual add, channel cat, SE gate...):
        if out_hw is None:
            for a in srcs:  # a flattened/reduced output depends on every position
                yield a, self._full(a)
            return
        for a in srcs:
            hw = _spatial(a)
            if hw == out_hw:
                yield a, (ylo, yhi, xlo, xhi)
            elif all(hw[i] in (1, out_hw[i]) for i in range(2)):  # broadcast along space
                yl, yh = (ylo, yhi) if hw[0] == out_hw[0] else (np.zeros_like(ylo), np.ones_like(yhi))
                xl, xh = (xlo, xhi) if hw[1] == out_hw[1] else (np.zeros_like(xlo), np.ones_like(xhi))
                yield a, (yl, yh, xl, xh)
            else:
                what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
                raise UnsupportedOperationError(
                    f"receptive fields: {what} maps a {hw[0]}x{hw[1]} map to {out_hw[0]}x{out_hw[1]} in a way viscnn does not know")

    def _pool(self, src, iv, k, s, p, d, clip):
        hw = _spatial(src)
        ylo, yhi, xlo, xhi = iv
        return (*_window(ylo, yhi, k[0], s[0], p[0], d[0], hw[0], "zeros", clip),
                *_window(xlo, xhi, k[1], s[1], p[1], d[1], hw[1], "zeros", clip))

    def _pad(self, src, iv, pad4, mode, clip):
        left, right, top, bottom = pad4
        hw = _spatial(src)
        ylo, yhi, xlo, xhi = iv
        return (*_pad_map(ylo - top, yhi - top, hw[0], mode, clip), *_pad_map(xlo - left, xhi - left, hw[1], mode, clip))

    @staticmethod
    def _full(src):
        """The whole map, as length-1 arrays that numpy broadcasting merges with per-position ones."""
        h, w = _spatial(src)
        return (np.zeros(1, np.int64), np.full(1, h, np.int64), np.zeros(1, np.int64), np.full(1, w, np.int64))


def _pad4(padding) -> Tuple[int, int, int, int]:
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(int(v) for v in padding)
    if len(padding) == 2:  # (left/right for W) only
        return (padding[0], padding[1], 0, 0)
    if len(padding) >= 4:
        return padding[:4]
    raise UnsupportedOperationError(f"padding {padding!r} is not supported for receptive fields")


# -- functional API ------------------------------------------------------------------------------------
def receptive_field(model: Union[nn.Module, fx.GraphModule, ReceptiveFields], layer_name: str, y: int, x: int,
                    input_size: Sequence[int] = (224, 224)) -> Box:
    """Input box ``(y0, y1, x0, x1)`` (half-open, clipped to the image) that can influence
    ``layer_name``'s output at ``(y, x)``."""
    rf = model if isinstance(model, ReceptiveFields) else ReceptiveFields(model, input_size)
    return rf.box(layer_name, y, x)


def layer_rf_table(model: Union[nn.Module, fx.GraphModule, ReceptiveFields], layer_name: str,
                   input_size: Sequence[int] = (224, 224)) -> RFTable:
    """Boxes of every position of a layer at once: ``box(y, x) = (*rows[y], *cols[x])``."""
    rf = model if isinstance(model, ReceptiveFields) else ReceptiveFields(model, input_size)
    return rf.table(layer_name)


def layer_rf_params(model: Union[nn.Module, fx.GraphModule, ReceptiveFields], layer_name: str,
                    input_size: Sequence[int] = (224, 224)) -> Optional[dict]:
    """``{"start": (y, x), "stride": (y, x), "size": (h, w)}`` of the unclipped field, or None."""
    rf = model if isinstance(model, ReceptiveFields) else ReceptiveFields(model, input_size)
    return rf.params(layer_name)
