"""Fast kernel Taylor scores equal the materialised reference through the new edges: a ConvNeXt
block (channels-last Linears as 1x1 convs, LayerNorm, layer scale, stochastic depth) and
ShuffleNet units (chunk, cat, channel shuffle)."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d
from torchvision.models.shufflenetv2 import InvertedResidual

from viscnn.graph import build_graph
from viscnn.importance.metrics import METRICS
from viscnn.importance.node_scores import replacement_taylor
from viscnn.importance.reference import DissectedScorer
from viscnn.importance.scorer import Scorer
from viscnn.importance.targets import parse_target


class ConvNeXtNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8))
        self.block = CNBlock(8, layer_scale=0.7, stochastic_depth_prob=0.1)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.head(self.block(self.stem(x)))).mean((2, 3)))


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = InvertedResidual(8, 16, 2)
        self.unit = InvertedResidual(16, 16, 1)
        self.head = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.head(self.unit(self.down(self.stem(x)))).mean((2, 3)))


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def randomise(m):
    torch.manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


NETS = {  # name: (factory, targets: one on a channels-last Linear / a layer after a shuffle)
    "convnext": (ConvNeXtNet, ["loss", "class:2 - 0.5*class:1", "unit:block.block.3:5 + neuron:block.block.5:2:1:2"]),
    "shufflenet": (ShuffleNet, ["loss", "class:3", "unit:unit.branch2.0:4 - neuron:head:1:2:2"]),
}


@pytest.mark.parametrize("net,target", [(n, t) for n, (_, ts) in NETS.items() for t in ts])
def test_fast_scores_equal_the_dissected_reference(net, target):
    m = randomise(NETS[net][0]())
    g = build_graph(m, (16, 16), include_classes=True)
    if net == "convnext":
        assert [l.name for l in g.conv_layers() if l.channels_last] == ["block.block.3", "block.block.5"]
    x = torch.randn(3, 3, 16, 16)
    t = parse_target(target, g)
    res = Scorer(m, g, t, METRICS)(x)
    ref = DissectedScorer(m, g, t)(x)
    assert set(ref["taylor"]) == {l.name for l in g.conv_layers()}
    s = Scorer(m, g, t, ["taylor_signed"])
    cap = s.capture(x)
    ran = [l for l in g.conv_layers() if l.name in cap.outputs]  # a target inside the net stops the pass there
    assert len(ran) >= 3
    for met in ("taylor", "taylor_signed", "actgrad_abs", "activation"):
        for l in ran:
            fast = res[met][1][:, l.edge_offset:l.edge_offset + l.num_edges]
            r = ref[met][l.name]
            assert fast.shape == r.shape and rel(fast, r) < 1e-4, (met, l.name)
    # node Taylor terms = edge terms + the bias term, for convs and channels-last Linears alike,
    # where no BN/activation chain follows the conv; after a chain: the replacement Taylor reference
    mods = dict(s.model.named_modules())
    chained = [l for l in ran if l.name in s._post]
    if chained:
        rt = replacement_taylor(m, g, t, [(x, None)])
        for l in chained:
            sl = slice(l.node_offset, l.node_offset + l.channels)
            np.testing.assert_allclose(res["taylor"][0][:, sl].mean(0).numpy(), rt[sl], rtol=1e-4, atol=1e-6)
    for l in ran:
        if l.name in s._post:
            continue
        gj = cap.grads[l.name]
        assert gj.shape[1] == l.channels and cap.outputs[l.name].shape[1] == l.channels  # NCHW views
        edges = res["taylor_signed"][1][:, l.edge_offset:l.edge_offset + l.num_edges].reshape(3, l.channels, -1).sum(2)
        nodes = res["taylor_signed"][0][:, l.node_offset:l.node_offset + l.channels]
        bias = mods[l.name].bias
        bias_term = 0 if bias is None else bias.view(1, -1) * gj.sum((2, 3))
        torch.testing.assert_close(edges + bias_term, nodes, rtol=1e-4, atol=1e-5)
