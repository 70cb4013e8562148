"""The circuit for the current state: 3D graph, legend, level-of-detail message, 2D circuit, top-of-circuit
tables, field errors, and the background model run for targets that are not precomputed.

:func:`circuit_props` is the one place that turns a state into what the page shows, as
``{component id: {prop: value}}``: the first page (``callbacks_state.initial_props``) and every later
update use it, so they cannot disagree."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from dash import Input, Output, State, html, no_update

from viscnn.app import queries, routes
from viscnn.app import state as st
from viscnn.app.figures import cytoscape as cy
from viscnn.app.figures import graph3d
from viscnn.app.shell.layout import progress_line
from viscnn.errors import ViscnnError

# (component, prop) pairs the update callback writes, in order
OUTPUTS = [("graph3d", "figure"), ("edge-info", "children"), ("legend", "children"), ("cyto-data", "data"),
           ("cyto-count", "children"), ("tables-data", "data"), ("msg", "children"),
           ("target-msg", "children"), ("imageset-msg", "children"), ("value-msg", "children"),
           ("graph-wrap", "className"), ("tables-caption", "children"), ("nimages-note", "children"),
           ("nimages", "className")]
_AT = {c: i for i, (c, _) in enumerate(OUTPUTS)}
TABLE_ROWS = 100


def selected_node(graph, sel: str):
    if not sel or sel.startswith("e"):
        return None
    try:
        return graph.node_index(sel)
    except ViscnnError:
        return None


def field_errors(actx, s: dict) -> Dict[str, str]:
    """{message component id: error} for the fields of a state that do not parse (empty when all do)."""
    pm = actx.prepped(s["model"])
    errs = {}
    for cid, check in (("target-msg", lambda: queries.parse_target(pm, s["target"])),
                       ("imageset-msg", lambda: queries.parse_sets(pm, s["set"])),
                       ("value-msg", lambda: st.threshold_kwargs(s["mode"], s["value"]))):
        try:
            check()
        except ViscnnError as e:
            errs[cid] = str(e)
    return errs


def _top_order(v: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest, descending, ties by position (a stable sort's first k), in O(n)."""
    if len(v) > 4 * k:
        cand = np.argpartition(-v, k - 1)[:k]
        t = v[cand].min()
        cand = np.flatnonzero(v >= t)  # every tie at the cut, so the stable order below is exact
        return cand[np.argsort(-v[cand], kind="stable")][:k]
    return np.argsort(-v, kind="stable")[:k]


def _tables(g, labels, nodes, edges, ns, es):
    nodes = np.asarray(nodes, np.int64)
    edges = np.asarray(edges, np.int64)
    on = nodes[_top_order(np.abs(ns[nodes]), TABLE_ROWS)]
    oe = edges[_top_order(np.abs(es[edges].astype(np.float64)), TABLE_ROWS)]
    src = g.links[g.link_ptr[oe], 1] if len(oe) else []
    trows = [{"id": g.node_id(int(n)), "rank": r + 1, "node": labels[int(n)],
              "layer": g.layers[int(g.node_layer[n])].name, "score": float(f"{float(ns[n]):.4g}")}
             for r, n in enumerate(on)]
    erows = [{"id": f"e{int(e)}", "rank": r + 1, "edge": f"e{int(e)}", "from": labels[int(a)],
              "to": labels[int(g.edge_target[e])], "score": float(f"{float(es[e]):.4g}")}
             for r, (e, a) in enumerate(zip(oe, src))]
    return trows, erows


