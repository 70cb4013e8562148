"""The whole engine, not only the graph, on channel-permutation models and channels-last blocks
(issue 15 item 3): importance, circuits, receptive fields, feature visualization, prep and the app on
a tiny ConvNeXt (permute to NHWC, LayerNorm over channels, Linears over channels as 1x1 conv layers,
layer scale, stochastic depth) and a small ShuffleNetV2 (chunk, channel shuffle), plus graph,
importance and circuits on timm ConvNeXts. Every check is against an independent reference:

* kernel Taylor = ``Σ_k w·∂target/∂w`` over the kernel's own weights, per image (plain autograd on
  the unmodified model: for kernel w_ji that is ``Σ_p g_j·(a_i ⋆ w_ji)``, also for a Linear's 1x1
  "kernel" ``weight[j, i]``);
* node Taylor = ``∂target/∂α`` of a per-image, per-channel scale α on the layer's output, at α = 1
  (for a conv with a BN/ReLU chain: ``chain(0) + α·(a - chain(0))`` at the chain's end, i.e. the
  replacement Taylor score), the chain read off the model's Sequential by hand;
* circuits against networkx paths (``test_circuits.reference_paths``); receptive fields against the
  support of d(unit)/d(input) (``test_receptive_field``'s positive-copy recipe for ShuffleNet, the
  real smooth model in float64 for ConvNeXt, which has no ReLU or max-pool).
Sizes are tiny (32-64 px) so the file runs in well under a minute on 2 CPU cores."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from test_circuits import reference_paths
from test_importance_any import randomise
from test_receptive_field import _positive_copy
from viscnn.errors import UnsupportedOperationError, ViscnnError
from viscnn.graph import build_graph
from viscnn.importance import Scorer, extract_circuit, faithfulness, masked_model, parse_target
from viscnn.importance.ablation import ablated_model, layer_input_means

TINYNEXT_PY = '''
import torch
from torchvision.models.convnext import CNBlockConfig, ConvNeXt


def tinynext(classes=3):
    """Two ConvNeXt stages (8 and 16 channels, one block each): stem conv 4/4 + LayerNorm2d, a 7x7
    depthwise conv, permute to NHWC, LayerNorm, Linear 4x, GELU, Linear, permute back, layer scale,
    stochastic depth; LayerNorm2d + conv 2/2 downsampling; LayerNorm2d + Linear head."""
    torch.manual_seed(0)
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], stochastic_depth_prob=0.1,
                    layer_scale=0.5, num_classes=classes)
'''
_NS: dict = {}
exec(TINYNEXT_PY, _NS)
LINEAR = "features.1.0.block.3"  # a Linear over NHWC channels (1x1 conv layer), GELU after it
LINEAR2 = "features.1.0.block.5"
DWCONV = "features.1.0.block.0"  # a depthwise conv whose output LayerNorm normalises


def tinynext(classes=10):
    return _NS["tinynext"](classes).eval()


def shufflenet():
    torch.manual_seed(0)
    return randomise(torchvision.models.shufflenet_v2_x0_5(weights=None, num_classes=10))


MODELS = {"convnext": (tinynext, 32), "shufflenet": (shufflenet, 32)}


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    make, size = MODELS[request.param]
    m = make()
    g = build_graph(m, (size, size), include_classes=True)
    torch.manual_seed(1)
    return request.param, m, g, torch.randn(3, 3, size, size)


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def chain_of(model, name):
    """The BN/activation modules right after a Conv2d in its Sequential (what the node score is taken after)."""
    mods = dict(model.named_modules())
    if not isinstance(mods[name], nn.Conv2d) or "." not in name:
        return []
    parent, idx = name.rsplit(".", 1)
    kids = list(mods[parent].named_children()) if isinstance(mods[parent], nn.Sequential) else []
    pos = [k for k, _ in kids].index(idx) if idx in [k for k, _ in kids] else len(kids)
    chain = []
    for k, mod in kids[pos + 1:]:
        if not isinstance(mod, (nn.BatchNorm2d, nn.ReLU, nn.GELU)):
            break
        chain.append(f"{parent}.{k}")
    return chain


def reference_scores(model, graph, target, x):
    """Per-image signed Taylor scores of every kernel and node, by plain autograd (see the docstring)."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if hasattr(mod, "inplace"):
            mod.inplace = False
    mods = dict(m.named_modules())
    t = parse_target(target, graph)
    B = x.shape[0]
    edges = torch.zeros(B, graph.num_edges, dtype=torch.float64)
    for b in range(B):  # kernel Taylor: <w, dT/dw> per kernel, one image at a time
        m.zero_grad()
        t.evaluate(m(x[b:b + 1]), {}, None).sum().backward()
        for l in graph.layers[1:]:
            w = mods[l.name].weight
            wg = (w * w.grad).detach().double()
            per = wg.reshape(l.channels, l.in_channels, -1) if l.kind == "linear" else wg.reshape(w.shape[0], w.shape[1], -1)
            edges[b, l.edge_offset:l.edge_offset + l.num_edges] = per.sum(2).reshape(-1)
    # node Taylor: dT/d(alpha) of a per-image, per-channel scale at the layer output (or its chain's end)
    alphas, hooks = {}, []
    for l in graph.layers[1:]:
        chain = chain_of(m, l.name)
        where = mods[chain[-1]] if chain else mods[l.name]
        zero = torch.zeros(1, l.channels, 1, 1)
        with torch.no_grad():
            for n in chain:  # chain(0): what zeroing the filter leaves at the chain's end
                zero = mods[n](zero)
        C = l.channels
        view = (C,) if l.kind == "linear" else (1, 1, C) if l.channels_last else (C, 1, 1)

        def hook(mod, inp, out, name=l.name, zero=zero.reshape(view), view=view):
            a = alphas.setdefault(name, torch.ones(B, *view, requires_grad=True))
            return zero + a * (out - zero)
        hooks.append(where.register_forward_hook(hook))
    x_alpha = torch.ones(B, 3, requires_grad=True)
    try:
        t.evaluate(m(x * x_alpha[:, :, None, None]), {}, None).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    nodes = torch.zeros(B, graph.num_nodes, dtype=torch.float64)
    nodes[:, :3] = x_alpha.grad.double()
    for l in graph.layers[1:]:
        nodes[:, l.node_offset:l.node_offset + l.channels] = alphas[l.name].grad.double().reshape(B, -1)
    return nodes, edges


