"""The 2D circuit view (no browser): edge cap and counts, a legible layout that fits the viewer's box,
class nodes, edge colours from the 3D view's signs, the selection, and contrast-stretched thumbnails."""

import io
import itertools

import numpy as np
import pytest

from app_fixture import CLASSES, make_prepped
from viscnn.app.figures.circuit_paths import capped_path_edges
from viscnn.app import routes
from viscnn.app.figures import cytoscape as cy
from viscnn.app.figures.colors import NEG, POS


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from viscnn.prepped import PreppedModel

    root = tmp_path_factory.mktemp("prepped2d")
    make_prepped(root, "tiny")
    # one low-contrast feature visualization (gray 100..112) to stretch
    pm = PreppedModel.open("tiny", root)
    layer = pm.graph.layers[1]
    fv = np.load(root / "tiny" / "featurevis" / f"{layer.name}.npy")
    fv[0] = np.random.default_rng(1).integers(100, 113, size=fv[0].shape, dtype=np.uint8)
    np.save(root / "tiny" / "featurevis" / f"{layer.name}.npy", fv)
    return root, PreppedModel.open("tiny", root)


@pytest.fixture(scope="module")
def resnet():
    torchvision = pytest.importorskip("torchvision")
    from viscnn.graph import build_graph

    return build_graph(torchvision.models.resnet18(weights=None).eval(), (32, 32), in_channels=3,
                       include_classes=True)


def labels_of(g, classes):
    out = [g.node_id(i) for i in range(g.num_nodes)]
    last = g.layers[-1]
    for c, name in enumerate(classes):
        out[last.node_offset + c] += f" ({name})"
    return out


def circuit(g, es, **kw):
    from viscnn.importance.circuits import extract_circuit

    ns = np.zeros(g.num_nodes)
    np.add.at(ns, g.edge_target, np.abs(es))
    return extract_circuit(g, ns, np.abs(es), **kw)


def build(g, c, es, **kw):
    kw.setdefault("labels", None)
    return cy.circuit_elements(g, c.nodes, c.edges, es, lambda n: f"/fv/{n}.png", lambda e: f"/k/{e}.png", **kw)


def kind(el):
    return el.get("classes", "").split()


def nodes_of(els):
    return [e for e in els if "filter" in kind(e)]


def kernels_of(els):
    return [e for e in els if "kernel" in kind(e)]


def box(el):
    """(x0, y0, x1, y1) at zoom 1 of a node with its label, a class box, a kernel glyph or a title."""
    x, y = el["position"]["x"], el["position"]["y"]
    k = kind(el)
    if "kernel" in k:
        return x - cy.KERNEL / 2, y - cy.KERNEL / 2, x + cy.KERNEL / 2, y + cy.KERNEL / 2
    if "cls" in k:
        return x - cy.CLASS_W / 2, y - cy.NODE / 2, x + cy.CLASS_W / 2, y + cy.NODE / 2
    if "title" in k:
        lines = el["data"]["label"].split("\n")
        w = max(map(len, lines)) * cy.CHAR_W
        return x - w / 2, y - len(lines) * cy.LABEL_H / 2, x + w / 2, y + len(lines) * cy.LABEL_H / 2
    half = max(cy.NODE, len(el["data"]["label"]) * cy.CHAR_W) / 2
    return x - half, y - cy.NODE / 2, x + half, y + cy.NODE / 2 + cy.LABEL_GAP + cy.LABEL_H


def overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def assert_no_overlap(els):
    boxes = [box(e) for e in els if "position" in e]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not overlap(a, b), (els[i]["data"]["id"], els[j]["data"]["id"], a, b)


def extent(els):
    b = np.array([box(e) for e in els if "position" in e])
    return b[:, 2].max() - b[:, 0].min(), b[:, 3].max() - b[:, 1].min()


def rgb(css):
    return tuple(int(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def hex_rgb(h):
    return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))


