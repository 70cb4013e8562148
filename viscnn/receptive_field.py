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
all positions (global means, instance/group norm, softmax over space) widen it to the whole
map. An op that changes the spatial size in a way this module does not know raises.

Layouts are followed, not assumed: a forward pass over the traced graph records, per tensor, which
axes hold the image's rows and columns. Rearrangements (``permute`` to channels-last NHWC,
ShuffleNet's ``view -> transpose -> view`` channel shuffle, ``chunk``/``split``, indexing, ``flip``,
``roll``...) are replayed on a tensor of pixel-position codes, so each output row and column is
mapped to the input row and column it holds. Ops over the last axis (a Linear over NHWC channels as
in ConvNeXt, LayerNorm over channels) are pointwise in space unless that axis is a spatial one. A
spatial op (conv, pool, pad) that reads a tensor whose rows and columns are not its axes 2 and 3
raises, naming the op.

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

from viscnn.errors import UnsupportedOperationError, ViscnnError
from viscnn.graph.channel_ops import LAYOUT_FUNCTIONS, LAYOUT_METHODS

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


_GLOBAL_MODULES = (nn.InstanceNorm2d, nn.GroupNorm, nn.Softmax2d)
_POOL_FUNCS = {F.max_pool2d: "max", F.avg_pool2d: "avg", F.lp_pool2d: "lp"}
try:  # the *_with_indices variant fx may record
    _POOL_FUNCS[torch.nn.functional.max_pool2d_with_indices] = "max"
except AttributeError:  # pragma: no cover
    pass
_SPATIAL_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
_UNSUPPORTED_MODULES = (nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Unfold, nn.Fold)
_SPATIAL_FUNCS = {F.conv2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.pad, *_POOL_FUNCS}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "norm", "std", "var", "logsumexp", "prod"}
_SOFTMAX = {torch.softmax, F.softmax, F.log_softmax, torch.log_softmax}
_SPLITS = {"split", "chunk", "tensor_split", "unbind"}


@dataclass(frozen=True)
class _Sp:
    """Where a tensor keeps the image's rows and columns: axes ``ay``/``ax`` (None: a single row or
    column, no axis of its own, size 1) and their sizes."""

    ay: Optional[int]
    ax: Optional[int]
    h: int
    w: int


