"""Ablation measured over the image set (issue 12, item 5): the Circuit view's ablations ('Ablate
selection', 'Ablate outside the circuit') applied to a copy of the model and run over up to 256 images
of the current image set, not only the input image: the target's mean value full vs ablated, the mean
|Δ| per image, accuracy on the set's images before/after and how many images change their predicted
class. Runs as a job on the server's pool (viscnn.app.jobs); the page says how many images of which set.

What an ablation zeroes is what the single-image run (``viscnn.app.activations``) zeroes: a kernel's
weights; a node's whole output channel (its conv's weight rows and bias, i.e. the conv output, BN after
it untouched; an input channel in the image; a class node's logit).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from viscnn.errors import ViscnnError

MAX_IMAGES = 256


def ablated_copy(model, graph, nodes: Sequence[int], edges: Sequence[int]):
    """(a working copy with the kernels ``edges`` and the nodes ``nodes`` zeroed, input channels to zero)."""
    import torch

    from viscnn.app.activations import _zero_kernels
    from viscnn.importance.capture import layer_modules
    from viscnn.model_copy import working_copy

    m = working_copy(model)
    _zero_kernels(m, graph, list(edges))
    mods = layer_modules(m, graph)
    zero_in = []
    with torch.no_grad():
        for n in nodes:
            layer = graph.layers[int(graph.node_layer[n])]
            ch = int(graph.node_channel[n])
            if layer.kind == "input":
                zero_in.append(ch)
                continue
            mod = mods[layer.name]
            mod.weight[ch] = 0
            if getattr(mod, "bias", None) is not None:
                mod.bias[ch] = 0
    return m, sorted(set(zero_in))


def measure(model, graph, target, batches: Iterable, nodes: Sequence[int], edges: Sequence[int],
            progress: Optional[Callable[[int], None]] = None) -> dict:
    """The ablation over ``batches`` of (x, labels or None): per-image target values and predictions of the
    full model and of the ablated copy, summarised."""
    import torch

    from viscnn.importance.capture import capture, layer_modules
    from viscnn.model_copy import working_copy

    full = working_copy(model)
    abl, zero_in = ablated_copy(model, graph, nodes, edges)
    mf, ma = layer_modules(full, graph), layer_modules(abl, graph)
    vf, va, pf, pa, labs = [], [], [], [], []
    done = 0
    for x, y in batches:
        xa = x
        if zero_in:
            xa = x.clone()
            xa[:, zero_in] = 0
        cf = capture(full, mf, graph, target, x, y, clone=True, need_grads=False)
        ca = capture(abl, ma, graph, target, xa, y, clone=True, need_grads=False)
        vf.append(cf.values.double().numpy())
        va.append(ca.values.double().numpy())
        if cf.logits is not None:
            pf.append(cf.logits.argmax(1).numpy())
            pa.append(ca.logits.argmax(1).numpy())
        if y is not None:
            labs.append(np.asarray(y))
        done += int(x.shape[0])
        if progress:
            progress(done)
    if not vf:
        raise ViscnnError("no images to measure the ablation on")
    vf, va = np.concatenate(vf), np.concatenate(va)
    out = {"images": int(len(vf)), "target_full": float(vf.mean()), "target_ablated": float(va.mean()),
           "mean_abs_delta": float(np.abs(va - vf).mean()), "accuracy_full": None, "accuracy_ablated": None,
           "changed": None}
    if pf:
        pf, pa = np.concatenate(pf), np.concatenate(pa)
        out["changed"] = int((pf != pa).sum())
        if labs:
            lab = np.concatenate(labs)
            out["accuracy_full"], out["accuracy_ablated"] = float(np.mean(pf == lab)), float(np.mean(pa == lab))
    return out


def ablation_sets(actx, s: dict):
    """(nodes, edges, description) of the state's ablations, 'outside the circuit' resolved to the current
    circuit's outside kernels (iterative/learned circuits included)."""
    from viscnn.app import activations as A

    pm = actx.prepped(s["model"])
    ablate = list(s.get("ablate") or [])
    if not ablate:
        raise ViscnnError("no ablations to measure: select a node or edge and 'Ablate selection', or 'Ablate "
                          "outside the circuit'")
    nodes, edges = A.parse_ablation(pm.graph, ablate)
    if A.OUTSIDE in ablate:
        r = actx.resolve(s)
        if r.pending or r.circuit is None:
            raise ViscnnError("the circuit is still being computed; measure the ablation when it is drawn")
        edges = sorted(set(edges) | {int(e) for e in A.outside_edges(pm.graph, r.circuit.edges)})
    names = ["everything outside the circuit" if a == A.OUTSIDE else a for a in ablate]
    return nodes, edges, ", ".join(names)


