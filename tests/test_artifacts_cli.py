"""Artifact baselines, scores, side-by-side comparison and the ``viscnn artifacts`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from viscnn.artifacts.baselines import baseline_batches, make_baseline, stimulus
from viscnn.artifacts.compare import diff_map, pair_layers
from viscnn.artifacts.scores import border_contrast, deviation_from_constant, rank_maps
from viscnn.cli import main
from viscnn.errors import ViscnnError

NORM = {"mean": [0.5, 0.25, 0.75], "std": [0.5, 0.25, 0.25]}


# -- baselines -----------------------------------------------------------------------------------------
def test_constant_baselines_respect_normalisation():
    shape = (3, 6, 5)
    mean = torch.tensor(NORM["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(NORM["std"]).view(1, 3, 1, 1)
    assert torch.equal(make_baseline("zero", shape, NORM), torch.zeros(1, *shape))
    torch.testing.assert_close(make_baseline("black", shape, NORM), ((0 - mean) / std).expand(1, *shape))
    torch.testing.assert_close(make_baseline("white", shape, NORM), ((1 - mean) / std).expand(1, *shape))
    assert torch.equal(make_baseline("white", shape), torch.ones(1, *shape))


def test_random_baseline_uniform_seeded_and_batch_independent():
    x = make_baseline("random:5:3", (3, 8, 8), NORM)
    pix = x * torch.tensor(NORM["std"]).view(1, 3, 1, 1) + torch.tensor(NORM["mean"]).view(1, 3, 1, 1)
    assert x.shape == (5, 3, 8, 8) and pix.min() >= 0 and pix.max() <= 1 + 1e-6
    again = torch.cat(list(baseline_batches("random:5:3", (3, 8, 8), NORM, batch_size=2)))
    assert torch.equal(x, again)
    assert not torch.equal(x, make_baseline("random:5:4", (3, 8, 8), NORM))


def test_stimuli():
    sq = stimulus("square:size=4,y=5,x=6,bg=0.2,contrast=0.7", (16, 16))[0, 0]
    ys, xs = torch.nonzero(sq > 0.5, as_tuple=True)
    assert sq.max() == pytest.approx(0.9) and sq.min() == pytest.approx(0.2)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (4, 7, 5, 8) and len(ys) == 16
    h = stimulus("bar:size=2,orient=h", (10, 12))[0, 0]
    assert ((h > 0.5).sum(1) > 0).sum() == 2 and (h > 0.5).sum() == 24
    v = stimulus("vbar:size=1,length=4,contrast=-0.5", (10, 10))[0, 0]
    assert (v < 0.5).sum() == 4 and v.min() == 0
    dot = stimulus("dot:size=5", (21, 21))[0, 0]
    assert dot[10, 10] == 1.0 and dot[0, 0] == 0.5 and (dot > 0.5).sum() == 21
    ch = stimulus("checker:size=2", (8, 8))[0, 0]
    assert (ch > 0.5).sum() == 32 and ch[0, 0] != ch[0, 2] and ch[0, 0] == ch[0, 1]
    img = make_baseline("stimulus:square:size=2", (3, 8, 8), NORM)
    assert img.shape == (1, 3, 8, 8)


@pytest.mark.parametrize("spec,msg", [
    ("pink", "unknown baseline"), ("random:x", "random:K"), ("random:0", "at least 1"), ("zero:3", "no arguments"),
    ("stimulus:star", "unknown stimulus shape"), ("stimulus:square:size=8,y=1", "outside"),
    ("stimulus:dot:colour=3", "bad stimulus option"), ("stimulus:dot:size=__import__", "not a number"),
    ("stimulus:dot:bg=0.8,contrast=0.5", "pixel range"), ("images:", "image-set spec")])
def test_baseline_errors_are_one_line(spec, msg):
    with pytest.raises(ViscnnError, match=msg) as ei:
        make_baseline(spec, (3, 16, 16))
    assert "\n" not in str(ei.value)


# -- scores and comparison --------------------------------------------------------------------------------
def test_scores():
    flat = np.full((6, 6), 2.0)
    frame = flat.copy()
    frame[0] = frame[-1] = frame[:, 0] = frame[:, -1] = 5.0
    assert border_contrast(flat) == 0 and deviation_from_constant(flat) == 0
    assert border_contrast(frame) > 1.5 and border_contrast(frame * 7) == pytest.approx(border_contrast(frame))
    assert deviation_from_constant(np.zeros((4, 4))) == 0 and deviation_from_constant(frame) > 0
    assert border_contrast(np.ones((2, 2))) == 0
    assert rank_maps(np.stack([flat, frame, flat]), constant_input=True) == [1, 0, 2]


def test_diff_map_resizes_b_to_a():
    a, b = np.arange(12.0).reshape(3, 4), np.ones((5, 5))
    r = diff_map(a, b)
    assert r["resized"] and r["diff"].shape == (3, 4)
    np.testing.assert_allclose(r["diff"], a - 1)
    assert r["limit"] == pytest.approx(11.0)
    same = diff_map(a, a)
    assert not same["resized"] and same["max_abs_diff"] == 0
    assert pair_layers(["x", "y"], ["y", "z"]) == [("y", "y")] and pair_layers(["x"], ["q"]) == [("x", "q")]


# -- the command ------------------------------------------------------------------------------------------------
def test_cli_padding_json(capsys):
    assert main(["artifacts", "--model", "torchvision:resnet18", "--input-size", "64", "64", "--padding", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) >= {"padding", "suggested_sizes"}
    e = d["padding"][0]
    assert e["layer"] == "conv1" and e["kind"] == "conv" and e["stride"] == [2, 2]
    assert set(e["pad"]) == set(e["unused_pad"]) == {"top", "bottom", "left", "right"} and set(e["unread"]) == {"bottom", "right"}
    assert [65, 65] in d["suggested_sizes"]
    assert {x["kind"] for x in d["padding"]} == {"conv", "pool"}


@pytest.mark.parametrize("argv,msg", [
    (["--model", "fmnist", "--input-size", "3", "3", "--padding"], "too small"),
    (["--model", "fmnist", "--input-size", "3", "3", "--out", "OUT"], "too small"),
    (["--model", "fmnist", "--baseline", "plaid", "--out", "OUT"], "unknown baseline"),
    (["--model", "fmnist", "--baseline", "stimulus:square:size=9,x=1", "--out", "OUT"], "outside"),
    (["--model", "fmnist", "--layer", "nope.conv", "--out", "OUT"], "no conv layer 'nope.conv'"),
    (["--model", "fmnist"], "--out DIR is required")])
def test_cli_errors_exit_2_with_one_line(argv, msg, capsys, tmp_path):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(["artifacts"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and "\n" not in err
    assert not (tmp_path / "o" / "artifacts.json").exists()


def test_cli_full_run_with_compare_size(tmp_path, capsys):
    out = tmp_path / "art"
    argv = ["artifacts", "--model", "fmnist", "--input-size", "28", "28", "--baseline", "zero", "--patch-images", "24",
            "--images", "random:24", "--compare-size", "29", "29", "--stage", "act", "--per-map-scale", "--out", str(out)]
    assert main(argv) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["artifacts.json", "drilldown.npy", "mean_maps.png", "drilldown.png", "patches.png", "padding.png",
                            "compare.png", "patches_b.png", "padding_b.png"])
    d = json.loads((out / "artifacts.json").read_text())
    assert d["format"] == "viscnn.artifacts" and d["baseline"] == "zero" and d["score"] == "deviation_from_constant"
    assert d["input_shape"] == [1, 28, 28] and d["normalize"] is not None
    mm = d["mean_maps"]
    assert mm and all(m["stage"] == "act" and len(m["map"]) == m["size"][0] for m in mm)
    maps = np.load(out / "drilldown.npy")
    assert list(maps.shape) == d["drilldown"]["shape"] and sorted(d["drilldown"]["order"]) == list(range(maps.shape[0]))
    assert d["patches"]["images"] == 24 and all("patch_asymmetry" in p for p in d["patches"]["layers"])
    c = d["compare"]
    assert c["input_shape"] == [1, 29, 29] and len(c["mean_maps"]) == len(mm)
    assert all(np.asarray(r["diff"]).shape == np.asarray(r["a"]).shape for r in c["mean_maps"])
    assert "wrote" in capsys.readouterr().out
