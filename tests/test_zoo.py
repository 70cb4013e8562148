from pathlib import Path

import numpy as np
import pytest
import torch

from viscnn.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from viscnn.graph import build_graph
from viscnn.model_spec import load_model
from viscnn.zoo import fmnist_cnn
from viscnn.zoo.train_fmnist import augment, to_tensor

WEIGHTS = Path(__file__).resolve().parent.parent / "prepped_models" / "fmnist" / "weights.pt"


def test_model_shapes_and_size():
    m = fmnist_cnn().eval()
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in m.parameters()) < 100_000


def test_graph_with_class_layer():
    g = build_graph(fmnist_cnn(), (28, 28), include_classes=True)
    assert [l.name for l in g.layers] == ["input", "conv1", "conv2", "conv3", "conv4", "fc"]
    assert [l.kind for l in g.layers] == ["input", "conv", "conv", "conv", "conv", "linear"]
    fc = g.layers[-1]
    assert fc.channels == 10 and fc.in_channels == 64 and fc.num_edges == 640
    assert g.num_nodes < 400 and g.num_edges < 20_000
    # the class layer reads conv4's channels one to one (through BN, ReLU, GAP, flatten)
    assert fc.input_sources == [[g.layer("conv4").node_offset + c] for c in range(64)]


def test_spec_builds_the_same_model():
    m = load_model("viscnn.zoo.fmnist:fmnist_cnn")
    assert set(m.state_dict()) == set(fmnist_cnn().state_dict())


def test_to_tensor_normalises():
    x = to_tensor(np.array([[[0, 255]]], np.uint8))
    from viscnn.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD

    np.testing.assert_allclose(x.flatten().numpy(), [(0 - FMNIST_MEAN) / FMNIST_STD, (1 - FMNIST_MEAN) / FMNIST_STD],
                               rtol=1e-6)
    assert x.shape == (1, 1, 1, 2)


def test_augment_flips_and_shifts_deterministically():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    for i in range(2):  # each image is itself or its mirror
        assert torch.equal(a[i], x[i]) or torch.equal(a[i], x[i].flip(2))
    s = augment(x, torch.Generator().manual_seed(1), pad=1)
    assert s.shape == x.shape


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="default weights not trained yet")
@pytest.mark.skipif(not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(), reason="no Fashion-MNIST")
def test_committed_weights_reach_90_percent():
    m = fmnist_cnn()
    m.load_state_dict(torch.load(WEIGHTS, weights_only=True, map_location="cpu"))
    m.eval()
    x, y = load_fashion_mnist("test")
    with torch.no_grad():
        pred = m(to_tensor(x[:2000])).argmax(1).numpy()
    acc = float((pred == y[:2000]).mean())
    assert acc >= 0.90, acc
    assert WEIGHTS.stat().st_size < 1_000_000


@pytest.fixture
def small_data(monkeypatch):
    """The training script on 384 real images (cached), so a whole run takes a second."""
    import viscnn.zoo.train_fmnist as T

    if not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("no Fashion-MNIST")
    x, y = load_fashion_mnist("test")
    monkeypatch.setattr(T, "load_fashion_mnist", lambda split: (x[:384], y[:384]))
    return T


def test_training_script_is_deterministic_and_writes_loadable_weights(small_data, tmp_path, capsys):
    T = small_data
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng_before = torch.get_rng_state()
    args = ["--epochs", "2", "--min-accuracy", "0", "--batch-size", "64"]
    assert T.main(args + ["--out", str(tmp_path / "a.pt")]) == 0
    assert T.main(args + ["--out", str(tmp_path / "b.pt")]) == 0
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "one training epoch:" in out and "test accuracy" in out
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m = fmnist_cnn()
    m.load_state_dict(a)
    assert not torch.equal(a["conv1.weight"], fmnist_cnn().state_dict()["conv1.weight"])  # it trained
    # global torch state restored
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det


def test_training_script_refuses_low_accuracy(small_data, tmp_path, capsys):
    out = tmp_path / "w.pt"
    assert small_data.main(["--epochs", "1", "--min-accuracy", "1.01", "--out", str(out)]) == 1
    assert not out.exists() and "below --min-accuracy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        small_data.main(["--epochs", "0", "--out", str(out)])
