"""The Artifacts view's callback: the URL state in, the analysis out (``artifacts_props`` needs only the
app context, so it is tested without a browser). Maps are small PNG tiles on the app's diverging map."""

from __future__ import annotations

import base64
import io
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
from dash import ALL, Input, Output, ctx, dash_table, html, no_update

from viscnn.app.figures.colors import diverging_css, symmetric_limit
from viscnn.app.views import slow
from viscnn.errors import ViscnnError

OUTPUTS = [("art-body", "children"), ("art-info", "children"), ("art-msg", "children"), ("art-drill", "options")]
PATCH_IMAGES = 256
DRILL_MAX = 64


def _uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def tile(arr: np.ndarray, limit: Optional[float] = None, side: int = 96, title: str = "") -> html.Img:
    from viscnn.artifacts.figures import heat

    return html.Img(src=_uri(heat(arr, limit, side)), title=title, className="art-tile")


def parse_size(text: str) -> Optional[Tuple[int, int]]:
    """``"29x29"`` / ``"29"`` -> (29, 29); empty -> None; anything else a one-line error."""
    t = (text or "").strip().lower()
    if not t:
        return None
    m = re.fullmatch(r"(\d{1,4})\s*(?:[x×, ]\s*(\d{1,4}))?", t)
    if not m:
        raise ViscnnError(f"compare size {text!r}: write H x W, e.g. 29x29")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def patch_source(pm) -> Optional[str]:
    """The image-set spec of the prepped model's own data, for the mean patches (None: random noise)."""
    data = pm.manifest.get("data") or {}
    if data.get("kind") == "fashion-mnist":
        return f"fmnist:{data.get('split') or 'train'}"
    if data.get("kind") == "folder" and data.get("root"):
        return str(data["root"])
    return None


def _analysis(actx, name: str, s: dict, hw: Tuple[int, int]):
    from viscnn.app.activations import get_model
    from viscnn.artifacts.analysis import analyse

    pm = actx.prepped(name)
    key = ("art", name, s.get("baseline"), s.get("astage"), s.get("drill") or "", hw)

    def make(progress):
        return analyse(get_model(pm), (pm.input_shape[0], *hw), pm.normalize, s.get("baseline") or "zero",
                       images=patch_source(pm), patch_images=PATCH_IMAGES, stage=s.get("astage") or "conv",
                       layer=s.get("drill") or None, model_name=name, progress=progress)

    return slow(actx, key, make, f"analysing {name} at {hw[0]}×{hw[1]} (padding audit, mean maps, drill-down, patches)", 8)


def _strip(a, lim_all: Optional[float] = None) -> html.Div:
    cells = []
    for m, sc in zip(a.mean_maps, a.layer_scores):
        mark = f" ↓{m.stride[0]}" if max(m.stride) > 1 else ""
        cells.append(html.Div([tile(m.map, lim_all, 96, f"{m.layer}: click to drill down"),
                               html.Div(html.B(m.layer + mark)), html.Div(m.title, className="muted"),
                               html.Div(f"{a.score_name} {sc:.3g}", className="muted")], className="art-cell clickable",
                              id={"type": "art-layer", "layer": m.layer}, n_clicks=0))
    return html.Div(cells, className="row art-row")


def _all_zero_note(a) -> html.Div:
    """Blank tiles look like a rendering failure; say when they are the true answer."""
    if not a.mean_maps or any(np.abs(m.map).max() > 0 for m in a.mean_maps):
        return html.Div()
    return html.Div(f"Every mean map is exactly 0 under '{a.baseline}': no bias or BatchNorm shift reaches any conv "
                    "of this model from this input, so it shows no artifact here; choose another baseline input.",
                    className="muted art-zero-note")


def _drill(a, scale: str) -> html.Div:
    d = a.drill
    if d is None:
        return html.Div()
    lim = symmetric_limit(d.maps) if scale == "shared" else None
    order = a.drill_order[:DRILL_MAX]
    cells = [html.Div([tile(d.maps[c], lim, 64, f"channel {c}: {a.drill_scores[c]:.3g}"),
                       html.Div(f"ch {c}: {a.drill_scores[c]:.3g}", className="muted")], className="art-cell small")
             for c in order]
    more = f" (the {DRILL_MAX} highest of {len(d.maps)})" if len(d.maps) > DRILL_MAX else ""
    scale_txt = f"one colour scale, ±{lim:.3g}" if lim else "each map on its own scale"
    return html.Div([html.H4(f"Drill-down: {d.layer} ({d.title}, {len(d.maps)} channels), ordered by {a.score_name}{more}; "
                             f"{scale_txt}"), html.Div(cells, className="row art-row")])


def _patches(a) -> html.Div:
    from viscnn.artifacts.patches import asymmetry

    rows = [html.Tr([html.Th(h) for h in ("layer", "stride", "mean input patch", "mean kernel",
                                          "patch asymmetry (rot180 / top-bottom / left-right)", "kernel asymmetry")])]
    for p in a.patches:
        pa, ka = asymmetry(p.patch), asymmetry(p.kernel)
        fmt = lambda d: f"{d['rot180']:.3f} / {d['top_bottom']:+.3f} / {d['left_right']:+.3f}"  # noqa: E731
        rows.append(html.Tr([html.Td(p.layer), html.Td(f"{p.stride[0]}×{p.stride[1]}" + (" downsampling" if p.downsampling else ""),
                                                        className="warn" if p.downsampling else ""),
                             html.Td(tile(p.patch, None, 48)), html.Td(tile(p.kernel, None, 48)),
                             html.Td(fmt(pa)), html.Td(fmt(ka))]))
    return html.Div([html.H4(f"Mean input patch vs mean kernel, over {a.patch_source}"),
                     html.Table(rows, className="art-table")])


