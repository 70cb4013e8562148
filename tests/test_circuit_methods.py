"""Circuit methods (taylor, iterative, learned), mean ablation and the fair faithfulness report,
each against a plain, slow re-implementation on a tiny model."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from viscnn.cli import main
from viscnn.errors import ViscnnError
from viscnn.graph import build_graph
from viscnn.importance.ablation import ablated_model, layer_input_means
from viscnn.importance.faithfulness import compare, faithfulness, heldout_spec
from viscnn.importance.methods import conv_edges, find_circuit, fixed_edges, iterative_prune, live_conv, size_of
from viscnn.importance.reference import dissected_edge_scores
from viscnn.importance.targets import parse_target


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.c3 = nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.c3(torch.relu(self.c2(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 1.5)
    m.eval()
    g = build_graph(m, (8, 8), include_classes=True)
    x = torch.randn(16, 1, 8, 8)
    return m, g, x, parse_target("class:1", g)


def hand_masked(model, graph, edges):
    """Every kernel not in ``edges`` zeroed by a python loop over the graph's edges."""
    m = copy.deepcopy(model)
    keep = set(int(e) for e in edges)
    with torch.no_grad():
        for e, (li, j, i) in enumerate(graph.edges):
            if e in keep:
                continue
            layer = graph.layers[int(li)]
            w = getattr(m, layer.name).weight
            if layer.kind == "conv":
                w[j, i] = 0
            else:
                S = w.shape[1] // layer.in_channels
                w[j, i * S:(i + 1) * S] = 0
    return m


def test_faithfulness_equals_a_hand_masked_model(setup):
    m, g, x, t = setup
    c = find_circuit(m, g, t, lambda: [(x, None)], "taylor", keep=6)
    assert c.settings["method"] == "taylor" and c.settings["conv_kernels"] <= 6
    rep = faithfulness(m, g, t, c, [(x[:7], None), (x[7:], None)], n_random=2)
    with torch.no_grad():
        full, part = m(x)[:, 1].double().numpy(), hand_masked(m, g, c.edges)(x)[:, 1].double().numpy()
    ref = compare(full, part)
    for k in ("pearson", "relative_error"):
        assert rep["circuit"][k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6)
    assert rep["random"]["relative_error_best"] <= rep["random"]["relative_error"]
    assert rep["predictions"]["class"] == 1 and 0 <= rep["predictions"]["accuracy_circuit"] <= 1


def naive_live(graph, chosen, fixed, sinks):
    """Plain-python input -> sink reachability over the graph's (edge, source) links."""
    ok = set(chosen) | set(fixed)
    src = {}
    for e, s in graph.links:
        src.setdefault(int(e), []).append(int(s))
    order = sorted(ok, key=lambda e: graph.edges[e, 0])
    fwd = set(range(graph.layers[0].channels))
    for e in order:
        if any(s in fwd for s in src[e]):
            fwd.add(int(graph.edge_target[e]))
    bwd = set(int(s) for s in sinks)
    for e in reversed(order):
        if int(graph.edge_target[e]) in bwd:
            bwd.update(src[e])
    live = fwd & bwd
    return {e for e in ok if e not in fixed and int(graph.edge_target[e]) in live and any(s in live for s in src[e])}


def naive_select(graph, scores, pool, n, fixed, sinks):
    order = sorted(pool, key=lambda e: (-scores[e], e))
    chosen = set(order[:n])
    live = naive_live(graph, chosen, fixed, sinks)
    for e in order[n:]:
        if len(live) >= n:
            break
        new = naive_live(graph, chosen | {e}, fixed, sinks)
        if len(new) <= n:
            chosen.add(e)
            live = new
    return live


