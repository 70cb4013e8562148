"""Structural ops on channel provenance: concatenation, splits, reductions and every pure
rearrangement (view/reshape/transpose/permute/flip/roll/narrow/index_select/indexing...).

A rearrangement is followed exactly by replaying the op itself on an *index tensor* of the
input's shape (batch 1) whose elements hold the index of the channel they belong to: if the
result varies along one axis only, that axis is the channel axis and its entries name each
output channel's source channel (a permutation, a selection, a flip); varying along several
axes is the middle of a channel shuffle (:class:`~viscnn.graph.provenance.Grid`), resolved by
the next view. Nothing is guessed from op names, so e.g. ShuffleNet's
``view(b, g, c/g, h, w) -> transpose(1, 2) -> view(b, c, h, w)`` needs no special case.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.fx as fx

from viscnn.graph.provenance import CONST, FORM, MIX, Chan, Grid, Mixed, Squeezed

#: Tensor methods / torch functions that only move or select elements (their extra args are constants).
LAYOUT_METHODS = {
    "view", "reshape", "transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "flip", "roll",
    "narrow", "index_select", "flatten", "unflatten", "squeeze", "select", "expand", "expand_as", "repeat",
    "gather", "t",
}
LAYOUT_FUNCTIONS = {
    torch.reshape, torch.transpose, torch.swapaxes, torch.swapdims, torch.permute, torch.movedim, torch.moveaxis,
    torch.flip, torch.roll, torch.narrow, torch.index_select, torch.squeeze, torch.select, torch.gather, torch.t,
    torch.unflatten,
}
_BY_SHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "expand", "expand_as"}  # replay = reshape/expand to the traced shape


class NotConstant(Exception):
    """An op argument that depends on the model input (a data-dependent index)."""


class _Mixes(Exception):
    """Raised inside a replay when a reduction runs over the channel axis."""


def to_ids(x, shape: tuple) -> Tuple[torch.Tensor, tuple]:
    """(index tensor of ``shape``, source table) for a tensor provenance."""
    if isinstance(x, Grid):
        return x.ids, x.sources
    if isinstance(x, Squeezed):
        return torch.zeros((), dtype=torch.long).expand(shape), (x.sources,)
    C = len(x.sources)
    if x.spatial > 1:
        ids = torch.arange(C).repeat_interleave(x.spatial).view(1, -1)
    else:
        view = [1] * len(shape)
        view[x.dim] = C
        ids = torch.arange(C).view(view)
    return ids.expand(shape), x.sources


def from_ids(ids: torch.Tensor, sources: tuple, before, in_nd: int, op: str, where: str):
    """Provenance of a replayed rearrangement's index tensor (see the module docstring)."""
    nd = ids.dim()
    if ids.numel() == 0:
        return Mixed(op, where, FORM, "it selects no elements")
    vary = [d for d in range(nd) if ids.shape[d] > 1 and bool((ids != ids.narrow(d, 0, 1)).any())]
    if not vary:
        src = sources[int(ids.reshape(-1)[0])]
        if isinstance(before, Chan) and nd == in_nd and ids.shape[before.dim] == 1:
            return Chan((src,), 1, before.dim)
        if nd == 4 and ids.shape[1] == 1:
            return Chan((src,))
        return Squeezed(src)
    if 0 in vary:
        return Mixed(op, where, FORM, "it moves channels into the batch axis")
    if len(vary) > 1:
        return Grid(ids, sources, op, where)
    d = vary[0]
    line = ids[tuple(slice(None) if i == d else 0 for i in range(nd))]
    return Chan(tuple(sources[int(v)] for v in line.tolist()), 1, d)


