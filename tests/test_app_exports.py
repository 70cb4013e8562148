"""Class-node panel data/figures (viscnn.app.figures.classpanel) and circuit exports (viscnn.app.exports)."""

import csv
import io
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch
from torch import nn

from app_fixture import CLASSES, make_prepped
from viscnn.app.exports import EDGE_COLUMNS, NODE_COLUMNS, circuit_csv, class_labels, export_basename, safe_part
from viscnn.app.figures import classpanel as cp
from viscnn.app.figures.colors import INACTIVE, POS
from viscnn.errors import ViscnnError
from viscnn.graph import build_graph
from viscnn.prepped import PreppedModel


@pytest.fixture(scope="module")
def pm(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepped")
    make_prepped(root, "tiny", n_images=25)
    return PreppedModel.open("tiny", root)


def _rgb(css):
    m = re.fullmatch(r"rgba?\((\d+),(\d+),(\d+)(?:,[\d.]+)?\)", css.replace(" ", ""))
    assert m, css
    return tuple(int(v) for v in m.groups())


# -- circuit CSV ---------------------------------------------------------------------------------
def _ref_ranks(idx, scores):
    """1-based rank by descending |score|, ties by index: a plain-Python reference."""
    order = sorted(idx, key=lambda i: (-abs(float(scores[i])), i))
    return {i: r + 1 for r, i in enumerate(order)}


def test_circuit_csv_roundtrip(pm):
    g = pm.graph
    rng = np.random.default_rng(1)
    ns = rng.normal(size=g.num_nodes).astype(np.float32)
    es = rng.normal(size=g.num_edges).astype(np.float32)
    ns[5] = -ns[7]  # a tie in |score|: broken by index
    signed = rng.normal(size=g.num_edges)
    signed[3] = 0.0
    cls_layer = g.layers[-1]
    nodes = list(rng.choice(g.num_nodes, 30, replace=False)) + [5, 7, cls_layer.node_offset + 7, 5]
    edges = list(rng.choice(g.num_edges, 60, replace=False)) + [3, g.num_edges - 1]
    nodes_csv, edges_csv = circuit_csv(g, nodes, edges, ns, es, labels=class_labels(g, CLASSES), signs=signed)

    rows = list(csv.DictReader(io.StringIO(nodes_csv)))
    assert list(rows[0].keys()) == NODE_COLUMNS
    uniq = sorted(set(int(n) for n in nodes))
    assert sorted(int(r["index"]) for r in rows) == uniq  # duplicates dropped
    ref = _ref_ranks(uniq, ns)
    assert [int(r["rank"]) for r in rows] == list(range(1, len(uniq) + 1))  # written in rank order
    for r in rows:
        n = int(r["index"])
        assert float(r["score"]) == float(ns[n])  # exact round trip
        assert int(r["rank"]) == ref[n]
        assert r["id"] == g.node_id(n)
        li = int(g.node_layer[n])
        assert r["layer"] == g.layers[li].name and int(r["channel"]) == int(g.node_channel[n])
        want = CLASSES[n - cls_layer.node_offset] if li == len(g.layers) - 1 else ""
        assert r["label"] == want
    assert ref[5] < ref[7] and abs(ns[5]) == abs(ns[7])
    assert any(r["label"] == "Sneaker" for r in rows)

    rows = list(csv.DictReader(io.StringIO(edges_csv)))
    assert list(rows[0].keys()) == EDGE_COLUMNS
    uniq = sorted(set(int(e) for e in edges))
    ref = _ref_ranks(uniq, es)
    src = {}
    for e, s in g.links:
        src.setdefault(int(e), []).append(int(s))
    assert len(rows) == len(uniq)
    for r in rows:
        e = int(r["index"])
        assert float(r["score"]) == float(es[e]) and int(r["rank"]) == ref[e]
        li, oc, ic = (int(v) for v in g.edges[e])
        assert (r["layer"], int(r["out_channel"]), int(r["in_channel"])) == (g.layers[li].name, oc, ic)
        assert r["source"] == g.node_id(src[e][0])
        assert r["sources"].split("+") == [g.node_id(s) for s in src[e]]
        assert r["target"] == g.node_id(int(g.edge_target[e]))
        assert r["sign"] == ("+" if signed[e] > 0 else "-" if signed[e] < 0 else "0")
    assert next(r for r in rows if int(r["index"]) == 3)["sign"] == "0"


def test_circuit_csv_quoting_and_errors(pm):
    g = pm.graph
    labels = [""] * g.num_nodes
    labels[0] = 'odd, "quoted"\nlabel'
    ns = np.zeros(g.num_nodes)
    es = np.zeros(g.num_edges)
    nodes_csv, edges_csv = circuit_csv(g, [0, 1], [], ns, es, labels=labels)
    rows = list(csv.DictReader(io.StringIO(nodes_csv)))
    assert rows[0]["label"] == labels[0] and rows[1]["label"] == ""
    assert list(csv.DictReader(io.StringIO(edges_csv))) == []  # header only
    assert edges_csv.strip() == ",".join(EDGE_COLUMNS)
    nodes_csv, _ = circuit_csv(g, [], [], ns, es)
    assert nodes_csv.strip() == ",".join(NODE_COLUMNS)
    with pytest.raises(ViscnnError):
        circuit_csv(g, [0], [], ns[:-1], es)
    with pytest.raises(ViscnnError):
        circuit_csv(g, [g.num_nodes], [], ns, es)
    with pytest.raises(ViscnnError):
        circuit_csv(g, [], [0], ns, es, signs=np.ones(3))


# -- class weights per channel ----------------------------------------------------------------------
def test_class_weights_pooled(pm):
    g = pm.graph
    lin = g.layers[-1]
    sd = torch.load(pm.root / "weights.pt", weights_only=True)
    W = sd[f"{lin.name}.weight"].numpy().astype(np.float64)  # [10, 8]: one weight per channel
    assert W.shape == (len(CLASSES), lin.in_channels)
    prev = g.layers[-2]
    for c in (0, 7, 9):
        vals, labels = cp.class_channel_weights(pm, c)
        np.testing.assert_allclose(vals, W[c], rtol=1e-6, atol=1e-7)
        assert labels == [f"{prev.name}:{i}" for i in range(prev.channels)]
        l2, _ = cp.class_channel_weights(pm, c, reduce="l2")
        np.testing.assert_allclose(l2, np.abs(W[c]), rtol=1e-6, atol=1e-7)
        v2, _ = cp.channel_weights(g, W, c)  # the raw [out, in] Linear weight gives the same
        np.testing.assert_allclose(v2, vals, rtol=1e-6)
    with pytest.raises(ViscnnError):
        cp.class_channel_weights(pm, 10)
    with pytest.raises(ViscnnError):
        cp.channel_weights(g, W, 0, reduce="max")


def test_class_weights_flattened_map():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    g = build_graph(model, (8, 8), in_channels=1, include_classes=True)
    lin = g.layers[-1]
    assert lin.kind == "linear" and lin.in_channels == 4
    W = model[2].weight.detach().numpy().astype(np.float64)  # [10, 144]
    for c in (0, 3, 9):
        vals, labels = cp.channel_weights(g, W, c)
        manual = np.array([W[c, i * 36:(i + 1) * 36].sum() for i in range(4)])
        np.testing.assert_allclose(vals, manual, rtol=1e-12)
        assert labels == ["0:0", "0:1", "0:2", "0:3"]
        # the prepped kernels of this layer ([classes, in_channels, 6, 6]) give the same numbers
        v4, _ = cp.channel_weights(g, W.reshape(10, 4, 6, 6), c)
        np.testing.assert_allclose(v4, manual, rtol=1e-12)
        l2, _ = cp.channel_weights(g, W, c, reduce="l2")
        np.testing.assert_allclose(l2, [np.linalg.norm(W[c, i * 36:(i + 1) * 36]) for i in range(4)], rtol=1e-12)
        # meaning: a uniform unit map on channel i (others 0) moves the class logit by vals[i]
        for i in range(4):
            x = torch.zeros(1, 4, 6, 6, dtype=torch.float64)
            x[0, i] = 1.0
            with torch.no_grad():
                d = model[2].double()(x.flatten(1))[0, c] - model[2].bias[c]
            assert float(d) == pytest.approx(vals[i], rel=1e-9, abs=1e-12)
            model[2].float()
    with pytest.raises(ViscnnError):
        cp.channel_weights(g, W[:, :100], 0)  # features do not split into channels


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.a(x)
        y = y + self.b(torch.relu(y))
        return self.fc(torch.flatten(self.pool(y), 1))


def test_class_weight_labels_after_residual_add():
    model = _Res().eval()
    g = build_graph(model, (8, 8), in_channels=1, include_classes=True)
    lin = g.layers[-1]
    first = {}
    for e, s in g.links:
        first.setdefault(int(e), int(s))
    n_src = np.bincount(g.links[:, 0], minlength=g.num_edges)
    assert (n_src[lin.edge_offset:] == 2).all()  # each class input channel sums two filters
    W = model.fc.weight.detach().numpy()
    for c in range(3):
        vals, labels = cp.channel_weights(g, W, c)
        np.testing.assert_allclose(vals, W[c], rtol=1e-6)
        assert labels == [g.node_id(first[lin.edge_offset + c * 4 + i]) for i in range(4)]
        assert all(l.split(":")[0] in ("a", "b") for l in labels)


def test_class_index_of_node(pm):
    g = pm.graph
    lin = g.layers[-1]
    assert cp.class_index_of_node(g, lin.node_offset + 7) == 7
    assert cp.class_index_of_node(g, 0) is None


def test_class_exemplar_files(pm):
    items = pm.images()
    want0 = [it["file"] for it in items if it["label"] == 0]
    assert len(want0) == 3
    assert cp.class_exemplar_files(pm, 0) == want0
    assert cp.class_exemplar_files(pm, 0, k=2) == want0[:2]
    assert cp.class_exemplar_files(pm, 7) == ["007.png", "017.png"]
    assert cp.class_exemplar_files(pm, 42) == []


# -- figures ---------------------------------------------------------------------------------------
def test_logits_figure():
    z = np.array([0.5, -1.0, 2.0, 0.0, 3.0, 1.0, -2.0, 4.0, 0.2, -0.3], np.float32)
    fig = cp.logits_figure(z, CLASSES, highlight=7)
    tr = fig["data"][0]
    assert tr["type"] == "bar" and tr["orientation"] == "h"
    assert sum(tr["x"]) == pytest.approx(1.0, abs=1e-5)
    e = np.exp(z - z.max())
    np.testing.assert_allclose(tr["x"], e / e.sum(), atol=1e-6)
    assert tr["y"] == list(range(10))  # class order, not sorted by value
    assert fig["layout"]["yaxis"]["ticktext"] == CLASSES
    assert tr["marker"]["color"][7] == POS
    assert all(c == INACTIVE for i, c in enumerate(tr["marker"]["color"]) if i != 7)
    assert fig["layout"]["xaxis"]["title"]["text"] == "probability (softmax of logits)"
    assert [row[2] for row in tr["customdata"]] == pytest.approx(z.tolist())  # raw logits on hover
    assert "Sneaker" in fig["layout"]["title"]["text"]

    fig = cp.logits_figure(z, CLASSES, highlight=None, show="logit")
    tr = fig["data"][0]
    np.testing.assert_allclose(tr["x"], z, atol=1e-6)
    assert POS not in tr["marker"]["color"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "logit"
    with pytest.raises(ViscnnError):
        cp.logits_figure(z, CLASSES, show="odds")


def test_logits_figure_many_classes():
    rng = np.random.default_rng(0)
    z = rng.normal(size=100)
    names = [f"c{i}" for i in range(100)]
    low = int(np.argmin(z))
    fig = cp.logits_figure(z, names, highlight=int(np.argmax(z)))
    tr = fig["data"][0]
    top = sorted(np.argsort(-z)[:30].tolist())
    assert tr["y"] == top  # the top 30 by value, shown in class order
    assert "top 30 of 100" in fig["layout"]["title"]["text"]
    assert tr["marker"]["color"].count(POS) == 1
    fig = cp.logits_figure(z, names, highlight=low)  # the selected class is kept even when low
    tr = fig["data"][0]
    assert low in tr["y"] and len(tr["y"]) == 31
    assert tr["marker"]["color"][tr["y"].index(low)] == POS
    assert all(a < b for a, b in zip(tr["y"], tr["y"][1:]))


def test_class_weights_figure():
    w = np.array([0.3, -1.2, 0.0, 2.0, -0.1, 0.7])
    labels = [f"conv3:{i}" for i in range(6)]
    fig = cp.class_weights_figure(w, labels, "Sneaker weights")
    tr = fig["data"][0]
    assert tr["y"] == sorted(w.tolist(), reverse=True)
    assert fig["layout"]["xaxis"]["ticktext"] == ["conv3:3", "conv3:5", "conv3:0", "conv3:2", "conv3:4", "conv3:1"]
    assert [row[0] for row in tr["customdata"]] == fig["layout"]["xaxis"]["ticktext"]
    for v, c in zip(tr["y"], tr["marker"]["color"]):
        r, _, b = _rgb(c)
        if v > 0:
            assert r > b
        elif v < 0:
            assert b > r
    assert _rgb(tr["marker"]["color"][0]) == _rgb("rgb(178,24,43)")  # the largest |w| is the full POS red
    assert fig["layout"]["title"]["text"] == "Sneaker weights"
    lo, hi = fig["layout"]["yaxis"]["range"]
    assert lo == pytest.approx(-hi)  # symmetric

    rng = np.random.default_rng(0)
    w = rng.normal(size=200)
    fig = cp.class_weights_figure(w, [f"x:{i}" for i in range(200)], "t")
    tr = fig["data"][0]
    s = np.sort(w)[::-1]
    assert tr["y"] == pytest.approx(np.concatenate([s[:32], s[-32:]]).tolist(), abs=1e-6)
    assert "top 32 and bottom 32 of 200" in fig["layout"]["title"]["text"]


# -- export file names -------------------------------------------------------------------------------
SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def test_export_basename():
    when = datetime(2026, 12, 2, 15, 30, 59, tzinfo=timezone.utc)
    assert export_basename("fmnist", "class:Sneaker", "all", when) == "viscnn-fmnist-class_Sneaker-all-20261202T1530Z"
    b = export_basename("fmnist", "class:Sneaker - 0.5*unit:conv2:3", "Sneaker - all", when)
    assert SAFE.fullmatch(b) and "fmnist" in b and b.endswith("-20261202T1530Z")
    assert "class_Sneaker" in b and "conv2_3" in b
    b = export_basename("../../etc", "../../etc/passwd", "..", when)
    assert SAFE.fullmatch(b) and "/" not in b and ".." not in b and not b.startswith(".")
    assert "etc" in b
    assert export_basename("fmnist", "", "all", when) == "viscnn-fmnist-loss-all-20261202T1530Z"
    assert export_basename("fmnist", None, "all", when).split("-")[2] == "loss"
    # another time zone is converted to UTC; a naive datetime is taken as UTC
    est = datetime(2026, 12, 2, 10, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert export_basename("m", "", "all", est).endswith("-20261202T1530Z")
    assert export_basename("m", "", "all", datetime(2026, 12, 2, 15, 30)).endswith("-20261202T1530Z")
    assert re.fullmatch(r"viscnn-m-loss-all-\d{8}T\d{4}Z", export_basename("m", "", "all"))
    # long targets are cut, stay distinct, and the whole stem stays short
    t1, t2 = "class:Sneaker + " * 20 + "a", "class:Sneaker + " * 20 + "b"
    b1, b2 = export_basename("m", t1, "all", when), export_basename("m", t2, "all", when)
    assert b1 != b2 and len(b1) <= 120 and SAFE.fullmatch(b1)
    assert safe_part("   ", empty="x") == "x" and safe_part("a//b") == "a_b"