# -- cap, counts, ids ---------------------------------------------------------------------------------
def test_cap_and_counts(tiny):
    _, pm = tiny
    g = pm.graph
    es = np.asarray(pm.edge_scores("taylor_signed", "all"), np.float64)
    c = circuit(g, es, mass=0.99)
    assert len(c.edges) > cy.MAX_EDGES_2D
    r = build(g, c, es)
    assert cy.MAX_EDGES_2D == 40 and r.total_edges == len(c.edges) and 0 < r.shown_edges <= 40
    ks = kernels_of(r.elements)
    assert len(ks) == r.shown_edges
    top = set(capped_path_edges(g, c.edges, es, 40).tolist())
    assert {k["data"]["edge"] for k in ks} == top  # whole paths (tests/test_circuit_paths.py)
    ids = {e["data"]["id"] for e in r.elements}
    for k in ks:
        e = k["data"]["edge"]
        assert {f"k{e}", f"l{e}a", f"l{e}b"} <= ids and k["data"]["img"] == f"/k/{e}.png"
    for n in nodes_of(r.elements):
        assert n["data"]["id"] == f"n{n['data']['node']}"
    every = build(g, c, es, max_edges=cy.MAX_EDGES_2D_LIMIT)
    assert every.shown_edges == min(len(c.edges), 400) and every.total_edges == len(c.edges)
    assert len(kernels_of(every.elements)) == every.shown_edges
    # every line ends on an element of the diagram
    for e in every.elements:
        if "source" in e["data"]:
            assert e["data"]["source"] in ids | {x["data"]["id"] for x in every.elements}
    empty = cy.circuit_elements(g, [], [], es, lambda n: None, lambda e: "")
    assert (empty.shown_edges, empty.total_edges) == (0, 0)


# -- layout ---------------------------------------------------------------------------------------------
def test_layout_fits_box_and_nothing_overlaps(tiny):
    _, pm = tiny
    g = pm.graph
    es = np.asarray(pm.edge_scores("taylor_signed", "all"), np.float64)
    c = circuit(g, es, mass=0.99)
    r = build(g, c, es, labels=labels_of(g, pm.classes))
    assert_no_overlap(r.elements)
    w, h = extent(r.elements)
    assert w <= cy.BOX_W and h <= cy.BOX_H
    assert (r.width, r.height) == (pytest.approx(w, abs=0.5), pytest.approx(h, abs=0.5))
    # columns go by depth: each layer's nodes lie left of every deeper layer's nodes
    xs = {}
    for n in nodes_of(r.elements):
        xs.setdefault(g.layers[int(g.node_layer[n["data"]["node"]])].depth, []).append(n["position"]["x"])
    ds = sorted(xs)
    assert all(max(xs[a]) < min(xs[b]) for a, b in zip(ds, ds[1:]))
    assert min(s["style"]["font-size"] for s in cy.STYLESHEET if "font-size" in s["style"]) >= 11


def test_default_model_report_case_fits(tiny):
    """The user report: the default model at mass 0.9 (thousands of circuit edges) at the default cap."""
    from viscnn.paths import default_models_dir
    from viscnn.prepped import PreppedModel, list_models

    if "fmnist" not in list_models(default_models_dir()):
        pytest.skip("default model not prepped")
    pm = PreppedModel.open("fmnist", default_models_dir())
    g = pm.graph
    from viscnn.importance.circuits import extract_circuit

    ns, es = pm.node_scores("taylor", "all"), pm.edge_scores("taylor", "all")
    for mass in (0.5, 0.9):
        c = extract_circuit(g, ns, es, mass=mass)
        r = cy.circuit_elements(g, c.nodes, c.edges, es, lambda n: "/fv.png", lambda e: "/k.png",
                                labels=labels_of(g, pm.classes))
        assert r.shown_edges == min(40, len(c.edges)) and r.total_edges == len(c.edges)
        assert_no_overlap(r.elements)
        w, h = extent(r.elements)
        assert w <= cy.BOX_W and h <= cy.BOX_H


