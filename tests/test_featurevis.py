"""Feature visualisation: parameterisation, objectives vs dissected references, batched == one at a
time, early exit, validation and exemplars vs brute force. Small models, 28 px, few steps."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.featurevis.capture import Capture
from viscnn.featurevis.data import array_batches
from viscnn.featurevis.exemplars import crop_box, exemplar_crops, top_exemplars
from viscnn.featurevis.objectives import all_values, channel, diagonal_values, edge, neuron, parse_objective
from viscnn.featurevis.param import FourierImage
from viscnn.featurevis.render import RedirectedReLU, render, render_edges, render_layer
from viscnn.featurevis.transform import TransformSpec, draw_transform, random_transform, step_generator
from viscnn.featurevis.validate import best_real_values, validate
from viscnn.receptive_field import ReceptiveFields
from viscnn.zoo.fmnist import FashionCNN

NORM = ([0.286], [0.353])


def _small(seed=0):
    torch.manual_seed(seed)
    m = FashionCNN(widths=(8, 8, 12, 12)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for bn in (m.bn1, m.bn2, m.bn3, m.bn4):
            bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    return m


class _RGB(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, padding=1, groups=2), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 10 * 10, 4))

    def forward(self, x):
        return self.head(self.features(x))


def _images(n=40, seed=0):
    rs = np.random.RandomState(seed)
    base = rs.rand(n, 1, 1) * 255
    return np.clip(base + rs.randn(n, 28, 28) * 60, 0, 255).astype(np.uint8)


# -- parameterisation -------------------------------------------------------------------------------
def test_fourier_image_range_seeds_and_channels():
    a = FourierImage(2, 3, (20, 24), [1, 2])()
    b = FourierImage(2, 3, (20, 24), [1, 3])()
    assert a.shape == (2, 3, 20, 24) and a.min() > 0 and a.max() < 1
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])  # per-image seeds
    g = FourierImage(1, 1, (28, 28), [0])()
    assert g.shape == (1, 1, 28, 28)
    with pytest.raises(ValueError):
        FourierImage(1, 2, (8, 8), [0])


def _reference_fourier(param: FourierImage) -> torch.Tensor:
    """The recipe written out literally: scale, inverse FFT, /4, colour mix in pixel space, crop, sigmoid."""
    h, w = param.size
    spec = torch.view_as_complex(param.spectrum * param.scale[None, None, :, :, None])
    img = torch.fft.irfftn(spec, s=(h, w), norm="ortho") / 4.0
    if param.channels == 3:
        img = torch.einsum("nchw,dc->ndhw", img, param.color)
    mg = param.margin
    return torch.sigmoid(img[:, :, mg:mg + param.out_size[0], mg:mg + param.out_size[1]])


@pytest.mark.parametrize("channels,margin", [(3, 5), (1, 4), (3, 0)])
def test_fourier_fast_path_matches_literal_recipe(channels, margin):
    torch.manual_seed(0)
    p = FourierImage(3, channels, (20, 26), [4, 5, 6], sd=0.5, margin=margin)
    ref = _reference_fourier(p)
    torch.testing.assert_close(p(), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p.signed(), 2 * ref - 1, atol=2e-6, rtol=1e-5)
    # gradients flow to the spectrum the same way
    g = torch.randn_like(ref)
    (a,) = torch.autograd.grad((p.signed() * g).sum(), p.spectrum)
    (b,) = torch.autograd.grad(((2 * _reference_fourier(p) - 1) * g).sum(), p.spectrum)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _reference_transform(x01: torch.Tensor, spec: TransformSpec, gen: torch.Generator) -> torch.Tensor:
    """Literal pad with gray / scale+rotate about the centre (grid_sample, border) / crop, on [0, 1] images."""
    n, c, h, w = x01.shape
    s, a, oy, ox = draw_transform(spec, gen)
    p = spec.pad
    xp = F.pad(x01, (p, p, p, p), value=0.5)
    if s != 1 or a != 0:
        cos, sin = math.cos(a) / s, math.sin(a) / s
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x01.dtype)
        grid = F.affine_grid(theta.expand(n, 2, 3), list(xp.shape), align_corners=False)
        xp = F.grid_sample(xp, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return xp[:, :, oy:oy + h, ox:ox + w]


@pytest.mark.parametrize("size", [(28, 28), (20, 31)])
def test_one_grid_sample_transform_matches_pad_rotate_crop(size):
    x = torch.rand(3, 2, *size)
    spec = TransformSpec.for_size(size)
    seen = set()
    for step in range(60):
        ref = _reference_transform(x, spec, step_generator(7, step))
        got = random_transform(2 * x - 1, spec, step_generator(7, step))
        torch.testing.assert_close((got + 1) / 2, ref, atol=2e-5, rtol=0)
        seen.add(draw_transform(spec, step_generator(7, step))[:2] == (1, 0))
    assert seen == {True, False}  # both the pure-shift and the resampling branch ran


def test_sparse_resampling_equals_grid_sample_values_and_gradients():
    """The shared-grid CSR path (large batches) against grid_sample itself, in float64."""
    from viscnn.featurevis.transform import SPARSE_MIN_PLANES, bilinear_matrices, transform_theta

    size = (23, 30)
    spec = TransformSpec.for_size(size)
    x = torch.randn(SPARSE_MIN_PLANES // 2 + 1, 2, *size, dtype=torch.float64)
    g = torch.randn_like(x)
    ran = 0
    for step in range(12):
        s, a, oy, ox = draw_transform(spec, step_generator(3, step))
        if s == 1 and a == 0:
            continue
        ran += 1
        xa = x.clone().requires_grad_()
        got = random_transform(xa, spec, step_generator(3, step))  # n*c >= SPARSE_MIN_PLANES: the CSR path
        (got * g).sum().backward()
        xb = x.clone().requires_grad_()
        grid = F.affine_grid(transform_theta(size, spec.pad, s, a, oy, ox).double(), [1, 1, *size], align_corners=False)
        ref = F.grid_sample(xb.reshape(1, -1, *size), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        (ref.view_as(g) * g).sum().backward()
        torch.testing.assert_close(got.double(), ref.view_as(got).double(), atol=1e-5, rtol=0)
        torch.testing.assert_close(xa.grad.double(), xb.grad, atol=1e-5, rtol=0)
    assert ran >= 5
    m, mt = bilinear_matrices(grid, size)  # the transpose really is the transpose
    torch.testing.assert_close(mt.to_dense(), m.to_dense().T)


def _reference_redirected_backward(x, g):
    """Lucid's redirected ReLU gradient, literally, one image at a time."""
    out = []
    for xi, gi in zip(x, g):
        relu_grad = torch.where(xi > 0, gi, torch.zeros_like(gi))
        out.append(relu_grad if relu_grad.ne(0).any() else torch.where((xi <= 0) & (gi > 0), torch.zeros_like(gi), gi))
    return torch.stack(out)


