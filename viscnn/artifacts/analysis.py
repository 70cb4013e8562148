"""The whole artifact analysis of one model at one input size, and its JSON form.

Order of work: the padding audit first (shapes only, so a size too small for the model fails in
a fraction of a second), then the mean maps under the baseline, the drill-down layer's channel
maps under the same baseline, and the mean patches over the patch images. Conv layers are the
Conv2d modules the traced forward calls (the graph's conv layers), named by module path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
from torch import nn

from viscnn.artifacts.baselines import baseline_batches, baseline_count, is_constant
from viscnn.artifacts.mean_maps import ChannelMaps, MeanMap, channel_maps, mean_maps
from viscnn.artifacts.padding import PaddingAuditor
from viscnn.artifacts.patches import PatchKernel, mean_patches
from viscnn.artifacts.scores import artifact_score, rank_maps, score_name
from viscnn.artifacts.taps import resolve_layers, traced_copy
from viscnn.errors import ViscnnError

FORMAT, VERSION = "viscnn.artifacts", 1
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass
class Analysis:
    model: str
    input_shape: tuple
    normalize: Optional[dict]
    baseline: str
    stage: str
    padding: dict
    mean_maps: List[MeanMap]
    layer_scores: List[float]
    drill: Optional[ChannelMaps] = None
    drill_scores: List[float] = field(default_factory=list)
    drill_order: List[int] = field(default_factory=list)
    patches: List[PatchKernel] = field(default_factory=list)
    patch_source: str = ""
    seconds: dict = field(default_factory=dict)

    @property
    def score_name(self) -> str:
        return score_name(is_constant(self.baseline))

    def to_json(self) -> dict:
        d = {"format": FORMAT, "version": VERSION, "model": self.model, "input_shape": list(self.input_shape),
             "normalize": self.normalize, "baseline": self.baseline, "stage": self.stage,
             "score": self.score_name, "padding": self.padding,
             "mean_maps": [dict(m.to_json(), score=s) for m, s in zip(self.mean_maps, self.layer_scores)],
             "seconds": self.seconds}
        if self.drill is not None:
            d["drilldown"] = {"layer": self.drill.layer, "stage": self.drill.stage, "tap": self.drill.tap,
                              "images": self.drill.images, "shape": list(self.drill.maps.shape),
                              "order": self.drill_order, "scores": [float(f"{s:.6g}") for s in self.drill_scores]}
        d["patches"] = {"source": self.patch_source, "images": self.patches[0].images if self.patches else 0,
                        "layers": [p.to_json() for p in self.patches]}
        return d


def check_layer(model: nn.Module, layer: Optional[str]) -> None:
    """Fail before any heavy work when ``layer`` is not a conv of the model."""
    if layer is not None:
        resolve_layers(traced_copy(model), [layer])


def analyse(model: nn.Module, input_shape: Sequence[int], normalize: Optional[dict] = None, baseline: str = "random:8",
            images: Optional[str] = None, patch_images: int = 256, stage: str = "conv", layer: Optional[str] = None,
            batch_size: int = 16, device: str = "cpu", model_name: str = "", search: int = 256,
            drill: bool = True, patches: bool = True,
            progress: Optional[Callable[[int, int], None]] = None) -> Analysis:
    """Padding audit, mean maps, drill-down and mean patches of ``model`` at ``input_shape`` (C, H, W).

    The baseline feeds the mean maps and the drill-down (default layer: the one whose mean map
    scores highest). Mean patches are averaged over ``patch_images`` images of ``images`` (an
    image-set spec) or, without it, of the uniform random baseline ``random:patch_images``.
    ``progress(percent done, 100)``: the padding audit, mean maps and drill-down count 10 each, the
    patches (the long part) the rest, image by image."""
    c, h, w = (int(v) for v in input_shape)
    share = {1: 10, 2: 20, 3: 30} if patches else {1: 33, 2: 66, 3: 100}
    step = (lambda k: progress(share[k] if k in share else 100, 100)) if progress else (lambda k: None)
    if progress:
        progress(0, 100)
    t0 = time.perf_counter()
    auditor = PaddingAuditor(model, c, model_name)
    pad = auditor.report((h, w), search)
    check_layer(model, layer)
    sec = {"padding": time.perf_counter() - t0}
    step(1)
    baseline_count(baseline)  # validates random:K before any forward pass
    t = time.perf_counter()
    maps = mean_maps(model, baseline_batches(baseline, (c, h, w), normalize, batch_size), stage=stage, device=device)
    sec["mean_maps"] = time.perf_counter() - t
    step(2)
    const = is_constant(baseline)
    scores = [artifact_score(m.map, const) for m in maps]
    a = Analysis(model_name or type(model).__name__, (c, h, w), normalize, baseline, stage, pad, maps, scores, seconds=sec)
    if drill and maps:
        name = layer or maps[int(np.argmax(scores))].layer
        t = time.perf_counter()
        a.drill = channel_maps(model, name, baseline_batches(baseline, (c, h, w), normalize, batch_size), stage, device)
        a.drill_scores = [artifact_score(m, const) for m in a.drill.maps]
        a.drill_order = rank_maps(a.drill.maps, const)
        sec["drilldown"] = time.perf_counter() - t
    step(3)
    if patches:
        if patch_images < 1:
            raise ViscnnError("the number of patch images must be at least 1")
        t = time.perf_counter()
        if images:
            from viscnn.data import open_images

            src = open_images(images, (c, h, w))
            a.patch_source = f"{images} (first {min(len(src), patch_images)})"
            batches = src.batches(batch_size, (c, h, w), normalize, patch_images)
        else:
            a.patch_source = f"random:{patch_images}"
            batches = baseline_batches(a.patch_source, (c, h, w), normalize, batch_size)
        if progress:
            batches = _counted(batches, min(patch_images, len(src)) if images else patch_images,
                               lambda f: progress(30 + int(70 * f), 100))
        a.patches = mean_patches(model, batches, device=device)
        sec["patches"] = time.perf_counter() - t
        step(4)
    a.seconds = {k: round(v, 3) for k, v in sec.items()}
    return a


def _counted(batches, total: int, report):
    """``batches`` passed through, reporting the fraction of ``total`` images seen after each."""
    seen = 0
    for b in batches:
        yield b
        seen += int(b[0].shape[0])
        report(min(1.0, seen / max(total, 1)))
