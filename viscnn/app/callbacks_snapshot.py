"""Export a snapshot (JSON + standalone HTML) and reopen one from an upload."""

from __future__ import annotations

from dash import Input, Output, State, no_update

from viscnn.app import snapshot as S
from viscnn.app.exports import circuit_csv, class_labels, export_basename
from viscnn.app.uploads import data_url_bytes
from viscnn.errors import ViscnnError


def export_files(actx, s: dict):
    """(json text, html text, base file name) of the current view."""
    import json

    from viscnn.app import routes

    r = _resolved(actx, s)
    pm, c = r.pm, r.circuit
    g = pm.graph
    d = S.snapshot_dict(s["model"], s, g, c.nodes, c.edges, r.node_scores, r.edge_scores)
    html = S.snapshot_html(g, c.nodes, c.edges, r.node_scores, r.edge_scores,
                           positions=actx.positions(s["model"], s["layout"]),
                           featurevis=lambda n: routes.node_image(pm, n, "fv"),
                           exemplars=lambda n: [a for a in (routes.node_image(pm, n, "ex", k) for k in range(4)) if a is not None],
                           kernel=lambda e: routes.kernel_of(pm, e), snapshot=d,
                           title=f"viscnn: {s['model']} circuit for {s['target'] or 'loss'} on {s['set']}")
    return json.dumps(d, indent=1), html, export_basename(s["model"], s["target"], s["set"]) + "-snapshot"


def export_csv(actx, s: dict):
    """(nodes csv, edges csv, base file name) of the current circuit with scores, signs and ranks."""
    r = _resolved(actx, s)
    g = r.pm.graph
    nodes_csv, edges_csv = circuit_csv(g, r.circuit.nodes, r.circuit.edges, r.node_scores, r.edge_scores,
                                       labels=class_labels(g, r.pm.classes), signs=r.signs)
    return nodes_csv, edges_csv, export_basename(s["model"], s["target"], s["set"])


def _resolved(actx, s: dict):
    """The state's circuit, or ViscnnError while its scores are still being computed."""
    r = actx.resolve(s)
    if r.pending:
        raise ViscnnError("the scores for this target are still being computed; export when the graph shows them")
    return r


def _downloads(make, n, s, files):
    """Outputs of an export button: one dcc.Download dict per (suffix, mime type) in ``files`` for the
    texts ``make(s)`` returns before its base name, and the message line."""
    if not n or not s:
        return [no_update] * (len(files) + 1)
    try:
        *texts, base = make(s)
    except ViscnnError as e:
        return [no_update] * len(files) + [f"export failed: {e}"]
    return [{"content": c, "filename": f"{base}{suffix}", "type": mime}
            for c, (suffix, mime) in zip(texts, files)] + [""]


def register(app, actx) -> None:
    @app.callback(Output("download-json", "data"), Output("download-html", "data"),
                  Output("snap-msg", "children", allow_duplicate=True),
                  Input("export", "n_clicks"), State("state", "data"), prevent_initial_call=True)
    def export(n, s):
        return _downloads(lambda st: export_files(actx, st), n, s,
                          [(".json", "application/json"), (".html", "text/html")])

    @app.callback(Output("download-nodes-csv", "data"), Output("download-edges-csv", "data"),
                  Output("snap-msg", "children", allow_duplicate=True),
                  Input("export-csv", "n_clicks"), State("state", "data"), prevent_initial_call=True)
    def export_tables(n, s):
        return _downloads(lambda st: export_csv(actx, st), n, s,
                          [("-nodes.csv", "text/csv"), ("-edges.csv", "text/csv")])

    @app.callback(Output("url", "search", allow_duplicate=True), Output("snap-msg", "children", allow_duplicate=True),
                  Input("snap-upload", "contents"), State("snap-upload", "filename"), prevent_initial_call=True)
    def reopen(contents, filename):
        if not contents:
            return no_update, no_update
        try:
            d = S.parse_snapshot(data_url_bytes(contents, S.MAX_SNAPSHOT_BYTES))
            if d["model"] not in actx.models():
                raise ViscnnError(f"snapshot is of model {d['model']!r}, which is not prepped here "
                                  f"(available: {', '.join(actx.models()) or 'none'})")
            search = S.snapshot_search(d)
            note = _compare(actx, d, search)
        except ViscnnError as e:
            return no_update, f"snapshot {filename or ''} not opened: {e}"
        return search, note or f"opened snapshot {filename or ''}"


def _compare(actx, d: dict, search: str):
    from viscnn.app import state as st

    pm = actx.prepped(d["model"])
    s, _ = st.decode(search, actx.defaults(d["model"]), pm.metrics, actx.layouts(d["model"]))
    try:
        r = actx.resolve(s)
    except ViscnnError as e:
        return f"snapshot settings do not give a circuit here: {e}"
    if r.pending:
        return None
    return S.check_circuit(d, pm.graph, r.circuit.nodes, r.circuit.edges)
