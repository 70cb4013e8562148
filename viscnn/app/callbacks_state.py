"""URL <-> controls: the state lives in the URL, so a link reopens the same view.

One callback owns the loop (Dash allows a circular dependency only inside a single callback): on
page load or when another callback navigates (snapshot upload), the URL is decoded into the controls;
when a control changes, the state is encoded back into the URL.

The page arrives with the default model's view already in it (``initial_props``: controls, state,
3D figure, 2D circuit, gallery), so the first paint needs no callback round trip; on load, ``sync``
only changes the state when the URL asks for another view.
"""

from __future__ import annotations

from typing import Dict, List, Tuple
from urllib.parse import parse_qs

from dash import Input, Output, State, ctx, no_update

from viscnn.app import state as st
from viscnn.app.viewparams import all_params
from viscnn.errors import ViscnnError

CONTROLS = [("model", "value"), ("view", "value"), ("target", "value"), ("imageset", "value"), ("metric", "value"), ("mode", "value"),
            ("value", "value"), ("layout", "value"), ("cyto-cap", "value"), ("relu", "value"), ("image", "data"), ("sel", "data"),
            ("ablate", "data")]

_BASE = len(CONTROLS)
PARAMS = all_params()  # the views' own URL keys, each bound to its control (viscnn.app.viewparams)
CONTROLS = CONTROLS + [(p.component, p.prop) for p in PARAMS]
_AT = {c: i for i, (c, _) in enumerate(CONTROLS)}  # a control's position in CONTROLS


def _to_controls(s: dict) -> list:
    return [s["model"], s.get("view", "circuit"), s["target"], s["set"], s["metric"], s["mode"], s["value"], s["layout"], s.get("cap", st.CAP_DEFAULT),
            ["relu"] if s["relu"] else [], s["image"], s["sel"], s["ablate"]] + [
        p.to_control(s.get(p.key, p.default)) for p in PARAMS]


def _from_controls(vals: list) -> dict:
    model, view, target, iset, metric, mode, value, layout, cap, relu, image, sel, ablate = vals[:_BASE]
    return {"model": model, "view": view or "circuit", "target": (target or "").strip() or "loss", "set": iset or "",
            "metric": metric, "mode": mode, "value": st.parse_value(value), "layout": layout, "cap": st.clamp_cap(cap), "image": image or "", "relu": bool(relu), "sel": sel or "",
            "ablate": list(ablate or []),
            **{p.key: p.from_control(v) for p, v in zip(PARAMS, vals[_BASE:])}}


def state_of_search(actx, search: str) -> Tuple[dict, List[str]]:
    """(state, warnings) for a URL query; an unknown model falls back to the default one (with a warning).
    Raises ViscnnError only when there is no prepped model at all."""
    q = parse_qs((search or "").lstrip("?"))
    name = (q.get("model") or [actx.default_model])[-1]
    warns: List[str] = []
    try:
        defaults = actx.defaults(name)
    except ViscnnError as e:
        models = actx.models()
        if not models:
            raise
        fallback = actx.default_model if actx.default_model in models else models[0]
        warns.append(f"{e}; showing {fallback}")
        defaults = actx.defaults(fallback)
        name = fallback
    pm = actx.prepped(name)
    s, w = st.decode(search, defaults, pm.metrics, actx.layouts(name))
    s["model"] = name
    return s, warns + w + _check_keys(actx, s, defaults)


def _check_keys(actx, s: dict, defaults: dict) -> List[str]:
    """Drop the link's image, selection and ablations that do not exist in this model (each with a
    warning), so one bad key never wipes the rest of the view."""
    from viscnn.app.activations import parse_ablation

    g = actx.prepped(s["model"]).graph
    warns = []
    if s.get("image") and s["image"] != defaults.get("image"):
        try:
            actx.image(s["model"], s["image"])
        except ViscnnError as e:
            warns.append(f"image {s['image']!r} ignored: {e}; showing {defaults.get('image', '').split(':', 1)[-1]}")
            s["image"] = defaults.get("image", "")
    good = []
    for a in s.get("ablate") or []:
        try:
            parse_ablation(g, [a])
            good.append(a)
        except ViscnnError as e:
            warns.append(f"ablation {a!r} ignored: {e}")
    s["ablate"] = good
    sel = s.get("sel") or ""
    if sel:
        try:
            parse_ablation(g, [sel])
        except ViscnnError as e:
            warns.append(f"selection {sel!r} ignored: {e}")
            s["sel"] = ""
    return warns


