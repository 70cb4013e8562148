"""The Circuit view's circuit method: ``taylor`` (the default: the circuit is cut from the precomputed or
model-run Taylor scores by the threshold, so a threshold change stays instant), or ``iterative`` /
``learned`` (``viscnn.importance.methods.find_circuit``) with a ``keep`` fraction of the conv kernels,
computed as a job on the server's pool (viscnn.app.jobs) over the images of the set and cached on disk
per (model, target, set, count, method, keep, removal).

The graph's update callback draws the method circuit through ``AppContext.resolve`` (pending until the
job has put it in the cache); this module's callback starts the job, shows its progress and, when it is
done, tells the graph through ``scores-ready``.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional

from dash import Input, Output, State, dcc, html, no_update

from viscnn.errors import ViscnnError

METHODS = ("taylor", "iterative", "learned")
DEFAULT_METHOD = "taylor"  # the app's default: thresholds stay instant
REMOVALS = ("zero", "mean")
DEFAULT_KEEP = 0.05
MAX_IMAGES = 1024  # a method runs the model over its images many times (learned: 200 steps)
METHOD_KEYS = ["method", "keep", "removal"]  # URL keys the circuit depends on besides the threshold


def method_of(s: dict) -> str:
    m = (s or {}).get("method") or DEFAULT_METHOD
    return m if m in METHODS else DEFAULT_METHOD


def keep_of(s: dict) -> float:
    """The state's keep fraction, checked: a fraction of the conv kernels in (0, 1)."""
    try:
        k = float((s or {}).get("keep", DEFAULT_KEEP))
    except (TypeError, ValueError):
        raise ViscnnError(f"keep {s.get('keep')!r} is not a number; give a fraction of the conv kernels, e.g. 0.05") from None
    if not 0 < k < 1:
        raise ViscnnError(f"keep must be a fraction of the conv kernels in (0, 1), got {k:g}")
    return k


def removal_of(s: dict) -> str:
    r = (s or {}).get("removal") or "zero"
    return r if r in REMOVALS else "zero"


def mode_note(s: dict) -> str:
    """The message for a threshold mode with a method that takes a kernel fraction ('' for taylor)."""
    m = method_of(s)
    if m == DEFAULT_METHOD:
        return ""
    return (f"The threshold ({s.get('mode')} = {s.get('value')}) does not apply to the {m} method: it keeps a "
            f"fraction of the conv kernels (Keep); set the method to taylor to cut the circuit by mass, topk or score.")


def method_images(actx, s: dict):
    """(name of the set, positions into the prepped dataset or None for the input image, how many, split)
    of the images a method circuit is found on: ``n`` images of the state's one image set (at most
    MAX_IMAGES), the same images a model run of the scores rests on."""
    from viscnn.app import dataset_sets as D
    from viscnn.app import queries

    pm = actx.prepped(s["model"])
    terms = queries.parse_sets(pm, s["set"])
    if len(terms) != 1 or terms[0][0] != 1.0:
        raise ViscnnError(f"the {method_of(s)} method needs one image set (a class, 'all' or 'image'), not a "
                          f"combination such as {s['set']!r}")
    name = terms[0][1]
    split = (pm.manifest.get("data") or {}).get("split") or "prepped"
    if name == queries.IMAGE_SET:
        return name, None, 1, split
    ds = D.open_dataset(pm)
    n = D.count_of(s.get("n"))
    n = MAX_IMAGES if n is None else min(n, MAX_IMAGES)
    pos = D.set_positions(ds, pm.classes, name, n)
    return name, pos, len(pos), split


def method_key(actx, s: dict) -> str:
    """The cache key of a state's method circuit (raises ViscnnError for a state without one)."""
    from viscnn.app import dataset_sets as D
    from viscnn.app import queries

    m = method_of(s)
    if m == DEFAULT_METHOD:
        raise ViscnnError("the taylor circuit is cut from the scores by the threshold, not computed as a job")
    keep = keep_of(s)
    pm = actx.prepped(s["model"])
    queries.parse_target(pm, s["target"])
    terms = queries.parse_sets(pm, s["set"])
    img = s.get("image", "") if any(n == queries.IMAGE_SET for _, n in terms) else ""
    return (f"method:{s['model']}:{s['target'].strip()}|{s['set'].strip()}:{img}:n={s.get('n') or D.DEFAULT_COUNT}:"
            f"{m}:keep={keep!r}:{removal_of(s)}")


def progress_of(msg: str, n_kernels: int, total_kernels: int) -> Optional[tuple]:
    """(done, total) out of a method's progress message (``find_circuit(progress=...)``), or None."""
    m = re.search(r"step (\d+)/(\d+)", msg)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.search(r"iterative: (\d+) -> (\d+)", msg)
    if m and total_kernels > n_kernels > 0:
        done = math.log(total_kernels / max(int(m.group(2)), 1)) / math.log(total_kernels / n_kernels)
        return min(100, round(100 * done)), 100
    return None


