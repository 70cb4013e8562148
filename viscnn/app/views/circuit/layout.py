"""The Circuit view's page: its controls, the 3D graph with its legend and exports, the 2D circuit, the
circuit's top nodes and edges as a table, and the click-through panel."""

from __future__ import annotations

from dash import dcc, html

from viscnn.app.dataset_sets import COUNTS, DEFAULT_COUNT
from viscnn.app.figures.cytoscape import MAX_EDGES_2D, STYLESHEET
from viscnn.app.state import MODES
from viscnn.app.shell.layout import control, export_buttons, graph_config
from viscnn.app.viewparams import Param
from viscnn.app.views.circuit import method as M
from viscnn.app.views.circuit import set_ablation as SA

# the Circuit view's own URL key (the shell owns target, set, metric, threshold...)
PARAMS = [Param("n", "nimages", "value", DEFAULT_COUNT, kind="choice", choices=COUNTS),
          Param("method", "method", "value", M.DEFAULT_METHOD, kind="choice", choices=M.METHODS),
          Param("keep", "keep", "value", M.DEFAULT_KEEP, kind="number", lo=1e-4, hi=0.999),
          Param("removal", "removal", "value", "zero", kind="choice", choices=M.REMOVALS)]

TIPS = {
    "target": "What the circuit explains. 'loss' (empty = loss): the training loss. 'class:Sneaker' or 'class:7': "
              "that class's raw logit. 'unit:LAYER:CH': a channel's mean activation. Combine with + - and "
              "coefficients: 'class:Sneaker - 0.5*class:Sandal'. Applies on Enter or when the field loses focus.",
    "imageset": "Which images the scores are averaged over: a class name, 'all', 'image' (the current input "
                "image) or a combination such as 'Sneaker - all' (red then means more important for Sneaker "
                "than for all images).",
    "metric": "How a node's or kernel's importance is scored: taylor = |activation x gradient| (first-order "
              "Taylor estimate of the target's change when it is removed; for a conv node taken after its "
              "BN/ReLU with the value removal leaves there), taylor_signed keeps the sign, gradient, "
              "weight = kernel norm.",
    "mode": "How the circuit is cut from the scores: mass = the smallest set of edges holding this fraction of "
            "each layer's total |score|; topk = the k highest-scoring edges; score = every edge scoring at least "
            "this value. Only edges on a path from the input to the target are kept.",
    "value": "The threshold for the chosen mode (mass in (0, 1], topk a whole number, score any number). "
             "Applies on Enter or when the field loses focus.",
    "layout": "How a layer's nodes are placed: mds = class-importance MDS (nodes important for the same classes "
              "sit together), pca = its principal components, grid = channel order.",
    "nimages": "How many images of each image set a model run scores (targets other than the loss, and "
               "loss over 'image'): that many of the prepped dataset's images of the set, evenly spaced through "
               "it. Loss scores over prepped sets, and class:K over K, are precomputed over every image of the set; "
               "the count still sets the images an iterative/learned circuit is found on, and those of the "
               "faithfulness and set-ablation runs.",
    "method": "How the circuit is found. taylor: cut from the Taylor scores by the threshold (instant). iterative: "
              "prune a fraction of the kernels, re-score on the pruned model, repeat (a few seconds). learned: "
              "optimise a kernel mask so the masked model keeps the target's per-image values (about half a "
              "minute). iterative and learned keep a fraction of the conv kernels (Keep) and run over the images "
              "of the image set (Images per set, at most 1024), in the background.",
    "keep": "iterative/learned: the fraction of the conv kernels the circuit keeps, e.g. 0.05.",
    "removal": "iterative/learned: what removing a kernel means while the circuit is found: zero its weights, or "
               "replace its map by its mean over the images (mean ablation).",
    "search": "Find a node by id (conv2:5), by channel of the class layer, or by class name (Sneaker): "
              "selects it and centres the camera on it.",
}


