"""Integrated gradients (Sundararajan et al. 2017): ``(x - x0) * integral_0^1 d target / d input at
x0 + alpha (x - x0) d alpha``, the integral by a quadrature rule, named and placed as in Captum. The
one difference: our ``riemann_trapezoid`` weights sum to 1 (ends 1/(2(n-1)), inner 1/(n-1)), Captum's
to (n-1)/n (ends 1/(2n), inner 1/n), so Captum's trapezoid attributions are ours times (n-1)/n.

The baseline ``x0`` is in the model's input space: ``None`` (zeros: for mean/std-normalised inputs, the
dataset's mean colour), a number, or a tensor broadcastable to the inputs. The predicted-class target
is the class predicted on ``x``, held fixed along the path. :meth:`IntegratedGradients.convergence_delta`
reports how far the attributions' sum is from ``target(x) - target(x0)`` (completeness).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.attribution.target_spec import PerImageTargets
from viscnn.errors import ViscnnError

RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def quadrature(n: int, method: str = "gausslegendre") -> Tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` of an ``n``-point rule on [0, 1] (the ones Captum uses)."""
    if int(n) < 1 or (method == "riemann_trapezoid" and int(n) < 2):
        raise ViscnnError(f"integrated gradients needs at least {2 if method == 'riemann_trapezoid' else 1} steps, got {n}")
    n = int(n)
    if method == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (t + 1), 0.5 * w
    if method == "riemann_trapezoid":
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] *= 0.5
        return np.linspace(0, 1, n), w
    start = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}.get(method)
    if start is None:
        raise ViscnnError(f"unknown integration method {method!r}; use one of {', '.join(RULES)}")
    return (np.arange(n) + start) / n, np.full(n, 1.0 / n)


class IntegratedGradients(Attribution):
    """Integrated gradients, signed, shape [N,C,H,W]."""

    name = "integrated_gradients"

    def __init__(self, model: ModelLike, classes=None, device=None, steps: int = 32, method: str = "gausslegendre",
                 internal_batch_size: int = 32):
        super().__init__(model, classes, device)
        quadrature(steps, method)  # a bad rule or step count fails now
        self.steps, self.method, self.internal_batch_size = int(steps), method, int(internal_batch_size)

    def baseline_for(self, x: torch.Tensor, baseline) -> torch.Tensor:
        if baseline is None:
            return torch.zeros_like(x)
        b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        try:
            return torch.broadcast_to(b, x.shape).clone()
        except RuntimeError:
            raise ViscnnError(f"baseline of shape {tuple(b.shape)} does not broadcast to the inputs {tuple(x.shape)}") from None

    def attribute(self, inputs: torch.Tensor, target=None, labels=None, batch_size=None, baseline=None) -> torch.Tensor:
        return super().attribute(inputs, target, labels, batch_size, baseline=baseline)

    def _attribute(self, x, targets, labels, baseline=None) -> torch.Tensor:
        x0 = self.baseline_for(x, baseline)
        targets = self.pin_predicted(x, targets)
        alphas, weights = quadrature(self.steps, self.method)
        a = torch.as_tensor(alphas, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1, 1)
        diff = x - x0
        points = lambda i, j: x0.unsqueeze(0) + a[i:j] * diff.unsqueeze(0)  # [j - i, N, C, H, W]
        chunk = max(1, self.internal_batch_size // max(1, len(x)))
        g = self.summed_gradients(points, self.steps, torch.as_tensor(weights, dtype=x.dtype, device=x.device),
                                  targets, labels, chunk)
        return diff * g

    def convergence_delta(self, inputs: torch.Tensor, attributions: torch.Tensor, target=None, labels=None,
                          baseline=None) -> torch.Tensor:
        """Per image ``sum(attributions) - (target(x) - target(x0))`` [N]: 0 for the exact integral."""
        x = self.prepare(inputs)
        x0 = self.baseline_for(x, baseline)
        targets = self.pin_predicted(x, self.targets(target, x))
        lab = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=x.device).reshape(-1)
        v = self.target_values(torch.cat([x, x0]), PerImageTargets(targets.items * 2),
                               None if lab is None else lab.repeat(2))
        n = len(x)
        return attributions.to(v).reshape(n, -1).sum(1) - (v[:n] - v[n:])
