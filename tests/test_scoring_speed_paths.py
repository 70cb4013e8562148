"""The scoring pass's fast paths against the slow obviously-right ones: the matmul form of the group
weight-gradient Taylor sums against one ``convolution_backward`` per group, and one forward with a
backward per target (``Scorer.capture_with``) against a separate capture per target."""

import numpy as np
import pytest
import torch
from torch import nn

from viscnn.graph import build_graph
from viscnn.importance.convmath import group_taylor
from viscnn.importance.scorer import Scorer
from viscnn.prep.own_class import OwnClassTarget

CONVS = {
    "3x3": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1),
    "3x3 stride 2": dict(in_channels=6, out_channels=10, kernel_size=3, padding=1, stride=2),
    "1x1": dict(in_channels=6, out_channels=12, kernel_size=1),
    "1x1 stride 2": dict(in_channels=6, out_channels=12, kernel_size=1, stride=2),
    "1x1 padded": dict(in_channels=6, out_channels=12, kernel_size=1, padding=1),
    "5x3 dilated": dict(in_channels=4, out_channels=7, kernel_size=(5, 3), dilation=2, padding=(4, 2)),
    "same": dict(in_channels=4, out_channels=7, kernel_size=4, padding="same"),
    "reflect": dict(in_channels=4, out_channels=7, kernel_size=3, padding=1, padding_mode="reflect"),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_group_taylor_mm_equals_the_per_group_loop(name):
    torch.manual_seed(0)
    conv = nn.Conv2d(**CONVS[name]).eval()
    a = torch.randn(7, conv.in_channels, 9, 9)
    with torch.no_grad():
        y = conv(a)
    g = torch.randn_like(y)
    groups = [slice(0, 2), torch.tensor([2, 4, 5]), torch.tensor([3]), slice(6, 7)]
    loop = group_taylor(conv, a, g, groups, method="loop")
    mm = group_taylor(conv, a, g, groups, method="mm")
    assert loop.abs().max() > 0
    np.testing.assert_allclose(mm.numpy(), loop.numpy(), rtol=1e-4, atol=1e-5 * float(loop.abs().max()))
    out = torch.full_like(loop, float("nan"))
    got = group_taylor(conv, a, g, groups, out=out)  # auto, into a caller's buffer
    assert got.data_ptr() == out.data_ptr()
    np.testing.assert_allclose(got.numpy(), loop.numpy(), rtol=1e-4, atol=1e-5 * float(loop.abs().max()))


class InPlace(nn.Module):
    """torchvision-style in-place ReLUs and a residual ``+=`` (the capture's clone path), a 1x1 conv
    and a class layer."""

    def __init__(self, classes=4):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        h = self.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(h))
        out += h
        out = self.relu(out)
        return self.fc(out.mean((2, 3)))


def test_one_forward_for_both_targets_equals_two_captures():
    torch.manual_seed(0)
    model = InPlace().eval()
    with torch.no_grad():
        for bn in (model.b1, model.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    graph = build_graph(model, (6, 6), 3, include_classes=True)
    x, y = torch.randn(6, 3, 6, 6), torch.tensor([0, 0, 2, 2, 3, 1])
    groups = [slice(0, 2), slice(2, 4), slice(4, 5), slice(5, 6)]
    metrics = ["taylor", "taylor_signed", "gradient"]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def scores(shared: bool, reuse: bool):
        loss, own = Scorer(model, graph, "loss", metrics), Scorer(model, graph, OwnClassTarget(), metrics)
        caps = loss.capture_with(x, y, [own]) if shared else [None, None]
        out = {}
        for prefix, sc, cap in (("", loss, caps[0]), ("own.", own, caps[1])):
            for li, s in sc.group_layer_scores(x, y, groups, taylor_dtype=torch.float32, cap=cap, reuse=reuse):
                for m, (n, e) in s.items():  # copied: with reuse the buffer is rewritten by the next batch
                    out[(prefix + m, li)] = (n.clone(), e.clone())
        return out

    ref = scores(shared=False, reuse=False)
    got = scores(shared=True, reuse=True)
    assert ref.keys() == got.keys()
    for key in ref:
        for r, gt in zip(ref[key], got[key]):
            torch.testing.assert_close(gt, r, rtol=0, atol=0, msg=str(key))
    assert any(float(ref[(m, li)][1].abs().max()) > 0 for m, li in ref if m == "own.taylor" and ref[(m, li)][1].numel())
    for k, v in model.state_dict().items():  # the user's model is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


@pytest.mark.parametrize("positions", [1, 4])
def test_group_linear_taylor_into_a_buffer_equals_the_formula(positions):
    from viscnn.importance.convmath import group_linear_taylor

    torch.manual_seed(0)
    C, K = 6, 5
    lin = nn.Linear(C * positions, K)
    a, g = torch.randn(7, C, positions), torch.randn(7, K)
    groups = [slice(0, 3), torch.tensor([3, 6]), torch.tensor([4, 5])]
    W = lin.weight.detach().view(K, C, positions)
    want = torch.stack([(W * torch.einsum("nk,ncs->kcs", g[idx], a[idx])).sum(2) for idx in groups])
    out = torch.full((3, K, C), float("nan"))
    got = group_linear_taylor(lin, a, g, C, groups, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(group_linear_taylor(lin, a, g, C, groups), want, rtol=1e-5, atol=1e-6)
