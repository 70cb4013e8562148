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


class TopK:
    """Running top-``k`` (value, image index, peak position) per channel of each layer.

    Entries are ordered by value, descending, then by image index, ascending: the result does not
    depend on batch order, batch size, or how the images were split across processes, so tables
    from a resumed run or from several ranks merge exactly (:meth:`merge`). Empty slots hold value
    ``-inf`` and index ``EMPTY`` until ``k`` images have been seen.
    """

    EMPTY = np.iinfo(np.int64).max

    def __init__(self, k: int, channels: Optional[Dict[str, int]] = None):
        if k < 1:
            raise ViscnnError("exemplars need k >= 1")
        self.k = int(k)
        self.tables: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for layer, c in (channels or {}).items():
            self.tables[layer] = self._empty(c)

    def _empty(self, c: int):
        return (np.full((c, self.k), -np.inf), np.full((c, self.k), self.EMPTY, np.int64), np.zeros((c, self.k, 2), np.int64))

    def add(self, layer: str, a: torch.Tensor, first_index: int, indices: Optional[np.ndarray] = None) -> None:
        """Offer a batch's maps ``a`` [B, C, H, W] of images ``first_index ...`` (or of dataset positions
        ``indices``, for a pass that does not go through the dataset in order)."""
        if a.dim() != 4:
            raise ViscnnError(f"layer {layer} does not output a 4D [N, C, H, W] map")
        b, c, _, w = a.shape
        v, flat = a.detach().flatten(2).max(2)  # [B, C] first maximum
        v, flat = v.T.double().cpu().numpy(), flat.T.cpu().numpy()  # [C, B]
        ids = np.arange(first_index, first_index + b, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        idx = np.broadcast_to(ids, v.shape)
        self._merge_into(layer, (v, idx, np.stack([flat // w, flat % w], -1)))

    def _merge_into(self, layer: str, new) -> None:
        old = self.tables.get(layer)
        if old is None:
            old = self._empty(new[0].shape[0])
        v, idx, pos = (np.concatenate([o, n], 1) for o, n in zip(old, new))
        by_index = np.argsort(idx, axis=1, kind="stable")
        v, idx, pos = np.take_along_axis(v, by_index, 1), np.take_along_axis(idx, by_index, 1), np.take_along_axis(pos, by_index[..., None], 1)
        dup = np.zeros(idx.shape, bool)  # an image offered twice (a resumed pass redoing a batch) counts once
        dup[:, 1:] = (idx[:, 1:] == idx[:, :-1]) & (idx[:, 1:] != self.EMPTY)
        if dup.any():
            v = np.where(dup, -np.inf, v)
            idx = np.where(dup, self.EMPTY, idx)
        order = np.argsort(-v, axis=1, kind="stable")[:, :self.k]  # value first, ties to the lower index
        self.tables[layer] = (np.take_along_axis(v, order, 1), np.take_along_axis(idx, order, 1),
                              np.take_along_axis(pos, order[..., None], 1))

    def merge(self, other: "TopK") -> "TopK":
        for layer, t in other.tables.items():
            self._merge_into(layer, t)
        return self

    FIELDS = ("value", "index", "pos")

    @classmethod
    def array_names(cls, layers: Iterable[str]) -> list:
        return [f"{l}.{f}" for l in layers for f in cls.FIELDS]

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """Flat ``{"LAYER.value"|"LAYER.index"|"LAYER.pos": array}`` (checkpoints, all_gather)."""
        return dict(zip(self.array_names(self.tables), (a for t in self.tables.values() for a in t)))

    @classmethod
    def from_arrays(cls, k: int, arrays: Dict[str, np.ndarray]) -> "TopK":
        out = cls(k)
        for key in arrays:
            if key.endswith(".value"):
                l = key[:-len(".value")]
                out.tables[l] = tuple(arrays[f"{l}.{f}"] for f in cls.FIELDS)
        return out

    def save(self, folder, prefix: str = "") -> None:
        """One atomically written ``PREFIX LAYER.FIELD.npy`` per table array."""
        from viscnn.io import atomic_save_npy

        for name, a in self.to_arrays().items():
            atomic_save_npy(folder / f"{prefix}{name}.npy", a)

    @classmethod
    def load(cls, folder, k: int, layers: Iterable[str], prefix: str = "") -> "TopK":
        """The tables :meth:`save` wrote for ``layers``."""
        return cls.from_arrays(k, {n: np.load(folder / f"{prefix}{n}.npy") for n in cls.array_names(layers)})

    def result(self) -> Dict[str, Exemplars]:
        out = {}
        for l, (v, idx, pos) in self.tables.items():
            keep = int((idx[0] != self.EMPTY).sum()) if len(idx) else 0  # every channel sees every image
            if keep == 0:
                raise ViscnnError("no images to find exemplars in")
            out[l] = Exemplars(l, idx[:, :keep].astype(np.int64), v[:, :keep].astype(np.float32), pos[:, :keep].astype(np.int32))
        return out


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
    top = TopK(k)
    seen = 0
    with Capture(net, {(l, "out") for l in layers}) as cap:
        for x in iter_batches(batches):
            captured = cap(norm(x.to(dev)))
            for l in layers:
                top.add(l, captured[(l, "out")], seen)
            seen += x.shape[0]
    if not seen:
        raise ViscnnError("no images to find exemplars in")
    return top.result()


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
