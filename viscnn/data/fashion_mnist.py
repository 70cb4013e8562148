"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (gzipped IDX files).

Reading the system copy keeps viscnn offline: nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from viscnn.errors import ViscnnError

CLASSES: List[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

#: Mean and standard deviation of all 60,000 training images' pixels, scaled to [0, 1]
#: (``x = uint8 / 255``; population std over every pixel of every image). Computed with
#: ``(load_fashion_mnist("train")[0] / 255.0)`` with ``.mean()`` and ``.std()`` in float64;
#: ``tests/test_fashion_mnist.py`` recomputes and checks them.
FMNIST_MEAN: float = 0.2860405969887955
FMNIST_STD: float = 0.35302424451492254

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def default_root() -> Path:
    """``$VISCNN_FASHION_MNIST_DIR`` if set, else the Debian package's folder."""
    env = os.environ.get("VISCNN_FASHION_MNIST_DIR")
    return Path(env) if env else DEFAULT_ROOT


def _read_gz(path: Path) -> bytes:
    if not path.is_file():
        raise ViscnnError(
            f"Fashion-MNIST file {path} is missing; install it with `apt-get install dataset-fashion-mnist` "
            f"(or set VISCNN_FASHION_MNIST_DIR to a folder holding the gzipped IDX files)")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise ViscnnError(f"cannot read Fashion-MNIST file {path}: {e}") from None


def _header(data: bytes, path: Path, magic: int, ndim: int) -> Tuple[int, ...]:
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ViscnnError(f"{path}: truncated IDX header ({len(data)} bytes)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ViscnnError(f"{path}: bad IDX magic number 0x{got:08x} (expected 0x{magic:08x})")
    dims = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expect = head + int(np.prod(dims))
    if len(data) != expect:
        raise ViscnnError(f"{path}: {len(data)} bytes, but its header {dims} implies {expect}")
    return dims


def load_fashion_mnist(split: str = "train", root=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels int64 [N])`` of the ``"train"`` (60k) or ``"test"`` (10k) split."""
    if split not in _FILES:
        raise ViscnnError(f"unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'")
    base = Path(root) if root is not None else default_root()
    img_name, lab_name, n_expected = _FILES[split]
    img_path, lab_path = base / img_name, base / lab_name

    img = _read_gz(img_path)
    n, h, w = _header(img, img_path, _IMAGES_MAGIC, 3)
    lab = _read_gz(lab_path)
    (n_lab,) = _header(lab, lab_path, _LABELS_MAGIC, 1)
    if (n, h, w) != (n_expected, 28, 28):
        raise ViscnnError(f"{img_path}: shape {(n, h, w)}, expected {(n_expected, 28, 28)}")
    if n_lab != n:
        raise ViscnnError(f"{lab_path}: {n_lab} labels for {n} images")

    images = np.frombuffer(img, np.uint8, offset=16).reshape(n, h, w).copy()
    labels = np.frombuffer(lab, np.uint8, offset=8).astype(np.int64)
    if labels.max(initial=0) >= len(CLASSES):
        raise ViscnnError(f"{lab_path}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    return images, labels
