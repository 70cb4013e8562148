"""The page's index: what the first paint loads (viscnn/app/server.py) and what it defers to after it."""

import re
import subprocess

import pytest

from app_fixture import app_model
from viscnn.app.server import create_app
from viscnn.app.views.circuit.layout import deferred_props


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    models_dir, name = app_model(tmp_path_factory)
    return create_app(models_dir, name, cache_dir=tmp_path_factory.mktemp("cache")).server.test_client()


def test_index_has_the_regenerator_runtime_not_the_whole_polyfill(client):
    html = client.get("/").data.decode()
    assert "polyfill@" not in html  # core-js 2 stays off the page
    assert "regeneratorRuntime=e" in html  # Dash's bundles call the global
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    runtime = next(s for s in scripts if "regeneratorRuntime" in s)
    # the extracted module is a complete script: node parses it and it defines a working runtime
    js = "var window=globalThis;" + runtime + (";function* g(){yield 1;yield 2}"
                                              "if(typeof regeneratorRuntime.mark!=='function')throw 1;"
                                              "console.log([...g()].join(','))")
    try:
        out = subprocess.run(["node", "-e", js], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("node is not installed: the runtime is checked in the browser tests only")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1,2"


def test_cytoscape_is_held_back_and_still_served(client):
    html = client.get("/").data.decode()
    assert not re.search(r'<script src="[^"]*dash_cytoscape[^"]*"', html)
    url = re.search(r'viscnnDeferredScripts = \{"dash_cytoscape": "([^"]+)"\}', html).group(1)
    r = client.get(url)
    assert r.status_code == 200 and len(r.data) > 100_000


def test_deferred_components_keep_the_ids_the_callbacks_use():
    p = deferred_props()
    assert p["cyto"]["namespace"] == "dash_cytoscape" and p["cyto"]["props"]["id"] == "cyto"
    assert "cyto-box" in p["cyto"]["props"]["className"]  # the exports find the 2D circuit by it
    assert [t["props"]["id"] for t in p["tables"]] == ["top-nodes", "top-edges"]
    assert all(t["props"]["sort_action"] == "native" for t in p["tables"])


def test_layout_and_dependencies_are_preloaded(client):
    html = client.get("/").data.decode()
    for what in ("_dash-layout", "_dash-dependencies"):
        assert f'<link rel="preload" href="/{what}" as="fetch" crossorigin="anonymous">' in html
