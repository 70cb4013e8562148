"""App logic on a prepped model, without a browser: score queries, circuits, activations, ablation,
panels, snapshots, image routes and error handling."""

import json
import re

import numpy as np

from viscnn.app.figures import graph3d
import pytest
import torch

from app_fixture import app_model
from viscnn.app import activations as A
from viscnn.app import queries, snapshot as S
from viscnn.app.callbacks_graph import circuit_view
from viscnn.app.callbacks_panels import edge_panel, node_panel, rf_box_of, sel_from_click
from viscnn.app.server import create_app
from viscnn.errors import ViscnnError


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    models_dir, name = app_model(tmp_path_factory)
    a = create_app(models_dir, name, cache_dir=tmp_path_factory.mktemp("cache"))
    a.model_name = name
    return a


@pytest.fixture(scope="module")
def actx(app):
    return app.viscnn


@pytest.fixture(scope="module")
def pm(app, actx):
    return actx.prepped(app.model_name)


@pytest.fixture
def s(app, actx):
    return actx.defaults(app.model_name)


# -- scores and circuits -----------------------------------------------------------------------------
def test_precomputed_scores_single_set_and_expression(pm):
    q = queries.Query("loss", "all", "taylor")
    ns, es = queries.precomputed_scores(pm, q)
    assert np.array_equal(ns, pm.node_scores("taylor", "all")) and np.array_equal(es, pm.edge_scores("taylor", "all"))
    a, b = pm.image_sets[0], pm.image_sets[1]
    expr = f"'{a}' - 0.5*'{b}' + all" if "/" in a or " " in a else f"{a} - 0.5*{b} + all"
    ns, es = queries.precomputed_scores(pm, queries.Query("loss", expr, "taylor_signed"))
    E = np.asarray(pm.edge_scores("taylor_signed"), np.float64)
    ref = E[pm.set_index(a)] - 0.5 * E[pm.set_index(b)] + E[pm.set_index("all")]
    assert np.allclose(es, ref, atol=1e-5)
    assert not queries.needs_run(pm, q)
    assert queries.needs_run(pm, queries.Query("class:0", "all", "taylor"))
    assert queries.needs_run(pm, queries.Query("loss", "image", "taylor"))


@pytest.mark.parametrize("target,iset", [("loss", "nosuchset"), ("loss", "all +"), ("class:nosuch", "all"),
                                         ("unit:nolayer:0", "all"), ("loss; rm -rf /", "all")])
def test_bad_target_or_set_raises(actx, s, target, iset):
    with pytest.raises(ViscnnError):
        actx.resolve(dict(s, target=target, set=iset))


def test_resolve_matches_direct_extract(actx, pm, s):
    from viscnn.importance.circuits import extract_circuit

    for mode, value, kw in [("mass", 0.6, {"mass": 0.6}), ("topk", 40, {"keep": 40}), ("score", 0.05, {"min_score": 0.05})]:
        r = actx.resolve(dict(s, mode=mode, value=value))
        ref = extract_circuit(pm.graph, pm.node_scores(s["metric"], "all"), pm.edge_scores(s["metric"], "all"), **kw)
        assert np.array_equal(r.circuit.edges, ref.edges) and np.array_equal(r.circuit.nodes, ref.nodes)


def test_circuit_view_level_of_detail(actx, s):
    st = dict(s, mode="mass", value=0.95)
    n_edges = len(actx.resolve(st).circuit.edges)
    assert n_edges > 10
    fig, info, els = circuit_view(actx, st, max_edges=10)
    lines = set(graph3d.drawn_edges_of(fig))
    assert len(lines) == 10
    text = " ".join(str(getattr(x, "children", x)) for x in info)
    assert f"{n_edges - 10} less important circuit edges hidden" in text
    fig, info, els = circuit_view(actx, st)
    assert len(graph3d.drawn_edges_of(fig)) == min(n_edges, 1500)
    kernels = [e for e in els if e.get("classes") == "kernel"]
    assert 0 < len(kernels) <= 80 and all(e["data"]["img"].endswith(".png") for e in kernels)


def test_model_run_target_is_cached(actx, s):
    st = dict(s, target="class:1", set="all")
    assert actx.resolve(st).pending
    key = actx.compute_run(st)
    r = actx.resolve(st)
    assert not r.pending and r.run_key == key and len(r.circuit.edges) >= 0
    assert r.edge_scores.shape == (actx.prepped(s["model"]).graph.num_edges,)
    # the target's sink is the class node, so the circuit ends there
    g = actx.prepped(s["model"]).graph
    if len(r.circuit.edges):
        assert set(g.edge_target[r.circuit.edges[g.edges[r.circuit.edges, 0] == len(g.layers) - 1]]) <= {g.layers[-1].node_offset + 1}


