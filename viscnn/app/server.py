"""create_app: the Dash app over a folder of prepped models."""

from __future__ import annotations

from typing import Optional

from viscnn.errors import ViscnnError


def create_app(models_dir=None, model: str = "fmnist", snapshot: Optional[str] = None, cache_dir=None):
    """The Dash app. ``model`` is the default view; a model picker lists every prepped model.
    ``snapshot`` (a JSON file) becomes the default view's URL state."""
    import dash

    from viscnn.app import callbacks_images, callbacks_state, routes
    from viscnn.app.shell import derived
    from viscnn.app.context import AppContext
    from viscnn.app.shell.layout import page
    from viscnn.app.views import view_packages
    from viscnn.paths import REPO_DIR

    actx = AppContext(models_dir, model, cache_dir)
    models = actx.models()
    if not models:
        raise ViscnnError(f"no prepped models in {actx.models_dir}; run `viscnn prep` first")
    if model not in models:
        raise ViscnnError(f"unknown prepped model {model!r}; available: {', '.join(models)}")
    start_search = None
    if snapshot:
        from pathlib import Path

        from viscnn.app import snapshot as S

        p = Path(snapshot)
        if not p.is_file():
            raise ViscnnError(f"snapshot file not found: {p}")
        d = S.parse_snapshot(p.read_bytes())
        if d["model"] not in models:
            raise ViscnnError(f"snapshot is of model {d['model']!r}, not prepped in {actx.models_dir}")
        start_search = S.snapshot_search(d)
        actx.default_model = d["model"]

    # dash-cytoscape's normal bundle: the 2D circuit's SVG is drawn on the server (routes.register_exports),
    # so the 1.4 MB extra bundle (cytoscape-svg and layouts we do not use) stays off the first paint
    app = _app_class()(__name__, title="viscnn", assets_folder=str(REPO_DIR / "assets"),
                    suppress_callback_exceptions=True,
                    update_title=None)
    # window.Plotly comes from assets/plotly-viscnn.min.js, a partial bundle of the trace types we draw
    # (1.9 MB instead of 4.8 MB; tools/plotly-bundle rebuilds it); dcc.Graph then never fetches plotly.min.js
    def layout():
        """The page with the requested view already drawn in it, so the first paint needs no callback
        round trip. Dash fetches the layout without the page's query: it is read from the Referer (same
        host only); without one, the default view is drawn and the URL callback switches views on load."""
        lay = page(models, {name: pkg.layout(models) for name, pkg in view_packages().items()})
        for cid, props in callbacks_state.initial_props(actx, _page_search()).items():
            for prop, value in props.items():
                setattr(lay[cid], prop, value)
        return lay

    app.layout = layout
    if start_search:
        _redirect_root(app.server, start_search)
    routes.register(app.server, actx)
    callbacks_state.register(app, actx)
    derived.register(app)  # per-view / per-consumer state copies, made in the browser
    callbacks_images.register(app, actx)
    for pkg in view_packages().values():
        pkg.register(app, actx)
    app.viscnn = actx
    return app


def _app_class():
    """dash.Dash with only the regenerator runtime of @babel/polyfill on the page. Dash still ships the
    whole 2018 polyfill (core-js 2) for old browsers; every browser Dash 4 supports has what core-js fills
    in, but Dash's bundles call the global ``regeneratorRuntime``. Evaluating the polyfill and running
    its Promise wrappers cost ~0.2 s of the first paint in headless Chromium (a CPU profile of one load)."""
    import json
    import re

    import dash
    import dash_cytoscape  # noqa: F401  (registers its bundle, which the page loads after the first paint)

    runtime = _regenerator_runtime()

    class App(dash.Dash):
        def interpolate_index(self, **kwargs):
            scripts = kwargs.get("scripts", "")
            if runtime:
                scripts = re.sub(r'<script src="[^"]*/polyfill@[^"]*"></script>', lambda m: f"<script>{runtime}</script>",
                                 scripts, count=1)
            # dash-cytoscape runs once the 3D graph has painted (viscnn.deferred in assets/viscnn.js)
            held = {}

            def hold(m):
                held["dash_cytoscape"] = m.group(1)
                return ""
            scripts = re.sub(r'<script src="([^"]*/dash_cytoscape/[^"]*\.js)"></script>', hold, scripts, count=1)
            if held:
                scripts = f"<script>window.viscnnDeferredScripts = {json.dumps(held)};</script>" + scripts
            kwargs["scripts"] = scripts
            # the layout (drawn on the server from the page's URL) and the callback graph are fetched while the
            # browser still runs the scripts; dash-renderer's own requests then find them in the preload cache
            pre = self.config.requests_pathname_prefix
            kwargs["metas"] = kwargs.get("metas", "") + "".join(
                f'<link rel="preload" href="{pre}{what}" as="fetch" crossorigin="anonymous">'
                for what in ("_dash-layout", "_dash-dependencies"))
            return super().interpolate_index(**kwargs)

    return App


def _regenerator_runtime() -> str:
    """regenerator-runtime (module 305 of Dash's own copy of @babel/polyfill 7.12.1, MIT) as a script that
    sets the global; '' (keep the whole polyfill) if this Dash ships another polyfill."""
    from pathlib import Path

    import dash

    files = sorted((Path(dash.__file__).parent / "deps").glob("polyfill@7.12.1.min.js"))
    if not files:
        return ""
    src = files[0].read_text(encoding="utf-8")
    start, end = src.find("305:[function(t,n,r){"), src.find("},{}],306:[function(")
    if start < 0 or end < start or "regeneratorRuntime=e" not in src[start:end]:
        return ""
    body = src[start + len("305:[function(t,n,r){"):end]
    return "(function(){var n={exports:{}};(function(t,n,r){" + body + "})(null,n,n.exports);})();"


def _page_search() -> str:
    """The query string of the page that asked for the layout ('' outside a request or from elsewhere)."""
    from urllib.parse import urlsplit

    from flask import has_request_context, request

    if not has_request_context() or not request.referrer:
        return ""
    u = urlsplit(request.referrer)
    return f"?{u.query}" if u.query and u.netloc == request.host else ""


def _redirect_root(server, search: str) -> None:
    """Opening ``/`` without a query goes to the snapshot's view."""
    from flask import redirect, request

    @server.before_request
    def _snap():
        if request.path == "/" and not request.query_string:
            return redirect("/" + search)
        return None
