"""The capped 2D diagram's edge choice: widest-path scores against brute-force path enumeration, and
the drawn edges forming whole input-to-target paths."""

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn

from viscnn.app.figures.circuit_paths import capped_path_edges
from viscnn.graph.widest_paths import path_scores, sinks
from viscnn.graph import build_graph


class Residual(nn.Module):
    """A kernel graph with residual links (conv3 reads conv1 + conv2) and a skip over conv2."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(a + self.c2(a))
        return self.fc(torch.relu(self.c3(b)).mean((2, 3)))


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    g = build_graph(Residual().eval(), (8, 8), in_channels=2, include_classes=True)
    assert len(g.links) > g.num_edges  # the residual add gives conv3's kernels two sources
    return g


def reference_path_scores(g, edges, scores):
    """Every input-to-sink path of circuit edges, enumerated; an edge's score is the best bottleneck
    over the paths through it."""
    d = nx.MultiDiGraph()
    ptr, links = g.link_ptr, g.links
    for e in edges:
        for s in links[ptr[e]:ptr[e + 1], 1]:
            d.add_edge(int(s), int(g.edge_target[e]), key=int(e))
    inputs = [n for l in g.layers if l.kind == "input" for n in range(l.node_offset, l.node_offset + l.channels)]
    ends = sinks(g, np.sort(edges)).tolist()
    best = {int(e): 0.0 for e in edges}
    for a, b in itertools.product(inputs, ends):
        if a in d and b in d:
            for path in nx.all_simple_edge_paths(d, a, b):
                ks = [k for _, _, k in path]
                w = min(abs(float(scores[k])) for k in ks)
                for k in ks:
                    best[k] = max(best[k], w)
    return np.array([best[int(e)] for e in edges])


@pytest.mark.parametrize("seed", range(6))
def test_path_scores_equal_brute_force(graph, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=graph.num_edges)
    edges = rng.permutation(np.flatnonzero(rng.random(graph.num_edges) < 0.7))  # any order
    got = path_scores(graph, edges, scores)
    ref = reference_path_scores(graph, edges, scores)
    assert np.allclose(got, ref), (got, ref)


@pytest.mark.parametrize("k", [3, 6, 10, 15])
def test_capped_edges_are_whole_paths(graph, k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=graph.num_edges)
    edges = np.flatnonzero(rng.random(graph.num_edges) < 0.8)
    got = capped_path_edges(graph, edges, scores, k)
    assert len(got) <= k and set(got) <= set(edges.tolist())
    # every drawn edge lies on an input-to-sink path of drawn edges (sinks: the whole circuit's)
    ones = np.ones(graph.num_edges)
    within = reference_path_scores(graph, got, ones)
    ends = set(sinks(graph, np.sort(edges)).tolist())
    assert set(sinks(graph, got).tolist()) <= ends
    assert (within > 0).all()
    # the widest path comes first: the top edge's best path is drawn whole
    from viscnn.graph.widest_paths import WidestPaths

    wp = WidestPaths(graph, edges, scores)
    first = np.lexsort((-np.abs(scores[wp.edges]), -wp.score))[0]
    best = wp.edges[wp.path(int(first))]
    assert len(best) > k or set(best.tolist()) <= set(got.tolist())
    assert min(abs(scores[best])) == pytest.approx(reference_path_scores(graph, edges, scores).max())


def test_resnet18_cap_is_connected():
    """On a real residual graph the 40 drawn edges of a big circuit reach from the input to the target."""
    torchvision = pytest.importorskip("torchvision")
    g = build_graph(torchvision.models.resnet18(weights=None).eval(), (32, 32), in_channels=3, include_classes=True)
    rng = np.random.default_rng(0)
    scores = rng.lognormal(size=g.num_edges)
    fc = [l for l in g.layers if l.kind == "linear"][0]
    into_7 = np.flatnonzero(g.edge_target == fc.node_offset + 7)
    edges = np.union1d(np.flatnonzero(rng.random(g.num_edges) < 0.3), into_7)
    edges = edges[(g.node_layer[g.edge_target[edges]] != g.node_layer[fc.node_offset]) | np.isin(edges, into_7)]
    got = capped_path_edges(g, edges, scores, 40)
    assert 0 < len(got) <= 40
    lay = g.node_layer[g.edge_target[got]]
    assert lay.min() == 1 and lay.max() == g.node_layer[fc.node_offset]  # from conv1 to the class layer
    assert set(g.edge_target[got[lay == lay.max()]].tolist()) == {fc.node_offset + 7}


@pytest.mark.parametrize("seed", range(4))
def test_traced_path_is_a_complete_path_with_its_score(graph, seed):
    from viscnn.graph.widest_paths import WidestPaths

    rng = np.random.default_rng(seed)
    scores = rng.normal(size=graph.num_edges)
    wp = WidestPaths(graph, np.flatnonzero(rng.random(graph.num_edges) < 0.8), scores)
    ends = set(sinks(graph, wp.edges).tolist())
    inputs = {n for l in graph.layers if l.kind == "input" for n in range(l.node_offset, l.node_offset + l.channels)}
    ptr, links = graph.link_ptr, graph.links
    for i in np.flatnonzero(wp.score > 0):
        p = sorted(wp.path(int(i)), key=lambda q: graph.node_layer[wp.tgt[q]])  # input side first
        e = wp.edges[p]
        assert min(abs(scores[e])) == pytest.approx(wp.score[i])
        assert set(links[ptr[e[0]]:ptr[e[0] + 1], 1].tolist()) & inputs and int(graph.edge_target[e[-1]]) in ends
        for a, b in zip(e[:-1], e[1:]):  # each kernel reads the filter the one before it makes
            assert int(graph.edge_target[a]) in links[ptr[b]:ptr[b + 1], 1].tolist()


@pytest.mark.parametrize("seed", range(4))
def test_union_of_paths_and_strongest_paths(graph, seed):
    """The vectorised trace equals tracing each path in Python; the strongest paths are the largest
    prefix of the path-score order whose union fits the budget."""
    from viscnn.graph.widest_paths import WidestPaths

    rng = np.random.default_rng(seed)
    scores = rng.normal(size=graph.num_edges)
    wp = WidestPaths(graph, np.flatnonzero(rng.random(graph.num_edges) < 0.8), scores)
    live = np.flatnonzero(wp.score > 0)
    starts = rng.choice(live, size=min(4, len(live)), replace=False)
    ref = sorted({p for i in starts for p in wp.path(int(i))})
    assert wp.union_of_paths(starts).tolist() == ref
    order = live[np.lexsort((-wp.w[live], -wp.score[live]))]
    for budget in (3, 6, 10, 25):
        got = wp.strongest_paths(budget)
        assert len(got) <= budget
        m = next((j for j in range(len(order) + 1) if j == len(order) or len(wp.union_of_paths(order[:j + 1])) > budget),
                 len(order))
        want = wp.union_of_paths(order[:m]).tolist() if m else []
        assert got.tolist() == want


def test_select_drawn_leads_with_whole_paths(graph):
    from viscnn.app.figures import graph3d
    from viscnn.graph.widest_paths import WidestPaths

    rng = np.random.default_rng(7)
    scores = rng.normal(size=graph.num_edges)
    edges = rng.permutation(np.flatnonzero(rng.random(graph.num_edges) < 0.9))
    for k in (6, 12, 20):
        got = graph3d.select_drawn(edges, scores, k, graph=graph)
        wp = WidestPaths(graph, edges, scores)
        first = wp.edges[wp.strongest_paths(k // 2)]
        rest = [e for e in sorted(edges.tolist(), key=lambda e: -abs(scores[e])) if e not in set(first.tolist())]
        assert got.tolist() == sorted(first.tolist() + rest[: k - len(first)])
        assert len(first) > 0 and (path_scores(graph, first, np.ones(graph.num_edges)) > 0).all()
        assert np.array_equal(got, graph3d.select_drawn(edges, scores, k, paths=wp))