# -- activations and ablation --------------------------------------------------------------------------
def _forward_reference(model, x):
    """Outputs of every Conv2d/Linear by hooking a fresh copy (the obviously-right way)."""
    import copy

    m = copy.deepcopy(model).eval()
    outs = {}
    for n, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o[0].detach().clone()))
    with torch.no_grad():
        y = m(x)
    return outs, y[0]


def test_activations_match_reference_and_edge_maps_sum_to_conv(actx, pm, s):
    img = actx.image(s["model"], s["image"])
    acts = A.run(pm, s["image"], img)
    x = A.to_tensor(img, pm)
    ref, logits = _forward_reference(pm.load_model(), x)
    g = pm.graph
    for layer in g.layers[1:]:
        assert np.allclose(acts.outputs[layer.name], ref[layer.name].numpy(), atol=1e-5)
    assert np.allclose(acts.logits, logits.numpy(), atol=1e-5)
    node = g.layers[1].node_offset + 2
    assert np.array_equal(A.node_map(g, acts, node, relu=True), np.maximum(acts.outputs[g.layers[1].name][2], 0))
    # a conv's output channel = sum of its kernels' output maps + bias
    conv = next(l for l in g.layers if l.kind == "conv" and l.in_channels > 1)
    bias = dict(pm.load_model().named_modules())[conv.name].bias
    j = 1
    total = sum(A.edge_maps(g, acts, np.asarray(pm.kernels(conv.name)[j, i]), g.edge_index(conv.name, j, i))[1]
                for i in conv.in_channels_of(j))
    total = total + (bias[j].item() if bias is not None else 0)
    assert np.allclose(total, acts.outputs[conv.name][j], atol=1e-4)


def test_ablation_matches_zeroed_weights(actx, pm, s):
    g = pm.graph
    img = actx.image(s["model"], s["image"])
    conv = next(l for l in g.layers if l.kind == "conv" and l.in_channels > 1)
    e = g.edge_index(conv.name, 0, 1)
    node = g.node_id(g.layers[1].node_offset + 0)
    acts = A.run(pm, s["image"], img, [f"e{e}", node])
    model = pm.load_model()
    mods = dict(model.named_modules())
    with torch.no_grad():
        mods[conv.name].weight[0, 1] = 0
    hook = mods[g.layers[1].name].register_forward_hook(lambda m, i, o: o * torch.tensor(
        [0.0] + [1.0] * (o.shape[1] - 1)).view(1, -1, 1, 1))
    ref, logits = _forward_reference(model, A.to_tensor(img, pm))
    hook.remove()
    assert np.allclose(acts.logits, logits.numpy(), atol=1e-5)
    assert np.allclose(acts.outputs[g.layers[1].name][0], 0)
    base = A.run(pm, s["image"], img)
    assert not np.allclose(base.logits, acts.logits)
    with pytest.raises(ViscnnError):
        A.run(pm, s["image"], img, ["e999999999"])
    with pytest.raises(ViscnnError):
        A.run(pm, s["image"], img, ["nolayer:1"])


