"""ReceptiveFields: trace the model, find where each tensor keeps the image's rows and columns, answer queries."""

from __future__ import annotations

import operator
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from viscnn.errors import UnsupportedOperationError, ViscnnError
from viscnn.graph.channel_ops import LAYOUT_FUNCTIONS, LAYOUT_METHODS
from viscnn.receptive_field.ops import (_GLOBAL_MODULES, _REDUCE_FUNCS, _REDUCE_METHODS, _SOFTMAX, _SPATIAL_FUNCS,
                                        _SPATIAL_MODULES, _SPLITS, _UNSUPPORTED_MODULES, _along, _arg, _shape, _Sp,
                                        _vary, _what)
from viscnn.receptive_field.walk import BackwardWalk
from viscnn.receptive_field.windows import Box, RFTable, _pair


class ReceptiveFields(BackwardWalk):
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
