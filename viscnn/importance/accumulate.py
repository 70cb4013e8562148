"""Streaming per-image-set score sums: one pass over the data, any number of overlapping sets.

Per-image scores are scatter-added into [n_sets, ...] rows with one matmul per layer
(``membership[B, S]ᵀ @ scores[B, n]``), in float64, so a distributed run can all-reduce
``sums`` and ``counts`` and get exactly the means of a single run.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.metrics import check_metrics
from viscnn.importance.scorer import Scorer
from viscnn.importance.targets import Target

Batches = Iterable[Tuple[torch.Tensor, Optional[torch.Tensor]]]


class ScoreAccumulator:
    """Sums of per-image scores per image set: ``sums[metric] = (nodes [S, N], edges [S, E])``."""

    def __init__(self, graph: Graph, metrics: Sequence[str], set_names: Sequence[str] = ("all",)):
        self.graph = graph
        self.metrics = check_metrics(metrics)
        self.set_names = list(set_names)
        S = len(self.set_names)
        self.sums = {m: (np.zeros((S, graph.num_nodes)), np.zeros((S, graph.num_edges))) for m in self.metrics}
        self.counts = np.zeros(S, np.int64)

    def add_layer(self, layer_index: int, scores: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
                  membership: torch.Tensor) -> None:
        """Add one layer's per-image scores; ``membership`` [B, S] (1 where image b is in set s)."""
        layer = self.graph.layers[layer_index]
        M = membership.to(dtype=torch.float64)
        for m, (n, e) in scores.items():
            Mt = M.to(n.device).T
            self.sums[m][0][:, layer.node_offset:layer.node_offset + layer.channels] += (Mt @ n.double()).cpu().numpy()
            if e.shape[1]:
                self.sums[m][1][:, layer.edge_offset:layer.edge_offset + layer.num_edges] += (Mt @ e.double()).cpu().numpy()

    def add_images(self, membership: torch.Tensor) -> None:
        self.counts += membership.to(torch.int64).sum(0).cpu().numpy()

    def merge(self, other: "ScoreAccumulator") -> None:
        """Add another accumulator's sums (same graph, metrics and sets)."""
        if other.set_names != self.set_names or other.metrics != self.metrics:
            raise ViscnnError("cannot merge score accumulators with different sets or metrics")
        for m in self.metrics:
            self.sums[m][0][:] += other.sums[m][0]
            self.sums[m][1][:] += other.sums[m][1]
        self.counts += other.counts

    def means(self) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """{metric: (nodes [S, N], edges [S, E])} float32 means; a set with no image gives zeros."""
        c = np.maximum(self.counts, 1)[:, None]
        return {m: ((n / c).astype(np.float32), (e / c).astype(np.float32)) for m, (n, e) in self.sums.items()}


def class_membership(n_classes: int) -> Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]:
    """A ``set_ids_fn`` for sets ``[class 0, ..., class K-1, "all"]``: one-hot label plus all."""
    def fn(x, y):
        if y is None:
            raise ViscnnError("per-class image sets need labelled images")
        M = torch.zeros(len(y), n_classes + 1)
        M[torch.arange(len(y)), y.long().cpu()] = 1
        M[:, -1] = 1
        return M
    return fn


def score_batches(model: nn.Module, graph: Graph, target: Union[str, Target], batches: Batches,
                  metrics: Sequence[str] = ("taylor",), set_ids_fn=None, set_names: Sequence[str] = ("all",),
                  device=None, classes: Optional[Sequence[str]] = None, progress: bool = False) -> ScoreAccumulator:
    """One pass over ``batches`` of ``(x, labels or None)``; per-set sums in a :class:`ScoreAccumulator`.

    ``set_ids_fn(x, y) -> [B, S]`` membership (default: every image in every set). Labels are the
    ``loss`` target's labels; with none, the model's own prediction is used.
    """
    scorer = Scorer(model, graph, target, metrics, device=device, classes=classes)
    acc = ScoreAccumulator(graph, metrics, set_names)
    it = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, desc="scores", unit="batch")
    for x, y in it:
        M = set_ids_fn(x, y) if set_ids_fn is not None else torch.ones(x.shape[0], len(acc.set_names))
        if M.shape != (x.shape[0], len(acc.set_names)):
            raise ViscnnError(f"set_ids_fn returned shape {tuple(M.shape)}, expected {(x.shape[0], len(acc.set_names))}")
        for li, sc in scorer.layer_scores(x, y):
            acc.add_layer(li, sc, M)
        acc.add_images(M)
    return acc


def compute_scores(model: nn.Module, graph: Graph, target: Union[str, Target], batches: Batches,
                   metrics: Sequence[str] = ("taylor",), device=None, classes: Optional[Sequence[str]] = None
                   ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Mean scores of ``target`` over all images: {metric: (nodes [N], edges [E])}."""
    acc = score_batches(model, graph, target, batches, metrics, device=device, classes=classes)
    if acc.counts[0] == 0:
        raise ViscnnError("no images to score")
    return {m: (n[0], e[0]) for m, (n, e) in acc.means().items()}
