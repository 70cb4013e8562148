"""Your own model, end to end (the README's "Your own model" walkthrough): a residual CNN in a .py
file, its state_dict, a folder of generated images, a TOML, ``viscnn prep`` from another directory,
then the prepped folder copied elsewhere (the project deleted) and opened from a third directory."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from viscnn.cli import main
from viscnn.errors import ViscnnError

def _readme_blocks():
    """The model file and the TOML shown in the README's "Your own model" section (this test runs them)."""
    from viscnn.paths import REPO_DIR

    text = (REPO_DIR / "README.md").read_text()
    sec = text[text.index("### Your own model, end to end"):]
    sec = sec[:sec.index("\n### ", 10)]
    py = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    toml = re.search(r"```toml\n(.*?)```", sec, re.S).group(1)
    return py, toml


MYNET_PY, TOML = _readme_blocks()


def draw(kind: str, k: int) -> Image.Image:
    im = Image.new("RGB", (32, 32), (20 * k, 30, 60))
    d = ImageDraw.Draw(im)
    if kind == "circle":
        d.ellipse((6 + k, 6, 24 + k, 24), fill=(250, 200, 40))
    elif kind == "square":
        d.rectangle((8, 8 + k, 22, 22 + k), fill=(40, 220, 90))
    else:
        for x in range(0, 32, 6):
            d.line((x + k, 0, x + k, 31), fill=(230, 230, 230), width=2)
    return im


