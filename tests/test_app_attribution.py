"""The Attribution view without a browser: its props for a state, its URL keys, its errors."""

from viscnn.app.views import drawn_now
import numpy as np
import pytest
import torch

from app_fixture import make_prepped
from app_fixture import walk as _walk
from viscnn.app import state as st
from viscnn.app.views.attribution.compute import METHODS, attribute_image


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from viscnn.app.server import create_app

    root = tmp_path_factory.mktemp("attrview")
    make_prepped(root, "tiny")
    return create_app(root, "tiny", cache_dir=root / "cache")


def test_every_method_drawn_with_its_scale(app):
    from viscnn.app.views.attribution.callbacks import attribution_props

    actx = app.viscnn
    s = dict(actx.defaults("tiny"), view="attribution", methods=list(METHODS))
    p = drawn_now(actx, attribution_props, s)
    assert "predicted class" in p["attr-info"]["children"]
    graphs = [c for c in _walk(p["attr-maps"]["children"]) if type(c).__name__ == "Graph"]
    heat = [g.figure["data"][0] for g in graphs if g.figure["data"][0]["type"] == "heatmap"]
    errors = [c for c in _walk(p["attr-maps"]["children"]) if getattr(c, "className", "") == "warn"]
    assert len(heat) + len(errors) == len(METHODS) and len(heat) >= len(METHODS) - 1
    for tr in heat:  # signed maps: symmetric about zero; magnitudes from zero
        assert tr["zmin"] == -tr["zmax"] or tr["zmin"] == 0
    # a shared scale puts every signed map on one limit
    p2 = drawn_now(actx, attribution_props, dict(s, ascale="shared"))
    heat2 = [g.figure["data"][0] for g in _walk(p2["attr-maps"]["children"]) if type(g).__name__ == "Graph"
             and g.figure["data"][0]["type"] == "heatmap"]
    assert len({tr["zmax"] for tr in heat2 if tr["zmin"] < 0}) == 1


def test_circuit_only_row_and_bad_layer(app):
    from viscnn.app.views.attribution.callbacks import attribution_props
    from viscnn.errors import ViscnnError

    actx = app.viscnn
    s = dict(actx.defaults("tiny"), view="attribution", methods=["gradient"], arestrict=True, mode="mass", value=0.5)
    p = drawn_now(actx, attribution_props, s)
    titles = [c.children for c in _walk(p["attr-maps"]["children"]) if type(c).__name__ == "H4"]
    assert titles[0] == "Full model" and titles[1].startswith("Circuit only:")
    with pytest.raises(ViscnnError, match="no conv layer"):
        drawn_now(actx, attribution_props, dict(s, alayer="nope"))


def test_url_keys_round_trip(app):
    actx = app.viscnn
    d = actx.defaults("tiny")
    s = dict(d, view="attribution", methods=["deconvnet", "gradcam"], atarget="class:2", athr=0.3,
             ascale="shared", arestrict=True)
    back, warns = st.decode(st.encode(s), d, [d["metric"]], [d["layout"]])
    assert not warns and all(back[k] == s[k] for k in ("methods", "atarget", "athr", "ascale", "arestrict"))
    back, warns = st.decode("?methods=gradcam,bogus&athr=7", d, [d["metric"]], [d["layout"]])
    assert back["methods"] == ["gradcam"] and back["athr"] == 0.5 and len(warns) == 2


def test_same_maps_as_the_package():
    """The view's gradient map is the package's raw gradient summed over channels."""
    from viscnn.attribution.saliency import Gradient

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(1, 1, 10, 10)
    r = attribute_image(m, x, ["gradient"], "class:1")
    ref = Gradient(m).attribute(x, 1).detach().double().numpy()[0].sum(0)
    np.testing.assert_allclose(r.maps[0].map2d, ref, rtol=1e-6, atol=1e-9)


def test_compare_view_across_models_and_sizes(tmp_path):
    from viscnn.app.server import create_app
    from viscnn.app.views.compare.callbacks import compare_props

    make_prepped(tmp_path, "tiny")
    make_prepped(tmp_path, "tiny2")
    sd = torch.load(tmp_path / "tiny2" / "weights.pt", weights_only=True)  # the fixture's net is seeded: retrain it by hand
    torch.manual_seed(5)
    torch.save({k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()},
               tmp_path / "tiny2" / "weights.pt")
    make_prepped(tmp_path, "big", input_shape=(1, 32, 32))  # another input shape: listed as not compared
    app = create_app(tmp_path, "tiny", cache_dir=tmp_path / "cache")
    actx = app.viscnn
    s = dict(actx.defaults("tiny"), view="compare", cmethod="gradient", csize="40x40", cscale="raw")
    p = drawn_now(actx, compare_props, s)
    graphs = [c for c in _walk(p["cmp-body"]["children"]) if type(c).__name__ == "Graph"]
    titles = [g.figure["layout"]["title"]["text"] for g in graphs]
    assert len(graphs) == 3 and titles[0].startswith("tiny (this model)") and titles[1].startswith("tiny2")
    assert titles[2].startswith("tiny at 40×40") and len(graphs[2].figure["data"][0]["z"]) == 40
    assert "big (1x32x32)" in p["cmp-info"]["children"]
    lims = {g.figure["data"][0]["zmax"] for g in graphs}
    assert len(lims) == 1  # raw: one shared scale
    # weight pictures: the first conv of each compared model and of this model with random weights
    imgs = [c for c in _walk(p["cmp-body"]["children"]) if type(c).__name__ == "Img"]
    assert len(imgs) == 3 and all(i.src.startswith("data:image/png") for i in imgs)
    assert len({i.src for i in imgs}) == 3
    from viscnn.app.activations import get_model
    from viscnn.app.views.compare.callbacks import random_copy

    m = get_model(actx.prepped("tiny"))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = random_copy(m)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the app's model is untouched
    assert not torch.equal(next(r.parameters()), next(m.parameters()))
    # the two models differ (different weights), so the comparison shows something
    z0, z1 = (np.asarray(g.figure["data"][0]["z"]) for g in graphs[:2])
    assert not np.allclose(z0, z1)


