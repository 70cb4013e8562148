"""Target strings: what the importance scores explain.

  loss                     cross-entropy against the given labels, else the model's own prediction
  class:K | class:NAME     the raw logit (Captum's convention)
  unit:LAYER:CH            the mean of that channel's map (VISCNN's feature definition)
  neuron:LAYER:CH:Y:X      one position of that map
  linear combinations      unit:features.8:3 - 0.5*unit:features.8:9

LAYER is a graph layer (a Conv2d module path, or the class Linear); its map is the module's
output (pre-BN, pre-ReLU), the same ``h`` the node scores use. A target inside the network lets
the forward pass stop right after its last layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.linexpr import AtomError, parse_linear, read_name

_INT = re.compile(r"\d+")
_KINDS = ("loss", "class", "unit", "neuron")


@dataclass(frozen=True)
class Term:
    kind: str  # "loss" | "class" | "unit" | "neuron"
    layer: str = ""
    channel: int = -1
    y: int = -1
    x: int = -1

    def __str__(self) -> str:
        if self.kind == "loss":
            return "loss"
        if self.kind == "class":
            return f"class:{self.channel}"
        if self.kind == "unit":
            return f"unit:{self.layer}:{self.channel}"
        return f"neuron:{self.layer}:{self.channel}:{self.y}:{self.x}"


@dataclass
class Target:
    """A parsed target: ``sum(coef * term)`` per image."""

    terms: List[Tuple[float, Term]]
    text: str = ""

    @property
    def needs_output(self) -> bool:
        """Whether the model's final output is needed (loss or class terms)."""
        return any(t.kind in ("loss", "class") for _, t in self.terms)

    @property
    def layers(self) -> List[str]:
        return sorted({t.layer for _, t in self.terms if t.layer})

    def stop_layer(self, graph: Graph) -> Optional[str]:
        """The last graph layer the target reads, when the forward pass may stop there."""
        if self.needs_output:
            return None
        return max(self.layers, key=graph.layer_index)

    def sink_nodes(self, graph: Graph) -> List[int]:
        """Global node indices the target reads (circuit sinks); the last layer for loss/class."""
        out = set()
        for _, t in self.terms:
            if t.layer:
                out.add(graph.layer(t.layer).node_offset + t.channel)
            else:
                last = graph.layers[-1]
                if t.kind == "class" and last.kind == "linear":
                    out.add(last.node_offset + t.channel)
                else:
                    out.update(range(last.node_offset, last.node_offset + last.channels))
        return sorted(out)

    def evaluate(self, logits: Optional[torch.Tensor], maps: Dict[str, torch.Tensor],
                 labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-image target values [B] from the model output and the layer outputs ``maps``."""
        total = None
        for coef, t in self.terms:
            if t.kind in ("loss", "class"):
                if logits is None or logits.dim() != 2:
                    raise ViscnnError(f"target {t} needs a model output of shape [batch, classes]; got "
                                      f"{None if logits is None else tuple(logits.shape)}")
                if t.kind == "class":
                    if t.channel >= logits.shape[1]:
                        raise ViscnnError(f"target class:{t.channel}: the model has only {logits.shape[1]} outputs")
                    v = logits[:, t.channel]
                else:
                    lab = logits.detach().argmax(1) if labels is None else labels.to(logits.device).long()
                    v = F.cross_entropy(logits, lab, reduction="none")
            else:
                m = maps[t.layer]
                if t.kind == "unit":
                    v = m[:, t.channel].reshape(m.shape[0], -1).mean(1)
                else:
                    v = m[:, t.channel, t.y, t.x]
            v = coef * v
            total = v if total is None else total + v
        return total

    def __str__(self) -> str:
        return self.text or " + ".join(f"{c:g}*{t}" for c, t in self.terms)


def parse_target(text: str, graph: Graph, classes: Optional[Sequence[str]] = None) -> Target:
    """Parse a target string against ``graph`` (layer names, channel counts) and ``classes``."""
    if isinstance(text, Target):
        return text
    names = [l.name for l in graph.layers if l.kind != "input"]

    def read_atom(s: str, pos: int):
        m = re.compile(r"[A-Za-z_]+").match(s, pos)
        word = m.group(0) if m else ""
        if word == "loss" and (m.end() == len(s) or not (s[m.end()].isalnum() or s[m.end()] in ":_.")):
            return Term("loss"), m.end()
        if word not in _KINDS or m.end() >= len(s) or s[m.end()] != ":":
            tok = re.compile(r"[^\s+*]+").match(s, pos)
            raise AtomError(f"unknown target {tok.group(0) if tok else s[pos:pos+1]!r}: expected loss, class:K, class:NAME, "
                            "unit:LAYER:CH or neuron:LAYER:CH:Y:X", pos)
        p = m.end() + 1
        if word == "class":
            return _read_class(s, p, classes, graph)
        layer, p = _read_layer(s, p, names)
        lay = graph.layer(layer)
        ch, p = _read_int(s, p, "channel")
        if ch >= lay.channels:
            raise AtomError(f"layer {layer} has {lay.channels} channels; {ch} is out of range", p - len(str(ch)))
        if word == "unit":
            return Term("unit", layer, ch), p
        if lay.kind != "conv":
            raise AtomError(f"neuron targets need a conv layer; {layer} is {lay.kind}", pos)
        for what, size in (("y", lay.out_size[0]), ("x", lay.out_size[1])):
            if p >= len(s) or s[p] != ":":
                raise AtomError(f"expected ':{what}' (neuron:LAYER:CH:Y:X)", p)
            v, p = _read_int(s, p + 1, what)
            if v >= size:
                raise AtomError(f"{what}={v} is outside the {lay.out_size[0]}x{lay.out_size[1]} map of {layer}", p - len(str(v)))
            if what == "y":
                yy = v
        return Term("neuron", layer, ch, yy, v), p

    terms = parse_linear(text, read_atom, "target")
    return Target(terms, text.strip())


def _read_int(s: str, pos: int, what: str) -> Tuple[int, int]:
    m = _INT.match(s, pos)
    if not m:
        raise AtomError(f"expected a {what} number", pos)
    return int(m.group(0)), m.end()


def _read_layer(s: str, pos: int, names: List[str]) -> Tuple[str, int]:
    best = None
    for n in names:
        if s.startswith(n, pos) and pos + len(n) < len(s) and s[pos + len(n)] == ":":
            if best is None or len(n) > len(best):
                best = n
    if best is None:
        m = re.compile(r"[^:\s+*]*").match(s, pos)
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise AtomError(f"unknown layer {m.group(0)!r}; layers: {shown}" if m.group(0) else "expected a layer name", pos)
    return best, pos + len(best) + 1


def _read_class(s: str, pos: int, classes, graph: Graph) -> Tuple[Term, int]:
    m = _INT.match(s, pos)
    n_out = graph.layers[-1].channels if graph.layers[-1].kind == "linear" else (len(classes) if classes else None)
    if m and (m.end() == len(s) or not (s[m.end()].isalnum() or s[m.end()] in "_")):
        k = int(m.group(0))
        if n_out is not None and k >= n_out:
            raise AtomError(f"class {k} is out of range: the model has {n_out} classes", pos)
        return Term("class", channel=k), m.end()
    if not classes:
        raise AtomError("class names are unknown for this model; use class:K with a number", pos)
    name, end = read_name(s, pos, list(classes), "class")
    return Term("class", channel=list(classes).index(name)), end
