"""Working copies of the user's model: never mutate theirs (in-place flags, hooks, modes)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def working_copy(model: nn.Module, eval_mode: bool = True, channels_last: bool = False) -> nn.Module:
    """A deep copy in eval mode with every module-level ``inplace`` flag off, so hooks that keep a
    conv output never see it overwritten by a following ReLU.

    ``channels_last``: store 4D weights channels-last, so convolutions and pooling produce
    channels-last maps (same values; on CPU about 1.4x faster forward+backward for small CNNs
    and ~6x faster max-pooling, measured on the default model)."""
    m = copy.deepcopy(model)
    if channels_last:  # 4D weights only (Module.to(memory_format=...) fails on any 5D tensor)
        for prm in m.parameters():
            if prm.dim() == 4:
                prm.data = prm.data.contiguous(memory_format=torch.channels_last)
    if eval_mode:
        m.eval()
    for mod in m.modules():
        if hasattr(mod, "inplace") and isinstance(getattr(mod, "inplace"), bool):
            mod.inplace = False
    for p in m.parameters():
        p.requires_grad_(False)
    return m
