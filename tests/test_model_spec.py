"""Model specs, weight files and the CLI's error messages."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from viscnn.cli import main
from viscnn.errors import ViscnnError
from viscnn.model_spec import load_model

MODEL_PY = """
import torch.nn as nn
def tiny():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
def not_a_model():
    return 3
"""


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "mymodel.py"
    p.write_text(MODEL_PY)
    return p


def test_torchvision_random(tmp_path):
    m = load_model("torchvision:resnet18")
    assert isinstance(m, nn.Module)
    with pytest.raises(ViscnnError, match="unknown torchvision model 'resnet1234'"):
        load_model("torchvision:resnet1234")
    with pytest.raises(ViscnnError, match="no weights named"):
        load_model("torchvision:resnet18:NOPE")


def test_pretrained_not_cached_says_how(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ViscnnError, match="--weights"):
        load_model("torchvision:resnet18:DEFAULT")


def test_file_factory_and_weights(model_file, tmp_path):
    m = load_model(f"{model_file}:tiny")
    sd = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    w = tmp_path / "w.pt"
    torch.save(sd, w)
    m2 = load_model(f"{model_file}:tiny", w)
    assert torch.equal(m2.state_dict()["2.weight"], sd["2.weight"])
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, w)
    assert torch.equal(load_model(f"{model_file}:tiny", w).state_dict()["0.bias"], sd["0.bias"])


def test_bad_specs(model_file, tmp_path):
    with pytest.raises(ViscnnError, match="model file not found"):
        load_model("nope/missing.py:f")
    with pytest.raises(ViscnnError, match="no callable 'nothing'.*tiny"):
        load_model(f"{model_file}:nothing")
    with pytest.raises(ViscnnError, match="not a torch.nn.Module"):
        load_model(f"{model_file}:not_a_model")
    with pytest.raises(ViscnnError, match="names a file but no factory"):
        load_model(str(model_file))
    with pytest.raises(ViscnnError, match="unknown model spec 'whatever'"):
        load_model("whatever", models_dir=tmp_path)


def test_bad_weights(model_file, tmp_path):
    spec = f"{model_file}:tiny"
    with pytest.raises(ViscnnError, match="weights file not found"):
        load_model(spec, tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ViscnnError, match="could not read weights"):
        load_model(spec, junk)
    wrong = tmp_path / "wrong.pt"
    sd = load_model(spec).state_dict()
    sd["2.weight"] = torch.zeros(8, 5, 3, 3)
    torch.save(sd, wrong)
    with pytest.raises(ViscnnError, match=r"shape mismatch 2.weight: file \(8, 5, 3, 3\) vs model \(8, 4, 3, 3\)"):
        load_model(spec, wrong)
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ViscnnError, match="missing keys.*unexpected keys"):
        load_model(spec, other)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(ViscnnError, match="weights_only=True"):
        load_model(spec, evil)


def test_graph_cli_json(model_file, capsys):
    assert main(["graph", "--model", f"{model_file}:tiny", "--input-size", "12", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nodes"] == 12 and out["edges"] == 4 * 1 + 8 * 4
    assert [(l["name"], l["nodes"], l["edges"]) for l in out["layers"]] == [("0", 4, 4), ("2", 8, 32)]
    assert out["input_nodes"] == 1


def test_cli_error_is_one_line_no_traceback():
    r = subprocess.run([sys.executable, "-m", "viscnn", "graph", "--model", "torchvision:nonet"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: unknown torchvision model 'nonet'")
    assert "Traceback" not in r.stderr
