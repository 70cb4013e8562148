"""Browser: the circuit method is named on the page; the ablation over the image set shows its result line."""

import os

import pytest

from test_browser import browser, server  # noqa: F401  (the project's fixtures)

pytestmark = pytest.mark.browser
SHOTS = os.environ.get("VISCNN_SHOTS", "")


def _page(browser, server, query):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(90000)
    pg.goto(server[0] + "/?" + query)
    return ctx, pg


def test_learned_method_is_named_on_the_page(browser, server):  # noqa: F811
    ctx, pg = _page(browser, server, "target=class:Trouser&set=Trouser&n=64&method=learned&keep=0.05")
    pg.wait_for_function("(document.querySelector('#method-info')?.innerText ?? '').includes('learned')")
    text = pg.inner_text("#method-info")
    assert "learned" in text and "does not apply to the learned method" in text
    assert pg.input_value("#keep") == "0.05"
    # the job finishes: the line says what the circuit rests on, and the graph draws that circuit
    pg.wait_for_selector("#method-line", timeout=180000)
    line = pg.inner_text("#method-line")
    assert "Circuit method: learned (360 of 7200 conv kernels" in line and "64 train images of 'Trouser'" in line
    pg.wait_for_function("(document.querySelector('#edge-info')?.innerText ?? '').includes(' edges')", timeout=60000)
    # Images per set is what the method circuit rests on: not greyed as unused
    assert "used by the learned circuit" in pg.inner_text("#nimages-note")
    assert "unused" not in (pg.get_attribute("#nimages", "class") or "")
    if SHOTS:
        pg.screenshot(path=os.path.join(SHOTS, "circuit_method_learned.png"))
    ctx.close()


def test_ablation_on_the_set_shows_its_result(browser, server):  # noqa: F811
    ctx, pg = _page(browser, server, "target=class:Trouser&set=Trouser&n=64&mode=topk&value=300&ablate=outside")
    pg.wait_for_selector("#drawn-count")
    pg.click("#ablate-set-run")
    pg.wait_for_selector("#ablate-set-line")
    line = pg.inner_text("#ablate-set-line")
    assert "Ablation on 64 train images of 'Trouser'" in line and "predicted class changed on" in line
    if SHOTS:
        pg.screenshot(path=os.path.join(SHOTS, "ablation_on_set.png"))
    ctx.close()
