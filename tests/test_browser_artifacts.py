"""The Artifacts view in headless Chromium on the default model: the strip of mean maps, the drill-down,
the patch table, the padding audit, a second input size, and a bad setting reported at once."""

import pytest

from test_browser import server, browser, page  # noqa: F401

pytestmark = pytest.mark.browser


def test_artifacts_view(page):
    page.click("#tab-artifacts")
    page.wait_for_function("location.search.includes('view=artifacts')")
    page.wait_for_selector("#art-body img.art-tile")
    assert "conv layers" in page.inner_text("#art-info")
    assert page.locator("#art-padding").count() == 1
    text = page.inner_text("#art-body")
    assert "Mean input patch vs mean kernel" in text and "Drill-down:" in text
    # a second input size: written to the URL, drawn side by side with its own padding audit
    page.fill("#art-cmpsize", "29x29")
    page.press("#art-cmpsize", "Enter")
    page.wait_for_function("new URLSearchParams(location.search).get('cmpsize') === '29x29'")
    page.wait_for_selector("#art-padding-b")
    assert "Side by side with 29×29" in page.inner_text("#art-body")
    # a bad size: one line, and the analysis stays on the page
    page.fill("#art-cmpsize", "huge")
    page.press("#art-cmpsize", "Enter")
    page.wait_for_function("() => document.querySelector('#art-msg').innerText.includes('compare size')")
    assert page.locator("#art-padding").count() == 1


def test_artifacts_click_drills_down_and_compare_model(page):
    page.goto(page.url.split("?")[0] + "?model=fmnist&view=artifacts")
    page.wait_for_selector("#art-body img.art-tile")
    first = page.locator(".art-cell.clickable").first
    layer = first.locator("b").inner_text().split(" ")[0]
    first.click()
    page.wait_for_function("(l) => new URLSearchParams(location.search).get('drill') === l", arg=layer)
    page.wait_for_function("(l) => document.querySelector('#art-body').innerText.includes('Drill-down: ' + l + ' ')", arg=layer)
    models = page.evaluate("() => [...document.querySelectorAll('#art-cmpmodel')].length")
    assert models == 1
