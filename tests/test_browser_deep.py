"""A deep, branching model in the real app: a prepped random ResNet-18 (21 convs, 1x1 skip convs at the
same depth as a block's first conv) must show every layer name, none overlapping another."""

import os

import pytest

from app_fixture import free_port, make_prepped, start_server
from test_browser import ARGS, GRAPH_DRAWN

pytestmark = pytest.mark.browser

LABEL_BOXES = """() => Array.from(document.querySelectorAll('#graph3d .annotation-text')).map(t => {
    const r = t.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, t.textContent]; })"""


@pytest.fixture(scope="module")
def r18_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("r18")
    make_prepped(root, "r18", spec="torchvision:resnet18", input_shape=(3, 32, 32))
    port = free_port()
    proc = start_server(root, "r18", port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
    os.unlink(proc.log_path)


def test_resnet18_layer_labels_never_overlap(r18_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = b.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60000)
        pg.goto(r18_server + "/")
        pg.wait_for_function(GRAPH_DRAWN)
        pg.wait_for_function("document.querySelectorAll('#graph3d .annotation-text').length >= 22")
        boxes = pg.evaluate(LABEL_BOXES)
        gbox = pg.evaluate("() => { const r = document.querySelector('#graph3d').getBoundingClientRect();"
                           " return [r.left, r.top, r.right, r.bottom]; }")
        b.close()
    names = [bx[4] for bx in boxes]
    for layer in ("input", "conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer4.1.conv2", "fc"):
        assert layer in names
    overlaps = [(a[4], c[4]) for i, a in enumerate(boxes) for c in boxes[i + 1:]
                if a[0] < c[2] - 0.5 and c[0] < a[2] - 0.5 and a[1] < c[3] - 0.5 and c[1] < a[3] - 0.5]
    assert overlaps == []
    # every name is inside the graph's panel (the default camera frames the whole graph)
    assert all(gbox[0] <= bx[0] and bx[2] <= gbox[2] and gbox[1] <= bx[1] and bx[3] <= gbox[3] for bx in boxes), (gbox, [bx for bx in boxes if not (gbox[0] <= bx[0] and bx[2] <= gbox[2] and gbox[1] <= bx[1] and bx[3] <= gbox[3])])


def test_standalone_html_frames_the_whole_graph(tmp_path):
    """The exported standalone HTML shows every layer name and every node inside its graph panel."""
    from app_fixture import default_model
    from viscnn.app.callbacks_snapshot import export_files
    from viscnn.app.context import AppContext

    models_dir, name = default_model()
    actx = AppContext(models_dir, name, tmp_path / "cache")
    s = dict(actx.defaults(name), mode="mass", value=0.9)
    _, html, base = export_files(actx, s)
    assert base.startswith(f"viscnn-{name}-loss-all-") and base.endswith("-snapshot")
    f = tmp_path / "snap.html"
    f.write_text(html)
    layers = [l.name for l in actx.prepped(name).graph.layers]
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        pg = b.new_page(viewport={"width": 1400, "height": 900})
        pg.goto(f.as_uri())
        pg.wait_for_function("document.querySelectorAll('#g .annotation-text').length > 0")
        boxes = pg.evaluate(LABEL_BOXES.replace("#graph3d", "#g"))
        gbox = pg.evaluate("() => { const r = document.querySelector('#g').getBoundingClientRect();"
                           " return [r.left, r.top, r.right, r.bottom]; }")
        b.close()
    texts = [bx[4] for bx in boxes]
    assert all(l in texts for l in layers)
    assert all(gbox[0] <= bx[0] and bx[2] <= gbox[2] and gbox[1] <= bx[1] and bx[3] <= gbox[3] for bx in boxes), (gbox, [bx for bx in boxes if not (gbox[0] <= bx[0] and bx[2] <= gbox[2] and gbox[1] <= bx[1] and bx[3] <= gbox[3])])
