"""``viscnn attribute``: arrays equal to the Python API, one file per method, PNGs, per-image
targets, tensor images fed unchanged, one-line errors with exit status 2."""

import json
import textwrap

import numpy as np
import pytest
import torch

from viscnn.attribution import GradCAM, GuidedBackprop, Saliency
from viscnn.cli import main
from viscnn.model_spec import load_model

MODEL_PY = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self, act="relu", head="gap"):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
            self.act, self.head = act, head
            self.fc = nn.Linear(8 if head == "gap" else 8 * 10 * 10, 4)

        def forward(self, x):
            x = self.c1(x)
            x = F.relu(x, inplace=True) if self.act == "relu" else F.silu(x)
            x = F.max_pool2d(F.relu(self.c2(x)), 2)
            x = x.mean((2, 3)) if self.head == "gap" else torch.flatten(x, 1)
            return self.fc(x)

    def net():
        torch.manual_seed(0)
        return Net()

    def silu_net():
        torch.manual_seed(0)
        return Net(act="silu")

    def flat_net():
        torch.manual_seed(0)
        return Net(head="flat")
''')


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "tiny.py").write_text(MODEL_PY)
    x = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    torch.save(x, tmp_path / "x.pt")
    return tmp_path, x


def _run(*argv):
    return main([str(a) for a in argv])


def test_single_method_equals_the_api(files):
    d, x = files
    spec = f"{d / 'tiny.py'}:net"
    assert _run("attribute", "--model", spec, "--method", "saliency", "--target", "2", "--images",
                f"tensor:{d / 'x.pt'}", "--out", d / "o") == 0
    arr = np.load(d / "o" / "attributions.npy")
    assert arr.dtype == np.float32 and arr.shape == (3, 3, 20, 20)  # the tensor's own size: fed unchanged
    expect = Saliency(load_model(spec)).attribute(x, 2).numpy()
    assert np.allclose(arr, expect, rtol=1e-6, atol=1e-8)
    assert sorted(p.name for p in (d / "o").glob("*.png")) == [f"saliency_{i:04d}.png" for i in range(3)]


def test_several_methods_per_image_targets(files, capsys):
    d, x = files
    spec = f"{d / 'tiny.py'}:net"
    assert _run("attribute", "--model", spec, "--method", "guided_backprop", "--method", "gradcam", "--method", "cam",
                "--method", "gradcam_crop", "--target", "1,3,0", "--images", f"tensor:{d / 'x.pt'}", "--layer", "c2",
                "--out", d / "o", "--batch-size", "2", "--threshold", "0.6") == 0
    o = d / "o"
    model = load_model(spec)
    gb = np.load(o / "attributions_guided_backprop.npy")
    assert np.allclose(gb, GuidedBackprop(model).attribute(x, [1, 3, 0]).numpy(), rtol=1e-5, atol=1e-7)
    gc = np.load(o / "attributions_gradcam.npy")
    assert gc.shape == (3, 1, 20, 20)
    assert np.allclose(gc, GradCAM(model, "c2").attribute(x, [1, 3, 0]).numpy(), rtol=1e-5, atol=1e-7)
    assert np.load(o / "attributions_cam.npy").shape == (3, 1, 20, 20)
    assert np.load(o / "attributions_gradcam_crop.npy").shape == (3, 3, 20, 20)
    boxes = json.loads((o / "boxes.json").read_text())
    assert boxes["threshold"] == 0.6 and len(boxes["boxes_y0x0y1x1"]) == 3
    meta = json.loads((o / "attributions.json").read_text())
    assert meta["layers"] == {"gradcam": "c2", "cam": "max_pool2d", "gradcam_crop": "c2"}  # CAM: the pooled fx node
    assert len(list(o.glob("*.png"))) == 12


@pytest.mark.parametrize("args, words", [
    (["--method", "lime"], "unknown attribution method 'lime'"),
    (["--method", "cam", "--flat"], "global average pooling"),
    (["--method", "gradcam", "--layer", "fc"], "no spatial map"),
    (["--method", "gradcam", "--layer", "c9"], "unknown layer 'c9'"),
    (["--method", "guided_backprop", "--silu"], "silu"),
    (["--method", "deconvnet", "--target", "1,2"], "2 classes for 3 images"),
    (["--method", "saliency", "--target", "7"], "only 4 outputs"),
])
def test_errors_are_one_line_exit_2(files, capsys, args, words):
    d, _ = files
    factory = "flat_net" if "--flat" in args else "silu_net" if "--silu" in args else "net"
    args = [a for a in args if a not in ("--flat", "--silu")]
    rc = _run("attribute", "--model", f"{d / 'tiny.py'}:{factory}", *args, "--images", f"tensor:{d / 'x.pt'}",
              "--out", d / "o")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and words in err and "\n" not in err, err
