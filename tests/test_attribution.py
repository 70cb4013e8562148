"""Attribution methods: equal to Captum where Captum is right (VGG11, ResNet-18 with nn.ReLU
modules), equal to independent references where it is not (functional ReLUs: GoogLeNet, every
ReLU spelling), CAM = Grad-CAM at the GAP input, Grad-CAM behind ReLU(inplace=True), batching,
per-image targets, target strings, the user's model untouched, one-line errors."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from viscnn.attribution import (CAM, Deconvolution, GradCAM, GuidedBackprop, GuidedGradCAM, Saliency,
                                TracedModel, attribute_in_circuit, compare_models, compare_sizes, deconvnet_of_unit,
                                gradcam_crop, kernel_tiles, make_method, rgb_filter_grid, rgb_filters, side_by_side)
from viscnn.attribution.render import save_png
from viscnn.errors import ViscnnError

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def no_inplace(model):
    m = copy.deepcopy(model)
    for mod in m.modules():
        if hasattr(mod, "inplace"):
            mod.inplace = False
    return m


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval().double()


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None).eval()


@pytest.fixture(scope="module")
def traced(resnet, vgg):
    """Shared traced copies and Captum's inplace=False copies (one deep copy of VGG each)."""
    return {"resnet": (TracedModel(resnet), no_inplace(resnet)), "vgg": (TracedModel(vgg), no_inplace(vgg))}


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(0)
    return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval().double()


