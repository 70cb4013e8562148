"""Does a visualisation beat real images on its own objective?

For each objective, the highest value it reaches over a set of real images (streamed in batches,
early-exit forward passes) is compared with its value on the rendered image. A visualisation that
does not beat the best real image is flagged ``beats_real = False``: gradient ascent failed there
(or the unit is dead), and the app says so instead of showing the image as the unit's preference.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.featurevis.capture import Capture
from viscnn.featurevis.data import iter_batches
from viscnn.featurevis.objectives import Objective, all_values, as_objective, check_objectives
from viscnn.featurevis.render import FeatureVisResult, Normalize, Normalizer, in_channels_of
from viscnn.model_copy import working_copy


@torch.no_grad()
def best_real_values(model: nn.Module, objectives: Sequence[Union[str, Objective]], batches: Iterable,
                     normalize: Normalize = None, device=None) -> Tuple[np.ndarray, np.ndarray]:
    """(best value float32 [N], index of the image that reached it int64 [N]) over all batches.

    ``batches`` yields images in [0, 1] (float) or uint8, [B, H, W] or [B, C, H, W]."""
    objs = [as_objective(o) for o in objectives]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    net = working_copy(model).to(dev)
    c = in_channels_of(net)
    norm = Normalizer(normalize, c).to(dev)
    modules = dict(net.named_modules())
    best = torch.full((len(objs),), -float("inf"))
    arg = torch.full((len(objs),), -1, dtype=torch.int64)
    seen, checked = 0, False
    with Capture(net, set().union(*(o.needs for o in objs))) as cap:
        for x in iter_batches(batches):
            if x.shape[1] != c:
                raise ViscnnError(f"images have {x.shape[1]} channels, the model reads {c}")
            captured = cap(norm(x.to(dev)))
            if not checked:
                check_objectives(objs, net, {k: tuple(v.shape) for k, v in captured.items()})
                checked = True
            vals = all_values(objs, captured, modules).cpu()  # [N, B]
            v, i = vals.max(1)
            better = v > best
            best = torch.where(better, v, best)
            arg = torch.where(better, i + seen, arg)
            seen += x.shape[0]
    if not seen:
        raise ViscnnError("no real images to validate against")
    return best.numpy().astype(np.float32), arg.numpy()


def validate(result: FeatureVisResult, model: nn.Module, batches: Iterable, normalize: Normalize = None,
             device=None) -> FeatureVisResult:
    """Fill ``result.best_real`` and ``result.beats_real`` (objective on the image > best real value)."""
    best, _ = best_real_values(model, result.objectives, batches, normalize, device)
    result.best_real = best
    result.beats_real = np.asarray(result.objective > best)
    return result
