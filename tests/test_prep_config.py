"""Bad prep configs fail before any work starts, naming the bad key or value."""

import pytest

from viscnn.cli import main
from viscnn.errors import ViscnnError
from viscnn.prep import load_config

GOOD = """
name = "tiny"
model = "torchvision:alexnet"
[data]
kind = "fashion-mnist"
images_per_class = 3
[preprocess]
size = [32, 32]
channels = 1
mean = [0.5]
std = [0.5]
"""


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_good_config_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), {"run.batch_size": 7})
    assert cfg.name == "tiny" and cfg["run"]["batch_size"] == 7 and cfg["data"]["images_per_class"] == 3
    assert cfg.hash("data") == load_config(write(tmp_path, GOOD)).hash("data")


@pytest.mark.parametrize("patch, message", [
    ('name = "tiny"', "name"),  # replaced by an invalid name below
    ("[data]", "unknown config key 'data.colour'"),
    ('kind = "fashion-mnist"', "data.kind"),
    ("size = [32, 32]", "preprocess.size"),
    ("channels = 1", "preprocess.channels"),
    ("std = [0.5]", "preprocess.std"),
    ("images_per_class = 3", "data.images_per_class"),
])
def test_bad_values_name_the_key(tmp_path, patch, message):
    bad = {
        'name = "tiny"': 'name = "../evil"',
        "[data]": "[data]\ncolour = 3",
        'kind = "fashion-mnist"': 'kind = "imagenet"',
        "size = [32, 32]": "size = [32]",
        "channels = 1": "channels = 2",
        "std = [0.5]": "std = [0.0]",
        "images_per_class = 3": "images_per_class = -1",
    }[patch]
    with pytest.raises(ViscnnError, match=message.replace(".", r"\.").replace("'", "'?")):
        load_config(write(tmp_path, GOOD.replace(patch, bad)))


def test_unknown_top_level_key_and_bad_toml(tmp_path):
    with pytest.raises(ViscnnError, match="unknown config key 'modle'"):
        load_config(write(tmp_path, 'modle = "x"\n' + GOOD))
    with pytest.raises(ViscnnError, match="not valid TOML"):
        load_config(write(tmp_path, "name = = 3"))
    with pytest.raises(ViscnnError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_bad_stage_and_metric(tmp_path):
    with pytest.raises(ViscnnError, match="run.stages"):
        load_config(write(tmp_path, GOOD), {"run.stages": ["graph", "bake"]})
    with pytest.raises(ViscnnError, match="run.metrics"):
        load_config(write(tmp_path, GOOD), {"run.metrics": ["taylr"]})


def test_cli_fails_before_work(tmp_path, capsys):
    """A missing weights file or an unknown model stops the CLI before anything is written."""
    out = tmp_path / "models"
    rc = main(["prep", str(write(tmp_path, GOOD)), "--weights", str(tmp_path / "nope.pt"), "--out", str(out)])
    assert rc == 2 and "weights" in capsys.readouterr().err
    rc = main(["prep", str(write(tmp_path, GOOD)), "--model", "torchvision:nonet", "--out", str(out)])
    assert rc == 2 and "unknown torchvision model" in capsys.readouterr().err
    assert not out.exists()