def initial_props(actx, search: str = "") -> Dict[str, dict]:
    """{component id: {prop: value}} that put the view of ``search`` into the page, or {} when that view
    cannot be drawn without a model run or has an error (then the callbacks fill the page on load)."""
    from viscnn.app.callbacks_graph import circuit_props
    from viscnn.app.callbacks_images import gallery_children

    try:
        s, _ = state_of_search(actx, search)
        out = circuit_props(actx, s)
    except ViscnnError:
        return {}
    if out is None:
        return {}
    props: Dict[str, dict] = {c: {p: v} for (c, p), v in zip(CONTROLS, _to_controls(s))}
    props["metric"]["options"] = actx.prepped(s["model"]).metrics
    props["layout"]["options"] = actx.layouts(s["model"])
    props.update(view_props(s.get("view", "circuit")))
    props.update(out)
    props.update({"state": {"data": s}, "gallery": {"children": gallery_children(actx, s)}})
    from viscnn.app.shell.derived import VIEW_STORES, derive, ids

    for sid in ids():  # the per-consumer copies as the browser would make them: already drawn, no request on load
        if sid in VIEW_STORES:  # a view's own copy is made in the browser: that draws the view (and only the shown one)
            continue
        d = derive(s, sid)
        if d is not None:
            props[sid] = {"data": d}
    # the input image, prediction and panel are in the first paint of every view (no round trip on load)
    from dash import no_update

    from viscnn.app.callbacks_panels import panel_props

    for cid, v in zip(("panel", "input-fig", "prediction", "ablate-info"), panel_props(actx, s)):
        if v is not no_update:
            props[cid] = {"figure" if cid == "input-fig" else "children": v}
    return props


def view_props(view: str) -> Dict[str, dict]:
    """{container id: {"style": ...}}: the chosen view shown, the others hidden (kept in the page, so a
    view keeps its camera and selection while another is shown)."""
    from viscnn.app.views import VIEW_NAMES

    return {f"view-{v}": {"style": {} if v == view else {"display": "none"}} for v in VIEW_NAMES}


def register(app, actx) -> None:
    from viscnn.app.views import VIEW_NAMES

    # prevent_initial_call: the page arrives with its view shown (initial_props); a URL that the layout
    # could not be drawn from reaches it through sync, which sets the view control
    @app.callback([Output(f"view-{v}", "style") for v in VIEW_NAMES], Input("view", "value"), prevent_initial_call=True)
    def show_view(view):
        props = view_props(view if view in VIEW_NAMES else "circuit")
        return [props[f"view-{v}"]["style"] for v in VIEW_NAMES]

    app.clientside_callback(
        """function(n) { return (n % 2) ? {} : {display: 'none'}; }""",
        Output("help", "style"), Input("help-toggle", "n_clicks"), prevent_initial_call=True)

    @app.callback(
        [Output(c, p) for c, p in CONTROLS]
        + [Output("metric", "options"), Output("layout", "options"), Output("url", "search"),
           Output("state", "data"), Output("url-msg", "children"), Output("nav", "href")],
        [Input("url", "search")] + [Input(c, p) for c, p in CONTROLS],
        State("state", "data"),
    )
    def sync(search, *rest):
        vals, prev = list(rest[:-1]), rest[-1]
        trig = ctx.triggered_id
        n_out = len(CONTROLS)
        if trig in (None, "url") or not prev:
            try:
                s, warns = state_of_search(actx, search)
            except ViscnnError as e:
                return [no_update] * n_out + [[], [], no_update, None, f"{e}", no_update]
            pm = actx.prepped(s["model"])
            name = s["model"]
            url = st.encode(s)
            if s == prev:  # the page already shows this view (initial_props): nothing to redraw
                return [no_update] * (n_out + 2) + [url if url != search else no_update, no_update,
                                                    "\n".join(warns), no_update]
            return (_to_controls(s) + [pm.metrics, actx.layouts(name), url if url != search else no_update, s,
                                       "\n".join(warns), no_update])
        s = _from_controls(vals)
        if trig == "model" and prev and s["model"] != prev.get("model"):
            return [no_update] * n_out + [no_update, no_update, no_update, no_update, "", f"/?model={s['model']}"]
        outs = [no_update] * n_out
        if trig == "mode" and prev and s["mode"] != prev.get("mode"):
            s["value"] = st.MODE_DEFAULTS.get(s["mode"], s["value"])
            outs[_AT["value"]] = s["value"]
        if trig == "target" and vals[_AT["target"]] != s["target"]:
            outs[_AT["target"]] = s["target"]  # an empty target is the loss: say so
        return outs + [no_update, no_update, st.encode(s), s, "", no_update]
