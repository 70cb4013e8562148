"""The own-class logit target of the scoring pass: per image, the logit of its own label.

``class:K`` over the images of K is the app's most common question. Backpropagating
``sum_b logits[b, y_b]`` once gives, for every image b, the gradient of its own ``class:y_b``
(in eval mode the images of a batch do not interact), so one extra backward per batch yields the
per-image scores of ``class:K`` for every image of every class K at once, instead of one pass per class.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from viscnn.errors import ViscnnError
from viscnn.importance.targets import Target, Term


class OwnClassTarget(Target):
    """``logits[b, labels[b]]`` per image; the Scorer treats it like any output target."""

    def __init__(self) -> None:
        super().__init__([(1.0, Term("class", channel=0))], "own-class logit")  # a class term: the full forward runs

    def evaluate(self, logits: Optional[torch.Tensor], maps: Dict[str, torch.Tensor],
                 labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels is None:
            raise ViscnnError("own-class scores need labelled images")
        if logits is None or logits.dim() != 2:
            raise ViscnnError(f"own-class scores need a model output of shape [batch, classes]; got "
                              f"{None if logits is None else tuple(logits.shape)}")
        return logits.gather(1, labels.to(logits.device).long()[:, None])[:, 0]


def class_score_metrics(cfg) -> List[str]:
    """The configured metrics that depend on the target (the gradient ones), when ``run.class_scores``
    is on. ``activation`` and ``weight`` do not: their own-class scores are the loss scores' class rows."""
    from viscnn.importance.metrics import NEEDS_GRAD

    if not cfg["run"].get("class_scores", True):
        return []
    return [m for m in cfg["run"]["metrics"] if m in NEEDS_GRAD]
