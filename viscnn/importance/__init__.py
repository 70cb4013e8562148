"""Importance scores (targets, metrics, image sets) and circuits extracted from them.

Public entry points: :func:`parse_target`, :func:`compute_scores`, :func:`score_batches`,
:class:`ScoreAccumulator`, :class:`Scorer`, :func:`extract_circuit`, :class:`Circuit`,
:func:`faithfulness`.
"""

from viscnn.importance.accumulate import ScoreAccumulator, class_membership, compute_scores, score_batches
from viscnn.importance.circuits import Circuit, extract_circuit
from viscnn.importance.faithfulness import faithfulness, masked_model
from viscnn.importance.metrics import METRICS
from viscnn.importance.scorer import Scorer
from viscnn.importance.targets import Target, parse_target

__all__ = ["ScoreAccumulator", "class_membership", "compute_scores", "score_batches", "Circuit", "extract_circuit",
           "METRICS", "Scorer", "Target", "parse_target", "faithfulness", "masked_model"]
