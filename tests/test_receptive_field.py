"""Receptive-field boxes against the support of d(unit)/d(input), the obviously-right reference.

To make the gradient support the *whole* box (no ReLU zeroing, no cancellation), the test copy
gets positive weights (1/fan-in), positive biases, identity batch norm and a positive input, so every
path carries a positive gradient. A max-pool's gradient only reaches each window's arg-max, so the
exact-equality copy swaps each MaxPool2d for an AvgPool2d with the same kernel, stride, padding and
ceil_mode: PyTorch computes both output sizes with the same pooling_output_shape formula (asserted
below through equal feature-map shapes) and the receptive-field walk uses the same window arithmetic
for both, so the boxes are identical by construction. The unmodified models are checked too: there
the support of every gradient must lie inside the box.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.receptive_field import ReceptiveFields, layer_rf_params, layer_rf_table, receptive_field

SIZE = 80


def _model(name):
    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, **kw).eval()


def _positive_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).eval()
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.MaxPool2d):
                assert child.dilation in (1, (1, 1))
                setattr(mod, cname, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.fill_(1.0 / mod.weight[0].numel())
                if mod.bias is not None:
                    mod.bias.fill_(0.1)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.weight.fill_(1.0), mod.bias.fill_(0.1), mod.running_mean.zero_(), mod.running_var.fill_(1.0)
    for mod in m.modules():
        if hasattr(mod, "inplace"):
            mod.inplace = False
    return m


def _grad_boxes(model, layer, positions, x):
    """Bounding box and pixel count of the gradient support of sum_c out[0, c, y, x], per position."""
    got = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.__setitem__("o", o))
    x = x.clone().requires_grad_(True)
    try:
        model(x)
    finally:
        h.remove()
    out = []
    for (y, xx) in positions:
        (g,) = torch.autograd.grad(got["o"][0, :, y, xx].sum(), x, retain_graph=True)
        sup = g[0].abs().sum(0) > 0
        ys, xs = torch.nonzero(sup, as_tuple=True)
        out.append(((int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1), int(sup.sum())))
    return out, tuple(got["o"].shape[2:])


def _positions(h, w):
    return sorted({(0, 0), (h - 1, w - 1), (0, w - 1), (h // 2, w // 2), (h - 1, w // 3), (1 % h, 0)})


CASES = {
    "alexnet": ["features.0", "features.3", "features.6", "features.10"],
    "resnet18": ["conv1", "layer1.1.conv2", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.1.conv2"],
    "googlenet": ["conv2.conv", "inception3a.branch3.1.conv", "inception3b.branch4.1.conv", "inception4a.branch2.0.conv"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_boxes_equal_gradient_support(name):
    model = _model(name)
    pos_model = _positive_copy(model)
    rf = ReceptiveFields(model, (SIZE, SIZE))
    torch.manual_seed(1)
    x_pos = torch.rand(1, 3, SIZE, SIZE) + 0.5
    x_rand = torch.randn(2, 3, SIZE, SIZE)
    for layer in CASES[name]:
        table = rf.table(layer)
        h, w = len(table.rows), len(table.cols)
        positions = _positions(h, w)
        got, shape = _grad_boxes(pos_model, layer, positions, x_pos)
        assert shape == (h, w), (layer, shape)  # avg-pool swap kept every map size
        for (y, xx), (box, count) in zip(positions, got):
            want = rf.box(layer, y, xx)
            assert box == want, (name, layer, (y, xx), box, want)
            assert count == (want[1] - want[0]) * (want[3] - want[2])  # the support fills the box
        # the real model (max-pools, ReLUs, random weights): support inside the box
        got_r, _ = _grad_boxes(model, layer, positions, x_rand[:1])
        for (y, xx), (box, _) in zip(positions, got_r):
            b = rf.box(layer, y, xx)
            assert b[0] <= box[0] and box[1] <= b[1] and b[2] <= box[2] and box[3] <= b[3]


class _Odd(nn.Module):
    """Functional ops, reflect padding, dilation, a strided map with unread remainder, an SE gate."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(4, 4, 3, dilation=2, padding=2)
        self.c3 = nn.Conv2d(4, 4, 2, stride=3)
        self.fc = nn.Conv2d(4, 4, 1)
        self.c4 = nn.Conv2d(4, 3, 3, padding="same")

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.pad(x, (1, 0, 2, 1))
        x = x + self.c2(x)
        x = F.avg_pool2d(x, 2, 1)
        x = self.c3(x)
        g = torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))
        y = F.adaptive_avg_pool2d(x * 0 + 1, (3, 2))
        return self.c4(x), x * g, y


def test_odd_ops_exact():
    torch.manual_seed(0)
    m = _Odd().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.abs() + 0.05)
    size = (23, 19)
    rf = ReceptiveFields(m, size)
    x = (torch.rand(1, 2, *size) + 0.5).requires_grad_(True)
    out = m(x)[0]
    for y in range(out.shape[2]):
        for xx in range(out.shape[3]):
            (g,) = torch.autograd.grad(out[0, :, y, xx].sum(), x, retain_graph=True)
            ys, xs = torch.nonzero(g[0].abs().sum(0) > 0, as_tuple=True)
            box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
            assert rf.box("c4", y, xx) == box, ((y, xx), rf.box("c4", y, xx), box)
    # the SE-gated and adaptive outputs are not modules; c3 has no gate yet
    assert rf.params("c3") is not None


def test_functional_api_and_params():
    m = _model("alexnet")
    assert receptive_field(m, "features.0", 0, 0, (SIZE, SIZE)) == (0, 9, 0, 9)  # 11x11, stride 4, pad 2
    t = layer_rf_table(m, "features.3", (SIZE, SIZE))
    assert t.rows.shape == (9, 2)
    p = layer_rf_params(m, "features.0", (SIZE, SIZE))
    assert p == {"start": (-2, -2), "stride": (4, 4), "size": (11, 11)}
    p3 = layer_rf_params(m, "features.3", (SIZE, SIZE))
    # conv 5x5 pad 2 after maxpool 3/2 after conv 11/4: size 11 + 4*2 + 8*4 = 51, stride 8
    assert p3["stride"] == (8, 8) and p3["size"] == (51, 51)
    assert t.box(4, 4) == tuple(max(0, min(SIZE, v)) for v in
                                (p3["start"][0] + 32, p3["start"][0] + 32 + 51, p3["start"][1] + 32, p3["start"][1] + 32 + 51))


def test_bad_queries():
    m = _model("alexnet")
    rf = ReceptiveFields(m, (SIZE, SIZE))
    with pytest.raises(ViscnnError, match="no module"):
        rf.table("features.99")
    with pytest.raises(ViscnnError, match="outside"):
        rf.box("features.0", 100, 0)
    with pytest.raises(ViscnnError, match="4D"):
        rf.table("classifier.1")