def set_images(actx, s: dict):
    """(set name, positions, split) of the images the ablation is measured on: the count of images per set
    (at most MAX_IMAGES) of the state's one positive prepped image set, evenly spaced through it."""
    from viscnn.app import dataset_sets as D
    from viscnn.app import queries

    pm = actx.prepped(s["model"])
    terms = [name for coef, name in queries.parse_sets(pm, s["set"]) if coef > 0 and name != queries.IMAGE_SET]
    if not terms:
        raise ViscnnError("measuring an ablation on a set needs a prepped image set with a positive coefficient "
                          "(not only 'image')")
    name = terms[0]
    ds = D.open_dataset(pm)
    n = D.count_of(s.get("n"))
    pos = D.set_positions(ds, pm.classes, name, MAX_IMAGES if n is None else min(n, MAX_IMAGES))
    split = (pm.manifest.get("data") or {}).get("split") or "prepped"
    return name, pos, split


def ablation_key(actx, s: dict) -> str:
    from viscnn.app.views.circuit import method as M

    nodes, edges, _ = ablation_sets(actx, s)
    name, pos, _ = set_images(actx, s)
    import hashlib

    h = hashlib.sha1(np.asarray(nodes, np.int64).tobytes() + b"|" + np.asarray(edges, np.int64).tobytes()).hexdigest()
    return f"ablset:{s['model']}:{s['target'].strip()}:{name}:{len(pos)}:{h}:{M.method_of(s)}"


def run(actx, s: dict, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    from viscnn.app import dataset_sets as D
    from viscnn.app import queries
    from viscnn.app.activations import get_model

    pm = actx.prepped(s["model"])
    nodes, edges, what = ablation_sets(actx, s)
    name, pos, split = set_images(actx, s)
    ds = D.open_dataset(pm)
    if progress:
        progress(0, len(pos))
    rep = measure(get_model(pm), pm.graph, queries.parse_target(pm, s["target"]), D.dataset_batches(ds, pos),
                  nodes, edges, (lambda d: progress(d, len(pos))) if progress else None)
    rep.update(where=f"{len(pos)} {split} images of {name!r}", what=what, target=s["target"].strip() or "loss",
               kernels=len(edges), nodes=len(nodes))
    return rep


def result_line(rep: dict) -> list:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    txt = (f"Ablation on {rep['where']} ({rep['what']}: {rep['kernels']} kernels, {rep['nodes']} nodes zeroed): "
           f"mean {rep['target']} {rep['target_full']:.3f} full vs {rep['target_ablated']:.3f} ablated, mean |Δ| "
           f"{rep['mean_abs_delta']:.3f} per image; accuracy on these images {pct(rep['accuracy_full'])} full, "
           f"{pct(rep['accuracy_ablated'])} ablated; ")
    txt += ("predicted class changed on " + f"{rep['changed']} of {rep['images']} images." if rep["changed"] is not None
            else "the model has no class outputs.")
    return [html.Span(txt, id="ablate-set-line")]


def controls() -> list:
    return [html.Button("Measure ablation on the set", id="ablate-set-run",
                        title="Run the ablations above (everything outside the circuit included) over up to 256 "
                              "images of the image set: target full vs ablated, accuracy, predictions changed"),
            html.Div(id="ablate-set-info", className="info"),
            dcc.Store(id="ablate-set-request"), dcc.Interval(id="ablate-set-poll", interval=300, disabled=True)]


def register(app, actx) -> None:
    from viscnn.app.shell.layout import progress_line

    @app.callback(Output("ablate-set-info", "children"), Output("ablate-set-poll", "disabled"),
                  Output("ablate-set-request", "data"),
                  Input("ablate-set-run", "n_clicks"), Input("ablate-set-poll", "n_intervals"),
                  State("ablate-set-request", "data"), State("state", "data"), prevent_initial_call=True)
    def ablate_set(_clicks, _tick, req, s):
        if ctx.triggered_id == "ablate-set-run":
            if not s:
                return no_update, True, no_update
            try:
                key = ablation_key(actx, s)
            except ViscnnError as e:
                return html.Span(str(e), className="warn"), True, None
            run_s = dict(s)
            job = actx.jobs.get(key)
            job = actx.jobs.submit(key, lambda p: actx._memoize(("ablset", key), lambda: run(actx, run_s, p), 32),
                                   force=job is not None and job.finished and actx.memo_get(("ablset", key)) is None)
            req = {"key": key}
        key = (req or {}).get("key")
        job = actx.jobs.get(key) if key else None
        if job is None:
            return "", True, no_update
        if not job.finished:
            return progress_line(job.done, job.total, "measuring the ablation on the set"), False, req
        if job.error:
            return html.Span(job.error, className="warn"), True, req
        rep = actx.memo_get(("ablset", key))
        return (result_line(rep) if rep else ""), True, req
