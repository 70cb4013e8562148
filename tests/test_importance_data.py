"""Image-set sources for scoring: folders, tensors, seeded random images, Fashion-MNIST."""

import numpy as np
import pytest
import torch
from PIL import Image

from viscnn.data import image_batches, open_images
from viscnn.data.sources import to_model_input
from viscnn.errors import ViscnnError


def test_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / cls).mkdir()
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (20 + k, 16, 3), dtype=np.uint8)).save(tmp_path / cls / f"{k}.png")
    src = open_images(str(tmp_path), (1, 8, 8))
    assert src.classes == ["cat", "dog"] and len(src) == 5
    batches = list(src.batches(2, (1, 8, 8), {"mean": [0.5], "std": [0.25]}))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 1, 8, 8)] * 2 + [(1, 1, 8, 8)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 0, 1, 1]
    # the conversion really is grey = luminance, resize, normalise
    img = np.array(Image.open(tmp_path / "cat" / "0.png"))
    grey = (torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    expect = (torch.nn.functional.interpolate(grey, size=(8, 8), mode="bilinear", antialias=True) - 0.5) / 0.25
    torch.testing.assert_close(batches[0][0][:1], expect, atol=1e-5, rtol=1e-5)
    flat = tmp_path / "cat"
    assert open_images(f"folder:{flat}", (3, 8, 8)).classes is None


def test_tensor_and_random_sources(tmp_path):
    x = torch.randn(7, 3, 5, 5)
    torch.save({"images": x, "labels": torch.arange(7)}, tmp_path / "x.pt")
    got = list(image_batches(f"tensor:{tmp_path / 'x.pt'}", 4, (3, 5, 5)))
    torch.testing.assert_close(torch.cat([b for b, _ in got]), x)
    assert torch.cat([y for _, y in got]).tolist() == list(range(7))
    a = torch.cat([b for b, _ in image_batches("random:5:3", 2, (1, 6, 6))])
    b = torch.cat([b for b, _ in image_batches("random:5:3", 5, (1, 6, 6))])
    assert torch.equal(a, b) and a.shape == (5, 1, 6, 6)
    assert not torch.equal(a, torch.cat([b for b, _ in image_batches("random:5:4", 5, (1, 6, 6))]))
    assert sum(len(b) for b, _ in image_batches("random:50", 16, (1, 4, 4), limit=20)) == 20


def test_fashion_mnist_source():
    pytest.importorskip("viscnn.data.fashion_mnist")
    from viscnn.data.fashion_mnist import load_fashion_mnist

    try:
        imgs, labels = load_fashion_mnist("test")
    except ViscnnError as e:
        pytest.skip(str(e))
    src = open_images("fmnist:test:Sneaker:30", (1, 28, 28))
    assert len(src) == 30 and src.classes[7] == "Sneaker"
    x, y = next(src.batches(30, (1, 28, 28)))
    assert (y == 7).all()
    np.testing.assert_allclose(x[0, 0].numpy(), imgs[labels == 7][0] / 255.0, atol=1e-6)
    assert len(open_images("fmnist:test:7:3", (1, 28, 28))) == 3
    assert len(open_images("fmnist:test:100", (1, 28, 28))) == 100


@pytest.mark.parametrize("spec, words", [
    ("random:abc", "bad count"), ("tensor:/nonexistent.pt", "not found"), ("nope:1", "unknown image-set spec"),
    ("fmnist:test:Sneakerz", "unknown Fashion-MNIST class"), ("", "empty"),
])
def test_bad_specs(spec, words):
    with pytest.raises(ViscnnError, match=words):
        open_images(spec, (1, 8, 8))


def test_channel_conversion_rejects_the_impossible():
    with pytest.raises(ViscnnError, match="cannot convert"):
        to_model_input(torch.zeros(1, 2, 4, 4), (3, 4, 4))