def test_panels_and_click_mapping(actx, pm, s):
    g = pm.graph
    img = actx.image(s["model"], s["image"])
    acts = A.run(pm, s["image"], img)
    r = actx.resolve(s)
    node = g.layers[2].node_offset + 1
    kids = node_panel(actx, dict(s, sel=g.node_id(node)), node, acts, r.edge_scores)
    assert kids[1].children[0].id == "act-map"
    rows = [k for k in kids if getattr(k, "className", "") == "edge-row"]
    assert len(rows) == min(5, g.layers[2].in_channels // g.layers[2].groups)
    kids = edge_panel(actx, s, 3, acts, r.edge_scores)
    assert "Edge e3" in kids[0].children
    assert sel_from_click(g, {"points": [{"customdata": node}]}) == g.node_id(node)
    assert sel_from_click(g, {"points": [{"customdata": -8}]}) == "e7"
    assert sel_from_click(g, {"points": [{"customdata": 10 ** 9}]}) == ""
    # a class node's panel: probabilities over all classes, its weight per channel, its gallery images
    from viscnn.app.callbacks_panels import class_panel, find_node

    cls = g.layers[-1].node_offset + 2
    panel = class_panel(actx, dict(s, sel=g.node_id(cls)), cls, acts)
    graphs = [k.children[0] for k in panel.children if getattr(k, "children", None) and hasattr(k.children[0], "figure")]
    assert [gr.id for gr in graphs] == ["class-logits", "class-weights"]
    bars = graphs[0].figure["data"][0]
    assert len(bars["x"]) == len(pm.classes) and abs(sum(bars["x"]) - 1) < 1e-6
    assert len(graphs[1].figure["data"][0]["x"]) == g.layers[-1].in_channels
    # search: a node id, a class name in any case, a unique class-name fragment; a clear error otherwise
    assert find_node(pm, g.node_id(node)) == node
    assert find_node(pm, pm.classes[2].upper()) == cls and find_node(pm, "class:" + pm.classes[2]) == cls
    assert find_node(pm, "Trous") == g.layers[-1].node_offset + pm.classes.index("Trouser")
    with pytest.raises(ViscnnError, match="no node or class"):
        find_node(pm, "zzz")
    assert sel_from_click(g, None) == ""


def test_receptive_field_box(actx, pm, s):
    from viscnn.receptive_field import receptive_field

    g = pm.graph
    c, h, w = pm.input_shape
    for layer in g.conv_layers():
        y, x = layer.out_size[0] // 2, layer.out_size[1] // 2
        box = rf_box_of(actx, s["model"], f"{layer.name}:0", y, x)
        assert box == tuple(receptive_field(pm.load_model(), layer.name, y, x, (h, w)))
        assert 0 <= box[0] <= y * (h // layer.out_size[0]) < box[1] <= h


# -- snapshots -----------------------------------------------------------------------------------------
def test_snapshot_roundtrip_and_html(actx, pm, s, tmp_path):
    st = dict(s, mode="mass", value=0.7)
    r = actx.resolve(st)
    d = S.snapshot_dict(s["model"], st, pm.graph, r.circuit.nodes, r.circuit.edges, r.node_scores, r.edge_scores)
    d2 = S.parse_snapshot(json.dumps(d).encode())
    assert d2["circuit"]["edge_index"] == [int(e) for e in r.circuit.edges]
    assert d2["circuit"]["edge_scores"] == [round(float(r.edge_scores[e]), 7) for e in r.circuit.edges]
    from viscnn.app import state as stt

    back, warns = stt.decode(S.snapshot_search(d2), actx.defaults(s["model"]), pm.metrics, pm.layouts)
    assert warns == [] and back == dict(st, value=0.7)
    assert S.check_circuit(d2, pm.graph, r.circuit.nodes, r.circuit.edges) is None
    assert "differs" in S.check_circuit(d2, pm.graph, r.circuit.nodes[:-1], r.circuit.edges)
    out = tmp_path / "c.html"
    S.write_snapshot_html(out, pm.graph, r.circuit, prepped=pm, settings=st)
    html = out.read_text()
    assert "Plotly.newPlot" in html and not re.search(r"<script[^>]+src=", html) and "http://" not in html.split("<script>")[0]
    payload = json.loads(html.split('<script id="payload" type="application/json">')[1].split("</script>")[0])
    assert len(payload["panels"]) == min(len(r.circuit.nodes), S.HTML_MAX_PANEL_NODES)
    p = next(v for v in payload["panels"].values() if v["incoming"] and v["fv"])
    assert p["fv"].startswith("data:image/png;base64,") and p["incoming"][0]["kernel"].startswith("data:image/png")
    # the CLI path: no prepped folder, kernels from the model
    S.write_snapshot_html(tmp_path / "m.html", pm.graph, r.circuit, model=pm.load_model())
    assert "Plotly.newPlot" in (tmp_path / "m.html").read_text()


@pytest.mark.parametrize("blob,msg", [
    (b"\xff\xfe", "not valid JSON"), (b"[1, 2]", "not a viscnn snapshot"),
    (b'{"format": "viscnn.snapshot", "version": 2}', "version"),
    (b'{"format": "viscnn.snapshot", "version": 1, "model": "x", "settings": {}}', "circuit"),
    (b'{"format": "viscnn.snapshot", "version": 1, "settings": {}, "circuit": {"nodes": [], "edges": []}}', "model"),
    (b"{" * 6_000_000, "larger"),
])
def test_malformed_snapshots(blob, msg):
    with pytest.raises(ViscnnError, match=msg):
        S.parse_snapshot(blob)


# -- server, routes, CLI ---------------------------------------------------------------------------------
def test_routes_serve_only_prepped_data(app, actx, pm, s):
    c = app.server.test_client()
    name = app.model_name
    g = pm.graph
    node = g.layers[1].node_offset
    r = c.get(f"/viscnn-img/{name}/fv/{node}.png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert c.get(f"/viscnn-img/{name}/kernel/0.png").mimetype == "image/png"
    assert c.get(f"/viscnn-img/{name}/ex/{node}/0.png").mimetype == "image/png"
    assert c.get(f"/viscnn-img/{name}/input/{s['image']}").mimetype == "image/png"
    edges, imgs, _ = pm.edge_featurevis()
    if imgs is not None and len(edges):
        assert c.get(f"/viscnn-img/{name}/efv/{edges[0]}.png").mimetype == "image/png"
        missing = next(e for e in range(g.num_edges) if e not in set(edges.tolist()))
        assert c.get(f"/viscnn-img/{name}/efv/{missing}.png").status_code == 404
    for bad in (f"/viscnn-img/{name}/fv/0.png", f"/viscnn-img/{name}/fv/99999.png", f"/viscnn-img/nosuch/fv/1.png",
                f"/viscnn-img/{name}/kernel/{g.num_edges}.png", f"/viscnn-img/{name}/input/img:nosuch.png",
                f"/viscnn-img/{name}/input/img:..%2Fmanifest.json", f"/viscnn-img/{name}/input/up:0000"):
        r = c.get(bad)
        assert r.mimetype != "image/png" and b"viscnn.prepped" not in r.data, bad
    key = actx.add_upload(np.full(pm.input_shape[1:], 7, np.uint8) if pm.input_shape[0] == 1
                          else np.full((*pm.input_shape[1:], 3), 7, np.uint8))
    assert c.get(f"/viscnn-img/{name}/input/{key}").mimetype == "image/png"


def test_unknown_model_and_cli_errors(app, actx, tmp_path, capsys):
    from viscnn.cli import main

    with pytest.raises(ViscnnError, match="unknown prepped model"):
        create_app(actx.models_dir, "nosuch", cache_dir=tmp_path / "c")
    assert main(["serve", "nosuch", "--models-dir", str(actx.models_dir)]) == 2
    assert "unknown prepped model 'nosuch'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["serve", app.model_name, "--models-dir", str(actx.models_dir), "--snapshot", str(bad)]) == 2
    with pytest.raises(ViscnnError, match="bad model name"):
        actx.defaults("../etc")


def test_grid_fallback(pm):
    from viscnn.app.context import grid_layout

    g = pm.graph
    xy = grid_layout(g)
    for layer in g.layers:
        side = int(np.ceil(np.sqrt(layer.channels)))
        for ch in range(layer.channels):
            assert tuple(xy[layer.node_offset + ch]) == (ch % side, ch // side)


def _post(client, app, needle, inputs, changed, state=()):
    key = next(k for k in app.callback_map if needle in k)
    outs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in key.strip(".").split("...")]
    r = client.post("/_dash-update-component", json={"output": key, "outputs": outs, "inputs": inputs,
                                                     "changedPropIds": changed, "state": list(state)})
    assert r.status_code == 200, r.data[:500]
    return r.get_json()["response"]


def test_model_picker_and_url_sync(tmp_path):
    """Two prepped models: the picker lists both; choosing one navigates to its URL; a URL opens its view."""
    from app_fixture import make_prepped
    from viscnn.app import state as stt
    from viscnn.app.callbacks_state import CONTROLS, _to_controls

    make_prepped(tmp_path, "one")
    make_prepped(tmp_path, "two", seed=1)
    app = create_app(tmp_path, "one", cache_dir=tmp_path / "cache")
    assert app.layout()["model"].options == ["one", "two"]
    c = app.server.test_client()
    s = app.viscnn.defaults("one")
    vals = _to_controls(s)
    iv = [c_ for c_, _ in CONTROLS].index("value")

    def inputs(search, values):
        return [{"id": "url", "property": "search", "value": search}] + [
            {"id": c_, "property": p, "value": v} for (c_, p), v in zip(CONTROLS, values)]
    # page load with a link: the controls and the state come from the URL
    link = stt.encode(dict(s, model="two", mode="topk", value=33, set="Bag - all"))
    resp = _post(c, app, "url.search", inputs(link, [None] * len(vals)), ["url.search"],
                 [{"id": "state", "property": "data", "value": None}])
    assert resp["state"]["data"]["model"] == "two" and resp["state"]["data"]["value"] == 33
    assert resp["mode"]["value"] == "topk" and resp["imageset"]["value"] == "Bag - all"
    # picking the other model reloads the page on its URL
    resp = _post(c, app, "url.search", inputs(stt.encode(s), ["two"] + vals[1:]), ["model.value"],
                 [{"id": "state", "property": "data", "value": s}])
    assert resp["nav"]["href"] == "/?model=two"
    # changing a control writes the URL
    resp = _post(c, app, "url.search", inputs(stt.encode(s), vals[:iv] + ["0.8"] + vals[iv + 1:]), ["value.value"],
                 [{"id": "state", "property": "data", "value": s}])
    assert "value=0.8" in resp["url"]["search"] and resp["state"]["data"]["value"] == 0.8
    # an unknown model in a link: a message, and the default model's view
    resp = _post(c, app, "url.search", inputs("?model=nosuch", [None] * len(vals)), ["url.search"],
                 [{"id": "state", "property": "data", "value": None}])
    assert "unknown prepped model 'nosuch'" in resp["url-msg"]["children"] and resp["state"]["data"]["model"] == "one"


def test_serve_snapshot_opens_its_view(app, actx, pm, s, tmp_path):
    st = dict(s, mode="topk", value=77)
    r = actx.resolve(st)
    d = S.snapshot_dict(s["model"], st, pm.graph, r.circuit.nodes, r.circuit.edges, r.node_scores, r.edge_scores)
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(d))
    a2 = create_app(actx.models_dir, app.model_name, snapshot=str(f), cache_dir=tmp_path / "c")
    resp = a2.server.test_client().get("/")
    assert resp.status_code == 302 and "mode=topk&value=77" in resp.headers["Location"]
    assert a2.server.test_client().get("/?model=x").status_code == 200


def test_first_view_comes_in_the_layout(app, actx, pm, s):
    """The page arrives with the default view drawn (no round trip before the first paint); loading it
    does not redraw it, while a link to another view still does."""
    from viscnn.app import state as stt
    from viscnn.app.callbacks_state import CONTROLS, _to_controls
    from viscnn.app.figures.graph3d import count_drawn

    lay = app.layout()  # outside a request: the default view
    fig, _, els = circuit_view(actx, s)
    assert lay["state"].data == s and lay["graph3d"].figure == fig and lay["cyto-data"].data == els
    assert lay["value"].value == s["value"] and lay["metric"].options == pm.metrics
    assert lay["drawn-count"].children == str(count_drawn(fig))
    initial = {c["output"]: c["prevent_initial_call"] for c in app._callback_list}
    redraw = [k for k in initial if "graph3d.figure" in k or k == "gallery.children" or k.startswith("..run-request.data")]
    assert len(redraw) == 3 and all(initial[k] for k in redraw)

    c = app.server.test_client()

    def load(search):
        inputs = [{"id": "url", "property": "search", "value": search}] + [
            {"id": c_, "property": p, "value": v} for (c_, p), v in zip(CONTROLS, _to_controls(s))]
        return _post(c, app, "url.search", inputs, ["url.search"], [{"id": "state", "property": "data", "value": s}])
    resp = load("")
    assert "state" not in resp and "value" not in resp and "model=" in resp["url"]["search"]
    resp = load(stt.encode(dict(s, value=0.8)))
    assert resp["state"]["data"]["value"] == 0.8 and resp["value"]["value"] == 0.8
    # the layout request of a page opened on a link draws the link's view (the query comes in the Referer)
    link = dict(s, mode="topk", value=7)
    with app.server.test_request_context("/_dash-layout", headers={"Referer": "http://localhost/" + stt.encode(link)}):
        lay = app.layout()
    assert lay["state"].data == link and lay["graph3d"].figure == circuit_view(actx, link)[0]
    assert lay["mode"].value == "topk" and lay["drawn-count"].title == "topk=7"
    with app.server.test_request_context("/_dash-layout", headers={"Referer": "http://elsewhere/" + stt.encode(link)}):
        assert app.layout()["state"].data == s


def test_images_per_set_note_for_precomputed_scores(actx, pm):
    from types import SimpleNamespace

    from viscnn.app.callbacks_graph import _count_props

    pre = _count_props(pm, SimpleNamespace(run_key=None, query=queries.Query("loss", "all", "taylor")))
    assert pre["nimages-note"]["children"].startswith("scores precomputed on the whole set")
    assert "unused" not in pre["nimages"]["className"]  # the count still sets the jobs' images
    ran = _count_props(pm, SimpleNamespace(run_key="k", query=queries.Query("class:0", "all", "taylor")))
    assert ran == {"nimages-note": {"children": ""}, "nimages": {"className": "radio-compact"}}
    meth = _count_props(pm, SimpleNamespace(run_key=None, query=queries.Query("loss", "all", "taylor"),
                                            run_info={"method": {"method": "learned"}}))
    assert "unused" not in meth["nimages"]["className"]
    assert meth["nimages-note"]["children"].startswith("used by the learned circuit; scores precomputed")
