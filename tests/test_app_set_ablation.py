"""Ablation over the image set (issue 12, item 5): the numbers equal a hand-masked copy of the model."""

import copy

import numpy as np
import torch

from app_fixture import default_model
from viscnn.app import dataset_sets as D
from viscnn.app.activations import get_model
from viscnn.app.context import AppContext
from viscnn.app.views.circuit import set_ablation as SA


def test_set_ablation_equals_a_hand_masked_model(tmp_path):
    mdir, name = default_model()
    actx = AppContext(mdir, name, tmp_path)
    pm = actx.prepped(name)
    g = pm.graph
    e = int(g.layers[2].edge_offset + 5)  # a kernel of the second conv
    node = "conv3:4"
    s = dict(actx.defaults(name), target="class:Trouser", set="Trouser", n="64", ablate=[node, f"e{e}"])
    seen = []
    rep = SA.run(actx, s, lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 64) and seen[-1] == (64, 64)
    assert rep["images"] == 64 and rep["where"] == "64 train images of 'Trouser'"
    # by hand: zero the kernel's weights, the node's weight row and bias
    m = copy.deepcopy(get_model(pm)).eval()
    mods = dict(m.named_modules())
    li, j, i = (int(v) for v in g.edges[e])
    ni = g.node_index(node)
    with torch.no_grad():
        mods[g.layers[li].name].weight[j, i] = 0
        lay = g.layers[int(g.node_layer[ni])]
        ch = int(g.node_channel[ni])
        mods[lay.name].weight[ch] = 0
        if mods[lay.name].bias is not None:
            mods[lay.name].bias[ch] = 0
    ds = D.open_dataset(pm)
    pos = D.set_positions(ds, pm.classes, "Trouser", 64)
    full, abl, labs = [], [], []
    with torch.no_grad():
        for x, y in D.dataset_batches(ds, pos):
            full.append(get_model(pm)(x))
            abl.append(m(x))
            labs.append(y)
    full, abl, labs = torch.cat(full).double(), torch.cat(abl).double(), torch.cat(labs)
    k = pm.classes.index("Trouser")
    assert np.isclose(rep["target_full"], full[:, k].mean().item(), atol=1e-5)
    assert np.isclose(rep["target_ablated"], abl[:, k].mean().item(), atol=1e-5)
    assert np.isclose(rep["mean_abs_delta"], (abl[:, k] - full[:, k]).abs().mean().item(), atol=1e-5)
    assert rep["accuracy_full"] == (full.argmax(1) == labs).double().mean().item()
    assert rep["accuracy_ablated"] == (abl.argmax(1) == labs).double().mean().item()
    assert rep["changed"] == int((full.argmax(1) != abl.argmax(1)).sum())
    assert "64 train images of 'Trouser'" in str(SA.result_line(rep))


def test_outside_the_circuit_uses_the_current_circuit(tmp_path):
    from viscnn.app import activations as A

    mdir, name = default_model()
    actx = AppContext(mdir, name, tmp_path)
    s = dict(actx.defaults(name), target="class:Trouser", set="Trouser", n="64", mode="topk", value=300,
             ablate=[A.OUTSIDE])
    nodes, edges, what = SA.ablation_sets(actx, s)
    circ = actx.resolve(s).circuit
    assert not nodes and set(edges) == set(A.outside_edges(actx.prepped(name).graph, circ.edges).tolist())
    assert what == "everything outside the circuit"
