"""The prepped dataset's images as the app's image sets: a target other than the loss (``class:K``,
``unit:...``, combinations) is scored over N images of each named set of the dataset the model was
prepped on, not over the few gallery pictures.

Which images: the set's images in the prepped selection (a class, or all of them), N of them evenly
spaced through it (so ``all`` covers every class even when the files are sorted by class), in a fixed
order: the same N images every time. Scores are streamed in batches; ``progress(done, total)`` counts
images. When the dataset is not on this machine, :func:`open_dataset` raises a ViscnnError that says
so (the caller falls back to the gallery images and says that on the page).
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from viscnn.errors import ViscnnError

COUNTS = ("64", "256", "1024", "4096", "all")  # the app's choices of images per set
DEFAULT_COUNT = "256"
BATCH = 128

_LOCK = threading.Lock()
_OPEN: Dict[str, object] = {}


def count_of(text) -> Optional[int]:
    """Images per set for the URL's ``n``: a whole number, or None for the whole set."""
    t = str(text or DEFAULT_COUNT).strip().lower()
    if t == "all":
        return None
    try:
        n = int(float(t))
    except ValueError:
        raise ViscnnError(f"images per set {text!r}: give a whole number or 'all'") from None
    if n < 1:
        raise ViscnnError(f"images per set must be >= 1, got {n}")
    return n


def open_dataset(pm):
    """The prepped model's dataset (``viscnn.prep.dataset.PrepDataset``), opened once per process."""
    from viscnn.prep.config import DEFAULTS, PrepConfig
    from viscnn.prep.dataset import PrepDataset

    key = str(pm.root.resolve())
    with _LOCK:
        if key in _OPEN:
            return _OPEN[key]
    m = pm.manifest
    data = m.get("data")
    if not data:
        raise ViscnnError(f"{pm.name} does not record its dataset (prepped by an older viscnn)")
    c, h, w = pm.input_shape
    norm = m.get("normalize") or {"mean": [0.0] * c, "std": [1.0] * c}
    values = dict(DEFAULTS, name=pm.name, model=m.get("model"),
                  data=dict(DEFAULTS["data"], **data),
                  preprocess={"size": [h, w], "channels": c, "mean": list(norm["mean"]), "std": list(norm["std"])})
    try:
        ds = PrepDataset(PrepConfig(values, pm.root), log=lambda *a, **k: None)
    except (ViscnnError, OSError) as e:
        raise ViscnnError(f"the dataset {pm.name} was prepped on is not available here: {e}") from None
    with _LOCK:
        _OPEN[key] = ds
    return ds


def set_positions(ds, classes: List[str], set_name: str, n: Optional[int]) -> np.ndarray:
    """Positions (into the prepped selection) of ``n`` images of ``set_name`` (a class or ``all``),
    evenly spaced through the set; every image of the set when ``n`` is None or larger."""
    labels = np.asarray(ds.labels)
    if set_name == "all":
        pool = np.arange(len(labels))
    else:
        if set_name not in classes:
            raise ViscnnError(f"unknown image set {set_name!r}")
        pool = np.flatnonzero(labels == classes.index(set_name))
    if not len(pool):
        raise ViscnnError(f"no images of {set_name!r} in the prepped dataset")
    if n is None or n >= len(pool):
        return pool
    return pool[np.unique(np.linspace(0, len(pool) - 1, n).round().astype(np.int64))]


def set_sizes(ds, classes: List[str]) -> Dict[str, int]:
    labels = np.asarray(ds.labels)
    out = {c: int((labels == k).sum()) for k, c in enumerate(classes)}
    out["all"] = int(len(labels))
    return out


def mean_scores(scorer, metric: str, batches, total: int,
                progress: Optional[Callable[[int, int], None]] = None) -> Tuple[np.ndarray, np.ndarray, int]:
    """(mean node scores, mean edge scores, images) of ``scorer`` over ``batches`` of (x, labels);
    float64 sums, so the mean does not depend on the batch size."""
    sn = se = None
    done = 0
    for x, y in batches:
        n, e = scorer(x, y)[metric]
        bn, be = n.double().sum(0).numpy(), e.double().sum(0).numpy()
        sn, se = (bn, be) if sn is None else (sn + bn, se + be)
        done += int(x.shape[0])
        if progress:
            progress(done, total)
    if sn is None:
        raise ViscnnError("no images to score")
    return (sn / done).astype(np.float32), (se / done).astype(np.float32), done


def dataset_batches(ds, positions: np.ndarray, batch: int = BATCH):
    for s in range(0, len(positions), batch):
        yield ds.batch(positions[s:s + batch])
