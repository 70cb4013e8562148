"""What to maximise: units, neurons, kernel edges, and signed sums of them, addressed by node ids.

Text forms (never eval'd, parsed with a regular expression):

  features.3:17           unit: mean over space of channel 17 of module ``features.3``'s output
  features.3:17@center    neuron at the map's centre;  features.3:17@5,6  neuron at row 5, column 6
  features.3:4->17        edge: the kernel ``features.3.weight[17, 4]`` applied alone to input channel 4
                          of that conv's input (computed directly, no dissected model), mean over space
  features.3:4->17@center the edge map at one position (also @Y,X)
  -features.3:17          negative (minimise);  0.5*a + b - 2*c   weighted sums

An edge's map has no bias and reads exactly what the kernel reads (the conv's own stride, padding,
padding mode and dilation), so its value is the edge's contribution to unit 17 before summation.
Its mean over space is, up to border terms, ``kernel.sum() * mean(input channel)``: it asks for
"more of input channel i" when the kernel sums positive and for a dead channel otherwise. The
point form ``@center`` is the one that prefers a spatial pattern (the kernel's own shape).

A Linear over the channels of a channels-last map (ConvNeXt's pointwise layers) is a 1x1 conv layer
of the graph: its units, neurons and edges (``weight[17, 4]`` times input channel 4) read the same
NCHW views of its output and input (:mod:`viscnn.featurevis.capture`).

Objectives are evaluated in groups of the same kind and layer with one vectorised op, either
"each objective on its own image" (a render batch) or "every objective on every image" (validation).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.importance.convmath import as_conv


@dataclass(frozen=True)
class Atom:
    kind: str  # "channel" | "neuron" | "edge" (mean) | "edge_point"
    layer: str
    channel: int  # output channel j
    in_channel: int = -1  # edges: input channel i
    y: Optional[int] = None  # neurons: None = centre
    x: Optional[int] = None

    def __str__(self) -> str:
        at = "@" + ("center" if self.y is None else f"{self.y},{self.x}")
        if self.kind in ("edge", "edge_point"):
            return f"{self.layer}:{self.in_channel}->{self.channel}" + (at if self.kind == "edge_point" else "")
        if self.kind == "neuron":
            return f"{self.layer}:{self.channel}{at}"
        return f"{self.layer}:{self.channel}"

    @property
    def needs(self) -> Tuple[str, str]:
        """(module path, "in" | "out"): the tensor this atom reads."""
        return (self.layer, "in" if self.kind.startswith("edge") else "out")


class Objective:
    """A weighted sum of atoms, to be maximised. Supports ``+``, ``-``, unary ``-`` and scalar ``*``."""

    def __init__(self, terms: Sequence[Tuple[float, Atom]]):
        merged: Dict[Atom, float] = {}
        for w, a in terms:
            merged[a] = merged.get(a, 0.0) + float(w)
        self.terms: Tuple[Tuple[float, Atom], ...] = tuple((w, a) for a, w in merged.items())
        if not self.terms:
            raise ViscnnError("empty objective")

    def __add__(self, other: "Objective") -> "Objective":
        return Objective(self.terms + as_objective(other).terms)

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-as_objective(other))

    def __neg__(self) -> "Objective":
        return Objective([(-w, a) for w, a in self.terms])

    def __mul__(self, k: float) -> "Objective":
        return Objective([(w * float(k), a) for w, a in self.terms])

    __rmul__ = __mul__

    def __str__(self) -> str:
        out = []
        for n, (w, a) in enumerate(self.terms):
            sign = "-" if w < 0 else ("+" if n else "")
            mag = abs(w)
            coef = "" if mag == 1 else f"{mag:g}*"
            out.append(f"{' ' if n else ''}{sign}{' ' if n else ''}{coef}{a}")
        return "".join(out)

    def __repr__(self) -> str:
        return f"Objective({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Objective) and dict((a, w) for w, a in self.terms) == dict((a, w) for w, a in other.terms)

    def __hash__(self) -> int:
        return hash(frozenset((a, w) for w, a in self.terms))

    @property
    def needs(self) -> set:
        return {a.needs for _, a in self.terms}


def channel(layer: str, c: int) -> Objective:
    return Objective([(1.0, Atom("channel", layer, int(c)))])


def neuron(layer: str, c: int, y: Optional[int] = None, x: Optional[int] = None) -> Objective:
    if (y is None) != (x is None):
        raise ViscnnError("a neuron needs both y and x, or neither (the centre)")
    return Objective([(1.0, Atom("neuron", layer, int(c), y=y, x=x))])


def edge(layer: str, out_ch: int, in_ch: int, at: Union[None, str, Tuple[int, int]] = None) -> Objective:
    """Kernel ``layer.weight[out_ch, in_ch]`` on input channel ``in_ch``: mean of its map, or its
    value at ``at`` ("center" or (y, x))."""
    if at is None:
        return Objective([(1.0, Atom("edge", layer, int(out_ch), in_channel=int(in_ch)))])
    y, x = (None, None) if at in ("center", "centre") else (int(at[0]), int(at[1]))
    return Objective([(1.0, Atom("edge_point", layer, int(out_ch), in_channel=int(in_ch), y=y, x=x))])


_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(
    r"\s*(?P<sign>[+-])?\s*(?:(?P<coef>" + _NUM + r")\s*\*\s*)?"
    r"(?P<layer>[A-Za-z_][\w.]*):(?P<a>\d+)(?:->(?P<b>\d+))?(?:@(?P<pos>center|centre|\d+\s*,\s*\d+))?\s*")


def parse_objective(text: str) -> Objective:
    """Parse the text forms in the module docstring; raises :class:`ViscnnError` on anything else."""
    if not isinstance(text, str) or not text.strip():
        raise ViscnnError("empty objective; expected e.g. features.3:17")
    pos, terms = 0, []
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or m.end() == pos:
            raise ViscnnError(f"bad objective {text!r} at character {pos}: expected LAYER:CH, LAYER:CH@Y,X, "
                              "LAYER:IN->OUT, with optional sign and coefficient (e.g. 0.5*features.3:17)")
        if terms and not m.group("sign"):
            raise ViscnnError(f"bad objective {text!r}: terms must be joined by + or -")
        w = float(m.group("coef")) if m.group("coef") else 1.0
        w = -w if m.group("sign") == "-" else w
        layer, a = m.group("layer"), int(m.group("a"))
        y = x = None
        if m.group("pos") and not m.group("pos").startswith("cent"):
            y, x = (int(v) for v in m.group("pos").split(","))
        if m.group("b") is not None:
            atom = Atom("edge_point" if m.group("pos") else "edge", layer, int(m.group("b")), in_channel=a, y=y, x=x)
        elif m.group("pos"):
            atom = Atom("neuron", layer, a, y=y, x=x)
        else:
            atom = Atom("channel", layer, a)
        terms.append((w, atom))
        pos = m.end()
    return Objective(terms)


def as_objective(o: Union[str, Objective]) -> Objective:
    return o if isinstance(o, Objective) else parse_objective(o)


def check_objectives(objectives: Sequence[Objective], model: nn.Module, shapes: Dict[Tuple[str, str], tuple]) -> None:
    """Validate channels, positions and edges against the model and captured tensor shapes."""
    mods = dict(model.named_modules())
    for o in objectives:
        for _, a in o.terms:
            if a.layer not in mods:
                raise ViscnnError(f"objective {o}: no module {a.layer!r} in the model")
            shp = shapes.get(a.needs)
            if shp is None or len(shp) != 4:
                raise ViscnnError(f"objective {o}: {a.layer} does not produce a 4D [N, C, H, W] map")
            if a.kind.startswith("edge"):
                m = mods[a.layer]
                if isinstance(m, nn.Linear) and len(shapes.get((a.layer, "in"), ())) == 4:
                    m = as_conv(m)  # a Linear over NHWC channels: a 1x1 conv (its maps are captured as NCHW)
                elif not isinstance(m, nn.Conv2d):
                    raise ViscnnError(f"objective {o}: edges need a Conv2d (or a Linear over the channels of a "
                                      f"channels-last map), {a.layer} is a {type(m).__name__}")
                per_out, per_in = m.out_channels // m.groups, m.in_channels // m.groups
                if not 0 <= a.channel < m.out_channels:
                    raise ViscnnError(f"objective {o}: {a.layer} has {m.out_channels} output channels")
                g = a.channel // per_out
                if not g * per_in <= a.in_channel < (g + 1) * per_in:
                    raise ViscnnError(f"objective {o}: no kernel {a.layer}[{a.channel}, {a.in_channel}] "
                                      f"(output {a.channel} reads inputs {g * per_in}..{(g + 1) * per_in - 1})")
            elif not 0 <= a.channel < shp[1]:
                raise ViscnnError(f"objective {o}: {a.layer} has {shp[1]} channels")
            if a.kind in ("neuron", "edge_point") and a.y is not None:
                oh, ow = shapes[(a.layer, "out")][2:] if (a.layer, "out") in shapes else _conv_out(mods[a.layer], shp)
                if not (0 <= a.y < oh and 0 <= a.x < ow):
                    raise ViscnnError(f"objective {o}: position ({a.y}, {a.x}) is outside the {oh}x{ow} map")


def _conv_out(conv: nn.Conv2d, in_shape) -> Tuple[int, int]:
    if isinstance(conv, nn.Linear):  # a 1x1 conv over NHWC channels: same map size
        return tuple(in_shape[2:])
    with torch.no_grad():
        return tuple(conv(torch.zeros(1, *in_shape[1:], device=conv.weight.device)).shape[2:])


def _edge_maps(conv: nn.Conv2d, inp: torch.Tensor, outs: torch.Tensor, ins: torch.Tensor) -> torch.Tensor:
    """inp [G, n, H, W] (channel k already the input channel of edge k) -> [G, n, H', W'] edge maps."""
    conv = as_conv(conv)  # a channels-last Linear as the 1x1 conv it is on the (NCHW) captured input
    per_in = conv.in_channels // conv.groups
    w = conv.weight[outs, ins % per_in].unsqueeze(1)  # [n, 1, kh, kw]
    if conv.padding_mode != "zeros":
        inp = F.pad(inp, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        return F.conv2d(inp, w, None, conv.stride, 0, conv.dilation, groups=len(outs))
    return F.conv2d(inp, w, None, conv.stride, conv.padding, conv.dilation, groups=len(outs))


def _unit_maps(conv: nn.Conv2d, inp: torch.Tensor, outs: torch.Tensor) -> torch.Tensor:
    """inp [n, C_in, H, W] (row k for unit k) -> [1, n, H', W']: only output channel outs[k] of image k.

    Rendering a conv unit needs one of the conv's output channels per image; computing just that
    one (a grouped conv over the batch) skips (C_out - 1)/C_out of the target layer's work."""
    n = len(outs)
    per_in, per_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    if conv.groups == 1:  # every unit reads every input channel: no gather (and no scatter in backward)
        sel = inp
    else:
        idx = (outs // per_out)[:, None] * per_in + torch.arange(per_in, device=inp.device)[None]  # [n, per_in]
        sel = inp[torch.arange(n, device=inp.device)[:, None], idx]  # [n, per_in, H, W]
    sel = sel.reshape(1, n * per_in, *sel.shape[2:])
    w, b = conv.weight[outs], (conv.bias[outs] if conv.bias is not None else None)
    if conv.padding_mode != "zeros":
        sel = F.pad(sel, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        return F.conv2d(sel, w, b, conv.stride, 0, conv.dilation, groups=n)
    return F.conv2d(sel, w, b, conv.stride, conv.padding, conv.dilation, groups=n)


def unit_needs(objectives: Sequence[Objective], modules: Dict[str, nn.Module]) -> set:
    """What a *render* batch must capture: a conv's input (not its output) for channel/neuron atoms
    of a Conv2d, so that :func:`diagonal_values` computes one channel per image and the forward
    pass stops before the conv runs."""
    out = set()
    for o in objectives:
        for _, a in o.terms:
            if a.kind in ("channel", "neuron") and isinstance(modules.get(a.layer), nn.Conv2d):
                out.add((a.layer, "in"))
            else:
                out.add(a.needs)
    return out


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]``, without the copy (and the backward scatter) when idx is simply 0..len(t)-1."""
    if len(idx) == len(t) and bool((idx == torch.arange(len(t), device=idx.device)).all()):
        return t
    return t[idx]


def _atom_values(kind: str, layer: str, atoms: List[Atom], captured: Dict[Tuple[str, str], torch.Tensor],
                 modules: Dict[str, nn.Module], bidx: Optional[torch.Tensor]) -> torch.Tensor:
    """Values of same-kind, same-layer atoms: [n] on images ``bidx`` (one per atom) or [n, B] on all."""
    dev = next(iter(captured.values())).device
    ch = torch.tensor([a.channel for a in atoms], device=dev)
    if kind in ("channel", "neuron") and (layer, "out") not in captured:
        inp = captured[(layer, "in")]
        if bidx is not None:
            out = _unit_maps(modules[layer], _rows(inp, bidx), ch)  # [1, n, H, W]
        else:
            out = modules[layer](inp)[:, ch]  # [B, n, H, W]
        h, w = out.shape[2], out.shape[3]
        if kind == "channel":
            v = out.mean((-2, -1))
        else:
            ys = torch.tensor([h // 2 if a.y is None else a.y for a in atoms], device=dev)
            xs = torch.tensor([w // 2 if a.x is None else a.x for a in atoms], device=dev)
            v = out[:, torch.arange(len(atoms), device=dev), ys, xs]
        return v[0] if bidx is not None else v.T
    if kind in ("edge", "edge_point"):
        inp = captured[(layer, "in")]
        ins = torch.tensor([a.in_channel for a in atoms], device=dev)
        sel = inp[bidx, ins].unsqueeze(0) if bidx is not None else inp[:, ins]
        maps = _edge_maps(modules[layer], sel, ch, ins)  # [G, n, h, w]
        if kind == "edge":
            v = maps.mean((-2, -1))
        else:
            h, w = maps.shape[2], maps.shape[3]
            ys = torch.tensor([h // 2 if a.y is None else a.y for a in atoms], device=dev)
            xs = torch.tensor([w // 2 if a.x is None else a.x for a in atoms], device=dev)
            v = maps[:, torch.arange(len(atoms), device=dev), ys, xs]
        return v[0] if bidx is not None else v.T
    out = captured[(layer, "out")]
    h, w = out.shape[2], out.shape[3]
    if kind == "channel":
        return out[bidx, ch].mean((-2, -1)) if bidx is not None else out[:, ch].mean((-2, -1)).T
    ys = torch.tensor([h // 2 if a.y is None else a.y for a in atoms], device=dev)
    xs = torch.tensor([w // 2 if a.x is None else a.x for a in atoms], device=dev)
    return out[bidx, ch, ys, xs] if bidx is not None else out[:, ch, ys, xs].T


def _grouped(objectives: Sequence[Objective]):
    groups = defaultdict(list)  # (kind, layer) -> [(objective index, weight, atom)]
    for k, o in enumerate(objectives):
        for w, a in o.terms:
            groups[(a.kind, a.layer)].append((k, w, a))
    return groups


def diagonal_values(objectives: Sequence[Objective], captured, modules) -> torch.Tensor:
    """[len(objectives)]: objective k evaluated on image k of the batch."""
    n = len(objectives)
    dev = next(iter(captured.values())).device
    total = torch.zeros(n, device=dev)
    for (kind, layer), items in _grouped(objectives).items():
        idx = torch.tensor([k for k, _, _ in items], device=dev)
        wts = torch.tensor([w for _, w, _ in items], device=dev)
        vals = _atom_values(kind, layer, [a for _, _, a in items], captured, modules, idx)
        total = total.index_add(0, idx, wts * vals)
    return total


def all_values(objectives: Sequence[Objective], captured, modules) -> torch.Tensor:
    """[len(objectives), B]: every objective on every image of the batch."""
    first = next(iter(captured.values()))
    total = torch.zeros(len(objectives), first.shape[0], device=first.device)
    for (kind, layer), items in _grouped(objectives).items():
        idx = torch.tensor([k for k, _, _ in items], device=first.device)
        wts = torch.tensor([w for _, w, _ in items], device=first.device)
        vals = _atom_values(kind, layer, [a for _, _, a in items], captured, modules, None)
        total = total.index_add(0, idx, wts[:, None] * vals)
    return total
