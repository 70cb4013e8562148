"""The current circuit's faithfulness, measured on request in the Circuit view: the model with every
kernel outside the circuit zeroed against the full model, on held-out images of the image set (not
the ones that scored the circuit), next to random circuits with as many kernels per layer
(``viscnn.importance.faithfulness``). Runs as a job on the server's pool; the page says what it rests on.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from dash import Input, Output, State, ctx, html, no_update

from viscnn.errors import ViscnnError

MEASURE_IMAGES = 256
RANDOM_CIRCUITS = 5
CURVE_RANDOM = 3  # random circuits per size on the faithfulness-vs-size curve


def faith_key(actx, s: dict) -> str:
    r = actx.resolve(s)
    from viscnn.app.views.circuit import method as M

    if M.method_of(s) != M.DEFAULT_METHOD:
        return f"faith:{r.run_key}:{M.method_key(actx, s)}"
    return f"faith:{s['model']}:{r.query.key}:{r.run_key}:{s['mode']}:{s['value']}"


def measure(actx, s: dict, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """The faithfulness report of the state's circuit, with where its images came from."""
    from viscnn.app import dataset_sets as D
    from viscnn.app import queries
    from viscnn.app.activations import get_model
    from viscnn.importance.faithfulness import faithfulness
    from viscnn.importance.faithfulness_curve import size_curve

    r = actx.resolve(s)
    if r.pending or r.circuit is None:
        raise ViscnnError("the circuit is still being computed; measure it when it is drawn")
    pm = r.pm
    terms = [name for coef, name in queries.parse_sets(pm, s["set"]) if coef > 0 and name != queries.IMAGE_SET]
    if not terms:
        raise ViscnnError("faithfulness needs a prepped image set with a positive coefficient (not only 'image')")
    name = terms[0]
    ds = D.open_dataset(pm)
    pool = D.set_positions(ds, pm.classes, name, None)
    split = (pm.manifest.get("data") or {}).get("split") or "prepped"
    minfo = (r.run_info or {}).get("method")
    if minfo and minfo.get("set") == name:  # an iterative/learned circuit found on N images of the set
        scored = D.set_positions(ds, pm.classes, name, minfo["images"])
        held = np.setdiff1d(pool, scored)
        where = (f"held-out {split} images of {name!r} (not the {len(scored)} the {minfo['method']} circuit "
                 f"was found on)")
    elif r.run_key:  # the scores came from N images of the set: measure on others
        scored = D.set_positions(ds, pm.classes, name, D.count_of(s.get("n")))
        held = np.setdiff1d(pool, scored)
        where = f"held-out {split} images of {name!r} (not the {len(scored)} that scored the circuit)"
    else:  # precomputed scores rest on every image of the set: there is nothing held out
        held = pool
        where = f"{split} images of {name!r} (the precomputed scores rest on every image of the set: none is held out)"
    if not len(held):
        raise ViscnnError(f"no images of {name!r} left to measure on")
    pick = held[np.unique(np.linspace(0, len(held) - 1, min(MEASURE_IMAGES, len(held))).round().astype(np.int64))]

    def batches():
        done = 0
        for b in D.dataset_batches(ds, pick):
            yield b
            done += int(b[0].shape[0])
            if progress:
                progress(round(50 * done / len(pick)), 100)
    if progress:
        progress(0, 100)
    target = queries.parse_target(pm, s["target"])
    model = get_model(pm)
    rep = faithfulness(model, pm.graph, target, r.circuit, batches(), n_random=RANDOM_CIRCUITS)
    rep["where"] = f"{len(pick)} {where}"
    targets = queries.target_nodes(pm, s["target"])
    rep["curve"] = size_curve(model, pm.graph, target,
                              lambda f: queries.circuit_of(pm.graph, r.node_scores, r.edge_scores, {"keep": f}, targets),
                              D.dataset_batches(ds, pick), n_random=CURVE_RANDOM,
                              progress=(lambda d, t: progress(50 + round(50 * d / t), 100)) if progress else None)
    return rep


def faith_children(rep: dict) -> list:
    """The report as one line of text for the page."""
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    c, rnd = rep["circuit"], rep["random"]
    parts = [html.B("Faithfulness"), f" on {rep['where']}: the circuit alone ({rep['edges']} of {rep['total_edges']} "
             f"kernels, every other one zeroed) vs the full model's target value: Pearson {fmt(c['pearson'])}, "
             f"Spearman {fmt(c['spearman'])}, relative error {fmt(c['relative_error'])} (mean |Δ| / mean |full|). "
             f"{rep['random_circuits']} random circuits with as many kernels per layer: Pearson {fmt(rnd['pearson'])} "
             f"(best {fmt(rnd.get('pearson_best'))}), relative error {fmt(rnd['relative_error'])}."]
    p = rep.get("predictions")
    if p:
        parts.append(f" With the class layer whole, the circuit model calls {100 * p['accuracy_circuit']:.0f}% of "
                     f"these images class {p['class']} (full model {100 * p['accuracy_full']:.0f}%).")
    if rep.get("warning"):
        parts.append(html.Span(" " + rep["warning"], className="warn"))
    if rep.get("curve") and any(v is not None for v in rep["curve"].get("pearson", [])):  # else nothing to plot
        from dash import dcc

        from viscnn.app.figures.faith_curve import faith_curve_figure

        fig = faith_curve_figure(rep["curve"], rep["edges"], rep["total_edges"], rep["where"])
        parts.append(dcc.Graph(id="faith-curve", figure=fig, config={"displaylogo": False}, className="faith-curve"))
    return parts


def register(app, actx) -> None:
    from viscnn.app.shell.layout import progress_line

    @app.callback(Output("faith-info", "children"), Output("faith-poll", "disabled"),
                  Input("faith-run", "n_clicks"), Input("faith-poll", "n_intervals"), Input("faith-state", "data"),
                  prevent_initial_call=True)
    def faith(_clicks, _tick, s):
        if not s or s.get("view") != "circuit":
            return no_update, True
        try:
            key = faith_key(actx, s)
        except ViscnnError:
            return "", True
        job = actx.jobs.get(key)
        if ctx.triggered_id == "faith-run":
            run = dict(s)
            job = actx.jobs.submit(key, lambda p: actx._memoize(("faith", key), lambda: measure(actx, run, p), 32),
                                   force=job is not None and job.finished and actx.memo_get(("faith", key)) is None)
        if job is None:
            return "", True  # not measured for this circuit (yet): no stale figure stays on the page
        if not job.finished:
            return progress_line(job.done, job.total, "measuring faithfulness and its curve over sizes"), False
        if job.error:
            return html.Span(job.error, className="warn"), True
        rep = actx.memo_get(("faith", key))
        return (faith_children(rep) if rep else ""), True
