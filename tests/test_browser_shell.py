"""The app's shell in headless Chromium (Playwright) on the real default model (fmnist): view tabs,
legend, value field, search and 3D/2D selection agreement, the 2D edge cap, the class panel, exports,
upload limits, bad links and targets, help."""

import re

import pytest

from test_browser import GRAPH_DRAWN, click_node, set_threshold, wait_ready  # noqa: F401
from test_browser import server, browser, page  # noqa: F401

pytestmark = pytest.mark.browser

CY = "document.querySelector('#cyto')._cyreg.cy"
CY_READY = ("() => { const c = document.querySelector('#cyto');"
            " return !!(c && c._cyreg && c._cyreg.cy && c._cyreg.cy.nodes('.filter').length > 0); }")


def url_param(pg, key):
    return pg.evaluate("(k) => new URLSearchParams(location.search).get(k)", key)


def node_index(pg, nid: str) -> int:
    """The index of node ``nid`` (``conv2:5``) in the 3D figure's nodes trace (by its hover text)."""
    i = pg.evaluate("""(nid) => { const re = new RegExp('^' + nid.replace(':', '\\\\:') + '(?![0-9])');
        for (const t of document.querySelector('#graph3d .js-plotly-plot').data.filter(t => t.name === 'nodes')) {
            const j = t.text.findIndex(s => re.test(s));
            if (j >= 0) { return t.customdata[j]; } }
        return -1; }""", nid)
    assert i >= 0, nid
    return i


def n_nodes(pg) -> int:
    return pg.evaluate("() => new Set(document.querySelector('#graph3d .js-plotly-plot').data"
                       ".filter(t => t.name === 'nodes').flatMap(t => t.customdata.filter(c => c !== null))).size")


def wait_selected(pg, node: int) -> None:
    pg.wait_for_function("""(n) => { const g = document.querySelector('#graph3d .js-plotly-plot');
        const t = g && g.data && g.data.find(t => t.name === 'selected');
        return !!t && t.customdata.length === 1 && t.customdata[0] === n; }""", arg=node)


def visible(pg, sel: str) -> bool:
    return pg.evaluate("(s) => { const e = document.querySelector(s);"
                       " return !!e && getComputedStyle(e).display !== 'none' && e.offsetParent !== null; }", sel)


def test_view_tabs_switch_and_url(page):
    assert visible(page, "#view-circuit")
    page.click("#tab-attribution")
    page.wait_for_function("location.search.includes('view=attribution')")
    page.wait_for_function("() => { const e = document.querySelector('#view-attribution');"
                           " return e && getComputedStyle(e).display !== 'none'; }")
    assert visible(page, "#view-attribution")
    assert not visible(page, "#view-circuit")
    page.click("#tab-circuit")
    page.wait_for_function("() => { const e = document.querySelector('#view-circuit');"
                           " return e && getComputedStyle(e).display !== 'none'; }")
    assert visible(page, "#view-circuit") and not visible(page, "#view-attribution")
    page.wait_for_function("!location.search.includes('view=attribution')")
    page.wait_for_function(GRAPH_DRAWN)


def test_legend_colours_match_drawn_edges(page):
    page.wait_for_selector("#legend .sw-line[data-kind=pos]", state="attached")
    pos = page.get_attribute("#legend .sw-line[data-kind=pos]", "data-color")
    neg = page.get_attribute("#legend .sw-line[data-kind=neg]", "data-color")
    assert pos and neg and pos != neg
    traces = page.evaluate("""() => document.querySelector('#graph3d .js-plotly-plot').data
        .filter(t => t.mode === 'lines' && t.name !== 'nodes').map(t => [t.name, t.line.color])""")
    assert traces
    rgb = lambda c: re.match(r"rgba\(\d+,\d+,\d+,", c.replace(" ", "")).group(0)  # noqa: E731
    plus = [c for n, c in traces if n.startswith("+")]
    minus = [c for n, c in traces if n.startswith("-")]
    assert plus or minus
    for c in plus:
        assert rgb(c) == rgb(pos)
    for c in minus:
        assert rgb(c) == rgb(neg)
    # the largest bucket's colour is exactly the swatch's
    for n, c in traces:
        if n.endswith("q4"):
            assert c == (pos if n.startswith("+") else neg)