# -- importance ------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["class:3", "loss"])
def test_node_and_kernel_scores_equal_autograd_references(built, target):
    net, m, g, x = built
    if net == "convnext":
        assert [l.name for l in g.conv_layers() if l.channels_last] == [
            LINEAR, LINEAR2, "features.3.0.block.3", "features.3.0.block.5"]
    res = Scorer(m, g, target, ["taylor", "taylor_signed"])(x)
    n, e = res["taylor_signed"]
    assert n.shape == (3, g.num_nodes) and e.shape == (3, g.num_edges)
    assert res["taylor"][0].shape == n.shape and res["taylor"][1].shape == e.shape
    assert all(bool(torch.isfinite(t).all()) for pair in res.values() for t in pair)
    torch.testing.assert_close(res["taylor"][1], e.abs())
    rn, re_ = reference_scores(m, g, target, x)
    for l in g.layers:
        ns = slice(l.node_offset, l.node_offset + l.channels)
        assert rel(n[:, ns], rn[:, ns]) < 1e-4, (l.name, "nodes")
        if l.kind != "input":
            es = slice(l.edge_offset, l.edge_offset + l.num_edges)
            assert rel(e[:, es], re_[:, es]) < 1e-4, (l.name, "kernels")
            assert float(re_[:, es].abs().max()) > 0, l.name  # the check is not vacuous
    torch.testing.assert_close(res["taylor"][0], n.abs())