# what the graph panel shows until a figure arrives (a model run for a target): no empty axes
WAITING = {"data": [], "layout": {
    "xaxis": {"visible": False}, "yaxis": {"visible": False}, "paper_bgcolor": "white", "plot_bgcolor": "white",
    "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
    "annotations": [{"text": "The graph is drawn when the scores for this target are ready.", "showarrow": False,
                     "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 14, "color": "#777"}}]}}


def deferred_props() -> dict:
    """The 2D circuit's and the tables' components as the page makes them (viscnn.deferred in
    assets/viscnn.js) once the 3D graph has painted: dash-cytoscape's 0.5 MB bundle and dash_table's
    0.6 MB of chunks then load and run after the first paint, not before it (~0.3 s of the browser's one
    main thread in a CPU profile of a cold load)."""
    cell = {"fontSize": 12, "padding": "2px 6px", "textAlign": "left"}

    def table(id_, cols):
        return {"namespace": "dash_table", "type": "DataTable", "props": {
            "id": id_, "page_size": 10, "sort_action": "native", "style_table": {"width": "100%"}, "style_cell": cell,
            "columns": [{"name": c, "id": c} for c in cols], "data": []}}

    return {"cyto": {"namespace": "dash_cytoscape", "type": "Cytoscape", "props": {
                "id": "cyto", "elements": [], "layout": {"name": "preset", "fit": True, "padding": 12},
                "stylesheet": STYLESHEET, "style": {"width": "100%", "height": "520px"}, "className": "cyto-box",
                "minZoom": 0.3, "maxZoom": 3, "wheelSensitivity": 0.2}},
            "tables": [table("top-nodes", ("rank", "node", "layer", "score")),
                       table("top-edges", ("rank", "edge", "from", "to", "score"))]}


def layout(models) -> html.Div:
    controls = html.Div([
        control("Target", dcc.Input(id="target", type="text", debounce=True,
                                    placeholder="loss, class:Sneaker, unit:LAYER:CH"), TIPS["target"], "230px",
                msg_id="target-msg"),
        control("Image set", dcc.Input(id="imageset", type="text", debounce=True,
                                       placeholder="all, Sneaker - all, image"), TIPS["imageset"], "190px",
                msg_id="imageset-msg"),
        control("Images per set", html.Div([
            dcc.RadioItems(id="nimages", options=[{"label": c, "value": c} for c in COUNTS], inline=True,
                           className="radio-compact"),
            html.Div(id="nimages-note", className="muted")]), TIPS["nimages"]),
        control("Metric", dcc.Dropdown(id="metric", clearable=False), TIPS["metric"], "150px"),
        control("Threshold", dcc.RadioItems(id="mode", options=[{"label": m, "value": m} for m in MODES],
                                            inline=True), TIPS["mode"]),
        # type=text: dcc.Input type=number drops an Enter whose value equals one it sent before a callback
        # rewrote the field (Dash 4), so the value is parsed on the server instead.
        control("Value", dcc.Input(id="value", type="text", inputMode="decimal", debounce=True), TIPS["value"],
                "90px", msg_id="value-msg"),
        control("Method", dcc.Dropdown(id="method", options=list(M.METHODS), value=M.DEFAULT_METHOD, clearable=False),
                TIPS["method"], "110px"),
        control("Keep", dcc.Input(id="keep", type="text", inputMode="decimal", debounce=True, value=M.DEFAULT_KEEP),
                TIPS["keep"], "70px"),
        control("Removal", dcc.Dropdown(id="removal", options=list(M.REMOVALS), value="zero", clearable=False),
                TIPS["removal"], "90px"),
        control("Layout", dcc.Dropdown(id="layout", clearable=False), TIPS["layout"], "110px"),
        control("Find node", dcc.Input(id="search", type="text", debounce=True, placeholder="conv2:5 or Sneaker"),
                TIPS["search"], "170px", msg_id="search-msg"),
    ], className="controls")

    graph_col = html.Div([
        html.Div(id="edge-info", className="info"),
        html.Div(id="legend", className="legend"),
        html.Div(dcc.Graph(id="graph3d", figure=WAITING, style={"height": "60vh", "minHeight": "420px"},
                           config=graph_config("graph3d")),
                 id="graph-wrap"),
        html.Div([html.Span(id="run-status"), html.Span(id="run-progress")], className="info"),
        html.Div(id="method-info", className="info"),
        html.Div([html.Button("Measure faithfulness", id="faith-run",
                              title="Run the circuit alone (every other kernel zeroed) against the full model on "
                                    "held-out images of the image set, next to random circuits of the same size"),
                  html.Span(id="faith-info", className="info")], className="row faith"),
        dcc.Interval(id="faith-poll", interval=300, disabled=True),
        html.Div([html.Span("Export:", className="muted"),
                  *export_buttons("graph3d", "3D graph"),
                  html.Button("CSV (nodes + edges)", id="export-csv", title="The circuit's nodes and edges with their scores and ranks"),
                  html.Button("Snapshot (JSON + HTML)", id="export",
                              title="A JSON that reopens this view and a standalone HTML of the 3D circuit (offline)"),
                  dcc.Upload(html.Button("Open snapshot", title="Reopen a snapshot JSON exported earlier"),
                             id="snap-upload", max_size=-1)],
                 className="row exports"),
    ], className="left")

    # the 2D circuit and the tables span the page: a deep model's 2D diagram needs the width
    below = html.Div([
        html.Div([html.H4("Circuit (2D)"), html.Span(id="cyto-count", className="info"),
                  html.Label("edges shown", className="muted", htmlFor="cyto-cap",
                             title="How many of the circuit's most important edges the 2D diagram draws (at most 400)"),
                  dcc.Input(id="cyto-cap", type="number", min=1, max=400, step=1, value=MAX_EDGES_2D,
                            debounce=True, style={"width": "80px"}),
                  *export_buttons("cyto", "2D circuit")], className="row"),
        # the 2D circuit and the tables are made in the page after the 3D graph has painted (deferred_props)
        html.Div(id="cyto-slot", className="cyto-slot"),
        html.H4("Top of the circuit"),
        html.Div(id="tables-caption", className="muted"),
        html.Div(className="row", id="tables"),
    ], className="below")

    panel_col = html.Div([
        html.Div([dcc.Checklist(id="relu", options=[{"label": " ReLU on maps", "value": "relu"}], inline=True),
                  html.Button("Ablate selection", id="ablate-add", title="Zero the selected node (its whole channel) or edge (one kernel) and rerun the model on the input image"),
                  html.Button("Ablate outside the circuit", id="ablate-outside",
                              title="Zero every conv kernel outside the current circuit (the class layer stays whole) "
                                    "and rerun the model on the input image: what the circuit alone makes of it"),
                  html.Button("Clear ablations", id="ablate-clear")], className="row"),
        html.Div(id="ablate-info", className="info"),
        html.Div(SA.controls(), className="row ablate-set"),  # the ablations over the image set (set_ablation.py)
        html.Div(id="panel", className="panel"),
    ], className="right")

    return html.Div([
        controls,
        html.Div(id="msg", className="error"),
        html.Div(id="snap-msg", className="error"),
        html.Div([graph_col, panel_col], className="main"),
        below,
        dcc.Store(id="run-request"), dcc.Store(id="scores-ready"), dcc.Store(id="cyto-data"), dcc.Store(id="tables-data"),
        dcc.Store(id="center-on"), dcc.Store(id="deferred-props", data=deferred_props()),
        dcc.Interval(id="run-poll", interval=250, disabled=True),  # ticks while a model run is going
        *M.stores(),  # the iterative/learned circuit's job (views/circuit/method.py)
        dcc.Download(id="download-json"), dcc.Download(id="download-html"),
        dcc.Download(id="download-nodes-csv"), dcc.Download(id="download-edges-csv"),
    ])