def test_redirected_relu_matches_reference():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 6, 6)
    x[1] = -x[1].abs()  # image 1: ReLU dead everywhere -> redirected
    g = torch.randn_like(x)
    g[3] = g[3] * (x[3] <= 0)  # image 3: gradient only where the ReLU is off -> redirected too
    xr = x.clone().requires_grad_(True)
    y = RedirectedReLU()(xr)
    assert torch.equal(y, torch.relu(x))
    y.backward(g)
    torch.testing.assert_close(xr.grad, _reference_redirected_backward(x, g), atol=0, rtol=0)
    assert torch.equal(xr.grad[0], torch.where(x[0] > 0, g[0], torch.zeros_like(g[0])))  # alive: plain ReLU


# -- objectives ---------------------------------------------------------------------------------------
def test_parse_objectives_roundtrip_and_errors():
    o = parse_objective("0.5*conv2:3 - conv3:1@center + conv3:2@4,5 - conv2:7->1 + 2e-1*conv2:6->1@1,2")
    kinds = sorted((a.kind, w) for w, a in o.terms)
    assert kinds == [("channel", 0.5), ("edge", -1.0), ("edge_point", 0.2), ("neuron", -1.0), ("neuron", 1.0)]
    assert [a for _, a in o.terms if a.kind == "edge_point"][0].y == 1
    assert parse_objective(str(o)) == o
    assert str(-channel("conv1", 2)) == "-conv1:2"
    assert channel("a.b", 1) + channel("a.b", 1) == 2 * channel("a.b", 1)
    for bad in ["", "conv1", "conv1:x", "conv1:1 conv1:2", "conv1:1; import os", "conv1:1@5", "__import__('os'):1"]:
        with pytest.raises(ViscnnError):
            parse_objective(bad)