class ChannelOps:
    """Mixin of :class:`viscnn.graph.build._Walker`: ops that move, select or reduce channels."""

    gm: fx.GraphModule
    prov: dict

    # -- constants -----------------------------------------------------------------
    def const(self, a):
        """The concrete value of an op argument (ints from ``size()``, index buffers, lists...)."""
        if isinstance(a, fx.Node):
            if self.prov.get(a, CONST) is not CONST:
                raise NotConstant(a.name)
            if a.op == "get_attr":
                obj = self.gm
                for part in a.target.split("."):
                    obj = getattr(obj, part)
                return obj
            if "viscnn_value" in a.meta:
                return a.meta["viscnn_value"]
            raise NotConstant(a.name)
        if isinstance(a, (list, tuple)):
            return type(a)(self.const(x) for x in a)
        if isinstance(a, slice):
            return slice(self.const(a.start), self.const(a.stop), self.const(a.step))
        if isinstance(a, dict):
            return {k: self.const(v) for k, v in a.items()}
        return a

    def replay(self, node: fx.Node, x, fn: Callable[[torch.Tensor], torch.Tensor], op: str):
        """Run rearrangement ``fn`` on ``x``'s index tensor and read the result's channel structure."""
        if x is CONST or isinstance(x, Mixed):
            return x
        if isinstance(x, tuple):
            return Mixed(op, self.where(node), FORM, "its input is a tuple of tensors")
        ins, outs = self.shape(node.args[0]), self.shape(node)
        if ins is None:
            return Mixed(op, self.where(node), FORM, "the input's shape is unknown")
        try:
            ids, sources = to_ids(x, ins)
            res = fn(ids)
        except NotConstant as e:
            return Mixed(op, self.where(node), FORM, f"an argument ({e}) is computed from the model input")
        except _Mixes:
            raise
        except Exception as e:  # noqa: BLE001 - an op form the replay cannot reproduce
            return Mixed(op, self.where(node), FORM, f"replaying it on channel indices failed ({type(e).__name__}: {e})")
        if isinstance(res, (tuple, list)):
            return tuple(from_ids(r, sources, x, len(ins), op, self.where(node)) for r in res)
        if outs is not None and tuple(res.shape[1:]) != tuple(outs[1:]):
            return Mixed(op, self.where(node), FORM, f"its replay gave shape {tuple(res.shape)}, the model {outs}")
        return from_ids(res, sources, x, len(ins), op, self.where(node))

    def layout(self, node: fx.Node, x, name: str, method: bool):
        """A pure rearrangement (method ``Tensor.name`` or function ``torch.name``)."""
        outs = self.shape(node)
        if name in _BY_SHAPE:
            if outs is None:
                return Mixed(name, self.where(node), FORM, "its output shape is unknown")
            shape = (1, *outs[1:])
            fn = (lambda t: t.expand(shape)) if name.startswith("expand") else (lambda t: t.reshape(shape))
        else:
            def fn(t):
                args, kw = self.const(tuple(node.args[1:])), self.const(dict(node.kwargs))
                return getattr(t, name)(*args, **kw) if method else node.target(t, *args, **kw)
        return self.replay(node, x, fn, f"Tensor.{name}" if method else f"torch.{name}")

    # -- structural ops --------------------------------------------------------------
    def cat(self, node: fx.Node):
        src = node.args[0]
        parts = self.arg(src)
        dim = self.const(_argv(node, 1, "dim", 0))
        nd = len(self.shape(node) or ())
        if parts is CONST or isinstance(parts, Mixed):
            return parts
        tensors = [p for p in parts if p is not CONST]
        if any(isinstance(p, Mixed) for p in tensors):
            return next(p for p in tensors if isinstance(p, Mixed))
        if not tensors:
            return CONST
        d = dim % nd if nd else dim
        if all(isinstance(p, Chan) for p in tensors) and len({(p.dim, p.spatial) for p in tensors}) == 1:
            c = tensors[0]
            if d == c.dim:
                return Chan(tuple(s for p in tensors for s in p.sources), c.spatial, c.dim)
            if d != 0 and len({len(p.sources) for p in tensors}) == 1:  # along a spatial axis: per-channel union
                return Chan(tuple(frozenset().union(*ss) for ss in zip(*(p.sources for p in tensors))), c.spatial, c.dim)
        return Mixed("torch.cat", self.where(node), FORM,
                     f"along axis {dim} of parts whose channels are indexed away, spread or on different axes")

    def stack(self, node: fx.Node):
        parts = self.arg(node.args[0])
        if parts is CONST or isinstance(parts, Mixed):
            return parts
        tensors = [p for p in parts if p is not CONST]
        if any(isinstance(p, Mixed) for p in tensors) or not tensors:
            return next((p for p in tensors if isinstance(p, Mixed)), CONST)
        d = self.const(_argv(node, 1, "dim", 0)) % len(self.shape(node) or (1,))
        if d != 0 and all(isinstance(p, Squeezed) for p in tensors):  # the new axis is the channel axis
            return Chan(tuple(p.sources for p in tensors), 1, d)
        if d != 0 and all(isinstance(p, Chan) and p.spatial == 1 for p in tensors) and \
                len({(p.dim, len(p.sources)) for p in tensors}) == 1:  # a new spatial axis: per-channel union
            c = tensors[0]
            return Chan(tuple(frozenset().union(*ss) for ss in zip(*(p.sources for p in tensors))), 1, c.dim + (d <= c.dim))
        return Mixed("torch.stack", self.where(node), FORM, f"along axis {d} of these parts")

    def flatten(self, node: fx.Node, x, start: int, end: int):
        shp = self.shape(node.args[0])
        if isinstance(x, Chan) and x.dim == 1 and x.spatial == 1 and shp is not None:
            nd = len(shp)
            start, end = start % nd, end % nd
            if start >= 2 or start == end:
                return x  # only spatial dims merged
            if start == 1 and end == nd - 1:
                spatial = 1
                for d in shp[2:]:
                    spatial *= d
                return Chan(x.sources, spatial)
        return self.layout(node, x, "flatten", True)

    def reshape(self, node: fx.Node, x):
        ins, outs = self.shape(node.args[0]), self.shape(node)
        if isinstance(x, Chan) and x.dim == 1 and x.spatial == 1 and ins is not None and outs is not None:
            if len(outs) == 2 and len(ins) >= 2 and outs[0] == ins[0]:
                return self.flatten(node, x, 1, -1)
            if len(outs) >= 3 and len(ins) >= 3 and outs[:2] == ins[:2]:
                return x  # only the spatial axes change
        return self.layout(node, x, "reshape", True)

    def reduce(self, node: fx.Node, x, dim, keepdim: bool):
        if x is CONST or isinstance(x, Mixed):
            return x
        nd = len(self.shape(node.args[0]) or ())
        try:
            dim = self.const(dim)
        except NotConstant:
            return Mixed("reduction", self.where(node), FORM, "its dims are computed from the model input")
        dims = sorted({d % nd for d in ([dim] if isinstance(dim, int) else dim if dim is not None else range(nd))})
        if isinstance(x, Chan) and x.spatial == 1:
            if x.dim in dims:
                return Mixed("a reduction over channels", self.where(node), MIX)
            if 0 in dims:
                return Mixed("a reduction", self.where(node), FORM, "it reduces over the batch axis")
            return Chan(x.sources, 1, x.dim if keepdim else x.dim - sum(d < x.dim for d in dims))

        def fn(t):
            for d in dims:
                if bool((t != t.narrow(d, 0, 1)).any()):
                    raise _Mixes
                t = t.narrow(d, 0, 1)
            return t if keepdim else t.squeeze(dims) if dims else t
        try:
            return self.replay(node, x, fn, "reduction")
        except _Mixes:
            return Mixed("a reduction over channels", self.where(node), MIX)

    def unsqueeze(self, node: fx.Node, x, dim):
        out_nd = len(self.shape(node) or ())
        if isinstance(dim, int) and out_nd:
            d = dim % out_nd
            if isinstance(x, Squeezed):
                return Chan((x.sources,), 1, d)
            if isinstance(x, Chan) and x.spatial == 1:
                return Chan(x.sources, 1, x.dim + (d <= x.dim))
        return self.replay(node, x, lambda t: t.unsqueeze(self.const(dim)), "unsqueeze")

    def split(self, node: fx.Node, x, dim, name: str):
        outs = node.meta.get("tensor_meta")
        nd = len(self.shape(node.args[0]) or ())
        if name != "unbind" and isinstance(x, Chan) and isinstance(dim, int) and isinstance(outs, (tuple, list)) \
                and x.spatial == 1 and nd:
            d = dim % nd
            if d == x.dim:
                res, start = [], 0
                for tm in outs:
                    c = tm.shape[d]
                    res.append(Chan(x.sources[start:start + c], 1, d))
                    start += c
                return tuple(res)
            if d != 0:
                return tuple(x for _ in outs)

        def fn(t):
            args, kw = self.const(tuple(node.args[1:])), self.const(dict(node.kwargs))
            return getattr(torch, name)(t, *args, **kw)
        return self.replay(node, x, fn, name)

    def getitem(self, node: fx.Node):
        x = self.arg(node.args[0])
        idx = node.args[1]
        if isinstance(x, tuple):  # a split/chunk result or a tuple of tensors
            try:
                i = self.const(idx)
            except NotConstant:
                return Mixed("indexing a tuple", self.where(node), FORM, "the index is computed from the model input")
            return x[i] if isinstance(i, (int, slice)) else Mixed("indexing a tuple", self.where(node), FORM, f"index {i!r}")
        if x is CONST or isinstance(x, Mixed):
            return x
        try:
            idx = self.const(idx)
        except NotConstant as e:
            return Mixed("indexing", self.where(node), FORM, f"the index ({e}) is computed from the model input")
        idx = idx if isinstance(idx, tuple) else (idx,)
        if idx and idx[0] is not Ellipsis:
            if not isinstance(idx[0], slice):
                return Mixed("indexing", self.where(node), FORM, "it indexes the batch axis")
            idx = (slice(None),) + idx[1:]  # any batch slice keeps each sample's channels
        return self.replay(node, x, lambda t: t[idx], "indexing")

    def norm(self, node: fx.Node, x, name: str, channels_first: bool = False):
        """LayerNorm/GroupNorm/RMSNorm: per-channel for the graph (see :mod:`viscnn.graph.provenance`)."""
        if x is CONST or isinstance(x, Mixed):
            return x
        if isinstance(x, Chan) and x.spatial == 1 and (x.dim == 1 or not channels_first):
            return x
        return Mixed(name, self.where(node), FORM, "it normalises a tensor whose channels are not on one axis"
                     if not isinstance(x, Chan) else "it expects channels in axis 1")

    def nchw(self, node: fx.Node, x, name: str):
        """Per-channel / spatial ops that expect channels in axis 1 (BatchNorm2d, pools, pads...)."""
        if x is CONST or isinstance(x, Mixed) or (isinstance(x, Chan) and x.dim == 1):
            return x
        where = f"axis {x.dim}" if isinstance(x, Chan) else "several axes" if isinstance(x, Grid) else "no axis"
        return Mixed(name, self.where(node), FORM, f"it expects channels in axis 1, this tensor has them in {where}")


def _argv(node: fx.Node, pos: int, name: str, default):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)
