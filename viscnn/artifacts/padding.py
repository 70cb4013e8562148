"""Padding audit: which downsampling layers leave part of their padding (or input) unread.

Alsallakh et al. (Fig. 7) show that at 224x224 every stride-2 layer of ResNet-50 ignores its
1-pixel bottom/right padding while the top/left padding is read, so the padded zeros are
over-represented at the top-left of the layer's input (and the learned kernels skew); at 225x225
all padding is consumed. This module computes that exactly for any traceable graph (branches
included), from shapes alone: the model is traced with torch.fx and shape-propagated on *meta*
tensors (no arithmetic), and every conv and pool with stride > 1 is audited per dimension.

Definitions, one dimension (rows; columns are the same with left/right). The op reads an input
of length ``n`` with padding ``pt`` before and ``pb`` after (``pt = pb = p`` for a plain Conv2d or
pool; a ZeroPad2d/ConstantPad2d/F.pad feeding the op directly is folded into ``pt``/``pb``, and
``n`` is then the length before that pad). Padded coordinates run from 0 to ``L - 1``,
``L = n + pt + pb``. With kernel ``k``, dilation ``d`` and stride ``s`` the output length is
PyTorch's ``o = floor((n' + 2p - d(k-1) - 1) / s) + 1`` (``n'``, ``p``: the op's own input length
and padding); with ``ceil_mode`` floor becomes ceil, and the last window is dropped when it would
start at or past ``n' + p`` (PyTorch's "last window must start inside the input or the left
padding" rule). ``o`` is checked against the shape propagation.

Window ``i`` covers padded indices ``[i s, i s + d(k-1)]``, so the first window starts at 0 (top
padding is always read when ``pt > 0``: ``unused_pad.top`` is 0) and the last one ends at
``e = (o-1) s + d(k-1)``. Then

  unused_pad.bottom = max(0, min(pb, L - 1 - e))        padding rows past the last window
  unread.bottom     = max(0, L - 1 - e - pb)            real rows past the last window
  overhang.bottom   = max(0, e - (L - 1))               ceil_mode only: the last window hangs
                                                        past the padding (PyTorch clips it)

``skipped`` counts the real rows inside the span ``[0, e]`` that no kernel tap reads (stride
larger than the dilated kernel, e.g. a 1x1 stride-2 conv reads every other row, or dilation gaps);
it is reported, not part of ``unread``. Sizes are "clean" when no audited layer has unused padding
(the paper's criterion); ``suggested_sizes`` are the nearest clean sizes below and above, searched
per dimension (every op here is separable) and each confirmed by a full audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from viscnn.artifacts.shapes import ShapeRecorder, TooSmall, meta_trace, walk_sizes
from viscnn.errors import ViscnnError
from viscnn.receptive_field.ops import _POOL_FUNCS, _arg, _spatial
from viscnn.receptive_field.windows import _pad4, _pair

#: How far :meth:`PaddingAuditor.suggest` searches when the fast size walk does not apply.
SLOW_SEARCH = 64
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)


def output_length(n: int, k: int, s: int, p_lo: int, p_hi: int, d: int = 1, ceil_mode: bool = False) -> int:
    """PyTorch's output length of a sliding window (``pooling_output_shape_pad_lr``)."""
    num = n + p_lo + p_hi - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    o = num // s + 1
    if ceil_mode and (o - 1) * s >= n + p_lo:
        o -= 1
    return o


def audit_dim(n: int, k: int, s: int, pt: int, pb: int, d: int, o: int) -> Dict[str, int]:
    """Unused padding, unread tail, overhang and skipped rows of one dimension (module docstring)."""
    L = n + pt + pb
    e = (o - 1) * s + d * (k - 1)
    last = L - 1
    taps = {i * s + j * d for i in range(o) for j in range(k)} if o * k <= 1 << 16 else None
    span_end = min(e, pt + n - 1)
    skipped = 0 if taps is None else sum(1 for r in range(pt, span_end + 1) if r not in taps)
    return {"unused": max(0, min(pb, last - e)), "unread": max(0, last - e - pb),
            "overhang": max(0, e - last), "skipped": skipped, "last": e}