def test_objective_values_match_dissected_reference():
    m = _small()
    x = torch.randn(3, 1, 28, 28)
    objs = [channel("conv3", 2), neuron("conv3", 5), neuron("conv2", 1, 3, 4), edge("conv3", 4, 6),
            edge("conv2", 0, 7) - 0.5 * channel("conv2", 3), edge("conv3", 2, 1, "center"), edge("conv3", 2, 1, (0, 13))]
    with Capture(m, set().union(*(o.needs for o in objs)), early_exit=False) as cap:
        captured = cap(x)
    mods = dict(m.named_modules())
    allv = all_values(objs, captured, mods)
    diag = diagonal_values(objs[:3], captured, mods)
    assert torch.allclose(diag, torch.diagonal(allv[:3]), atol=1e-6)

    # reference: run pieces of the model by hand
    h1 = m.pool1(m.relu1(m.bn1(m.conv1(x))))
    c2 = m.conv2(h1)
    c3 = m.conv3(m.relu2(m.bn2(c2)))

    def dissected(conv, inp, j, i, at=None):  # the conv with only kernel [j, i] kept and no bias
        d = copy.deepcopy(conv)
        with torch.no_grad():
            keep = d.weight[j, i].clone()
            d.weight.zero_()
            d.weight[j, i] = keep
            if d.bias is not None:
                d.bias.zero_()
        return d(inp)[:, j].mean((1, 2)) if at is None else d(inp)[:, j, at[0], at[1]]

    ref = torch.stack([c3[:, 2].mean((1, 2)), c3[:, 5, 7, 7], c2[:, 1, 3, 4],
                       dissected(m.conv3, m.relu2(m.bn2(c2)), 4, 6),
                       dissected(m.conv2, h1, 0, 7) - 0.5 * c2[:, 3].mean((1, 2)),
                       dissected(m.conv3, m.relu2(m.bn2(c2)), 2, 1, (7, 7)),
                       dissected(m.conv3, m.relu2(m.bn2(c2)), 2, 1, (0, 13))])
    assert torch.allclose(allv, ref, atol=1e-5)


def test_grouped_edge_and_checks():
    m = _RGB().eval()
    x = torch.rand(2, 3, 20, 20)
    conv = m.features[3]  # groups=2: out 0..3 read in 0..2, out 4..7 read in 3..5
    with Capture(m, {("features.3", "in")}) as cap:
        inp = cap(x)
    v = all_values([edge("features.3", 5, 4)], inp, dict(m.named_modules()))
    ref = F.conv2d(inp[("features.3", "in")][:, 4:5], conv.weight[5:6, 1:2], None, 1, 1).mean((1, 2, 3))
    assert torch.allclose(v[0], ref, atol=1e-6)
    with pytest.raises(ViscnnError, match="no kernel"):
        render(m, ["features.3:1->5"], size=20, steps=1)
    with pytest.raises(ViscnnError, match="channels"):
        render(m, ["features.3:8"], size=20, steps=1)
    with pytest.raises(ViscnnError, match="no module"):
        render(m, ["features.9:0"], size=20, steps=1)
    with pytest.raises(ViscnnError, match="outside"):
        render(m, ["features.3:0@10,0"], size=20, steps=1)


def test_capture_stops_at_target():
    m = _small()
    ran = []
    for name in ("conv1", "conv2", "conv3", "conv4", "fc"):
        dict(m.named_modules())[name].register_forward_hook(lambda mod, i, o, n=name: ran.append(n))
    x = torch.randn(2, 1, 28, 28)
    with Capture(m, {("conv2", "out")}) as cap:
        got = cap(x)[("conv2", "out")]
    assert ran == ["conv1", "conv2"]
    assert torch.allclose(got, m.conv2(m.pool1(m.relu1(m.bn1(m.conv1(x))))))


