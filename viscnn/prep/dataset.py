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

from viscnn.data.images import IMAGE_EXTS as IMAGE_SUFFIXES


class PrepDataset:
    """``classes``, ``labels`` (of the selected images) and ``batch(positions)`` -> normalised tensors."""

    def __init__(self, cfg: PrepConfig, log=print):
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
            self._files, all_labels, self.classes = _scan_folder(cfg.path(d["root"]), d["images_per_class"],
                                                                 d["bad_images"], log)
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
            from viscnn.data.images import read_image

            try:
                return read_image(self._files[i], self.channels)
            except Exception as e:  # checked before any work; changed on disk since
                raise ViscnnError(f"cannot read image {self._files[i]}: {e}") from None
        from viscnn.data.images import to_uint8

        return to_uint8(self._tv[i][0], self.channels)

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


def _scan_folder(root: Path, per_class: int, bad_images: str, log=print) -> Tuple[List[Path], np.ndarray, List[str]]:
    """The selected files of a class-per-subfolder dataset, every one decoded once here, so a bad
    file stops the run (or is skipped, ``bad_images = "skip"``) before any work starts."""
    from viscnn.data.images import describe_bad, scan_class_folders, select_readable

    if not root.is_dir():
        raise ViscnnError(f"data.root {root} is not a folder")
    classes, per = scan_class_folders(root)
    if not classes:
        raise ViscnnError(f"data.root {root} needs one subfolder per class (found none)")
    empty = [c for c, fs in zip(classes, per) if not fs]
    if empty:  # an empty class would shift every later label, or add a class the model does not have
        raise ViscnnError(f"data.root {root}: class folder{'s' if len(empty) > 1 else ''} with no images "
                          f"({', '.join(sorted(IMAGE_SUFFIXES))}): {', '.join(empty)}; remove or fill "
                          f"{'them' if len(empty) > 1 else 'it'}")
    kept, bad = select_readable(per, per_class)
    files = [f for fs in kept for f in fs]
    labels = [ci for ci, fs in enumerate(kept) for _ in fs]
    if bad and bad_images != "skip":
        raise ViscnnError(describe_bad(bad, root) + " (set data.bad_images = \"skip\" or --bad-images skip to leave them out)")
    if bad:
        log(f"skipping {describe_bad(bad, root)}")
    short = [c for c, fs in zip(classes, kept) if not fs]
    if short:
        raise ViscnnError(f"data.root {root}: no readable images in class folder(s) {', '.join(short)}")
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
