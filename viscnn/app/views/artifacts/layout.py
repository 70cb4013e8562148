"""The Artifacts view's page: baseline, stage, drill-down layer and scaling, a second input size or
model to compare with; the per-layer strip of mean maps, the drill-down grid, mean patch vs mean
kernel per conv, and the padding audit."""

from __future__ import annotations

from dash import dcc, html

from viscnn.app.viewparams import Param
from viscnn.app.views import run_line

BASELINES = [("zero", "zero (the mean image)"), ("black", "black"), ("white", "white"), ("random:8", "random:8 (uniform noise)"),
             ("stimulus:dot", "stimulus: dot"), ("stimulus:checker", "stimulus: checker"), ("stimulus:vbar", "stimulus: vertical bar")]
PARAMS = [
    Param("baseline", "art-baseline", "value", "zero"),
    Param("astage", "art-stage", "value", "conv", "choice", ("conv", "act")),
    Param("drill", "art-drill", "value", ""),
    Param("dscale", "art-dscale", "value", "shared", "choice", ("shared", "permap")),
    Param("cmpsize", "art-cmpsize", "value", ""),
    Param("cmpmodel", "art-cmpmodel", "value", ""),
]


def layout(models) -> html.Div:
    return html.Div([
        html.Div([
            html.Div([html.Label("Baseline input", htmlFor="art-baseline"),
                      dcc.Dropdown(id="art-baseline", value="zero", clearable=False, style={"width": "250px"},
                                   options=[{"label": lab, "value": v} for v, lab in BASELINES])],
                     className="field", title="What the mean maps are averaged over: a constant or random input makes "
                                              "padding and stride artifacts stand out (Alsallakh et al.)"),
            html.Div([html.Label("Stage", htmlFor="art-stage"),
                      dcc.RadioItems(id="art-stage", value="conv", inline=True,
                                     options=[{"label": " conv output", "value": "conv"},
                                              {"label": " after activation", "value": "act"}])], className="field"),
            html.Div([html.Label("Drill-down layer", htmlFor="art-drill"),
                      dcc.Dropdown(id="art-drill", value="", clearable=False, style={"width": "230px"},
                                   options=[{"label": "highest artifact score", "value": ""}])],
                     className="field", title="The layer whose channels are shown one by one (click a mean map too)"),
            html.Div([html.Label("Drill-down scale", htmlFor="art-dscale"),
                      dcc.RadioItems(id="art-dscale", value="shared", inline=True,
                                     options=[{"label": " shared", "value": "shared"},
                                              {"label": " per map", "value": "permap"}])], className="field"),
            html.Div([html.Label("Compare with size", htmlFor="art-cmpsize"),
                      dcc.Input(id="art-cmpsize", type="text", value="", debounce=True, placeholder="e.g. 29x29",
                                style={"width": "90px"})],
                     className="field", title="A second input size (HxW): padding and mean maps side by side, with "
                                              "their difference on one colour scale"),
            html.Div([html.Label("or with model", htmlFor="art-cmpmodel"),
                      dcc.Dropdown(id="art-cmpmodel", value="", clearable=False, style={"width": "200px"},
                                   options=[{"label": "none", "value": ""}] + [{"label": m, "value": m} for m in models])],
                     className="field", title="Another prepped model at its own input size (layers paired by name, "
                                              "else by position; maps of other sizes resized)"),
        ], className="row"),
        html.Div(id="art-info", className="info"),
        html.Div(id="art-msg", className="warn"),
        *run_line("artifacts"),  # progress of its long computations (viscnn.app.views.Pending)
        dcc.Loading(html.Div(id="art-body"), type="dot"),
    ], id="artifacts-view")
