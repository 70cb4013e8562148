"""The Attribution view's callback: the URL state in, the maps out (``attribution_props`` is pure
enough to test without a browser: it needs only the app context)."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from dash import dcc, html

from viscnn.app.figures.colors import symmetric_limit
from viscnn.app.figures.panels import heatmap, image_figure
from viscnn.app.views.attribution.compute import METHODS, AttributionResult, attribute_image
from viscnn.app.views import slow
from viscnn.errors import ViscnnError

OUTPUTS = [("attr-maps", "children"), ("attr-info", "children"), ("attr-msg", "children"), ("attr-layer", "options")]
MAP_H = 250


def layer_options(pm) -> List[dict]:
    return [{"label": "auto (last spatial map)", "value": ""}] + [
        {"label": l.name, "value": l.name} for l in pm.graph.layers if l.kind == "conv"]


def _nets(actx, name: str, restrict_edges: Optional[np.ndarray], key: str):
    """(plain model, traced model) for the prepped model, or for its circuit-masked copy; built once."""
    from viscnn.app.activations import get_model
    from viscnn.attribution.base import traced

    def make():
        pm = actx.prepped(name)
        m = get_model(pm)
        if restrict_edges is not None:
            from viscnn.importance.faithfulness import masked_model

            m = masked_model(m, pm.graph, restrict_edges)
        return m, traced(m)

    return actx._memoize(("attr-net", name, key), make, 8)


def _row(title: str, res: AttributionResult, scale: str, in_circuit: bool = False) -> html.Div:
    sl = max([symmetric_limit(r.map2d) for r in res.maps if r.map2d is not None and r.signed] or [1.0])
    ml = max([float(np.max(r.map2d)) for r in res.maps if r.map2d is not None and not r.signed] or [1.0]) or 1.0
    cells = []
    for r in res.maps:
        if r.map2d is None:
            cells.append(html.Div([html.B(r.label), html.Div(r.note, className="warn")], className="attr-cell"))
            continue
        fig = heatmap(r.map2d, title=r.label, diverging=r.signed, height=MAP_H,
                      colorbar_title="attribution" if r.signed else "|attribution|")
        if scale == "shared":
            tr = fig["data"][0]
            if r.signed:
                tr.update({"zmin": -sl, "zmax": sl})
            else:
                tr.update({"zmin": 0, "zmax": ml})
        zero = not np.any(r.map2d)
        note = ("all zero: nothing flows from the input to this target through this model"
                + (" (the circuit has no path to it)" if in_circuit else "")) if zero else r.note
        cells.append(html.Div([dcc.Graph(figure=fig, config={"displaylogo": False}),
                               html.Div(note, className="warn" if zero else "muted")], className="attr-cell", title=r.note))
    return html.Div([html.H4(title), html.Div(cells, className="row attr-row")])


def attribution_props(actx, s: dict) -> Dict[str, dict]:
    """{component id: {prop: value}} for the Attribution view of a state."""
    from viscnn.app.activations import to_tensor

    name = s["model"]
    pm = actx.prepped(name)
    opts = layer_options(pm)
    methods = [m for m in (s.get("methods") or []) if m in METHODS]
    if not methods:
        return {"attr-maps": {"children": []}, "attr-info": {"children": ""},
                "attr-msg": {"children": "pick at least one method"}, "attr-layer": {"options": opts}}
    arr = actx.image(name, s["image"])
    x = to_tensor(arr, pm)
    layer = s.get("alayer") or ""
    if layer and layer not in {o["value"] for o in opts}:
        raise ViscnnError(f"no conv layer {layer!r} in {name}")
    thr = float(s.get("athr", 0.5))
    rows = [("Full model", None, "full")]
    msg = ""
    if s.get("arestrict"):
        r = actx.resolve(s)
        if r.pending or r.circuit is None:
            msg = "The circuit for this target is still being computed in the Circuit view; showing the full model."
        else:
            edges = np.asarray(r.circuit.edges, np.int64)
            rows.append((f"Circuit only: {len(edges)} of {pm.graph.num_edges} kernels kept "
                         f"({s['target']}, {s['mode']}={s['value']:g}, set {s['set']})", edges,
                         f"circ:{actx.run_key(s)}:{s['target']}:{s['set']}:{s['metric']}:{s['mode']}:{s['value']}"))
    classes = list(pm.classes or [])
    blocks, first = [], None
    for title, edges, key in rows:
        model, net = _nets(actx, name, edges, key)
        tgt = s.get("atarget") or ""
        res = slow(actx, ("attr-res", name, key, s["image"], tuple(methods), tgt, layer, thr),
                   lambda progress, model=model, net=net: attribute_image(model, x, methods, tgt, layer, classes, thr, net=net),
                   f"{', '.join(methods)} on the input image", 16)
        first = first or res
        blocks.append(_row(title, res, s.get("ascale", "permap"), in_circuit=edges is not None))
    img = [html.Div(dcc.Graph(figure=image_figure(arr, title="input image", height=MAP_H), config={"displaylogo": False}),
                    className="attr-cell")]
    if first.crop_mask is not None:
        crop = np.asarray(arr).copy()
        crop[~first.crop_mask] = 0
        box = first.crop_box
        img.append(html.Div(dcc.Graph(figure=image_figure(crop, box=(box[0], box[2], box[1], box[3]) if box else None,
                                                          title=f"Grad-CAM crop (map > {thr:g})", height=MAP_H),
                                      config={"displaylogo": False}), className="attr-cell",
                            title="The input where the normalised Grad-CAM map exceeds the threshold, and its bounding box"))
    at = f"; Grad-CAM family at {first.layer}" if first.layer else ""
    info = (f"Explaining {first.target} of {name} on {s['image'].split(':', 1)[-1]}{at}. "
            "Maps are w.r.t. the model's input tensor; red = positive, blue = negative (signed methods), "
            "dark to yellow = magnitude.")
    return {"attr-maps": {"children": [html.Div(img, className="row attr-row")] + blocks},
            "attr-info": {"children": info}, "attr-msg": {"children": msg}, "attr-layer": {"options": opts}}


def register(app, actx) -> None:
    from viscnn.app.views import register_view_props

    register_view_props(app, actx, "attribution", OUTPUTS, attribution_props, "attr-msg")
