"""Integrated gradients, SmoothGrad and the Grad-CAM variants: equal to Captum (IG, and SmoothGrad as
the mean of Captum's Saliency over the same noisy inputs), to torchcam (XGrad-CAM, Layer-CAM), to a
loop over the paper's Eq. 19 (Grad-CAM++); the predicted class held fixed along the path / under
noise; every method on GoogLeNet (functional ReLUs) and MobileNetV2; the user's model untouched."""

import copy

import numpy as np
import pytest
import torch
import torchvision

from viscnn.attribution import (GradCAMPlusPlus, IntegratedGradients, LayerCAM, Occlusion, SmoothGrad, TracedModel,
                                XGradCAM, make_method)
from viscnn.attribution.integrated_gradients import quadrature
from viscnn.errors import ViscnnError

captum_attr = pytest.importorskip("captum.attr")
torchcam = pytest.importorskip("torchcam.methods")
NEW = ["integrated_gradients", "smoothgrad", "occlusion", "gradcam_plusplus", "xgradcam", "layercam"]


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None).eval().double()
    for mod in m.modules():  # Captum and torchcam run on the model itself: no in-place ReLU overwriting a hook's tensor
        if hasattr(mod, "inplace"):
            mod.inplace = False
    return m


@pytest.fixture(scope="module")
def net(resnet):
    return TracedModel(resnet)