def test_iterative_equals_a_naive_loop(setup):
    m, g, x, t = setup
    sinks = t.sink_nodes(g)
    fixed = set(np.flatnonzero(fixed_edges(g, sinks)).tolist())
    conv = np.flatnonzero(conv_edges(g))
    n, step = 7, 0.3
    alive = naive_live(g, set(conv.tolist()), fixed, sinks)
    while len(alive) > n:
        goal = max(n, int(len(alive) * (1 - step)))
        mm = hand_masked(m, g, sorted(alive | fixed))
        ref = dissected_edge_scores(mm, g, t, x)["taylor"]  # per image |Σ g·h| of every kernel map
        s = np.zeros(g.num_edges)
        for layer in g.layers:
            if layer.kind == "conv":
                s[layer.edge_offset:layer.edge_offset + layer.num_edges] = ref[layer.name].double().mean(0).numpy()
        alive = naive_select(g, s, alive, goal, fixed, sinks)
    live = iterative_prune(m, g, t, lambda: [(x[:9], None), (x[9:], None)], n, step=step)[n]
    assert sorted(np.flatnonzero(live).tolist()) == sorted(alive)
    c = find_circuit(m, g, t, lambda: [(x, None)], "iterative", keep=n, step=step)
    assert c.settings["method"] == "iterative" and c.settings["conv_kernels"] == len(alive)


def test_learned_returns_exactly_the_size_and_is_connected(setup):
    m, g, x, t = setup
    n = size_of(g, 0.4)
    c = find_circuit(m, g, t, lambda: [(x, None)], "learned", keep=0.4, steps=15)
    conv = conv_edges(g)
    ce = c.edges[conv[c.edges]]
    assert c.settings["method"] == "learned" and len(ce) == n == c.settings["conv_kernels"]
    chosen = np.zeros(g.num_edges, bool)
    chosen[ce] = True
    sinks = np.asarray(t.sink_nodes(g))
    assert np.array_equal(np.flatnonzero(live_conv(g, chosen, fixed_edges(g, sinks), sinks)), ce)
    assert set(g.edge_target[c.edges[~conv[c.edges]]]) == {g.layers[-1].node_offset + 1}  # into the class only


