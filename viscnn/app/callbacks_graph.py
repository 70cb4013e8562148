"""The circuit for the current state: 3D graph, level-of-detail message, 2D circuit view, and the
background model run for targets that are not precomputed."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, html, no_update

from viscnn.app import routes
from viscnn.app import state as st
from viscnn.app.figures import cytoscape as cy
from viscnn.app.figures import graph3d
from viscnn.errors import ViscnnError


def selected_node(graph, sel: str):
    if not sel or sel.startswith("e"):
        return None
    try:
        return graph.node_index(sel)
    except ViscnnError:
        return None


def circuit_view(actx, s: dict, max_edges: int = graph3d.MAX_EDGES):
    """(figure, info children, cytoscape elements) for a state, or raises ViscnnError.
    Returns None when the scores need a model run that has not finished."""
    r = actx.resolve(s)
    if r.pending:
        return None
    pm, circ = r.pm, r.circuit
    g = pm.graph
    edges = np.asarray(circ.edges, np.int64)
    drawn = graph3d.select_drawn(edges, r.edge_scores, max_edges)
    fig = graph3d.graph_figure(g, actx.positions(s["model"], s["layout"]), circ.nodes, drawn, r.node_scores,
                               r.edge_scores, r.signs, actx.labels(s["model"]), selected_node(g, s.get("sel", "")),
                               uirevision=f"{s['model']}:{s['layout']}")
    hidden = len(edges) - len(drawn)
    info = [f"Circuit: {len(circ.nodes)} nodes, {len(edges)} of {g.num_edges} edges. Drawing ",
            html.B(str(len(drawn)), id="drawn-count", title=f"{s['mode']}={st.fmt_value(s['value'])}"), " edges",
            html.Span(f"; {hidden} less important circuit edges hidden (level of detail keeps the top {max_edges})"
                      if hidden else "", id="hidden-count"),
            html.Span(f"{s['target']}|{s['set']}|{s['metric']}", id="circuit-of", style={"display": "none"})]
    if not len(edges):
        info.append(html.Span(" — empty: no path from the input to the target survives this threshold; loosen it.",
                              className="warn"))
    els = cy.circuit_elements(g, circ.nodes, edges, r.edge_scores,
                              lambda n: routes.fv_url(s["model"], n) if g.layers[int(g.node_layer[n])].kind != "input" else None,
                              lambda e: routes.kernel_url(s["model"], e))
    return fig, info, els


def register(app, actx, manager) -> None:
    # state -> run-request -> (background) scores-ready -> figure: no callback both asks for a run and
    # consumes its result, so the dependency graph has no cycle.
    # prevent_initial_call: the page arrives with its first view drawn (callbacks_state.initial_props), and
    # the state only changes, firing these, when the URL or a control asks for another view.
    @app.callback(Output("run-request", "data"), Input("state", "data"), prevent_initial_call=True)
    def dispatch(s):
        if not s:
            return no_update
        try:
            pending = actx.resolve(s).pending
        except ViscnnError:
            return no_update
        return {"state": s, "key": actx.run_key(s)} if pending else no_update

    @app.callback(
        Output("graph3d", "figure"), Output("edge-info", "children"), Output("msg", "children"),
        Output("cyto-data", "data"), Input("state", "data"), Input("scores-ready", "data"),
        prevent_initial_call=True,
    )
    def update(s, ready):
        if not s:
            return no_update, no_update, no_update, no_update
        try:
            out = circuit_view(actx, s)
        except ViscnnError as e:
            return no_update, no_update, str(e), no_update
        if out is None:
            if ready and ready.get("key") == actx.run_key(s) and ready.get("error"):
                return no_update, no_update, ready["error"], no_update
            return no_update, "Running the model for this target...", "", no_update
        fig, info, els = out
        return fig, info, "", els

    # The 2D circuit is drawn once the 3D graph has painted: on page load both compete for the browser's
    # one main thread, and the 3D graph is the main view (the wait gives up after 5 s, e.g. on an error).
    app.clientside_callback(
        """function(els) {
            if (!els) { return window.dash_clientside.no_update; }
            return new Promise(resolve => {
                const t0 = Date.now();
                const poll = () => {
                    const g = document.querySelector('#graph3d .js-plotly-plot');
                    if ((g && g._fullLayout && g._fullLayout.scene) || Date.now() - t0 > 5000) {
                        requestAnimationFrame(() => setTimeout(() => resolve(els), 0));
                    } else { setTimeout(poll, 50); }
                };
                poll();
            });
        }""",
        Output("cyto", "elements"), Input("cyto-data", "data"))

    @app.callback(
        Output("scores-ready", "data"), Input("run-request", "data"),
        background=True, manager=manager, prevent_initial_call=True,
        running=[(Output("run-status", "children"), "Running the model... ", "")],
        progress=[Output("run-progress", "children")],
    )
    def run_model(set_progress, req):
        if not req:
            return no_update
        try:
            key = actx.compute_run(req["state"], lambda k, n: set_progress(f"{k}/{n} image sets"))
        except ViscnnError as e:
            return {"key": req.get("key"), "error": str(e)}
        except Exception as e:  # keep serving; show what went wrong
            return {"key": req.get("key"), "error": f"model run failed: {type(e).__name__}: {e}"}
        return {"key": key}
