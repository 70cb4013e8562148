import gzip
from pathlib import Path

import numpy as np
import pytest

from viscnn.data.fashion_mnist import (CLASSES, DEFAULT_ROOT, FMNIST_MEAN, FMNIST_STD,
                                       load_fashion_mnist)
from viscnn.errors import ViscnnError

have_data = pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
                               reason="apt-get install dataset-fashion-mnist")


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray,
               img_magic: int = 0x803, lab_magic: int = 0x801, drop: int = 0) -> None:
    n, h, w = images.shape
    head = img_magic.to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, h, w))
    data = head + images.astype(np.uint8).tobytes()
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(data[: len(data) - drop])
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(lab_magic.to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes())


def test_classes():
    assert len(CLASSES) == 10 and CLASSES[0] == "T-shirt/top" and CLASSES[9] == "Ankle boot"


@have_data
def test_test_split_real_files():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, 1000))
    # first labels of the official t10k file
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert x.flags.writeable


@have_data
def test_train_split_and_normalisation_constants():
    x, y = load_fashion_mnist("train")
    assert x.shape == (60000, 28, 28) and np.array_equal(np.bincount(y), np.full(10, 6000))
    v = x.astype(np.float64) / 255.0
    assert abs(v.mean() - FMNIST_MEAN) < 1e-9
    assert abs(v.std() - FMNIST_STD) < 1e-9


def test_synthetic_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, 10000)
    _write_idx(tmp_path, "t10k", imgs, labs)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert np.array_equal(x, imgs) and np.array_equal(y, labs)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(ViscnnError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def test_bad_split():
    with pytest.raises(ViscnnError, match="split"):
        load_fashion_mnist("validation")


@pytest.mark.parametrize("kw, msg", [
    ({"img_magic": 0x802}, "magic"),
    ({"lab_magic": 0x803}, "magic"),
    ({"drop": 5}, "bytes"),
])
def test_corrupt_files(tmp_path, kw, msg):
    imgs = np.zeros((10000, 28, 28), np.uint8)
    _write_idx(tmp_path, "t10k", imgs, np.zeros(10000, np.int64), **kw)
    with pytest.raises(ViscnnError, match=msg):
        load_fashion_mnist("test", root=tmp_path)


def test_wrong_count_and_shape(tmp_path):
    _write_idx(tmp_path, "t10k", np.zeros((10, 28, 28), np.uint8), np.zeros(10, np.int64))
    with pytest.raises(ViscnnError, match="expected"):
        load_fashion_mnist("test", root=tmp_path)
    _write_idx(tmp_path, "t10k", np.zeros((10000, 28, 28), np.uint8), np.zeros(9999, np.int64))
    with pytest.raises(ViscnnError, match="labels for"):
        load_fashion_mnist("test", root=tmp_path)


def test_label_out_of_range(tmp_path):
    labs = np.zeros(10000, np.int64)
    labs[3] = 10
    _write_idx(tmp_path, "t10k", np.zeros((10000, 28, 28), np.uint8), labs)
    with pytest.raises(ViscnnError, match="out of range"):
        load_fashion_mnist("test", root=tmp_path)
