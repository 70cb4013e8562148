"""The app's job pool (viscnn.app.jobs): one run per key, progress readable while it runs, errors kept
as messages (the server keeps serving), a failed key can be retried."""

import threading
import time

from viscnn.app.jobs import Jobs
from viscnn.errors import ViscnnError


def wait(job, timeout=10.0):
    t = time.time()
    while not job.finished and time.time() - t < timeout:
        time.sleep(0.01)
    assert job.finished


def test_one_run_per_key_and_progress():
    jobs = Jobs(workers=2)
    gate, runs = threading.Event(), []

    def fn(progress):
        runs.append(1)
        progress(3, 10)
        gate.wait(5)
        progress(10, 10)

    a = jobs.submit("k", fn)
    b = jobs.submit("k", fn)  # same key while running: the same job
    assert a is b
    t = time.time()
    while a.done != 3 and time.time() - t < 5:
        time.sleep(0.01)
    st = a.status()
    assert (st["done"], st["total"], st["finished"]) == (3, 10, False)
    gate.set()
    wait(a)
    assert a.status()["done"] == 10 and a.error is None and len(runs) == 1
    assert jobs.submit("k", fn) is a and len(runs) == 1  # finished without error: not rerun


def test_errors_are_messages_and_can_be_retried():
    jobs = Jobs(workers=1)

    def bad(progress):
        raise ViscnnError("no such class")

    def crash(progress):
        raise RuntimeError("boom")

    a = jobs.submit("x", bad)
    wait(a)
    assert a.error == "no such class"
    c = jobs.submit("y", crash)
    wait(c)
    assert "RuntimeError: boom" in c.error
    again = jobs.submit("x", lambda p: None)  # a failed key starts a new job
    wait(again)
    assert again is not a and again.error is None
    assert jobs.get("nope") is None


def test_a_slow_view_runs_as_a_job_with_progress_then_draws(tmp_path):
    """Through Dash's real endpoint: the Artifacts view's analysis is not ready, so the first answer
    turns its poll timer on and shows a progress bar; a later tick draws the view and stops the timer."""
    from app_fixture import make_prepped
    from viscnn.app.server import create_app

    make_prepped(tmp_path, "tiny")
    app = create_app(tmp_path, "tiny", cache_dir=tmp_path / "cache")
    client = app.server.test_client()
    s = dict(app.viscnn.defaults("tiny"), view="artifacts")
    key = next(k for k in app.callback_map if "art-body.children" in k)
    outs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in key.strip(".").split("...")]

    def post(tick):
        r = client.post("/_dash-update-component", json={
            "output": key, "outputs": outs, "changedPropIds": ["artifacts-poll.n_intervals" if tick else "state.data"],
            "inputs": [{"id": "state", "property": "data", "value": s},
                       {"id": "artifacts-poll", "property": "n_intervals", "value": tick}]})
        assert r.status_code == 200, r.data[:300]
        return r.get_json()["response"]

    first = post(0)
    assert first["artifacts-poll"]["disabled"] is False and "art-body" not in first
    assert "progress" in str(first["artifacts-run"]["children"]).lower()
    t, tick = time.time(), 0
    while time.time() - t < 60:
        tick += 1
        got = post(tick)
        if "art-body" in got:
            break
        time.sleep(0.1)
    assert "art-body" in got and got["artifacts-poll"]["disabled"] is True and got["artifacts-run"]["children"] == ""
    assert "conv layers" in str(got["art-info"]["children"])
