"""The Attribution view in headless Chromium on the default model: the maps of the chosen methods,
the method picker in the URL, a target that does not parse reported without losing the page."""

import pytest

from test_browser import server, browser, page  # noqa: F401

pytestmark = pytest.mark.browser

MAPS = "() => document.querySelectorAll('#attr-maps .js-plotly-plot').length"


def n_heatmaps(pg) -> int:
    return pg.evaluate("() => [...document.querySelectorAll('#attr-maps .js-plotly-plot')]"
                       ".filter(g => g.data && g.data[0] && g.data[0].type === 'heatmap').length")


def test_attribution_view_methods_and_url(page):
    page.click("#tab-attribution")
    page.wait_for_function("location.search.includes('view=attribution')")
    # the default methods (saliency, guided backprop, Grad-CAM) drawn, beside the input and its crop
    page.wait_for_function("() => [...document.querySelectorAll('#attr-maps .js-plotly-plot')]"
                           ".filter(g => g.data && g.data[0] && g.data[0].type === 'heatmap').length === 3")
    assert "predicted class" in page.inner_text("#attr-info")
    assert page.evaluate("() => [...document.querySelectorAll('#attr-maps .gtitle')].some(t => t.textContent.includes('Grad-CAM crop'))")
    # adding DeconvNet draws a fourth map and writes the method list into the URL
    page.click("#attr-methods label:has-text('DeconvNet')")
    page.wait_for_function("new URLSearchParams(location.search).get('methods').includes('deconvnet')")
    page.wait_for_function("() => [...document.querySelectorAll('#attr-maps .js-plotly-plot')]"
                           ".filter(g => g.data && g.data[0] && g.data[0].type === 'heatmap').length === 4")
    # colours: signed maps on the diverging scale, symmetric about zero
    sym = page.evaluate("() => [...document.querySelectorAll('#attr-maps .js-plotly-plot')].map(g => g.data[0])"
                        ".filter(t => t.type === 'heatmap' && t.zmin < 0).every(t => Math.abs(t.zmin + t.zmax) < 1e-12)")
    assert sym


def test_attribution_bad_target_keeps_maps(page):
    page.goto(page.url.split("?")[0] + "?model=" + page.evaluate("new URLSearchParams(location.search).get('model')")
              + "&view=attribution&methods=gradient")
    page.wait_for_function("() => document.querySelectorAll('#attr-maps .js-plotly-plot').length >= 2")
    page.fill("#attr-target", "class:nonsense")
    page.press("#attr-target", "Enter")
    page.wait_for_function("() => document.querySelector('#attr-msg').innerText.length > 0")
    assert "nonsense" in page.inner_text("#attr-msg")
    assert n_heatmaps(page) == 1  # the last good maps stay


def test_compare_view(page):
    page.click("#tab-compare")
    page.wait_for_function("location.search.includes('view=compare')")
    page.wait_for_function("() => document.querySelectorAll('#cmp-body .js-plotly-plot').length >= 1")
    n = page.evaluate("() => document.querySelectorAll('#cmp-body .js-plotly-plot').length")
    page.fill("#cmp-size", "56x56")
    page.press("#cmp-size", "Enter")
    page.wait_for_function("(n) => document.querySelectorAll('#cmp-body .js-plotly-plot').length === n + 1", arg=n)
    assert page.evaluate("() => [...document.querySelectorAll('#cmp-body .gtitle')].some(t => t.textContent.includes('at 56×56'))")
    page.click("#cmp-scale label:has-text('raw')")
    page.wait_for_function("new URLSearchParams(location.search).get('cscale') === 'raw'")
    page.wait_for_function("() => document.querySelector('#cmp-info').innerText.includes('one scale')")


def test_integrated_gradients_and_occlusion_from_a_link(page):
    """A link with the new methods draws their maps, IG with its completeness check and occlusion
    with its windows, on the diverging scale (signed)."""
    model = page.evaluate("new URLSearchParams(location.search).get('model')")
    page.goto(page.url.split("?")[0] + f"?model={model}&view=attribution&methods=ig,occlusion,layercam")
    page.wait_for_function("() => [...document.querySelectorAll('#attr-maps .js-plotly-plot')]"
                           ".filter(g => g.data && g.data[0] && g.data[0].type === 'heatmap').length === 3",
                           timeout=60000)
    text = page.inner_text("#attr-maps")
    assert "completeness: sum" in text and "windows at" in text and "at relu4" in text
    signed = page.evaluate("() => [...document.querySelectorAll('#attr-maps .js-plotly-plot')].map(g => g.data[0])"
                           ".filter(t => t.type === 'heatmap' && t.zmin < 0).length")
    assert signed == 2  # IG and occlusion signed, Layer-CAM a magnitude
