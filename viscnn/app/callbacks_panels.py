"""Click-through: selecting nodes and edges, their panels (activation maps, feature visualizations,
exemplars, top incoming edges, kernels), receptive-field boxes on hover, and ablation."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from viscnn.app import activations as A
from viscnn.app import routes
from viscnn.app.figures import classpanel as CP
from viscnn.app.figures import panels as P
from viscnn.app.layer_notes import layer_notes
from viscnn.app.shell.layout import INPUT_FIG_H, export_buttons, graph_config
from viscnn.errors import ViscnnError


def fig_block(cid: str, figure: dict, what: str, **graph_kw) -> html.Div:
    """A panel figure with its PNG/SVG export buttons."""
    return html.Div([dcc.Graph(id=cid, figure=figure, config=graph_config(cid), **graph_kw),
                     html.Div(export_buttons(cid, what), className="row exports")])


def sel_from_click(graph, click) -> str:
    """The selection string for a 3D-graph click: node id "LAYER:CH" or "eN" for an edge."""
    if not click or not click.get("points"):
        return ""
    cd = click["points"][0].get("customdata")
    if isinstance(cd, list):
        cd = cd[0] if cd else None
    if cd is None:
        return ""
    cd = int(cd)
    if cd >= 0:
        return graph.node_id(cd) if cd < graph.num_nodes else ""
    e = -cd - 1
    return f"e{e}" if e < graph.num_edges else ""


def map_png(m: np.ndarray, size: int = 56) -> str:
    m = np.atleast_2d(np.asarray(m, np.float32))
    up = max(1, size // max(m.shape))
    return P.data_uri(P.png_bytes(P.kernel_rgb(m, upscale=up)))


def target_value(pm, target: str, acts, label):
    """The target on this one image (None when it cannot be evaluated, e.g. loss without a label)."""
    import torch

    from viscnn.app import queries

    t = queries.parse_target(pm, target or "loss")
    maps = {k: torch.from_numpy(v)[None] for k, v in acts.outputs.items()}
    logits = torch.from_numpy(acts.logits)[None]
    lab = torch.tensor([label]) if label is not None else None
    return float(t.evaluate(logits, maps, lab)[0])


def _label(actx, s):
    key = s.get("image", "")
    if key.startswith("img:"):
        for it in actx.prepped(s["model"]).images():
            if it["file"] == key[4:]:
                return it.get("label")
    return None


def node_panel(actx, s, node: int, acts, edge_scores):
    pm = actx.prepped(s["model"])
    g = pm.graph
    name = s["model"]
    layer = g.layers[int(g.node_layer[node])]
    if layer.kind == "linear":
        return class_panel(actx, s, node, acts)
    m = A.node_map(g, acts, node, relu=s.get("relu", False))
    notes = actx._memoize(("layer-notes", name), lambda: layer_notes(A.get_model(pm), g), 4).get(layer.name, [])
    kids = [html.H4(f"Node {actx.labels(name)[node]}"), *[html.Div(t, className="muted layer-note") for t in notes],
            fig_block("act-map", P.heatmap(m, f"activation map on the input image ({'after ReLU' if s.get('relu') else 'raw'}), "
                                              f"{m.shape[0]}x{m.shape[1]}", diverging=not s.get("relu"),
                                           colorbar_title="activation"),
                      "activation map", clear_on_unhover=True)]
    if layer.kind != "input":
        fv = routes.node_image(pm, node, "fv")
        ex = pm.exemplars(layer.name)
        kids.append(html.Div([
            html.Div([html.Div("feature vis"), html.Img(src=routes.fv_url(name, node), className="pix", style={"width": "96px"})
                      if fv is not None else html.I("not prepped")]),
            html.Div([html.Div("dataset exemplars"), html.Div(
                [html.Img(src=routes.ex_url(name, node, k)) for k in range(ex.shape[1])] if ex is not None
                else [html.I("not prepped")], className="thumbs")]),
        ], className="row"))
        kids.append(deconv_block(actx, s, layer, int(g.node_channel[node]), ex))
        kids.append(html.H4("Top incoming edges"))
        for e in P.top_incoming(g, node, edge_scores, 5):
            src = int(g.links[np.searchsorted(g.links[:, 0], e), 1])
            kern = routes.kernel_of(pm, e)
            _, out = A.edge_maps(g, acts, kern, e)
            kids.append(html.Div([
                html.Img(src=routes.fv_url(name, src) if routes.node_image(pm, src, "fv") is not None
                         else routes.input_url(name, s["image"]), title=f"source {g.node_id(src)}"),
                html.Img(src=map_png(out), title="edge output map"),
                html.Img(src=routes.kernel_url(name, e), title="kernel"),
                html.Button(f"{g.node_id(src)} -> e{e}  score {float(edge_scores[e]):.3g}",
                            id={"type": "pick-edge", "edge": e}, className="link"),
            ], className="edge-row"))
    return kids


def deconv_block(actx, s, layer, channel: int, ex) -> html.Div:
    """DeconvNet of this node (its strongest position) on the input image and on its dataset exemplars,
    each with the picture it explains: what in each image drives the unit (Zeiler & Fergus, Fig. 2)."""
    from viscnn.app.views.attribution.callbacks import _nets
    from viscnn.app.views.attribution.compute import unit_deconvnet

    pm = actx.prepped(s["model"])
    imgs = [actx.image(s["model"], s["image"])]
    note = ""
    if ex is not None and tuple(ex.shape[2:4]) == tuple(pm.input_shape[1:]):
        imgs += [np.asarray(ex[channel, k]) for k in range(ex.shape[1])]
    elif ex is not None:
        note = (f"The exemplars are {ex.shape[2]}x{ex.shape[3]} crops, not whole inputs: back-projected on the "
                "input image only.")
    try:
        _, net = _nets(actx, s["model"], None, "full")
        maps = unit_deconvnet(net, pm, layer.name, channel, imgs)
    except ViscnnError as e:
        return html.Div(f"DeconvNet: {e}", className="warn")
    lim = max(float(np.abs(m).max()) for m in maps) or 1.0
    up = max(1, 56 // max(maps[0].shape))
    cells = [html.Div([html.Img(src=P.data_uri(P.png_bytes(P.kernel_rgb(m, scale=lim, upscale=up))), title="DeconvNet (red = positive, blue = negative, one scale)"),
                       html.Div("input" if i == 0 else f"exemplar {i}", className="muted")]) for i, m in enumerate(maps)]
    return html.Div([html.H4("DeconvNet of this node", title="Each image back-projected from this unit's strongest "
                             "position, with every other activation of the layer zeroed; one colour scale"),
                     html.Div(cells, className="thumbs row"), html.Div(note, className="muted")])


def edge_panel(actx, s, e: int, acts, edge_scores):
    pm = actx.prepped(s["model"])
    g = pm.graph
    name = s["model"]
    li, j, i = (int(v) for v in g.edges[e])
    src = int(g.links[np.searchsorted(g.links[:, 0], e), 1])
    tgt = int(g.edge_target[e])
    kern = routes.kernel_of(pm, e)
    inp, out = A.edge_maps(g, acts, kern, e)
    return [
        html.H4(f"Edge e{e}: {g.node_id(src)} -> {g.node_id(tgt)} (kernel {g.layers[li].name}[{j}, {i}]), "
                f"score {float(edge_scores[e]):.3g}"),
        html.Div([html.Div([html.Div("kernel"), html.Img(src=routes.kernel_url(name, e), style={"width": "96px"},
                                                         className="pix")]),
                  html.Div([html.Div("edge visualization"),
                            html.Img(src=routes.edge_fv_url(name, e), className="pix", style={"width": "96px"})
                            if routes.edge_image(pm, e) is not None else html.I("not prepped for this edge")]),
                  html.Div([html.Div("source -> target feature vis"), html.Div(
                      [html.Img(src=routes.fv_url(name, n)) for n in (src, tgt)
                       if routes.node_image(pm, n, "fv") is not None], className="thumbs")])], className="row"),
        fig_block("edge-kernel", P.heatmap(kern, f"kernel weights {kern.shape[0]}x{kern.shape[1]}", colorbar_title="weight"), "kernel"),
        fig_block("edge-in-map", P.heatmap(inp, "input map (the channel the kernel reads)", colorbar_title="activation"), "input map"),
        fig_block("edge-out-map", P.heatmap(out, "output map (input convolved with the kernel)", colorbar_title="activation"), "output map"),
    ]


def class_panel(actx, s, node: int, acts):
    """A class node: the image's probabilities over all classes, the class's weight per input channel,
    and the gallery images of the class (a logit is not a map and a Linear row is not a kernel)."""
    pm = actx.prepped(s["model"])
    g = pm.graph
    ci = CP.class_index_of_node(g, node)
    classes = pm.classes if len(pm.classes) == g.layers[-1].channels else [str(i) for i in range(g.layers[-1].channels)]
    cname = classes[ci]
    w, chans = CP.class_channel_weights(pm, ci)
    files = CP.class_exemplar_files(pm, ci)
    return html.Div([
        html.H4(f"Class node {actx.labels(s['model'])[node]}"),
        fig_block("class-logits", CP.logits_figure(acts.logits, classes, ci,
                                                   title=f"the input image's class probabilities (highlight: {cname})"),
                  "class probabilities"),
        fig_block("class-weights", CP.class_weights_figure(w, chans, f"{cname}: final-layer weight per input channel"),
                  "class weights"),
        html.Div(f"Gallery images of {cname}", className="muted"),
        html.Div([html.Img(src=routes.input_url(s["model"], f"img:{f}"), title=f) for f in files]
                 or [html.I("no gallery images of this class")], className="thumbs"),
    ], className="class-panel")


def panel_props(actx, s: dict) -> tuple:
    """(panel children, input figure, prediction line, ablation line) for a state."""
    if not s:
        return no_update, no_update, no_update, no_update
    try:
        pm = actx.prepped(s["model"])
        img = actx.image(s["model"], s["image"])
        ablate = s.get("ablate") or []
        extra, outside_note = None, ""
        if A.OUTSIDE in ablate:
            r = actx.resolve(s)
            if r.pending or r.circuit is None:
                outside_note = " (the circuit is still being computed: nothing outside it zeroed yet)"
            else:
                extra = A.outside_edges(pm.graph, r.circuit.edges)
                conv = int(_conv_mask(pm.graph).sum())
                outside_note = (f" ({len(extra)} of {conv} conv kernels zeroed: all but the circuit's; "
                                "the class layer kept whole)")
        acts = A.run(pm, s["image"], img, ablate, extra)
        base = A.run(pm, s["image"], img, ()) if ablate else acts
    except ViscnnError as e:
        return html.Div(str(e), className="error"), no_update, "", ""
    pred = _prediction(actx, s, pm, acts, base)
    names = ["everything outside the circuit" if a == A.OUTSIDE else a for a in ablate]
    abl = (f"Ablated: {', '.join(names)}{outside_note}" if ablate
           else "No ablations (select a node or edge, then 'Ablate selection').")
    sel = s.get("sel", "")
    fig = P.image_figure(img, title=s["image"].split(":", 1)[-1], height=INPUT_FIG_H)
    if not sel:
        return html.I("Click a node or an edge in the graph."), fig, pred, abl
    try:
        es = actx.scores(s)[3]  # the scores, not the circuit: the panel does not depend on the threshold
        es = es if es is not None else np.zeros(pm.graph.num_edges, np.float32)  # a model run still pending
        if sel.startswith("e") and sel[1:].isdigit():
            e = int(sel[1:])
            if e >= pm.graph.num_edges:
                raise ViscnnError(f"no edge {e}")
            kids = edge_panel(actx, s, e, acts, es)
        else:
            kids = node_panel(actx, s, pm.graph.node_index(sel), acts, es)
    except ViscnnError as e:
        kids = html.Div(str(e), className="error")
    return kids, fig, pred, abl


def panel_waits_for(actx, s: dict, ready) -> bool:
    """Whether the panel of state ``s`` shows the model run ``ready`` just finished: its scores (a selection's
    top incoming edges) or its circuit ('ablate outside the circuit')."""
    if not s or not ready or (not s.get("sel") and A.OUTSIDE not in (s.get("ablate") or [])):
        return False
    try:
        return ready.get("key") == actx.run_key(s)
    except (KeyError, TypeError, ViscnnError):
        return False


def register(app, actx) -> None:
    # One callback per source of a selection: the 2D circuit and the tables are made after the first paint
    # (views/circuit/layout.deferred_props), and a callback with an input not yet on the page does not run.
    @app.callback(Output("sel", "data", allow_duplicate=True),
                  Input("graph3d", "clickData"), Input({"type": "pick-edge", "edge": __import__("dash").ALL}, "n_clicks"),
                  State("state", "data"), prevent_initial_call=True)
    def select(click, picks, s):
        if not s:
            return no_update
        trig = ctx.triggered_id
        if trig == "graph3d":
            return sel_from_click(actx.prepped(s["model"]).graph, click) or no_update
        if isinstance(trig, dict) and trig.get("type") == "pick-edge" and any(picks):
            return f"e{int(trig['edge'])}"
        return no_update

    @app.callback(Output("sel", "data", allow_duplicate=True), Input("cyto", "tapNodeData"), State("state", "data"),
                  prevent_initial_call=True)
    def select_2d(tap, s):
        if not s or not tap:
            return no_update
        if "node" in tap:
            return actx.prepped(s["model"]).graph.node_id(int(tap["node"]))
        return f"e{int(tap['edge'])}" if "edge" in tap else no_update

    @app.callback(Output("sel", "data", allow_duplicate=True), Input("top-nodes", "active_cell"),
                  Input("top-edges", "active_cell"), prevent_initial_call=True)
    def select_table(cell_n, cell_e):
        cell = cell_n if ctx.triggered_id == "top-nodes" else cell_e
        return (cell or {}).get("row_id") or no_update

    # prevent_initial_call: the page arrives with the panel drawn (callbacks_state.initial_props). Its input is
    # the panel's copy of the state (viscnn.app.shell.derived): a threshold change does not refire it unless
    # 'ablate outside the circuit' is on. A finished model run redraws it when it shows that run's scores.
    @app.callback(Output("panel", "children"), Output("input-fig", "figure"), Output("prediction", "children"),
                  Output("ablate-info", "children"), Input("panel-state", "data"), Input("scores-ready", "data"),
                  prevent_initial_call=True)
    def panel(s, ready):
        if ctx.triggered_id == "scores-ready" and not panel_waits_for(actx, s, ready):
            return no_update, no_update, no_update, no_update
        return panel_props(actx, s)

    @app.callback(Output("sel", "data", allow_duplicate=True), Output("center-on", "data"),
                  Output("search-msg", "children"), Input("search", "value"), State("state", "data"),
                  State("center-on", "data"), prevent_initial_call=True)
    def search(text, s, prev):
        if not s or not (text or "").strip():
            return no_update, no_update, ""
        try:
            node = find_node(actx.prepped(s["model"]), text)
        except ViscnnError as e:
            return no_update, no_update, str(e)
        sel = actx.prepped(s["model"]).graph.node_id(node)
        return sel, {"sel": sel, "n": int((prev or {}).get("n", 0)) + 1}, ""

    @app.callback(Output("input-fig", "figure", allow_duplicate=True), Input("act-map", "hoverData"),
                  State("state", "data"), prevent_initial_call=True)
    def rf_box(hover, s):
        if not s or not s.get("sel"):
            return no_update
        pm = actx.prepped(s["model"])
        img = actx.image(s["model"], s["image"])
        box = None
        if hover and hover.get("points"):
            p = hover["points"][0]
            try:
                box = rf_box_of(actx, s["model"], s["sel"], int(p["y"]), int(p["x"]))
            except (ViscnnError, KeyError, TypeError, ValueError):
                box = None
        return P.image_figure(img, box, title=s["image"].split(":", 1)[-1], height=INPUT_FIG_H)

    @app.callback(Output("ablate", "data", allow_duplicate=True), Input("ablate-add", "n_clicks"),
                  Input("ablate-clear", "n_clicks"), Input("ablate-outside", "n_clicks"), State("state", "data"),
                  prevent_initial_call=True)
    def ablate(add, clear, outside, s):
        if not s:
            return no_update
        if ctx.triggered_id == "ablate-clear":
            return []
        if ctx.triggered_id == "ablate-outside":
            cur = list(s.get("ablate") or [])
            return no_update if A.OUTSIDE in cur else cur + [A.OUTSIDE]
        sel = s.get("sel", "")
        cur = list(s.get("ablate") or [])
        if not sel or sel in cur:
            return no_update
        return cur + [sel]


def find_node(pm, text: str) -> int:
    """The node a search names: a node id (``conv2:5``, ``input:0``), a class name (any case), or
    ``class:NAME``; raises ViscnnError saying what was not found."""
    g = pm.graph
    q = text.strip()
    if q.lower().startswith("class:"):
        q = q[6:].strip()
    names = {c.lower(): i for i, c in enumerate(pm.classes)}
    last = g.layers[-1]
    if q.lower() in names and last.kind == "linear" and len(pm.classes) == last.channels:
        return last.node_offset + names[q.lower()]
    try:
        return g.node_index(q)
    except ViscnnError:
        pass
    hits = [c for c in pm.classes if q.lower() in c.lower()]
    if len(hits) == 1 and last.kind == "linear":
        return last.node_offset + pm.classes.index(hits[0])
    raise ViscnnError(f"no node or class {text.strip()!r}" + (f"; did you mean {', '.join(hits[:5])}?" if hits else
                      " (try LAYER:CHANNEL such as " + f"{g.layers[min(1, len(g.layers) - 1)].name}:0 or a class name)"))


def rf_box_of(actx, model: str, sel: str, y: int, x: int):
    """Receptive-field box (y0, y1, x0, x1) on the input of the selected node's unit at (y, x)."""
    from viscnn.receptive_field import ReceptiveFields

    pm = actx.prepped(model)
    g = pm.graph
    node = g.node_index(sel)
    layer = g.layers[int(g.node_layer[node])]
    if layer.kind == "input":
        return (y, y + 1, x, x + 1)
    c, h, w = pm.input_shape
    rf = actx._memoize(("rf", model), lambda: ReceptiveFields(A.get_model(pm), (h, w), c), 4)
    return tuple(int(v) for v in rf.box(layer.name, y, x))


def _conv_mask(graph) -> np.ndarray:
    m = np.zeros(graph.num_edges, bool)
    for layer in graph.layers:
        if layer.kind == "conv":
            m[layer.edge_offset:layer.edge_offset + layer.num_edges] = True
    return m


def _prediction(actx, s, pm, acts, base):
    probs = np.exp(acts.logits - acts.logits.max())
    probs /= probs.sum() or 1.0
    top = np.argsort(-probs)[:3]
    names = pm.classes if len(pm.classes) == len(probs) else [str(i) for i in range(len(probs))]
    parts = [html.Span("Prediction: " + ", ".join(f"{names[k]} {probs[k]:.2f}" for k in top))]
    try:
        label = _label(actx, s)
        tv = target_value(pm, s.get("target", "loss"), acts, label)
        txt = f" | target {s.get('target') or 'loss'} = {tv:.4g}"
        if base is not acts:
            txt += f" (before ablation {target_value(pm, s.get('target', 'loss'), base, label):.4g})"
        parts.append(html.Span(txt, id="target-value"))
    except (ViscnnError, ImportError):
        pass  # a target that does not parse is reported once, at the target field
    return parts
