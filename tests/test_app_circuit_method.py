"""The Circuit view's circuit method (issue 12, item 2 in the app): taylor stays the threshold on the
scores; iterative/learned with a keep fraction run as a job over the set's images, are cached per
(model, target, set, count, method, keep, removal), and the circuit line says which method on which images."""

import numpy as np
import pytest

from app_fixture import default_model
from viscnn.app import dataset_sets as D
from viscnn.app import queries
from viscnn.app.context import AppContext
from viscnn.app.views.circuit import method as M
from viscnn.errors import ViscnnError


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    mdir, name = default_model()
    return AppContext(mdir, name, tmp_path_factory.mktemp("cache")), name


def test_default_is_taylor_and_keys_are_in_the_url(fmnist):
    from viscnn.app import state as st

    actx, name = fmnist
    s = actx.defaults(name)
    assert s["method"] == "taylor" and s["keep"] == M.DEFAULT_KEEP and s["removal"] == "zero"
    pm = actx.prepped(name)
    url = st.encode(dict(s, method="learned", keep=0.02))
    assert "method=learned" in url and "keep=0.02" in url
    back, warns = st.decode(url, s, pm.metrics, actx.layouts(name))
    assert back["method"] == "learned" and back["keep"] == 0.02 and not warns
    bad, warns = st.decode("?method=magic", s, pm.metrics, actx.layouts(name))
    assert bad["method"] == "taylor" and warns
    with pytest.raises(ViscnnError):
        M.method_key(actx, s)  # taylor has no job


def test_cache_key_has_every_setting(fmnist):
    actx, name = fmnist
    s = dict(actx.defaults(name), target="class:Trouser", set="Trouser", n="64", method="learned", keep=0.05)
    keys = {M.method_key(actx, dict(s, **ch)) for ch in
            ({}, {"method": "iterative"}, {"keep": 0.1}, {"removal": "mean"}, {"n": "256"}, {"set": "all"},
             {"target": "class:Bag"}, {"model": name})}
    assert len(keys) == 7  # the last one repeats the first
    assert M.method_key(actx, dict(s, mode="topk", value=7)) == M.method_key(actx, s)  # the threshold does not apply


def test_bad_settings_are_messages(fmnist):
    actx, name = fmnist
    s = dict(actx.defaults(name), method="learned")
    for bad in (0, 1, 2, "x"):
        with pytest.raises(ViscnnError, match="keep"):
            M.keep_of(dict(s, keep=bad))
    with pytest.raises(ViscnnError, match="one image set"):
        M.method_images(actx, dict(s, set="Sneaker - all"))
    assert "does not apply to the learned method" in M.mode_note(dict(s, mode="mass", value=0.5))
    assert M.mode_note(dict(s, method="taylor")) == ""
    line, poll_off, ready = M.method_outputs(actx, dict(s, set="Sneaker - all"))
    assert "one image set" in str(line) and poll_off


def test_progress_of():
    assert M.progress_of("learned: step 21/200, mask size 5000, fit 0.1", 360, 7200) == (21, 200)
    assert M.progress_of("iterative: 7200 -> 5760 kernels", 360, 7200)[1] == 100
    assert M.progress_of("iterative: 450 -> 360 kernels", 360, 7200) == (100, 100)
    assert M.progress_of("something else", 360, 7200) is None


def test_iterative_circuit_equals_find_circuit_on_the_same_images(fmnist):
    """The job's circuit is find_circuit over the same N images of the set the scores rest on; resolve
    draws it once cached, and the circuit line names the method and the images."""
    from viscnn.app.activations import get_model
    from viscnn.importance.methods import find_circuit

    actx, name = fmnist
    s = dict(actx.defaults(name), target="class:Trouser", set="Trouser", n="64", method="iterative", keep=0.02)
    assert actx.resolve(s).pending  # not computed yet: the graph waits
    seen = []
    key = M.compute(actx, s, lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 100) and seen[-1][0] == seen[-1][1] and len(seen) > 2
    r = actx.resolve(s)
    assert not r.pending
    pm = actx.prepped(name)
    ds = D.open_dataset(pm)
    pos = D.set_positions(ds, pm.classes, "Trouser", 64)
    ref = find_circuit(get_model(pm), pm.graph, queries.parse_target(pm, "class:Trouser"),
                       lambda: D.dataset_batches(ds, pos), "iterative", keep=0.02)
    assert np.array_equal(np.sort(r.circuit.edges), np.sort(ref.edges))
    assert np.array_equal(np.sort(r.circuit.nodes), np.sort(ref.nodes))
    assert r.circuit.settings["method"] == "iterative" and r.circuit.settings["images"] == 64
    basis = queries.basis(pm, r.query, bool(r.run_key), r.run_info)
    assert "Circuit method: iterative (144 of 7200 conv kernels" in basis
    assert "found on 64 train images of 'Trouser'" in basis
    # the page: the graph's props are the method circuit's, and the method line says so
    from viscnn.app.callbacks_graph import circuit_props

    props = circuit_props(actx, s)
    assert f"{len(ref.edges)} of {pm.graph.num_edges} edges" in str(props["edge-info"]["children"])
    line, poll_off, _ = M.method_outputs(actx, s)
    assert "iterative" in str(line) and poll_off
    # a threshold change does not touch it; taylor is the threshold circuit again
    assert actx.resolve(dict(s, mode="topk", value=3)).circuit is not None
    t = actx.resolve(dict(s, method="taylor", mode="topk", value=50))
    assert len(t.circuit.edges) <= 60 and "method" not in (t.run_info or {})
    # the snapshot records the method
    from viscnn.app import snapshot as S

    d = S.snapshot_dict(name, s, pm.graph, r.circuit.nodes, r.circuit.edges, r.node_scores, r.edge_scores)
    assert d["settings"]["method"] == "iterative" and d["settings"]["keep"] == 0.02
    assert key in actx.cache


def test_derived_copies_carry_the_method(fmnist):
    from viscnn.app.shell.derived import derive

    actx, name = fmnist
    s = dict(actx.defaults(name), method="learned", keep=0.1)
    for sid in ("graph-state", "faith-state"):
        d = derive(s, sid)
        assert d["method"] == "learned" and d["keep"] == 0.1
    assert derive(dict(s, ablate=["outside"]), "panel-state")["method"] == "learned"
    assert "method" not in derive(s, "run-state")  # the scores do not depend on it
    assert M.derive(s)["method"] == "learned"


def test_running_line_has_no_nested_list(fmnist, monkeypatch):
    """React cannot render a list inside a list of children (error #31): the method line vanished from
    the page while a job ran. Every child of the running line must be one component or a string."""
    from types import SimpleNamespace

    from dash.development.base_component import Component

    from viscnn.app.shell.layout import progress_line

    actx, name = fmnist
    s = dict(actx.defaults(name), target="class:Trouser", set="Trouser", n="64", method="learned", keep=0.05)
    running = SimpleNamespace(finished=False, error=None, done=21, total=200)
    monkeypatch.setattr(actx.jobs, "get", lambda key: running)
    line, poll_off, _ = M.method_outputs(actx, s, progress_line)
    assert not poll_off and all(isinstance(c, (Component, str)) for c in line)
    assert "21/200" in str(line) and "finding the learned circuit" in str(line)
