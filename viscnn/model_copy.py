"""Working copies of the user's model: never mutate theirs (in-place flags, hooks, modes)."""

from __future__ import annotations

import copy

from torch import nn


def working_copy(model: nn.Module, eval_mode: bool = True) -> nn.Module:
    """A deep copy in eval mode with every module-level ``inplace`` flag off, so hooks that keep a
    conv output never see it overwritten by a following ReLU."""
    m = copy.deepcopy(model)
    if eval_mode:
        m.eval()
    for mod in m.modules():
        if hasattr(mod, "inplace") and isinstance(getattr(mod, "inplace"), bool):
            mod.inplace = False
    for p in m.parameters():
        p.requires_grad_(False)
    return m
