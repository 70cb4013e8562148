"""Node scores that track channel removal (viscnn.importance.node_scores), on a tiny BN model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from viscnn.graph import build_graph
from viscnn.importance.accumulate import compute_scores
from viscnn.importance.node_scores import (elementwise_chains, exact_removal, node_scores_from_kernels,
                                           replacement_taylor)
from viscnn.importance.scorer import Scorer
from viscnn.importance.targets import parse_target
from viscnn.zoo.fmnist import FashionCNN

SIZE = (12, 12)


def _model(seed: int, x: torch.Tensor) -> FashionCNN:
    """conv -> BN -> ReLU x4, BN statistics calibrated on ``x`` (positive images, so conv outputs
    have real means), then random γ and mostly negative β: zeroing a conv output moves its BN
    output by γμ/σ across the ReLU kink, the case where plain node Taylor misjudges removals."""
    torch.manual_seed(seed)
    m = FashionCNN(widths=(4, 5, 6, 6), n_classes=3)
    bns = (m.bn1, m.bn2, m.bn3, m.bn4)
    for bn in bns:
        bn.momentum = None  # cumulative average: running stats = the batch's
    m.train()
    with torch.no_grad():
        m(x)
        for bn in bns:
            C = bn.num_features
            bn.weight.copy_(torch.rand(C) + 0.5)
            bn.bias.copy_(torch.randn(C) - 0.5)
    return m.eval()


def _images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(24, 1, *SIZE)


@pytest.fixture(scope="module")
def setup():
    x = _images()
    m = _model(0, x)
    g = build_graph(m, SIZE, in_channels=1, include_classes=True)
    batches = [(x[:16], None), (x[16:], None)]
    return m, g, x, batches


def _conv_idx(g):
    return np.concatenate([np.arange(l.node_offset, l.node_offset + l.channels) for l in g.conv_layers()])


def _f0(bn) -> torch.Tensor:
    """relu(BN(0)) per channel, by the eval-mode formula."""
    return torch.relu(bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps))


def _ref_replacement(m, g, target: str, x: torch.Tensor) -> np.ndarray:
    """Image by image: the post-ReLU map as a leaf, |Σ (a - relu(BN(0)))·∂target/∂a|."""
    tgt = parse_target(target, g)
    out = np.zeros(g.num_nodes)
    for b in range(len(x)):
        for i in range(1, 5):
            conv, bn, relu = getattr(m, f"conv{i}"), getattr(m, f"bn{i}"), getattr(m, f"relu{i}")
            leaf = {}

            def hook(mod, inp, o):
                leaf["a"] = o.detach().requires_grad_(True)
                return leaf["a"]
            h = relu.register_forward_hook(hook)
            try:
                logits = m(x[b:b + 1])
            finally:
                h.remove()
            v = tgt.evaluate(logits, {}, logits.argmax(1))
            (ga,) = torch.autograd.grad(v.sum(), leaf["a"])
            a = leaf["a"].detach()
            s = ((a - _f0(bn).view(1, -1, 1, 1)) * ga).sum((2, 3)).abs()[0]
            off = g.layer(f"conv{i}").node_offset
            out[off:off + conv.out_channels] += s.detach().numpy()
    return out / len(x)


def _ref_removal(m, g, target: str, x: torch.Tensor) -> np.ndarray:
    """Zero a whole filter's weights (= its conv output channel; no bias), image by image."""
    tgt = parse_target(target, g)
    out = np.zeros(g.num_nodes)
    with torch.no_grad():
        for b in range(len(x)):
            full = m(x[b:b + 1])
            lab = full.argmax(1)
            v0 = tgt.evaluate(full, {}, lab)
            for l in g.conv_layers():
                w = dict(m.named_modules())[l.name].weight
                for c in range(l.channels):
                    keep = w[c].clone()
                    w[c] = 0
                    out[l.node_offset + c] += float((tgt.evaluate(m(x[b:b + 1]), {}, lab) - v0).abs())
                    w[c] = keep
    return out / len(x)


def test_chains_found(setup):
    m, g, x, _ = setup
    assert elementwise_chains(m, g, x[:1]) == {f"conv{i}": [f"bn{i}", f"relu{i}"] for i in range(1, 5)}


@pytest.mark.parametrize("target", ["loss", "class:1"])
def test_fast_scores_equal_references(setup, target):
    m, g, x, batches = setup
    idx = _conv_idx(g)
    rep = replacement_taylor(m, g, target, batches)
    np.testing.assert_allclose(rep[idx], _ref_replacement(m, g, target, x)[idx], rtol=1e-4, atol=1e-6)
    ex, cost = exact_removal(m, g, target, batches)
    np.testing.assert_allclose(ex[idx], _ref_removal(m, g, target, x)[idx], rtol=1e-4, atol=1e-6)
    assert cost["forwards"] == len(batches) * (1 + len(idx))


