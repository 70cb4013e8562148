"""The Attribution view's page: method picker, target, Grad-CAM layer, crop threshold, the circuit-only
toggle, and one map per method beside the input image and its Grad-CAM crop."""

from __future__ import annotations

from dash import dcc, html

from viscnn.app.viewparams import Param
from viscnn.app.views.attribution.compute import DEFAULT_METHODS, METHODS
from viscnn.app.views import run_line

PARAMS = [
    Param("methods", "attr-methods", "value", list(DEFAULT_METHODS), "multi", tuple(METHODS)),
    Param("atarget", "attr-target", "value", ""),
    Param("alayer", "attr-layer", "value", ""),
    Param("athr", "attr-thr", "value", 0.5, "number", lo=0.0, hi=1.0),
    Param("ascale", "attr-scale", "value", "permap", "choice", ("permap", "shared")),
    Param("arestrict", "attr-restrict", "value", False, "flag"),
]


def layout(models) -> html.Div:
    return html.Div([
        html.Div([
            html.Div([html.Label("Methods", htmlFor="attr-methods"),
                      dcc.Checklist(id="attr-methods", value=list(DEFAULT_METHODS), inline=True,
                                    options=[{"label": html.Span(f" {lab}", title=what), "value": k}
                                             for k, (lab, _, what) in METHODS.items()])], className="field"),
        ], className="row"),
        html.Div([
            html.Div([html.Label("Target", htmlFor="attr-target"),
                      dcc.Input(id="attr-target", type="text", debounce=True, value="",
                                placeholder="predicted class", style={"width": "240px"})],
                     className="field",
                     title="What to explain: empty = the predicted class; class:K or class:NAME (a raw logit), "
                           "loss, unit:LAYER:CH, neuron:LAYER:CH:Y:X, or a linear combination"),
            html.Div([html.Label("Grad-CAM layer", htmlFor="attr-layer"),
                      dcc.Dropdown(id="attr-layer", value="", clearable=False, style={"width": "260px"},
                                   options=[{"label": "auto (last spatial map)", "value": ""}])],
                     className="field", title="The layer whose maps Grad-CAM and its variants (Grad-CAM++, XGrad-CAM, Layer-CAM, "
                                                "guided Grad-CAM) weigh (default: the last layer with a spatial map)"),
            html.Div([html.Label("Crop threshold", htmlFor="attr-thr"),
                      dcc.Slider(id="attr-thr", min=0, max=1, step=0.05, value=0.5, marks={0: "0", 0.5: "0.5", 1: "1"},
                                 tooltip={"placement": "bottom"})],
                     className="field", style={"width": "200px"},
                     title="The Grad-CAM crop keeps the input where the normalised map exceeds this"),
            html.Div([html.Label("Colour scale", htmlFor="attr-scale"),
                      dcc.RadioItems(id="attr-scale", value="permap", inline=True,
                                     options=[{"label": " per map", "value": "permap"},
                                              {"label": " shared (raw values)", "value": "shared"}])],
                     className="field", title="Per map: each map on its own limits. Shared: every signed map on one "
                                              "symmetric limit and every magnitude map on one maximum"),
            html.Div(dcc.Checklist(id="attr-restrict", value=[], options=[{"label": " circuit only", "value": "on"}]),
                     title="Run the methods on the circuit-masked model: every kernel outside the Circuit "
                           "view's current circuit zeroed, next to the full model"),
        ], className="row"),
        html.Div(id="attr-info", className="info"),
        html.Div(id="attr-msg", className="warn"),
        *run_line("attribution"),  # progress of its long computations (viscnn.app.views.Pending)
        dcc.Loading(html.Div(id="attr-maps", className="attr-grid"), type="dot"),
    ], id="attribution-view")
