"""The one verb every method shares: ``attribute(inputs, target) -> Tensor`` (Captum-like).

A method object owns (or shares) a :class:`TracedModel`; the user's model is never modified.
``target`` is anything :func:`resolve_targets` accepts (None = predicted class, an int = a
raw logit, one per image, or a viscnn target string). Batches take one forward and one
backward pass: in eval mode images do not interact, so the sum of the per-image target
values has each image's own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from viscnn.attribution.target_spec import PerImageTargets, resolve_targets
from viscnn.attribution.traced import TracedModel
from viscnn.errors import ViscnnError
from viscnn.importance.capture import model_logits

ModelLike = Union[nn.Module, TracedModel]


@dataclass
class Pass:
    """One forward+backward: per-image target values, tapped node values and gradients."""

    x: torch.Tensor
    values: torch.Tensor
    logits: Optional[torch.Tensor]
    taps: Dict[str, torch.Tensor] = field(default_factory=dict)  # node name -> value (detached)
    grads: Dict[str, torch.Tensor] = field(default_factory=dict)  # "input" or node name -> gradient


def traced(model: ModelLike, device=None) -> TracedModel:
    """``model``'s traced working copy (``model`` itself when it already is one)."""
    return model if isinstance(model, TracedModel) else TracedModel(model, device)