def test_resnet_same_depth_layers_side_by_side_and_tall_layers_wrap(resnet):
    g = resnet
    rng = np.random.default_rng(0)
    es = rng.normal(size=g.num_edges) * 0.01
    conv = g.layer("layer2.0.conv1")
    skip = g.layer("layer2.0.downsample.0")
    assert conv.depth == skip.depth
    # strong kernels into both layers that share a depth, and into 40 channels of one layer
    chosen = [g.edge_index(conv.name, j, 0) for j in range(6)] + [g.edge_index(skip.name, j, 0) for j in range(6)]
    big = g.layer("layer1.0.conv1")
    chosen += [g.edge_index(big.name, j, 0) for j in range(40)]
    chosen = np.array(sorted(chosen))
    es[chosen] = 1.0 + rng.random(len(chosen))
    nodes = np.unique(np.concatenate([g.edge_target[chosen], g.links[np.isin(g.links[:, 0], chosen), 1]]))
    r = cy.circuit_elements(g, nodes, chosen, es, lambda n: "/fv.png", lambda e: "/k.png",
                            max_edges=cy.MAX_EDGES_2D_LIMIT)
    assert r.shown_edges == r.total_edges == len(chosen)
    assert_no_overlap(r.elements)

    def span(layer):
        xs = [n["position"]["x"] for n in nodes_of(r.elements) if g.node_layer[n["data"]["node"]] == g.layer_index(layer.name)]
        return min(xs), max(xs)
    a, b = span(conv), span(skip)
    assert a[1] < b[0] or b[1] < a[0]  # separate sub-columns, not on top of each other
    # the 40-node layer wraps into sub-columns and stays inside the box's height
    ys = [n["position"]["y"] for n in nodes_of(r.elements) if g.node_layer[n["data"]["node"]] == g.layer_index(big.name)]
    xs = {n["position"]["x"] for n in nodes_of(r.elements) if g.node_layer[n["data"]["node"]] == g.layer_index(big.name)}
    assert len(ys) == 40 and len(xs) > 1
    assert extent(r.elements)[1] <= cy.BOX_H
    # titles name the layers (wrapped at dots); long names do not collide
    titles = {e["data"]["title"]: e["data"]["label"] for e in r.elements if "title" in kind(e)}
    assert titles["layer2.0.downsample.0"].replace("\n", "") == "layer2.0.downsample.0"


def test_resnet_default_cap_no_overlap(resnet):
    g = resnet
    rng = np.random.default_rng(3)
    es = rng.normal(size=g.num_edges)
    edges = np.flatnonzero(rng.random(g.num_edges) < 0.001)
    nodes = np.unique(np.concatenate([g.edge_target[edges], g.links[np.isin(g.links[:, 0], edges), 1]]))
    r = cy.circuit_elements(g, nodes, edges, es, lambda n: "/fv.png", lambda e: "/k.png")
    assert (r.shown_edges, r.total_edges) == (40, len(edges))
    assert_no_overlap(r.elements)
    assert extent(r.elements)[1] <= cy.BOX_H


# -- class nodes, colours, selection ------------------------------------------------------------------
def test_class_nodes_are_labelled_boxes(tiny):
    _, pm = tiny
    g = pm.graph
    es = np.asarray(pm.edge_scores("taylor_signed", "all"), np.float64)
    c = circuit(g, es, mass=0.99)
    asked = []
    r = cy.circuit_elements(g, c.nodes, c.edges, es, lambda n: asked.append(n) or f"/fv/{n}.png",
                            lambda e: "/k.png", labels=labels_of(g, CLASSES), max_edges=400)
    last = g.layers[-1]
    assert last.kind == "linear"
    cls = [n for n in nodes_of(r.elements) if "cls" in kind(n)]
    assert cls
    for n in cls:
        ch = n["data"]["node"] - last.node_offset
        assert n["data"]["label"].replace("\n", " ") == CLASSES[ch]
        assert "img" not in n["data"] and n["data"]["title"] == f"{g.node_id(n['data']['node'])} ({CLASSES[ch]})"
        assert n["data"]["nid"] == g.node_id(n["data"]["node"])
    assert not any(g.layers[int(g.node_layer[n])].kind == "linear" for n in asked)
    convs = [n for n in nodes_of(r.elements) if g.layers[int(g.node_layer[n["data"]["node"]])].kind == "conv"]
    assert convs and all(n["data"]["img"] == f"/fv/{n['data']['node']}.png" for n in convs)
    # without labels the class nodes show their id
    r2 = build(g, c, es, max_edges=400)
    assert {n["data"]["label"] for n in nodes_of(r2.elements) if "cls" in kind(n)} <= {
        g.node_id(last.node_offset + k) for k in range(last.channels)}


