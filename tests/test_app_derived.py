"""Per-consumer copies of the page state (viscnn.app.shell.derived): the browser's clientside function and
the server's ``derive`` agree; a threshold change leaves the node panel's and the run dispatcher's copies
alone, while the panel drawn from its copy equals the panel of the whole state; with 'ablate outside the
circuit' on, the panel's copy and its drawing follow the circuit."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from app_fixture import make_prepped
from viscnn.app import activations as A
from viscnn.app.shell import derived as D


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from viscnn.app.server import create_app

    root = tmp_path_factory.mktemp("derived")
    make_prepped(root, "tiny")
    return create_app(root, "tiny", cache_dir=root / "cache")


@pytest.fixture(scope="module")
def actx(app):
    return app.viscnn


@pytest.fixture
def s(actx):
    return actx.defaults("tiny")


def _states(s):
    return [s, dict(s, mode="topk", value=7), dict(s, ablate=[A.OUTSIDE]), dict(s, ablate=["conv1:0", A.OUTSIDE], value=0.7),
            dict(s, set="image"), dict(s, set="all - image", image="img:x.png"), dict(s, view="artifacts"),
            dict(s, view="compare", sel="e3"), {k: v for k, v in s.items() if k != "relu"}]


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_clientside_copies_equal_the_servers(s):
    """Each store's JavaScript, run in node on the same states, gives exactly ``derive`` (no_update where
    it gives None), and no_update when the copy would not change."""
    cases = []
    for sid in D.ids():
        for st in _states(s):
            d = D.derive(st, sid)
            cases.append({"sid": sid, "s": st, "prev": None, "want": d})
            if d is not None:
                cases.append({"sid": sid, "s": st, "prev": d, "want": None})  # unchanged: no request downstream
    fns = {sid: D.js(sid) for sid in D.ids()}
    script = ("const NU = {nu: 1}; global.window = {dash_clientside: {no_update: NU}};\n"
              f"const fns = {{{', '.join(f'{json.dumps(k)}: ({v})' for k, v in fns.items())}}};\n"
              f"const cases = {json.dumps(cases)};\n"
              "const out = cases.map(c => { const r = fns[c.sid](c.s, c.prev); return r === NU ? null : r; });\n"
              "console.log(JSON.stringify(out));")
    got = json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout)
    assert len(got) == len(cases)
    for c, g in zip(cases, got):
        assert g == c["want"], (c["sid"], c["s"], g, c["want"])
    assert sum(c["want"] is None for c in cases) > 0 and sum(c["want"] is not None for c in cases) > 0


def test_no_server_callback_reads_the_whole_state(app):
    """Only the clientside copies listen to the whole state: every server callback fires on its consumer's
    copy, so a change reaches only the callbacks it concerns."""
    readers = [c for c in app._callback_list if any(i["id"] == "state" for i in c["inputs"])]
    assert readers and all(c.get("clientside_function") for c in readers)
    # the shell's copies, and the circuit method's own (views/circuit/method.py: image None unless the set names it)
    assert {c["output"] for c in readers} == {f"{sid}.data" for sid in D.ids()} | {"method-state.data"}
    used = {i["id"] for c in app._callback_list if not c.get("clientside_function") for i in c["inputs"]}
    assert set(D.ids()) <= used  # every copy has its consumer


def test_threshold_change_leaves_the_panel_alone(actx, s):
    import viscnn.app.callbacks_panels as CP

    pm = actx.prepped("tiny")
    circ = actx.resolve(dict(s, mode="topk", value=20)).circuit
    node = pm.graph.node_id(int(circ.nodes[len(circ.nodes) // 2]))
    a, b = dict(s, sel=node, mode="topk", value=20), dict(s, sel=node, mode="mass", value=0.9)
    assert actx.resolve(a).circuit.edges.tolist() != actx.resolve(b).circuit.edges.tolist()
    for sid in ("panel-state", "run-state"):
        assert D.derive(a, sid) == D.derive(b, sid), sid
    assert D.derive(a, "graph-state") != D.derive(b, "graph-state")
    # the panel drawn from its copy is the panel of the whole state, for either threshold
    full = [str(x) for x in CP.panel_props(actx, a)]
    assert [str(x) for x in CP.panel_props(actx, D.derive(a, "panel-state"))] == full
    assert [str(x) for x in CP.panel_props(actx, b)] == full
    assert "Top incoming edges" in full[0]
    # an image switch changes the panel's copy, not the graph's
    other = dict(a, image="img:" + pm.images()[1]["file"])
    assert D.derive(other, "panel-state") != D.derive(a, "panel-state")
    assert D.derive(other, "graph-state") == D.derive(a, "graph-state")


def test_ablate_outside_follows_the_circuit(actx, s):
    import viscnn.app.callbacks_panels as CP

    a = dict(s, ablate=[A.OUTSIDE], mode="topk", value=5)
    b = dict(a, value=60)
    pa, pb = D.derive(a, "panel-state"), D.derive(b, "panel-state")
    assert pa != pb and pa["value"] == 5 and pb["value"] == 60
    ia, ib = (str(CP.panel_props(actx, p)[3]) for p in (pa, pb))
    assert ia != ib and "kernels zeroed" in ia
    n_out = len(A.outside_edges(actx.prepped("tiny").graph, actx.resolve(a).circuit.edges))
    assert f"{n_out} of" in ia
    assert str(CP.panel_props(actx, pa)) == str(CP.panel_props(actx, a))


def test_graph_drawn_from_its_copy(actx, s):
    from viscnn.app.callbacks_graph import circuit_props

    g = actx.prepped("tiny").graph
    st = dict(s, mode="topk", value=30, relu=False)
    st["sel"] = g.node_id(int(actx.resolve(st).circuit.nodes[-1]))
    got = str(circuit_props(actx, D.derive(st, "graph-state")))
    assert got == str(circuit_props(actx, st)) and "topk=30" in got
    assert got != str(circuit_props(actx, dict(st, sel="")))


def test_panel_redrawn_when_its_run_finishes(actx, s):
    import viscnn.app.callbacks_panels as CP

    st = dict(s, target="class:1", sel="conv1:0")
    key = actx.run_key(st)
    assert CP.panel_waits_for(actx, D.derive(st, "panel-state"), {"key": key})
    assert not CP.panel_waits_for(actx, D.derive(st, "panel-state"), {"key": key + "x"})
    assert not CP.panel_waits_for(actx, D.derive(dict(st, sel=""), "panel-state"), {"key": key})
    assert CP.panel_waits_for(actx, D.derive(dict(st, sel="", ablate=[A.OUTSIDE]), "panel-state"), {"key": key})


def test_memo_computes_a_key_once_under_concurrency(actx):
    import threading
    import time

    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return np.arange(3)

    out = []
    ts = [threading.Thread(target=lambda: out.append(actx._memoize(("test-once", 1), slow))) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 1 and len(out) == 4 and all(o is out[0] for o in out)

    def boom():
        calls.append(2)
        raise ValueError("x")

    with pytest.raises(ValueError):
        actx._memoize(("test-fail", 1), boom)
    assert actx._memoize(("test-fail", 1), lambda: 5) == 5  # a failure is not remembered


def test_input_image_fits_its_sidebar_box(actx, s):
    """The input image's figure is as tall as its box in the sidebar (240 px in a 220 px box ran into the upload box)."""
    import viscnn.app.callbacks_panels as CP
    from viscnn.app.shell.layout import INPUT_FIG_H

    fig = CP.panel_props(actx, s)[1]
    assert fig["layout"]["height"] == INPUT_FIG_H
