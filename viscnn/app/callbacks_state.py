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
from viscnn.errors import ViscnnError

CONTROLS = [("model", "value"), ("target", "value"), ("imageset", "value"), ("metric", "value"), ("mode", "value"),
            ("value", "value"), ("layout", "value"), ("relu", "value"), ("image", "data"), ("sel", "data"),
            ("ablate", "data")]


def _to_controls(s: dict) -> list:
    return [s["model"], s["target"], s["set"], s["metric"], s["mode"], s["value"], s["layout"],
            ["relu"] if s["relu"] else [], s["image"], s["sel"], s["ablate"]]


def _from_controls(vals: list) -> dict:
    model, target, iset, metric, mode, value, layout, relu, image, sel, ablate = vals
    return {"model": model, "target": target or "", "set": iset or "", "metric": metric, "mode": mode,
            "value": value, "layout": layout, "image": image or "", "relu": bool(relu), "sel": sel or "",
            "ablate": list(ablate or [])}


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
    return s, warns + w


def initial_props(actx, search: str = "") -> Dict[str, dict]:
    """{component id: {prop: value}} that put the view of ``search`` into the page, or {} when that view
    cannot be drawn without a model run or has an error (then the callbacks fill the page on load)."""
    from viscnn.app.callbacks_graph import circuit_view
    from viscnn.app.callbacks_images import gallery_children

    try:
        s, _ = state_of_search(actx, search)
        out = circuit_view(actx, s)
    except ViscnnError:
        return {}
    if out is None:
        return {}
    fig, info, els = out
    props: Dict[str, dict] = {c: {p: v} for (c, p), v in zip(CONTROLS, _to_controls(s))}
    props["metric"]["options"] = actx.prepped(s["model"]).metrics
    props["layout"]["options"] = actx.layouts(s["model"])
    props.update({"state": {"data": s}, "graph3d": {"figure": fig}, "edge-info": {"children": info},
                  "cyto-data": {"data": els}, "gallery": {"children": gallery_children(actx, s)}})
    return props


def register(app, actx) -> None:
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
            outs[5] = s["value"]
        return outs + [no_update, no_update, st.encode(s), s, "", no_update]
