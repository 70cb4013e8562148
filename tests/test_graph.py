"""The kernel graph of torchvision models, checked against the real dataflow."""

import copy
import json

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from viscnn.errors import UnsupportedOperationError
from viscnn.graph import Graph, build_graph

MODELS = {
    # name: (input size, expect a class layer to be buildable)
    "alexnet": ((96, 96), False),
    "vgg11": ((64, 64), False),
    "resnet18": ((64, 64), True),
    "googlenet": ((64, 64), True),
    "mobilenet_v2": ((64, 64), True),
}


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    torch.manual_seed(0)
    name = request.param
    kw = {"init_weights": False} if name == "googlenet" else {}
    model = tvm.get_model(name, weights=None, **kw)
    size, classes = MODELS[name]
    g = build_graph(model, size, include_classes=classes)
    return name, model, g, size


def executed_convs(model, size):
    """Conv2d modules actually run by an eval forward (GoogLeNet's aux heads are not)."""
    m = copy.deepcopy(model).eval()
    ran = []
    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: ran.append(n))
             for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    with torch.no_grad():
        m(torch.zeros(1, 3, *size))
    for h in hooks:
        h.remove()
    return ran, dict(m.named_modules())


def test_counts_equal_kernels(built):
    name, model, g, size = built
    ran, mods = executed_convs(model, size)
    convs = g.conv_layers()
    assert [l.name for l in convs] == ran
    assert g.summary()["nodes"] == sum(mods[n].out_channels for n in ran)
    assert g.summary()["edges"] == sum(mods[n].out_channels * mods[n].in_channels // mods[n].groups for n in ran)
    if name == "alexnet":
        assert (g.summary()["nodes"], g.summary()["edges"]) == (1152, 250048)
    assert len(g.edges) == g.num_edges
    # every edge's target/in-channel agrees with the grouped conv structure
    for l in convs:
        e = g.edges[l.edge_offset:l.edge_offset + l.num_edges]
        assert (e[:, 0] == g.layers.index(l)).all()
        per_in = l.in_channels // l.groups
        assert ((e[:, 2] // per_in) == (e[:, 1] // (l.channels // l.groups))).all()


def test_output_sizes_match_real_run(built):
    name, model, g, size = built
    m = copy.deepcopy(model).eval()
    shapes = {}
    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[2:])))
             for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    with torch.no_grad():
        m(torch.zeros(1, 3, *size))
    for h in hooks:
        h.remove()
    for l in g.conv_layers():
        assert l.out_size == shapes[l.name]


def changed_input_channels(model, target_layer, perturb_layer, perturb_ch, size, seed=0):
    """Input channels of ``target_layer`` that change when one conv channel (or input channel) is
    shifted, with every conv output clamped to its baseline so only direct (conv-free) paths count."""
    m = copy.deepcopy(model).eval()
    mods = dict(m.named_modules())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *size, generator=g)
    base, seen = {}, {}
    state = {"mode": "record"}

    def conv_hook(mod, inp, out, name):
        if state["mode"] == "record":
            base[name] = out.detach().clone()
            return None
        o = base[name].clone()
        if name == perturb_layer:
            o[:, perturb_ch] += 25.0
        return o

    def pre_hook(mod, inp):
        seen[state["mode"]] = inp[0].detach().clone()

    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: conv_hook(mod, i, o, n))
             for n, mod in mods.items() if isinstance(mod, nn.Conv2d)]
    hooks.append(mods[target_layer].register_forward_pre_hook(pre_hook))
    with torch.no_grad():
        m(x)
        state["mode"] = "perturb"
        x2 = x.clone()
        if perturb_layer == "input":
            x2[:, perturb_ch] += 25.0
        m(x2)
    for h in hooks:
        h.remove()
    diff = (seen["perturb"] - seen["record"]).abs().flatten(2).amax(2)[0]
    return set(torch.nonzero(diff > 1e-4).flatten().tolist())