def test_value_field_after_mode_round_trip(page):
    set_threshold(page, "topk", 300)
    page.check("#mode input[value=mass]")
    page.wait_for_selector("#drawn-count[title^='mass=']")
    page.check("#mode input[value=topk]")
    page.wait_for_selector("#drawn-count[title^='topk=']")
    page.fill("#value", "300")
    page.press("#value", "Enter")
    page.wait_for_selector("#drawn-count[title='topk=300']")
    page.wait_for_function("new URLSearchParams(location.search).get('value') === '300'")
    assert url_param(page, "mode") == "topk"


def test_search_selects_node_and_class(page):
    n = node_index(page, "conv2:5")
    page.fill("#search", "conv2:5")
    page.press("#search", "Enter")
    page.wait_for_function("location.search.includes('sel=conv2%3A5')")
    wait_selected(page, n)
    assert page.inner_text("#search-msg") == ""
    total = n_nodes(page)
    page.fill("#search", "Sneaker")
    page.press("#search", "Enter")
    page.wait_for_function("""(total) => { const g = document.querySelector('#graph3d .js-plotly-plot');
        const t = g && g.data && g.data.find(t => t.name === 'selected');
        return !!t && t.customdata[0] >= total - 10; }""", arg=total)
    sel = page.evaluate("() => document.querySelector('#graph3d .js-plotly-plot').data"
                        ".find(t => t.name === 'selected').customdata[0]")
    assert total - 10 <= sel < total
    assert url_param(page, "sel").startswith("fc:")


def test_cytoscape_tap_agrees_with_3d(page):
    page.wait_for_function(CY_READY)
    data = page.evaluate(f"() => {{ const n = {CY}.nodes('.filter')[0]; n.emit('tap'); return n.data(); }}")
    page.wait_for_function("(nid) => new URLSearchParams(location.search).get('sel') === nid", arg=data["nid"])
    wait_selected(page, int(data["node"]))
    page.wait_for_function(f"(id) => {{ const c = document.querySelector('#cyto');"
                           f" const cy = c && c._cyreg && c._cyreg.cy; if (!cy) return false;"
                           f" const s = cy.nodes('.sel'); return s.length === 1 && s[0].id() === id; }}",
                           arg=data["id"])


COUNT_RE = re.compile(r"showing (\d+) of (\d+) circuit edges")


def test_cyto_count_and_cap(page):
    page.wait_for_function(CY_READY)
    page.wait_for_function("/showing \\d+ of \\d+ circuit edges/.test(document.querySelector('#cyto-count')?.innerText ?? '')")
    m = COUNT_RE.search(page.inner_text("#cyto-count"))
    shown, total = int(m.group(1)), int(m.group(2))
    assert 0 < shown <= total
    page.wait_for_function(f"() => {CY}.nodes('.kernel').length === {shown}")
    page.fill("#cyto-cap", "10")
    page.press("#cyto-cap", "Enter")
    # whole paths: at most the cap (a path longer than the room left is skipped)
    page.wait_for_function("(() => { const m = /showing (\\d+) of/.exec(document.querySelector('#cyto-count')?.innerText"
                           " ?? ''); return !!m && +m[1] <= 10 && +m[1] > 0; })()")
    now = int(COUNT_RE.search(page.inner_text("#cyto-count")).group(1))
    assert now <= min(10, total)
    page.wait_for_function(f"() => {CY}.nodes('.kernel').length === {now}")


def test_class_panel_shows_bar_charts(page):
    click_node(page, n_nodes(page) - 3)
    for gid in ("#class-logits", "#class-weights"):
        page.wait_for_function(f"() => {{ const g = document.querySelector('{gid} .js-plotly-plot');"
                               f" return !!(g && g.data && g.data.length && g.data[0].type === 'bar'); }}")


def _downloads(pg, button: str, n: int):
    got = []
    handler = lambda d: got.append(d)  # noqa: E731
    pg.on("download", handler)
    try:
        pg.click(button)
        while len(got) < n:
            pg.wait_for_event("download")
    finally:
        pg.remove_listener("download", handler)
    return got


def _content(d) -> bytes:
    with open(d.path(), "rb") as f:
        return f.read()


