"""Model runs in the app score targets over N images of the prepped dataset (issue 12, item 1): the
app's class target over N images equals compute_scores over the same N images; the images are evenly
spaced through the set; progress counts images; the page says how many images of which set."""

import numpy as np
import pytest

from app_fixture import default_model, make_prepped
from viscnn.app import dataset_sets as D
from viscnn.app import queries
from viscnn.app.context import AppContext
from viscnn.errors import ViscnnError
from viscnn.importance.faithfulness_curve import FRACTIONS


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    mdir, name = default_model()
    return AppContext(mdir, name, tmp_path_factory.mktemp("cache")), name


def test_class_target_equals_compute_scores(fmnist):
    """The reference: the same 64 Sneakers picked by hand from the raw Fashion-MNIST labels, scored by
    the importance engine's compute_scores."""
    import torch

    from viscnn.app.activations import get_model
    from viscnn.data.fashion_mnist import load_fashion_mnist
    from viscnn.importance.accumulate import compute_scores

    actx, name = fmnist
    s = actx.defaults(name)
    # over Sandal images: class:Sneaker over Sneaker images is precomputed by prep (no run)
    s.update(target="class:Sneaker", set="Sandal", n="64", metric="taylor")
    seen = []
    actx.compute_run(s, lambda d, t: seen.append((d, t)))
    r = actx.resolve(s)
    assert r.run_info["sets"]["Sandal"] == {"images": 64, "source": "dataset"}
    assert seen[0] == (0, 64) and seen[-1] == (64, 64)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))

    pm = actx.prepped(name)
    imgs, labels = load_fashion_mnist("train")
    idx = np.flatnonzero(labels == pm.classes.index("Sandal"))
    pick = idx[np.round(np.linspace(0, len(idx) - 1, 64)).astype(int)]
    norm = pm.manifest["normalize"]
    x = (torch.from_numpy(imgs[pick]).float().div(255).unsqueeze(1) - norm["mean"][0]) / norm["std"][0]
    ref = compute_scores(get_model(pm), pm.graph, "class:Sneaker", [(x, torch.from_numpy(labels[pick]))],
                         ["taylor"], classes=pm.classes)["taylor"]
    np.testing.assert_allclose(r.node_scores, ref[0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(r.edge_scores, ref[1], rtol=1e-4, atol=1e-7)
    line = queries.basis(pm, r.query, True, r.run_info)
    assert "mean over 64 train images of 'Sandal'" in line


def test_own_class_target_is_precomputed_whatever_the_count(fmnist):
    actx, name = fmnist
    s = dict(actx.defaults(name), target="class:Sneaker", set="Sneaker", n="64", metric="taylor")
    pm = actx.prepped(name)
    assert not queries.needs_run(pm, queries.Query(s["target"], s["set"], s["metric"]))
    r = actx.resolve(s)
    assert not r.pending and r.run_info is None
    k = pm.classes.index("Sneaker")
    np.testing.assert_array_equal(r.edge_scores, np.asarray(pm.class_scores("taylor", k)[1]))
    assert "precomputed" in queries.basis(pm, r.query, False, None)


def test_count_is_part_of_the_cache_key(fmnist):
    actx, name = fmnist
    s = actx.defaults(name)
    s.update(target="class:Trouser", set="Trouser")
    keys = {actx.run_key(dict(s, n=n)) for n in ("64", "256", "all")}
    assert len(keys) == 3


def test_positions_are_evenly_spaced_and_cover_the_set():
    class DS:
        labels = np.repeat(np.arange(4), 25)  # sorted by class, like a folder dataset
    classes = ["a", "b", "c", "d"]
    pos = D.set_positions(DS, classes, "all", 8)
    assert len(pos) == 8 and set(DS.labels[pos]) == {0, 1, 2, 3}
    pos = D.set_positions(DS, classes, "c", 5)
    assert list(pos) == [50, 56, 62, 68, 74]
    assert len(D.set_positions(DS, classes, "b", None)) == 25
    assert len(D.set_positions(DS, classes, "b", 1000)) == 25
    with pytest.raises(ViscnnError, match="unknown image set"):
        D.set_positions(DS, classes, "zebra", 4)


@pytest.mark.parametrize("text,want", [("64", 64), ("all", None), (None, 256), (" 1024 ", 1024)])
def test_count_of(text, want):
    assert D.count_of(text) == want


@pytest.mark.parametrize("bad", ["0", "-3", "lots"])
def test_bad_counts(bad):
    with pytest.raises(ViscnnError):
        D.count_of(bad)


def test_without_the_dataset_the_gallery_stands_in_and_says_so(tmp_path):
    """A prepped folder whose manifest names no dataset (or one that is not on this machine): the
    gallery images are scored and the page line says why."""
    make_prepped(tmp_path, "tiny")
    actx = AppContext(tmp_path, "tiny", tmp_path / "cache")
    s = actx.defaults("tiny")
    s.update(target="class:0", set="all")
    actx.compute_run(s)
    r = actx.resolve(s)
    info = r.run_info
    assert info["sets"]["all"]["source"] == "gallery" and info["fallback"]
    line = queries.basis(r.pm, r.query, True, info)
    assert "gallery images of 'all'" in line and "not available here" in line


def test_faithfulness_in_the_app_is_measured_on_held_out_images(fmnist):
    """The Circuit view's faithfulness: on images of the set that did not score the circuit, and the
    same report as viscnn.importance.faithfulness on exactly those images."""
    from viscnn.app.activations import get_model
    from viscnn.app.views.circuit import faithfulness as F
    from viscnn.importance.faithfulness import faithfulness

    actx, name = fmnist
    # class:Dress over Trouser images: not an own-class target, so it runs over the 64 images
    s = dict(actx.defaults(name), target="class:Dress", set="Trouser", n="64", mode="topk", value=200)
    actx.compute_run(s)
    rep = F.measure(actx, s)
    assert rep["where"].startswith("256 held-out train images of 'Trouser' (not the 64")
    pm = actx.prepped(name)
    ds = D.open_dataset(pm)
    pool = D.set_positions(ds, pm.classes, "Trouser", None)
    held = np.setdiff1d(pool, D.set_positions(ds, pm.classes, "Trouser", 64))
    pick = held[np.unique(np.linspace(0, len(held) - 1, 256).round().astype(np.int64))]
    assert not np.isin(pick, D.set_positions(ds, pm.classes, "Trouser", 64)).any()
    ref = faithfulness(get_model(pm), pm.graph, queries.parse_target(pm, "class:Dress"), actx.resolve(s).circuit,
                       D.dataset_batches(ds, pick), n_random=F.RANDOM_CIRCUITS)
    assert rep["circuit"] == ref["circuit"] and rep["images"] == 256
    assert "Pearson" in str(F.faith_children(rep))
    # the faithfulness-vs-size curve: each size's circuit measured like the report does, same images
    cur = rep["curve"]
    assert cur["fractions"] == list(FRACTIONS) and cur["images"] == 256
    assert cur["edges"] == sorted(cur["edges"]) and cur["edges"][-1] > cur["edges"][0]
    r = actx.resolve(s)
    i = cur["fractions"].index(0.05)
    c5 = queries.circuit_of(pm.graph, r.node_scores, r.edge_scores, {"keep": 0.05}, queries.target_nodes(pm, s["target"]))
    ref5 = faithfulness(get_model(pm), pm.graph, queries.parse_target(pm, s["target"]), c5,
                        D.dataset_batches(ds, pick), n_random=0)
    assert cur["edges"][i] == len(c5.edges)
    assert cur["pearson"][i] == pytest.approx(ref5["circuit"]["pearson"], abs=1e-9)
    assert cur["relative_error"][i] == pytest.approx(ref5["circuit"]["relative_error"], abs=1e-9)
    assert cur["random_pearson"][i] is not None  # empty circuits (the smallest sizes) get no random ones
    assert "faith-curve" in str(F.faith_children(rep))