def circuit_props(actx, s: dict, center: Optional[dict] = None,
                  max_edges: int = graph3d.MAX_EDGES) -> Optional[Dict[str, dict]]:
    """What the page shows for a state, or None while its scores need a model run that has not finished.
    Raises ViscnnError for a state that gives no circuit (the caller shows the error)."""
    from viscnn.app.views.circuit.legend import legend_children

    r = actx.resolve(s)
    if r.pending:
        return None
    pm, circ = r.pm, r.circuit
    g = pm.graph
    name = s["model"]
    labels = actx.labels(name)
    edges = np.asarray(circ.edges, np.int64)
    cap2d = st.clamp_cap(s.get("cap", st.CAP_DEFAULT))
    paths = None
    if len(edges) > min(max_edges, cap2d):  # one widest-path pass for both the 3D and the 2D level of detail
        from viscnn.graph.widest_paths import WidestPaths

        paths = WidestPaths(g, edges, r.edge_scores)
    drawn = graph3d.select_drawn(edges, r.edge_scores, max_edges, paths=paths)
    sel_node = selected_node(g, s.get("sel", ""))
    cnode = None
    if center and center.get("sel") == s.get("sel") and sel_node is not None:
        cnode = sel_node
    from viscnn.app.activations import parse_ablation

    try:  # the explicit ablations are marked (not 'outside': the ablation line says what that zeroes)
        abl_nodes, abl_edges = parse_ablation(g, s.get("ablate") or [])
    except ViscnnError:
        abl_nodes, abl_edges = [], []
    uirev = f"{name}:{s['layout']}" + (f":c{center.get('n')}" if cnode is not None else "")
    fig = graph3d.graph_figure(g, actx.positions(name, s["layout"]), circ.nodes, drawn, r.node_scores,
                               r.edge_scores, r.signs, labels, sel_node, uirevision=uirev, classes=pm.classes,
                               node_signs=r.node_signs, center_on=cnode, ablated_nodes=abl_nodes,
                               ablated_edges=abl_edges)
    hidden = len(edges) - len(drawn)
    basis = queries.basis(pm, r.query, bool(r.run_key), r.run_info)
    info = [f"Circuit: {len(circ.nodes)} nodes, {len(edges)} of {g.num_edges} edges. Drawing ",
            html.B(str(len(drawn)), id="drawn-count", title=f"{s['mode']}={st.fmt_value(s['value'])}"), " edges",
            html.Span(f"; {hidden} less important circuit edges hidden (level of detail keeps {max_edges}: the "
                      f"strongest whole input-to-target paths, up to {max_edges // 2}, then the highest |score|)"
                      if hidden else "", id="hidden-count"),
            html.Span(_node_lod(g, circ, r.node_scores, drawn, sel_node), id="context-count"),
            html.Span(f"{s['target']}|{s['set']}|{s['metric']}", id="circuit-of", style={"display": "none"}),
            html.Div(basis, id="basis", className="muted")]
    if circ.settings.get("exact") is False:
        info.append(html.Div("Sparse scores: this threshold reaches past the edges prep stored for some layers, so the "
                             "circuit holds every stored edge there and may lack edges the full scores would keep; "
                             "tighten the threshold for an exact circuit.", className="warn", id="sparse-warning"))
    if not len(edges):
        from viscnn.app.views.circuit import method as M
        from viscnn.app.views.circuit.strictest import empty_hint

        if M.method_of(s) == M.DEFAULT_METHOD:  # a threshold circuit: say which threshold keeps a path
            info.append(empty_hint(actx, s, r))
        else:
            info.append(html.Span(" — empty: no path from the input to the target survives; keep more kernels.",
                                  className="warn"))

    def thumb(n):  # conv nodes only: input channels have no picture, class nodes are labelled boxes
        return routes.fv_url(name, n, stretch=True) if g.layers[int(g.node_layer[n])].kind == "conv" else None

    c2 = cy.circuit_elements(g, circ.nodes, edges, r.edge_scores, thumb, lambda e: routes.kernel_url(name, e),
                             max_edges=cap2d, signs=r.signs, labels=labels,
                             selected=s.get("sel"), is_stretched=lambda n: routes.fv_is_low_contrast(pm, n),
                             ablated=(abl_nodes, abl_edges), paths=paths)
    count = (f"showing {c2.shown_edges} of {c2.total_edges} circuit edges"
             + (" (the strongest whole input-to-target paths: each path ranked by its weakest |score|; raise the cap to see more)" if c2.shown_edges < c2.total_edges else ""))
    ns = np.asarray(r.node_scores, np.float64)
    es = np.asarray(r.edge_scores)  # no float64 copy of all E scores per request
    trows, erows = _tables(g, labels, circ.nodes, edges, ns, es)
    terms = queries.parse_sets(pm, s["set"])
    return {"graph3d": {"figure": fig}, "edge-info": {"children": info},
            "legend": {"children": legend_children(terms, s["metric"], r.sign_metric)},
            "cyto-data": {"data": c2.elements}, "cyto-count": {"children": count},
            "tables-data": {"data": {"nodes": trows, "edges": erows}}, "msg": {"children": ""},
            "target-msg": {"children": ""}, "imageset-msg": {"children": ""}, "value-msg": {"children": ""},
            "graph-wrap": {"className": ""}, **_count_props(pm, r),
            "tables-caption": {"children": f"score column: {basis[len('Scores: '):]} Rows "
                                           f"ranked by |score|; the {TABLE_ROWS} highest of the circuit."}}


