"""The real app in headless Chromium (Playwright) on the real default model (prepped_models/fmnist):
load, threshold, click-through, upload, snapshot, errors."""

import io
import os
import json
import re

import numpy as np
import pytest

from app_fixture import default_model, free_port, start_server

pytestmark = pytest.mark.browser

ARGS = ["--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def server():
    models_dir, name = default_model()
    port = free_port()
    proc = start_server(models_dir, name, port)
    yield f"http://127.0.0.1:{port}", models_dir, name, proc
    proc.terminate()
    proc.wait(10)
    os.unlink(proc.log_path)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(45000)  # generous: the machine may be loaded; every wait is on a condition
    pg.goto(server[0] + "/")
    wait_ready(pg)
    yield pg
    ctx.close()


GRAPH_DRAWN = ("() => { const g = document.querySelector('#graph3d .js-plotly-plot');"
               " return !!(g && g._fullLayout && g._fullLayout.scene && g.data"
               " && g.data.some(t => t.name === 'nodes') && g.querySelector('.gl-container canvas')); }")


def wait_ready(pg) -> None:
    """The page has settled after a load: the 3D graph is drawn with its nodes, the URL holds the state
    (the URL sync ran) and the initial panel callback has answered."""
    pg.wait_for_selector("#drawn-count")
    pg.wait_for_function(GRAPH_DRAWN)
    pg.wait_for_function("location.search.includes('model=')")
    pg.wait_for_function("(document.querySelector('#ablate-info')?.innerText ?? '').length > 0")


def wait_figure_matches_count(pg) -> None:
    """The figure's distinct drawn edges equal the edge-info count (both come from one callback, but
    the graph redraws asynchronously)."""
    pg.wait_for_function("""() => { const g = document.querySelector('#graph3d .js-plotly-plot');
        const c = document.querySelector('#drawn-count');
        if (!g || !g.data || !c) return false;
        const n = new Set(g.data.filter(t => t.mode === 'lines').flatMap(t => t.customdata.filter(c => c !== null && c < 0))).size;
        return String(n) === c.innerText; }""")


def drawn(pg) -> int:
    return int(pg.inner_text("#drawn-count"))


def set_threshold(pg, mode: str, value) -> None:
    """Set the threshold and wait until the graph shows the circuit for exactly it."""
    pg.check(f"#mode input[value={mode}]")
    # a mode change resets the value on the server: wait for it, or it could overwrite the value typed next
    pg.wait_for_selector(f"#drawn-count[title^='{mode}=']")
    pg.fill("#value", str(value))
    pg.press("#value", "Enter")
    pg.wait_for_selector(f"#drawn-count[title='{mode}={value}']")
    wait_figure_matches_count(pg)


def wait_drawn(pg, n: int) -> None:
    pg.wait_for_function(f"document.querySelector('#drawn-count') && (document.querySelector('#drawn-count')?.innerText ?? '') == '{n}'")


def click_node(pg, node: int) -> None:
    """Fire Plotly's click event for one node point, as a mouse click on it would."""
    pg.wait_for_function(GRAPH_DRAWN)
    pg.evaluate("""(n) => { const gd = document.querySelector('#graph3d .js-plotly-plot');
        // a node is drawn as a cross of points that all carry its index (dcc.Graph reads customdata from the figure)
        const tr = gd.data.findIndex(t => t.name === 'nodes' && t.customdata.includes(n));
        const pt = gd.data[tr].customdata.indexOf(n);
        gd.emit('plotly_click', {points: [{curveNumber: tr, pointNumber: pt, customdata: n}]}); }""", node)


def act_map_z(pg):
    pg.wait_for_selector("#act-map .js-plotly-plot")
    return pg.evaluate("() => JSON.stringify(document.querySelector('#act-map .js-plotly-plot').data[0].z)")


def png_bytes(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def drawn_in_figure(pg) -> int:
    """Distinct edges in the 3D figure's line traces (customdata -(edge+1) on each edge's midpoint)."""
    return pg.evaluate("""() => new Set(document.querySelector('#graph3d .js-plotly-plot').data
        .filter(t => t.mode === 'lines').flatMap(t => t.customdata.filter(c => c !== null && c < 0))).size""")


def test_loads_graph_and_threshold_changes_edges(page):
    assert page.locator("#graph3d .js-plotly-plot").count() == 1
    assert page.locator("#graph3d .gl-container canvas").count() >= 1  # WebGL scene
    # the first view comes drawn in the page: its count matches its figure, and the 2D circuit fills in
    wait_figure_matches_count(page)
    assert drawn(page) > 0 and page.get_attribute("#drawn-count", "title") == "mass=0.5"
    page.wait_for_function("() => { const c = document.querySelector('#cyto');"
                           " return c && c._cyreg && c._cyreg.cy && c._cyreg.cy.nodes().length > 0; }")
    set_threshold(page, "mass", 0.3)
    low = drawn(page)
    assert low == drawn_in_figure(page)
    set_threshold(page, "mass", 0.9)
    high = drawn(page)
    assert high > low and high == drawn_in_figure(page)
    set_threshold(page, "topk", 2000)
    assert 0 < drawn(page) <= 2000 and drawn(page) == drawn_in_figure(page)


def test_click_node_shows_activation_map_and_upload_updates_it(page):
    click_node(page, 3)
    z0 = act_map_z(page)
    assert page.locator("#panel h4").first.inner_text().startswith("Node ")
    yy, xx = np.mgrid[0:40, 0:40]
    img = (((xx + yy) % 9) * 28).astype(np.uint8)
    page.set_input_files("#upload input[type=file]", files=[
        {"name": "mine.png", "mimeType": "image/png", "buffer": png_bytes(img)}])
    page.wait_for_function("location.search.includes('image=up%3A')")
    page.wait_for_function(f"() => {{ const g = document.querySelector('#act-map .js-plotly-plot');"
                           f" return g && JSON.stringify(g.data[0].z) !== {json.dumps(z0)}; }}")
    assert page.inner_text("#upload-msg") == ""


def test_hover_draws_receptive_field_and_unknown_model_is_reported(page, server):
    click_node(page, page.evaluate("() => Math.max(...document.querySelector('#graph3d .js-plotly-plot').data"
                                   ".filter(t => t.name === 'nodes').flatMap(t => t.customdata.filter(c => c !== null)))") - 12)
    act_map_z(page)
    page.evaluate("""() => { const gd = document.querySelector('#act-map .js-plotly-plot');
        gd.emit('plotly_hover', {points: [{curveNumber: 0, pointNumber: [1, 1], x: 1, y: 1, z: 0}]}); }""")
    page.wait_for_function("""() => { const g = document.querySelector('#input-fig .js-plotly-plot');
        return g && g.layout.shapes && g.layout.shapes.length === 1; }""")
    page.goto(server[0] + "/?model=nosuch")
    page.wait_for_function("(document.querySelector('#url-msg')?.innerText ?? '').includes('unknown prepped model')")
    wait_ready(page)


def test_bad_upload_shows_error_and_app_still_answers(page):
    page.set_input_files("#upload input[type=file]", files=[
        {"name": "fake.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\nnot really a png"}])
    page.wait_for_function("(document.querySelector('#upload-msg')?.innerText ?? '').includes('rejected')")
    assert "corrupt" in page.inner_text("#upload-msg")
    page.set_input_files("#upload input[type=file]", files=[
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"just some text"}])
    page.wait_for_function("(document.querySelector('#upload-msg')?.innerText ?? '').includes('notes.txt')")
    assert "not an image" in page.inner_text("#upload-msg")
    set_threshold(page, "mass", 0.9)
    page.fill("#imageset", "nonsense + ")
    page.press("#imageset", "Enter")
    # the error is shown once, at its field, and the stale graph is greyed out
    page.wait_for_function("(document.querySelector('#imageset-msg')?.innerText ?? '').length > 0")
    assert page.inner_text("#msg") == "" and "stale" in page.get_attribute("#graph-wrap", "class")
    page.fill("#imageset", "all")
    page.press("#imageset", "Enter")
    page.wait_for_function("(document.querySelector('#imageset-msg')?.innerText ?? '').length === 0 && "
                           "(document.querySelector('#circuit-of')?.textContent ?? '').includes('|all|')")


def test_snapshot_export_reopens_same_circuit(page, tmp_path):
    set_threshold(page, "mass", 0.4)
    n = drawn(page)
    assert n > 0
    downloads = []
    page.on("download", lambda d: downloads.append(d))
    page.click("#export")
    while len(downloads) < 2:  # events queued meanwhile are delivered to the handler during the wait
        page.wait_for_event("download")
    names = sorted(d.suggested_filename for d in downloads)
    assert names[0].endswith(".html") and names[1].endswith(".json")
    js = next(d for d in downloads if d.suggested_filename.endswith(".json"))
    snap = json.loads(open(js.path()).read())
    assert snap["format"] == "viscnn.snapshot" and len(snap["circuit"]["edges"]) == n
    html = open(next(d for d in downloads if d.suggested_filename.endswith(".html")).path()).read()
    assert "Plotly.newPlot" in html and not re.search(r"<script[^>]+src=", html)
    set_threshold(page, "mass", 0.9)
    assert drawn(page) != n
    page.set_input_files("#snap-upload input[type=file]", files=[
        {"name": "snap.json", "mimeType": "application/json", "buffer": json.dumps(snap).encode()}])
    page.wait_for_selector("#drawn-count[title='mass=0.4']")
    assert drawn(page) == n
    page.wait_for_function("(document.querySelector('#snap-msg')?.innerText ?? '').includes('opened snapshot')")
    assert "differs" not in page.inner_text("#snap-msg")
    # a malformed snapshot is reported, and the view stays
    page.set_input_files("#snap-upload input[type=file]", files=[
        {"name": "bad.json", "mimeType": "application/json", "buffer": b'{"format": "viscnn.snapshot", "version": 99}'}])
    page.wait_for_function("(document.querySelector('#snap-msg')?.innerText ?? '').includes('not opened')")
    assert drawn(page) == n


def test_unit_target_runs_in_background(page, server):
    _, _, name, _ = server
    page.fill("#target", "class:0")
    page.press("#target", "Enter")
    page.wait_for_function("location.search.includes('target=class%3A0')")
    page.wait_for_function("document.querySelector('#circuit-of') && "
                           "(document.querySelector('#circuit-of')?.textContent ?? '') === "
                           "'class:0|all|' + new URLSearchParams(location.search).get('metric')", timeout=60000)
    assert page.inner_text("#msg") == ""
    # the run's progress line is cleared once its result is drawn
    page.wait_for_function("(document.querySelector('#run-progress')?.innerText ?? '') === ''")
    # the page says what the scores rest on: 256 (the default) images of the prepped set, then 64
    assert "mean over 256 train images of 'all'" in page.inner_text("#edge-info")
    page.click("#nimages input[value='64']")
    page.wait_for_function("location.search.includes('n=64')")
    page.wait_for_function("(document.querySelector('#edge-info')?.innerText ?? '').includes('mean over 64 train images')",
                           timeout=60000)
    page.fill("#target", "class:nosuchclass")
    page.press("#target", "Enter")
    page.wait_for_function("(document.querySelector('#target-msg')?.innerText ?? '').includes('class')")
    # shown once: not also in the general line or the prediction
    assert page.inner_text("#msg") == "" and "nosuchclass" not in page.inner_text("#prediction")


def test_link_opens_drawn_without_a_graph_callback(browser, server):
    """A link's view comes drawn in the page: no figure callback runs on load, and no default view flashes."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(45000)
    posts = []
    pg.on("request", lambda r: posts.append(r.post_data or "") if "_dash-update-component" in r.url else None)
    pg.add_init_script("""new MutationObserver(() => { const c = document.querySelector('#drawn-count');
        if (c && window.__firstTitle === undefined) window.__firstTitle = c.title; })
        .observe(document, {childList: true, subtree: true, attributes: true});""")
    pg.goto(server[0] + "/?model=fmnist&mode=topk&value=77")
    wait_ready(pg)
    wait_figure_matches_count(pg)
    assert pg.evaluate("window.__firstTitle") == "topk=77"
    assert pg.get_attribute("#drawn-count", "title") == "topk=77"
    assert posts and not any("graph3d.figure" in p for p in posts)
    ctx.close()


def test_ablate_outside_the_circuit_changes_the_prediction(page):
    before = page.inner_text("#prediction")
    page.click("#ablate-outside")
    page.wait_for_function("location.search.includes('ablate=outside')")
    page.wait_for_function("(document.querySelector('#prediction')?.innerText ?? '').includes('before ablation')")
    assert page.inner_text("#prediction") != before
    info = page.inner_text("#ablate-info")
    assert "everything outside the circuit" in info and "class layer kept whole" in info
    page.click("#ablate-clear")
    page.wait_for_function("!(document.querySelector('#prediction')?.innerText ?? '').includes('before ablation')")


def test_faithfulness_is_shown(page):
    page.click("#faith-run")
    page.wait_for_function("(document.querySelector('#faith-info')?.innerText ?? '').includes('Pearson')", timeout=90000)
    text = page.inner_text("#faith-info")
    assert "random circuits" in text and "images of 'all'" in text


def test_threshold_change_does_not_redraw_the_panel_unless_it_shows_the_circuit(page):
    """The node panel (a model run and a DeconvNet) is not asked for again on a threshold change: the same
    panel stays; with 'ablate outside the circuit' on, it follows the circuit (another count of zeroed
    kernels)."""
    posts = []
    page.on("request", lambda r: posts.append(r.post_data or "") if "_dash-update-component" in r.url else None)
    click_node(page, 20)
    page.wait_for_function("(document.querySelector('#panel h4')?.innerText ?? '').startsWith('Node ')")
    page.wait_for_function("location.search.includes('sel=')")
    head = page.inner_text("#panel h4")
    page.evaluate("document.querySelector('#panel h4').dataset.mark = 'kept'")  # replaced if the panel is redrawn
    posts.clear()
    set_threshold(page, "mass", 0.8)
    assert posts and not any('"output":"..panel.children' in p for p in posts), [p[:80] for p in posts]
    assert not any('"output":"..run-request.data' in p for p in posts)
    assert page.inner_text("#panel h4") == head and page.get_attribute("#panel h4", "data-mark") == "kept"
    page.click("#ablate-outside")
    page.wait_for_function("(document.querySelector('#ablate-info')?.innerText ?? '').includes('kernels zeroed')")
    before = page.inner_text("#ablate-info")
    posts.clear()
    set_threshold(page, "mass", 0.3)
    page.wait_for_function(f"(document.querySelector('#ablate-info')?.innerText ?? '') !== {json.dumps(before)}")
    assert any('"output":"..panel.children' in p for p in posts)
    assert "kernels zeroed" in page.inner_text("#ablate-info")
    page.click("#ablate-clear")


def test_empty_circuit_links_the_strictest_top_k(browser, server):
    """top-k 1 keeps no path; the warning's link opens the strictest top-k that does, drawn."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(45000)
    pg.goto(server[0] + "/?model=fmnist&mode=topk&value=1")
    wait_ready(pg)
    pg.wait_for_selector("#empty-fix")
    k = int(pg.inner_text("#empty-fix").replace(",", ""))
    assert k > 1 and pg.inner_text("#drawn-count") == "0"
    pg.click("#empty-fix")
    pg.wait_for_function(f"location.search.includes('value={k}')")
    wait_ready(pg)
    pg.wait_for_function("+(document.querySelector('#drawn-count')?.innerText ?? '0') > 0")
    assert pg.query_selector("#empty-fix") is None
    ctx.close()
