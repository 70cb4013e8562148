"""The scoring passes' checkpoints and cross-rank sums, shared by the dense pass
(:mod:`viscnn.prep.scoring`) and the class-by-class sparse one (:mod:`viscnn.prep.scoring_sparse`).

A checkpoint is a folder of plain ``NAME.npy`` arrays, optional top-k exemplar tables
(``exemplars.*``) and ``cursor.json`` (written last). A new one is written as ``PART.next`` and
switched in by two renames (``PART`` -> ``PART.old``, ``PART.next`` -> ``PART``), so a kill at any
point leaves one complete checkpoint: ``PART``, or ``PART.old`` when killed between the renames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from viscnn.io import atomic_save_npy, atomic_write_text


def save_checkpoint(part: Path, arrays: Dict[str, np.ndarray], meta: dict, top=None) -> None:
    """Write ``arrays`` (name -> array, saved as ``name.npy``), ``top`` and ``meta`` as ``cursor.json``."""
    gen = part.parent / (part.name + ".next")
    shutil.rmtree(gen, ignore_errors=True)
    for name, a in arrays.items():
        atomic_save_npy(gen / f"{name}.npy", a)
    if top is not None:
        top.save(gen, prefix="exemplars.")
    atomic_write_text(gen / "cursor.json", json.dumps(meta))
    old = part.parent / (part.name + ".old")
    if part.exists():
        shutil.rmtree(old, ignore_errors=True)
        part.rename(old)
    gen.rename(part)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(part: Path):
    """(folder, cursor.json contents) of the complete checkpoint at ``part``, or (None, None)."""
    if not (part / "cursor.json").is_file():  # killed between the two renames of save_checkpoint
        part = part.parent / (part.name + ".old")
    meta = part / "cursor.json"
    if not meta.is_file():
        return None, None
    return part, json.loads(meta.read_text())


def load_array(folder: Path, name: str) -> np.ndarray:
    return np.load(folder / f"{name}.npy")


def load_top(folder: Path, k: int, conv_channels):
    from viscnn.featurevis.exemplars import TopK

    return TopK.load(folder, k, conv_channels, prefix="exemplars.")


def all_reduce(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Every rank's arrays summed (torch.distributed, same names and shapes on every rank, in the same
    order); returns new arrays with the sums."""
    import torch
    import torch.distributed as dist

    out = {}
    for name, a in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(a))
        dist.all_reduce(t)
        out[name] = t.numpy()
    return out


def empty_top(k: int, conv_channels) -> Optional[object]:
    from viscnn.featurevis.exemplars import TopK

    return TopK(k, conv_channels) if k else None