# -- circuits ----------------------------------------------------------------------------------------
def test_circuits_connect_input_to_target_and_their_masked_model_runs(built):
    net, m, g, x = built
    t = parse_target("class:3", g)
    res = Scorer(m, g, t, ["taylor"])(x)
    ns, es = (v.mean(0).numpy() for v in res["taylor"])
    sink = t.sink_nodes(g)
    c = extract_circuit(g, ns, es, mass=0.5, target_nodes=sink)
    assert len(c.edges) > 0 and len(c.nodes) > 0
    ok = np.zeros(g.num_edges, bool)  # connected: networkx finds every circuit edge on an input -> target path
    ok[c.edges] = True  # that uses circuit edges only, and every circuit node on one
    nodes, edges = reference_paths(g, ok, sink)
    np.testing.assert_array_equal(c.edges, edges)
    np.testing.assert_array_equal(c.nodes, nodes)
    layer_of = g.edges[c.edges, 0]
    assert set(c.nodes[c.nodes < 3]) and sink[0] in set(c.nodes)  # from the image channels to the class node
    assert g.layers[-1].kind == "linear" and set(g.edge_target[c.edges[layer_of == len(g.layers) - 1]]) == set(sink)
    if net == "convnext":  # edges of a Linear-as-1x1 layer are in it
        assert any(g.layers[li].channels_last for li in set(layer_of.tolist()))
    # the masked model: exactly the circuit's kernels kept, the original untouched, it runs
    mm = masked_model(m, g, c.edges)
    mods, orig = dict(mm.named_modules()), dict(m.named_modules())
    keep = np.zeros(g.num_edges, bool)
    keep[c.edges] = True
    for l in g.conv_layers():
        w, w0 = mods[l.name].weight.detach(), orig[l.name].weight.detach()
        k = torch.from_numpy(keep[l.edge_offset:l.edge_offset + l.num_edges]).view(w.shape[0], w.shape[1])
        k = k.view(*k.shape, *([1] * (w.dim() - 2)))
        assert torch.equal(w, w0 * k), l.name
    with torch.no_grad():
        out = mm(x)
        assert out.shape == (3, 10) and bool(torch.isfinite(out).all())
        torch.testing.assert_close(masked_model(m, g, np.arange(g.num_edges))(x), m(x))
    rep = faithfulness(m, g, t, c, [(x, None)], n_random=1)
    assert rep["edges"] == len(c.edges) and rep["images"] == 3 and rep["circuit"]["relative_error"] is not None
    # mean ablation: a layer with every kernel replaced by its image-mean map outputs the image mean of its maps
    means = layer_input_means(m, g, [(x, None)])
    lay = g.layer(LINEAR if net == "convnext" else "stage2.1.branch2.5")
    rest = np.setdiff1d(np.arange(g.num_edges), np.arange(lay.edge_offset, lay.edge_offset + lay.num_edges))
    outs = {}
    for tag, model in (("full", m), ("mean", ablated_model(m, g, rest, "mean", means))):
        h = dict(model.named_modules())[lay.name].register_forward_hook(lambda mod, i, o, tag=tag: outs.__setitem__(tag, o))
        with torch.no_grad():
            model(x)
        h.remove()
    torch.testing.assert_close(outs["mean"], outs["full"].mean(0, keepdim=True).expand_as(outs["full"]), rtol=1e-4, atol=1e-6)
    faithfulness(m, g, t, c, [(x, None)], n_random=1, ablation="mean", means=means)


# -- receptive fields --------------------------------------------------------------------------------
def _support_box(model, layer, channels_last, c, y, xx, x):
    got = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: got.__setitem__("o", o))
    x = x.clone().requires_grad_(True)
    try:
        model(x)
    finally:
        h.remove()
    o = got["o"]
    v = o[0, y, xx, c] if channels_last else (o[0, :, y, xx].sum() if c is None else o[0, c, y, xx])
    (gr,) = torch.autograd.grad(v, x)
    sup = gr[0].abs().sum(0) > 0
    ys, xs = torch.nonzero(sup, as_tuple=True)
    return (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1), int(sup.sum())


RF_CASES = {  # model: (input size, layers, positions)
    "convnext": (40, ["features.0.0", DWCONV, LINEAR, LINEAR2, "features.2.1"], [(0, 0), (1, 2), (4, 4), (9, 3)]),
    "shufflenet": (64, ["stage2.0.branch1.2", "stage2.1.branch2.0", "stage2.1.branch2.3", "stage3.0.branch2.0",
                        "stage3.1.branch2.5"], [(0, 0), (2, 1), (7, 7)]),
}