def test_mean_ablation_equals_a_slow_reference(setup):
    m, g, x, t = setup
    ref_x = x[:10]
    rng = np.random.default_rng(1)
    edges = np.sort(rng.choice(g.num_edges, g.num_edges // 2, replace=False))
    keep = set(edges.tolist())
    # image-means of every removed kernel's map in the full model, one image and one kernel at a time
    inputs = {}
    hooks = [getattr(m, l.name).register_forward_hook(lambda mod, i, o, n=l.name: inputs.setdefault(n, []).append(i[0]))
             for l in g.layers if l.kind != "input"]
    with torch.no_grad():
        for b in range(len(ref_x)):
            m(ref_x[b:b + 1])
    for h in hooks:
        h.remove()
    bias = {}
    for e, (li, j, i) in enumerate(g.edges):
        if e in keep:
            continue
        layer = g.layers[int(li)]
        mod = getattr(m, layer.name)
        tot = 0
        for a in inputs[layer.name]:
            if layer.kind == "conv":
                tot = tot + F.conv2d(a[:, i:i + 1], mod.weight[j:j + 1, i:i + 1], None, mod.stride, mod.padding)[0, 0]
            else:
                S = mod.weight.shape[1] // layer.in_channels
                tot = tot + (mod.weight[j, i * S:(i + 1) * S] * a[0, i * S:(i + 1) * S]).sum()
        bias.setdefault(layer.name, {}).setdefault(int(j), 0)
        bias[layer.name][int(j)] = bias[layer.name][int(j)] + tot.detach() / len(ref_x)
    ref = hand_masked(m, g, edges)

    def add(name):
        def hook(mod, i, o):
            o = o.clone()
            for j, v in bias[name].items():
                o[:, j] += v
            return o
        return hook
    for name in bias:
        getattr(ref, name).register_forward_hook(add(name))
    means = layer_input_means(m, g, [(ref_x[:4], None), (ref_x[4:], None)])
    ab = ablated_model(m, g, edges, "mean", means)
    with torch.no_grad():
        torch.testing.assert_close(ab(x), ref(x), rtol=1e-4, atol=1e-5)
        full_keep = ablated_model(m, g, np.arange(g.num_edges), "mean", means)
        torch.testing.assert_close(full_keep(x), m(x))
    rep = faithfulness(m, g, t, find_circuit(m, g, t, lambda: [(ref_x, None)], "iterative", keep=5, ablation="mean",
                                             means=means), [(x, None)], n_random=1, ablation="mean", means=means)
    assert rep["ablation"] == "mean"


def test_sizes_specs_and_cli_errors(tmp_path, capsys):
    torch.manual_seed(0)
    g = build_graph(Tiny().eval(), (8, 8), include_classes=True)
    assert size_of(g, 0.05) == int(np.ceil(0.05 * conv_edges(g).sum())) and size_of(g, 7) == 7
    with pytest.raises(ViscnnError, match="fraction"):
        size_of(g, 1.5)
    assert heldout_spec("fmnist:test:Sneaker:200") == "fmnist:test:Sneaker:200:200"
    assert heldout_spec("fmnist:test:7:200:200") == "fmnist:test:7:200:400" and heldout_spec("random:8") is None
    pyfile = tmp_path / "tiny.py"
    pyfile.write_text("import torch\nfrom torch import nn\n"
                      "class T(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                      "        self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1), nn.Linear(6, 3)\n"
                      "    def forward(self, x):\n        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))\n"
                      "def make():\n    torch.manual_seed(0)\n    return T()\n")
    base = ["circuit", "--model", f"{pyfile}:make", "--target", "class:1", "--images", "random:6", "--input-size", "8", "8",
            "--random-circuits", "1"]
    assert main(base + ["--method", "iterative", "--mass", "0.9"]) == 2
    assert "--mass and --min-score work with --method taylor only" in capsys.readouterr().err
    assert main(base + ["--keep", "5", "--method", "learned"]) == 0
    assert "learned" in capsys.readouterr().out
    assert main(base + ["--min-score", "1e9"]) == 0
    err = capsys.readouterr().err
    assert "circuit is empty" in err and "strictest threshold that keeps a path is --min-score" in err
    assert main(base + ["--keep", "1", "--method", "taylor"]) == 0  # one kernel cannot span 3 layers
    err = capsys.readouterr().err
    k = int(err.split("keeps a path is --keep ")[1].split()[0])
    assert "circuit is empty" in err and k >= 3
    assert main(base + ["--keep", str(k), "--method", "taylor"]) == 0
    assert "circuit is empty" not in capsys.readouterr().err


def test_learned_with_mean_ablation_returns_the_size(setup):
    m, g, x, t = setup
    means = layer_input_means(m, g, [(x, None)])
    c = find_circuit(m, g, t, lambda: [(x, None)], "learned", keep=0.4, steps=15, ablation="mean", means=means)
    assert c.settings["ablation"] == "mean" and c.settings["conv_kernels"] == size_of(g, 0.4)
    assert np.isfinite(c.settings["train_loss"]) and c.settings["train_loss"] >= 0


def test_default_method_follows_the_size_rule(setup):
    """keep -> the learned method (the measured best); mass/min_score -> taylor thresholds."""
    m, g, x, t = setup
    assert find_circuit(m, g, t, lambda: [(x, None)], keep=0.4, steps=5).settings["method"] == "learned"
    assert find_circuit(m, g, t, lambda: [(x, None)], mass=0.9).settings["method"] == "taylor"


def test_learned_minibatches_are_seeded_and_cover_the_whole_set_when_large(setup):
    """batch >= the set is the full-set fit; the random minibatches are reproducible from the seed."""
    from viscnn.importance.learned import learn_mask

    m, g, x, t = setup
    n = size_of(g, 0.4)
    run = lambda **kw: learn_mask(m, g, t, lambda: [(x, None)], n, steps=12, **kw)  # noqa: E731
    full, big = run(batch=0), run(batch=len(x) + 5)
    assert np.array_equal(full[0], big[0]) and full[1]["train_loss"] == big[1]["train_loss"]
    a, b = run(batch=len(x) // 3, seed=1), run(batch=len(x) // 3, seed=1)
    assert np.array_equal(a[0], b[0]) and a[1]["train_loss"] == b[1]["train_loss"]
    with pytest.raises(ViscnnError, match="batch >= 0"):
        run(batch=-1)
