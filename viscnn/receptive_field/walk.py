"""The backward walk: a layer's intervals mapped through every op back to the image, merged by union."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from viscnn.errors import UnsupportedOperationError, ViscnnError
from viscnn.receptive_field.ops import _POOL_FUNCS, _arg
from viscnn.receptive_field.windows import RFTable, _adaptive, _pad4, _pad_map, _pair, _remap, _window


class BackwardWalk:
    """The walk half of :class:`~viscnn.receptive_field.tracer.ReceptiveFields` (its base class): reads the
    layout pass's ``sp``/``flat``/``bad``/``glob``/``maps`` and its ``_hw``/``_dep``/``_const``."""

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