def test_node_panel_deconvnet_of_the_node(tmp_path):
    """The node panel back-projects the node from the input image and from each of its exemplars."""
    from viscnn.app import activations as A
    from viscnn.app.callbacks_panels import node_panel
    from viscnn.app.server import create_app

    make_prepped(tmp_path, "tiny")
    for f in (tmp_path / "tiny" / "exemplars").glob("*.npy"):  # whole 28x28 inputs, as prep stores them
        e = np.load(f)
        np.save(f, np.random.default_rng(0).integers(0, 256, (e.shape[0], 3, 28, 28, 3), dtype=np.uint8))
    actx = create_app(tmp_path, "tiny", cache_dir=tmp_path / "cache").viscnn
    s = actx.defaults("tiny")
    pm = actx.prepped("tiny")
    g = pm.graph
    layer = next(l for l in g.layers if l.kind == "conv")
    acts = A.run(pm, s["image"], actx.image("tiny", s["image"]))
    kids = node_panel(actx, s, layer.node_offset, acts, np.zeros(g.num_edges, np.float32))
    block = next(k for k in kids if any(getattr(c, "children", None) == "DeconvNet of this node"
                                        for c in _walk(getattr(k, "children", None))))
    imgs = [c for c in _walk(block.children) if type(c).__name__ == "Img"]
    ex = pm.exemplars(layer.name)
    assert len(imgs) == 1 + ex.shape[1] == 4
    assert all(i.src.startswith("data:image/png") for i in imgs)


def test_weight_pictures_say_how_to_read_their_colours():
    """Each first-conv picture carries its colour key: signed kernels (1 or 2 input channels) on the
    diverging map with their scale, RGB filters as RGB; the 2-channel grid is output x input channels."""
    import base64
    import io

    from PIL import Image
    from torch import nn

    from viscnn.app.views.compare.callbacks import weight_pictures

    torch.manual_seed(0)
    nets = [("one", nn.Sequential(nn.Conv2d(1, 9, 3))), ("two", nn.Sequential(nn.Conv2d(2, 4, 3))),
            ("rgb", nn.Sequential(nn.Conv2d(3, 8, 5)))]
    div = weight_pictures(nets)
    keys = [c for c in _walk(div) if "weight-key" in (getattr(c, "className", "") or "")]
    text = ["".join(x if isinstance(x, str) else x.children for x in (k.children if isinstance(k.children, list)
                                                                      else [k.children])) for k in keys]
    for t, (_, net) in zip(text[:2], nets[:2]):
        lim = float(net[0].weight.abs().max())
        assert "red = positive" in t and "blue = negative" in t and f"±{lim:.3g}" in t
    assert text[2].startswith("RGB")
    imgs = [c for c in _walk(div) if type(c).__name__ == "Img"]
    pic = np.asarray(Image.open(io.BytesIO(base64.b64decode(imgs[1].src.split(",", 1)[1]))))
    up = 200 // 17  # 4 rows x 2 columns of 3x3 tiles with 1 px gaps: 17 x 9 before upscaling
    assert pic.shape[:2] == (17 * up, 9 * up)


def test_new_methods_same_maps_as_the_package_and_say_what_they_rest_on():
    """IG (signed: channel sum) and SmoothGrad (magnitude: channel max) as in the package; IG's note
    gives its completeness check, the Grad-CAM variants' notes their layer."""
    from viscnn.attribution import IntegratedGradients, Occlusion, SmoothGrad

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(1, 2, 10, 10)
    r = attribute_image(m, x, ["ig", "smoothgrad", "occlusion", "gradcampp", "xgradcam", "layercam"], "class:1")
    by = {mr.method: mr for mr in r.maps}
    ig = IntegratedGradients(m).attribute(x, 1).detach().double().numpy()[0]
    np.testing.assert_allclose(by["ig"].map2d, ig.sum(0), rtol=1e-6, atol=1e-9)
    sg = SmoothGrad(m).attribute(x, 1).detach().double().numpy()[0]
    np.testing.assert_allclose(by["smoothgrad"].map2d, sg.max(0), rtol=1e-6, atol=1e-9)
    assert by["ig"].signed and not by["smoothgrad"].signed and by["occlusion"].signed
    occ = Occlusion(m).attribute(x, 1).detach().double().numpy()[0]
    np.testing.assert_allclose(by["occlusion"].map2d, occ.sum(0), rtol=1e-6, atol=1e-9)
    assert "2x2 windows at 25 positions" in by["occlusion"].note
    total = float(m(x)[0, 1] - m(torch.zeros_like(x))[0, 1])
    assert f"= {total:.4g}" in by["ig"].note and "completeness" in by["ig"].note
    for k in ("gradcampp", "xgradcam", "layercam"):
        assert by[k].map2d.shape == (10, 10) and "; at 3" in by[k].note, by[k].note
