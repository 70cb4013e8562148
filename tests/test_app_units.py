"""App building blocks that need no prepped model: URL state, upload decoding, figure builders."""

import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from viscnn.app import state as st
from viscnn.app.figures import colors, graph3d
from viscnn.app.figures.panels import heatmap, image_figure, kernel_rgb
from viscnn.app.uploads import data_url_bytes, decode_image
from viscnn.errors import ViscnnError
from viscnn.graph import build_graph


# -- URL state ------------------------------------------------------------------------------------
DEFAULTS = st.default_state("m", ["taylor", "taylor_signed"], ["mds", "pca", "grid"], ["000.png"])


def test_state_roundtrip():
    s = dict(DEFAULTS, target="class:Sneaker - 0.5*unit:conv2:3", set="Sneaker - all", mode="topk", value=250,
             layout="grid", relu=False, sel="conv1:4", ablate=["conv1:2", "e17"], image="up:abcdef")
    back, warns = st.decode(st.encode(s), DEFAULTS, ["taylor", "taylor_signed"], ["mds", "pca", "grid"])
    assert warns == []
    assert back == dict(s, value=250.0)


def test_state_bad_values_fall_back_with_warnings():
    back, warns = st.decode("?metric=nope&layout=zzz&mode=weird&value=abc&relu=0", DEFAULTS, ["taylor"], ["mds"])
    assert back["metric"] == "taylor" and back["layout"] == "mds" and back["mode"] == "mass"
    assert back["value"] == DEFAULTS["value"] and back["relu"] is False
    assert len(warns) == 4 and any("nope" in w for w in warns)
    assert st.decode("", DEFAULTS, ["taylor"], ["mds"]) == (DEFAULTS, [])


@pytest.mark.parametrize("mode,value,expect", [("mass", 0.4, {"mass": 0.4}), ("topk", 30, {"keep": 30}),
                                               ("score", -1.5, {"min_score": -1.5})])
def test_threshold_kwargs(mode, value, expect):
    assert st.threshold_kwargs(mode, value) == expect


@pytest.mark.parametrize("mode,value", [("mass", 0), ("mass", 1.5), ("topk", 2.5), ("topk", 0), ("score", "x"),
                                        ("mass", None), ("mass", float("nan")), ("bogus", 1)])
def test_threshold_kwargs_rejects(mode, value):
    with pytest.raises(ViscnnError):
        st.threshold_kwargs(mode, value)


# -- uploads ------------------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_png_and_jpeg_to_model_shape():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    g = decode_image(_encode(Image.fromarray(rgb)), 1, (28, 28))
    assert g.shape == (28, 28) and g.dtype == np.uint8
    c = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=95), 3, (32, 32))
    assert c.shape == (32, 32, 3)
    # centre crop then resize: a uniform image stays uniform
    flat = decode_image(_encode(Image.new("L", (50, 30), 77)), 1, (28, 28))
    assert (flat == 77).all()


