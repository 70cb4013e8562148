"""The prep stage's dataset: a fixed, ordered selection of labelled images, loaded batch by batch.

The order is deterministic (file order, first ``images_per_class`` of each class), so a resumed or
sharded run sees exactly the same batches as an uninterrupted single-process one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

from viscnn.errors import ViscnnError
from viscnn.prep.config import PrepConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class PrepDataset:
    """``classes``, ``labels`` (of the selected images) and ``batch(positions)`` -> normalised tensors."""

    def __init__(self, cfg: PrepConfig):
        d, pp = cfg["data"], cfg["preprocess"]
        self.size = tuple(pp["size"])
        self.channels = pp["channels"]
        self.mean = torch.tensor(pp["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(pp["std"], dtype=torch.float32).view(-1, 1, 1)
        if d["kind"] == "fashion-mnist":
            from viscnn.data.fashion_mnist import CLASSES, load_fashion_mnist

            imgs, labels = load_fashion_mnist(d["split"], d["root"] or None)
            self._arrays, self.classes = imgs, list(CLASSES)
            all_labels = labels
        elif d["kind"] == "folder":
            self._files, all_labels, self.classes = _scan_folder(cfg.path(d["root"]))
        else:
            self._tv, all_labels, self.classes = _torchvision(d, cfg)
        self.kind = d["kind"]
        self.index = _select(np.asarray(all_labels), len(self.classes), d["images_per_class"])
        self.labels = np.asarray(all_labels)[self.index].astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, pos: int) -> np.ndarray:
        """uint8 image [H, W, C] of selected image ``pos`` at its source resolution."""
        i = int(self.index[pos])
        if self.kind == "fashion-mnist":
            return self._arrays[i][:, :, None]
        if self.kind == "folder":
            from PIL import Image

            with Image.open(self._files[i]) as im:
                return np.asarray(im.convert("RGB" if self.channels == 3 else "L")).reshape(im.size[1], im.size[0], -1)
        img = self._tv[i][0]
        return np.asarray(img.convert("RGB" if self.channels == 3 else "L")).reshape(img.size[1], img.size[0], -1)

    def to_unit(self, raw: np.ndarray) -> torch.Tensor:
        """uint8 [H,W,C] -> float [C,H,W] in [0, 1] at the model's size and channel count."""
        x = torch.from_numpy(np.ascontiguousarray(raw)).permute(2, 0, 1).float() / 255.0
        if x.shape[0] != self.channels:
            x = x.mean(0, keepdim=True) if self.channels == 1 else x.expand(3, -1, -1)
        if tuple(x.shape[1:]) != self.size:
            x = torch.nn.functional.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        return x

    def unit_batch(self, positions: Sequence[int]) -> torch.Tensor:
        """Un-normalised [B, C, H, W] in [0, 1] (what the feature-visualization code takes)."""
        pos = np.asarray(positions, dtype=np.int64)
        if self.kind == "fashion-mnist" and self.channels == 1 and self._arrays.shape[1:] == self.size:
            # in-memory images already at the model's size: one conversion for the batch, same values
            return torch.from_numpy(self._arrays[self.index[pos]]).float().div_(255.0).unsqueeze(1)
        return torch.stack([self.to_unit(self.raw(int(p))) for p in pos])

    def batch(self, positions: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        x = (self.unit_batch(positions) - self.mean) / self.std
        return x, torch.from_numpy(self.labels[np.asarray(positions, dtype=np.int64)])

    def batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Tuple[int, Tuple[torch.Tensor, torch.Tensor]]]:
        """(batch number, batch) for this rank's share: batch b goes to rank b % world."""
        for b, start in enumerate(range(0, len(self), batch_size)):
            if b % world == rank:
                yield b, self.batch(range(start, min(start + batch_size, len(self))))

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size


def _select(labels: np.ndarray, n_classes: int, per_class: int) -> np.ndarray:
    if per_class <= 0:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), bool)
    for c in range(n_classes):
        keep[np.flatnonzero(labels == c)[:per_class]] = True
    return np.flatnonzero(keep)


def _scan_folder(root: Path) -> Tuple[List[Path], np.ndarray, List[str]]:
    if not root.is_dir():
        raise ViscnnError(f"data.root {root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ViscnnError(f"data.root {root} needs one subfolder per class (found none)")
    files, labels = [], []
    for ci, c in enumerate(classes):
        fs = sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += fs
        labels += [ci] * len(fs)
    if not files:
        raise ViscnnError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return files, np.asarray(labels, np.int64), classes


def _torchvision(d: dict, cfg: PrepConfig):
    import torchvision.datasets as tvd

    cls = getattr(tvd, d["dataset"], None)
    if cls is None:
        raise ViscnnError(f"bad config value for data.dataset: torchvision has no dataset {d['dataset']!r}")
    try:
        ds = cls(str(cfg.path(d["root"])), train=(d["split"] == "train"), download=False)
    except Exception as e:  # missing files: torchvision raises RuntimeError
        raise ViscnnError(f"cannot open torchvision dataset {d['dataset']} at {d['root']}: {e}") from None
    labels = np.asarray(getattr(ds, "targets", [ds[i][1] for i in range(len(ds))]), np.int64)
    return ds, labels, list(getattr(ds, "classes", [str(i) for i in range(int(labels.max()) + 1)]))
