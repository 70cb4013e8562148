"""Real images for validation and exemplars, streamed in batches (never the whole set as floats)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Union

import numpy as np
import torch

from viscnn.errors import ViscnnError

ImageSource = Union[np.ndarray, torch.Tensor, Callable[[int], np.ndarray]]


def to_float_images(a, channels: int | None = None) -> torch.Tensor:
    """uint8/float array [B, H, W], [B, H, W, C] (C in 1, 3) or [B, C, H, W] -> float [B, C, H, W] in [0, 1]."""
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a)
    is_u8 = t.dtype == torch.uint8
    t = t.float() / 255.0 if is_u8 else t.float()
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif t.dim() == 4 and t.shape[1] not in (1, 3) and t.shape[3] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.dim() != 4:
        raise ViscnnError(f"expected a batch of images [B, H, W] or [B, C, H, W], got shape {tuple(t.shape)}")
    if channels is not None and t.shape[1] != channels:
        if t.shape[1] == 1 and channels == 3:
            t = t.expand(-1, 3, -1, -1)
        elif t.shape[1] == 3 and channels == 1:
            t = t.mean(1, keepdim=True)
        else:
            raise ViscnnError(f"images have {t.shape[1]} channels, the model reads {channels}")
    return t.contiguous()


def array_batches(images, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """Batches of float [B, C, H, W] in [0, 1] from a uint8/float array, converting one batch at a time."""
    for s in range(0, len(images), batch_size):
        yield to_float_images(images[s:s + batch_size])


def get_image(source: ImageSource, index: int) -> torch.Tensor:
    """One image as float [C, H, W] in [0, 1] from an array or a callable ``index -> array``."""
    a = source(int(index)) if callable(source) else source[int(index):int(index) + 1]
    t = to_float_images(a if callable(source) and np.ndim(a) == 4 else (a[None] if callable(source) else a))
    return t[0]


def iter_batches(batches: Iterable) -> Iterator[torch.Tensor]:
    for b in batches:
        yield to_float_images(b)