def images(n, size=64, dtype=torch.float64, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- against Captum -------------------------------------------------------------------------
CAPTUM_PAIRS = [("saliency", "Saliency"), ("input_x_gradient", "InputXGradient"),
                ("guided_backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")]


@pytest.mark.parametrize("ours, theirs", CAPTUM_PAIRS)
@pytest.mark.parametrize("arch", ["resnet", "vgg"])
def test_pixel_methods_equal_captum(traced, arch, ours, theirs):
    net, ref = traced[arch]
    x = images(2, dtype=net.dtype)
    target = [3, 7]
    expect = getattr(captum_attr, theirs)(ref).attribute(x.clone().requires_grad_(), target=target)
    got = make_method(ours, net).attribute(x, target)
    assert rel(got, expect) < 1e-5


@pytest.mark.parametrize("arch, layer", [("resnet", "layer4"), ("resnet", "layer3.1.conv2"), ("vgg", "features.13"),
                                         ("vgg", "features.8")])
def test_gradcam_and_guided_gradcam_equal_captum(traced, arch, layer):
    model, ref = traced[arch]  # Captum on an inplace=False copy: it reads a conv's output after ReLU(inplace=True)
    x = images(2, dtype=model.dtype)
    mod = ref.get_submodule(layer)
    lgc = captum_attr.LayerGradCam(ref, mod).attribute(x.clone().requires_grad_(), target=[5, 1], relu_attributions=True)
    assert rel(GradCAM(model, layer).attribute(x, [5, 1], upsample=False), lgc) < 1e-5
    ggc = captum_attr.GuidedGradCam(ref, mod).attribute(x.clone().requires_grad_(), target=[5, 1])
    assert rel(GuidedGradCAM(model, layer).attribute(x, [5, 1], interpolate_mode="nearest"), ggc) < 1e-5


def test_gradcam_behind_inplace_relu_is_hand_computed_on_a_copy(vgg, traced):
    """features.3 is a conv followed by ReLU(inplace=True) in the user's model; a hook there sees
    the rectified tensor, ours the conv output."""
    layer = "features.3"
    assert isinstance(vgg.features[4], nn.ReLU) and vgg.features[4].inplace
    x = images(2, dtype=torch.float32)
    ref = traced["vgg"][1]
    kept = {}
    h = ref.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    logits = ref(x)
    h.remove()
    a = kept["a"]
    g, = torch.autograd.grad(logits[:, 2].sum(), [a])
    expect = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    got = GradCAM(vgg, layer).attribute(x, 2, upsample=False)  # from the user's in-place model
    assert rel(got, expect) < 1e-5
    seen = {}
    h = vgg.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    with torch.no_grad():
        vgg(x)
    h.remove()
    assert float(seen["a"].min()) >= 0 and float(a.detach().min()) < 0  # the hook read the ReLU's output


class _InplaceAfterConv(nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        self.inplace = inplace
        self.c1, self.c2 = nn.Conv2d(3, 5, 3), nn.Conv2d(5, 6, 3)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.c1(x)
        if self.inplace:
            y.mul_(2.0)  # overwrites the conv output the Grad-CAM layer keeps
            y.sub_(0.1)
        else:
            y = y * 2.0 - 0.1
        return self.fc(torch.relu(self.c2(y)).mean((2, 3)))


def test_gradcam_layer_overwritten_by_a_later_inplace_op():
    torch.manual_seed(0)
    net = _InplaceAfterConv().double().eval()
    ref = copy.deepcopy(net)
    ref.inplace = False
    x = images(2, size=10)
    kept = {}
    ref.c1.register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    out = ref(x)
    a = kept["a"]
    g, = torch.autograd.grad(out[:, 1].sum(), [a])
    expect = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
    assert rel(GradCAM(net, "c1").attribute(x, 1, relu=False, upsample=False), expect) < 1e-12
    assert rel(Saliency(net).attribute(x, 1), Saliency(ref).attribute(x, 1)) < 1e-12


def test_gradcam_upsamples_bilinearly(resnet):
    x = images(2)
    small = GradCAM(resnet, "layer3").attribute(x, 4, upsample=False)
    big = GradCAM(resnet, "layer3").attribute(x, 4)
    assert big.shape == (2, 1, 64, 64)
    assert rel(big, F.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)) < 1e-12


# -- functional ReLUs: independent references --------------------------------------------------
class _RefGuided(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x > 0, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.where((x > 0) & (g > 0), g, torch.zeros_like(g))


class _RefDeconv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.where(x > 0, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, g):
        return torch.where(g > 0, g, torch.zeros_like(g))


REFS = {"guided_backprop": _RefGuided.apply, "deconvnet": _RefDeconv.apply}


def _reference_grad(model, x, target, rule_fn, monkeypatch):
    """Eager forward of a copy with ``F.relu`` swapped for the reference rule; d logit / d x."""
    m = copy.deepcopy(model)
    with monkeypatch.context() as mp:
        mp.setattr(torch.nn.functional, "relu", lambda t, inplace=False: rule_fn(t))
        xx = x.clone().requires_grad_()
        out = m(xx)
    return torch.autograd.grad(out.gather(1, torch.as_tensor(target).view(-1, 1)).sum(), [xx])[0]


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_googlenet_functional_relus(googlenet, method, monkeypatch):
    assert not any(isinstance(m, nn.ReLU) for m in googlenet.modules())  # all its ReLUs are F.relu calls
    x = images(2)
    target = [11, 4]
    got = make_method(method, googlenet).attribute(x, target)
    plain = Saliency(googlenet).attribute(x, target, abs=False)
    expect = _reference_grad(googlenet, x, target, REFS[method], monkeypatch)
    assert rel(got, expect) < 1e-5
    assert rel(got, plain) > 0.1  # a hook-based tool returns ``plain`` here


class AllSpellings(nn.Module):
    """Every ReLU spelling, in-place ones whose result is dropped, a module reused three times;
    with ``act`` set, each spot calls ``act`` instead (the reference)."""

    def __init__(self, act=None):
        super().__init__()
        self.act = act
        self.c = nn.ModuleList([nn.Conv2d(3 if k == 0 else 6, 6, 3, padding=1) for k in range(8)])
        self.r = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        a, c = self.act, self.c
        x = a(c[0](x)) if a else self.r(c[0](x))
        x = a(c[1](x)) if a else F.relu(c[1](x), inplace=True)
        x = a(c[2](x)) if a else torch.relu(c[2](x))
        y = c[3](x)
        if a:
            y = a(y)
        else:
            torch.relu_(y)  # the result is dropped: later code reads y
        y = self.pool(y)
        y = a(c[4](y)) if a else self.r(c[4](y))
        z = c[5](y)
        if a:
            z = a(z)
        else:
            z.relu_()
        z = a(c[6](z)) if a else c[6](z).relu()
        z = a(c[7](z)) if a else c[7](z).clamp(min=0)
        z = a(z + y) if a else self.r(z + y)
        return self.fc(z.mean((2, 3)))


@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "deconvnet"])
def test_every_relu_spelling_gets_the_rule(method):
    torch.manual_seed(3)
    net = AllSpellings().double().eval()
    ref = copy.deepcopy(net)
    ref.act = REFS.get(method, torch.relu)
    x = images(3, size=12)
    xx = x.clone().requires_grad_()
    out = ref(xx)
    with torch.no_grad():
        assert rel(net(x.clone()), out) < 1e-12  # the reference computes the same forward
    expect = torch.autograd.grad(out[:, 2].sum(), [xx])[0]
    got = make_method(method, net).attribute(x, 2)
    assert rel(got, expect) < 1e-10
    from viscnn.attribution.relu_rules import INPLACE_RULE_FUNCTIONS, count_relus

    tm = TracedModel(net)
    assert count_relus(tm.base) == 9
    rule = {"gradient": "gradient", "guided_backprop": "guided", "deconvnet": "deconvnet"}[method]
    inplace = [n for n in tm.rule_graph(rule).graph.nodes if n.target is INPLACE_RULE_FUNCTIONS[rule]]
    assert len(inplace) == 6  # in place exactly where the user's model is: no new tensors there


