"""The image routes under concurrent load on the real threaded server.

Regression test for a thread race: every image request used to ``np.load`` its array again, and
numpy parses the .npy header with ``ast.literal_eval``, which is not thread-safe in CPython 3.11
(``SystemError: AST constructor recursion depth mismatch``, about 1 in 1,200 requests with 32 in
parallel). PreppedModel now opens each file once, under a lock, and hands out the cached memmap.
"""

import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app_fixture import make_prepped
from viscnn.app import routes as R
from viscnn.prepped import PreppedModel

WORKERS = 32
DURATION = float(os.environ.get("VISCNN_CONCURRENCY_SECONDS", "10"))
N_EX = 3  # exemplars per channel in the fixture
EDGE_FV_STEP = 7  # the fixture visualizes edges 0, 7, 14, ...
N_IMAGES = 6


@pytest.fixture(scope="module")
def prepped_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepped")
    make_prepped(root, "tiny", n_images=N_IMAGES)
    return root


def _expected(models_dir, name):
    """{url: expected status} over many indices of every image route, from the fixture's own files."""
    pm = PreppedModel.open(name, models_dir)  # a separate instance: the app's stays fresh
    g = pm.graph
    edge_fv = set(np.asarray(pm.edge_featurevis()[0]).tolist())
    assert edge_fv == set(range(0, g.num_edges, EDGE_FV_STEP))
    urls = {}
    for n in list(range(g.num_nodes)) + [g.num_nodes, g.num_nodes + 5]:
        has = n < g.num_nodes and g.layers[int(g.node_layer[n])].kind != "input"
        urls[R.fv_url(name, n)] = 200 if has else 404
        for k in range(N_EX + 1):
            urls[R.ex_url(name, n, k)] = 200 if has and k < N_EX else 404
    for e in list(range(g.num_edges)) + [g.num_edges, g.num_edges + 3]:
        urls[R.kernel_url(name, e)] = 200 if e < g.num_edges else 404
        urls[R.edge_fv_url(name, e)] = 200 if e in edge_fv else 404
    for k in range(N_IMAGES):
        urls[R.input_url(name, f"img:{k:03d}.png")] = 200
    urls[R.input_url(name, "img:999.png")] = 404
    return urls


def _quiet_handler():
    from werkzeug.serving import WSGIRequestHandler

    class Quiet(WSGIRequestHandler):
        def log_request(self, *a, **k):
            pass

    return Quiet


def test_image_routes_under_concurrent_load(prepped_dir, tmp_path):
    from flask import got_request_exception
    from werkzeug.serving import make_server

    from viscnn.app.server import create_app

    expected = _expected(prepped_dir, "tiny")
    app = create_app(prepped_dir, "tiny", cache_dir=tmp_path / "cache")
    app.viscnn._pms.clear()  # a fresh PreppedModel: its files are first opened by concurrent requests

    server_errors = []
    errors_lock = threading.Lock()

    def on_exception(sender, exception, **extra):
        with errors_lock:
            server_errors.append(repr(exception))

    got_request_exception.connect(on_exception, app.server)
    srv = make_server("127.0.0.1", 0, app.server, threaded=True, request_handler=_quiet_handler())
    base = f"http://127.0.0.1:{srv.server_port}"
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()

    url_list = sorted(expected)
    barrier = threading.Barrier(WORKERS)
    bodies = {}  # url -> first PNG bytes seen
    bad = []  # (url, status, expected) or (url, exception)
    statuses = Counter()
    lock = threading.Lock()

    def worker(seed):
        order = url_list[:]
        random.Random(seed).shuffle(order)
        n = 0
        barrier.wait()
        deadline = time.monotonic() + DURATION
        while time.monotonic() < deadline:
            url = order[n % len(order)]
            n += 1
            try:
                with urllib.request.urlopen(base + url, timeout=30) as r:
                    code, body = r.status, r.read()
            except urllib.error.HTTPError as e:
                code, body = e.code, None
            except Exception as e:  # a dropped connection, a timeout...
                with lock:
                    bad.append((url, repr(e)))
                continue
            with lock:
                statuses[code] += 1
                if code != expected[url]:
                    bad.append((url, code, expected[url]))
                elif code == 200:
                    first = bodies.setdefault(url, body)
                    if first != body:
                        bad.append((url, "PNG bytes differ between requests"))
        return n

    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(WORKERS) as ex:
            counts = list(ex.map(worker, range(WORKERS)))
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(10)
        got_request_exception.disconnect(on_exception, app.server)
    took = time.monotonic() - t0
    total = sum(counts)
    print(f"\n{total} requests in {took:.1f}s from {WORKERS} workers over {len(url_list)} URLs; "
          f"statuses {dict(statuses)}; server exceptions {len(server_errors)}")

    assert not server_errors, f"{len(server_errors)} server exceptions, e.g. {server_errors[:3]}"
    assert not bad, f"{len(bad)} bad responses of {total}, e.g. {bad[:5]}"
    assert total == sum(statuses.values()) and total >= len(url_list)
    assert statuses[200] and statuses[404]

    # what the concurrent requests got is what a lone request gets
    client = app.server.test_client()
    for url, body in bodies.items():
        r = client.get(url)
        assert r.status_code == 200 and r.data == body, url


def test_kernels_are_opened_once(prepped_dir):
    pm = PreppedModel.open("tiny", prepped_dir)
    layer = pm.graph.layers[1].name
    a, b = pm.kernels(layer), pm.kernels(layer)
    assert a is b
    assert isinstance(a, np.memmap) and not a.flags.writeable
    np.testing.assert_array_equal(a, np.load(prepped_dir / "tiny" / "kernels" / f"{layer}.npy"))
    assert pm.graph is pm.graph
    assert pm.featurevis(layer) is pm.featurevis(layer)
    assert pm.exemplars(layer) is pm.exemplars(layer)
    assert pm.featurevis("no_such_layer") is None and pm.exemplars("no_such_layer") is None
    assert pm.featurevis_meta("no_such_layer") is None


def test_first_opens_are_concurrent_safe(prepped_dir):
    """Many threads asking a fresh PreppedModel for the same arrays all get one object each."""
    pm = PreppedModel.open("tiny", prepped_dir)
    layers = [l.name for l in pm.graph.layers[1:]]
    barrier = threading.Barrier(16)

    def get(_):
        barrier.wait()
        return ([id(pm.kernels(l)) for l in layers] + [id(pm.featurevis(l)) for l in layers]
                + [id(pm.edge_featurevis()[1]), id(pm.graph)])

    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(get, range(16)))
    assert all(g == got[0] for g in got)