def _padding_table(rep: dict, id_: str) -> dash_table.DataTable:
    def sides(d, keys=("top", "bottom", "left", "right")):
        return " ".join(f"{k[0]}{d[k]}" for k in keys if k in d)
    data = [{"layer": e["layer"], "kind": e["kind"], "stride": "×".join(map(str, e["stride"])), "pad": sides(e["pad"]),
             "unused pad": sides(e["unused_pad"]), "unread rows/cols": sides(e["unread"], ("bottom", "right"))}
            for e in rep["padding"]]
    cols = ["layer", "kind", "stride", "pad", "unused pad", "unread rows/cols"]
    return dash_table.DataTable(id=id_, data=data, columns=[{"name": c, "id": c} for c in cols], page_size=25,
                                style_cell={"fontSize": 12, "padding": "2px 6px", "textAlign": "left"},
                                style_data_conditional=[{"if": {"filter_query": '{unused pad} contains "b" && {unused pad} != "t0 b0 l0 r0"'},
                                                         "backgroundColor": "#fdecea"}])


def _padding(rep: dict, hw, id_: str) -> html.Div:
    clean = "no layer leaves padding unused" if rep["clean"] else "some strided layers leave bottom/right padding unused"
    sugg = ", ".join(f"{h}×{w}" for h, w in rep.get("suggested_sizes") or [])
    return html.Div([html.H4(f"Padding audit at {hw[0]}×{hw[1]}: {clean}" + (f"; clean sizes nearby: {sugg}" if sugg else "")),
                     _padding_table(rep, id_)])


def _compare(a, b, hw_b, label: str = "") -> html.Div:
    from viscnn.artifacts.compare import compare_mean_maps

    rows = compare_mean_maps(a.mean_maps, b.mean_maps)
    cells = []
    for r in rows:
        lim = r["limit"]
        cells.append(html.Div([html.B(r["layer"]), html.Div(
            [tile(r["a"], lim, 72, "this size"), tile(r["b_resized"], lim, 72, f"{hw_b[0]}×{hw_b[1]}" + (" (resized)" if r["resized"] else "")),
             tile(r["diff"], lim, 72, "difference")], className="row"),
            html.Div(f"max |diff| {r['max_abs_diff']:.3g} on ±{lim:.3g}", className="muted")], className="art-cell wide"))
    label = label or f"{hw_b[0]}×{hw_b[1]}"
    return html.Div([html.H4(f"Side by side with {label}: mean maps (this size, the other, their difference; one "
                             "colour scale per layer)"), html.Div(cells, className="row art-row"),
                     _padding(b.padding, hw_b, "art-padding-b")])


def artifacts_props(actx, s: dict) -> Dict[str, dict]:
    """{component id: {prop: value}} for the Artifacts view of a state."""
    name = s["model"]
    pm = actx.prepped(name)
    hw = tuple(pm.input_shape[1:])
    opts = [{"label": "highest artifact score", "value": ""}] + [
        {"label": l.name, "value": l.name} for l in pm.graph.layers if l.kind == "conv"]
    if s.get("drill") and s["drill"] not in {o["value"] for o in opts}:
        raise ViscnnError(f"no conv layer {s['drill']!r} in {name}")
    other = parse_size(s.get("cmpsize", ""))
    a = _analysis(actx, name, s, hw)
    body: List = [html.H4(f"Mean feature maps ({'conv output' if a.stage == 'conv' else 'after the activation'}) under "
                          f"{a.baseline}, each on its own symmetric scale"), _strip(a), _all_zero_note(a),
                  _drill(a, s.get("dscale", "shared")), _patches(a), _padding(a.padding, hw, "art-padding")]
    if other:
        body.append(_compare(a, _analysis(actx, name, s, other), other))
    elif s.get("cmpmodel"):
        om = s["cmpmodel"]
        if om not in actx.models():
            raise ViscnnError(f"no prepped model {om!r} to compare with")
        po = actx.prepped(om)
        if po.input_shape[0] != pm.input_shape[0]:
            raise ViscnnError(f"{om} takes {po.input_shape[0]} input channels, {name} {pm.input_shape[0]}")
        hw_o = tuple(po.input_shape[1:])
        body.append(_compare(a, _analysis(actx, om, dict(s, drill=""), hw_o), hw_o, f"{om} at {hw_o[0]}×{hw_o[1]}"))
    n = a.mean_maps[0].images if a.mean_maps else 0
    info = [f"{name} at {hw[0]}×{hw[1]}: {len(a.mean_maps)} conv layers; mean maps over {n} input(s) of '{a.baseline}'; "
            f"artifact score = {a.score_name}; ↓2 marks a downsampling layer. Colours: ",
            html.Span("red = positive", style={"color": diverging_css(1.0)}), ", ",
            html.Span("blue = negative", style={"color": diverging_css(-1.0)}), ", white = zero."]
    return {"art-body": {"children": body}, "art-info": {"children": info}, "art-msg": {"children": ""},
            "art-drill": {"options": opts}}


def register(app, actx) -> None:
    from viscnn.app.views import register_view_props

    @app.callback(Output("art-drill", "value", allow_duplicate=True), Input({"type": "art-layer", "layer": ALL}, "n_clicks"),
                  prevent_initial_call=True)
    def drill_on_click(clicks):
        trig = ctx.triggered_id
        if not isinstance(trig, dict) or not any(clicks or []):
            return no_update  # a re-render of the strip, not a click
        return trig["layer"]

    register_view_props(app, actx, "artifacts", OUTPUTS, artifacts_props, "art-msg")
