"""What an attribution explains, per image: Captum's ``target`` plus viscnn's target grammar.

  None                        each image's predicted class (the arg-max logit)
  3                           the raw logit 3 (Captum's convention), for every image
  [3, 5, ...] / tensor([..])  one logit per image
  "class:3", "unit:L:C", ...  a target string of :mod:`viscnn.importance.targets`, every image
  ["neuron:L:C:0:1", 7, ...]  one string or int per image

Images are independent in eval mode (BatchNorm uses its running statistics), so the per-image
values are summed into one scalar and one backward pass gives every image's attribution.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from viscnn.errors import ViscnnError
from viscnn.importance.targets import Target, Term, parse_target


def class_target(k: int) -> Target:
    return Target([(1.0, Term("class", channel=int(k)))], f"class:{int(k)}")


class PerImageTargets:
    """One :class:`Target` per image (None: the predicted class)."""

    def __init__(self, items: Sequence[Optional[Target]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def _unique(self) -> List[Target]:
        seen, out = set(), []
        for t in self.items:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    @property
    def layers(self) -> List[str]:
        return sorted({l for t in self._unique() for l in t.layers})

    @property
    def needs_output(self) -> bool:
        return any(t is None or t.needs_output for t in self.items)

    def slice(self, a: int, b: int) -> "PerImageTargets":
        return PerImageTargets(self.items[a:b])

    def evaluate(self, logits: Optional[torch.Tensor], maps, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-image values [B] (their sum is what one backward pass differentiates)."""
        groups = self._unique() + ([None] if any(t is None for t in self.items) else [])
        total = None
        for t in groups:
            if t is None:
                if logits is None or logits.dim() != 2:
                    raise ViscnnError("the predicted-class target needs a model output of shape [batch, classes]")
                v = logits.gather(1, logits.detach().argmax(1, keepdim=True))[:, 0]
            else:
                v = t.evaluate(logits, maps, labels)
            if len(groups) == 1:
                return v
            mask = torch.tensor([x is t for x in self.items], device=v.device)
            v = torch.where(mask, v, torch.zeros_like(v))
            total = v if total is None else total + v
        return total

    def class_rows(self, logits: Optional[torch.Tensor]) -> List[List[tuple]]:
        """Per image ``[(coef, class)]`` (CAM's weights); a one-line error for non-class targets."""
        out = []
        for i, t in enumerate(self.items):
            if t is None:
                if logits is None:
                    raise ViscnnError("the predicted-class target needs the model output")
                out.append([(1.0, int(logits[i].argmax()))])
                continue
            bad = [str(term) for _, term in t.terms if term.kind != "class"]
            if bad:
                raise ViscnnError(f"CAM explains class logits; target term {bad[0]} is not class:K (use gradcam)")
            out.append([(c, term.channel) for c, term in t.terms])
        return out


def _one(item, graph_fn: Callable, classes, cache: dict) -> Target:
    if isinstance(item, Target):
        return item
    if isinstance(item, torch.Tensor) and item.dim() == 0:
        item = item.item()
    if isinstance(item, bool):
        raise ViscnnError(f"bad target {item!r}: give a class index, a target string or None")
    if isinstance(item, int) or (hasattr(item, "__index__") and not isinstance(item, str)):
        k = int(item)
        if k < 0:
            raise ViscnnError(f"target {k}: class indices are >= 0")
        key = ("int", k)
        if key not in cache:
            cache[key] = class_target(k)
        return cache[key]
    if isinstance(item, str):
        text = item.strip()
        if text.isdigit():
            return _one(int(text), graph_fn, classes, cache)
        if text not in cache:
            cache[text] = parse_target(text, graph_fn(), classes)
        return cache[text]
    raise ViscnnError(f"bad target of type {type(item).__name__}: give None, a class index, a list of them, "
                      "or a target string")


def resolve_targets(target, n: int, graph_fn: Callable, classes: Optional[Sequence[str]] = None) -> PerImageTargets:
    """Turn any accepted ``target`` into one :class:`Target` (or None) for each of ``n`` images.

    ``graph_fn()`` returns the viscnn Graph used to parse strings (built only when needed)."""
    if target is None:
        return PerImageTargets([None] * n)
    cache: dict = {}
    if isinstance(target, torch.Tensor) and target.dim() > 0:
        target = target.reshape(-1).tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise ViscnnError(f"{len(target)} targets for {n} images: give one target, or one per image")
        return PerImageTargets([None if t is None else _one(t, graph_fn, classes, cache) for t in target])
    t = _one(target, graph_fn, classes, cache)
    return PerImageTargets([t] * n)
