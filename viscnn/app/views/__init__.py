"""The app's views, one small package each over the shared shell (``viscnn.app.shell``).

A view package has ``layout(models) -> component`` and ``register(app, actx)``; the shell
shows one at a time (the ``view`` key of the URL)."""

from __future__ import annotations

from typing import List, Tuple

# (URL value, tab label, one-line description shown as the tab's tooltip)
VIEWS: List[Tuple[str, str, str]] = [
    ("circuit", "Circuit", "the kernel graph, its circuit for a target, and click-through to maps and kernels"),
    ("artifacts", "Artifacts", "mean feature maps under baseline inputs, padding and kernel asymmetries"),
    ("attribution", "Attribution", "saliency, DeconvNet, guided backprop, CAM and Grad-CAM on the input image"),
    ("compare", "Compare", "the same image and target across prepped models"),
]
VIEW_NAMES = tuple(v for v, _, _ in VIEWS)
DEFAULT_VIEW = "circuit"


def view_packages():
    """The view modules in tab order."""
    from viscnn.app.views import artifacts, attribution, circuit, compare

    return {"circuit": circuit, "artifacts": artifacts, "attribution": attribution, "compare": compare}


class Pending(Exception):
    """Raised by a view's props function when its drawing needs a long computation first: ``fn(progress)``
    computes the value memoized under ``key`` (see :func:`slow`); the view runs it as a job on the
    server's pool (``viscnn.app.jobs``), shows its progress and draws once it is done."""

    def __init__(self, key, fn, what: str, size: int):
        super().__init__(what)
        self.key, self.fn, self.what, self.size = key, fn, what, size

    @property
    def job_key(self) -> str:
        return "view:" + repr(self.key)


def slow(actx, key, fn, what: str, size: int = 16):
    """The value memoized under ``key``, or :class:`Pending` for a job that computes it with
    ``fn(progress)`` (``progress(done, total)``)."""
    hit = actx.memo_get(key)
    if hit is not None:
        return hit
    raise Pending(key, fn, what, size)


def drawn_now(actx, props, s: dict, limit: int = 32) -> dict:
    """``props(actx, s)`` with every :class:`Pending` computation run right here, in this thread (tests,
    exports): the same drawing the page gets once its jobs are done."""
    for _ in range(limit):
        try:
            return props(actx, s)
        except Pending as p:
            actx._memoize(p.key, lambda: p.fn(lambda done, total: None), p.size)
    raise RuntimeError(f"{props.__name__} still pending after {limit} computations")


def run_line(view: str) -> list:
    """A view's progress line for its long computations and the timer that polls them."""
    from dash import dcc, html

    return [dcc.Interval(id=f"{view}-poll", interval=300, disabled=True), html.Div(id=f"{view}-run", className="info")]


def register_view_props(app, actx, view: str, outputs, props, msg: str) -> None:
    """One callback for a view drawn from the URL state: ``props(actx, state)`` -> {id: {prop: value}}
    fills ``outputs`` while ``view`` is shown; a ViscnnError goes to the ``msg`` component's children and
    leaves the last good drawing on the page. A :class:`Pending` computation runs as a job while the
    view's progress line (:func:`run_line`) shows how far it is; the view is drawn when it is done."""
    from dash import Input, Output, no_update

    from viscnn.app.shell.layout import progress_line
    from viscnn.errors import ViscnnError

    n = len(outputs)
    at_msg = [i for i, (c, p) in enumerate(outputs) if (c, p) == (msg, "children")]

    def error(text):
        out = [no_update] * n
        for i in at_msg:
            out[i] = text
        return out

    @app.callback([Output(c, p) for c, p in outputs] + [Output(f"{view}-poll", "disabled"), Output(f"{view}-run", "children")],
                  Input(f"{view}-state", "data"), Input(f"{view}-poll", "n_intervals"),
                  prevent_initial_call=True)  # drawn when its copy of the state arrives (viscnn.app.shell.derived)
    def update(s, _tick):
        if not s or s.get("view") != view:
            return [no_update] * n + [True, no_update]
        try:
            got = props(actx, s)
        except Pending as p:
            job = actx.jobs.get(p.job_key)
            if job is not None and job.finished and job.error:
                return error(job.error) + [True, ""]
            job = actx.jobs.submit(p.job_key, lambda progress, p=p: actx._memoize(p.key, lambda: p.fn(progress), p.size),
                                   force=job is not None and job.finished)  # finished, but its value left the memo
            return [no_update] * n + [False, progress_line(job.done, job.total, p.what)]
        except ViscnnError as e:
            return error(str(e)) + [True, ""]
        return [got[c][p] for c, p in outputs] + [True, ""]
