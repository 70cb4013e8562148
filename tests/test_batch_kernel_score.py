"""The batch-gradient kernel Taylor criterion (``run.class_kernel_score = "batch"``): per image set,
|⟨w, Σ_n ∂target_n/∂w⟩| per kernel from each group's batched weight gradient, checked against a slow
obvious reference (autograd per image, summed, times the weights) and against the per-image path."""

import numpy as np
import pytest
import torch
from torch import nn

from viscnn.graph import build_graph
from viscnn.importance.convmath import as_conv, group_taylor, per_sample_taylor
from viscnn.importance.scorer import Scorer, batch_set_score


class Tiny(nn.Module):
    """Plain, strided, grouped and 1x1 convs, BN/ReLU chains, a residual add and a flattened class layer."""

    def __init__(self, classes=5):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 6, 1, stride=2)
        self.c4 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.c2(h)) + h
        h = torch.relu(self.c3(h))
        h = torch.relu(self.c4(h))
        return self.fc(h.flatten(1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Tiny().eval()
    with torch.no_grad():  # a BN that is not the identity
        m.b1.running_mean.uniform_(-0.5, 0.5)
        m.b1.running_var.uniform_(0.5, 2.0)
    g = build_graph(m, (8, 8), 3, include_classes=True)
    x = torch.randn(7, 3, 8, 8)
    y = torch.tensor([0, 0, 0, 3, 3, 1, 1])
    return m, g, x, y


def reference_kernel_sums(model, graph, target, x, y, idx):
    """Per layer, the signed Σ_{n in idx} Σ_taps w * ∂target_n/∂w: autograd on one image at a time."""
    mods = dict(model.named_modules())
    layers = [l for l in graph.layers if l.kind != "input"]
    ws = [mods[l.name].weight for l in layers]
    tot = [torch.zeros_like(w, dtype=torch.float64) for w in ws]
    for n in idx:
        out = model(x[n:n + 1])
        val = target.evaluate(out, {}, y[n:n + 1]).sum()
        for t, gr in zip(tot, torch.autograd.grad(val, ws)):
            t += gr.double()
    res = {}
    for l, w, t in zip(layers, ws, tot):
        if l.kind == "linear":  # (class k, channel c): Σ over the channel's flattened positions
            res[l.name] = (w.detach().double() * t).view(l.channels, l.in_channels, -1).sum(2).reshape(-1)
        else:
            res[l.name] = (w.detach().double() * t).sum((2, 3)).reshape(-1)
    return res


@pytest.mark.parametrize("target", ["loss", "class:2"])
def test_group_scores_equal_the_autograd_reference(tiny, target):
    model, graph, x, y = tiny
    sc = Scorer(model, graph, target, ["taylor", "taylor_signed"])
    groups = [torch.tensor([0, 1, 2]), slice(3, 5), torch.tensor([5, 6])]
    out = dict(sc.group_layer_scores(x, y, groups))
    for r, idx in enumerate([[0, 1, 2], [3, 4], [5, 6]]):
        ref = reference_kernel_sums(model, graph, sc.target, x, y, idx)
        for li, layer in enumerate(graph.layers):
            if layer.kind == "input":
                continue
            signed = out[li]["taylor_signed"][1][r].double()
            assert signed.abs().max() > 0, layer.name
            np.testing.assert_allclose(signed.numpy(), ref[layer.name].numpy(), rtol=2e-4, atol=1e-6 * float(ref[layer.name].abs().max()),
                                       err_msg=f"{target} {layer.name} group {r}")
            score = batch_set_score("taylor", out[li]["taylor"][1][r].double(), len(idx))
            np.testing.assert_allclose(score.numpy(), ref[layer.name].abs().numpy() / len(idx), rtol=2e-4,
                                       atol=1e-6 * float(ref[layer.name].abs().max()))


def test_group_scores_equal_per_image_scores_summed(tiny):
    """Nodes and the non-Taylor edge metrics are the per-image scores summed; the Taylor edges are the signed
    per-image terms summed (so the batch taylor score is |mean taylor_signed|, not the mean of |.|)."""
    model, graph, x, y = tiny
    metrics = ["taylor", "taylor_signed", "gradient", "activation"]
    sc = Scorer(model, graph, "loss", metrics)
    per = dict(sc.layer_scores(x, y))
    groups = [torch.tensor([0, 2]), torch.tensor([1, 3, 4, 5, 6])]
    grp = dict(sc.group_layer_scores(x, y, groups))
    differs = False
    for li in per:
        for m in metrics:
            n_img, e_img = per[li][m]
            n_grp, e_grp = grp[li][m]
            for r, idx in enumerate(groups):
                np.testing.assert_allclose(n_grp[r].numpy(), n_img[idx].double().sum(0).numpy(), rtol=1e-6, atol=1e-9)
                if not e_img.shape[1]:
                    continue
                want = (per[li]["taylor_signed"][1] if m == "taylor" else e_img)[idx].double().sum(0)
                np.testing.assert_allclose(e_grp[r].double().numpy(), want.numpy(), rtol=2e-4,
                                           atol=1e-6 * float(want.abs().max()) + 1e-12, err_msg=f"{m} layer {li}")
                if m == "taylor":  # the per-image criterion averages |T_n|: larger wherever signs differ
                    differs |= bool((e_img[idx].double().sum(0) > want.abs() * (1 + 1e-3) + 1e-9).any())
    assert differs


def test_group_taylor_is_per_sample_taylor_summed(tiny):
    model, graph, x, _ = tiny
    torch.manual_seed(1)
    for name in ("c1", "c2", "c3", "c4"):
        conv = as_conv(dict(model.named_modules())[name])
        layer = graph.layer(name)
        a = torch.randn(6, conv.in_channels, *([8, 8] if name in ("c1", "c2", "c3") else [4, 4]))
        with torch.no_grad():
            hw = conv(a).shape[2:]
        g = torch.randn(6, conv.out_channels, *hw)
        per = per_sample_taylor(conv, a, g)
        got = group_taylor(conv, a, g, [slice(0, 2), torch.tensor([2, 4, 5]), torch.tensor([3])])
        for r, idx in enumerate([[0, 1], [2, 4, 5], [3]]):
            np.testing.assert_allclose(got[r].numpy(), per[idx].sum(0).numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        assert got.shape == (3, layer.channels, layer.in_channels // layer.groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_group_scores_on_cuda_equal_cpu(tiny):
    model, graph, x, y = tiny
    groups = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5, 6])]
    cpu = dict(Scorer(model, graph, "loss", ["taylor"], device="cpu").group_layer_scores(x, y, groups))
    gpu = Scorer(model, graph, "loss", ["taylor"], device="cuda")
    got = dict(gpu.group_layer_scores(x.cuda(), y.cuda(), [g.cuda() for g in groups]))
    for li in cpu:
        for a, b in zip(cpu[li]["taylor"], got[li]["taylor"]):
            np.testing.assert_allclose(b.cpu().double().numpy(), a.double().numpy(), rtol=1e-3, atol=1e-5)
