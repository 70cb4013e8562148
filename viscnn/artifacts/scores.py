"""Artifact scores of one 2D map, used to order the drill-down (most suspicious first).

Two scores, each scale-free (multiplying a map by a constant does not change it):

``border_contrast(m) = |mean(border) - mean(interior)| / (std(m) + eps)``
    ``border`` is the 1-pixel frame of the map, ``interior`` everything inside it. Padding lines
    (the paper's Fig. 1/2 line artifacts) put the frame far from the rest; a map whose frame looks
    like its interior scores ~0. Maps smaller than 3x3 have no interior and score 0.

``deviation_from_constant(m) = std(m) / (mean(|m|) + eps)``
    Under a spatially constant input (zero, black, white) an artifact-free map is constant away
    from the effects of padding and striding, so *any* spatial variation is an artifact (lines,
    grids, checkerboards; the paper's Fig. 4). 0 for a constant map, including an all-zero
    (dead) one.

:func:`artifact_score` picks ``deviation_from_constant`` for constant baselines and
``border_contrast`` otherwise. ``eps`` keeps constant maps at 0 instead of 0/0.
"""

from __future__ import annotations

from typing import List

import numpy as np

EPS = 1e-8


def border_contrast(m: np.ndarray, eps: float = EPS) -> float:
    m = np.asarray(m, np.float64)
    if m.ndim != 2 or min(m.shape) < 3:
        return 0.0
    interior = m[1:-1, 1:-1]
    frame_sum = m.sum() - interior.sum()
    frame_mean = frame_sum / (m.size - interior.size)
    return float(abs(frame_mean - interior.mean()) / (m.std() + eps))


def deviation_from_constant(m: np.ndarray, eps: float = EPS) -> float:
    m = np.asarray(m, np.float64)
    if m.size == 0:
        return 0.0
    return float(m.std() / (np.abs(m).mean() + eps))


def artifact_score(m: np.ndarray, constant_input: bool = False) -> float:
    """``deviation_from_constant`` under a constant input, else ``border_contrast``."""
    return deviation_from_constant(m) if constant_input else border_contrast(m)


def score_name(constant_input: bool) -> str:
    return "deviation_from_constant" if constant_input else "border_contrast"


def rank_maps(maps: np.ndarray, constant_input: bool = False) -> List[int]:
    """Channel indices of ``maps`` [C, H, W], highest artifact score first (ties: lower index)."""
    s = np.array([artifact_score(m, constant_input) for m in np.asarray(maps)])
    return [int(i) for i in np.lexsort((np.arange(len(s)), -s))]