def test_edges_match_dataflow(built):
    """For sampled conv layers and sampled claimed sources, perturbing the source changes exactly
    the input channels whose provenance lists it."""
    name, model, g, size = built
    rng = np.random.default_rng(1)
    convs = g.conv_layers()
    picks = sorted(set(rng.choice(len(convs), size=min(6, len(convs)), replace=False).tolist()) | {0, len(convs) - 1})
    checked = 0
    for li in picks:
        layer = convs[li]
        sources = sorted({s for srcs in layer.input_sources for s in srcs})
        for s in rng.choice(sources, size=min(2, len(sources)), replace=False):
            sl = g.layers[int(g.node_layer[s])]
            ch = int(s) - sl.node_offset
            claimed = {i for i, srcs in enumerate(layer.input_sources) if int(s) in srcs}
            got = changed_input_channels(model, layer.name, sl.name, ch, size)
            assert got == claimed, f"{name} {layer.name}: source {g.node_id(int(s))} claimed {sorted(claimed)[:8]} got {sorted(got)[:8]}"
            checked += 1
    assert checked >= 4


def test_residual_and_concat_structure():
    r = build_graph(tvm.resnet18(weights=None), (64, 64))
    l = r.layer("layer1.1.conv1")
    # input = relu(bn(layer1.0.conv2) + relu(bn(conv1)) through maxpool): two sources per channel
    assert all(len(s) == 2 for s in l.input_sources)
    assert {r.node_id(n) for n in l.input_sources[5]} == {"conv1:5", "layer1.0.conv2:5"}
    ds = r.layer("layer2.0.downsample.0")
    assert (ds.kernel_size, ds.stride) == ((1, 1), (2, 2))
    gn = build_graph(tvm.googlenet(weights=None, init_weights=False), (64, 64))
    l = gn.layer("inception3b.branch1.conv")
    srcs = [gn.node_id(s[0]) for s in l.input_sources]
    # inception3a output = cat(branch1 64, branch2 128, branch3 32, branch4 32)
    assert srcs[0] == "inception3a.branch1.conv:0"
    assert srcs[64] == "inception3a.branch2.1.conv:0"
    assert srcs[192] == "inception3a.branch3.1.conv:0"
    assert srcs[224] == "inception3a.branch4.1.conv:0"
    mb = build_graph(tvm.mobilenet_v2(weights=None), (64, 64))
    dw = mb.layer("features.2.conv.1.0")
    assert dw.groups == dw.channels and dw.num_edges == dw.channels  # depthwise: one kernel per node


def test_grouped_conv_edges():
    m = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=3))
    g = build_graph(m, (16, 16))
    l = g.layer("2")
    assert l.num_edges == 6 * 2
    assert list(l.in_channels_of(0)) == [0, 1] and list(l.in_channels_of(5)) == [4, 5]
    assert g.edge_index("2", 3, 3) == l.edge_offset + 3 * 2 + 1


def test_user_model_unchanged():
    m = tvm.resnet18(weights=None)
    m.train()
    m.layer1.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    inplace = {n: mod.inplace for n, mod in m.named_modules() if hasattr(mod, "inplace")}
    build_graph(m, (32, 32), include_classes=True)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert modes == {n: mod.training for n, mod in m.named_modules()}
    assert inplace == {n: mod.inplace for n, mod in m.named_modules() if hasattr(mod, "inplace")}
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks for mod in m.modules())


class ChannelMixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        x = self.a(x)
        x = torch.softmax(x, dim=1)  # mixes channels without being a conv
        return self.b(x)


def test_mixing_op_fails_loudly():
    with pytest.raises(UnsupportedOperationError, match=r"softmax.*ChannelMixer|softmax"):
        build_graph(ChannelMixer(), (16, 16))
    # ShuffleNet's channel shuffle is a permutation, supported since issue 15 (tests/test_graph_any.py)
    with pytest.raises(UnsupportedOperationError, match="Linear"):
        build_graph(tvm.alexnet(weights=None), (96, 96), include_classes=True)


