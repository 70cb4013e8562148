"""Artifact debugging against slow, obvious references on random weights: mean maps vs a hooked
per-channel loop, the mean patch vs an explicit loop over positions, the padding audit vs
independent window arithmetic on real forward passes (ResNet-18, GoogLeNet, MobileNetV2, and a
functional model with ceil_mode, dilation and an explicit pad), and the paper's Fig. 7 on
ResNet-50 at 224 and 225."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from viscnn.artifacts.baselines import make_baseline
from viscnn.artifacts.mean_maps import channel_maps, mean_maps
from viscnn.artifacts.padding import PaddingAuditor, padding_audit
from viscnn.artifacts.patches import asymmetry, mean_patches
from viscnn.errors import ViscnnError
from viscnn.zoo.fmnist import fmnist_cnn


def _tv(name):
    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, **kw).eval()


@pytest.fixture(scope="module")
def resnet18():
    return _tv("resnet18")


def _batches(x, bs):
    return [x[i:i + bs] for i in range(0, len(x), bs)]


# -- mean maps ------------------------------------------------------------------------------------
def _hooked_outputs(model, x, modules):
    ref = copy.deepcopy(model).eval()
    got, hs = {}, []
    for name in modules:
        m = ref.get_submodule(name)
        hs.append(m.register_forward_hook(lambda mod, i, o, name=name: got.__setitem__(name, o.detach().clone())))
    with torch.no_grad():
        ref(x)
    for h in hs:
        h.remove()
    return got


def _loop_mean(out):
    """Mean over channels, then images, by an explicit per-channel loop."""
    acc = torch.zeros(out.shape[2:], dtype=torch.float64)
    for c in range(out.shape[1]):
        acc += out[:, c].double().mean(0)
    return (acc / out.shape[1]).numpy()


def test_mean_maps_equal_hooked_per_channel_loop(resnet18):
    x = torch.randn(5, 3, 48, 40)
    convs = [n for n, m in resnet18.named_modules() if isinstance(m, nn.Conv2d)]
    maps = mean_maps(resnet18, _batches(x, 2))
    assert [m.layer for m in maps] == convs
    outs = _hooked_outputs(resnet18, x, convs)
    for m in maps:
        o = outs[m.layer]
        assert m.channels == o.shape[1] and m.size == tuple(o.shape[2:]) and m.images == 5
        np.testing.assert_allclose(m.map, _loop_mean(o), rtol=1e-5, atol=1e-6)
    assert maps[0].title == f"{maps[0].size[0]}\u00d7{maps[0].size[1]}, 64 ch"
    assert maps[0].stride == (2, 2) and maps[1].stride == (1, 1)


def test_mean_maps_after_activation_and_pooling(resnet18):
    x = torch.randn(3, 3, 48, 48)
    act = {m.layer: m for m in mean_maps(resnet18, [x], ["conv1", "layer1.0.conv1", "layer1.0.conv2"], stage="act")}
    pool = mean_maps(resnet18, [x], ["conv1"], stage="pool")[0]
    outs = _hooked_outputs(resnet18, x, ["bn1", "maxpool", "layer1.0.bn1", "layer1.0"])
    np.testing.assert_allclose(act["conv1"].map, _loop_mean(F.relu(outs["bn1"])), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(act["layer1.0.conv1"].map, _loop_mean(F.relu(outs["layer1.0.bn1"])), rtol=1e-5, atol=1e-6)
    # conv2 -> bn2 -> residual add -> relu: the block's output
    np.testing.assert_allclose(act["layer1.0.conv2"].map, _loop_mean(outs["layer1.0"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool.map, _loop_mean(outs["maxpool"]), rtol=1e-5, atol=1e-6)


def test_channel_maps_equal_hooked_loop(resnet18):
    x = torch.randn(3, 3, 40, 40)
    cm = channel_maps(resnet18, "layer2.0.conv1", _batches(x, 2))
    o = _hooked_outputs(resnet18, x, ["layer2.0.conv1"])["layer2.0.conv1"]
    assert cm.maps.shape == tuple(o.shape[1:]) and cm.images == 3
    for c in range(o.shape[1]):
        np.testing.assert_allclose(cm.maps[c], o[:, c].double().mean(0).numpy(), rtol=1e-5, atol=1e-6)


# -- mean patches ---------------------------------------------------------------------------------------
class _TwoConvs(nn.Module):
    def __init__(self, mode="zeros"):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.b = nn.Conv2d(5, 4, 3, stride=2, padding=1, dilation=2, padding_mode=mode)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _loop_patch(inp, conv):
    """Explicit loop over images, channels and output positions of the padded input."""
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    p = conv.padding
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(inp.double(), (p[1], p[1], p[0], p[0]), mode=mode)
    ho = (xp.shape[2] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (xp.shape[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    acc, n = torch.zeros(k, dtype=torch.float64), 0
    for img in xp:
        for ch in img:
            for i in range(ho):
                for j in range(wo):
                    for u in range(k[0]):
                        for v in range(k[1]):
                            acc[u, v] += ch[i * s[0] + u * d[0], j * s[1] + v * d[1]]
                    n += 1
    return (acc / n).numpy()


@pytest.mark.parametrize("mode,hw", [("zeros", (13, 16)), ("reflect", (12, 11))])
def test_mean_patch_equals_explicit_loop(mode, hw):
    torch.manual_seed(1)
    model = _TwoConvs(mode).eval()
    x = torch.randn(5, 3, *hw)
    pk = {p.layer: p for p in mean_patches(model, _batches(x, 2))}
    with torch.no_grad():
        mid = torch.relu(model.a(x))
    np.testing.assert_allclose(pk["b"].patch, _loop_patch(mid, model.b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pk["a"].patch, _loop_patch(x, model.a), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pk["b"].kernel, model.b.weight.double().mean((0, 1)).detach().numpy())
    assert pk["b"].downsampling and not pk["a"].downsampling and pk["b"].images == 5


def test_asymmetry_scores():
    sym = np.array([[1.0, 2, 1], [3, 5, 3], [1, 2, 1]])
    assert asymmetry(sym) == {"rot180": 0.0, "top_bottom": 0.0, "left_right": 0.0}
    skew = np.array([[0.0, 0, 0], [1, 1, 1], [1, 1, 1]])  # zeros over-represented at the top
    a = asymmetry(skew)
    assert a["top_bottom"] < 0 and a["left_right"] == 0 and a["rot180"] > 0
    assert asymmetry(np.ones((1, 1)))["rot180"] == 0


# -- padding audit ----------------------------------------------------------------------------------------
def _independent(n, o, k, s, d, pt, pb):
    """Taps actually read, by enumeration: unused bottom padding and unread real rows past the
    last tap of the last window."""
    last = max(i * s + j * d for i in range(o) for j in range(k))
    L = n + pt + pb
    return (sum(1 for r in range(n + pt, L) if r > last), sum(1 for r in range(pt, n + pt) if r > last))


def _strided_modules(model, size):
    """(name, module, input hw, output hw) of every conv/pool module with stride > 1, from a real run."""
    rec, hs = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            hs.append(m.register_forward_hook(
                lambda mod, i, o, name=name: rec.__setitem__(name, (mod, tuple(i[0].shape[2:]), tuple(o.shape[2:])))))
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    for h in hs:
        h.remove()
    out = []
    for name, (m, hin, hout) in rec.items():
        s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
        if max(s) > 1:
            out.append((name, m, hin, hout))
    return out


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@pytest.mark.parametrize("name,sizes", [("resnet18", [(64, 64), (65, 71)]), ("googlenet", [(64, 64), (67, 80)]),
                                        ("mobilenet_v2", [(64, 64), (63, 70)])])
def test_padding_audit_equals_independent_arithmetic(name, sizes):
    model = _tv(name)
    auditor = PaddingAuditor(model)
    for size in sizes:
        entries = {e["layer"]: e for e in auditor.audit(size)}
        mods = _strided_modules(model, size)
        assert set(entries) == {m[0] for m in mods}
        if name == "googlenet":
            assert any(e["ceil_mode"] for e in entries.values())
        for lname, m, hin, hout in mods:
            e = entries[lname]
            k, s, p = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
            d = _pair(getattr(m, "dilation", 1))
            assert e["in_size"] == list(hin) and e["out_size"] == list(hout)
            assert e["pad"] == {"top": p[0], "bottom": p[0], "left": p[1], "right": p[1]}
            ub, rb = _independent(hin[0], hout[0], k[0], s[0], d[0], p[0], p[0])
            ur, rr = _independent(hin[1], hout[1], k[1], s[1], d[1], p[1], p[1])
            assert e["unused_pad"] == {"top": 0, "bottom": ub, "left": 0, "right": ur}, (lname, size)
            assert e["unread"] == {"bottom": rb, "right": rr}, (lname, size)


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2)
        self.pool = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)

    def forward(self, x):
        x = self.c1(x)
        x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        x = self.c2(F.pad(x, (0, 1, 0, 1)))
        return self.pool(x)


@pytest.mark.parametrize("size", [(40, 41), (33, 50), (57, 57)])
def test_padding_audit_functional_ceil_mode_dilation_and_explicit_pad(size):
    m = _Functional().eval()
    with torch.no_grad():
        x = torch.zeros(1, 3, *size)
        a = m.c1(x)
        b = F.max_pool2d(a, 3, 2, 1, ceil_mode=True)
        c = m.c2(F.pad(b, (0, 1, 0, 1)))
        o = m.pool(c)
    e = {r["layer"]: r for r in padding_audit(m, size, search=0)["padding"]}
    assert list(e) == ["c1", "max_pool2d", "c2", "pool"]
    steps = {"c1": (x, a, 3, 2, 2, (2, 2)), "max_pool2d": (a, b, 3, 2, 1, (1, 1)), "c2": (b, c, 3, 2, 1, (0, 1)),
             "pool": (c, o, 3, 2, 1, (1, 1))}
    for lname, (tin, tout, k, s, d, (pt, pb)) in steps.items():
        r = e[lname]
        assert r["pad"]["top"] == pt and r["pad"]["bottom"] == pb
        for i, side in ((0, "bottom"), (1, "right")):
            n, on = tin.shape[2 + i], tout.shape[2 + i]
            unused, unread = _independent(n, on, k, s, d, pt, pb)
            assert r["unused_pad"][side] == unused and r["unread"][side] == unread, (lname, side, size)
            last = (on - 1) * s + d * (k - 1)
            assert r["overhang"][side] == max(0, last - (n + pt + pb - 1))
    assert e["max_pool2d"]["ceil_mode"] and e["c1"]["dilation"] == [2, 2]


def test_resnet50_fig7_224_vs_225():
    """Fig. 7: at 224 every downsampling layer ignores 1 pixel of padding at the right and bottom
    (the top/left padding is read); at 225 no padding is left unconsumed."""
    auditor = PaddingAuditor(_tv("resnet50"))
    r224, r225 = auditor.report((224, 224)), auditor.report((225, 225))
    names = ["conv1", "maxpool", "layer2.0.conv2", "layer2.0.downsample.0", "layer3.0.conv2",
             "layer3.0.downsample.0", "layer4.0.conv2", "layer4.0.downsample.0"]
    assert [e["layer"] for e in r224["padding"]] == names == [e["layer"] for e in r225["padding"]]
    for e in r224["padding"]:
        if e["pad"]["bottom"] > 0:
            assert e["unused_pad"] == {"top": 0, "bottom": 1, "left": 0, "right": 1}, e["layer"]
        else:  # the 1x1 stride-2 shortcut has no padding; it never reads its last row/column
            assert e["unused_pad"]["bottom"] == 0 and e["unread"] == {"bottom": 1, "right": 1}
    for e in r225["padding"]:
        assert e["unused_pad"] == {"top": 0, "bottom": 0, "left": 0, "right": 0}, e["layer"]
        assert e["unread"] == {"bottom": 0, "right": 0}
    assert not r224["clean"] and r225["clean"]
    assert r224["suggested_sizes"] == [[193, 193], [225, 225]]


def test_audit_too_small_is_one_line_error():
    with pytest.raises(ViscnnError, match="too small") as ei:
        PaddingAuditor(fmnist_cnn()).audit((3, 3))
    assert "\n" not in str(ei.value)


# -- the user's model ---------------------------------------------------------------------------------------
def test_user_model_unmodified(resnet18):
    model = copy.deepcopy(resnet18).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inplace = [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    x = make_baseline("random:2", (3, 32, 32))
    mean_maps(model, [x], stage="act")
    channel_maps(model, "conv1", [x])
    mean_patches(model, [x])
    PaddingAuditor(model).report((32, 32), search=4)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)] == inplace
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_layer_is_an_error(resnet18):
    with pytest.raises(ViscnnError, match="no conv layer 'layer9.conv'"):
        channel_maps(resnet18, "layer9.conv", [torch.zeros(1, 3, 32, 32)])
