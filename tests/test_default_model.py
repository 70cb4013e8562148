"""The committed default model (prepped_models/fmnist) is what its config produces.

A reduced run of prepped_models/fmnist.toml (graph, kernels and `taylor` scores over all 60k
training images, plus layouts and one layer of feature visualizations from the committed scores)
must reproduce the committed arrays within float tolerance.
"""

import json
import shutil

import numpy as np
import pytest

from viscnn.paths import REPO_DIR
from viscnn.prep import load_config, run_prep
from viscnn.prepped import PreppedModel

CFG = REPO_DIR / "prepped_models" / "fmnist.toml"


@pytest.fixture(scope="module")
def committed():
    return PreppedModel.open("fmnist", REPO_DIR / "prepped_models")


def test_committed_is_complete_and_small(committed):
    size = sum(p.stat().st_size for p in committed.root.rglob("*") if p.is_file())
    assert size < 30e6, f"{size / 1e6:.1f} MB"
    m = committed.manifest
    assert set(m["stages"]) == {"graph", "kernels", "scores", "layouts", "featurevis", "exemplars", "images"}
    assert m["image_counts"][-1] == 60000 and committed.classes[9] == "Ankle boot"
    assert not any("_partial" in str(p) for p in committed.root.rglob("*"))


def test_reduced_default_config_matches_committed(committed, tmp_path):
    cfg = load_config(CFG, {"run.stages": ["graph", "kernels", "scores"], "run.metrics": ["taylor"]}, base_dir=CFG.parent)
    out = run_prep(cfg, tmp_path, log=lambda m: None)
    assert json.loads((out / "graph" / "graph.json").read_text()) == json.loads((committed.root / "graph" / "graph.json").read_text())
    for layer in committed.graph.layers[1:]:
        assert np.array_equal(np.load(out / "kernels" / f"{layer.name}.npy"), committed.kernels(layer.name))
    for part in ("nodes", "edges"):
        ours = np.load(out / "scores" / "taylor" / f"{part}.npy")
        theirs = np.asarray(np.load(committed.root / "scores" / "taylor" / f"{part}.npy"))
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=1e-6 * float(np.abs(theirs).max()), err_msg=part)


def test_layouts_and_featurevis_reproduce(committed, tmp_path):
    """Layouts from the committed scores, and conv1's feature visualizations, match the committed ones."""
    dst = tmp_path / "fmnist"
    shutil.copytree(committed.root, dst, ignore=shutil.ignore_patterns("layouts", "featurevis", "exemplars"))
    man = json.loads((dst / "manifest.json").read_text())
    for s in ("layouts", "featurevis"):
        man["stages"].pop(s, None)
    (dst / "manifest.json").write_text(json.dumps(man))
    from viscnn.layout import LAYOUTS, compute_layout

    nodes = np.asarray(committed.node_scores("taylor"))
    edges = np.asarray(committed.edge_scores("taylor"))
    for name in LAYOUTS:
        pos = compute_layout(name, committed.graph, np.abs(nodes[:10]), np.abs(edges[-1]))
        # equal up to one rotation of the whole layout: each layer is turned to shorten its edges to the
        # layers before it, and the first conv layer's only anchor is the single input channel, so its
        # angle is a near-tie that another numpy/BLAS can settle differently (pca came out turned by 18.0
        # degrees, every layer alike, with numpy 2.4.6 / scikit-learn 1.9.1); the positions relative to each
        # other must still be exactly the committed ones, and no layer may be mirrored
        ref = np.asarray(committed.layout(name), np.float64)
        u, _, vt = np.linalg.svd(np.asarray(pos, np.float64).T @ ref)
        rot = u @ vt
        assert np.linalg.det(rot) > 0, name  # a rotation, not a reflection
        np.testing.assert_allclose(np.asarray(pos) @ rot, ref, atol=1e-3, err_msg=name)
    from viscnn.featurevis.render import render_layer

    c = committed.manifest["settings"]
    res = render_layer(committed.load_model(), "conv1", size=tuple(c["preprocess"]["size"]), steps=c["featurevis"]["steps"],
                       seed=c["run"]["seed"], normalize=(c["preprocess"]["mean"], c["preprocess"]["std"]), batch_size=64)
    ours = res.images.astype(np.int16)
    theirs = np.asarray(committed.featurevis("conv1")).astype(np.int16)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).mean() < 2.0  # uint8 levels; identical up to float rounding
    meta = committed.featurevis_meta("conv1")
    np.testing.assert_allclose(res.objective, meta["objective"], rtol=1e-2, atol=1e-3)