class Attribution:
    """Base class: subclasses set ``name``, ``rule`` (the ReLU backward rule) and ``signed``
    and implement :meth:`_attribute` on one prepared batch."""

    name = "attribution"
    rule = "gradient"
    signed = True  # signed values (diverging colours) or magnitudes (sequential colours)

    def __init__(self, model: ModelLike, classes: Optional[Sequence[str]] = None, device=None):
        self.net = traced(model, device)
        self.classes = list(classes) if classes is not None else None
        if self.rule != "gradient":
            self.net.check_rule(self.rule)  # fail now, naming the activation, not on the first batch

    # -- the verb ------------------------------------------------------------------
    def attribute(self, inputs: torch.Tensor, target=None, labels=None, batch_size: Optional[int] = None,
                  **kwargs) -> torch.Tensor:
        """Attributions for ``inputs`` [N,C,H,W] (see the subclass for the shape of the result)."""
        x = self.prepare(inputs)
        targets = self.targets(target, x)
        lab = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=self.net.device).reshape(-1)
        if lab is not None and len(lab) != len(x):
            raise ViscnnError(f"{len(lab)} labels for {len(x)} images")
        if not batch_size or batch_size >= len(x):
            return self._attribute(x, targets, lab, **kwargs)
        parts = [self._attribute(x[a:a + batch_size], targets.slice(a, a + batch_size),
                                 None if lab is None else lab[a:a + batch_size], **kwargs)
                 for a in range(0, len(x), batch_size)]
        return torch.cat(parts)

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Each image's predicted class (arg-max logit) on the working copy, [N] long."""
        out, _, _ = self.net.run(self.prepare(inputs), "gradient", [], need_output=True, grad=False)
        logits = model_logits(out)
        if logits.dim() != 2:
            raise ViscnnError(f"the model output has shape {tuple(logits.shape)}, not [batch, classes]")
        return logits.argmax(1)

    def _attribute(self, x: torch.Tensor, targets: PerImageTargets, labels, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------
    def prepare(self, inputs) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise ViscnnError(f"inputs must be a tensor [N,C,H,W], got {type(inputs).__name__}")
        if inputs.dim() == 3:
            inputs = inputs.unsqueeze(0)
        if inputs.dim() != 4 or inputs.shape[0] == 0:
            raise ViscnnError(f"inputs must be a non-empty image batch [N,C,H,W], got shape {tuple(inputs.shape)}")
        return inputs.detach().to(self.net.device, self.net.dtype)

    def targets(self, target, x: torch.Tensor) -> PerImageTargets:
        return resolve_targets(target, x.shape[0], lambda: self.net.viscnn_graph(x.shape[1:]), self.classes)

    def forward_backward(self, x: torch.Tensor, targets: PerImageTargets, labels=None, rule: Optional[str] = None,
                         nodes: Sequence[str] = (), wrt_input: bool = True, wrt_nodes: Sequence[str] = ()) -> Pass:
        """Run ``rule``'s graph on ``x`` keeping ``nodes`` and differentiate the summed target
        values w.r.t. the input and/or ``wrt_nodes`` (the backward stops at the deepest needed)."""
        cut = () if wrt_input else tuple(wrt_nodes)  # no gradient below the layers: do not record it
        leaf, logits, values, by_node = self._evaluate(x, targets, labels, rule or self.rule,
                                                       list(nodes) + list(wrt_nodes), True, cut)
        wrt = ([leaf] if wrt_input else []) + [by_node[n] for n in wrt_nodes]
        grads: Dict[str, torch.Tensor] = {}
        if wrt:
            if not values.requires_grad:
                where = "the input" if wrt_input else "layer " + ", ".join(self.net.node_layer_name(n) for n in wrt_nodes)
                raise ViscnnError(f"the target does not depend on {where}")
            gs = torch.autograd.grad(values.sum(), wrt, allow_unused=True)
            names = (["input"] if wrt_input else []) + list(wrt_nodes)
            for name, g, t in zip(names, gs, wrt):
                if g is None:
                    where = "the input" if name == "input" else f"layer {self.net.node_layer_name(name)}"
                    raise ViscnnError(f"the target does not depend on {where}")
                grads[name] = g
        return Pass(leaf.detach(), values.detach(), None if logits is None else logits.detach(),
                    {n: v.detach() for n, v in by_node.items()}, grads)

    def pin_predicted(self, x: torch.Tensor, targets: PerImageTargets) -> PerImageTargets:
        """``targets`` with "the predicted class" fixed to the class predicted on ``x`` itself, for
        methods that differentiate at other inputs (scaled, noisy) where the prediction may change."""
        if all(t is not None for t in targets.items):
            return targets
        from viscnn.attribution.target_spec import class_target

        pred = self.predict(x).tolist()
        return PerImageTargets([class_target(pred[i]) if t is None else t for i, t in enumerate(targets.items)])

    def summed_gradients(self, points, K: int, weights: torch.Tensor, targets: PerImageTargets, labels,
                         chunk: int, each=None) -> torch.Tensor:
        """``sum_k weights[k] * each(d target / d input at point k)`` over ``K`` points per image
        (``each`` defaults to the identity), [N,C,H,W]. ``points(a, b)`` returns points a..b-1 of every
        image, [b-a, N, C, H, W]: made one chunk at a time (``chunk`` points per forward+backward, a batch of
        ``chunk * N`` images), so memory does not grow with ``K``."""
        total = None
        for a in range(0, K, max(1, chunk)):
            b = min(K, a + max(1, chunk))
            pts = points(a, b)
            N = pts.shape[1]
            lab = None if labels is None else labels.repeat(b - a)
            g = self.forward_backward(pts.reshape(-1, *pts.shape[2:]), PerImageTargets(targets.items * (b - a)),
                                      lab).grads["input"]
            g = g if each is None else each(g)
            part = (g.reshape(b - a, N, *pts.shape[2:]) * weights[a:b].reshape(-1, *[1] * (pts.dim() - 1))).sum(0)
            total = part if total is None else total + part
        return total

    def target_values(self, x: torch.Tensor, targets: PerImageTargets, labels=None) -> torch.Tensor:
        """Per-image target values [N] from a forward pass only (no autograd graph)."""
        return self._evaluate(x, targets, labels, self.rule, (), False, ())[2]

    def _evaluate(self, x, targets: PerImageTargets, labels, rule: str, nodes: Sequence[str], grad: bool, cut):
        """One run of ``rule``'s graph keeping ``nodes`` and the targets' layers: ``(input leaf, logits or
        None, per-image target values, {node: value})``."""
        layer_nodes = {l: self.net.layer_node(l) for l in targets.layers}
        taps = list(dict.fromkeys(list(layer_nodes.values()) + list(nodes)))
        out, leaf, vals = self.net.run(x, rule, taps, targets.needs_output, grad=grad, cut=cut)
        by_node = dict(zip(taps, vals))
        logits = model_logits(out) if out is not None else None
        return leaf, logits, targets.evaluate(logits, {l: by_node[n] for l, n in layer_nodes.items()}, labels), by_node