def _count_props(pm, r) -> Dict[str, dict]:
    """The note under "Images per set" while the scores shown are precomputed (they rest on every image of
    the set, not on that many): the count then still sets the images of the jobs (an iterative/learned
    circuit, faithfulness, the ablation over the set), so the control stays live."""
    if r.run_key:
        return {"nimages-note": {"children": ""}, "nimages": {"className": "radio-compact"}}
    own = queries.own_class(pm, r.query)
    every = f"all {pm.class_image_count(own):,}" if own is not None else "the whole set"
    method = (getattr(r, "run_info", None) or {}).get("method")
    if method:  # an iterative/learned circuit is found on that many images; only the scores are precomputed
        note = f"used by the {method['method']} circuit; scores precomputed on {every}"
    else:
        note = f"scores precomputed on {every}; the count sets the faithfulness and ablation runs"
    return {"nimages-note": {"children": note}, "nimages": {"className": "radio-compact"}}


def _node_lod(g, circ, node_scores, drawn, sel_node) -> str:
    """What the 3D graph's level of detail for nodes leaves out, said on the page (big graphs only)."""
    if g.num_nodes <= graph3d.MAX_NODES:
        return ""
    d = graph3d.drawn_nodes(g, circ.nodes, node_scores, graph3d.edge_ends(g, drawn), sel_node)
    inc = np.isin(d, circ.nodes)
    return (f"; {g.num_nodes:,} nodes: drawn are {int(inc.sum()):,} of the {len(circ.nodes):,} circuit nodes (the drawn "
            f"edges' ends, then the highest |score|) and an even sample of {int((~inc).sum()):,} others for context")


def circuit_view(actx, s: dict, max_edges: int = graph3d.MAX_EDGES):
    """(figure, info children, cytoscape elements) for a state (see :func:`circuit_props`), or None."""
    p = circuit_props(actx, s, max_edges=max_edges)
    if p is None:
        return None
    return p["graph3d"]["figure"], p["edge-info"]["children"], p["cyto-data"]["data"]


def _error_outputs(actx, s: dict, err: str) -> list:
    """Outputs for a state that gives no circuit: each field's error at its field (the general line only
    for what belongs to no field), and the stale graph greyed out."""
    try:
        fe = field_errors(actx, s)
    except ViscnnError:
        fe = {}
    out = {c: no_update for c, _ in OUTPUTS}
    out.update({"msg": "" if fe else err, "target-msg": fe.get("target-msg", ""),
                "imageset-msg": fe.get("imageset-msg", ""), "value-msg": fe.get("value-msg", ""),
                "graph-wrap": "stale"})
    return [out[c] for c, _ in OUTPUTS]