def test_edge_colours_follow_signs_not_scores(tiny):
    _, pm = tiny
    g = pm.graph
    es = np.asarray(pm.edge_scores("taylor_signed", "all"), np.float64)
    c = circuit(g, es, mass=0.99)
    rng = np.random.default_rng(5)
    signs = np.where(rng.random(g.num_edges) < 0.5, -1.0, 1.0) * rng.random(g.num_edges)
    r = build(g, c, es, signs=signs)
    lines = {e["data"]["id"]: e["data"] for e in r.elements if "source" in e["data"]}
    shown = [k["data"]["edge"] for k in kernels_of(r.elements)]
    assert any(signs[e] * es[e] < 0 for e in shown)  # the test means something: they disagree somewhere
    top = max(shown, key=lambda e: abs(es[e]))
    for e in shown:
        r_, _, b_ = rgb(lines[f"l{e}a"]["color"])
        assert lines[f"l{e}a"]["color"] == lines[f"l{e}b"]["color"]
        assert (r_ > b_) if signs[e] >= 0 else (b_ > r_), (e, signs[e], es[e], lines[f"l{e}a"]["color"])
    assert rgb(lines[f"l{top}a"]["color"]) == hex_rgb(POS if signs[top] >= 0 else NEG)
    # intensity and width follow |score|: the strongest edge is the widest
    assert lines[f"l{top}a"]["w"] == max(d["w"] for d in lines.values())
    # no signs: the scores' own sign
    r = build(g, c, es)
    lines = {e["data"]["id"]: e["data"] for e in r.elements if "source" in e["data"]}
    for k in kernels_of(r.elements):
        e = k["data"]["edge"]
        r_, _, b_ = rgb(lines[f"l{e}b"]["color"])
        assert (r_ > b_) if es[e] >= 0 else (b_ > r_)


def test_selection_is_marked(tiny):
    _, pm = tiny
    g = pm.graph
    es = np.asarray(pm.edge_scores("taylor_signed", "all"), np.float64)
    c = circuit(g, es, mass=0.99)
    r = build(g, c, es)
    n = nodes_of(r.elements)[3]["data"]["node"]
    r = build(g, c, es, selected=g.node_id(n))
    sel = [e for e in r.elements if e.get("selected")]
    assert [e["data"]["id"] for e in sel] == [f"n{n}"] and "sel" in kind(sel[0])
    assert sum("sel" in kind(e) for e in r.elements) == 1
    e = kernels_of(r.elements)[2]["data"]["edge"]
    r = build(g, c, es, selected=f"e{e}")
    sel = [x for x in r.elements if x.get("selected")]
    assert [x["data"]["id"] for x in sel] == [f"k{e}"] and "sel" in kind(sel[0])
    assert {x["data"]["id"] for x in r.elements if "sel" in kind(x)} == {f"k{e}", f"l{e}a", f"l{e}b"}
    for bad in ("", None, "nosuch:1", "e999999999", "conv:x"):
        r = build(g, c, es, selected=bad)
        assert not any(x.get("selected") or "sel" in kind(x) for x in r.elements)
    styles = {s["selector"]: s["style"] for s in cy.STYLESHEET}
    assert styles["node.sel"]["border-color"] == "#ff7f0e" and styles["edge.sel"]["line-color"] == "#ff7f0e"
    assert "node:selected" in styles and "node.stretched" in styles


# -- contrast stretch -------------------------------------------------------------------------------------
def test_stretch_contrast():
    rng = np.random.default_rng(0)
    flat = rng.integers(120, 131, size=(28, 28, 3), dtype=np.uint8)
    out, did = routes.stretch_contrast(flat)
    assert did and out.dtype == np.uint8 and out.shape == flat.shape and out.min() == 0 and out.max() == 255
    assert np.corrcoef(out.ravel().astype(float), flat.ravel().astype(float))[0, 1] > 0.99  # monotone map
    normal = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    out, did = routes.stretch_contrast(normal)
    assert not did and np.array_equal(out, normal)
    const = np.full((8, 8, 3), 7, np.uint8)
    out, did = routes.stretch_contrast(const)
    assert not did and np.array_equal(out, const)
    # the default model's conv1 look: near-black with a few saturated pixels on the border
    dark = rng.integers(4, 15, size=(28, 28, 3)).astype(np.uint8)
    dark[0, :12] = 255
    out, did = routes.stretch_contrast(dark)
    assert did and np.percentile(out, 50) > 60