def make_project(root):
    """mynet.py, mynet.pt, images/{circle,square,stripes}/*.png and mynet.toml under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mynet.py").write_text(MYNET_PY)
    for kind in ("circle", "square", "stripes"):
        (root / "images" / kind).mkdir(parents=True)
        for k in range(4):
            draw(kind, k).save(root / "images" / kind / f"{k}.png")
    (root / "mynet.toml").write_text(TOML)
    return root / "mynet.toml"


def save_weights(root):
    from viscnn.model_spec import load_model

    torch.manual_seed(0)
    torch.save(load_model(f"{root / 'mynet.py'}:mynet").state_dict(), root / "mynet.pt")


def test_walkthrough_prep_copy_and_serve_from_elsewhere(tmp_path, monkeypatch):
    project = tmp_path / "project"
    cfg = make_project(project)
    save_weights(project)
    # a 16-bit grayscale PNG among the images: read scaled, not clipped to white
    Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)).save(project / "images" / "stripes" / "9.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # every path in the TOML is resolved from the TOML's folder
    assert main(["prep", str(cfg)]) == 0
    prepped = project / "models" / "mynet"
    man = json.loads((prepped / "manifest.json").read_text())
    assert man["model"] == "model/mynet.py:mynet" and man["weights"] == "weights.pt"
    assert man["classes"] == ["circle", "square", "stripes"] and man["image_counts"] == [4, 4, 5, 13]

    copied = tmp_path / "copied"
    shutil.copytree(project / "models", copied)
    shutil.rmtree(project)  # the prepped folder is self-contained
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)

    from viscnn.cli import _serve_defaults, build_parser
    from viscnn.prepped import PreppedModel, list_models

    args = build_parser().parse_args(["serve", "--models-dir", str(copied)])
    _serve_defaults(args)
    assert args.name == "mynet" and list_models(copied) == ["mynet"]
    pm = PreppedModel.open("mynet", copied)
    model = pm.load_model().eval()
    g = pm.graph
    assert [l.name for l in g.conv_layers()] == ["stem", "block.conv1", "block.conv2", "down"]
    assert pm.node_scores("taylor").shape == (4, g.num_nodes)
    assert pm.featurevis("stem").shape[0] == 8 and pm.featurevis("down") is None  # featurevis.layers
    assert len(pm.edge_featurevis()[0]) == 8  # one incoming kernel per stem unit
    assert pm.exemplars("down").shape[:2] == (12, 2)
    assert not (copied / "mynet" / "featurevis" / "_partial").exists()
    # the app's images and a prediction on each, with the manifest's normalisation
    imgs = pm.images()
    assert [it["class"] for it in imgs] == ["circle", "square", "stripes"]
    x = torch.stack([torch.from_numpy(np.array(Image.open(pm.image_path(it["file"])).convert("RGB"))).permute(2, 0, 1)
                     for it in imgs]).float() / 255
    mean = torch.tensor(pm.normalize["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pm.normalize["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((x - mean) / std)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    # the viscnn model spec of the copied folder works from here too
    from viscnn.model_spec import load_model

    assert isinstance(load_model("mynet", models_dir=copied), torch.nn.Module)
    # the app itself, on the copied folder, from the third directory
    from viscnn.app.server import create_app

    app = create_app(copied, args.name, cache_dir=tmp_path / "cache")
    c = app.server.test_client()
    assert c.get("/").status_code == 200
    st = app.viscnn.defaults("mynet")
    assert c.get(f"/viscnn-img/mynet/input/{st['image']}").mimetype == "image/png"
    assert c.get(f"/viscnn-img/mynet/fv/{g.layers[1].node_offset}.png").mimetype == "image/png"


def test_rerun_resumes_and_a_changed_model_file_recomputes(tmp_path, capsys):
    cfg = make_project(tmp_path)
    save_weights(tmp_path)
    fast = ["--stages", "graph", "kernels", "--featurevis-steps", "1"]
    assert main(["prep", str(cfg), *fast]) == 0
    assert main(["prep", str(cfg), *fast]) == 0
    assert capsys.readouterr().out.count("already done") == 2
    (tmp_path / "mynet.py").write_text(MYNET_PY + "\n# edited\n")
    assert main(["prep", str(cfg), *fast]) == 0
    assert "recomputing every stage" in capsys.readouterr().out
    assert (tmp_path / "models" / "mynet" / "model" / "mynet.py").read_text().endswith("# edited\n")


def bad_folder(tmp_path, mode: str):
    cfg = make_project(tmp_path)
    save_weights(tmp_path)
    if mode == "bad":
        (tmp_path / "images" / "circle" / "fake.jpg").write_text("this is text, not a JPEG")
        buf = tmp_path / "full.jpg"
        draw("square", 0).save(buf, format="JPEG")
        (tmp_path / "images" / "square" / "cut.jpg").write_bytes(buf.read_bytes()[:300])
    elif mode == "empty":
        (tmp_path / "images" / "aardvark").mkdir()
    elif mode == "extra":
        shutil.copytree(tmp_path / "images" / "circle", tmp_path / "images" / "zebra")
    return cfg


@pytest.mark.parametrize("mode, message", [
    ("bad", r"2 bad image files under .*circle/fake.jpg \(not an image PIL can read\); square/cut.jpg \(.*truncated"),
    ("empty", r"class folder with no images .*: aardvark"),
    ("extra", r"the model has 3 outputs but there are 4 class folders .*zebra"),
])
def test_bad_image_folders_fail_before_any_work(tmp_path, capsys, mode, message):
    cfg = bad_folder(tmp_path, mode)
    assert main(["prep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "models").exists()


def test_bad_images_skip(tmp_path, capsys):
    from viscnn.prep import load_config
    from viscnn.prep.dataset import PrepDataset

    cfg = bad_folder(tmp_path, "bad")
    data = PrepDataset(load_config(cfg, {"data.bad_images": "skip"}), log=print)
    assert len(data) == 12 and "skipping 2 bad image files" in capsys.readouterr().out
    with pytest.raises(ViscnnError, match="data.bad_images"):
        load_config(cfg, {"data.bad_images": "ignore"})


def test_image_modes_convert_to_uint8():
    from viscnn.data.images import to_uint8

    ramp16 = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    for im in (Image.fromarray(ramp16), Image.fromarray(ramp16.astype(np.int32), "I"),
               Image.fromarray((ramp16 / 65535).astype(np.float32), "F")):
        g = to_uint8(im, 1)
        assert g.shape == (8, 8, 1) and g.min() == 0 and g.max() == 255, im.mode
        assert abs(int(g[4, 0, 0]) - 129) <= 1  # mid-ramp stays mid-grey
        assert to_uint8(im, 3).shape == (8, 8, 3)
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_uint8(rgba, 3)[0, 0].tolist() == [10, 20, 30]
    pal = Image.new("RGB", (4, 4), (204, 0, 0)).convert("P")  # a web-palette colour
    assert to_uint8(pal, 3)[0, 0].tolist() == [204, 0, 0]
    assert to_uint8(Image.new("LA", (4, 4), (77, 0)), 1)[0, 0, 0] == 77
    assert to_uint8(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), 3)[0, 0].tolist() == [255, 255, 255]


def test_torchvision_keyword_arguments():
    from viscnn.model_spec import load_model, parse_value

    m = load_model("torchvision:resnet18:num_classes=5")
    assert m.fc.out_features == 5
    m = load_model("torchvision:mobilenet_v2:num_classes=4,dropout=0.5,width_mult=0.5")
    assert m.classifier[1].out_features == 4 and m.classifier[0].p == 0.5
    assert [parse_value(v) for v in ("3", "0.5", "true", "None", "'x'", "abc")] == [3, 0.5, True, None, "x", "abc"]
    with pytest.raises(ViscnnError, match="does not take"):
        load_model("torchvision:resnet18:colour=3")
    with pytest.raises(ViscnnError, match="key=value"):
        load_model("torchvision:resnet18:num_classes=5,=3")


def test_whole_pickled_model_as_weights_is_one_clean_line(tmp_path, capsys):
    f = tmp_path / "whole.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), f)
    assert main(["graph", "--model", "torchvision:alexnet", "--weights", str(f)]) == 2
    err = capsys.readouterr().err
    assert "is a pickled whole model, not a state_dict" in err and "model.state_dict()" in err
    assert err.count("\n") == 1 and "\x1b" not in err


def test_incomplete_models_are_not_listed_and_are_refused(tmp_path, capsys):
    cfg = make_project(tmp_path)
    save_weights(tmp_path)
    assert main(["prep", str(cfg), "--stages", "graph"]) == 0
    from viscnn.prepped import PreppedModel, list_models

    models = tmp_path / "models"
    assert list_models(models) == [] and list_models(models, include_incomplete=True) == ["mynet"]
    with pytest.raises(ViscnnError, match="incomplete .*scores"):
        PreppedModel.open("mynet", models)
    assert main(["serve", "mynet", "--models-dir", str(models)]) == 2
    assert "incomplete (stages not done: scores)" in capsys.readouterr().err


def test_config_gives_a_file_spec_its_preprocessing(tmp_path, capsys):
    cfg = make_project(tmp_path)
    save_weights(tmp_path)
    assert main(["graph", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 32, 32]
    assert main(["graph", "--model", "torchvision:alexnet", "--channels", "3", "--mean", "0.5", "--std", "0.2",
                 "--input-size", "64", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 64, 64]
    from viscnn.cli import apply_model_args, build_parser
    from viscnn.model_spec import clear_preprocess, prepped_manifest

    assert prepped_manifest("torchvision:alexnet") is None  # main() forgets it after the command
    args = build_parser().parse_args(["circuit", "--config", str(cfg), "--target", "loss", "--images", "x", "--keep", "5"])
    apply_model_args(args)
    try:
        assert args.model == f"{tmp_path / 'mynet.py'}:mynet" and args.weights == str(tmp_path / "mynet.pt")
        meta = prepped_manifest(args.model)
        assert meta["input_shape"] == [3, 32, 32] and meta["normalize"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
        assert meta["classes"] == ["circle", "square", "stripes"]
    finally:
        clear_preprocess()


def test_featurevis_batches_resume_after_an_interrupt(tmp_path):
    from viscnn.featurevis.render import FeatureVisResult
    from viscnn.prep.visuals import _render_resumable

    calls = []

    def fake(chunk, fail_at=None):
        calls.append([str(o) for o in chunk])
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        n = len(chunk)
        return FeatureVisResult([str(o) for o in chunk], np.full((n, 2, 2, 3), len(calls), np.uint8),
                                np.ones(n, np.float32), np.zeros(n, np.float32), settings={"s": 1})

    class Bar:
        def update(self, n):
            pass

    objs = [f"conv:{c}" for c in range(5)]
    with pytest.raises(KeyboardInterrupt):
        _render_resumable(None, lambda ch: fake(ch, fail_at=3), objs, tmp_path / "p", "k", 2, Bar(), 1)
    calls.clear()
    res, cleanup = _render_resumable(None, fake, objs, tmp_path / "p", "k", 2, Bar(), 1)
    assert calls == [["conv:4"]] and res.objectives == objs and len(res.images) == 5
    cleanup()
    assert not (tmp_path / "p").exists()
