"""Sparse per-class scores (prepped format version 2): the stored rows, prep in both layouts, the
reader, circuits from sparse scores equal to dense ones inside the stored mass, version 1 still read."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.models as tvm

from viscnn.graph import build_graph
from viscnn.importance.circuits import extract_circuit
from viscnn.importance.ranked import extract_circuit_ranked
from viscnn.importance.sparse_scores import ranked_row, sparsify, save_row, write_group
from viscnn.prepped import PreppedModel

from test_prep import env, make_config, prep_cmd


def _same(a, b):
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_allclose(a.edge_scores, b.edge_scores, rtol=1e-6)


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return build_graph(tvm.resnet18(weights=None, num_classes=7), (32, 32), include_classes=True)


def test_sparsify_keeps_each_layers_top_mass(r18):
    rng = np.random.default_rng(0)
    es = (rng.lognormal(0, 2.0, r18.num_edges) * rng.choice([-1, 1], r18.num_edges)).astype(np.float32)
    row = sparsify(r18, es, mass=0.5, min_per_layer=16, max_fraction=0.05)
    a = 0
    for l, n, tot, full in zip(r18.layers, row["counts"], row["totals"], row["complete"]):
        if l.kind == "input":
            assert n == 0
            continue
        seg = np.abs(es[l.edge_offset:l.edge_offset + l.num_edges].astype(np.float64))
        got = row["index"][a:a + n] - l.edge_offset
        ref = np.argsort(-seg, kind="stable")[:n]  # the layer's top n in the dense order
        np.testing.assert_array_equal(got, ref, err_msg=l.name)
        assert tot == pytest.approx(seg.sum())
        assert full == (n == np.count_nonzero(seg))
        assert n >= min(16, l.num_edges) and n <= max(16, np.ceil(0.05 * l.num_edges))
        if not full and n < np.ceil(0.05 * l.num_edges):  # stopped by the mass, not by the cap
            assert seg[ref].sum() >= 0.5 * seg.sum() * (1 - 1e-9) or n == 16
        a += n
    np.testing.assert_array_equal(row["value"], es[row["index"]])


def test_circuits_from_stored_rows_equal_dense_inside_the_stored_mass(r18, tmp_path):
    rng = np.random.default_rng(1)
    rows = [(rng.lognormal(0, 2.0, r18.num_edges) * rng.choice([-1, 1], r18.num_edges)).astype(np.float32) for _ in range(3)]
    for r, es in enumerate(rows):
        save_row(tmp_path / "rows" / f"{r}.npz", sparsify(r18, es, mass=0.6, min_per_layer=64, max_fraction=0.2))
    write_group(tmp_path / "m", "edges", [tmp_path / "rows" / f"{r}.npz" for r in range(3)], r18.num_edges)
    arrays = {k: np.load(tmp_path / "m" / f"edges.sparse.{k}.npy", mmap_mode="r") for k in ("index", "value", "ptr", "totals", "complete")}
    assert arrays["index"].dtype == np.int32
    ns = rng.random(r18.num_nodes)
    for r, es in enumerate(rows):
        ranked = ranked_row(arrays, r, r18.num_edges)
        for rule, v in [("mass", 0.05), ("mass", 0.3), ("mass", 0.6), ("keep", 500), ("min_score", 50.0)]:
            c = extract_circuit_ranked(r18, ranked, ns, **{rule: v})
            assert c.settings["exact"] is True, (rule, v)
            _same(c, extract_circuit(r18, ns, es, **{rule: v}))
        c = extract_circuit_ranked(r18, ranked, ns, mass=0.99)  # past the stored mass: said so
        assert c.settings["exact"] is False


SPARSE_RUN = '\nsparse_scores = "{mode}"\nsparse_min_per_layer = 8\nsparse_max_fraction = 0.1\nsparse_mass = 0.9\n'


def _prep(tmp_path, mode, name, extra_cmd=None, crit="auto"):
    cfg = make_config(tmp_path, per_class=4, batch=6, stages=("graph", "kernels", "scores", "layouts", "exemplars", "images"))  # batches of 6: some classes span two
    text = cfg.read_text().replace('metrics = ["taylor", "taylor_signed"]\n', 'metrics = ["taylor", "taylor_signed"]' + SPARSE_RUN.format(mode=mode)
                                   + f'class_kernel_score = "{crit}"\n')
    p = tmp_path / f"{name}.toml"
    p.write_text(text.replace('name = "tiny"', f'name = "{name}"'))
    out = tmp_path / "models"
    cmd = extra_cmd(p, out) if extra_cmd else prep_cmd(p, out)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return PreppedModel.open(name, out)


@pytest.fixture(scope="module")
def preps(tmp_path_factory):
    t = tmp_path_factory.mktemp("sparse")
    # sparse rows default to the batch criterion ("auto"); the dense reference is made with it too
    return _prep(t, "off", "dense", crit="batch"), _prep(t, "on", "sparse")


def test_sparse_prep_matches_dense(preps):
    dense, sparse = preps
    assert dense.manifest["version"] == 2 and dense.manifest["scores_layout"] == "dense"
    assert sparse.manifest["scores_layout"] == "sparse" and sparse.manifest["sparse"]["mass"] == 0.9
    assert sparse.manifest["class_kernel_score"] == dense.manifest["class_kernel_score"] == "batch"
    assert not (sparse.root / "scores" / "taylor" / "edges.npy").exists()
    assert sparse.manifest["image_counts"] == dense.manifest["image_counts"]
    g = dense.graph
    for m in ("taylor", "taylor_signed"):
        np.testing.assert_allclose(sparse.node_scores(m), dense.node_scores(m), rtol=1e-4, atol=1e-7)
        for s in dense.image_sets:
            d, sp = dense.edge_scores(m, s), sparse.edge_scores(m, s)
            stored = sp != 0
            if s == "all":
                assert stored.sum() == np.count_nonzero(d)  # the all row is dense
            else:
                assert 0 < stored.sum() < 0.5 * g.num_edges  # really sparse
            np.testing.assert_allclose(sp[stored], d[stored], rtol=1e-4, atol=1e-7)
        for k in range(len(dense.classes)):  # own-class rows
            (dn, de), (sn, se) = dense.class_scores(m, k), sparse.class_scores(m, k)
            np.testing.assert_allclose(sn, dn, rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(se[se != 0], de[se != 0], rtol=1e-4, atol=1e-7)
    for layer in ("conv1", "conv4"):  # exemplars from the class-by-class pass equal the dataset-order pass
        a = json.loads((dense.root / "exemplars" / f"{layer}.json").read_text())
        b = json.loads((sparse.root / "exemplars" / f"{layer}.json").read_text())
        assert a["image_index"] == b["image_index"] and a["pos"] == b["pos"]
    # the layouts' inputs agree to float32 rounding: under the batch criterion the class sums come from
    # float32 weight gradients of differently split batches (class-sorted here, dataset order there), and
    # the MDS layout moves visibly under a 1e-7 relative change of its input, so it is compared with the
    # layout recomputed from the sparse prep's own stored scores, not with the dense prep's layout
    from viscnn.layout import compute_layout

    nodes = np.load(sparse.root / "scores" / "taylor" / "nodes.npy")
    all_edges = np.load(sparse.root / "scores" / "taylor" / "edges_all.npy")
    np.testing.assert_allclose(all_edges, dense.edge_scores("taylor", "all"), rtol=1e-5, atol=1e-9)
    want = compute_layout("mds", sparse.graph, np.abs(nodes[:len(sparse.classes)]), np.abs(all_edges))
    np.testing.assert_allclose(sparse.layout("mds"), np.asarray(want, np.float32), atol=1e-6)


def test_app_circuits_from_sparse_equal_dense(preps):
    from viscnn.app import queries as Q

    dense, sparse = preps
    for target, iset in [("loss", "Sneaker"), ("loss", "all"), ("class:Sneaker", "Sneaker"), ("class:3", "Dress")]:
        q = Q.Query(target, iset, "taylor")
        assert not Q.needs_run(sparse, q)
        dn, de = Q.precomputed_scores(dense, q)
        sn, se = Q.precomputed_scores(sparse, q)
        ranked = Q.ranked_of(sparse, q, se)
        assert ranked is not None and ranked.complete.shape == (len(sparse.graph.layers),)
        tn = Q.target_nodes(dense, target)
        for thr in ({"mass": 0.1}, {"mass": 0.2}, {"keep": 30}, {"mass": 0.5}):
            want = Q.circuit_of(dense.graph, dn, de, thr, tn)
            got = Q.circuit_of(sparse.graph, sn, se, thr, tn, ranked)
            if got.settings.get("exact", True):
                _same(got, want)
            else:  # a layer's cap (10% of its kernels) came before the mass: a subset, flagged
                assert thr == {"mass": 0.5} and set(got.edges) <= set(np.flatnonzero(se))
        wide = Q.circuit_of(sparse.graph, sn, se, {"mass": 0.999}, tn, ranked)
        assert iset == "all" or wide.settings["exact"] is False  # past the stored 90%: flagged
    sq = Q.Query("loss", "Sneaker - all", "taylor")  # a set expression densifies the rows it combines
    sn, se = Q.precomputed_scores(sparse, sq)
    assert se.shape == (sparse.graph.num_edges,)


def test_version_1_folder_is_read(preps, tmp_path):
    dense, _ = preps
    old = tmp_path / "m" / "old"
    shutil.copytree(dense.root, old)
    man = json.loads((old / "manifest.json").read_text())
    man["version"] = 1
    for k in ("scores_layout", "sparse"):
        man.pop(k, None)
    (old / "manifest.json").write_text(json.dumps(man))
    pm = PreppedModel.open("old", tmp_path / "m")
    assert not pm.sparse and pm.ranked_edges("taylor", "all") is None
    np.testing.assert_array_equal(pm.edge_scores("taylor", "Sneaker"), dense.edge_scores("taylor", "Sneaker"))
    man["version"] = 3
    (old / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(Exception, match="version 3 unsupported"):
        PreppedModel.open("old", tmp_path / "m")


@pytest.mark.slow
def test_torchrun_sparse_two_processes_equals_one(tmp_path, preps):
    _, one = preps
    cmd = lambda cfg, out: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "viscnn", "prep", str(cfg), "--out", str(out)]
    two = _prep(tmp_path, "on", "sparse", cmd)
    assert two.manifest["score_ranks"] == 2
    assert two.manifest["image_counts"] == one.manifest["image_counts"]
    # the ranks see other batches, so scores agree to float rounding; where two nearly equal kernels
    # swap places in a layer's order (or across its cut) the stored rows differ only there
    for f in ("nodes.npy", "class_nodes.npy", "edges_all.npy"):
        for m in ("taylor", "taylor_signed"):
            np.testing.assert_allclose(np.load(two.root / "scores" / m / f), np.load(one.root / "scores" / m / f),
                                       rtol=1e-5, atol=1e-9, err_msg=f"{m}/{f}")
    for m in ("taylor", "taylor_signed"):
        rows = [(one.edge_scores(m, s), two.edge_scores(m, s)) for s in one.image_sets]
        rows += [(one.class_scores(m, k)[1], two.class_scores(m, k)[1]) for k in range(len(one.classes))]
        for a, b in rows:
            both = (a != 0) & (b != 0)
            assert ((a != 0) ^ (b != 0)).sum() <= 2 and both.sum() > 0.9 * (a != 0).sum()
            np.testing.assert_allclose(a[both], b[both], rtol=1e-5, atol=1e-9)


def test_app_page_says_scores_are_sparse(preps):
    from viscnn.app import queries as Q
    from viscnn.app.context import AppContext

    _, sparse = preps
    text = Q.basis(sparse, Q.Query("loss", "Sneaker", "taylor"), False)
    assert "stored sparse" in text and "0.9 of its |score|" in text and "10%" in text
    assert "stored sparse" not in Q.basis(sparse, Q.Query("loss", "all", "taylor"), False)


def test_circuit_view_on_a_sparse_model(preps, tmp_path):
    from viscnn.app.callbacks_graph import circuit_props
    from viscnn.app.server import create_app

    _, sparse = preps
    app = create_app(sparse.root.parent, "sparse", cache_dir=tmp_path / "cache")
    actx = app.viscnn
    s = dict(actx.defaults("sparse"), target="class:Sneaker", set="Sneaker", mode="mass", value=0.1)
    out = circuit_props(actx, s)
    text = json.dumps(out["edge-info"]["children"], default=str)
    assert "stored sparse" in text and "sparse-warning" not in text
    out = circuit_props(actx, dict(s, value=0.999))  # past what prep stored: the page says so
    assert "sparse-warning" in json.dumps(out["edge-info"]["children"], default=str)


def test_sparse_kill_and_resume_is_identical(preps, tmp_path):
    import signal
    import time

    _, ref = preps
    cfg = make_config(tmp_path, per_class=4, batch=6, stages=("graph", "kernels", "scores", "layouts", "exemplars", "images"))  # batches of 6: some classes span two
    text = cfg.read_text().replace('metrics = ["taylor", "taylor_signed"]\n', 'metrics = ["taylor", "taylor_signed"]' + SPARSE_RUN.format(mode="on"))
    p = tmp_path / "sparse.toml"
    p.write_text(text.replace('name = "tiny"', 'name = "sparse"'))
    out = tmp_path / "models"
    proc = subprocess.Popen(prep_cmd(p, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(VISCNN_SPARSE_CHECKPOINT_SECONDS=0, VISCNN_TEST_BATCH_DELAY=0.4))
    cursor = out / "sparse" / "scores" / "_partial" / "rank0of1" / "cursor.json"
    deadline = time.time() + 180

    def done():
        for c in (cursor, cursor.parent.parent / "rank0of1.old" / "cursor.json"):  # killed between two renames
            try:
                return len(json.loads(c.read_text())["done"])
            except (OSError, ValueError, KeyError):
                pass
        return 0
    while time.time() < deadline and done() < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "scores" not in json.loads((out / "sparse" / "manifest.json").read_text())["stages"], "killed too late"
    assert 3 <= done() < 10
    r = subprocess.run(prep_cmd(p, out), capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr[-2000:]
    for f in sorted((ref.root / "scores").rglob("*.npy")) + sorted((ref.root / "exemplars").rglob("*.npy")):
        assert np.array_equal(np.load(f), np.load(out / "sparse" / f.relative_to(ref.root))), f.name
    for f in sorted((ref.root / "exemplars").glob("*.json")):
        assert f.read_text() == (out / "sparse" / "exemplars" / f.name).read_text(), f.name


def test_sparse_batch_rows_equal_a_direct_computation(preps):
    """The sparse prep's class rows (batch criterion) against a direct computation on the same images by
    the other code path: per-image signed kernel Taylor terms (``Scorer.layer_scores``, per_sample_taylor),
    averaged over the class, then |.|; every stored edge matches, and the stored edges of each layer are
    its largest |score| edges."""
    from viscnn.importance.scorer import Scorer
    from viscnn.prep.config import load_config
    from viscnn.prep.dataset import PrepDataset

    _, sparse = preps
    assert sparse.manifest["class_kernel_score"] == "batch"
    cfg = load_config(sparse.root.parent.parent / "sparse.toml")
    data = PrepDataset(cfg, log=lambda *a: None)
    sc = Scorer(sparse.load_model(), sparse.graph, "loss", ["taylor", "taylor_signed"])
    for c, cname in enumerate(sparse.classes):
        x, y = data.batch(np.flatnonzero(data.labels == c))
        signed = np.concatenate([s["taylor_signed"][1].double().sum(0).numpy() for _, s in sc.layer_scores(x, y)])
        per_image = np.concatenate([s["taylor"][1].double().sum(0).numpy() for _, s in sc.layer_scores(x, y)])
        want = np.abs(signed) / len(x)
        got = sparse.edge_scores("taylor", cname)
        stored = got != 0
        assert stored.any()
        np.testing.assert_allclose(got[stored], want[stored], rtol=1e-4, atol=1e-6 * want.max())
        np.testing.assert_allclose(sparse.edge_scores("taylor_signed", cname)[stored], signed[stored] / len(x),
                                   rtol=1e-4, atol=1e-6 * want.max())
        assert (per_image / len(x) > want * (1 + 1e-3) + 1e-9).any()  # really not the per-image criterion
        for l in sparse.graph.layers:
            if l.kind == "input" or not l.num_edges:
                continue
            seg, ws, st = got[l.edge_offset:l.edge_offset + l.num_edges], want[l.edge_offset:l.edge_offset + l.num_edges], stored[l.edge_offset:l.edge_offset + l.num_edges]
            if st.all() or not st.any():
                continue
            assert ws[st].min() >= ws[~st].max() * (1 - 1e-4) - 1e-9, (cname, l.name)
