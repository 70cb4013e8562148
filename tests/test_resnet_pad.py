"""The padding-experiment models (issue 13 item 7): factory, shipped prepped models, padding audit."""

import pytest
import torch

from viscnn.artifacts.padding import PaddingAuditor
from viscnn.paths import default_models_dir
from viscnn.prepped import PreppedModel
from viscnn.zoo.resnet_pad import resnet_pad

DOWNSAMPLING_3X3 = ["block1.conv1", "block3.conv1"]
SHORTCUTS = ["block1.shortcut.0", "block3.shortcut.0"]


def test_factory_builds_and_runs_at_both_sizes():
    torch.manual_seed(0)
    m = resnet_pad().eval()
    n = sum(p.numel() for p in m.parameters())
    assert 50_000 <= n <= 150_000
    with torch.no_grad():
        for s in (28, 29):
            assert m(torch.randn(2, 1, s, s)).shape == (2, 10)
    strided = {name: mod for name, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d) and mod.stride != (1, 1)}
    assert sorted(strided) == sorted(DOWNSAMPLING_3X3 + SHORTCUTS)
    for name in DOWNSAMPLING_3X3:
        assert strided[name].kernel_size == (3, 3) and strided[name].padding == (1, 1) and strided[name].stride == (2, 2)


@pytest.mark.parametrize("size", [28, 29])
def test_prepped_models_open_with_their_input_shape(size):
    pm = PreppedModel.open(f"fmnist_pad{size}", default_models_dir())
    assert tuple(pm.input_shape) == (1, size, size)
    assert pm.graph.layers[0].kind == "input"
    model = pm.load_model().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, *pm.input_shape)).shape == (1, 10)


def _by_layer(size):
    rep = PaddingAuditor(resnet_pad(), 1).report((size, size), search=0)
    return rep, {e["layer"]: e for e in rep["padding"]}


def test_padding_audit_28_leaves_bottom_right_padding_unused():
    rep, by = _by_layer(28)
    assert not rep["clean"]
    assert set(by) == set(DOWNSAMPLING_3X3 + SHORTCUTS)
    for name in DOWNSAMPLING_3X3:
        e = by[name]
        assert e["pad"] == {"top": 1, "bottom": 1, "left": 1, "right": 1}
        assert e["unused_pad"] == {"top": 0, "bottom": 1, "left": 0, "right": 1}
        assert e["unread"] == {"bottom": 0, "right": 0}
    for name in SHORTCUTS:  # 1x1 stride-2, no padding: the last real row/column is never read
        assert by[name]["unused_pad"] == {"top": 0, "bottom": 0, "left": 0, "right": 0}
        assert by[name]["unread"] == {"bottom": 1, "right": 1}


def test_padding_audit_29_uses_all_padding():
    rep, by = _by_layer(29)
    assert rep["clean"]
    for name, e in by.items():
        assert e["unused_pad"] == {"top": 0, "bottom": 0, "left": 0, "right": 0}, name
        assert e["unread"] == {"bottom": 0, "right": 0}, name
    assert by["block1.conv1"]["in_size"] == [29, 29] and by["block1.conv1"]["out_size"] == [15, 15]
    assert by["block3.conv1"]["in_size"] == [15, 15] and by["block3.conv1"]["out_size"] == [8, 8]