def _shape(node) -> Optional[tuple]:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(int(v) for v in tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _vary(t: torch.Tensor) -> list:
    return [d for d in range(t.dim()) if t.shape[d] > 1 and bool((t != t.narrow(d, 0, 1)).any())]


def _along(t: torch.Tensor, d: Optional[int]) -> np.ndarray:
    """The values of ``t`` along axis ``d`` (index 0 on every other axis); one value for None."""
    if d is None:
        return t.reshape(-1)[:1].numpy().astype(np.int64)
    return t[tuple(slice(None) if i == d else 0 for i in range(t.dim()))].numpy().astype(np.int64)


def _what(node: fx.Node, modules) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} {node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{'Tensor.' if node.op == 'call_method' else ''}{name} (fx node {node.name})"


class ReceptiveFields:
    """Traces ``model`` once (eval copy, shapes on a zero image of ``input_size``) and answers
    receptive-field queries for any layer (a module path that is called exactly once, or "input")."""

    def __init__(self, model: Union[nn.Module, fx.GraphModule], input_size: Sequence[int],
                 in_channels: Optional[int] = None):
        from viscnn.graph.build import _ValueProp, infer_input_channels, trace

        if isinstance(model, fx.GraphModule):
            gm = model
        else:
            gm = trace(model)
        h, w = _pair(tuple(input_size)) if len(input_size) == 2 else _pair(input_size[0])
        self.input_size = (h, w)
        c = in_channels or infer_input_channels(gm)
        with torch.no_grad():
            try:
                _ValueProp(gm).propagate(torch.zeros(1, c, h, w))
            except Exception as e:
                raise ViscnnError(f"running the model on a 1x{c}x{h}x{w} input failed: {type(e).__name__}: {e}") from None
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes = list(gm.graph.nodes)
        self._cache: Dict[Tuple[str, bool], RFTable] = {}
        # the layout pass: per value that depends on the image, where its rows and columns are
        self.sp: Dict[fx.Node, _Sp] = {}  # spatial axes known
        self.flat: Dict[fx.Node, str] = {}  # depends on the image but has no spatial axes (flattened, reduced)
        self.bad: Dict[fx.Node, str] = {}  # an op this module cannot map: raised when a query reaches it
        self.glob: set = set()  # keeps the layout but mixes every position (a norm or softmax over space)
        self.maps: Dict[fx.Node, Tuple[fx.Node, np.ndarray, np.ndarray]] = {}  # rearrangement: src, rows, cols
        self.parts: Dict[fx.Node, list] = {}  # a rearrangement returning a tuple: per item as in maps/sp
        for node in self.nodes:
            try:
                self._forward(node)
            except UnsupportedOperationError as e:
                self.bad[node] = str(e)

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
        if hits[0] in self.bad:
            raise UnsupportedOperationError(self.bad[hits[0]])
        if hits[0] not in self.sp:
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

    # -- the layout pass (forward) ------------------------------------------------------------------
    def _dep(self, a) -> bool:
        return a in self.sp or a in self.flat or a in self.bad or a in self.parts

    def _hw(self, node) -> Tuple[int, int]:
        sp = self.sp.get(node)
        return (sp.h, sp.w) if sp is not None else (1, 1)

    def _const(self, a):
        """The concrete value of an op argument (ints from ``size()``, index buffers, slices...)."""
        if isinstance(a, fx.Node):
            if self._dep(a):
                raise UnsupportedOperationError(f"an argument ({a.name}) is computed from the model input")
            if a.op == "get_attr":
                obj = self.gm
                for part in a.target.split("."):
                    obj = getattr(obj, part)
                return obj
            if "viscnn_value" in a.meta:
                return a.meta["viscnn_value"]
            raise UnsupportedOperationError(f"the value of argument {a.name} is unknown")
        if isinstance(a, (list, tuple)):
            return type(a)(self._const(x) for x in a)
        if isinstance(a, slice):
            return slice(self._const(a.start), self._const(a.stop), self._const(a.step))
        if isinstance(a, dict):
            return {k: self._const(v) for k, v in a.items()}
        return a

    def _nchw(self, node: fx.Node, src) -> None:
        """A spatial op must read a tensor with its rows and columns in axes 2 and 3."""
        shp, sp = _shape(src), self.sp.get(src)
        ok = shp is not None and len(shp) == 4 and sp is not None and \
            (sp.ay == 2 or (sp.ay is None and shp[2] == 1)) and (sp.ax == 3 or (sp.ax is None and shp[3] == 1))
        if not ok:
            why = self.flat.get(src, "its rows and columns are in other axes" if sp is not None else "")
            raise UnsupportedOperationError(
                f"receptive fields: {_what(node, self.modules)} reads a tensor whose image rows and columns are not "
                f"its axes 2 and 3" + (f" ({why})" if why else ""))

    def _forward(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            shp = _shape(node)
            if shp is not None and len(shp) == 4:
                self.sp[node] = _Sp(2, 3, shp[2], shp[3])
            elif shp is not None:
                self.flat[node] = "a model input that is not an image"
            return
        if node.op in ("get_attr", "output"):
            return
        deps = [a for a in node.all_input_nodes if self._dep(a)]
        if not deps or "tensor_meta" not in node.meta:  # a constant, or a size()/int computation
            return
        bad = next((a for a in deps if a in self.bad), None)
        if bad is not None:
            self.bad[node] = self.bad[bad]
            return
        if node.op == "call_function" and node.target is operator.getitem and node.args[0] in self.parts:
            item = self.parts[node.args[0]][self._const(node.args[1])]
            if isinstance(item, str):
                self.flat[node] = item
            else:
                sp, rows, cols = item
                self.sp[node] = sp
                self.maps[node] = (node.args[0].args[0], rows, cols)
            return
        out = _shape(node)
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        kind, extra = self._classify(node)
        if kind == "unsupported":
            raise UnsupportedOperationError(extra)
        if kind == "spatial":
            self._nchw(node, src)
            if out is None or len(out) != 4:
                raise UnsupportedOperationError(f"receptive fields: {_what(node, self.modules)} does not return one 4D map")
            self.sp[node] = _Sp(2, 3, out[2], out[3])
            return
        if kind == "layout":
            self._layout(node, src, extra)
            return
        if kind == "reduce":  # extra: (dims, keepdim)
            self._reduce(node, src, *extra)
            return
        if kind == "stack":  # a new axis at ``extra``: the parts' axes at or after it move by one
            d = extra % len(out)
            sps = {self.sp[a] for a in deps if a in self.sp}
            if len(sps) != 1 or any(a in self.flat for a in deps):
                raise UnsupportedOperationError(f"receptive fields: {_what(node, self.modules)} stacks tensors of "
                                                "different layouts")
            sp = sps.pop()
            mv = lambda a: a if a is None or a < d else a + 1  # noqa: E731
            self.sp[node] = _Sp(mv(sp.ay), mv(sp.ax), sp.h, sp.w)
            return
        if out is None:
            raise UnsupportedOperationError(f"receptive fields: {_what(node, self.modules)} returns a tuple")
        # pointwise in space (elementwise, broadcast, ops over a non-spatial axis); extra: axes it mixes
        sps = [(a, self.sp[a]) for a in deps if a in self.sp]
        if not sps:
            self.flat[node] = self.flat[deps[0]]
            return
        axes = {}
        for a, sp in sps:
            off = len(out) - len(_shape(a))
            for key, ax, size in (("y", sp.ay, sp.h), ("x", sp.ax, sp.w)):
                if ax is None:
                    continue
                if ax + off < 0 or (size != 1 and out[ax + off] != size):
                    raise UnsupportedOperationError(
                        f"receptive fields: {_what(node, self.modules)} maps a {sp.h}x{sp.w} map to {tuple(out)} "
                        "in a way viscnn does not know")
                if size == 1 and out[ax + off] != 1:
                    continue  # broadcast along space (a squeeze-excitation gate)
                if axes.setdefault(key, ax + off) != ax + off:
                    raise UnsupportedOperationError(
                        f"receptive fields: {_what(node, self.modules)} combines tensors whose image rows or columns "
                        "lie on different axes")
        ay, ax = axes.get("y"), axes.get("x")
        if ay is not None and ay == ax:
            raise UnsupportedOperationError(f"receptive fields: {_what(node, self.modules)} mixes image rows and columns")
        self.sp[node] = _Sp(ay, ax, out[ay] if ay is not None else 1, out[ax] if ax is not None else 1)
        mixed = extra or ()
        if any(d is not None and d in mixed for d in (ay, ax)):
            self.glob.add(node)
        if node.op == "call_function" and node.target in (torch.cat, torch.concat):
            d = self._const(_arg(node, 1, "dim", 0)) % len(out)
            if d in (ay, ax):
                raise UnsupportedOperationError(f"receptive fields: torch.cat along image {'rows' if d == ay else 'columns'} "
                                                f"(fx node {node.name}) is not supported")

    def _classify(self, node: fx.Node):
        """(kind, extra): "spatial", "layout" (extra: a replay function), "reduce" (dims, keepdim),
        "unsupported" (message) or "point" (extra: the output axes it mixes, if any)."""
        out = _shape(node)
        nd = len(out) if out is not None else 0
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, _SPATIAL_MODULES):
                return "spatial", None
            if isinstance(m, _UNSUPPORTED_MODULES):
                return "unsupported", f"receptive fields through {type(m).__name__} ({node.target}) are not supported"
            if isinstance(m, _GLOBAL_MODULES):  # normalise over space
                return "point", tuple(range(2, nd))
            if isinstance(m, nn.LayerNorm):
                return "point", tuple(range(nd - len(m.normalized_shape), nd))
            if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
                return "point", (() if m.dim is None else (m.dim % nd,)) if nd else ()
            if isinstance(m, nn.Linear):
                return "point", (nd - 1,)
            if isinstance(m, nn.Flatten):
                return "layout", lambda t: torch.flatten(t, m.start_dim, m.end_dim)
            if isinstance(m, nn.Unflatten):
                return "layout", lambda t: t.reshape((1, *out[1:]))
            return "point", ()
        if node.op == "call_function":
            fn = node.target
            name = getattr(fn, "__name__", "")
            if fn in _SPATIAL_FUNCS:
                return "spatial", None
            if fn is F.interpolate:
                return "unsupported", "receptive fields through F.interpolate are not supported"
            if fn in (F.instance_norm, F.group_norm):
                return "point", tuple(range(2, nd))
            if fn is F.layer_norm:
                k = len(tuple(self._const(_arg(node, 1, "normalized_shape", ()))))
                return "point", tuple(range(nd - k, nd))
            if fn is F.linear:
                return "point", (nd - 1,)
            if fn in _SOFTMAX:
                return "point", ((self._const(_arg(node, 1, "dim", -1)) % nd),) if nd else ()
            if fn in _REDUCE_FUNCS:
                return "reduce", (self._const(_arg(node, 1, "dim", None)), self._const(_arg(node, 2, "keepdim", False)))
            if fn is torch.flatten:
                s0, s1 = self._const(_arg(node, 1, "start_dim", 0)), self._const(_arg(node, 2, "end_dim", -1))
                return "layout", lambda t: torch.flatten(t, s0, s1)
            if fn is operator.getitem:
                idx = self._const(node.args[1])
                return "layout", lambda t: t[idx]
            if fn is torch.unsqueeze:
                return "layout", self._replayer(node, fn, False)
            if fn is torch.stack:
                return "stack", self._const(_arg(node, 1, "dim", 0))
            if fn in LAYOUT_FUNCTIONS or name in _SPLITS and fn is getattr(torch, name, None):
                return "layout", self._replayer(node, fn, False)
            return "point", ()
        if node.op == "call_method":
            t = node.target
            if t in _REDUCE_METHODS:
                at = 2 if t == "norm" else 1  # Tensor.norm(p, dim, keepdim)
                keep = node.kwargs.get("keepdim", node.args[at + 1] if t in ("mean", "sum", "amax", "amin", "max", "min",
                                                                             "norm", "logsumexp", "prod")
                                       and len(node.args) > at + 1 else False)
                return "reduce", (self._const(_arg(node, at, "dim", None)), self._const(keep))
            if t in ("softmax", "log_softmax"):
                return "point", ((self._const(_arg(node, 1, "dim", -1)) % nd),) if nd else ()
            if t in LAYOUT_METHODS or t in _SPLITS or t == "unsqueeze":
                return "layout", self._replayer(node, t, True)
            return "point", ()
        return "point", ()

    def _replayer(self, node: fx.Node, fn, method: bool):
        out = _shape(node)
        if (fn if method else getattr(fn, "__name__", "")) in ("view", "reshape", "expand", "expand_as", "unflatten", "squeeze") \
                and out is not None:
            shape = (1, *out[1:]) if out else ()
            if fn in ("expand", "expand_as"):
                return lambda t: t.expand(shape)
            return lambda t: t.reshape(shape)
        args, kw = self._const(tuple(node.args[1:])), self._const(dict(node.kwargs))
        if method:
            return lambda t: getattr(t, fn)(*args, **kw)
        return lambda t: fn(t, *args, **kw)

    def _analyse(self, res: torch.Tensor, h: int, w: int, what: str):
        """(_Sp, row map, column map) of a replayed position-code tensor, or a reason (a string)."""
        if res.numel() == 0:
            return f"{what} selects no positions"
        rows, cols = res // w, res % w
        vr, vc = _vary(rows), _vary(cols)
        if len(vr) > 1 or len(vc) > 1 or (vr and vc and vr[0] == vc[0]):
            return f"{what} spreads the image's rows and columns over its axes"
        ay, ax = (vr[0] if vr else None), (vc[0] if vc else None)
        rmap, cmap = _along(rows, ay), _along(cols, ax)
        return _Sp(ay, ax, len(rmap), len(cmap)), rmap, cmap

    def _layout(self, node: fx.Node, src, replay) -> None:
        what = _what(node, self.modules)
        if src in self.flat:
            self.flat[node] = self.flat[src]
            return
        shp, sp = _shape(src), self.sp[src]
        code = torch.zeros(1, dtype=torch.int64).view([1] * len(shp))
        if sp.ay is not None:
            code = code + torch.arange(sp.h).view([-1 if d == sp.ay else 1 for d in range(len(shp))]) * sp.w
        if sp.ax is not None:
            code = code + torch.arange(sp.w).view([-1 if d == sp.ax else 1 for d in range(len(shp))])
        try:
            res = replay(code.expand((1, *shp[1:])) if shp else code)
        except UnsupportedOperationError:
            raise
        except Exception as e:  # noqa: BLE001 - an op form the replay cannot reproduce
            raise UnsupportedOperationError(f"receptive fields: replaying {what} on pixel positions failed "
                                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(res, (tuple, list)):
            self.parts[node] = [self._analyse(r, sp.h, sp.w, what) for r in res]
            return
        out = _shape(node)
        if out is not None and tuple(res.shape[1:]) != tuple(out[1:]):
            raise UnsupportedOperationError(f"receptive fields: replaying {what} gave shape {tuple(res.shape)}, the model {out}")
        a = self._analyse(res, sp.h, sp.w, what)
        if isinstance(a, str):
            self.flat[node] = a
            return
        self.sp[node] = a[0]
        self.maps[node] = (src, a[1], a[2])

    def _reduce(self, node: fx.Node, src, dims, keepdim) -> None:
        shp, out = _shape(src), _shape(node)
        if src in self.flat or out is None:
            self.flat[node] = self.flat.get(src, "a reduction")
            return
        sp, nd = self.sp[src], len(shp)
        dims = set(range(nd)) if dims is None or dims == [] or dims == () else \
            {d % nd for d in ([dims] if isinstance(dims, int) else dims)}
        if {sp.ay, sp.ax} & dims:
            if keepdim:  # a 1x1 map of the whole input (a squeeze-excitation mean)
                self.sp[node] = _Sp(sp.ay, sp.ax, 1 if sp.ay in dims else sp.h, 1 if sp.ax in dims else sp.w)
                self.glob.add(node)
            else:
                self.flat[node] = f"{_what(node, self.modules)} reduces over image positions"
            return

        def moved(a):
            return a if a is None or keepdim else a - sum(d < a for d in dims)
        self.sp[node] = _Sp(moved(sp.ay), moved(sp.ax), sp.h, sp.w)
        self.maps[node] = (src, np.arange(sp.h), np.arange(sp.w))

    # -- the backward walk ------------------------------------------------------------------------
    def _walk(self, target: fx.Node, clip: bool) -> RFTable:
        h, w = self._hw(target)
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
            if node in self.bad:
                raise UnsupportedOperationError(self.bad[node])
            for src, iv in self._map(node, state[node], clip):
                if src in state:
                    old = state[src]
                    state[src] = [np.minimum(old[0], iv[0]), np.maximum(old[1], iv[1]),
                                  np.minimum(old[2], iv[2]), np.maximum(old[3], iv[3])]
                else:
                    state[src] = list(iv)
        raise ViscnnError(f"layer {target.target!r} does not depend on the model input")

    def _map(self, node: fx.Node, iv, clip: bool):
        """Yield (input node, its intervals) for every input of ``node`` that depends on the image."""
        ylo, yhi, xlo, xhi = iv
        srcs = [a for a in node.all_input_nodes if self._dep(a)]
        if node in self.maps:  # a rearrangement: output row k holds input row rows[k]
            src, rows, cols = self.maps[node]
            yield src, (*_remap(ylo, yhi, rows), *_remap(xlo, xhi, cols))
            return
        if node in self.flat or node in self.glob:  # depends on every position of its inputs
            for a in srcs:
                yield a, self._full(a)
            return
        out_hw = self._hw(node)
        if node.op == "call_module":
            m = self.modules[node.target]
            src = node.args[0]
            if isinstance(m, nn.Conv2d):
                hw = self._hw(src)
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
                hw = self._hw(src)
                yield src, (*_adaptive(ylo, yhi, hw[0], out_hw[0]), *_adaptive(xlo, xhi, hw[1], out_hw[1]))
                return
            if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
                mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}.get(type(m), "zeros")
                yield src, self._pad(src, iv, _pad4(m.padding), mode, clip)
                return
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
                hw = self._hw(src)
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
                hw = self._hw(src)
                yield src, (*_adaptive(ylo, yhi, hw[0], out_hw[0]), *_adaptive(xlo, xhi, hw[1], out_hw[1]))
                return
            if fn is F.pad:
                src = node.args[0]
                mode = _arg(node, 2, "mode", "constant")
                yield src, self._pad(src, iv, _pad4(self._const(_arg(node, 1, "pad", None))), mode, clip)
                return
        # pointwise in space (activations, norms over channels, residual adds, channel cat, SE gates...)
        for a in srcs:
            if a not in self.sp:  # a flattened operand (an SE gate made by a Linear) reads everything anyway
                yield a, self._full(a)
                continue
            hw = self._hw(a)
            yl, yh = (ylo, yhi) if hw[0] == out_hw[0] else (np.zeros_like(ylo), np.ones_like(yhi))
            xl, xh = (xlo, xhi) if hw[1] == out_hw[1] else (np.zeros_like(xlo), np.ones_like(xhi))
            yield a, (yl, yh, xl, xh)

    def _pool(self, src, iv, k, s, p, d, clip):
        hw = self._hw(src)
        ylo, yhi, xlo, xhi = iv
        return (*_window(ylo, yhi, k[0], s[0], p[0], d[0], hw[0], "zeros", clip),
                *_window(xlo, xhi, k[1], s[1], p[1], d[1], hw[1], "zeros", clip))

    def _pad(self, src, iv, pad4, mode, clip):
        left, right, top, bottom = pad4
        hw = self._hw(src)
        ylo, yhi, xlo, xhi = iv
        return (*_pad_map(ylo - top, yhi - top, hw[0], mode, clip), *_pad_map(xlo - left, xhi - left, hw[1], mode, clip))

    def _full(self, src):
        """The whole map, as length-1 arrays that numpy broadcasting merges with per-position ones."""
        h, w = self._hw(src)
        return (np.zeros(1, np.int64), np.full(1, h, np.int64), np.zeros(1, np.int64), np.full(1, w, np.int64))


def _remap(lo: np.ndarray, hi: np.ndarray, idx: np.ndarray):
    """Output interval [lo, hi) of a rearrangement whose output position k holds input position
    idx[k] -> the input interval spanning those positions."""
    n = len(idx)
    if n and np.array_equal(idx, np.arange(n)):
        return lo, hi
    nlo, nhi = np.full(lo.shape, _EMPTY_LO, np.int64), np.full(hi.shape, _EMPTY_HI, np.int64)
    for k, (a, b) in enumerate(zip(lo, hi)):
        a, b = max(int(a), 0), min(int(b), n)
        if a < b:
            nlo[k], nhi[k] = idx[a:b].min(), idx[a:b].max() + 1
    return nlo, nhi


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