class _Act(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.c1(x)
        x = self.act(x) if self.kind == "silu" else F.gelu(x) if self.kind == "gelu" else F.relu(x)
        x = self.fc(F.relu(self.c2(x)).mean((2, 3)))
        return torch.sigmoid(x) if self.kind == "sigmoid_out" else x


@pytest.mark.parametrize("kind, words", [("silu", "SiLU module act"), ("gelu", "gelu (fx node 'gelu'")])
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "guided_gradcam"])
def test_other_activations_are_a_one_line_error(kind, words, method):
    net = _Act(kind).eval()
    with pytest.raises(ViscnnError) as e:
        make_method(method, net)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and "ReLU only" in msg
    if kind == "gelu":
        assert "test_attribution.py" in msg and "line" in msg  # the user's source line
    assert Saliency(net).attribute(torch.randn(1, 3, 8, 8), 0).shape == (1, 3, 8, 8)  # gradient methods still run


def test_output_sigmoid_is_allowed():
    net = _Act("sigmoid_out").eval()
    assert GuidedBackprop(net).attribute(torch.randn(2, 3, 8, 8), 1).shape == (2, 3, 8, 8)


# -- CAM ------------------------------------------------------------------------------------
def test_cam_equals_gradcam_at_the_gap_input(resnet):
    x = images(2)
    cam = CAM(resnet)
    assert cam.layer == "layer4" and GradCAM(resnet).layer_for((3, 64, 64))[0] == "layer4"
    c = cam.attribute(x, [3, 9], upsample=False)
    g = GradCAM(resnet, "layer4").attribute(x, [3, 9], relu=False, upsample=False)
    hw = c.shape[2] * c.shape[3]
    assert rel(c, g * hw) < 1e-10  # the identity for GAP -> Linear: alpha_c = W[k, c] / HW
    cr = cam.attribute(x, [3, 9], relu=True)
    gr = GradCAM(resnet).attribute(x, [3, 9])
    scale = float(cr.sum() / gr.sum())
    assert scale > 0 and rel(cr, gr * scale) < 1e-10
    assert rel(cam.attribute(x), cam.attribute(x, GradCAM(resnet).predict(x))) == 0  # default: predicted class


def test_cam_needs_gap_linear(vgg):
    with pytest.raises(ViscnnError) as e:
        CAM(vgg)
    assert "global average pooling" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ViscnnError, match="not class:K"):
        CAM(torchvision.models.resnet18(weights=None).eval()).attribute(images(1, 32, torch.float32), "loss")


# -- batching, targets, the user's model -----------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "guided_backprop", "deconvnet", "saliency", "cam", "guided_gradcam"])
def test_batch_of_16_equals_16_single_calls(resnet, method):
    x = images(16, size=32)
    targets = list(range(0, 160, 10))
    meth = make_method(method, resnet)
    batch = meth.attribute(x, targets)
    singles = torch.cat([meth.attribute(x[i:i + 1], targets[i]) for i in range(16)])
    assert rel(batch, singles) < 1e-10
    assert rel(meth.attribute(x, targets, batch_size=5), batch) < 1e-10


def _hand_grad(model, x, fn):
    m = copy.deepcopy(model)
    xx = x.clone().requires_grad_()
    return torch.autograd.grad(fn(m, xx).sum(), [xx])[0]