def test_decode_alpha_and_16bit():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent -> white background
    assert (decode_image(_encode(rgba), 1, (10, 10)) == 255).all()
    a16 = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 100)
    out = decode_image(_encode(Image.fromarray(a16)), 1, (20, 20))
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("data,msg", [
    (b"", "empty"),
    (b"hello, this is text", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
])
def test_decode_rejects_garbage(data, msg):
    with pytest.raises(ViscnnError, match=msg):
        decode_image(data, 1, (28, 28))


def test_decode_rejects_truncated_gif_bomb_and_odd_shapes():
    good = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 60), dtype=np.uint8)))
    with pytest.raises(ViscnnError, match="corrupt|truncated"):
        decode_image(good[: len(good) // 2], 1, (28, 28))
    with pytest.raises(ViscnnError, match="unsupported image format GIF"):
        decode_image(_encode(Image.new("L", (10, 10)), "GIF"), 1, (28, 28))
    bomb = _encode(Image.new("1", (20000, 20000)))  # small file, 400 M pixels
    assert len(bomb) < 200_000
    with pytest.raises(ViscnnError, match="too large"):
        decode_image(bomb, 1, (28, 28))
    with pytest.raises(ViscnnError, match="odd shape"):
        decode_image(_encode(Image.new("L", (2000, 3))), 1, (28, 28))


def test_decode_restores_pillow_limit():
    before = Image.MAX_IMAGE_PIXELS
    decode_image(_encode(Image.new("L", (8, 8))), 1, (4, 4))
    assert Image.MAX_IMAGE_PIXELS == before


def test_data_url_bytes():
    assert data_url_bytes("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    for bad in ("", "nocomma", "data:image/png,abc", "data:x;base64,@@@"):
        with pytest.raises(ViscnnError):
            data_url_bytes(bad)
    with pytest.raises(ViscnnError, match="larger"):
        data_url_bytes("data:x;base64," + "A" * 4000, max_bytes=1000)


# -- figures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Conv2d(6, 5, 1))
    return build_graph(m, (12, 12))


def test_node_positions(graph):
    xy = np.random.default_rng(0).normal(size=(graph.num_nodes, 2))
    pos = graph3d.node_positions(graph, xy)
    for l in graph.layers:
        sl = slice(l.node_offset, l.node_offset + l.channels)
        assert np.allclose(pos[sl, 0], l.depth * graph3d.LAYER_GAP)
        assert np.allclose(pos[sl, 1:].mean(0), 0, atol=1e-5)
    # within a layer, positions are the layout up to one scale and shift
    l = graph.layers[2]
    sl = slice(l.node_offset, l.node_offset + l.channels)
    d_layout = np.linalg.norm(xy[sl][:, None] - xy[sl][None], axis=-1)
    d_pos = np.linalg.norm(pos[sl, 1:][:, None] - pos[sl, 1:][None], axis=-1)
    ratio = d_pos[d_layout > 0] / d_layout[d_layout > 0]
    assert np.allclose(ratio, ratio[0], rtol=1e-4)


@pytest.fixture(scope="module")
def resnet_graph():
    import torchvision

    return build_graph(torchvision.models.resnet18(weights=None).eval(), (32, 32), in_channels=3, include_classes=True)


def test_branches_side_by_side_and_deep_labels_vertical(resnet_graph):
    g = resnet_graph
    pos = graph3d.node_positions(g, np.random.default_rng(0).normal(size=(g.num_nodes, 2)))
    xs = [float(pos[l.node_offset, 0]) for l in g.layers]
    # every layer has its own place along depth (a block's conv and its 1x1 skip conv no longer coincide)
    assert len(set(np.round(xs, 6))) == len(g.layers)
    by = {l.name: x for l, x in zip(g.layers, xs)}
    assert by["layer2.0.conv1"] < by["layer2.0.downsample.0"] < by["layer2.0.conv2"]
    # depth order is kept
    assert all(by[a.name] < by[b.name] for a in g.layers for b in g.layers if a.depth < b.depth)
    # 23 layers do not fit horizontally in the panel: the names turn vertical, and then neighbours are at
    # least a line height apart at the planned panel width
    assert graph3d.label_angle(g, pos) == -90
    span = max(xs) - min(xs)
    gap_px = min(np.diff(sorted(xs))) * graph3d.PANEL_PX * 0.8 / span
    assert gap_px >= graph3d.LABEL_FONT * 1.15 and graph3d.label_style(g, pos)[1] == graph3d.LABEL_FONT
    ann = graph3d.layer_labels(g, pos)
    assert all(a["textangle"] == -90 for a in ann)


def test_small_model_labels_horizontal(graph):
    pos = graph3d.node_positions(graph, np.random.default_rng(0).normal(size=(graph.num_nodes, 2)))
    assert graph3d.label_angle(graph, pos) == 0


def test_select_drawn_matches_sorting_reference():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=500)
    edges = np.sort(rng.choice(500, 200, replace=False))
    got = graph3d.select_drawn(edges, scores, 50)
    ref = np.sort(sorted(edges, key=lambda e: -abs(scores[e]))[:50])
    assert np.array_equal(got, ref)
    assert np.array_equal(graph3d.select_drawn(edges, scores, 1000), edges)


def test_edge_traces_cover_each_link_once(graph):
    rng = np.random.default_rng(2)
    pos = graph3d.node_positions(graph, rng.normal(size=(graph.num_nodes, 2)))
    scores = rng.normal(size=graph.num_edges)
    drawn = np.arange(0, graph.num_edges, 2)
    traces = graph3d.edge_traces(graph, pos, drawn, scores)
    assert 1 <= len(traces) <= 2 * graph3d.N_BUCKETS
    P = graph3d.PTS
    seen = []
    for t in traces:
        x = t["x"]
        assert len(x) % P == 0 and all(x[i] is None for i in range(P - 1, len(x), P))
        neg = t["line"]["color"] == graph3d.edge_color(True, int(t["name"][-1]) - 1)
        for k in range(0, len(x), P):
            e = -t["customdata"][k + 1] - 1  # the midpoint is the edge
            seen.append(e)
            assert (scores[e] < 0) == neg
            src = graph.links[graph.links[:, 0] == e, 1][0]
            tgt = graph.edge_target[e]
            # the end vertices carry their nodes, so a click there picks the node
            assert t["customdata"][k] == src and t["customdata"][k + 2] == tgt
            assert math.isclose(x[k], round(float(pos[src, 0]), 3)) and math.isclose(x[k + 2], round(float(pos[tgt, 0]), 3))
            assert math.isclose(x[k + 1], round((float(pos[src, 0]) + float(pos[tgt, 0])) / 2, 3), abs_tol=2e-3)
            assert math.isclose(t["y"][k + 2], round(float(pos[tgt, 1]), 3), abs_tol=1e-3)
            assert t["text"][k + 1].startswith(f"edge e{e}: {graph.node_id(src)} → {graph.node_id(tgt)}")
    assert sorted(seen) == sorted(drawn.tolist())
    # bigger |score| never gets a thinner line than a smaller one
    width = {-t["customdata"][k + 1] - 1: t["line"]["width"] for t in traces for k in range(0, len(t["x"]), P)}
    order = sorted(width, key=lambda e: abs(scores[e]))
    assert all(width[a] <= width[b] for a, b in zip(order, order[1:]))
    # with signs given, colour follows them, not the scores
    flipped = graph3d.edge_traces(graph, pos, drawn, np.abs(scores), signs=-scores)
    for t in flipped:
        for k in range(0, len(t["x"]), P):
            e = -t["customdata"][k + 1] - 1
            assert t["line"]["color"].startswith(graph3d.edge_color(scores[e] > 0, 0)[:-5])


def test_graph_figure_counts(graph):
    rng = np.random.default_rng(3)
    pos = graph3d.node_positions(graph, rng.normal(size=(graph.num_nodes, 2)))
    ns = rng.random(graph.num_nodes)
    fig = graph3d.graph_figure(graph, pos, [0, 3, 5], np.array([1, 4, 9]), ns, rng.random(graph.num_edges), selected=3)
    assert graph3d.count_drawn(fig) == 3 and graph3d.drawn_edges_of(fig) == [1, 4, 9]
    nodes = graph3d.nodes_of(fig)  # {node: (width px, colour, hover)}
    assert sorted(nodes) == list(range(graph.num_nodes))
    assert nodes[3][0] == max(w for w, _, _ in nodes.values())  # the selection is drawn largest
    assert nodes[1][0] < nodes[0][0]  # a node outside the circuit is drawn small
    assert next(t for t in fig["data"] if t["name"] == "selected")["customdata"] == [3]
    assert nodes[1][1] == colors.INACTIVE and nodes[0][1].startswith("rgb(")
    # every point of a node's cross carries its index and hover (the gaps none), so a click anywhere on it picks it
    for t in (t for t in fig["data"] if t["name"] == "nodes"):
        assert t["mode"] == "lines" and len(t["x"]) % graph3d.NODE_PTS == 0
        cd, tx = t["customdata"], t["text"]
        for j in range(0, len(cd), graph3d.NODE_PTS):
            assert [cd[j + k] is None for k in range(graph3d.NODE_PTS)] == [False, False, True] * 2
            assert len({cd[j + k] for k in (0, 1, 3, 4)}) == 1 and len({tx[j + k] for k in (0, 1, 3, 4)}) == 1
    # hover: id, layer, score and rank among the circuit's nodes
    best = max([0, 3, 5], key=lambda n: ns[n])
    assert "rank 1 of 3 circuit nodes" in nodes[best][2] and graph.node_id(best) in nodes[best][2]
    assert "not in the circuit" in nodes[1][2]
    # layer names are scene annotations (cheap page text), one per layer at the layer's x, above all nodes
    ann = fig["layout"]["scene"]["annotations"]
    assert [a["text"] for a in ann] == [l.name for l in graph.layers]
    assert [a["x"] for a in ann] == [float(pos[l.node_offset, 0]) for l in graph.layers]
    assert all(a["z"] > pos[:, 2].max() for a in ann) and all(t["mode"] != "text" for t in fig["data"])
    # the fixed axis ranges hold every node
    sc = fig["layout"]["scene"]
    for i, ax in enumerate("xyz"):
        lo, hi = sc[f"{ax}axis"]["range"]
        assert lo < pos[:, i].min() and hi > pos[:, i].max()
    # centring on a node: the camera centre maps the node to the middle of the normalised scene box
    c = graph3d.graph_figure(graph, pos, [0], np.array([1]), ns, ns[:0].tolist() + list(rng.random(graph.num_edges)),
                             center_on=4)["layout"]["scene"]["camera"]["center"]
    for i, ax in enumerate("xyz"):
        lo, hi = sc[f"{ax}axis"]["range"]
        assert math.isclose(c[ax], ((pos[4, i] - lo) / (hi - lo) - 0.5) * graph3d.ASPECT[ax], abs_tol=1e-3)


def test_one_diverging_map_everywhere():
    cs = colors.diverging_colorscale()
    assert cs[0] == [0.0, colors.NEG] and cs[-1] == [1.0, colors.POS]
    assert tuple(colors.diverging_rgb(1.0)) == tuple(int(colors.POS[i:i + 2], 16) for i in (1, 3, 5))
    assert tuple(colors.diverging_rgb(-5.0)) == tuple(int(colors.NEG[i:i + 2], 16) for i in (1, 3, 5))
    # the 3D edge colours are the map's ends
    assert graph3d.edge_color(False, 3).startswith("rgba(%d,%d,%d," % tuple(colors.diverging_rgb(1.0)))
    assert graph3d.edge_color(True, 3).startswith("rgba(%d,%d,%d," % tuple(colors.diverging_rgb(-1.0)))
    assert colors.symmetric_limit([0, 0]) == 1.0 and colors.symmetric_limit([-3, 2]) == 3.0


def test_kernel_rgb_and_heatmaps():
    k = np.array([[1.0, 0.0], [-1.0, 0.5]])
    rgb = kernel_rgb(k)
    assert tuple(rgb[0, 1]) == tuple(int(v) for v in colors.diverging_rgb(0.0))  # zero is the map's neutral
    assert rgb[0, 0, 0] > rgb[0, 0, 2] and rgb[1, 0, 2] > rgb[1, 0, 0]  # red positive, blue negative
    assert "#%02x%02x%02x" % tuple(rgb[0, 0]) == colors.POS and "#%02x%02x%02x" % tuple(rgb[1, 0]) == colors.NEG
    assert kernel_rgb(k, upscale=4).shape == (8, 8, 3)
    h = heatmap(np.arange(6.0).reshape(2, 3) - 2)
    assert h["data"][0]["zmin"] == -3 and h["data"][0]["zmax"] == 3
    # the heatmap's colour scale is the same diverging map, red at the positive end (no reversescale)
    cs = h["data"][0]["colorscale"]
    assert cs[-1][1] == colors.POS and cs[0][1] == colors.NEG and not h["data"][0].get("reversescale")
    f = image_figure(np.zeros((10, 12), np.uint8), box=(1, 4, 2, 6))
    r = f["layout"]["shapes"][0]
    assert (r["x0"], r["x1"], r["y0"], r["y1"]) == (1.5, 5.5, 0.5, 3.5)
    assert f["data"][0]["source"].startswith("data:image/png;base64,")


def test_huge_file_is_refused_before_decoding():
    blob = "data:image/png;base64," + base64.b64encode(b"\0" * (11 * 1024 * 1024)).decode()
    with pytest.raises(ViscnnError, match="larger than 10 MB"):
        data_url_bytes(blob)


def test_googlenet_labels_never_overlap():
    """59 layers with four parallel branches per Inception block: where even the smallest font does not fit
    between neighbours, names are thinned so that the drawn ones keep a line height of room."""
    import torchvision

    m = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    g = build_graph(m, (64, 64), in_channels=3, include_classes=True)
    pos = graph3d.node_positions(g, np.random.default_rng(0).normal(size=(g.num_nodes, 2)))
    ann = graph3d.layer_labels(g, pos)
    xs = np.array([float(pos[l.node_offset, 0]) for l in g.layers])
    px = graph3d.PANEL_PX * 0.8 / float(xs.max() - xs.min())
    ax = sorted(a["x"] for a in ann)
    font = ann[0]["font"]["size"]
    assert font >= 7 and all(a["textangle"] == -90 for a in ann)
    assert min(np.diff(ax)) * px >= font * graph3d.LINE_HEIGHT - 1e-9
    names = {a["text"] for a in ann}
    assert names <= {l.name for l in g.layers} and len(names) >= len(g.layers) // 3
    assert g.layers[0].name in names


def test_class_labels_apart_on_screen():
    """Class names are spread along the screen's vertical at the default camera (y moves a point up the
    screen too), so two classes at the same z but different depth do not print over each other."""
    from torch import nn

    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    graph = build_graph(m, (12, 12), include_classes=True)
    pos = graph3d.node_positions(graph, np.random.default_rng(3).normal(size=(graph.num_nodes, 2)))
    last = graph.layers[-1]
    sl = slice(last.node_offset, last.node_offset + last.channels)
    pos[sl, 2] = 0.0  # every class at one height: only depth (y) and the spreading separate them
    names = [f"class {i}" for i in range(last.channels)]
    ann = graph3d.class_labels(graph, pos, names)
    up, per = graph3d._screen_up(pos)
    v = np.array([a["y"] * per[0] * up[0] + a["z"] * per[1] * up[1] for a in ann])
    gap = 0.07 * graph3d.ASPECT["z"] * up[1]
    assert np.min(np.diff(np.sort(v))) >= gap * 0.99  # z is rounded to 3 decimals
    assert [a["x"] for a in ann] == [float(x) for x in pos[sl, 0]] and [a["y"] for a in ann] == [float(y) for y in pos[sl, 1]]


def test_big_graphs_draw_nodes_as_one_marker_trace(graph, monkeypatch):
    """Above CROSS_MAX_NODES drawn nodes, one point per node (the threshold payload stays small)."""
    rng = np.random.default_rng(4)
    pos = graph3d.node_positions(graph, rng.normal(size=(graph.num_nodes, 2)))
    args = (graph, pos, [0, 3, 5], np.array([1, 4, 9]), rng.random(graph.num_nodes), rng.random(graph.num_edges))
    small = graph3d.nodes_of(graph3d.graph_figure(*args))
    monkeypatch.setattr("viscnn.app.figures.graph3d_nodes.CROSS_MAX_NODES", 2)
    fig = graph3d.graph_figure(*args)
    nodes = [t for t in fig["data"] if t["name"] == "nodes"]
    assert len(nodes) == 1 and nodes[0]["mode"] == "markers" and nodes[0]["customdata"] == list(range(graph.num_nodes))
    big = graph3d.nodes_of(fig)
    assert sorted(big) == sorted(small)
    assert all(big[n][1:] == small[n][1:] for n in big)  # the same colours and hover either way
    assert graph3d.count_drawn(fig) == 3