def compute(actx, s: dict, progress: Optional[Callable[[int, int], None]] = None) -> str:
    """Find the state's method circuit and cache it (called on a job thread). Returns the cache key."""
    import time

    from viscnn.app import dataset_sets as D
    from viscnn.app import queries
    from viscnn.app.activations import get_model, to_tensor
    from viscnn.importance.methods import conv_edges, find_circuit, size_of

    key = method_key(actx, s)
    if actx.cache.get(key) is not None:
        return key
    pm = actx.prepped(s["model"])
    name, pos, count, split = method_images(actx, s)
    if pos is None:
        x = to_tensor(actx.image(s["model"], s["image"]), pm)
        batches_fn = lambda: [(x, None)]  # noqa: E731
        where = "the current input image"
    else:
        ds = D.open_dataset(pm)
        batches_fn = lambda: D.dataset_batches(ds, pos)  # noqa: E731
        where = f"{count} {split} images of {name!r}"
    target = queries.parse_target(pm, s["target"])
    keep, method = keep_of(s), method_of(s)
    n, total = size_of(pm.graph, keep), int(conv_edges(pm.graph).sum())
    if progress:
        progress(0, 100)

    def step(msg: str) -> None:
        p = progress_of(msg, n, total)
        if p and progress:
            progress(*p)
    t0 = time.monotonic()
    circ = find_circuit(get_model(pm), pm.graph, target, batches_fn, method, keep=keep, ablation=removal_of(s),
                        progress=step)
    info = {"method": method, "keep": keep, "removal": removal_of(s), "images": count, "set": name, "where": where,
            "conv_kernels": int(circ.settings.get("conv_kernels", n)), "total_conv_kernels": total,
            "seconds": round(time.monotonic() - t0, 1)}
    circ.settings.update({"images": count, "image_set": name})
    actx.cache.set(key, (circ, info), expire=24 * 3600)
    return key


def method_line(info: dict) -> str:
    """What a method circuit rests on, for the circuit line."""
    return (f"Circuit method: {info['method']} ({info['conv_kernels']} of {info['total_conv_kernels']} conv kernels, "
            f"keep {info['keep']:g}, {info['removal']} removal), found on {info['where']} in {info['seconds']:g} s.")


def extend_derived() -> None:
    """The graph's, the faithfulness line's and the panel's ('ablate outside the circuit') copies of the
    state carry the method keys, so that a method change redraws the circuit (viscnn.app.shell.derived)."""
    from viscnn.app.shell import derived

    for sid in ("graph-state", "faith-state"):
        keys = derived.DERIVED[sid]["keys"]
        keys.extend(k for k in METHOD_KEYS if k not in keys)
    for w in derived.DERIVED["panel-state"].get("when", []):
        if w[0] == "ablate":
            w[2].extend(k for k in METHOD_KEYS if k not in w[2])


extend_derived()

_JS = """function(s, prev) {
    const nu = window.dash_clientside.no_update;
    if (!s) { return nu; }
    const keys = %s;
    const out = {};
    for (const k of keys) { out[k] = (k in s) ? s[k] : null; }
    if (!(typeof s.set === 'string' && s.set.includes('image'))) { out.image = null; }
    if (prev && JSON.stringify(prev) === JSON.stringify(out)) { return nu; }
    return out;
}"""
STATE_KEYS = ["model", "target", "set", "metric", "n", "image", "mode", "value"] + METHOD_KEYS


def derive(s: Optional[dict]) -> Optional[dict]:
    """What the clientside callback puts in ``method-state`` (the server side of _JS, for tests)."""
    if not s:
        return None
    out = {k: s.get(k) for k in STATE_KEYS}
    if "image" not in str(s.get("set") or ""):
        out["image"] = None
    return out


def stores() -> list:
    return [dcc.Store(id="method-state"), dcc.Store(id="method-request"),
            dcc.Interval(id="method-poll", interval=300, disabled=True)]


def register(app, actx) -> None:
    import json

    from viscnn.app.shell.layout import progress_line

    app.clientside_callback(_JS % json.dumps(STATE_KEYS), Output("method-state", "data"), Input("state", "data"),
                            State("method-state", "data"))

    @app.callback(Output("method-info", "children"), Output("method-poll", "disabled"),
                  Output("scores-ready", "data", allow_duplicate=True),
                  Input("method-state", "data"), Input("method-poll", "n_intervals"), prevent_initial_call=True)
    def method(s, _tick):
        from dash import ctx

        return method_outputs(actx, s, progress_line, polled=ctx.triggered_id == "method-poll")


def method_outputs(actx, s: Optional[dict], progress_line=None, polled: bool = False):
    """(method line children, poll disabled, scores-ready data or no_update) for a method state: starts
    the job when its circuit is not cached, reports progress while it runs; ``polled``: a poll tick (a
    finished job then tells the graph to draw its circuit)."""
    if not s or method_of(s) == DEFAULT_METHOD:
        return "", True, no_update
    note = html.Div(mode_note(s), className="muted", id="method-mode-note")
    try:
        key = method_key(actx, s)
        method_images(actx, s)
    except ViscnnError as e:
        return [html.Span(str(e), className="warn"), note], True, no_update
    hit = actx.cache.get(key)
    ready = {"key": actx.run_key(s), "error": None, "method": key}
    if hit is not None:
        return [html.Span(method_line(hit[1]), id="method-line"), note], True, (ready if polled else no_update)
    job = actx.jobs.get(key)
    if job is None or (job.finished and job.error is None):  # not started, or its cached value has gone since
        run = dict(s)
        job = actx.jobs.submit(key, lambda p: compute(actx, run, p), force=True)
    if job.finished and job.error:
        return [html.Span(f"{method_of(s)} circuit failed: {job.error}", className="warn"), note], True, \
            dict(ready, error=f"{method_of(s)} circuit failed: {job.error}")
    what = f"finding the {method_of(s)} circuit (keep {keep_of(s):g} of the conv kernels)"
    # progress_line gives a list: nested in another list, React cannot render it (error #31) and the
    # whole method line vanished from the page, so it goes in a Span
    line = html.Span(progress_line(job.done, job.total, what) if progress_line else f"{what}: {job.done}/{job.total}",
                     id="method-progress")
    return [line, note], False, no_update