def _plain(m, g, target, batches) -> np.ndarray:
    """Plain node Taylor |Σ g·h| at the conv output, from the captured maps and gradients."""
    sc = Scorer(m, g, target, ["gradient"])
    out = np.zeros(g.num_nodes)
    n = 0
    for x, y in batches:
        cap = sc.capture(x, y)
        for l in g.conv_layers():
            t = (cap.outputs[l.name] * cap.grads[l.name]).sum((2, 3)).abs().sum(0)
            out[l.node_offset:l.node_offset + l.channels] += t.numpy()
        n += len(x)
    return out / n


def test_plain_chain_reduces_to_node_taylor(setup):
    """Stopping after the conv (no chain) with a zero replacement is the plain node Taylor score."""
    m, g, x, batches = setup
    idx = _conv_idx(g)
    rep = replacement_taylor(m, g, "class:0", batches, replace="zero", chain_len=0)
    np.testing.assert_allclose(rep[idx], _plain(m, g, "class:0", batches)[idx], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("target", ["loss", "class:1"])
def test_default_node_taylor_is_replacement_taylor(setup, target):
    """compute_scores' node ``taylor`` (the default node score, prep and app) is replacement Taylor."""
    m, g, x, batches = setup
    idx = _conv_idx(g)
    fast = compute_scores(m, g, target, batches, ("taylor", "taylor_signed"))
    np.testing.assert_allclose(fast["taylor"][0][idx], _ref_replacement(m, g, target, x)[idx], rtol=1e-4, atol=1e-6)
    assert not np.allclose(fast["taylor"][0][idx], _plain(m, g, target, batches)[idx], rtol=1e-2)


def test_kernel_aggregates(setup):
    m, g, _, batches = setup
    e = compute_scores(m, g, "class:0", batches, ("taylor",))["taylor"][1]
    ins, outs, cnt = np.zeros(g.num_nodes), np.zeros(g.num_nodes), np.zeros(g.num_nodes)
    for k, (li, j, i) in enumerate(g.edges):
        ins[g.layers[li].node_offset + j] += e[k]
        cnt[g.layers[li].node_offset + j] += 1
    for k, src in g.links:
        outs[src] += e[k]
    np.testing.assert_allclose(node_scores_from_kernels(g, e, "in_sum"), ins, rtol=1e-5)
    np.testing.assert_allclose(node_scores_from_kernels(g, e, "in_mean"), ins / np.maximum(cnt, 1), rtol=1e-5)
    np.testing.assert_allclose(node_scores_from_kernels(g, e, "out_sum"), outs, rtol=1e-5)


def test_replacement_ranks_removals_better_than_plain_taylor():
    """Spearman against brute-force conv-output zeroing, over 4 random BN models x 2 targets
    (seeds fixed, not picked): replacement Taylor wins every time and by > 0.08 on average
    (measured: plain 0.83, replacement 0.97)."""
    x = _images()
    batches = [(x[:16], None), (x[16:], None)]
    plain_r, rep_r = [], []
    for seed in range(4):
        m = _model(seed, x)
        g = build_graph(m, SIZE, in_channels=1, include_classes=True)
        idx = _conv_idx(g)
        for target in ("loss", "class:0"):
            truth = exact_removal(m, g, target, batches)[0][idx]
            plain_r.append(spearmanr(_plain(m, g, target, batches)[idx], truth)[0])
            rep_r.append(spearmanr(replacement_taylor(m, g, target, batches)[idx], truth)[0])
    assert all(r > p for r, p in zip(rep_r, plain_r)), (rep_r, plain_r)
    assert np.mean(rep_r) > 0.9 and np.mean(rep_r) > np.mean(plain_r) + 0.08, (rep_r, plain_r)


class _SharedRelu(torch.nn.Module):
    """One ReLU module used twice (like torchvision's ResNet blocks)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(1, 3, 3, padding=1, bias=False), torch.nn.BatchNorm2d(3)
        self.conv2, self.bn2 = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False), torch.nn.BatchNorm2d(3)
        self.relu = torch.nn.ReLU()
        self.gap, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(3, 2)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.gap(x).flatten(1))


def test_shared_module_ends_the_chain():
    m = _SharedRelu().eval()
    g = build_graph(m, (6, 6), in_channels=1, include_classes=True)
    x = torch.rand(4, 1, 6, 6)
    assert elementwise_chains(m, g, x) == {"conv1": ["bn1"], "conv2": ["bn2"]}
    # through BN alone (affine) the replacement score is exactly the plain node Taylor score
    plain = _plain(m, g, "class:0", [(x, None)])
    np.testing.assert_allclose(replacement_taylor(m, g, "class:0", [(x, None)])[1:7], plain[1:7], rtol=1e-4, atol=1e-6)