def test_stretched_route_and_marker(tiny):
    from flask import Flask
    from PIL import Image

    from viscnn.errors import ViscnnError

    root, pm = tiny
    g = pm.graph

    class Ctx:  # the routes need only the checked prepped-model accessor (the app's AppContext.prepped)
        def prepped(self, name):
            if name != "tiny":
                raise ViscnnError(f"unknown prepped model {name!r}")
            return pm

    server = Flask("t")
    routes.register(server, Ctx())
    client = server.test_client()
    low = g.layers[1].node_offset  # its feature visualization was made low-contrast
    ok = low + 1
    assert routes.fv_url("tiny", low, stretch=True) == f"/viscnn-img/tiny/fv/{low}.png?stretch=1"
    assert routes.fv_url("tiny", low) == f"/viscnn-img/tiny/fv/{low}.png"
    res = client.get(routes.fv_url("tiny", low, stretch=True))
    assert res.status_code == 200 and res.mimetype == "image/png"
    a = np.asarray(Image.open(io.BytesIO(res.data)))
    assert a.min() == 0 and a.max() == 255
    raw = np.asarray(Image.open(io.BytesIO(client.get(routes.fv_url("tiny", low)).data)))
    assert raw.min() >= 100 and raw.max() <= 112
    res = client.get(routes.fv_url("tiny", ok, stretch=True))  # enough contrast: served as is
    assert res.status_code == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(res.data))), np.asarray(pm.featurevis(g.layers[1].name)[1]))
    assert routes.fv_is_low_contrast(pm, low) and not routes.fv_is_low_contrast(pm, ok)
    cls_node = g.layers[-1].node_offset
    assert not routes.fv_is_low_contrast(pm, cls_node) and not routes.fv_is_low_contrast(pm, 10 ** 9)
    input_node = g.layers[0].node_offset  # no feature visualization: 404, as for unknown nodes and models
    for url in (f"/viscnn-img/tiny/fv/{g.num_nodes + 5}.png?stretch=1", f"/viscnn-img/tiny/fv/{input_node}.png?stretch=1",
                f"/viscnn-img/nosuch/fv/{low}.png?stretch=1", f"/viscnn-img/tiny/fv/-1.png?stretch=1"):
        assert client.get(url).status_code == 404, url

    # the builder marks the stretched thumbnail
    es = np.asarray(pm.edge_scores("taylor_signed", "all"), np.float64)
    es[g.edge_target == low] += 10  # make sure `low` is in the circuit (all of it is drawn below)
    c = circuit(g, es, mass=0.99)
    r = cy.circuit_elements(g, c.nodes, c.edges, es, lambda n: routes.fv_url("tiny", n, stretch=True),
                            lambda e: "/k.png", is_stretched=lambda n: routes.fv_is_low_contrast(pm, n),
                            max_edges=len(c.edges))
    els = {e["data"]["node"]: e for e in nodes_of(r.elements)}
    assert low in els and els[low]["data"]["stretched"] and "stretched" in kind(els[low])
    assert "contrast-stretched" in els[low]["data"]["title"]
    assert not any("stretched" in kind(e) for n, e in els.items() if n != low)


def test_circuit_view_reports_counts(tiny):
    from viscnn.app.callbacks_graph import circuit_props
    from viscnn.app.server import create_app

    root, _ = tiny
    app = create_app(root, "tiny", cache_dir=root / "cache2")
    actx = app.viscnn
    s = dict(actx.defaults("tiny"), mode="mass", value=0.99)
    total = len(actx.resolve(s).circuit.edges)
    props = circuit_props(actx, s)
    els = props["cyto-data"]["data"]
    assert f"showing {min(total, 40)} of {total} circuit edges" in props["cyto-count"]["children"]
    assert len(kernels_of(els)) == min(total, 40)
    # the user's cap (URL key cap) raises it
    props = circuit_props(actx, dict(s, cap=7))
    assert props["cyto-count"]["children"].startswith(f"showing {min(total, 7)} of {total}")
    # the tables say what their score column is: metric, target and the images it rests on
    cap = props["tables-caption"]["children"]
    assert s["metric"] in cap and "mean over" in cap and "ranked by |score|" in cap
    scores = [abs(r["score"]) for r in props["tables-data"]["data"]["nodes"]]
    assert scores == sorted(scores, reverse=True)