# -- rendering -------------------------------------------------------------------------------------------
def test_batched_early_exit_equals_one_at_a_time_full_model():
    m = _small()
    kw = dict(size=28, steps=12, normalize=NORM, seed=3)
    chans = [0, 3, 5, 9, 11]
    batched = render_layer(m, "conv3", channels=chans, batch_size=4, **kw)
    single = render(m, [f"conv3:{c}" for c in chans[:3]], batch_size=1, early_exit=False, **kw)
    assert batched.images.shape == (5, 28, 28, 3) and batched.images.dtype == np.uint8
    assert np.abs(batched.images[:3].astype(int) - single.images.astype(int)).max() <= 2
    np.testing.assert_allclose(batched.objective[:3], single.objective, rtol=1e-3, atol=1e-4)
    again = render_layer(m, "conv3", channels=chans, batch_size=4, **kw)
    assert np.array_equal(again.images, batched.images)  # seeded, reproducible


def test_render_raises_units_and_negative_lowers():
    m = _small()
    kw = dict(size=28, steps=40, normalize=NORM, seed=0, batch_size=32)
    r = render_layer(m, "conv2", **kw)
    assert (r.objective > r.start).mean() >= 0.9
    neg = render(m, ["-conv2:1", "-conv2:2"], **kw)
    assert neg.objective[0] > neg.start[0] and neg.objective[1] > neg.start[1]  # -value went up
    assert -neg.objective[0] < r.objective[1]  # channel 1 minimised < maximised
    js = r.to_json()
    assert js["objectives"][1] == "conv2:1" and len(js["objective"]) == 8 and "best_real" not in js


@pytest.mark.parametrize("at", [None, "center"])
def test_edges_rise_far_above_start(at):
    m = _small()
    edges = [("conv2", j, i) for j in range(4) for i in range(4)]
    kw = dict(size=28, normalize=NORM, at=at)
    r = render_edges(m, edges, steps=48, seed=0, **kw)
    # the edge objective on random starting images (5 seeds): the level to rise far above
    starts = np.stack([render_edges(m, edges, steps=0, seed=s, **kw).objective for s in range(5)])
    w = m.conv2.weight.detach()
    # a map's mean is ~ kernel sum x channel mean: it can only become positive for a positive sum;
    # a point value can whenever one weight is positive
    can_rise = np.array([bool(w[j, i].sum() > 0.01) if at is None else bool((w[j, i] > 0).any()) for _, j, i in edges])
    assert can_rise.sum() >= 5
    margin = r.objective - starts.max(0)
    assert (margin[can_rise] > 0).all()
    spread = starts.max(0) - starts.min(0)
    assert np.median(margin[can_rise]) > 10 * np.median(spread[can_rise])
    if at is not None:
        return
    # without the redirected ReLU gradient, many edges whose input channel is dead at the start stay
    # at exactly 0 (only a lucky jitter wakes them); with it, all of them move
    plain = render_edges(m, edges, steps=48, seed=0, redirect_relu=False, **kw)
    dead = r.start == 0
    assert (plain.objective[dead] == 0).sum() >= 4 and (r.objective[dead & can_rise] == 0).sum() == 0
    assert (r.objective[dead & can_rise] > 0).all()


def test_margin_unsticks_border_pixels():
    # conv1 units are linear in the pixels, with a black/white-per-pixel optimum that differs at the
    # borders; the periodic FFT couples opposite borders, so without a margin pixels get stuck
    m = _small(1)
    kw = dict(size=28, steps=96, normalize=NORM)
    r = render_layer(m, "conv1", **kw)
    r0 = render_layer(m, "conv1", margin=0, **kw)
    assert r.settings["margin"] == 4 and r0.settings["margin"] == 0
    assert (r.objective > r0.objective).mean() >= 0.75
    best, _ = best_real_values(m, r.objectives, array_batches(_images(), 20), normalize=NORM)
    assert (r.objective > best).all()
    assert FourierImage(2, 1, (28, 28), [0, 1], margin=4)().shape == (2, 1, 28, 28)