@pytest.mark.parametrize("net", list(RF_CASES))
def test_receptive_field_boxes_equal_gradient_support(net):
    from viscnn.receptive_field import ReceptiveFields

    size, layers, positions = RF_CASES[net]
    m = MODELS[net][0]()
    g = build_graph(m, (size, size))
    rf = ReceptiveFields(m, (size, size))
    torch.manual_seed(2)
    if net == "convnext":  # smooth (GELU, no max-pool): the real model's gradient support fills the box
        ref, x, unit = copy.deepcopy(m).double(), torch.randn(1, 3, size, size, dtype=torch.float64), 1
    else:  # ReLUs and a max-pool: positive weights and avg-pools, as test_receptive_field does
        ref, x, unit = _positive_copy(m), torch.rand(1, 3, size, size) + 0.5, None
    checked = 0
    for name in layers:
        layer = g.layer(name)
        t = rf.table(name)
        assert (len(t.rows), len(t.cols)) == tuple(layer.out_size)
        for y, xx in positions:
            if y >= len(t.rows) or xx >= len(t.cols):
                continue
            box, count = _support_box(ref, name, layer.channels_last, unit, y, xx, x)
            want = rf.box(name, y, xx)
            assert box == want, (name, (y, xx), box, want)
            assert count == (want[1] - want[0]) * (want[3] - want[2]), (name, (y, xx))  # the support fills it
            checked += 1
    assert checked >= 12
    if net == "shufflenet":  # the real model (ReLU, max-pool): support inside the box
        box, _ = _support_box(m, "stage3.1.branch2.5", False, None, 1, 2, torch.randn(1, 3, size, size))
        b = rf.box("stage3.1.branch2.5", 1, 2)
        assert b[0] <= box[0] and box[1] <= b[1] and b[2] <= box[2] and box[3] <= b[3]


