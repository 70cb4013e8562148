"""The fast threshold path (viscnn.importance.ranked) gives exactly extract_circuit's circuits, and
says when sparse scores cannot decide a threshold."""

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from viscnn.graph import build_graph
from viscnn.importance.circuits import extract_circuit
from viscnn.importance.ranked import RankedEdges, extract_circuit_ranked

from test_circuits import SmallResNet

RULES = [("mass", 0.05), ("mass", 0.5), ("mass", 0.93), ("mass", 1.0), ("keep", 1), ("keep", 40), ("keep", 0.3),
         ("keep", 10**9), ("keep", 0), ("min_score", 0.5), ("min_score", 1e-9), ("min_score", 10.0)]


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    return {"small_resnet": build_graph(SmallResNet(), (16, 16), include_classes=True),
            "resnet18": build_graph(tvm.resnet18(weights=None, num_classes=7), (32, 32), include_classes=True)}


def _scores(g, seed, zeros=0.2, signed=True):
    rng = np.random.default_rng(seed)
    es = rng.lognormal(0, 1.5, g.num_edges) * (rng.choice([-1, 1], g.num_edges) if signed else 1)
    es[rng.random(g.num_edges) < zeros] = 0.0  # dead kernels: never in a circuit
    return rng.random(g.num_nodes), es


def _same(a, b):
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_allclose(a.edge_scores, b.edge_scores)
    np.testing.assert_allclose(a.node_scores, b.node_scores)
    assert {k: v for k, v in a.settings.items() if k != "exact"} == b.settings


@pytest.mark.parametrize("name", ["small_resnet", "resnet18"])
@pytest.mark.parametrize("rule,value", RULES)
def test_ranked_equals_reference(graphs, name, rule, value):
    g = graphs[name]
    for seed in range(3 if name == "small_resnet" else 1):
        ns, es = _scores(g, seed)
        last = g.layers[-1]
        for targets in (None, [last.node_offset + seed % last.channels]):
            ref = extract_circuit(g, ns, es, target_nodes=targets, **{rule: value})
            fast = extract_circuit_ranked(g, RankedEdges.from_dense(g, es), ns, target_nodes=targets, **{rule: value})
            _same(fast, ref)
            assert "exact" not in fast.settings  # dense scores: always exact


def test_ties_and_nan(graphs):
    g = graphs["small_resnet"]
    ns, es = _scores(g, 5)
    es = np.round(es, 0)  # many ties
    es[::17] = np.nan  # nan counts as 0, as in extract_circuit
    for rule, value in [("mass", 0.5), ("mass", 0.9), ("min_score", 2.0)]:
        _same(extract_circuit_ranked(g, RankedEdges.from_dense(g, es), ns, **{rule: value}),
              extract_circuit(g, ns, es, **{rule: value}))


def _truncate(r: RankedEdges, per_layer: int) -> RankedEdges:
    """The same ranking with only each layer's top ``per_layer`` edges stored (as a sparse prepped row)."""
    keep, starts, complete = [], [0], []
    for l in range(len(r.totals)):
        a, b = r.starts[l], r.starts[l + 1]
        n = min(per_layer, b - a)
        keep.append(np.arange(a, a + n))
        starts.append(starts[-1] + n)
        complete.append(n == b - a)
    k = np.concatenate(keep)
    return RankedEdges(r.order[k], r.values[k], np.asarray(starts), r.totals, np.asarray(complete), r.num_edges)


def test_truncated_ranking_is_exact_inside_the_stored_mass(graphs):
    g = graphs["resnet18"]
    ns, es = _scores(g, 1)
    full = RankedEdges.from_dense(g, es)
    part = _truncate(full, 200)
    assert not part.complete.all()
    for rule, value in [("mass", 0.02), ("keep", 300), ("min_score", 300.0)]:
        c = extract_circuit_ranked(g, part, ns, **{rule: value})
        assert c.settings["exact"] is True, (rule, value)
        _same(c, extract_circuit(g, ns, es, **{rule: value}))
    for rule, value in [("mass", 0.9), ("keep", 0.5), ("min_score", 1e-6)]:  # beyond what is stored
        c = extract_circuit_ranked(g, part, ns, **{rule: value})
        assert c.settings["exact"] is False, (rule, value)
        assert set(c.edges) <= set(part.order)


def test_errors(graphs):
    g = graphs["small_resnet"]
    ns, es = _scores(g, 0)
    r = RankedEdges.from_dense(g, es)
    for kw in ({}, {"mass": 0.5, "keep": 3}, {"mass": 0.0}, {"keep": 1.5}, {"keep": -1}, {"keep": True}):
        with pytest.raises(Exception):
            extract_circuit_ranked(g, r, ns, **kw)