@dataclass
class _Op:
    node: fx.Node
    name: str
    kind: str  # "conv" | "pool"
    src: fx.Node  # the tensor whose size is ``n`` (before any folded pad)
    k: Tuple[int, int]
    s: Tuple[int, int]
    d: Tuple[int, int]
    p: Tuple[int, int]  # the op's own symmetric padding (rows, cols)
    fold: Tuple[int, int, int, int]  # folded explicit pad: left, right, top, bottom
    ceil_mode: bool
    padding_mode: str
    op_input: fx.Node  # the op's direct input (after the folded pad)


class PaddingAuditor:
    """Trace once, audit any input size (each size is one shape propagation on meta tensors)."""

    def __init__(self, model: nn.Module, in_channels: Optional[int] = None, model_name: str = ""):
        from viscnn.graph.build import infer_input_channels

        self.name = model_name or type(model).__name__
        self.c = in_channels or infer_input_channels(model)
        self._model = model
        self._use(meta_trace(model), "meta")

    def _use(self, gm: fx.GraphModule, device: str) -> None:
        self.gm, self.device = gm, device
        self.modules = dict(gm.named_modules())
        self.ops = self._find_ops()
        self._fast_ok = False

    # -- structure -------------------------------------------------------------------------------
    def _find_ops(self) -> List[_Op]:
        nodes = list(self.gm.graph.nodes)
        calls: Dict[str, int] = {}
        for n in nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        self.all_ops: Dict[fx.Node, _Op] = {}
        for n in nodes:
            op = self._describe(n, calls)
            if op is not None:
                self.all_ops[n] = op
        return [op for op in self.all_ops.values() if max(op.s) > 1]

    def _describe(self, n: fx.Node, calls) -> Optional[_Op]:
        name = n.target if n.op == "call_module" and calls.get(n.target) == 1 else n.name
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, nn.Conv2d):
                k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
                if isinstance(m.padding, str):  # 'same' needs stride 1; 'valid' is no padding
                    p = (0, 0) if m.padding == "valid" else tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
                else:
                    p = _pair(m.padding)
                return self._op(n, name, "conv", k, s, d, p, False, m.padding_mode)
            if isinstance(m, _POOL_MODULES):
                k = _pair(m.kernel_size)
                s = _pair(m.stride) if m.stride not in (None, [], ()) else k
                return self._op(n, name, "pool", k, s, _pair(getattr(m, "dilation", 1)), _pair(getattr(m, "padding", 0)),
                                bool(m.ceil_mode), "zeros")
            return None
        if n.op != "call_function":
            return None
        fn = n.target
        if fn is F.conv2d:
            w = _arg(n, 1, "weight", None)
            k = tuple(int(v) for v in w.meta["tensor_meta"].shape[2:])
            s, d = _pair(_arg(n, 3, "stride", 1)), _pair(_arg(n, 5, "dilation", 1))
            pv = _arg(n, 4, "padding", 0)
            p = (0, 0) if pv == "valid" else (tuple(d[i] * (k[i] - 1) // 2 for i in range(2)) if isinstance(pv, str) else _pair(pv))
            return self._op(n, name, "conv", k, s, d, p, False, "zeros")
        if fn in _POOL_FUNCS:
            kind = _POOL_FUNCS[fn]
            off = 1 if kind == "lp" else 0
            k = _pair(_arg(n, 1 + off, "kernel_size", None))
            sv = _arg(n, 2 + off, "stride", None)
            s = _pair(sv) if sv not in (None, [], ()) else k
            p = _pair(_arg(n, 3, "padding", 0)) if kind != "lp" else (0, 0)
            d = _pair(_arg(n, 4, "dilation", 1)) if kind == "max" else (1, 1)
            ceil = _arg(n, {"max": 5, "avg": 4, "lp": 4}[kind], "ceil_mode", False)
            return self._op(n, name, "pool", k, s, d, p, bool(ceil), "zeros")
        return None

    def _op(self, n, name, kind, k, s, d, p, ceil, mode) -> _Op:
        src = n.args[0]
        fold, pad_src = (0, 0, 0, 0), src
        pad = self._explicit_pad(src)
        if pad is not None:
            fold, pad_src, pmode = pad
            mode = pmode if mode == "zeros" else mode
        return _Op(n, name, kind, pad_src, tuple(k), tuple(s), tuple(d), tuple(p), fold, ceil, mode, src)

    def _explicit_pad(self, src):
        """(left, right, top, bottom), the unpadded tensor and its mode, for a pad feeding the op."""
        if not isinstance(src, fx.Node):
            return None
        if src.op == "call_module" and isinstance(self.modules.get(src.target), _PAD_MODULES):
            m = self.modules[src.target]
            mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate"}.get(type(m), "zeros")
            p4 = _pad4(m.padding)
        elif src.op == "call_function" and src.target is F.pad:
            p4 = _pad4(_arg(src, 1, "pad", None))
            mode = _arg(src, 2, "mode", "constant")
            mode = "zeros" if mode == "constant" else mode
        else:
            return None
        if min(p4) < 0:  # cropping, not padding
            return None
        return tuple(p4), src.args[0], mode

    # -- audits ----------------------------------------------------------------------------------
    def _propagate(self, size: Tuple[int, int]) -> None:
        h, w = size
        if h < 1 or w < 1:
            raise ViscnnError(f"input size {h}x{w} is not a valid image size")
        prop = ShapeRecorder(self.gm)
        try:
            with torch.no_grad():
                prop.run(torch.zeros(1, self.c, h, w, device=self.device))
        except Exception as e:
            if self.device == "meta" and "meta" in str(e).lower():  # an op with no meta kernel: real run
                from viscnn.artifacts.taps import traced_copy

                self._use(traced_copy(self._model), "cpu")
                return self._propagate(size)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            n = prop.current
            where = ""
            if n is not None:
                what = type(self.modules[n.target]).__name__ if n.op == "call_module" else getattr(n.target, "__name__", n.target)
                src = next((a for a in n.all_input_nodes if _spatial(a) is not None), None)
                got = f" on a {'x'.join(map(str, _spatial(src)))} map" if src is not None else ""
                where = f" at {n.target if n.op == 'call_module' else n.name} ({what}{got})"
            raise ViscnnError(f"input size {h}x{w} is too small for {self.name} or does not fit it{where}: {first}") from None

    def audit(self, input_size: Sequence[int]) -> List[dict]:
        """One entry per conv/pool with stride > 1, in graph order (see the module docstring)."""
        size = _size(input_size)
        self._propagate(size)
        out = []
        for op in self.ops:
            n_hw, in_hw, out_hw = _spatial(op.src), _spatial(op.op_input), _spatial(op.node)
            if n_hw is None or out_hw is None:
                raise ViscnnError(f"{op.kind} {op.name} does not read a 4D [N, C, H, W] map")
            fl, fr, ft, fb = op.fold
            dims = []
            for i, (f_lo, f_hi) in enumerate(((ft, fb), (fl, fr))):
                o = output_length(in_hw[i], op.k[i], op.s[i], op.p[i], op.p[i], op.d[i], op.ceil_mode)
                if o != out_hw[i]:
                    raise ViscnnError(f"padding audit of {op.name}: computed output length {o} but the model "
                                      f"gives {out_hw[i]} ({'rows' if i == 0 else 'columns'})")
                if o < 1:
                    raise ViscnnError(f"input size {size[0]}x{size[1]} is too small for {self.name}: "
                                      f"{op.name} gets a {in_hw[0]}x{in_hw[1]} map")
                dims.append(audit_dim(n_hw[i], op.k[i], op.s[i], f_lo + op.p[i], f_hi + op.p[i], op.d[i], o))
            r, c = dims
            out.append({
                "layer": op.name, "kind": op.kind, "stride": list(op.s), "kernel": list(op.k), "dilation": list(op.d),
                "ceil_mode": op.ceil_mode, "padding_mode": op.padding_mode,
                "in_size": list(n_hw), "out_size": list(out_hw),
                "pad": {"top": ft + op.p[0], "bottom": fb + op.p[0], "left": fl + op.p[1], "right": fr + op.p[1]},
                "unused_pad": {"top": 0, "bottom": r["unused"], "left": 0, "right": c["unused"]},
                "unread": {"bottom": r["unread"], "right": c["unread"]},
                "overhang": {"bottom": r["overhang"], "right": c["overhang"]},
                "skipped": {"rows": r["skipped"], "cols": c["skipped"]},
            })
        return out

    def _clean_dims(self, size) -> Optional[Tuple[bool, bool]]:
        """(rows clean, columns clean) at ``size``, or None when the size does not fit the model."""
        try:
            unused = self._fast_audit(size)
            if unused is None:
                unused = [(e["unused_pad"]["bottom"], e["unused_pad"]["right"]) for e in self.audit(size)]
        except (ViscnnError, TooSmall):
            return None
        return (all(u[0] == 0 for u in unused), all(u[1] == 0 for u in unused))

    def _fast_sizes(self, size) -> Optional[Dict[fx.Node, Tuple[int, int]]]:
        return walk_sizes(self.gm, self.modules, self.all_ops, self._explicit_pad, size)

    def _fast_audit(self, size) -> Optional[List[Tuple[int, int]]]:
        """(unused bottom, unused right) per audited op from the fast walk; None when the walk is
        not trusted for this model (raises TooSmall when an op gets no output position)."""
        if not self._fast_ok:
            return None
        sizes = self._fast_sizes(size)
        if sizes is None:
            return None
        res = []
        for op in self.ops:
            n_hw = sizes[op.src]
            fl, fr, ft, fb = op.fold
            u = []
            for i, (lo, hi) in enumerate(((ft, fb), (fl, fr))):
                o = sizes[op.node][i]
                L = n_hw[i] + lo + hi + 2 * op.p[i]
                e = (o - 1) * op.s[i] + op.d[i] * (op.k[i] - 1)
                u.append(max(0, min(hi + op.p[i], L - 1 - e)))
            res.append(tuple(u))
        return res

    def _check_fast(self, size) -> None:
        """Trust the fast walk iff it reproduces every 4D shape of the propagation just run."""
        try:
            sizes = self._fast_sizes(size)
        except Exception:
            sizes = None
        self._fast_ok = sizes is not None and all(sizes.get(n) == _spatial(n) for n in self.gm.graph.nodes
                                            if _spatial(n) is not None)

    def suggest(self, input_size: Sequence[int], search: int = 256) -> List[List[int]]:
        """Nearest clean sizes below and above ``input_size`` (each dimension searched up to
        ``search`` steps away, ``SLOW_SEARCH`` where the fast size walk does not reproduce the
        model's shapes; a side with none found is left out)."""
        h, w = _size(input_size)
        self._propagate((h, w))
        self._check_fast((h, w))
        if not self._fast_ok:  # each candidate is a real (meta) shape propagation: search less far
            search = min(search, SLOW_SEARCH)
        out = []
        for sign in (-1, 1):
            found: List[Optional[int]] = [None, None]
            for t in range(1, search + 1):
                cand = (h + sign * t, w + sign * t)
                if min(cand) < 1:
                    break
                clean = self._clean_dims(cand)
                if clean is None:
                    if sign < 0:
                        break  # too small for the model: nothing further below fits either
                    continue
                for i in range(2):
                    if found[i] is None and clean[i]:
                        found[i] = cand[i]
                if None not in found:
                    break
            if None not in found:
                try:
                    entries = self.audit(tuple(found))
                except ViscnnError:
                    continue
                if all(e["unused_pad"]["bottom"] == 0 and e["unused_pad"]["right"] == 0 for e in entries):
                    out.append([int(found[0]), int(found[1])])
        return out

    def report(self, input_size: Sequence[int], search: int = 256) -> dict:
        """``{"input_size", "padding": [...], "clean", "suggested_sizes"}`` (JSON-ready)."""
        size = _size(input_size)
        entries = self.audit(size)
        clean = all(e["unused_pad"]["bottom"] == 0 and e["unused_pad"]["right"] == 0 for e in entries)
        return {"input_size": list(size), "padding": entries, "clean": clean,
                "suggested_sizes": self.suggest(size, search) if search > 0 else []}


def _size(input_size: Sequence[int]) -> Tuple[int, int]:
    s = tuple(int(v) for v in input_size)
    if len(s) == 1:
        s = (s[0], s[0])
    if len(s) != 2:
        raise ViscnnError(f"input size must be H W, got {input_size!r}")
    return s


def padding_audit(model: nn.Module, input_size: Sequence[int], in_channels: Optional[int] = None,
                  search: int = 256) -> dict:
    """The padding audit of ``model`` at ``input_size`` (see :meth:`PaddingAuditor.report`)."""
    return PaddingAuditor(model, in_channels).report(input_size, search)
