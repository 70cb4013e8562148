"""Per-image node and edge scores of batches of images, layer by layer.

:class:`Scorer` owns a working copy of the model (the user's model is never touched) and
yields each layer's per-image scores, so callers can stream them into per-set sums
(:mod:`viscnn.importance.accumulate`) without ever holding [images, edges] for the whole net.
"""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from viscnn.graph.structure import Graph
from viscnn.importance.capture import Captured, capture, layer_modules
from viscnn.importance.convmath import CHUNK_ELEMENTS, as_conv
from viscnn.importance.metrics import (NEEDS_GRAD, check_metrics, conv_edge_scores, linear_edge_scores, map_scores,
                                       replacement_node_taylor)
from viscnn.importance.node_scores import chain_zero, elementwise_chains
from viscnn.importance.targets import Target, parse_target
from viscnn.model_copy import working_copy

LayerScores = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # metric -> (nodes [B, C], edges [B, E_layer])


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
        x = x.to(self.device)
        labels = labels.to(self.device) if labels is not None else None
        need = any(m in NEEDS_GRAD for m in self.metrics)
        post = self._chains(x)
        cap = capture(self.model, self.modules, self.graph, self.target, x, labels, self._clone, need, post)
        if cap is None:  # an in-place op touched a kept tensor: redo (and keep doing) it safely
            self._clone = True
            cap = capture(self.model, self.modules, self.graph, self.target, x, labels, True, need, post)
        return cap

    def layer_scores(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None
                     ) -> Iterator[Tuple[int, LayerScores]]:
        """Yield ``(layer index, {metric: (nodes [B, C], edges [B, E_layer])})`` for every layer."""
        cap = self.capture(x, labels)
        self.last_outputs = cap.outputs  # layer outputs of this batch, for callers that also want them (exemplars)
        B = cap.x.shape[0]
        for li, layer in enumerate(self.graph.layers):
            if layer.kind == "input":
                nodes = map_scores(cap.x, cap.x_grad, self.metrics, B, layer.channels, None, self.device)
                yield li, {m: (nodes[m], torch.zeros(B, 0, device=self.device)) for m in self.metrics}
                continue
            mod = self.modules[layer.name]
            a, y, g = cap.inputs.get(layer.name), cap.outputs.get(layer.name), cap.grads.get(layer.name)
            wmag = mod.weight.detach().abs().reshape(layer.channels, -1).mean(1)
            if layer.kind == "linear":
                nodes = map_scores(y, g, self.metrics, B, layer.channels, wmag, self.device)
                edges = linear_edge_scores(mod, a, g, self.metrics, B, layer.in_channels)
            else:
                nodes = map_scores(y, g, self.metrics, B, layer.channels, wmag, self.device)
                if layer.name in cap.post_grads:
                    nodes.update(replacement_node_taylor(cap.post[layer.name], cap.post_grads[layer.name],
                                                         self._zero[layer.name], self.metrics))
                edges = conv_edge_scores(as_conv(mod), a, g, self.metrics, B, layer.out_size, self.chunk_elements,
                                         nodes.get("gradient") if g is not None else None)
            yield li, {m: (nodes[m], edges[m]) for m in self.metrics}
        self.last_values = cap.values

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

