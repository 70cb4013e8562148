"""'Ablate outside the circuit' (issue 12 item 5): every conv kernel outside the current circuit zeroed,
the class layer whole; the zeroing equals a hand loop; the prediction line changes."""

import copy

import numpy as np
import pytest
import torch

from app_fixture import make_prepped
from viscnn.app import activations as A
from viscnn.app.context import AppContext


@pytest.fixture(scope="module")
def actx(tmp_path_factory):
    root = tmp_path_factory.mktemp("outside")
    make_prepped(root, "tiny")
    return AppContext(root, "tiny", root / "cache")


def test_outside_is_the_conv_complement(actx):
    pm = actx.prepped("tiny")
    g = pm.graph
    s = actx.defaults("tiny")
    circ = actx.resolve(s).circuit
    out = A.outside_edges(g, circ.edges)
    conv = [e for l in g.layers if l.kind == "conv" for e in range(l.edge_offset, l.edge_offset + l.num_edges)]
    assert set(out) == set(conv) - set(int(e) for e in circ.edges)
    assert not any(g.layers[int(g.edges[e, 0])].kind == "linear" for e in out)


def test_vectorised_zeroing_equals_a_loop(actx):
    pm = actx.prepped("tiny")
    g = pm.graph
    model = A.get_model(pm)
    edges = np.random.default_rng(0).choice(g.num_edges, g.num_edges // 3, replace=False)
    fast, slow = copy.deepcopy(model), copy.deepcopy(model)
    A._zero_kernels(fast, g, edges)
    mods = dict(slow.named_modules())
    with torch.no_grad():
        for e in edges:
            li, j, i = (int(v) for v in g.edges[e])
            layer = g.layers[li]
            w = mods[layer.name].weight
            if w.ndim == 4:
                w[j, i % (layer.in_channels // layer.groups)] = 0
            else:
                k = w.shape[1] // layer.in_channels
                w[j, i * k:(i + 1) * k] = 0
    for (n, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items()):
        assert torch.equal(a, b), n


def test_prediction_changes_and_is_explained(actx):
    from viscnn.app.callbacks_panels import register  # noqa: F401  (the module the panel callback lives in)
    import viscnn.app.callbacks_panels as CP

    pm = actx.prepped("tiny")
    s = dict(actx.defaults("tiny"), mode="topk", value=5)
    img = actx.image("tiny", s["image"])
    circ = actx.resolve(s).circuit
    full = A.run(pm, s["image"], img)
    cut = A.run(pm, s["image"], img, [A.OUTSIDE], A.outside_edges(pm.graph, circ.edges))
    assert not np.allclose(full.logits, cut.logits)
    assert "outside" not in {a for a in A.parse_ablation(pm.graph, [A.OUTSIDE])[0]}
    p1 = CP._prediction(actx, s, pm, full, full)
    p2 = CP._prediction(actx, dict(s, ablate=[A.OUTSIDE]), pm, cut, full)
    assert str(p1) != str(p2) and "before ablation" in str(p2)


def test_ablations_are_marked_in_3d_and_2d(actx):
    from viscnn.app.callbacks_graph import circuit_props
    from viscnn.app.figures.circuit_svg import circuit_svg

    pm = actx.prepped("tiny")
    g = pm.graph
    s = dict(actx.defaults("tiny"), mode="topk", value=40)
    circ = actx.resolve(s).circuit
    node = int(circ.nodes[len(circ.nodes) // 2])
    edge = int(circ.edges[0])
    s["ablate"] = [g.node_id(node), f"e{edge}", A.OUTSIDE]
    p = circuit_props(actx, s)
    tr = [t for t in p["graph3d"]["figure"]["data"] if t.get("name") == "ablated"]
    assert len(tr) == 1 and len(tr[0]["x"]) == 2 and any(g.node_id(node) in t for t in tr[0]["text"])
    els = p["cyto-data"]["data"]
    marked = {e["data"]["id"] for e in els if "ablated" in e.get("classes", "").split()}
    assert f"k{edge}" in marked and (f"n{node}" in marked or f"n{node}" not in {e["data"]["id"] for e in els})
    assert 'stroke-dasharray="2,2"' in circuit_svg(els, None)
    plain = circuit_props(actx, dict(s, ablate=[]))
    assert not [t for t in plain["graph3d"]["figure"]["data"] if t.get("name") == "ablated"]
