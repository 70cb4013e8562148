"""Input images: the prepped gallery and uploads (decoded safely; errors are shown, never raised)."""

from __future__ import annotations

from dash import ALL, Input, Output, State, ctx, html, no_update

from viscnn.app import routes
from viscnn.app.uploads import data_url_bytes, decode_image
from viscnn.errors import ViscnnError


def gallery_children(actx, s: dict) -> list:
    """Thumbnail buttons of the model's prepped images; the state's image is marked current."""
    try:
        items = actx.prepped(s["model"]).images()
    except ViscnnError:
        return []
    ups = [html.Button([html.Img(src=routes.input_url(s["model"], it["key"]), width=48, height=48),
                        html.Span(it["name"][:10], className="up-name")],
                       id={"type": "gal", "file": it["key"]}, title=f"your upload: {it['name']}",
                       className="upload-thumb" + (" current" if s.get("image") == it["key"] else ""))
           for it in actx.uploads(s["model"])]
    return ups + [html.Button(html.Img(src=routes.input_url(s["model"], f"img:{it['file']}"), width=48, height=48),
                              id={"type": "gal", "file": f"img:{it['file']}"}, title=f"{it['file']} ({it.get('class', '')})",
                              className="current" if s.get("image") == f"img:{it['file']}" else "")
                  for it in items[:60]]


def register(app, actx) -> None:
    # the page's first view arrives with the gallery already filled (see callbacks_state.initial_props)
    @app.callback(Output("gallery", "children"), Input("gallery-state", "data"), Input("upload-msg", "children"),
                  prevent_initial_call=True)
    def gallery(s, _msg):
        if not s:
            return no_update
        return gallery_children(actx, s)

    @app.callback(Output("image", "data", allow_duplicate=True), Input({"type": "gal", "file": ALL}, "n_clicks"),
                  prevent_initial_call=True)
    def pick(clicks):
        trig = ctx.triggered_id
        if not isinstance(trig, dict) or not any(c for c in clicks if c):
            return no_update
        return trig["file"]

    @app.callback(Output("image", "data", allow_duplicate=True), Output("upload-msg", "children"),
                  Input("upload", "contents"), State("upload", "filename"), State("state", "data"),
                  prevent_initial_call=True)
    def upload(contents, filename, s):
        if not contents or not s:
            return no_update, no_update
        try:
            pm = actx.prepped(s["model"])
            c, h, w = pm.input_shape
            arr = decode_image(data_url_bytes(contents), c, (h, w))
            key = actx.add_upload(arr, filename or "", s["model"])
        except ViscnnError as e:
            return no_update, f"Upload {filename or ''} rejected: {e}"
        return key, ""