def test_target_strings(resnet):
    x = images(2, size=32)
    s = Saliency(resnet)
    labels = torch.tensor([4, 8])
    assert rel(s.attribute(x, "class:3", abs=False), _hand_grad(resnet, x, lambda m, t: m(t)[:, 3])) < 1e-12
    assert rel(s.attribute(x, "class:3"), s.attribute(x, 3)) == 0
    assert rel(s.attribute(x, "class:3 - 0.5*class:7", abs=False),
               _hand_grad(resnet, x, lambda m, t: m(t)[:, 3] - 0.5 * m(t)[:, 7])) < 1e-12
    assert rel(s.attribute(x, "loss", labels=labels, abs=False),
               _hand_grad(resnet, x, lambda m, t: F.cross_entropy(m(t), labels, reduction="none"))) < 1e-12

    def unit(m, t):
        kept = {}
        h = m.layer2[0].conv1.register_forward_hook(lambda mod, i, o: kept.__setitem__("y", o))
        m(t)
        h.remove()
        return kept["y"][:, 5].mean((1, 2))
    assert rel(s.attribute(x, "unit:layer2.0.conv1:5", abs=False), _hand_grad(resnet, x, unit)) < 1e-12
    n = s.attribute(x, "neuron:layer1.0.conv1:2:0:0", abs=False)
    assert n.abs().sum() > 0 and n[:, :, 16:].abs().sum() == 0 and n[:, :, :, 16:].abs().sum() == 0  # its receptive field


def test_per_image_targets(resnet):
    x = images(3, size=32)
    g = GuidedBackprop(resnet)
    mixed = g.attribute(x, ["class:3", 7, torch.tensor(1)])
    rows = [g.attribute(x[i:i + 1], t) for i, t in enumerate([3, 7, 1])]
    assert rel(mixed, torch.cat(rows)) < 1e-10
    assert rel(g.attribute(x, torch.tensor([3, 7, 1])), mixed) < 1e-10
    gc = GradCAM(resnet)
    assert rel(gc.attribute(x, [3, "unit:layer4.1.conv2:5", 1])[1], gc.attribute(x[1:2], "unit:layer4.1.conv2:5")[0]) < 1e-10


