"""The Compare view's callback: one method, the current image, every prepped model that takes it (same
channels and size), and the current model at a second input size. ``compare_props`` is pure enough to
test without a browser."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
from dash import Input, Output, dcc, html, no_update

from viscnn.app.figures.colors import symmetric_limit
from viscnn.app.figures.panels import heatmap
from viscnn.app.views.artifacts.callbacks import parse_size
from viscnn.app.views.attribution.compute import METHODS, attribute_image
from viscnn.errors import ViscnnError

OUTPUTS = [("cmp-body", "children"), ("cmp-info", "children"), ("cmp-msg", "children")]


def _resized(arr: np.ndarray, hw) -> np.ndarray:
    from PIL import Image

    a = np.asarray(arr, np.uint8)
    return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), Image.BILINEAR))


def compare_props(actx, s: dict) -> Dict[str, dict]:
    from viscnn.app.activations import get_model, to_tensor
    from viscnn.app.views.attribution.callbacks import _nets

    name = s["model"]
    pm = actx.prepped(name)
    method = s.get("cmethod") or "gradcam"
    if method not in METHODS:
        raise ViscnnError(f"unknown method {method!r}")
    arr = actx.image(name, s["image"])
    runs = []  # (title, prepped model, image array)
    skipped = []
    for other in actx.models():
        po = actx.prepped(other)
        if tuple(po.input_shape) == tuple(pm.input_shape):
            runs.append((other + (" (this model)" if other == name else ""), other, arr))
        else:
            skipped.append(f"{other} ({'x'.join(map(str, po.input_shape))})")
    size = parse_size(s.get("csize", ""))
    if size:
        runs.append((f"{name} at {size[0]}×{size[1]}", name, _resized(arr, size)))
    results = []
    for title, mname, a in runs:
        po = actx.prepped(mname)
        model, net = _nets(actx, mname, None, "full")
        try:
            x = to_tensor(a, po)
            r = attribute_image(model, x, [method], s.get("ctarget") or "", "", list(po.classes or []), net=net)
            results.append((title, r, None))
        except ViscnnError as e:
            results.append((title, None, str(e)))
    maps = [r.maps[0] for _, r, _ in results if r is not None and r.maps[0].map2d is not None]
    raw = s.get("cscale") == "raw"
    signed = bool(maps and maps[0].signed)
    lim = max([symmetric_limit(m.map2d) if signed else float(np.max(m.map2d)) for m in maps] or [1.0]) or 1.0
    cells: List = []
    for title, r, err in results:
        if r is None or r.maps[0].map2d is None:
            cells.append(html.Div([html.B(title), html.Div(err or r.maps[0].note, className="warn")], className="attr-cell"))
            continue
        m = r.maps[0]
        fig = heatmap(m.map2d, title=f"{title}<br>{r.target}", diverging=m.signed, height=280)
        if raw:
            fig["data"][0].update({"zmin": -lim, "zmax": lim} if m.signed else {"zmin": 0, "zmax": lim})
        cells.append(html.Div(dcc.Graph(figure=fig, config={"displaylogo": False}), className="attr-cell"))
    label, _, what = METHODS[method]
    info = (f"{label} ({what}) of the current image on {len(runs)} model runs"
            + (f"; raw values on one scale (±{lim:.3g})" if raw and signed else "; raw values on one scale" if raw else
               "; each map on its own scale")
            + (f". Not compared (another input shape): {', '.join(skipped)}" if skipped else "")
            + (". Only one prepped model takes this image: prep another (or set a second input size) to compare."
               if len(runs) == 1 else ""))
    return {"cmp-body": {"children": html.Div(cells, className="row attr-row")}, "cmp-info": {"children": info},
            "cmp-msg": {"children": ""}}


def register(app, actx) -> None:
    @app.callback([Output(c, p) for c, p in OUTPUTS], Input("state", "data"))
    def update(s):
        if not s or s.get("view") != "compare":
            return [no_update] * len(OUTPUTS)
        try:
            props = compare_props(actx, s)
        except ViscnnError as e:
            return [no_update, no_update, str(e)]
        return [props[c][p] for c, p in OUTPUTS]
