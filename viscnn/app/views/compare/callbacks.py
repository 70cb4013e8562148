"""The Compare view's callback: one method, the current image, every prepped model that takes it (same
channels and size), and the current model at a second input size. ``compare_props`` is pure enough to
test without a browser."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
from dash import dcc, html

from viscnn.app.figures.colors import symmetric_limit
from viscnn.app.figures.panels import heatmap
from viscnn.app.views.artifacts.callbacks import parse_size
from viscnn.app.views.attribution.compute import METHODS, attribute_image
from viscnn.app.views import slow
from viscnn.errors import ViscnnError

OUTPUTS = [("cmp-body", "children"), ("cmp-info", "children"), ("cmp-msg", "children")]


def _resized(arr: np.ndarray, hw) -> np.ndarray:
    from PIL import Image

    a = np.asarray(arr, np.uint8)
    return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), Image.BILINEAR))


def random_copy(model, seed: int = 1):
    """A copy of ``model`` with freshly initialised weights (its own ``reset_parameters``, seeded): the
    "random weights" baseline the journey compares trained filters with."""
    import copy

    import torch

    m = copy.deepcopy(model)
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        for mod in m.modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
    return m


def weight_pictures(models) -> html.Div:
    """The first conv layer of each ``(title, model)``: RGB filters (each normalised on its own) for
    3-channel inputs, else the kernels on the diverging map (one symmetric scale per layer); each picture
    says under it how to read its colours."""
    from viscnn.app.figures.colors import diverging_css, diverging_rgb
    from viscnn.app.figures.panels import data_uri, png_bytes
    from viscnn.attribution.render import to_uint8
    from viscnn.attribution.weights import conv_weight, first_conv, grid, rgb_filter_grid

    cells = []
    for title, m in models:
        name, conv = first_conv(m)
        if conv.in_channels == 3:
            pic = rgb_filter_grid(m, name, cols=8)
            key = "RGB, each filter stretched to its own min..max"
        else:  # signed kernels on the app's diverging map, one symmetric scale per layer
            w = conv_weight(m, name)[1]
            lim = float(np.abs(w).max()) or 1.0
            if conv.in_channels == 1:  # one kernel per filter: a square-ish grid, not a one-column strip
                pic = grid(diverging_rgb(w[:, 0] / lim) / 255.0, int(np.ceil(np.sqrt(len(w)))), 1)
            else:  # row = output channel, column = input channel
                w = w[:64, :64]
                pic = grid(diverging_rgb(w.reshape(-1, *w.shape[2:]) / lim) / 255.0, w.shape[1], 1)
            key = [html.Span("red = positive", style={"color": diverging_css(1.0)}), ", ",
                   html.Span("blue = negative", style={"color": diverging_css(-1.0)}), f", white = 0; scale ±{lim:.3g}"]
        a = to_uint8(pic)
        up = max(1, 200 // max(a.shape[:2]))
        a = a.repeat(up, 0).repeat(up, 1)
        cells.append(html.Div([html.Img(src=data_uri(png_bytes(a)), className="art-tile"),
                               html.Div(f"{title}: {name}", className="muted"),
                               html.Div(key, className="muted weight-key")], className="attr-cell"))
    return html.Div([html.H4("Weights of the first conv layer", title="RGB filters each normalised on its own; other "
                             "kernels red = positive, blue = negative on one scale per layer (a grid of output x "
                             "input channels when the input has more than one channel)"),
                     html.Div(cells, className="row attr-row")])


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
        except ViscnnError as e:
            results.append((title, None, str(e)))
            continue
        tgt = s.get("ctarget") or ""

        def run(progress, model=model, net=net, x=x, po=po):
            try:
                return attribute_image(model, x, [method], tgt, "", list(po.classes or []), net=net)
            except ViscnnError as e:  # kept (memoized) as this model's answer: its cell says why
                return e
        r = slow(actx, ("cmp-res", mname, title, s["image"], method, tgt, tuple(x.shape[-2:])), run,
                 f"{method} on {mname}", 32)
        results.append((title, None, str(r)) if isinstance(r, ViscnnError) else (title, r, None))
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
    wmodels = [(t, _nets(actx, mn, None, "full")[0]) for t, mn, _ in runs if " at " not in t]
    rand = actx._memoize(("random-weights", name), lambda: random_copy(get_model(pm)), 8)  # not per state change
    wmodels.append((f"{name} with random weights", rand))
    try:
        weights = weight_pictures(wmodels)
    except ViscnnError as e:
        weights = html.Div(f"weight pictures: {e}", className="warn")
    return {"cmp-body": {"children": [html.Div(cells, className="row attr-row"), weights]}, "cmp-info": {"children": info},
            "cmp-msg": {"children": ""}}


def register(app, actx) -> None:
    from viscnn.app.views import register_view_props

    register_view_props(app, actx, "compare", OUTPUTS, compare_props, "cmp-msg")