def test_users_model_untouched():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)  # train mode, BN statistics that eval() must not update
    model.layer1[0].relu.inplace = True
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(n, m.training, getattr(m, "inplace", None)) for n, m in model.named_modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x = images(2, size=32, dtype=torch.float32)
    outs = {name: make_method(name, model).attribute(x, 3) for name in
            ("saliency", "guided_backprop", "deconvnet", "gradcam", "guided_gradcam", "cam", "input_x_gradient")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert flags == [(n, m.training, getattr(m, "inplace", None)) for n, m in model.named_modules()]
    assert grads == [p.requires_grad for p in model.parameters()] and all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    evald = copy.deepcopy(model).eval()
    assert rel(outs["gradcam"], GradCAM(evald).attribute(x, 3)) < 1e-6  # explained in eval mode


def test_bad_input_is_a_one_line_error(resnet):
    x = images(2, size=32)
    cases = [
        (lambda: make_method("occlusion_sensitivity", resnet), "unknown attribution method"),
        (lambda: GradCAM(resnet, "fc").attribute(x, 1), "no spatial map"),
        (lambda: GradCAM(resnet, "avgpool").attribute(x, 1), "no spatial map"),
        (lambda: GradCAM(resnet, "layer9"), "unknown layer"),
        (lambda: GradCAM(resnet, "layer1.0.relu"), "called more than once"),
        (lambda: GradCAM(resnet, "layer4").attribute(x, "unit:layer1.0.conv1:0"), "does not depend on layer layer4"),
        (lambda: Saliency(resnet).attribute(x, [1, 2, 3]), "3 targets for 2 images"),
        (lambda: Saliency(resnet).attribute(x, 1000), "only 1000 outputs"),
        (lambda: Saliency(resnet).attribute(x, -1), ">= 0"),
        (lambda: Saliency(resnet).attribute(x, "unit:nope:1"), "unknown layer"),
        (lambda: Saliency(resnet).attribute(x.numpy(), 1), "must be a tensor"),
        (lambda: Saliency(resnet).attribute(torch.zeros(2, 3), 1), "image batch"),
    ]
    for fn, words in cases:
        with pytest.raises(ViscnnError) as e:
            fn()
        # target-grammar errors keep the project's caret line under the bad token
        first = str(e.value).split("\n")[0] if "^" in str(e.value) else str(e.value)
        assert words in first and "\n" not in first, (words, str(e.value))


# -- crop, weights, comparisons, circuits, DeconvNet of a unit ---------------------------------
def test_gradcam_crop_box_and_mask():
    x = torch.ones(2, 3, 8, 8)
    cam = torch.zeros(2, 1, 8, 8)
    cam[0, 0, 2:5, 3:7] = 1.0
    cam[0, 0, 6, 6] = 0.4
    c = gradcam_crop(x, cam, threshold=0.5)
    assert c.boxes[0].tolist() == [2, 3, 5, 7]
    assert c.boxes[1].tolist() == [0, 0, 0, 0] and not c.mask[1].any()  # a constant map keeps nothing
    assert c.masked[0].sum() == 3 * 12 and c.masked.shape == x.shape
    assert gradcam_crop(x, cam, threshold=0.3).boxes[0].tolist() == [2, 3, 7, 7]
    with pytest.raises(ViscnnError):
        gradcam_crop(x, cam, threshold=1.5)


def test_weight_pictures(tmp_path):
    torch.manual_seed(0)
    a, b = torchvision.models.resnet18(weights=None), torchvision.models.resnet18(weights=None)
    f = rgb_filters(a)
    assert f.shape == (64, 7, 7, 3)
    assert np.allclose(f.reshape(64, -1).min(1), 0) and np.allclose(f.reshape(64, -1).max(1), 1)
    grid = rgb_filter_grid(a, cols=8)
    assert grid.shape == (8 * 8 + 1, 8 * 8 + 1, 3)
    tiles = kernel_tiles(a, "layer1.0.conv1", max_out=4, max_in=5, normalize="layer")
    assert tiles.shape == (4 * 4 + 1, 5 * 4 + 1) and 0 <= tiles.min() and tiles.max() <= 1
    both = side_by_side(a, b, gap=6)
    assert both.dtype == np.uint8 and both.shape == (33, 129 * 2 + 6, 3)  # 16 columns x 4 rows each
    save_png(tmp_path / "w.png", both)
    from PIL import Image

    assert Image.open(tmp_path / "w.png").size == (264, 33)
    with pytest.raises(ViscnnError, match="reads 64 channels"):
        rgb_filters(a, "layer1.0.conv1")


def test_compare_models_and_sizes(resnet):
    torch.manual_seed(5)
    other = torchvision.models.resnet18(weights=None).eval().double()
    img = images(1, size=32)[0]
    raw = compare_models({"a": resnet, "b": other}, img, "gradient", target=3, normalize="raw")
    assert raw.labels == ["a", "b"] and raw.signed
    assert raw.limit == pytest.approx(max(np.abs(m).max() for m in raw.maps))
    per = compare_models([resnet, other], img, "saliency", target=3, normalize="per_map")
    assert all(np.abs(m).max() == pytest.approx(1.0) for m in per.maps) and per.limit == 1.0
    assert all(p.shape == (32, 32, 3) and p.dtype == np.uint8 for p in raw.pictures())
    sizes = compare_sizes(resnet, img, [(32, 32), (48, 48)], "gradcam", target=3)
    assert [m.shape for m in sizes.maps] == [(32, 32), (48, 48)] and sizes.labels == ["32x32", "48x48"]


def test_circuit_restricted_attribution():
    from viscnn.graph import build_graph

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    g = build_graph(net, (8, 8), include_classes=True)
    x = torch.randn(2, 3, 8, 8)
    full, same = attribute_in_circuit("guided_backprop", net, g, np.arange(g.num_edges), x, 1)
    assert torch.equal(full, same)
    l2 = g.layer("2")
    keep = np.setdiff1d(np.arange(g.num_edges), np.arange(l2.edge_offset, l2.edge_offset + l2.num_edges))
    full2, part = attribute_in_circuit("gradient", net, g, keep, x, 1)
    assert torch.equal(full2, Saliency(net).attribute(x, 1, abs=False)) and part.abs().sum() == 0


def test_deconvnet_of_a_unit(resnet):
    x = images(2, size=32)
    d = deconvnet_of_unit(resnet, x, "layer2.0.conv1", 7)
    kept = {}
    m = copy.deepcopy(resnet)
    m.layer2[0].conv1.register_forward_hook(lambda mod, i, o: kept.__setitem__("y", o.detach()))
    m(x)
    y = kept["y"][:, 7]
    for i in range(2):
        yy, xx = divmod(int(y[i].argmax()), y.shape[2])
        one = Deconvolution(resnet).attribute(x[i:i + 1], f"neuron:layer2.0.conv1:7:{yy}:{xx}")
        assert rel(d[i:i + 1], one) < 1e-10
