"""The prep pipeline: output format, kill -9 and resume, 2-process torchrun equals one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from viscnn.prepped import PreppedModel

CONFIG = """
name = "tiny"
model = "viscnn.zoo.fmnist:fmnist_cnn"
weights = "w.pt"
[data]
kind = "fashion-mnist"
images_per_class = {per_class}
[preprocess]
size = [28, 28]
channels = 1
mean = [0.286]
std = [0.353]
[run]
batch_size = {batch}
stages = {stages}
metrics = ["taylor", "taylor_signed"]
[app]
images_per_class = 1
"""


def make_config(tmp_path: Path, per_class=6, batch=8, stages=("graph", "kernels", "scores", "layouts", "images")) -> Path:
    from viscnn.zoo.fmnist import fmnist_cnn

    torch.manual_seed(0)
    torch.save(fmnist_cnn().state_dict(), tmp_path / "w.pt")
    p = tmp_path / "c.toml"
    p.write_text(CONFIG.format(per_class=per_class, batch=batch, stages=json.dumps(list(stages))))
    return p


def prep_cmd(cfg: Path, out: Path):
    return [sys.executable, "-m", "viscnn", "prep", str(cfg), "--out", str(out)]


def env(**extra):
    e = dict(os.environ, OMP_NUM_THREADS="1", **{k: str(v) for k, v in extra.items()})
    return e


def arrays(root: Path):
    return {str(p.relative_to(root)): np.load(p) for p in sorted(root.rglob("*.npy")) if "_partial" not in str(p)}


def test_prep_writes_the_format(tmp_path):
    cfg = make_config(tmp_path)
    out = tmp_path / "models"
    r = subprocess.run(prep_cmd(cfg, out), capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr
    pm = PreppedModel.open("tiny", out)
    g = pm.graph
    assert pm.classes[7] == "Sneaker" and pm.image_sets[-1] == "all"
    assert pm.manifest["image_counts"] == [6] * 10 + [60]
    assert pm.manifest["weights_sha256"] and pm.input_shape == (1, 28, 28)
    for metric in ("taylor", "taylor_signed"):
        assert pm.node_scores(metric).shape == (11, g.num_nodes)
        assert pm.edge_scores(metric).shape == (11, g.num_edges)
    # the "all" row is the image-weighted mean of the class rows
    t = pm.edge_scores("taylor")
    np.testing.assert_allclose(t[-1], t[:10].mean(0), rtol=1e-5, atol=1e-7)
    assert (pm.node_scores("taylor") >= 0).all() and (pm.node_scores("taylor_signed") < 0).any()
    assert pm.kernels("conv2").shape == (32, 32, 3, 3)
    assert set(pm.layouts) >= {"mds", "pca", "grid"} and pm.layout("mds").shape == (g.num_nodes, 2)
    assert len(pm.images()) == 10 and pm.image_path(pm.images()[0]["file"]).is_file()
    # a rerun with the same config does nothing
    r = subprocess.run(prep_cmd(cfg, out), capture_output=True, text=True, env=env())
    assert r.returncode == 0 and r.stdout.count("already done") == 5, r.stdout


def test_kill_and_resume_is_identical(tmp_path):
    cfg = make_config(tmp_path, per_class=8, batch=4, stages=("graph", "kernels", "scores", "exemplars"))
    ref = tmp_path / "ref"
    assert subprocess.run(prep_cmd(cfg, ref), capture_output=True, env=env()).returncode == 0
    out = tmp_path / "killed"
    p = subprocess.Popen(prep_cmd(cfg, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=env(VISCNN_CHECKPOINT_SECONDS=0, VISCNN_TEST_BATCH_DELAY=0.3))
    cursor = out / "tiny" / "scores" / "_partial" / "rank0of1" / "cursor.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (cursor.is_file() and json.loads(cursor.read_text())["cursor"] >= 3):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    man = json.loads((out / "tiny" / "manifest.json").read_text())
    assert "scores" not in man["stages"], "the kill landed after scoring finished; the test proves nothing"
    if not cursor.is_file():  # killed between the two renames of a checkpoint switch
        cursor = cursor.parent.parent / "rank0of1.old" / "cursor.json"
    done_before = json.loads(cursor.read_text())["cursor"]
    assert done_before < 19  # 80 images in batches of 4: the kill left batches to do
    r = subprocess.run(prep_cmd(cfg, out), capture_output=True, text=True, env=env(VISCNN_CHECKPOINT_SECONDS=0))
    assert r.returncode == 0, r.stderr
    assert done_before >= 3
    a, b = arrays(ref / "tiny"), arrays(out / "tiny")
    assert a.keys() == b.keys() and any(k.startswith("exemplars") for k in a)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    for f in sorted((ref / "tiny" / "exemplars").glob("*.json")):  # top-k tables resumed from the checkpoint
        assert f.read_text() == (out / "tiny" / "exemplars" / f.name).read_text(), f.name


def test_exemplars_from_the_scoring_pass_equal_a_separate_pass(tmp_path):
    """The scoring pass keeps the exemplar tables; they must equal top_exemplars' own forward pass."""
    from viscnn.featurevis.data import array_batches
    from viscnn.featurevis.exemplars import top_exemplars
    from viscnn.prep import load_config
    from viscnn.prep.dataset import PrepDataset
    from viscnn.zoo.fmnist import fmnist_cnn

    cfg = make_config(tmp_path, per_class=5, batch=7, stages=("graph", "kernels", "scores", "exemplars"))
    out = tmp_path / "models"
    r = subprocess.run(prep_cmd(cfg, out), capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr
    assert "tables from the scoring pass" in r.stdout
    assert not (out / "tiny" / "scores" / "_exemplars").exists()  # consumed and removed
    data = PrepDataset(load_config(cfg, {}, base_dir=tmp_path))
    m = fmnist_cnn()
    m.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x = data.unit_batch(np.arange(len(data))).numpy()
    ref = top_exemplars(m.eval(), ["conv1", "conv2", "conv3", "conv4"], array_batches(x, 13), k=6, normalize=([0.286], [0.353]))
    for layer, ex in ref.items():
        got = json.loads((out / "tiny" / "exemplars" / f"{layer}.json").read_text())
        assert got["image_index"] == ex.index.tolist(), layer
        assert got["pos"] == ex.pos.tolist(), layer
        np.testing.assert_allclose(got["value"], ex.value, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_equals_one(tmp_path):
    cfg = make_config(tmp_path, per_class=6, batch=8, stages=("graph", "kernels", "scores", "exemplars"))
    one = tmp_path / "one"
    assert subprocess.run(prep_cmd(cfg, one), capture_output=True, env=env()).returncode == 0
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "viscnn", "prep", str(cfg), "--out", str(two)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((two / "tiny" / "manifest.json").read_text())["score_ranks"] == 2  # really ran on two ranks
    a, b = arrays(one / "tiny"), arrays(two / "tiny")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9, err_msg=k)
    for f in sorted((one / "tiny" / "exemplars").glob("*.json")):  # top-k tables merged across the ranks
        e1, e2 = json.loads(f.read_text()), json.loads((two / "tiny" / "exemplars" / f.name).read_text())
        assert e1["image_index"] == e2["image_index"] and e1["pos"] == e2["pos"], f.name
    m1 = json.loads((one / "tiny" / "manifest.json").read_text())
    m2 = json.loads((two / "tiny" / "manifest.json").read_text())
    assert m1["image_counts"] == m2["image_counts"]


def test_batched_image_loading_equals_one_image_at_a_time(tmp_path):
    from viscnn.prep import load_config
    from viscnn.prep.dataset import PrepDataset

    data = PrepDataset(load_config(make_config(tmp_path, per_class=3), {}, base_dir=tmp_path))
    pos = [0, 5, 29, 11]
    one = torch.stack([data.to_unit(data.raw(p)) for p in pos])
    assert torch.equal(data.unit_batch(pos), one)
    x, y = data.batch(pos)
    assert torch.equal(x, torch.stack([(data.to_unit(data.raw(p)) - data.mean) / data.std for p in pos]))
    assert y.tolist() == data.labels[pos].tolist()