def test_rgb_model_renders_with_decorrelated_colour():
    m = _RGB().eval()
    r = render(m, ["features.3:1", "features.0:2@center"], size=20, steps=20, seed=1,
               normalize=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    assert r.images.shape == (2, 20, 20, 3)
    assert not np.array_equal(r.images[..., 0], r.images[..., 1])  # real colour, not gray
    assert (r.objective > r.start).all()


# -- validation and exemplars vs brute force -----------------------------------------------------
def _all_acts(m, imgs, layer):
    x = (torch.from_numpy(imgs).float()[:, None] / 255 - NORM[0][0]) / NORM[1][0]
    with Capture(m, {(layer, "out")}) as cap:
        return cap(x)[(layer, "out")].detach()


def test_best_real_and_validate_match_brute_force():
    m = _small()
    imgs = _images()
    objs = ["conv2:1", "conv3:4@2,3", "conv2:2->5", "-conv3:0"]
    best, arg = best_real_values(m, objs, array_batches(imgs, 7), normalize=NORM)
    x = (torch.from_numpy(imgs).float()[:, None] / 255 - NORM[0][0]) / NORM[1][0]
    with Capture(m, {("conv2", "out"), ("conv3", "out"), ("conv2", "in")}, early_exit=False) as cap, torch.no_grad():
        ref = all_values([parse_objective(o) for o in objs], cap(x), dict(m.named_modules()))
    np.testing.assert_allclose(best, ref.max(1).values.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(arg, ref.argmax(1).numpy())
    r = render(m, objs[:2], size=28, steps=8, normalize=NORM)
    validate(r, m, array_batches(imgs, 16), normalize=NORM)
    assert np.array_equal(r.beats_real, r.objective > r.best_real)
    assert r.to_json()["beats_real"] == [bool(v) for v in r.beats_real]


def test_top_exemplars_match_brute_force_and_batch_size():
    m = _small()
    imgs = _images(30)
    imgs[7] = imgs[3]  # a tie: the lower index must win
    ex = top_exemplars(m, ["conv1", "conv3"], array_batches(imgs, 4), k=5, normalize=NORM)
    ex2 = top_exemplars(m, ["conv3"], array_batches(imgs, 30), k=5, normalize=NORM)
    assert np.array_equal(ex["conv3"].index, ex2["conv3"].index)
    for layer in ("conv1", "conv3"):
        a = _all_acts(m, imgs, layer)  # [N, C, H, W]
        v = a.flatten(2).max(2).values.T.numpy()  # [C, N]
        for c in range(a.shape[1]):
            order = sorted(range(len(imgs)), key=lambda n: (-v[c, n], n))[:5]
            assert ex[layer].index[c].tolist() == order
            np.testing.assert_allclose(ex[layer].value[c], v[c, order], rtol=1e-6)
            for r, n in enumerate(order):
                y, x = ex[layer].pos[c, r]
                assert a[n, c, y, x] == a[n, c].max()


def test_exemplar_crops_are_the_receptive_field():
    m = _small()
    imgs = _images(12)
    ex = top_exemplars(m, ["conv1"], array_batches(imgs, 5), k=3, normalize=NORM)["conv1"]
    rf = ReceptiveFields(m, (28, 28))
    crops = exemplar_crops(imgs, ex, rf, size=(3, 3))  # conv1: 3x3 field, no resampling
    assert crops.shape == (8, 3, 3, 3, 3)
    for c in range(8):
        for r in range(3):
            n, (y, x) = ex.index[c, r], ex.pos[c, r]
            padded = np.pad(imgs[n], 1, constant_values=128)  # gray outside the image
            np.testing.assert_array_equal(crops[c, r, :, :, 0], padded[y:y + 3, x:x + 3])
    big = exemplar_crops(imgs, top_exemplars(m, ["conv4"], array_batches(imgs, 12), k=2, normalize=NORM)["conv4"],
                         rf, size=(16, 16))
    assert big.shape == (12, 2, 16, 16, 3)
    t = crop_box(torch.ones(1, 4, 4), (-1, 2, 3, 6))
    assert t.shape == (1, 3, 3) and t[0, 0, 0] == 0.5 and t[0, 1, 0] == 1 and t[0, 1, 1] == 0.5
