"""The page frame every view sits in: a header (model picker, view tabs, help), the input-image sidebar
(image, upload, gallery, prediction), one container per view, and the shared stores.

Plain ``dash.dcc``/``dash.html`` with our own small stylesheet (assets/viscnn.css): a component library
(dash-bootstrap-components, dash-mantine-components) would add a second bundle to the first paint and
its own visual language for little we need beyond tabs, tooltips and a collapsible panel."""

from __future__ import annotations

from typing import List, Optional

from dash import dcc, html

from viscnn.app.shell.derived import stores as derived_stores
from viscnn.app.views import VIEWS

# Plotly config for every figure: no Plotly logo, and nothing that sends data off the machine.
_NO_CLOUD = ["sendChartToCloud", "sendDataToCloud", "editInChartStudio"]


def graph_config(name: str = "figure", toolbar: bool = True) -> dict:
    return {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False, "showLink": False,
            "modeBarButtonsToRemove": _NO_CLOUD, "displayModeBar": "hover" if toolbar else False,
            "toImageButtonOptions": {"filename": f"viscnn-{name}", "scale": 2}}


def control(label: str, comp, tip: str, width: str = "auto", msg_id: Optional[str] = None) -> html.Div:
    """A labelled control with its tooltip and, optionally, its own error line below it."""
    kids = [html.Label(label, title=tip), comp]
    if msg_id:
        kids.append(html.Div(id=msg_id, className="field-error"))
    return html.Div(kids, className="control", style={"width": width}, title=tip)


def export_buttons(target: str, what: str) -> List[html.Button]:
    """PNG and SVG download buttons for a figure (handled in the browser by assets/viscnn.js)."""
    return [html.Button(fmt.upper(), className="export-btn", title=f"Download the {what} as {fmt.upper()}",
                        **{"data-target": target, "data-format": fmt, "data-what": what.replace(" ", "-").lower()},
                        id=f"export-{target}-{fmt}")
            for fmt in ("png", "svg")]


INPUT_FIG_H = 220  # the sidebar's input image: its figure and its box (a taller figure ran into the upload box)


def progress_line(done: int, total: int, what: str = "images scored") -> list:
    """A long computation's progress: a bar (indeterminate while the total is unknown) and 'done / total'
    (a percentage when the total is 100)."""
    if total <= 0:
        return [html.Progress(className="run-bar"), html.Span(f" {what}: starting", className="muted")]
    count = f"{round(100 * done / total)}%" if total == 100 else f"{done}/{total}"
    return [html.Progress(value=str(done), max=str(total), className="run-bar"),
            html.Span(f" {what}: {count}", className="muted")]


HELP = [
    html.H4("How to read this"),
    html.Ul([
        html.Li([html.B("Nodes"), " are filters: the input image's channels, every conv's output channels, and "
                 "the classes (the final Linear's outputs). Ids are LAYER:CHANNEL with the module path."]),
        html.Li([html.B("Edges"), " are single 2D kernels: weight[out, in] of a conv, the slice that reads one "
                 "input channel. A residual sum gives a kernel one line per summand."]),
        html.Li([html.B("Colours"), ": one diverging map everywhere: red = positive, blue = negative, white = "
                 "zero, symmetric limits. For an image-set difference such as 'Sneaker - all', red means "
                 "more important for Sneaker than for all images. Magnitudes (|score|, maps after ReLU) use one "
                 "sequential map (Viridis)."]),
        html.Li([html.B("Edge width and opacity"), " grow with |score| (four buckets, square-root scale); ",
                 html.B("node size"), " grows with the node's |score|; grey dots are outside the circuit."]),
        html.Li([html.B("Metrics"), ": taylor = |activation x gradient| averaged over the image set (the "
                 "first-order estimate of what removing the kernel or channel does to the target; a conv node's is "
                 "taken after its BN/ReLU with the value zeroing the filter leaves there, which tracks real "
                 "channel removal at Spearman 0.96-0.99 on the default model); "
                 "taylor_signed keeps its sign; gradient; weight = the kernel's norm."]),
        html.Li([html.B("Threshold"), ": mass keeps the fewest edges holding that fraction of each layer's "
                 "|score|; topk keeps the k best edges; score keeps edges scoring at least the value. Only edges on "
                 "a path from the input to the target stay."]),
        html.Li([html.B("Layouts"), ": mds places nodes that matter for the same classes together, pca by "
                 "principal components of their class profile, grid in channel order."]),
        html.Li([html.B("Image sets"), ": the prepped dataset's classes, 'all', or 'image' (the current input "
                 "image). The line above the graph says what the scores rest on."]),
        html.Li([html.B("Selection"), ": click a node (or the middle of an edge) in 3D, a box in the 2D "
                 "circuit, a table row, or use Find node: all views show the same selection."]),
        html.Li([html.B("Attribution"), ": which input pixels drive the target on the current image. Signed "
                 "methods (gradient, integrated gradients, occlusion, DeconvNet, guided backprop) on the diverging map, "
                 "magnitudes (saliency, SmoothGrad, the Grad-CAM family) on the sequential one. 'Circuit only' reruns them with every kernel outside the "
                 "current circuit zeroed."]),
        html.Li([html.B("Artifacts"), ": mean feature maps under a constant or random input show padding and "
                 "stride artifacts (borders, grids); the padding audit lists the padding each strided layer "
                 "leaves unused; an asymmetric mean patch or kernel in a downsampling layer is their trace."]),
    ]),
]


def page(models: List[str], views: dict) -> html.Div:
    """The whole page; ``views`` maps a view name to its layout component."""
    picker = (html.Div([html.Label("Model", title="The prepped model to look at (prepped_models/)"),
                        dcc.Dropdown(id="model", options=models, clearable=False)], className="control model-pick",
                       title="The prepped model to look at (prepped_models/)")
              if len(models) > 1 else html.Div(dcc.Dropdown(id="model", options=models), style={"display": "none"}))
    header = html.Div([
        html.Div([html.H2("viscnn"), html.Span("a CNN microscope", className="sub")], className="brand"),
        picker,
        dcc.Tabs(id="view", value="circuit", className="view-tabs", parent_className="view-tabs-wrap",
                 children=[dcc.Tab(label=label, value=v, className="view-tab", selected_className="view-tab--on",
                                   id=f"tab-{v}") for v, label, _ in VIEWS]),
        html.Button("Help", id="help-toggle", n_clicks=0, title="How to read the graph, colours and controls"),
    ], className="header")
    sidebar = html.Div([
        html.H4("Input image"),
        dcc.Graph(id="input-fig", config={"displayModeBar": False}, style={"height": f"{INPUT_FIG_H}px"}),
        dcc.Upload(html.Div(["Drop or ", html.A("choose a PNG/JPEG")]), id="upload", className="upload",
                   max_size=-1),  # no size or type filter here: every refused file gets a message from the server
        html.Div(id="upload-msg", className="error"),
        html.Div(id="gallery", className="gallery"),
        html.Div(id="prediction", className="info"),
    ], className="sidebar")
    body = html.Div([sidebar, html.Div([html.Div(comp, id=f"view-{name}", className="view")
                                        for name, comp in views.items()], className="views")], className="body")
    return html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Location(id="nav", refresh=True),
        dcc.Store(id="state"), dcc.Store(id="image"), dcc.Store(id="sel"), dcc.Store(id="ablate"), *derived_stores(),
        header,
        html.Div(HELP, id="help", className="help", style={"display": "none"}),
        html.Div(id="url-msg", className="error"),
        body,
    ], className="page")
