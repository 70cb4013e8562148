"""Per-image node and edge scores of batches of images, layer by layer.

:class:`Scorer` owns a working copy of the model (the user's model is never touched) and
yields each layer's per-image scores, so callers can stream them into per-set sums
(:mod:`viscnn.importance.accumulate`) without ever holding [images, edges] for the whole net.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from viscnn.graph.structure import Graph
from viscnn.importance.capture import Captured, capture_targets, layer_modules
from viscnn.importance.convmath import CHUNK_ELEMENTS, as_conv, group_linear_taylor, group_taylor
from viscnn.importance.metrics import (NEEDS_GRAD, check_metrics, conv_edge_scores, linear_edge_scores, map_scores,
                                       replacement_node_taylor)
from viscnn.importance.node_scores import chain_zero, elementwise_chains
from viscnn.importance.targets import Target, parse_target
from viscnn.model_copy import working_copy

LayerScores = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # metric -> (nodes [B, C], edges [B, E_layer])

#: The edge metrics with a batch-gradient form: per set, from the signed sum of the per-image Taylor terms.
BATCH_METRICS = ("taylor", "taylor_signed")


def batch_set_score(metric: str, total, count):
    """A set's edge score under the batch criterion from the signed sum ``total`` over its ``count`` images
    (numpy or torch): ``taylor`` ``|total| / count``, ``taylor_signed`` ``total / count`` (the same as the
    per-image criterion's: the mean is linear)."""
    return (abs(total) if metric == "taylor" else total) / max(count, 1)


class Scorer:
    """Scores of ``target`` for ``metrics`` on batches; ``model`` is copied, never modified."""

    def __init__(self, model: nn.Module, graph: Graph, target: Union[str, Target], metrics: Sequence[str] = ("taylor",),
                 device=None, classes: Optional[Sequence[str]] = None, chunk_elements: int = CHUNK_ELEMENTS):
        self.graph = graph
        self.metrics = check_metrics(metrics)
        self.target = parse_target(target, graph, classes) if isinstance(target, str) else target
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = working_copy(model).to(self.device)
        self.modules = layer_modules(self.model, graph)
        self.chunk_elements = chunk_elements
        self._clone = False
        self._post: Optional[Dict[str, nn.Module]] = None  # conv name -> end of its elementwise chain
        self._zero: Dict[str, torch.Tensor] = {}  # conv name -> chain(0) per channel [C]
        self._bufs: Dict[str, torch.Tensor] = {}  # layer name -> reused group Taylor output (reuse=True)

    def _chains(self, x: torch.Tensor) -> Dict[str, nn.Module]:
        """Traced once from the first batch: a conv's node score is taken after its chain."""
        if self._post is None:
            mods = dict(self.model.named_modules())
            self._post = {}
            if any(m in ("taylor", "taylor_signed") for m in self.metrics):
                for conv, chain in elementwise_chains(self.model, self.graph, x[:1]).items():
                    if chain:
                        self._post[conv] = mods[chain[-1]]
                        self._zero[conv] = chain_zero(mods, chain, self.graph.layer(conv).channels, x)
        return self._post

    def capture(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Captured:
        return self.capture_with(x, labels, [])[0]

    def capture_with(self, x: torch.Tensor, labels: Optional[torch.Tensor], others: Sequence["Scorer"]) -> List[Captured]:
        """This scorer's capture and those of ``others`` (scorers of the same model and graph, other
        targets) from one forward pass: one backward per target (:func:`capture_targets`). Hand
        ``others[i]`` its capture through ``group_layer_scores(cap=...)``."""
        x = x.to(self.device)
        labels = labels.to(self.device) if labels is not None else None
        scorers = [self, *others]
        need = any(m in NEEDS_GRAD for s in scorers for m in s.metrics)
        post = self._chains(x)
        for s in others:
            s._chains(x)  # their replacement-Taylor zeros
        targets = [s.target for s in scorers]
        caps = capture_targets(self.model, self.modules, self.graph, targets, x, labels, self._clone, need, post)
        if caps is None:  # an in-place op touched a kept tensor: redo (and keep doing) it safely
            self._clone = True
            caps = capture_targets(self.model, self.modules, self.graph, targets, x, labels, True, need, post)
        return caps

    def layer_scores(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None
                     ) -> Iterator[Tuple[int, LayerScores]]:
        """Yield ``(layer index, {metric: (nodes [B, C], edges [B, E_layer])})`` for every layer."""
        cap = self.capture(x, labels)
        self.last_outputs = cap.outputs  # layer outputs of this batch, for callers that also want them (exemplars)
        B = cap.x.shape[0]
        for li, layer in enumerate(self.graph.layers):
            nodes = self._node_scores(cap, layer, B)
            if layer.kind == "input":
                yield li, {m: (nodes[m], torch.zeros(B, 0, device=self.device)) for m in self.metrics}
                continue
            edges = self._edge_scores(cap, layer, B, self.metrics, nodes)
            yield li, {m: (nodes[m], edges[m]) for m in self.metrics}
        self.last_values = cap.values

    def _node_scores(self, cap: Captured, layer, B: int) -> Dict[str, torch.Tensor]:
        if layer.kind == "input":
            return map_scores(cap.x, cap.x_grad, self.metrics, B, layer.channels, None, self.device)
        mod = self.modules[layer.name]
        y, g = cap.outputs.get(layer.name), cap.grads.get(layer.name)
        # only the "weight" metric reads it (a pass over every weight per layer and batch otherwise)
        wmag = mod.weight.detach().abs().reshape(layer.channels, -1).mean(1) if "weight" in self.metrics else None
        nodes = map_scores(y, g, self.metrics, B, layer.channels, wmag, self.device)
        if layer.kind != "linear" and layer.name in cap.post_grads:
            nodes.update(replacement_node_taylor(cap.post[layer.name], cap.post_grads[layer.name],
                                                 self._zero[layer.name], self.metrics))
        return nodes

    def _edge_scores(self, cap: Captured, layer, B: int, metrics, nodes) -> Dict[str, torch.Tensor]:
        mod = self.modules[layer.name]
        a, g = cap.inputs.get(layer.name), cap.grads.get(layer.name)
        if layer.kind == "linear":
            return linear_edge_scores(mod, a, g, metrics, B, layer.in_channels)
        return conv_edge_scores(as_conv(mod), a, g, metrics, B, layer.out_size, self.chunk_elements,
                                nodes.get("gradient") if g is not None else None)

    def group_layer_scores(self, x: torch.Tensor, labels: Optional[torch.Tensor], groups: Sequence,
                           taylor_dtype: torch.dtype = torch.float64, cap: Optional[Captured] = None,
                           reuse: bool = False) -> Iterator[Tuple[int, LayerScores]]:
        """Yield ``(layer index, {metric: (nodes [G, C], edges [G, E_layer])})``: sums over each group of
        images (``groups``: index tensors or slices into the batch), float64 on the scorer's device.

        Node scores and the edge scores of the non-Taylor metrics are the per-image scores summed. The
        edges of ``taylor`` and ``taylor_signed`` are both the *signed* sums ``Σ_n T_n`` of the per-image
        kernel Taylor terms, from each group's batched weight gradient (:func:`group_taylor`, no
        per-image kernel products): the batch-gradient criterion, whose ``taylor`` score of a set is
        ``|Σ_n T_n| / n`` of the set's total (:func:`batch_set_score`). ``taylor_dtype`` float32 keeps
        those Taylor edge sums as the weight gradient computes them (the float64 copy of a 13M-edge
        layer cost prep's sparse pass 6-8 s of 55; widening a float32 to float64 is exact, so a caller
        that sums in float64 gets the same values).

        ``cap``: this scorer's capture of ``x`` made already (:meth:`capture_with`); ``reuse``: the
        float32 Taylor edges of a layer are written into a buffer kept for the next batch, so they are
        valid only until the generator is advanced (saves a weight-sized allocation per layer)."""
        if cap is None:
            cap = self.capture(x, labels)
        else:
            self._chains(cap.x)
        self.last_outputs = cap.outputs
        B = cap.x.shape[0]
        W = torch.zeros(len(groups), B, dtype=torch.float64, device=self.device)
        for r, idx in enumerate(groups):
            W[r, idx] = 1.0
        tay = [m for m in self.metrics if m in BATCH_METRICS]
        other = [m for m in self.metrics if m not in BATCH_METRICS]
        for li, layer in enumerate(self.graph.layers):
            nodes = {m: W @ v.double() for m, v in self._node_scores(cap, layer, B).items()}
            if layer.kind == "input":
                yield li, {m: (nodes[m], torch.zeros(len(groups), 0, dtype=torch.float64, device=self.device)) for m in self.metrics}
                continue
            edges = {}
            if other:
                edges = {m: W @ e.double() for m, e in self._edge_scores(cap, layer, B, other, {}).items()}
            if tay:
                a, g = cap.inputs.get(layer.name), cap.grads.get(layer.name)
                if a is None or g is None:
                    t = torch.zeros(len(groups), layer.num_edges, dtype=taylor_dtype, device=self.device)
                elif layer.kind == "linear":
                    buf = self._buffer(layer.name, (layer.channels, layer.in_channels), torch.float32, a.device, len(groups)) if reuse else None
                    t = group_linear_taylor(self.modules[layer.name], a, g, layer.in_channels, groups, out=buf).reshape(len(groups), -1)
                else:
                    conv = as_conv(self.modules[layer.name])
                    buf = self._buffer(layer.name, tuple(conv.weight.shape[:2]), a.dtype, a.device, len(groups)) if reuse else None
                    t = group_taylor(conv, a, g, groups, out=buf)
                    t = t.reshape(len(groups), -1)
                t = t.to(taylor_dtype)
                edges.update({m: t for m in tay})
            yield li, {m: (nodes[m], edges[m]) for m in self.metrics}
        self.last_values = cap.values

    def _buffer(self, name: str, shape, dtype, device, n: int) -> torch.Tensor:
        """A layer's reused [n, *shape] group Taylor output (``reuse=True``)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < n or tuple(buf.shape[1:]) != tuple(shape) or buf.dtype != dtype or buf.device != device:
            buf = self._bufs[name] = torch.empty((n, *shape), dtype=dtype, device=device)
        return buf[:n]

    def __call__(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Per-image scores of the whole graph: {metric: (nodes [B, N], edges [B, E])}."""
        parts = {m: ([], []) for m in self.metrics}
        for _, sc in self.layer_scores(x, labels):
            for m, (n, e) in sc.items():
                parts[m][0].append(n)
                parts[m][1].append(e)
        return {m: (torch.cat(n, 1), torch.cat(e, 1)) for m, (n, e) in parts.items()}

    def add_weighted(self, x: torch.Tensor, labels: Optional[torch.Tensor], weights: torch.Tensor,
                     into: Sequence[Dict[str, Tuple["np.ndarray", "np.ndarray"]]]) -> None:
        """``into[k][metric] += sum_b weights[k, b] * per-image scores`` (float64 numpy (nodes [N], edges [E]))
        layer by layer, so the per-image [B, E] matrix is never assembled: at ResNet-50 scale it is 860 MB
        per batch of 16, and concatenating it cost more than the scores."""
        W = weights.to(self.device, torch.float64)
        for li, sc in self.layer_scores(x, labels):
            l = self.graph.layers[li]
            nsl = slice(l.node_offset, l.node_offset + l.channels)
            esl = slice(l.edge_offset, l.edge_offset + (l.num_edges if l.kind != "input" else 0))
            for m, (n, e) in sc.items():
                rn = (W @ n.double()).cpu().numpy()
                re = (W @ e.double()).cpu().numpy() if e.shape[1] else None
                for k, acc in enumerate(into):
                    acc[m][0][nsl] += rn[k]
                    if re is not None:
                        acc[m][1][esl] += re[k]

