"""The entry point ``viscnn prep`` uses: per-image scores of the ``loss`` target for a batch."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from viscnn.graph.structure import Graph
from viscnn.importance.scorer import Scorer


class BatchScorer:
    """``BatchScorer(model, graph, metrics)(x, y) -> {metric: (nodes [B, N], edges [B, E])}``,
    per image, for the target ``loss`` against the labels ``y`` (the model's prediction if None)."""

    def __init__(self, model: nn.Module, graph: Graph, metrics: Sequence[str], device=None, target: str = "loss"):
        self.scorer = Scorer(model, graph, target, metrics, device=device)

    def __call__(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        return self.scorer(x, y)

    def add_weighted(self, x: torch.Tensor, y: Optional[torch.Tensor], weights: torch.Tensor, into) -> None:
        """Weighted per-image sums added in place (:meth:`viscnn.importance.scorer.Scorer.add_weighted`)."""
        self.scorer.add_weighted(x, y, weights, into)

    @property
    def last_outputs(self) -> Dict[str, torch.Tensor]:
        """Every graph layer's output on the last batch (detached), by layer name."""
        return self.scorer.last_outputs