def images(n, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_right", "riemann_middle"])
def test_integrated_gradients_equal_captum(resnet, net, method):
    x, base = images(2), 0.3 * images(1, seed=5)
    ig = IntegratedGradients(net, steps=12, method=method, internal_batch_size=8)  # 4 steps per pass: chunks
    got = ig.attribute(x, [3, 7], baseline=base)
    ref = captum_attr.IntegratedGradients(resnet)
    expect, delta = ref.attribute(x.clone(), baselines=base.expand_as(x), target=[3, 7], n_steps=12, method=method,
                                  return_convergence_delta=True)
    if method == "riemann_trapezoid":  # Captum's trapezoid weights sum to (n-1)/n, ours to 1
        got = got * 11 / 12
    assert rel(got, expect) < 1e-6  # Captum places its Riemann points in float32 (torch.linspace(...).tolist())
    assert torch.allclose(ig.convergence_delta(x, got, [3, 7], baseline=base), delta, atol=1e-6)


def test_integrated_gradients_complete_and_pin_the_predicted_class(resnet, net):
    x, base = images(2, seed=3), 2 * images(1, seed=9)  # not 0: a bias-free ReLU/BN net is linear along t * x
    ig = IntegratedGradients(net, steps=32)
    a = ig.attribute(x, baseline=base)  # the predicted class of x, also where the path passes other predictions
    pred = resnet(x).argmax(1).tolist()
    assert rel(a, ig.attribute(x, pred, baseline=base)) < 1e-12
    d = ig.convergence_delta(x, a, baseline=base).abs()
    gap = (resnet(x)[[0, 1], pred] - resnet(base.expand_as(x))[[0, 1], pred]).abs()
    coarse = IntegratedGradients(net, steps=2)
    d2 = coarse.convergence_delta(x, coarse.attribute(x, pred, baseline=base), pred, baseline=base).abs()
    assert float((d / gap).max()) < 0.05 and float(d2.max()) > 2 * float(d.max())  # completeness, better with more steps


def test_quadrature_rules_integrate_polynomials():
    for m in ("gausslegendre", "riemann_trapezoid", "riemann_middle"):
        a, w = quadrature(40, m)
        assert abs(float((w * a ** 2).sum()) - 1 / 3) < 1e-3
    with pytest.raises(ViscnnError, match="unknown integration method"):
        quadrature(8, "simpson")
    with pytest.raises(ViscnnError, match="at least 1 steps"):
        IntegratedGradients(torch.nn.Conv2d(1, 1, 1), steps=0)


@pytest.mark.parametrize("absolute", [True, False])
def test_smoothgrad_is_the_mean_saliency_over_its_noise(resnet, net, absolute):
    x = images(2, seed=4)
    sg = SmoothGrad(net, samples=6, noise=0.2, seed=3, abs=absolute, internal_batch_size=4)  # 2 samples per pass
    got = sg.attribute(x, [1, 9])
    noise = sg.noise(x)
    span = x.reshape(2, -1).amax(1) - x.reshape(2, -1).amin(1)
    assert abs(float(noise[:, 0].std()) / float(0.2 * span[0]) - 1) < 0.05  # sigma = 20 % of the image's range
    sal = captum_attr.Saliency(resnet)
    expect = torch.stack([sal.attribute((x + n).clone(), target=[1, 9], abs=absolute) for n in noise]).mean(0)
    assert rel(got, expect) < 1e-8
    assert sg.signed is (not absolute)
    assert rel(SmoothGrad(net, samples=6, noise=0.2, seed=3, abs=absolute).attribute(x, [1, 9]), got) < 1e-12  # seeded
    assert rel(SmoothGrad(net, samples=6, noise=0.2, seed=4, abs=absolute).attribute(x, [1, 9]), got) > 1e-3


def test_smoothgrad_keeps_the_clean_inputs_predicted_class(resnet, net):
    x = images(2, seed=6)
    pred = resnet(x).argmax(1).tolist()
    sg = SmoothGrad(net, samples=4, noise=2.0)  # so much noise that the noisy predictions change
    assert rel(sg.attribute(x), sg.attribute(x, pred)) < 1e-12


@pytest.mark.parametrize("window, strides", [((3, 6, 6), (3, 4, 4)), ((1, 5, 5), (1, 3, 3)), ((3, 8, 8), None)])
def test_occlusion_equals_captum(resnet, net, window, strides):
    """Overlapping windows, per-channel windows, clipped last windows, several windows per pass."""
    x = images(2, size=20, seed=11)
    got = Occlusion(net, window=window, strides=strides, baseline=0.5, internal_batch_size=10).attribute(x, [3, 7])
    expect = captum_attr.Occlusion(resnet).attribute(x, sliding_window_shapes=window, strides=strides or window,
                                                     target=[3, 7], baselines=0.5, perturbations_per_eval=4)
    assert rel(got, expect) < 1e-6


def test_occlusion_default_window_and_bad_windows(net):
    win, pos = Occlusion(net).positions((3, 224, 224))
    assert win == (3, 28, 28) and len(pos) == 64
    win, pos = Occlusion(net, window=(5, 5), strides=(4, 4)).positions((3, 20, 20))
    assert win == (3, 5, 5) and len(pos) == 5 * 5 and max(p[1] for p in pos) == 16  # the last window clipped
    with pytest.raises(ViscnnError, match="larger than the input"):
        Occlusion(net, window=30).attribute(images(1, size=20), 0)
    with pytest.raises(ViscnnError, match="positive sizes"):
        Occlusion(net, window=(0, 3)).attribute(images(1, size=20), 0)


def _eq19_loop(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al., Eq. 19 and 7) one channel and pixel at a time, before the ReLU."""
    n, c, h, w = a.shape
    cam = np.zeros((n, h, w))
    for i in range(n):
        for k in range(c):
            s = a[i, k].sum()
            wk = 0.0
            for y in range(h):
                for x in range(w):
                    gg = g[i, k, y, x]
                    den = 2 * gg ** 2 + s * gg ** 3
                    if gg != 0 and den != 0:
                        wk += gg ** 2 / den * max(gg, 0.0)
            cam[i] += wk * a[i, k]
    return cam


def _layer_value_and_grad(model, layer, x, target):
    kept = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    out = model(x)
    h.remove()
    g, = torch.autograd.grad(out[range(len(x)), target].sum(), [kept["a"]])
    return kept["a"].detach(), g


@pytest.mark.parametrize("layer", ["layer4", "layer3", "layer2.1.conv2"])
def test_gradcam_plusplus_equals_the_papers_equation_one_pixel_at_a_time(resnet, net, layer):
    x = images(2, size=48, seed=7)
    a, g = _layer_value_and_grad(resnet, layer, x, [2, 8])
    expect = np.maximum(_eq19_loop(a.numpy(), g.numpy()), 0)
    got = GradCAMPlusPlus(net, layer).attribute(x, [2, 8], upsample=False)[:, 0]
    assert rel(got, torch.from_numpy(expect)) < 1e-10


@pytest.mark.parametrize("ours, theirs", [(XGradCAM, "XGradCAM"), (LayerCAM, "LayerCAM")])
@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_xgradcam_and_layercam_equal_torchcam(resnet, net, ours, theirs, layer):
    x = images(2, size=64, seed=8)
    with getattr(torchcam, theirs)(resnet, layer) as ext:
        cams = ext(class_idx=[4, 6], scores=resnet(x), normalized=False)
    got = ours(net, layer).attribute(x, [4, 6], upsample=False)[:, 0]
    assert rel(got, cams[0]) < 1e-6  # torchcam adds 1e-8 to XGrad-CAM's denominator


@pytest.mark.parametrize("arch", ["googlenet", "mobilenet_v2"])
def test_every_new_method_runs_on_other_architectures_and_leaves_the_model_alone(arch):
    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    model = getattr(torchvision.models, arch)(weights=None, **kw).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    for name in NEW:
        meth = make_method(name, model)
        if name == "smoothgrad":
            meth.samples = 3
        if name == "integrated_gradients":
            meth.steps = 4
        a = meth.attribute(x, 5, **({"relu": False} if "cam" in name else {}))  # a random net's map may be all < 0
        assert a.shape[0] == 1 and a.shape[-2:] == (48, 48) and torch.isfinite(a).all(), name
        # random GoogLeNet's last maps are ~1e-13: covering a window moves its logits below float32's resolution
        assert float(a.abs().sum()) > 0 or (arch, name) == ("googlenet", "occlusion"), name
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_aliases_and_bad_arguments_are_one_line_errors(net):
    assert isinstance(make_method("ig", net), IntegratedGradients)
    assert isinstance(make_method("Grad-CAM++", net, layer="layer3"), GradCAMPlusPlus)
    with pytest.raises(ViscnnError, match="does not broadcast"):
        IntegratedGradients(net, steps=2).attribute(images(1), 0, baseline=torch.zeros(2, 3, 3))
    with pytest.raises(ViscnnError, match="samples >= 1"):
        SmoothGrad(net, samples=0)
