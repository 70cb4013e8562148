"""Graphs of channel rearrangements and channels-last blocks (ShuffleNet, ConvNeXt, timm models),
checked against the real dataflow: perturbation and conv-free gradients, as in test_graph.py,
with every graph layer (Conv2d or channels-last Linear) clamped and LayerNorm statistics frozen."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from viscnn.errors import UnsupportedOperationError, ViscnnError
from viscnn.graph import build_graph

timm = pytest.importorskip("timm")

MODELS = {  # spec: input size
    "tv:shufflenet_v2_x0_5": (32, 32),
    "tv:convnext_tiny": (32, 32),
    "timm:resnet50": (32, 32),
    "timm:efficientnet_b0": (32, 32),
    "timm:convnext_tiny": (32, 32),
    "timm:regnetx_002": (32, 32),
    "timm:mobilenetv3_small_100": (32, 32),
}


def make(spec):
    src, name = spec.split(":")
    torch.manual_seed(0)
    m = tvm.get_model(name, weights=None) if src == "tv" else timm.create_model(name, pretrained=False)
    with torch.no_grad():  # no zero-init norms or 1e-6 layer scales: every path must carry signal
        for n, p in m.named_parameters():
            leaf = n.rsplit(".", 1)[-1]
            if "gamma" in leaf or "layer_scale" in leaf or (p.dim() == 1 and leaf == "weight" and "norm" in n.lower()) \
                    or (p.dim() == 1 and leaf == "weight" and "bn" in n.lower()):
                p.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    m = make(request.param)
    size = MODELS[request.param]
    return request.param, m, build_graph(m, size), size


def axis(layer):
    return 3 if layer.channels_last else 1


def graph_mods(m, g):
    mods = dict(m.named_modules())
    return {l.name: mods[l.name] for l in g.conv_layers()}


@contextlib.contextmanager
def frozen_layer_norm(state):
    """LayerNorm with its statistics taken from the recorded pass (``state['mode'] == 'record'``)
    or detached (``'detach'``), so it acts per channel like an eval BatchNorm."""
    orig, stats = F.layer_norm, []

    def ln(x, shape, weight=None, bias=None, eps=1e-5):
        dims = tuple(range(-len(shape), 0))
        if state["mode"] == "perturb":
            mu, var = stats[state["i"]]
            state["i"] += 1
        else:
            mu, var = x.mean(dims, keepdim=True).detach(), x.var(dims, unbiased=False, keepdim=True).detach()
            stats.append((mu, var))
        y = (x - mu) / torch.sqrt(var + eps)
        y = y * weight if weight is not None else y
        return y + bias if bias is not None else y

    F.layer_norm = ln
    try:
        yield
    finally:
        F.layer_norm = orig


def changed_input_channels(m, g, target, perturb_layer, ch, size):
    """Input channels of ``target`` that change when one node is shifted up or down (a shift past
    any value: ReLUs pass the up-shift, saturated SE gates the down-shift), with every graph layer's
    output clamped to its baseline so only conv-free paths count."""
    mods = graph_mods(m, g)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    base, seen, state = {}, {}, {"mode": "record", "shift": 0.0}

    def hook(mod, inp, out, name):
        if state["mode"] == "record":
            base[name] = out.detach().clone()
            return None
        o = base[name].clone()
        if name == perturb_layer:
            o.select(axis(g.layer(name)), ch).add_(state["shift"] * (25.0 + 2 * float(o.abs().max())))
        return o

    hs = [mod.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, mod in mods.items()]
    hs.append(mods[target].register_forward_pre_hook(
        lambda mod, inp: seen.__setitem__((state["mode"], state["shift"]), inp[0].detach().clone())))
    try:
        with torch.no_grad(), frozen_layer_norm(state):
            m(x)
            state["mode"] = "perturb"
            for sign in (1.0, -1.0):
                state["shift"], state["i"] = sign, 0
                x2 = x.clone()
                if perturb_layer == "input":
                    x2[:, ch] += sign * (25.0 + 2 * float(x.abs().max()))
                m(x2)
    finally:
        for h in hs:
            h.remove()
    changed = set()
    for sign in (1.0, -1.0):
        d = (seen[("perturb", sign)] - seen[("record", 0.0)]).abs().movedim(axis(g.layer(target)), 1).flatten(2).amax(2)[0]
        changed |= set(torch.nonzero(d > 0).flatten().tolist())  # conv-free paths are elementwise: untouched channels are bit-equal
    return changed


def direct_sources_by_gradient(m, g, target, in_ch, size):
    mods = graph_mods(m, g)
    gen = torch.Generator().manual_seed(0)
    leaves, seen = {}, {}

    def hook(mod, inp, out, name):
        leaf = (torch.rand(out.shape, generator=gen) + 1.0).requires_grad_()
        leaves[name] = leaf
        return leaf.clone()

    hs = [mod.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, mod in mods.items()]
    hs.append(mods[target].register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0])))
    x = (torch.rand(1, 3, *size, generator=gen) + 1.0).requires_grad_()
    try:
        with frozen_layer_norm({"mode": "detach"}):
            m(x.clone())
    finally:
        for h in hs:
            h.remove()
    sel = seen["x"].select(axis(g.layer(target)), in_ch)
    grads = torch.autograd.grad((sel * torch.randn(sel.shape, generator=gen)).sum(), [x] + list(leaves.values()),
                                allow_unused=True)
    found = set()
    for name, gr in zip(["input"] + list(leaves), grads):
        if gr is not None:
            ax = 1 if name == "input" else axis(g.layer(name))
            for c in torch.nonzero(gr.abs().movedim(ax, 1).flatten(2).amax(2)[0] > 0).flatten().tolist():
                found.add(g.node_index(f"{name}:{c}"))
    return found


def executed_layers(m, size):
    """(name, nodes, kernels) of every Conv2d and every Linear over a 4D (channels-last) tensor the
    eval forward runs, in order."""
    ran = []

    def hook(mod, inp, out, name):
        if isinstance(mod, nn.Conv2d):
            ran.append((name, mod.out_channels, mod.out_channels * mod.in_channels // mod.groups))
        elif inp[0].dim() == 4:
            ran.append((name, mod.out_features, mod.out_features * mod.in_features))

    hs = [mod.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
          for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        m(torch.zeros(1, 3, *size))
    for h in hs:
        h.remove()
    return ran


def test_counts_equal_kernels(built):
    spec, m, g, size = built
    ran = executed_layers(m, size)
    assert [(l.name, l.channels, l.num_edges) for l in g.conv_layers()] == ran
    s = g.summary()
    assert (s["nodes"], s["edges"]) == (sum(r[1] for r in ran), sum(r[2] for r in ran))
    assert len(g.edges) == g.num_edges
    if "convnext" in spec:  # 3 Linears per block... two channel Linears per block, 18 blocks
        assert sum(l.channels_last for l in g.conv_layers()) == 36


def sampled_layers(g, rng, k):
    """k random layers, the first and last, and a few that read rearranged (permuted) channels
    or are channels-last Linears."""
    convs = g.conv_layers()
    idx = set(rng.choice(len(convs), size=min(k, len(convs)), replace=False).tolist()) | {0, len(convs) - 1}
    special = [i for i, l in enumerate(convs) if l.channels_last or
               any(a[0] > b[0] for a, b in zip(l.input_sources, l.input_sources[1:]) if a and b)]
    idx |= set(special[:: max(1, len(special) // 3)][:3]) if special else set()
    return [convs[i] for i in sorted(idx)]


def test_edges_match_dataflow(built):
    spec, m, g, size = built
    rng = np.random.default_rng(1)
    checked = 0
    for layer in sampled_layers(g, rng, 5):
        sources = sorted({s for ss in layer.input_sources for s in ss})
        for s in rng.choice(sources, size=min(2, len(sources)), replace=False):
            sl = g.layers[int(g.node_layer[s])]
            claimed = {i for i, ss in enumerate(layer.input_sources) if int(s) in ss}
            got = changed_input_channels(m, g, layer.name, sl.name, int(s) - sl.node_offset, size)
            assert got == claimed, f"{spec} {layer.name}: source {g.node_id(int(s))} claimed {sorted(claimed)[:8]} got {sorted(got)[:8]}"
            checked += 1
    assert checked >= 4


def test_edges_complete_by_gradient(built):
    spec, m, g, size = built
    rng = np.random.default_rng(2)
    for layer in sampled_layers(g, rng, 4):
        for i in rng.choice(layer.in_channels, size=min(2, layer.in_channels), replace=False):
            got = direct_sources_by_gradient(m, g, layer.name, int(i), size)
            assert got == set(layer.input_sources[int(i)]), (
                f"{spec} {layer.name} in {i}: claimed {[g.node_id(s) for s in layer.input_sources[int(i)]]}, "
                f"dataflow {[g.node_id(s) for s in sorted(got)]}")


def test_shufflenet_shuffle_is_exact():
    g = build_graph(tvm.shufflenet_v2_x0_5(weights=None), (64, 64))
    # stage2.1 (stride 1) reads channel_shuffle(cat(branch1(x), branch2(x)), 2) of stage2.0
    l = g.layer("stage2.1.branch2.0")
    b1, b2 = g.layer("stage2.0.branch1.2"), g.layer("stage2.0.branch2.5")
    # x2 = second half of shuffle(cat(b1, b2)): shuffled channel k = cat[(k % 2) * 24 + k // 2], k = 24..47
    want = [[(b1 if k % 2 == 0 else b2).node_offset + k // 2] for k in range(24, 48)]
    assert l.input_sources == want


# -- small models: each rearrangement exact -----------------------------------------------------
class Two(nn.Module):
    """conv a (3->8), an op ``f`` on its output, conv b reading the result."""

    def __init__(self, f, c_mid):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(c_mid, 4, 3, padding=1)
        self.register_buffer("perm", torch.tensor([5, 3, 0, 7, 1, 6, 2, 4]))
        self.f = f

    def forward(self, x):
        return self.b(self.f(self, self.a(x)))


CASES = {  # name: (f, the a-channel each input channel of b reads)
    "tuple_slice": (lambda s, h: torch.cat(torch.chunk(h, 4, 1)[1:], 1), list(range(2, 8))),
    "split_slice": (lambda s, h: torch.cat(h.split([3, 5], dim=1)[::-1], 1), [3, 4, 5, 6, 7, 0, 1, 2]),
    "list_index": (lambda s, h: h[:, [2, 0, 1, 1]], [2, 0, 1, 1]),
    "buffer_index": (lambda s, h: h[:, s.perm], [5, 3, 0, 7, 1, 6, 2, 4]),
    "tensor_const": (lambda s, h: h[:, torch.tensor([7, 6, 5])], [7, 6, 5]),
    "index_select": (lambda s, h: torch.index_select(h, 1, s.perm), [5, 3, 0, 7, 1, 6, 2, 4]),
    "flip": (lambda s, h: h.flip(1), list(range(7, -1, -1))),
    "narrow": (lambda s, h: h.narrow(1, 2, 4), [2, 3, 4, 5]),
    "strided_slice": (lambda s, h: h[:, 1::3], [1, 4, 7]),
    "roll": (lambda s, h: torch.roll(h, 2, 1), [6, 7, 0, 1, 2, 3, 4, 5]),
    "shuffle": (lambda s, h: h.view(h.size(0), 2, 4, h.size(2), h.size(3)).transpose(1, 2).reshape(h.shape),
                [0, 4, 1, 5, 2, 6, 3, 7]),
    "flatten_unflatten": (lambda s, h: h.permute(0, 2, 3, 1).flatten(1, 2).transpose(1, 2).reshape(h.shape), list(range(8))),
    "unbind_stack": (lambda s, h: torch.stack(h.unbind(1)[::2], 1), [0, 2, 4, 6]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rearrangements_are_exact(case):
    f, want = CASES[case]
    m = Two(f, len(want)).eval()
    g = build_graph(m, (8, 8))
    a = g.layer("a")
    assert g.layer("b").input_sources == [[a.node_offset + c] for c in want]
    for i in range(len(want)):  # and the real dataflow agrees
        assert direct_sources_by_gradient(m, g, "b", i, (8, 8)) == {a.node_offset + want[i]}


class Refused(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        self.f = f

    def forward(self, x):
        return self.b(self.f(self.a(x)))


REFUSALS = {  # f, pattern of the one-line message
    "channel_mean": (lambda h: h * h.mean(1, keepdim=True), r"reduction over channels .*fx node 'mean'.*mixes channels"),
    "softmax": (lambda h: torch.softmax(h, 1), r"softmax .*fx node 'softmax'.*does not know"),
    "data_index": (lambda h: h[:, h.mean((0, 2, 3)).argsort()], r"indexing .*index \(argsort\) is computed from the model input"),
    "channels_last": (lambda h: h.permute(0, 2, 3, 1), r"channels in axis 3, not 1"),
    "half_shuffle": (lambda h: h.view(1, 2, 4, 8, 8).transpose(1, 2).transpose(2, 3).reshape(1, 8, 8, 8),
                     r"spread over several axes by Tensor.reshape .*fx node 'reshape'"),
    "batch_index": (lambda h: h[0:1] + h[0], r"indexing .*fx node 'getitem_1'.*batch axis"),
    "einsum_mix": (lambda h: torch.einsum("bchw,dc->bdhw", h, torch.ones(8, 8)), r"einsum .*does not know"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_one_line_naming_op_and_place(case):
    f, pattern = REFUSALS[case]
    with pytest.raises(UnsupportedOperationError, match=pattern) as e:
        build_graph(Refused(f), (8, 8))
    assert "\n" not in str(e.value)
    assert "test_graph_any.py" in str(e.value) or "module b" in str(e.value)  # the op's source line, or the reading conv


def test_linear_head_is_not_a_layer_but_channels_last_linear_is():
    g = build_graph(tvm.convnext_tiny(weights=None), (32, 32), include_classes=True)
    l = g.layer("features.1.0.block.3")
    assert l.channels_last and l.kernel_size == (1, 1) and l.num_edges == 96 * 384 and l.out_size == (8, 8)
    assert g.layers[-1].kind == "linear" and g.layers[-1].name == "classifier.2" and g.layers[-1].num_edges == 768 * 1000
    # LayerNorm keeps channel identity: the first Linear reads the dwconv's channels one to one
    dw = g.layer("features.1.0.block.0")
    assert l.input_sources == [[dw.node_offset + c] for c in range(96)]


def test_timm_spec(monkeypatch):
    from viscnn.model_spec import load_model

    m = load_model("timm:regnetx_002")
    assert type(m).__name__ == "RegNet"
    with pytest.raises(ViscnnError, match="unknown timm model"):
        load_model("timm:resnet_nope")
    import builtins
    real_import = builtins.__import__

    def no_timm(name, *a, **k):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ViscnnError, match=r"pip install .*timm"):
        load_model("timm:resnet50")
