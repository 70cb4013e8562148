"""SmoothGrad (Smilkov et al. 2017): the gradient map averaged over noisy copies of the input,
``x + N(0, sigma^2)`` with ``sigma = noise * (max(x) - min(x))`` per image (the paper's 10-20 %).

``abs=True`` (the default) averages ``|grad|``, as Captum's ``NoiseTunnel(Saliency)`` does; ``abs=False``
the signed gradient, as in the paper. The noise comes from a seeded CPU generator, so the same
``seed`` (and input dtype) gives the same map on every device; :meth:`SmoothGrad.noise` returns it. The predicted-class
target is the class predicted on the clean input. Noisy copies are made one forward+backward at a time.
"""

from __future__ import annotations

import torch

from viscnn.attribution.base import Attribution, ModelLike
from viscnn.errors import ViscnnError


class SmoothGrad(Attribution):
    """SmoothGrad of ``|grad|`` (magnitudes) or of the signed gradient, shape [N,C,H,W]."""

    name = "smoothgrad"
    signed = False

    def __init__(self, model: ModelLike, classes=None, device=None, samples: int = 25, noise: float = 0.15,
                 seed: int = 0, abs: bool = True, internal_batch_size: int = 32):
        super().__init__(model, classes, device)
        if int(samples) < 1 or not (0 <= float(noise) < 10):
            raise ViscnnError(f"SmoothGrad needs samples >= 1 and 0 <= noise < 10, got samples={samples}, noise={noise}")
        self.samples, self.noise_level, self.seed = int(samples), float(noise), int(seed)
        self.abs, self.internal_batch_size = bool(abs), int(internal_batch_size)
        self.signed = not self.abs

    def noise(self, x: torch.Tensor, first: int = 0, stop: int = None) -> torch.Tensor:
        """The noise added to ``x`` [N,C,H,W] for samples ``first..stop-1`` (default all):
        [samples, N, C, H, W]. Sample k has its own generator (seeded from ``seed`` and k), so any range
        of samples is drawn exactly as in the whole set."""
        stop = self.samples if stop is None else stop
        span = (x.reshape(len(x), -1).amax(1) - x.reshape(len(x), -1).amin(1)).double().cpu()
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        z = torch.stack([torch.randn(tuple(x.shape), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + k),
                                     dtype=dt) for k in range(first, stop)])
        return (z * (self.noise_level * span).to(dt).reshape(1, -1, 1, 1, 1)).to(x.device, x.dtype)

    def _attribute(self, x, targets, labels) -> torch.Tensor:
        targets = self.pin_predicted(x, targets)
        chunk = max(1, self.internal_batch_size // max(1, len(x)))
        w = torch.full((self.samples,), 1.0 / self.samples, dtype=x.dtype, device=x.device)
        # |grad| per sample (abs=True), so one sample's sign can't cancel another's
        return self.summed_gradients(lambda a, b: x.unsqueeze(0) + self.noise(x, a, b), self.samples, w, targets, labels,
                                     chunk, torch.abs if self.abs else None)
