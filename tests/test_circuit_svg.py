"""The 2D circuit's SVG export (drawn on the server from the diagram's elements): every node, kernel and
line of the diagram is in the file, pictures are embedded, text is escaped, and bad payloads are refused."""

import base64
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from app_fixture import make_prepped
from viscnn.app.figures import circuit_svg as S
from viscnn.app.figures import cytoscape as cy
from viscnn.errors import ViscnnError

NS = {"s": "http://www.w3.org/2000/svg"}
PNG = b"\x89PNG\r\n\x1a\nfake"


@pytest.fixture(scope="module")
def diagram(tmp_path_factory):
    from viscnn.importance.circuits import extract_circuit
    from viscnn.prepped import PreppedModel

    root = tmp_path_factory.mktemp("svg")
    make_prepped(root, "tiny")
    pm = PreppedModel.open("tiny", root)
    g = pm.graph
    es = np.asarray(pm.edge_scores("taylor_signed", "all"), np.float64)
    ns = np.zeros(g.num_nodes)
    np.add.at(ns, g.edge_target, np.abs(es))
    c = extract_circuit(g, ns, np.abs(es), keep=30)
    sel = f"e{int(c.edges[0])}"
    r = cy.circuit_elements(g, c.nodes, c.edges, es, lambda n: f"/fv/{n}.png", lambda e: f"/k/{e}.png",
                            max_edges=30, selected=sel)
    return root, r, sel


def parse(svg: str):
    return ET.fromstring(svg)


def test_every_element_is_drawn(diagram):
    _, r, _ = diagram
    asked = []
    svg = S.circuit_svg(r.elements, lambda u: asked.append(u) or PNG)
    root = parse(svg)
    els = r.elements
    lines = [e for e in els if "source" in e["data"]]
    kernels = [e for e in els if "kernel" in e.get("classes", "")]
    pictured = [e for e in els if e["data"].get("img") and "cls" not in e.get("classes", "")]
    assert len(root.findall(".//s:g[@id='edges']/s:line", NS)) == len(lines)
    # one arrowhead per line into a target node
    assert len(root.findall(".//s:g[@id='edges']/s:polygon", NS)) == sum("in" in e.get("classes", "").split() for e in lines)
    imgs = root.findall(".//s:image", NS)
    assert len(imgs) == len(pictured) and len(kernels) > 0
    assert all(i.get("href").startswith("data:image/png;base64,") for i in imgs)
    assert base64.b64decode(imgs[0].get("href").split(",", 1)[1]) == PNG
    assert len(asked) == len(set(asked))  # one fetch per distinct picture
    texts = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}tspan"))
    for e in els:
        if "title" in e.get("classes", "") or ("filter" in e.get("classes", "") and "cls" not in e.get("classes", "")):
            for line in e["data"]["label"].split("\n"):
                assert line in texts


def test_extent_holds_every_box(diagram):
    _, r, _ = diagram
    root = parse(S.circuit_svg(r.elements, None))
    x0, y0, w, h = map(float, root.get("viewBox").split())
    for e in r.elements:
        if "position" in e:
            x, y = e["position"]["x"], e["position"]["y"]
            assert x0 <= x <= x0 + w and y0 <= y <= y0 + h
    assert not root.findall(".//s:image", NS)  # no picture source: empty boxes, still a valid file


def test_selection_is_marked(diagram):
    _, r, sel = diagram
    root = parse(S.circuit_svg(r.elements, None))
    strokes = [l.get("stroke") for l in root.findall(".//s:g[@id='edges']/s:line", NS)]
    assert strokes.count(cy.SEL_COLOR) == sum(1 for e in r.elements if "source" in e["data"]
                                               and e["data"]["id"].startswith(f"l{sel[1:]}"))
    assert strokes.count(cy.SEL_COLOR) >= 2


def test_cytoscape_json_form_and_moved_nodes(diagram):
    """The browser sends ``cy.json().elements`` ({nodes, edges}) with the positions after dragging."""
    _, r, _ = diagram
    nodes = [dict(e) for e in r.elements if "source" not in e["data"]]
    edges = [e for e in r.elements if "source" in e["data"]]
    moved = dict(nodes[-1], position={"x": 5000.0, "y": 7.0})
    root = parse(S.circuit_svg({"elements": {"nodes": nodes[:-1] + [moved], "edges": edges}}, None))
    x0, _, w, _ = map(float, root.get("viewBox").split())
    assert x0 + w >= 5000.0


def test_text_is_escaped_and_colours_checked():
    els = [{"data": {"id": "n1", "label": "<script>alert(1)</script>", "title": "a & b"}, "position": {"x": 0, "y": 0},
            "classes": "filter"},
           {"data": {"id": "n2", "label": "x"}, "position": {"x": 100, "y": 0}, "classes": "filter cls"},
           {"data": {"id": "l", "source": "n1", "target": "n2", "w": 2, "color": "red;stroke:url(http://x)"},
            "classes": "in"}]
    svg = S.circuit_svg(els, lambda u: PNG)
    root = parse(svg)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert root.find(".//s:line", NS).get("stroke") == "#999"
    assert "http://x" not in svg


@pytest.mark.parametrize("payload,msg", [
    ("nope", "needs the diagram's elements"),
    ({"elements": {"nodes": "x", "edges": []}}, "lists of nodes and edges"),
    ([{"data": {"id": "a"}, "position": {"x": "nan", "y": 0}}], "bad number"),
    ([{"data": {"id": "a"}, "position": {"x": None, "y": 0}}], "bad number"),
])
def test_bad_payloads(payload, msg):
    with pytest.raises(ViscnnError, match=msg):
        S.circuit_svg(payload, None)


def test_route_embeds_the_servers_own_pictures(diagram):
    """The route draws the posted diagram with pictures read from the app's own image routes, refuses
    junk with a 400 and never fetches a URL outside them."""
    from viscnn.app import routes
    from viscnn.app.server import create_app

    root, _, _ = diagram
    app = create_app(root, "tiny")
    pm = app.viscnn.prepped("tiny")
    g = pm.graph
    conv = next(l for l in g.layers if l.kind == "conv")
    node, edge = conv.node_offset, conv.edge_offset
    els = [{"data": {"id": "n1", "label": "0", "img": routes.fv_url("tiny", node)}, "position": {"x": 0, "y": 0},
            "classes": "filter"},
           {"data": {"id": "k1", "img": f"{routes.PREFIX}/tiny/kernel/{edge}.png"}, "position": {"x": 50, "y": 0},
            "classes": "kernel"},
           {"data": {"id": "n3", "label": "1", "img": "http://example.com/x.png"}, "position": {"x": 100, "y": 0},
            "classes": "filter"}]
    client = app.server.test_client()
    r = client.post(f"{routes.EXPORT_PREFIX}/circuit2d.svg", json={"elements": els})
    assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    svg = parse(r.data.decode())
    imgs = svg.findall(".//s:image", NS)
    assert len(imgs) == 2  # the outside URL is not fetched: its box stays empty
    for i in imgs:
        assert base64.b64decode(i.get("href").split(",", 1)[1]).startswith(b"\x89PNG")
    bad = client.post(f"{routes.EXPORT_PREFIX}/circuit2d.svg", data="not json", content_type="application/json")
    assert bad.status_code == 400
    assert client.post(f"{routes.EXPORT_PREFIX}/circuit2d.svg", json="x").status_code == 400
