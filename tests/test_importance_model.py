"""Scoring whole models: the user's model is untouched, in-place ops are harmless, Taylor scores
predict real ablations, and streamed per-set sums equal separate runs."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from scipy.stats import spearmanr
from torch import nn

from viscnn.graph import build_graph
from viscnn.importance import ScoreAccumulator, class_membership, compute_scores, score_batches
from viscnn.importance.capture import capture, layer_modules
from viscnn.importance.faithfulness import masked_model
from viscnn.importance.prep_api import BatchScorer
from viscnn.importance.scorer import Scorer
from viscnn.importance.targets import parse_target

METRICS = ("taylor", "taylor_signed", "actgrad_abs", "activation", "gradient", "weight")


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [(n, m.inplace) for n, m in model.named_modules() if hasattr(m, "inplace")],
            [p.requires_grad for p in model.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()))


@pytest.mark.parametrize("name, size", [("alexnet", 64), ("resnet18", 32)])
def test_shipped_torchvision_models_are_unchanged_and_inplace_is_harmless(name, size):
    torch.manual_seed(0)
    model = tvm.get_model(name, weights=None)  # exactly as shipped: nn.ReLU(inplace=True), train mode
    before = snapshot(model)
    g = build_graph(model, (size, size))
    x = torch.randn(2, 3, size, size)
    res = Scorer(model, g, "class:3", ["taylor_signed", "activation"])(x)
    after = snapshot(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]
    assert any(f for _, f in before[2])  # it really ships in-place ReLUs
    # the same model with every in-place flag off gives the same scores
    clean = copy.deepcopy(model).eval()
    for m in clean.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    ref = Scorer(clean, g, "class:3", ["taylor_signed", "activation"])(x)
    for met in res:
        for a, b in zip(res[met], ref[met]):
            torch.testing.assert_close(a, b)
    # node activation of the first conv is the real conv output
    first = g.layers[1]
    conv = dict(clean.named_modules())[first.name]
    torch.testing.assert_close(res["activation"][0][:, first.node_offset:first.node_offset + first.channels],
                               conv(x).abs().mean((2, 3)).detach())


class InplaceNet(nn.Module):
    def __init__(self, inplace):
        super().__init__()
        self.use_inplace = inplace
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.c1(x)
        y = F.relu_(y) if self.use_inplace else F.relu(y)
        z = self.c2(y)
        if self.use_inplace:
            z += y  # in-place residual add on a conv output
        else:
            z = z + y
        return self.fc(torch.relu(self.c3(z)).mean((2, 3)))


def test_functional_inplace_ops_do_not_corrupt_scores():
    torch.manual_seed(1)
    a, b = InplaceNet(True).eval(), InplaceNet(False).eval()
    b.load_state_dict(a.state_dict())
    g = build_graph(b, (10, 10))
    x = torch.randn(3, 3, 10, 10)
    sa = Scorer(a, g, "loss", METRICS)
    ra, rb = sa(x), Scorer(b, g, "loss", METRICS)(x)
    assert sa._clone  # the version check noticed the in-place ops
    for met in METRICS:
        torch.testing.assert_close(ra[met][0], rb[met][0])
        torch.testing.assert_close(ra[met][1], rb[met][1])


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


@pytest.mark.parametrize("target", ["class:1", "loss", "unit:4:2"])
def test_taylor_tracks_the_true_effect_of_zeroing_each_kernel(target):
    torch.manual_seed(0)
    m = small_net().eval()
    g = build_graph(m, (12, 12))
    x = torch.randn(32, 3, 12, 12)
    t = parse_target(target, g)
    sc = compute_scores(m, g, t, [(x, None)], ["taylor", "weight"])
    full = capture(m, layer_modules(m, g), g, t, x, None, need_grads=False)
    labels = full.logits.argmax(1) if full.logits is not None else None
    lay = g.layer("2")
    edges = np.arange(lay.edge_offset, lay.edge_offset + lay.num_edges)
    everything = np.arange(g.num_edges)
    true = []
    for e in edges:  # zero one kernel, measure the mean |change| of the target per image
        mm = masked_model(m, g, np.delete(everything, e))
        v = capture(mm, layer_modules(mm, g), g, t, x, labels, need_grads=False).values
        true.append(float((v - full.values).abs().mean()))
    rho = spearmanr(sc["taylor"][1][edges], true)[0]
    rho_w = spearmanr(sc["weight"][1][edges], true)[0]
    print(f"{target}: Spearman(taylor, true |Δ|) = {rho:.3f}; weight magnitude: {rho_w:.3f}")
    assert rho > 0.9  # measured 0.95-0.96 for these three targets
    assert rho > rho_w + 0.3


def test_per_set_sums_in_one_pass_equal_separate_runs():
    torch.manual_seed(2)
    m = small_net().eval()
    g = build_graph(m, (12, 12))
    x = torch.randn(20, 3, 12, 12)
    y = torch.randint(0, 4, (20,))
    batches = [(x[i:i + 6], y[i:i + 6]) for i in range(0, 20, 6)]
    acc = score_batches(m, g, "loss", batches, ["taylor", "actgrad_abs"], class_membership(4), ["c0", "c1", "c2", "c3", "all"])
    means = acc.means()
    assert list(acc.counts) == [int((y == k).sum()) for k in range(4)] + [20]
    for k in range(4):
        idx = (y == k).nonzero().flatten()
        if len(idx) == 0:
            continue
        sep = compute_scores(m, g, "loss", [(x[idx], y[idx])], ["taylor", "actgrad_abs"])
        for met in ("taylor", "actgrad_abs"):
            np.testing.assert_allclose(means[met][0][k], sep[met][0], rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(means[met][1][k], sep[met][1], rtol=1e-4, atol=1e-7)
    allb = compute_scores(m, g, "loss", [(x, y)], ["taylor"])
    np.testing.assert_allclose(means["taylor"][1][-1], allb["taylor"][1], rtol=1e-4, atol=1e-7)
    # sums merge exactly (what an all-reduce does)
    a1 = score_batches(m, g, "loss", batches[:1], ["taylor"], class_membership(4), ["c0", "c1", "c2", "c3", "all"])
    a2 = score_batches(m, g, "loss", batches[1:], ["taylor"], class_membership(4), ["c0", "c1", "c2", "c3", "all"])
    a1.merge(a2)
    np.testing.assert_allclose(a1.means()["taylor"][1], means["taylor"][1], rtol=1e-5, atol=1e-8)
    # the prep entry point gives per-image rows whose mean is the set mean
    per = BatchScorer(m, g, ["taylor"])(x, y)["taylor"]
    assert per[0].shape == (20, g.num_nodes) and per[1].shape == (20, g.num_edges)
    np.testing.assert_allclose(per[1].mean(0).numpy(), allb["taylor"][1], rtol=1e-4, atol=1e-7)
