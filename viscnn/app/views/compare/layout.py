"""The Compare view's page: the method, the target, a second input size, raw or per-map scale."""

from __future__ import annotations

from dash import dcc, html

from viscnn.app.viewparams import Param
from viscnn.app.views.attribution.compute import METHODS
from viscnn.app.views import run_line

PARAMS = [
    Param("cmethod", "cmp-method", "value", "gradcam", "choice", tuple(METHODS)),
    Param("ctarget", "cmp-target", "value", ""),
    Param("csize", "cmp-size", "value", ""),
    Param("cscale", "cmp-scale", "value", "permap", "choice", ("permap", "raw")),
]


def layout(models) -> html.Div:
    return html.Div([
        html.Div([
            html.Div([html.Label("Method", htmlFor="cmp-method"),
                      dcc.Dropdown(id="cmp-method", value="gradcam", clearable=False, style={"width": "220px"},
                                   options=[{"label": lab, "value": k} for k, (lab, _, _) in METHODS.items()])],
                     className="field"),
            html.Div([html.Label("Target", htmlFor="cmp-target"),
                      dcc.Input(id="cmp-target", type="text", value="", debounce=True, placeholder="each model's predicted class",
                                style={"width": "220px"})],
                     className="field", title="Empty: each model explains its own predicted class. class:K / class:NAME "
                                              "apply to every model with that class"),
            html.Div([html.Label("Second input size", htmlFor="cmp-size"),
                      dcc.Input(id="cmp-size", type="text", value="", debounce=True, placeholder="e.g. 56x56",
                                style={"width": "90px"})],
                     className="field", title="The current model once more on the image resized to this size (HxW)"),
            html.Div([html.Label("Scale", htmlFor="cmp-scale"),
                      dcc.RadioItems(id="cmp-scale", value="permap", inline=True,
                                     options=[{"label": " per map", "value": "permap"},
                                              {"label": " raw (one shared scale)", "value": "raw"}])], className="field"),
        ], className="row"),
        html.Div(id="cmp-info", className="info"),
        html.Div(id="cmp-msg", className="warn"),
        *run_line("compare"),  # progress of its long computations (viscnn.app.views.Pending)
        dcc.Loading(html.Div(id="cmp-body"), type="dot"),
    ], id="compare-view")
