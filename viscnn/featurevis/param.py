"""Image parameterisation for feature visualisation: a Fourier-space image with decorrelated colour.

This is the small core of Lucid/Lucent's recipe (Olah et al., "Feature Visualization", Distill 2017),
written here rather than imported: torch-lucent is unmaintained and pins an old kornia, and the
core is ~60 lines. Optimising Fourier coefficients scaled by 1/frequency makes gradient steps
change low frequencies as much as high ones (plain pixel ascent drowns in high-frequency noise);
for RGB the three channels are mixed through the square root of ImageNet's colour correlation so
the optimiser works in decorrelated colour; a sigmoid maps to [0, 1]. Grayscale (1 channel) uses
the plain Fourier parameterisation.

The inverse FFT is periodic, so a pattern the objective wants at one border (a bright first column)
also pulls on the opposite border through the 1/f prior; those pixels saturate and get stuck. The
image is therefore parameterised on a canvas ``margin`` pixels larger on every side and cropped
(default ~1/7 of the size: 4 px at 28 px). On the default model this moved conv1 from 15/32 to
32/32 units beating their best real image.

Every image of a batch has its own coefficients, drawn from its own seed, so a unit's result does
not depend on which other units share its batch.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

# sqrt of ImageNet's RGB colour correlation matrix (Lucid/Lucent's constant)
_COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR_NORMALIZED = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))


def default_margin(size: Tuple[int, int]) -> int:
    return -(-max(size) // 7)


def frequency_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """[h, w//2+1] spectrum weights ~ 1/frequency (frequencies in cycles per image, floored at 1/max(h, w))."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fy * fy + fx * fx)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
    return torch.tensor(scale, dtype=torch.float32)  # with norm="ortho" this equals Lucid's sqrt(h*w)-scaled irfft


class FourierImage(torch.nn.Module):
    """A batch of ``n`` images of ``channels`` x ``size``, parameterised in decorrelated Fourier space
    on a canvas ``margin`` px larger on each side (cropped).

    ``forward()`` returns images in [0, 1], shape [n, channels, h, w].
    """

    def __init__(self, n: int, channels: int, size: Tuple[int, int], seeds: Sequence[int], sd: float = 0.01,
                 decay_power: float = 1.0, margin: int = 0):
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"feature visualisation supports 1 or 3 input channels, not {channels}")
        if len(seeds) != n:
            raise ValueError("one seed per image")
        self.out_size, self.margin = tuple(size), int(margin)
        h, w = size[0] + 2 * self.margin, size[1] + 2 * self.margin
        self.size, self.channels = (h, w), channels
        coeffs = []
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            coeffs.append(torch.randn(channels, h, w // 2 + 1, 2, generator=g) * sd)
        self.spectrum = torch.nn.Parameter(torch.stack(coeffs))
        self.register_buffer("scale", frequency_scale(h, w, decay_power))
        self.register_buffer("color", torch.tensor(_COLOR_NORMALIZED))

    def _logits(self, k: float = 1.0) -> torch.Tensor:
        """``k`` times the pre-sigmoid image, cropped to ``out_size`` (a strided view of the canvas).

        Colour mixing and scaling act on the half-size spectrum (the inverse FFT is linear), so the
        full-size image is made by one inverse FFT and nothing else."""
        h, w = self.size
        n, c = self.spectrum.shape[:2]
        spec = self.spectrum
        if self.channels == 3:
            spec = torch.matmul(self.color, spec.reshape(n, c, -1)).view_as(spec)
        spec = spec * (self.scale * (k / 4.0))[None, None, :, :, None]  # Lucent's "magic" 1/4
        img = torch.fft.irfftn(torch.view_as_complex(spec), s=(h, w), norm="ortho")
        mg = self.margin
        return img[:, :, mg:mg + self.out_size[0], mg:mg + self.out_size[1]] if mg else img

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self._logits())

    def signed(self) -> torch.Tensor:
        """The same images as ``2 * forward() - 1``, in (-1, 1) with gray at 0 (what the optimisation
        loop transforms: padding with zeros is padding with gray). ``2 sigmoid(z) - 1 = tanh(z / 2)``."""
        return torch.tanh(self._logits(0.5))
