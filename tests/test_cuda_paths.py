"""CUDA code paths (issue 16): the scorer (per image and per class group), prep's sparse scoring pass and
the batched feature visualization on ``cuda`` equal their CPU runs. They run only where
``torch.cuda.is_available()``; elsewhere every test is skipped with that reason (a GPU is never required)."""

import numpy as np
import pytest
import torch
from torch import nn

from viscnn.graph import build_graph
from viscnn.importance.scorer import Scorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available (torch.cuda.is_available() is False)")


class Small(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 6, 1, stride=2)
        self.fc = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h)) + h
        return self.fc(torch.relu(self.c3(h)).flatten(1))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    m = Small().eval()
    g = build_graph(m, (8, 8), 3, include_classes=True)
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 0, 1, 1, 1, 3])
    return m, g, x, y


def _close(a, b):
    a, b = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * max(float(np.abs(a).max()), 1e-12))


def test_scorer_per_image_on_cuda_equals_cpu(small):
    model, graph, x, y = small
    metrics = ["taylor", "taylor_signed", "gradient"]
    cpu = dict(Scorer(model, graph, "loss", metrics, device="cpu").layer_scores(x, y))
    gpu = dict(Scorer(model, graph, "loss", metrics, device="cuda").layer_scores(x.cuda(), y.cuda()))
    for li in cpu:
        for m in metrics:
            assert gpu[li][m][0].device.type == "cuda"
            _close(cpu[li][m][0], gpu[li][m][0])
            _close(cpu[li][m][1], gpu[li][m][1])


def test_scorer_groups_on_cuda_equal_cpu(small):
    model, graph, x, y = small
    groups = [slice(0, 2), slice(2, 5), slice(5, 6)]
    cpu = dict(Scorer(model, graph, "loss", ["taylor", "taylor_signed"], device="cpu").group_layer_scores(x, y, groups))
    gpu = dict(Scorer(model, graph, "loss", ["taylor", "taylor_signed"], device="cuda").group_layer_scores(x.cuda(), y.cuda(), groups))
    for li in cpu:
        for m in ("taylor", "taylor_signed"):
            _close(cpu[li][m][0], gpu[li][m][0])
            _close(cpu[li][m][1], gpu[li][m][1])


def test_sparse_prep_scoring_on_cuda_equals_cpu(tmp_path):
    import subprocess

    from test_prep import env, make_config, prep_cmd
    from viscnn.prepped import PreppedModel

    cfg = make_config(tmp_path, per_class=3, batch=6, stages=("graph", "kernels", "scores"))
    text = cfg.read_text().replace('metrics = ["taylor", "taylor_signed"]\n', 'metrics = ["taylor", "taylor_signed"]\n'
                                   'sparse_scores = "on"\nsparse_min_per_layer = 8\nsparse_max_fraction = 0.1\n')
    out = tmp_path / "models"
    pms = {}
    for dev in ("cpu", "cuda"):
        p = tmp_path / f"{dev}.toml"
        p.write_text(text.replace('name = "tiny"', f'name = "{dev}"').replace("[run]\n", f'[run]\ndevice = "{dev}"\n'))
        r = subprocess.run(prep_cmd(p, out), capture_output=True, text=True, env=env(), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        pms[dev] = PreppedModel.open(dev, out)
    a, b = pms["cpu"], pms["cuda"]
    assert b.manifest["class_kernel_score"] == "batch" and b.manifest["scores_layout"] == "sparse"
    for m in ("taylor", "taylor_signed"):
        np.testing.assert_allclose(b.node_scores(m), a.node_scores(m), rtol=1e-3, atol=1e-7)
        for s in a.image_sets:
            ea, eb = a.edge_scores(m, s), b.edge_scores(m, s)
            both = (ea != 0) & (eb != 0)  # near-ties at a layer's cut may pick a different last edge
            assert both.sum() >= 0.95 * (ea != 0).sum()
            np.testing.assert_allclose(eb[both], ea[both], rtol=1e-3, atol=1e-6 * float(np.abs(ea).max()))


def test_featurevis_batch_on_cuda_equals_cpu():
    from viscnn.featurevis.render import render_layer
    from viscnn.zoo.fmnist import fmnist_cnn

    torch.manual_seed(0)
    model = fmnist_cnn().eval()
    layer = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    kw = dict(size=(28, 28), steps=8, seed=0, batch_size=4, channels=[0, 1, 2, 3])
    cpu = render_layer(model, layer, device="cpu", **kw)
    gpu = render_layer(model, layer, device="cuda", **kw)
    assert cpu.images.shape == gpu.images.shape
    # 8 Adam steps from the same seeds: the uint8 images agree up to float rounding of the two devices
    assert np.abs(cpu.images.astype(int) - gpu.images.astype(int)).mean() < 2.0


def test_circuit_methods_and_faithfulness_on_cuda_equal_cpu(small):
    """benchmarks/circuits.py --device cuda: the taylor circuit and its faithfulness are the CPU ones; the
    learned circuit (float rounding can swap near-tied kernels) is the same size and mostly the same."""
    import copy

    from viscnn.importance.faithfulness import faithfulness
    from viscnn.importance.methods import find_circuit
    from viscnn.importance.targets import parse_target

    model, graph, x, _ = small
    t = parse_target("class:1", graph)
    gpu_model = copy.deepcopy(model).cuda()
    cpu_c = find_circuit(model, graph, t, lambda: [(x, None)], "taylor", keep=0.3)
    gpu_c = find_circuit(gpu_model, graph, t, lambda: [(x, None)], "taylor", keep=0.3, device="cuda")
    assert np.array_equal(cpu_c.edges, gpu_c.edges)
    a = faithfulness(model, graph, t, cpu_c, [(x, None)], n_random=2)
    b = faithfulness(gpu_model, graph, t, gpu_c, [(x, None)], n_random=2, device="cuda")
    assert abs(a["circuit"]["pearson"] - b["circuit"]["pearson"]) < 1e-4
    cl = find_circuit(model, graph, t, lambda: [(x, None)], "learned", keep=0.3, steps=20)
    gl = find_circuit(gpu_model, graph, t, lambda: [(x, None)], "learned", keep=0.3, steps=20, device="cuda")
    assert cl.settings["conv_kernels"] == gl.settings["conv_kernels"]
    assert len(np.intersect1d(cl.edges, gl.edges)) >= 0.8 * len(cl.edges)


def test_training_epoch_on_cuda():
    """benchmarks/prep.py --device cuda times its reference epoch there."""
    from viscnn.zoo.train_fmnist import train

    model, acc, times = train(epochs=1, limit=512, log=lambda m: None, device="cuda")
    assert next(model.parameters()).device.type == "cuda" and 0 <= acc <= 1 and times[0] > 0


@pytest.mark.parametrize("name", ["integrated_gradients", "smoothgrad", "occlusion", "gradcam_plusplus", "xgradcam",
                                  "layercam", "guided_backprop", "gradcam"])
def test_attribution_methods_on_cuda_equal_cpu(small, name):
    """The traced working copy on cuda; SmoothGrad's noise comes from the same CPU generators."""
    from viscnn.attribution import make_method

    m, _, x, y = small
    kw = {"layer": "c2"} if "cam" in name else {}
    cpu = make_method(name, m, **kw).attribute(x, y)
    gpu = make_method(name, m, device="cuda", **kw).attribute(x.cuda(), y.cuda())
    assert gpu.is_cuda
    _close(gpu.cpu(), cpu)
