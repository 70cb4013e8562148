"""Run a model up to the tensors an objective reads, and no further.

Forward hooks on a working copy keep the needed outputs (or, for edges, the conv's input); once
all are kept a private exception stops the forward pass, so rendering ``features.3`` of AlexNet
never pays for the later convs or the 37M-parameter classifier, and the backward pass is as short.

Every kept tensor is NCHW: a Linear over the channels of an NHWC map (ConvNeXt's pointwise layers,
1x1 conv layers of the graph) gives its input and output as NCHW views, so objectives index the
channels of every graph layer the same way.
"""

from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.importance.capture import channels_last, nchw


class _Stop(Exception):
    pass


class Capture:
    """``Capture(model, {(layer, "out"|"in"), ...})(x) -> {(layer, which): tensor}``."""

    def __init__(self, model: nn.Module, needs: Iterable[Tuple[str, str]], early_exit: bool = True):
        self.model = model
        self.needs = set(needs)
        self.early_exit = early_exit
        self.captured: Dict[Tuple[str, str], torch.Tensor] = {}
        mods = dict(model.named_modules())
        self._handles = []
        for layer in sorted({l for l, _ in self.needs}):
            if layer not in mods or layer == "":
                raise ViscnnError(f"no module {layer!r} in the model")
            if (layer, "in") in self.needs:  # a pre-hook: an input-only capture stops before the module runs
                self._handles.append(mods[layer].register_forward_pre_hook(self._pre_hook(layer)))
            if (layer, "out") in self.needs:
                self._handles.append(mods[layer].register_forward_hook(self._hook(layer)))

    def _done(self) -> None:
        if self.early_exit and len(self.captured) == len(self.needs):
            raise _Stop()

    def _pre_hook(self, layer: str):
        def hook(module, inputs):
            a = inputs[0]
            self.captured[(layer, "in")] = nchw(a) if channels_last(module, a) else a
            self._done()
        return hook

    def _hook(self, layer: str):
        def hook(module, inputs, output):
            self.captured[(layer, "out")] = nchw(output) if channels_last(module, output) else output
            self._done()
        return hook

    def __call__(self, x: torch.Tensor) -> Dict[Tuple[str, str], torch.Tensor]:
        self.captured = {}
        try:
            self.model(x)
        except _Stop:
            pass
        missing = self.needs - set(self.captured)
        if missing:
            raise ViscnnError(f"the forward pass never ran {', '.join(sorted(l for l, _ in missing))}")
        out, self.captured = self.captured, {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