def test_serialisation_roundtrip(tmp_path):
    g = build_graph(tvm.resnet18(weights=None), (32, 32), include_classes=True)
    g.save(tmp_path)
    d = json.loads((tmp_path / "graph.json").read_text())
    assert d["format"] == "viscnn.graph" and d["version"] == 1
    h = Graph.load(tmp_path)
    assert h.num_nodes == g.num_nodes and h.num_edges == g.num_edges
    assert np.array_equal(np.load(tmp_path / "edges.npy", allow_pickle=False), g.edges)
    assert np.array_equal(h.links, g.links)
    assert h.node_id(h.node_index("layer3.0.conv1:17")) == "layer3.0.conv1:17"
    cls = h.layers[-1]
    assert cls.kind == "linear" and cls.channels == 1000 and cls.num_edges == 512 * 1000


def test_links_expand_sources():
    g = build_graph(tvm.resnet18(weights=None), (32, 32))
    l = g.layer("layer1.1.conv1")
    e = g.edge_index("layer1.1.conv1", 2, 7)
    srcs = sorted(g.links[g.links[:, 0] == e][:, 1].tolist())
    assert srcs == sorted(l.input_sources[7])


def direct_sources_by_gradient(model, target_layer, in_ch, size, g, seed=0):
    """Nodes with a conv-free path into channel ``in_ch`` of ``target_layer``'s input: every conv
    output is replaced by a positive leaf tensor (so ReLUs pass gradient) and we backprop from
    that channel alone."""
    m = copy.deepcopy(model).eval()
    mods = dict(m.named_modules())
    gen = torch.Generator().manual_seed(seed)
    leaves, seen = {}, {}

    def conv_hook(mod, inp, out, name):
        leaf = (torch.rand(out.shape, generator=gen) + 1.0).requires_grad_()
        leaves[name] = leaf
        return leaf.clone()  # torchvision's in-place ReLUs may not write into a leaf

    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: conv_hook(mod, i, o, n))
             for n, mod in mods.items() if isinstance(mod, nn.Conv2d)]
    hooks.append(mods[target_layer].register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0])))
    x = (torch.rand(1, 3, *size, generator=gen) + 1.0).requires_grad_()
    m(x.clone())
    for h in hooks:
        h.remove()
    w = torch.randn(seen["x"][:, in_ch].shape, generator=gen)
    grads = torch.autograd.grad((seen["x"][:, in_ch] * w).sum(), [x] + list(leaves.values()), allow_unused=True)
    found = set()
    for name, gr in zip(["input"] + list(leaves), grads):
        if gr is None:
            continue
        for c in torch.nonzero(gr.abs().flatten(2).amax(2)[0] > 0).flatten().tolist():
            found.add(g.node_index(f"{name}:{c}"))
    return found


def test_edges_complete_by_gradient(built):
    """No source is missing and none is invented: for sampled layers and input channels, the claimed
    sources equal the nodes that reach that channel without crossing another conv."""
    name, model, g, size = built
    rng = np.random.default_rng(2)
    convs = g.conv_layers()
    picks = sorted(set(rng.choice(len(convs), size=min(5, len(convs)), replace=False).tolist()) | {0, len(convs) - 1})
    for li in picks:
        layer = convs[li]
        for i in rng.choice(layer.in_channels, size=min(2, layer.in_channels), replace=False):
            got = direct_sources_by_gradient(model, layer.name, int(i), size, g)
            assert got == set(layer.input_sources[int(i)]), (
                f"{name} {layer.name} in-channel {i}: claimed {[g.node_id(s) for s in layer.input_sources[int(i)]]}, "
                f"dataflow {[g.node_id(s) for s in sorted(got)]}")