class _ConvOnNHWC(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.b(self.a(x).permute(0, 2, 3, 1))  # a conv over (W, C): rows and columns are not axes 2, 3


def test_receptive_fields_refuse_a_conv_on_a_permuted_map_naming_it():
    from viscnn.receptive_field import ReceptiveFields

    rf = ReceptiveFields(_ConvOnNHWC(), (8, 8))
    assert rf.box("a", 0, 0) == (0, 3, 0, 3)
    with pytest.raises(UnsupportedOperationError, match=r"Conv2d b reads a tensor whose image rows and columns") as e:
        rf.box("b", 0, 0)
    assert "\n" not in str(e.value)


# -- feature visualization -----------------------------------------------------------------------------
def test_featurevis_of_a_linear_node_and_edges_raises_the_objective():
    from viscnn.featurevis.capture import Capture
    from viscnn.featurevis.objectives import all_values, parse_objective
    from viscnn.featurevis.render import render, render_layer

    m = tinynext()
    objs = [f"{LINEAR}:5", f"{LINEAR}:2->5", f"{LINEAR2}:1@3,4", "features.2.1:4->2@center"]
    # values against the module's own NHWC tensors
    x = torch.randn(2, 3, 32, 32)
    parsed = [parse_objective(o) for o in objs[:3]]
    with Capture(m, set().union(*(o.needs for o in parsed)), early_exit=False) as cap:
        v = all_values(parsed, cap(x), dict(m.named_modules()))
    got, mods = {}, dict(m.named_modules())
    hs = [mods[LINEAR].register_forward_hook(lambda mod, i, o: got.update(a=i[0], y=o)),
          mods[LINEAR2].register_forward_hook(lambda mod, i, o: got.update(y2=o))]
    with torch.no_grad():
        m(x)
    for h in hs:
        h.remove()
    w = mods[LINEAR].weight.detach()
    ref = torch.stack([got["y"][..., 5].mean((1, 2)), (got["a"][..., 2] * w[5, 2]).mean((1, 2)), got["y2"][:, 3, 4, 1]])
    torch.testing.assert_close(v.detach(), ref, rtol=1e-5, atol=1e-7)
    r = render(m, objs, size=32, steps=16, normalize=([0.5] * 3, [0.25] * 3))
    assert r.images.shape == (4, 32, 32, 3) and (r.objective > r.start).all(), (r.start, r.objective)
    assert len(render_layer(m, LINEAR, size=16, steps=0).objectives) == 32  # a Linear's channels are its out_features
    s = shufflenet()  # a unit and an edge right after a channel shuffle
    r = render(s, ["stage2.1.branch2.0:3", "stage2.1.branch2.0:7->3"], size=32, steps=16)
    assert (r.objective > r.start).all(), (r.start, r.objective)


# -- prep and the app -----------------------------------------------------------------------------------
def _project(root):
    (root / "tinynext.py").write_text(TINYNEXT_PY)
    rng = np.random.default_rng(0)
    for k, name in enumerate(["dark", "mid", "light"]):
        (root / "images" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((rng.random((32, 32, 3)) * 80 + k * 60).astype(np.uint8)).save(root / "images" / name / f"{i}.png")
    torch.save(_NS["tinynext"](3).state_dict(), root / "w.pt")
    cfg = root / "tinynext.toml"
    cfg.write_text(f'''
name = "tinynext"
model = "tinynext.py:tinynext"
weights = "w.pt"
models_dir = "models"
[data]
kind = "folder"
root = "images"
[preprocess]
size = [32, 32]
channels = 3
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[run]
batch_size = 6
metrics = ["taylor", "taylor_signed"]
[featurevis]
steps = 4
edges_per_node = 1
layers = ["{LINEAR}", "{DWCONV}"]
[exemplars]
k = 2
[app]
images_per_class = 1
''')
    return cfg


def test_prep_and_app_on_a_tiny_convnext(tmp_path):
    from app_fixture import walk
    from viscnn.app import activations as A
    from viscnn.app import queries
    from viscnn.app.callbacks_graph import circuit_view
    from viscnn.app.callbacks_panels import edge_panel, node_panel, rf_box_of
    from viscnn.app.routes import kernel_of
    from viscnn.app.server import create_app
    from viscnn.prep import load_config, run_prep
    from viscnn.prepped import PreppedModel
    from viscnn.receptive_field import ReceptiveFields

    cfg = _project(tmp_path)
    t0 = time.perf_counter()
    out = run_prep(load_config(cfg), log=lambda *a: None)
    prep_s = time.perf_counter() - t0
    pm = PreppedModel.open("tinynext", out.parent)
    g = pm.graph
    assert g.layer(LINEAR).channels_last and pm.manifest["image_counts"] == [4, 4, 4, 12]
    for metric in ("taylor", "taylor_signed"):
        assert np.asarray(pm.node_scores(metric, "all")).shape == (g.num_nodes,)
        assert np.isfinite(np.asarray(pm.edge_scores(metric, "all"))).all()
    fv = json.loads((out / "featurevis" / f"{LINEAR}.json").read_text())
    assert len(fv["objectives"]) == 32 and fv["objectives"][5] == f"{LINEAR}:5" and len(fv["beats_real"]) == 32
    assert np.load(out / "featurevis" / f"{LINEAR}.npy").shape == (32, 32, 32, 3)
    assert sorted(p.stem for p in (out / "featurevis").glob("*.npy")) == sorted([LINEAR, DWCONV, "edges"])
    assert len(json.loads((out / "featurevis" / "edges.json").read_text())["edges"]) == 32 + 8  # one per node
    ex = json.loads((out / "exemplars" / f"{LINEAR}.json").read_text())
    assert np.array(ex["pos"]).shape == (32, 2, 2) and np.load(out / "exemplars" / f"{LINEAR}.npy").shape[:2] == (32, 2)

    app = create_app(out.parent, "tinynext", cache_dir=tmp_path / "cache")
    actx = app.viscnn
    s = actx.defaults("tinynext")
    ns, es = queries.precomputed_scores(pm, queries.Query("loss", "all", "taylor"))
    assert ns.shape == (g.num_nodes,) and es.shape == (g.num_edges,)
    r = actx.resolve(s)
    assert len(r.circuit.edges) > 0
    circuit_view(actx, s)
    run = dict(s, target="class:1")
    actx.compute_run(run)
    assert actx.resolve(run).edge_scores.shape == (g.num_edges,)
    img = actx.image(s["model"], s["image"])
    acts = A.run(pm, s["image"], img)
    lin = g.layer(LINEAR)
    ref = {}
    model = pm.load_model()
    h = dict(model.named_modules())[LINEAR].register_forward_hook(lambda mod, i, o: ref.update(a=i[0], y=o))
    with torch.no_grad():
        model(A.to_tensor(img, pm))
    h.remove()
    np.testing.assert_allclose(acts.outputs[LINEAR], ref["y"][0].permute(2, 0, 1).numpy(), atol=1e-6)  # channels first
    np.testing.assert_allclose(acts.inputs[LINEAR], ref["a"][0].permute(2, 0, 1).numpy(), atol=1e-6)
    e = g.edge_index(LINEAR, 5, 2)
    kern = kernel_of(pm, e)  # a Linear's weight entry as a 1x1 kernel
    assert kern.shape == (1, 1) and float(kern[0, 0]) == float(dict(model.named_modules())[LINEAR].weight[5, 2].detach())
    _, emap = A.edge_maps(g, acts, kern, e)
    np.testing.assert_allclose(emap, acts.inputs[LINEAR][2] * kern[0, 0], rtol=1e-5, atol=1e-7)
    abl = A.run(pm, s["image"], img, [f"{LINEAR}:5"])  # zeroing a Linear node zeroes that channel
    assert np.abs(abl.outputs[LINEAR][5]).max() == 0 and np.abs(abl.outputs[LINEAR][4] - acts.outputs[LINEAR][4]).max() == 0

    def text(kids):
        return " ".join(c.children for c in walk(kids) if isinstance(getattr(c, "children", None), str))
    for name, says in ((LINEAR, "nn.Linear over the channels of a channels-last (NHWC) map, treated as a 1x1 conv"),
                       (DWCONV, f"normalised by LayerNorm {DWCONV[:-1]}2 (over channels), which viscnn treats like BatchNorm")):
        node = g.layer(name).node_offset + 1
        kids = node_panel(actx, dict(s, sel=g.node_id(node)), node, acts, r.edge_scores)
        assert says in text(kids), text(kids)[:400]
        assert "DeconvNet: DeconvNet has a rule for ReLU only; this model has GELU module" in text(kids)  # one line, names it
        y, x = g.layer(name).out_size[0] // 2, 1
        assert rf_box_of(actx, s["model"], g.node_id(node), y, x) == ReceptiveFields(model, (32, 32)).box(name, y, x)
    assert "Edge e" in text(edge_panel(actx, s, e, acts, r.edge_scores))
    c = app.server.test_client()
    assert c.get(f"/viscnn-img/tinynext/kernel/{e}.png").mimetype == "image/png"
    assert c.get(f"/viscnn-img/tinynext/fv/{lin.node_offset + 5}.png").mimetype == "image/png"
    assert prep_s < 60


# -- timm -------------------------------------------------------------------------------------------------
def test_timm_convnext_graph_importance_and_circuit():
    pytest.importorskip("timm", reason="timm is not installed (pip install 'viscnn[timm]'; the test extra has it)")
    import timm

    from viscnn.model_spec import load_model

    torch.manual_seed(0)
    spec_model = load_model("timm:convnext_atto").eval()  # conv_mlp: its pointwise layers are 1x1 Conv2d
    torch.manual_seed(0)
    lin_model = timm.create_model("convnext_atto", pretrained=False, conv_mlp=False, num_classes=10).eval()
    for m, has_linear in ((spec_model, False), (lin_model, True)):
        with torch.no_grad():  # no 1e-6 layer scales: every path carries signal
            for n, p in m.named_parameters():
                if "gamma" in n:
                    p.uniform_(0.5, 1.5)
        g = build_graph(m, (32, 32), include_classes=True)
        assert any(l.channels_last for l in g.layers) == has_linear and g.layers[-1].kind == "linear"
        x = torch.randn(2, 3, 32, 32)
        res = Scorer(m, g, "class:3", ["taylor_signed"])(x)
        n, e = res["taylor_signed"]
        assert n.shape == (2, g.num_nodes) and e.shape == (2, g.num_edges) and bool(torch.isfinite(e).all())
        mods = dict(m.named_modules())
        layers = [l for l in g.layers[1:] if l.channels_last][:2] or [g.layers[2], g.layers[3]]
        for b in range(2):  # kernel Taylor of a few layers = <w, dT/dw>, per image
            m.zero_grad()
            parse_target("class:3", g).evaluate(m(x[b:b + 1]), {}, None).sum().backward()
            for l in layers:
                w = mods[l.name].weight
                ref = (w * w.grad).detach().reshape(w.shape[0], w.shape[1], -1).sum(2).reshape(-1)
                assert rel(e[b, l.edge_offset:l.edge_offset + l.num_edges], ref) < 1e-4, l.name
        sink = parse_target("class:3", g).sink_nodes(g)
        c = extract_circuit(g, n.abs().mean(0).numpy(), e.abs().mean(0).numpy(), mass=0.3, target_nodes=sink)
        assert len(c.edges) and set(c.nodes[c.nodes < 3]) and sink[0] in set(c.nodes)
        if has_linear:
            assert any(g.layers[li].channels_last for li in set(g.edges[c.edges, 0].tolist()))
        with torch.no_grad():
            assert bool(torch.isfinite(masked_model(m, g, c.edges)(x)).all())
        if has_linear:  # receptive fields through timm's LayerNorm2d, permutes and Linears: the gradient support
            from viscnn.receptive_field import ReceptiveFields

            rf, ref = ReceptiveFields(m, (32, 32)), copy.deepcopy(m).double()
            xd = torch.randn(1, 3, 32, 32, dtype=torch.float64)
            for l in [l for l in g.conv_layers()][:4]:
                for y, xx in ((0, 0), (3, 5)):
                    assert _support_box(ref, l.name, l.channels_last, 1, y, xx, xd)[0] == rf.box(l.name, y, xx), l.name


def test_standalone_node_references_read_a_channels_last_target_channels_first():
    """replacement_taylor / exact_removal evaluate unit targets on a Linear-as-1x1 layer like the Scorer."""
    from viscnn.importance.node_scores import exact_removal, replacement_taylor

    m = tinynext()
    g = build_graph(m, (32, 32), include_classes=True)
    x = torch.randn(2, 3, 32, 32)
    target = f"unit:{LINEAR2}:3 - 0.5*neuron:{LINEAR}:7:2:5"
    fast = Scorer(m, g, target, ["taylor"])(x)["taylor"][0].mean(0).numpy()
    rt = replacement_taylor(m, g, target, [(x, None)])
    for l in (g.layer("features.0.0"), g.layer(DWCONV)):  # conv layers before the target, no BN/ReLU chain
        sl = slice(l.node_offset, l.node_offset + l.channels)
        np.testing.assert_allclose(rt[sl], fast[sl], rtol=1e-4, atol=1e-9)
        assert rt[sl].max() > 0
    ex, _ = exact_removal(m, g, f"unit:{LINEAR2}:3", [(x, None)])
    t = parse_target(f"unit:{LINEAR2}:3", g)
    mm = copy.deepcopy(m)
    with torch.no_grad():
        mm.features[1][0].block[0].weight[4] = 0  # channel 4 of the depthwise conv, weights and bias zeroed
        mm.features[1][0].block[0].bias[4] = 0
        out = {}
        for model, tag in ((m, "full"), (mm, "cut")):
            h = dict(model.named_modules())[LINEAR2].register_forward_hook(lambda mod, i, o, tag=tag: out.__setitem__(tag, o))
            model(x)
            h.remove()
        want = (t.evaluate(None, {LINEAR2: out["cut"].permute(0, 3, 1, 2)}) -
                t.evaluate(None, {LINEAR2: out["full"].permute(0, 3, 1, 2)})).abs().mean()
    np.testing.assert_allclose(ex[g.layer(DWCONV).node_offset + 4], float(want), rtol=1e-4, atol=1e-9)