def register(app, actx) -> None:
    # state -> run-request (a job starts on the server's thread pool, viscnn.app.jobs) -> run-poll ticks
    # -> scores-ready -> figure: no callback both asks for a run and consumes its result, so the
    # dependency graph has no cycle.
    # prevent_initial_call: the page arrives with its first view drawn (callbacks_state.initial_props), and
    # the state only changes, firing these, when the URL or a control asks for another view.
    # The dispatcher reads the run's copy of the state (what the scores rest on, viscnn.app.shell.derived) and
    # the figure the graph's copy: a threshold change does not ask about a run, an image switch or the ReLU
    # switch does not redraw the graph.
    @app.callback(Output("run-request", "data"), Output("run-poll", "disabled"), Input("run-state", "data"),
                  prevent_initial_call=True)
    def dispatch(s):
        if not s:
            return no_update, no_update
        try:
            pending = actx.scores(s)[5]
        except ViscnnError:
            return no_update, no_update
        if not pending:
            return no_update, no_update
        key = actx.run_key(s)
        run = dict(s)
        actx.jobs.submit(key, lambda progress: actx.compute_run(run, progress))
        return {"key": key}, False

    @app.callback(Output("scores-ready", "data"), Output("run-poll", "disabled", allow_duplicate=True),
                  Output("run-status", "children"), Output("run-progress", "children", allow_duplicate=True),
                  Input("run-poll", "n_intervals"), State("run-request", "data"), prevent_initial_call=True)
    def poll(_, req):
        job = actx.jobs.get(req["key"]) if req else None
        if job is None:
            return no_update, True, "", ""
        if not job.finished:
            return no_update, no_update, "Running the model... ", progress_line(job.done, job.total)
        return {"key": job.key, "error": job.error}, True, "", ""

    @app.callback([Output(c, p) for c, p in OUTPUTS] + [Output("run-progress", "children", allow_duplicate=True)],
                  Input("graph-state", "data"), Input("scores-ready", "data"), State("center-on", "data"),
                  prevent_initial_call=True)
    def update(s, ready, center):
        if not s:
            return [no_update] * (len(OUTPUTS) + 1)
        try:
            props = circuit_props(actx, s, center)
        except ViscnnError as e:
            return _error_outputs(actx, s, str(e)) + [""]
        if props is None:
            if ready and ready.get("key") == actx.run_key(s) and ready.get("error"):
                return _error_outputs(actx, s, ready["error"]) + [""]
            out = [no_update] * len(OUTPUTS)
            out[_AT["edge-info"]] = "Running the model for this target..."
            out[_AT["graph-wrap"]] = "stale"
            return out + [no_update]
        return [props[c][p] for c, p in OUTPUTS] + [""]  # a finished run clears its progress line

    # The 2D circuit and the tables are drawn once the 3D graph has painted: on page load they all compete
    # for the browser's one main thread, and the 3D graph is the main view (viscnn.after3d in assets/viscnn.js).
    # The 2D circuit's and the tables' components themselves are made then too, once (deferred_props).
    app.clientside_callback(
        """function(els, props) {
            if (document.getElementById('cyto')) { return window.dash_clientside.no_update; }
            return window.viscnn.deferred(props.cyto);
        }""",
        Output("cyto-slot", "children"), Input("cyto-data", "data"), State("deferred-props", "data"))
    app.clientside_callback(
        """function(t, props) {
            if (document.getElementById('top-nodes')) { return window.dash_clientside.no_update; }
            return window.viscnn.deferred(props.tables);
        }""",
        Output("tables", "children"), Input("tables-data", "data"), State("deferred-props", "data"))
    app.clientside_callback(
        "function(els) { return els ? window.viscnn.after3d(els) : window.dash_clientside.no_update; }",
        Output("cyto", "elements"), Input("cyto-data", "data"))
    app.clientside_callback(
        """function(t) {
            if (!t) { return [window.dash_clientside.no_update, window.dash_clientside.no_update]; }
            return window.viscnn.after3d([t.nodes, t.edges]);
        }""",
        Output("top-nodes", "data"), Output("top-edges", "data"), Input("tables-data", "data"))