@pytest.mark.parametrize("button,suffix", [("#export-graph3d-png", ".png"), ("#export-graph3d-svg", ".svg"),
                                           ("#export-cyto-png", ".png"), ("#export-cyto-svg", ".svg")])
def test_figure_exports(page, button, suffix):
    if "cyto" in button:
        page.wait_for_function(CY_READY)
    dialogs = []
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    try:
        with page.expect_download(timeout=30000) as info:
            page.click(button)
    except Exception:
        raise AssertionError(f"no download from {button}; dialogs: {dialogs}")
    d = info.value
    assert d.suggested_filename.endswith(suffix)
    body = _content(d)
    assert body
    if suffix == ".png":
        assert body.startswith(b"\x89PNG")
    else:
        assert b"<svg" in body


def test_csv_and_snapshot_exports(page):
    got = _downloads(page, "#export-csv", 2)
    names = sorted(d.suggested_filename for d in got)
    assert names[0].endswith("-edges.csv") and names[1].endswith("-nodes.csv")
    for d in got:
        body = _content(d)
        assert body and b"," in body
    got = _downloads(page, "#export", 2)
    names = sorted(d.suggested_filename for d in got)
    assert names[0].endswith(".html") and names[1].endswith(".json")
    for d in got:
        assert _content(d)


def test_oversize_upload_is_reported(page):
    big = b"\x89PNG" + bytes(33 * 1024 * 1024 - 4)
    page.set_input_files("#upload input[type=file]", files=[
        {"name": "huge.png", "mimeType": "image/png", "buffer": big}])
    page.wait_for_function("(document.querySelector('#upload-msg')?.innerText ?? '').includes('larger than')",
                           timeout=90000)


def test_bad_ablate_link_keeps_input_image(page, server):
    page.goto(server[0] + "/?model=fmnist&ablate=nosuch:9,e999999999")
    page.wait_for_function("(document.querySelector('#url-msg')?.innerText ?? '').includes('ablation')")
    page.wait_for_function("() => { const g = document.querySelector('#input-fig .js-plotly-plot');"
                           " return !!(g && g.data && g.data.some(t => t.type === 'image' || t.type === 'heatmap')); }")
    assert page.evaluate("() => document.querySelector('#input-fig .js-plotly-plot').data"
                         ".some(t => t.type === 'image')")
    page.wait_for_function("(document.querySelector('#prediction')?.innerText ?? '').startsWith('Prediction')")


def test_bad_target_is_field_error_and_stale(page):
    page.fill("#target", "class:nosuch")
    page.press("#target", "Enter")
    page.wait_for_function("(document.querySelector('#target-msg')?.innerText ?? '').length > 0")
    page.wait_for_function("document.querySelector('#graph-wrap').classList.contains('stale')")
    assert page.inner_text("#msg") == ""
    page.fill("#target", "loss")
    page.press("#target", "Enter")
    page.wait_for_function("!document.querySelector('#graph-wrap').classList.contains('stale')")
    page.wait_for_function("(document.querySelector('#target-msg')?.innerText ?? '') === ''")
    page.fill("#target", "")
    page.press("#target", "Enter")
    page.wait_for_function("document.querySelector('#target').value === 'loss'")


def test_help_toggle_shows_help(page):
    assert not visible(page, "#help")
    page.click("#help-toggle")
    page.wait_for_function("() => { const e = document.querySelector('#help');"
                           " return e && getComputedStyle(e).display !== 'none'; }")


def test_partial_plotly_bundle_serves_every_figure(page):
    """The page runs on the partial plotly.js bundle (assets/plotly-viscnn.min.js): the full 4.8 MB
    bundle is never fetched, and every trace type the app draws is registered in it."""
    urls = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert any("plotly-viscnn.min.js" in u for u in urls)
    assert not any("package_data/plotly.min.js" in u for u in urls)
    for kind in ("scatter3d", "bar", "heatmap", "image", "scatter"):
        # Plotly.validate flags an unregistered trace type as "invalid" at data[0]
        errs = page.evaluate("(k) => Plotly.validate([{type: k}], {}) || []", kind)
        assert not [e for e in errs if e.get("code") == "object" or "type" in str(e.get("astr"))], (kind, errs)
