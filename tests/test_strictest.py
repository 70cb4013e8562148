"""The empty circuit's strictest threshold by one widest-path pass equals the bisection reference."""

import numpy as np
import pytest
import torch

from test_circuit_paths import Residual
from viscnn.graph import build_graph
from viscnn.importance.circuits import extract_circuit
from viscnn.importance.methods import strictest_threshold
from viscnn.importance.strictest import strictest_by_paths


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return build_graph(Residual().eval(), (8, 8), in_channels=2, include_classes=True)


def _targets(g, which):
    fc = g.layers[-1]
    if which == "all":
        return list(range(fc.node_offset, fc.node_offset + fc.channels))
    if which == "class":
        return [fc.node_offset + 1]
    c2 = next(l for l in g.layers if l.name == "c2")  # a unit target inside the network
    return [c2.node_offset + 2]


@pytest.mark.parametrize("rule", ["keep", "min_score", "mass"])
@pytest.mark.parametrize("which", ["all", "class", "unit"])
@pytest.mark.parametrize("seed", range(3))
def test_strictest_equals_bisection(graph, rule, which, seed):
    g = graph
    rng = np.random.default_rng(seed)
    es = rng.normal(size=g.num_edges) * rng.lognormal(size=g.num_edges)
    es[rng.random(g.num_edges) < 0.2] = 0.0  # some edges carry nothing
    ns = np.zeros(g.num_nodes)
    t = _targets(g, which)
    fast = strictest_by_paths(g, es, rule, t)
    slow = strictest_threshold(g, ns, es, rule, t)
    if slow is None:
        assert fast is None
        return
    if rule == "mass":  # the bisection stops within 1e-9 above the true value
        assert fast == pytest.approx(slow, abs=2e-8)
    else:
        assert fast == pytest.approx(slow, rel=1e-12)
    keep = len(extract_circuit(g, ns, es, target_nodes=t, **{rule: fast}).edges)
    assert keep > 0  # the answer keeps a path
    if rule == "keep" and fast > 1:
        assert len(extract_circuit(g, ns, es, target_nodes=t, keep=int(fast) - 1).edges) == 0
    if rule == "min_score":
        assert len(extract_circuit(g, ns, es, target_nodes=t, min_score=fast * (1 + 1e-9)).edges) == 0
    if rule == "mass":
        assert len(extract_circuit(g, ns, es, target_nodes=t, mass=max(fast - 1e-6, 1e-9)).edges) == 0


def test_no_path_at_all(graph):
    es = np.zeros(graph.num_edges)
    es[:3] = 1.0  # only input->c1 kernels: nothing reaches the classes
    for rule in ("keep", "min_score", "mass"):
        assert strictest_by_paths(graph, es, rule, _targets(graph, "all")) is None
