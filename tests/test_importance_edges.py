"""The fast edge scores equal the materialised reference, for every kind of conv."""

import pytest
import torch
from torch import nn

from viscnn.graph import build_graph
from viscnn.importance.convmath import chunked_kernel_maps, kernel_maps, per_sample_taylor
from viscnn.importance.metrics import METRICS, conv_edge_scores
from viscnn.importance.reference import DissectedScorer, loop_kernel_maps
from viscnn.importance.scorer import Scorer
from viscnn.importance.targets import parse_target

CONVS = {
    "plain": dict(in_channels=3, out_channels=4, kernel_size=3),
    "stride_pad": dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 3), padding=(1, 2)),
    "dilated": dict(in_channels=4, out_channels=5, kernel_size=3, dilation=2, padding=3),
    "grouped": dict(in_channels=6, out_channels=9, kernel_size=3, groups=3, stride=2, padding=1, dilation=(1, 2)),
    "depthwise": dict(in_channels=5, out_channels=10, kernel_size=3, groups=5, padding=1),
    "reflect": dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, padding_mode="reflect", dilation=2),
    "circular_nobias": dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="circular", bias=False),
    "same": dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"),
}


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", list(CONVS))
def test_fast_edge_scores_equal_the_materialised_maps(name):
    torch.manual_seed(hash(name) % 1000)
    conv = nn.Conv2d(**CONVS[name]).double()
    a = torch.randn(3, conv.in_channels, 11, 13, dtype=torch.float64)
    y = conv(a).detach()
    g = torch.randn_like(y)
    maps = loop_kernel_maps(conv, a)  # [B, out, in/groups, Ho, Wo], one conv per kernel
    # sum identity: the kernel maps of output j plus its bias rebuild the conv's output
    rebuilt = maps.sum(2) + (conv.bias.view(1, -1, 1, 1) if conv.bias is not None else 0)
    assert rel(rebuilt, y) < 1e-10
    # the grouped-conv dissection equals the per-kernel loop
    km = kernel_maps(conv, a, slice(None))
    assert rel(km.reshape(maps.shape), maps) < 1e-10
    ref = (g.unsqueeze(2) * maps).sum((3, 4))  # Σ_p g_j·h_ji
    for method in ("loop", "unfold", "grouped", "auto"):
        fast = per_sample_taylor(conv, a, g, method)
        assert fast.shape == ref.shape and rel(fast, ref) < 1e-4, method
    # chunked map metrics (tiny chunks: one image, one channel per group) equal unchunked ones
    sc = conv_edge_scores(conv, a, g, METRICS, 3, y.shape[2:], chunk_elements=1)
    torch.testing.assert_close(sc["activation"].double(), maps.abs().mean((3, 4)).reshape(3, -1).to(torch.float32).double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sc["actgrad_abs"].double(), (g.unsqueeze(2) * maps).abs().mean((3, 4)).reshape(3, -1).float().double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sc["taylor_signed"].double(), ref.reshape(3, -1).float().double(), rtol=1e-5, atol=1e-6)
    n_chunks = sum(1 for _ in chunked_kernel_maps(conv, a, y.shape[2:], 1))
    assert n_chunks == 3 * (conv.out_channels // conv.groups)


class Mixed(nn.Module):
    """Strided, dilated, grouped and reflect-padded convs, an in-place ReLU, a class layer."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4)
        self.c3 = nn.Conv2d(12, 6, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu_(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("target", ["loss", "class:2 - 0.5*class:1", "neuron:c3:1:2:2 + 2*unit:c1:0"])
def test_model_scores_equal_the_dissected_reference(target):
    torch.manual_seed(0)
    m = Mixed().eval()
    g = build_graph(m, (12, 12), include_classes=True)
    x = torch.randn(4, 3, 12, 12)
    t = parse_target(target, g)
    res = Scorer(m, g, t, METRICS)(x)
    ref = DissectedScorer(m, g, t)(x)
    for met in ("taylor", "taylor_signed", "actgrad_abs", "activation"):
        for l in g.conv_layers():
            fast = res[met][1][:, l.edge_offset:l.edge_offset + l.num_edges]
            r = ref[met][l.name]
            assert rel(fast, r) < 1e-4, (met, l.name)
    # node Taylor terms are the edge terms plus the bias term (same definition for both)
    s = Scorer(m, g, t, ["taylor_signed"])
    cap = s.capture(x)
    for l in g.conv_layers():
        mod = getattr(s.model, l.name)
        gj = cap.grads[l.name]
        edges = res["taylor_signed"][1][:, l.edge_offset:l.edge_offset + l.num_edges].reshape(4, l.channels, -1).sum(2)
        nodes = res["taylor_signed"][0][:, l.node_offset:l.node_offset + l.channels]
        torch.testing.assert_close(edges + mod.bias.view(1, -1) * gj.sum((2, 3)), nodes, rtol=1e-4, atol=1e-6)
    if t.stop_layer(g) is not None:
        assert "fc" not in cap.grads and float(res["taylor"][1][:, g.layers[-1].edge_offset:].abs().sum()) == 0
        return
    # class-layer edges: g_k * (W block · channel mean); they sum to the node term minus the bias term
    fc = res["taylor_signed"]
    L = g.layers[-1]
    e = fc[1][:, L.edge_offset:].reshape(4, 5, 6).sum(2)
    gk = cap.grads["fc"]
    torch.testing.assert_close(e + m.fc.bias.view(1, -1) * gk, fc[0][:, L.node_offset:], rtol=1e-4, atol=1e-6)
