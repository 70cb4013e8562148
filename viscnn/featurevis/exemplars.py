"""Dataset exemplars: per unit, the k real images that activate it most, and crops around the peak.

A unit's score on an image is the maximum of its channel map (the strongest spatial position),
which is also where the crop is centred. Images are streamed in batches and only a running [C, k]
table per layer is kept; ties go to the lower image index, so results do not depend on batch size.
Crops are the unit's receptive field at the peak (:mod:`viscnn.receptive_field`), unclipped: the
part of the field outside the image is filled with gray, so the peak stays at the crop's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.featurevis.capture import Capture
from viscnn.featurevis.data import ImageSource, get_image, iter_batches
from viscnn.featurevis.render import Normalize, Normalizer, in_channels_of
from viscnn.model_copy import working_copy
from viscnn.receptive_field import ReceptiveFields


@dataclass
class Exemplars:
    layer: str
    index: np.ndarray  # int64 [C, k] image indices, best first
    value: np.ndarray  # float32 [C, k] max of the channel map on that image
    pos: np.ndarray  # int32 [C, k, 2] (y, x) of that max in the layer's map

    def to_json(self) -> dict:
        """The prepped model's ``exemplars/LAYER.json``."""
        return {"layer": self.layer, "image_index": self.index.tolist(), "value": self.value.tolist(),
                "pos": self.pos.tolist()}


@torch.no_grad()
def top_exemplars(model: nn.Module, layers: Sequence[str], batches: Iterable, k: int = 8,
                  normalize: Normalize = None, device=None) -> Dict[str, Exemplars]:
    """Top-``k`` images per channel of each layer (module paths, or a Graph's conv layers)."""
    if hasattr(layers, "conv_layers"):
        layers = [l.name for l in layers.conv_layers()]
    layers = list(layers)
    if not layers or k < 1:
        raise ViscnnError("top_exemplars needs at least one layer and k >= 1")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    net = working_copy(model, channels_last=True).to(dev)
    c = in_channels_of(net)
    norm = Normalizer(normalize, c).to(dev)
    state: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    seen = 0
    with Capture(net, {(l, "out") for l in layers}) as cap:
        for x in iter_batches(batches):
            captured = cap(norm(x.to(dev)))
            b = x.shape[0]
            for l in layers:
                a = captured[(l, "out")]
                if a.dim() != 4:
                    raise ViscnnError(f"layer {l} does not output a 4D [N, C, H, W] map")
                w = a.shape[3]
                v, flat = a.flatten(2).max(2)  # [B, C] first maximum
                v, flat = v.T.cpu().numpy(), flat.T.cpu().numpy()  # [C, B]
                idx = np.broadcast_to(np.arange(seen, seen + b), v.shape)
                pos = np.stack([flat // w, flat % w], -1)
                if l in state:  # earlier entries first: a stable sort then prefers lower indices
                    ov, oi, op = state[l]
                    v, idx, pos = np.concatenate([ov, v], 1), np.concatenate([oi, idx], 1), np.concatenate([op, pos], 1)
                order = np.argsort(-v, axis=1, kind="stable")[:, :k]
                state[l] = (np.take_along_axis(v, order, 1), np.take_along_axis(idx, order, 1),
                            np.take_along_axis(pos, order[..., None], 1))
            seen += b
    if not seen:
        raise ViscnnError("no images to find exemplars in")
    return {l: Exemplars(l, s[1].astype(np.int64), s[0].astype(np.float32), s[2].astype(np.int32))
            for l, s in state.items()}


def crop_box(image: torch.Tensor, box: Tuple[int, int, int, int], fill: float = 0.5) -> torch.Tensor:
    """[C, H, W] -> [C, y1-y0, x1-x0]; the parts of the box outside the image are ``fill``."""
    y0, y1, x0, x1 = box
    c, h, w = image.shape
    out = torch.full((c, y1 - y0, x1 - x0), fill, dtype=image.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if sy0 < sy1 and sx0 < sx1:
        out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
    return out


def exemplar_crops(images: ImageSource, ex: Exemplars, rf: ReceptiveFields, size: Tuple[int, int] = (32, 32)) -> np.ndarray:
    """uint8 [C, k, h, w, 3]: each exemplar's receptive field at its peak, resized to ``size``.

    ``images`` is the indexable set the batches came from ([N, ...] array) or ``index -> image``."""
    table = rf.table(ex.layer, clip=False)
    c, k = ex.index.shape
    h, w = size
    out = np.zeros((c, k, h, w, 3), np.uint8)
    for ch in range(c):
        for r in range(k):
            img = get_image(images, ex.index[ch, r])
            y, x = ex.pos[ch, r]
            crop = crop_box(img, (*table.rows[y], *table.cols[x]))
            big = crop.shape[1] > h or crop.shape[2] > w
            t = F.interpolate(crop[None], size=(h, w), mode="bilinear" if big else "nearest",
                              antialias=big, align_corners=False if big else None)[0]
            a = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            out[ch, r] = np.repeat(a, 3, 2) if a.shape[2] == 1 else a
    return out
