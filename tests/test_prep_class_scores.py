"""Prep's own-class scores (class:K over the images of K, from the loss pass's data pass) equal a
separate run per class, and the app answers that query from them without running the model."""

import json
import shutil

import numpy as np
import pytest
import torch

from viscnn.app import queries
from viscnn.app.queries import Query
from viscnn.prepped import PreppedModel

CONFIG = """
name = "tiny"
model = "viscnn.zoo.fmnist:fmnist_cnn"
weights = "w.pt"
[data]
kind = "fashion-mnist"
images_per_class = 4
[preprocess]
size = [28, 28]
channels = 1
mean = [0.286]
std = [0.353]
[run]
batch_size = 7
stages = ["graph", "kernels", "scores", "images"]
metrics = ["taylor", "taylor_signed", "gradient", "weight"]
[app]
images_per_class = 1
"""
METRICS = ["taylor", "taylor_signed", "gradient", "weight"]


def _prep(cfg_path, out, logs=None):
    from viscnn.prep import load_config, run_prep

    cfg = load_config(cfg_path, {}, base_dir=cfg_path.parent)
    return cfg, run_prep(cfg, out, log=(logs.append if logs is not None else (lambda *a: None)))


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    from viscnn.zoo.fmnist import fmnist_cnn

    d = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    torch.save(fmnist_cnn().state_dict(), d / "w.pt")
    (d / "c.toml").write_text(CONFIG)
    cfg, root = _prep(d / "c.toml", d / "models")
    return d, cfg, root


def test_own_class_scores_equal_a_separate_run_per_class(prepped):
    from viscnn.importance.accumulate import compute_scores
    from viscnn.prep.dataset import PrepDataset

    _, cfg, root = prepped
    pm = PreppedModel(root)
    assert pm.manifest["class_scores"] == {"metrics": ["taylor", "taylor_signed", "gradient"], "images": [4] * 10}
    assert pm.class_score_metrics == METRICS
    assert np.load(root / "scores" / "taylor" / "class_nodes.npy").shape == (10, pm.graph.num_nodes)
    assert np.load(root / "scores" / "taylor" / "class_edges.npy").shape == (10, pm.graph.num_edges)
    assert not (root / "scores" / "weight" / "class_nodes.npy").exists()  # target-free: the loss rows serve
    data = PrepDataset(cfg)
    model = pm.load_model()
    for k, name in enumerate(pm.classes):
        x, y = data.batch(np.flatnonzero(data.labels == k))
        ref = compute_scores(model, pm.graph, f"class:{k}", [(x, y)], METRICS)
        for m in METRICS:
            nodes, edges = pm.class_scores(m, name)
            np.testing.assert_allclose(nodes, ref[m][0], rtol=1e-5, atol=1e-7, err_msg=f"{name} {m} nodes")
            np.testing.assert_allclose(edges, ref[m][1], rtol=1e-5, atol=1e-7, err_msg=f"{name} {m} edges")
    # they are not the loss scores
    assert not np.allclose(pm.class_scores("taylor", 7)[1], pm.edge_scores("taylor", "Sneaker"))


def test_the_app_answers_class_over_its_own_set_without_a_run(prepped, tmp_path):
    from viscnn.app import state as st
    from viscnn.app.context import AppContext

    _, _, root = prepped
    pm = PreppedModel(root)
    for target in ("class:Sneaker", "class:7", " 1*class:7 "):
        assert not queries.needs_run(pm, Query(target, "Sneaker", "taylor")), target
    for target, iset in (("class:7", "Bag"), ("class:7", "all"), ("class:7", "Sneaker - all"),
                         ("2*class:7", "Sneaker"), ("class:7 - class:8", "Sneaker"), ("class:7", "image")):
        assert queries.needs_run(pm, Query(target, iset, "taylor")), (target, iset)
    ctx = AppContext(models_dir=root.parent, default_model="tiny", cache_dir=tmp_path / "cache")
    s = dict(st.default_state("tiny", pm.metrics, ["grid"]), target="class:Sneaker", set="Sneaker", metric="taylor")
    _, q, ns, es, signs, pending, _, _ = ctx.scores(s)
    assert not pending
    np.testing.assert_array_equal(ns, pm.class_scores("taylor", "Sneaker")[0])
    np.testing.assert_array_equal(es, pm.class_scores("taylor", 7)[1])
    np.testing.assert_array_equal(signs[1], pm.class_scores("taylor_signed", 7)[1])  # colours from the signed metric
    assert "mean over 4 train images of 'Sneaker' (precomputed)" in queries.basis(pm, q, False)
    assert ctx.resolve(s).circuit is not None


def test_a_manifest_without_class_scores_still_needs_a_run(prepped, tmp_path):
    from viscnn.app import state as st
    from viscnn.app.context import AppContext

    _, _, root = prepped
    old = tmp_path / "models" / "tiny"
    shutil.copytree(root, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["class_scores"]
    (old / "manifest.json").write_text(json.dumps(man))
    for f in old.glob("scores/*/class_*.npy"):
        f.unlink()
    pm = PreppedModel(old)
    assert pm.class_score_metrics == [] and pm.class_scores("taylor", 7) is None
    assert queries.needs_run(pm, Query("class:Sneaker", "Sneaker", "taylor"))
    assert not queries.needs_run(pm, Query("loss", "Sneaker", "taylor"))
    ctx = AppContext(models_dir=old.parent, default_model="tiny", cache_dir=tmp_path / "cache")
    s = dict(st.default_state("tiny", pm.metrics, ["grid"]), target="class:Sneaker", set="Sneaker")
    assert ctx.scores(s)[5]  # pending: a model run


def test_rerun_on_an_older_prep_redoes_only_the_scores(prepped, tmp_path):
    """A prep from before the own-class scores (same stage hashes, no class files) gets them by
    rerunning only the scores stage; the loss scores come out the same."""
    d, _, root = prepped
    old = tmp_path / "models" / "tiny"
    shutil.copytree(root, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["class_scores"]
    (old / "manifest.json").write_text(json.dumps(man))
    for f in old.glob("scores/*/class_*.npy"):
        f.unlink()
    logs = []
    _prep(d / "c.toml", old.parent, logs)
    redone = [l for l in logs if "] done in" in l]
    assert len(redone) == 1 and redone[0].startswith("[scores]"), logs
    pm, ref = PreppedModel(old), PreppedModel(root)
    assert pm.manifest["class_scores"] == ref.manifest["class_scores"]
    for m in METRICS:
        np.testing.assert_array_equal(pm.edge_scores(m), ref.edge_scores(m))
        np.testing.assert_array_equal(pm.class_scores(m, 3)[1], ref.class_scores(m, 3)[1])


def test_class_scores_off(prepped, tmp_path):
    from viscnn.prep import load_config, run_prep

    d, _, _ = prepped
    cfg = load_config(d / "c.toml", {"run.class_scores": False, "run.stages": ["graph", "scores"]}, base_dir=d)
    pm = PreppedModel(run_prep(cfg, tmp_path / "m", log=lambda *a: None))
    assert pm.manifest.get("class_scores") is None and pm.class_score_metrics == []
    assert not list((tmp_path / "m").glob("tiny/scores/*/class_*.npy"))
