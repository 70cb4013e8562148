"""The page: controls on top, the 3D graph and its messages on the left, the input image, gallery and
click-through panel on the right, and the 2D circuit view with ablation below."""

from __future__ import annotations

from typing import List

from dash import dcc, html

from viscnn.app.figures.cytoscape import STYLESHEET
from viscnn.app.state import MODES


def _control(label: str, comp, width: str = "auto") -> html.Div:
    return html.Div([html.Label(label), comp], className="control", style={"width": width})


def build_layout(models: List[str]) -> html.Div:
    import dash_cytoscape as cyto

    controls = html.Div([
        _control("Model", dcc.Dropdown(id="model", options=models, clearable=False), "150px")
        if len(models) > 1 else html.Div(dcc.Dropdown(id="model", options=models), style={"display": "none"}),
        _control("Target", dcc.Input(id="target", type="text", debounce=True, placeholder="loss, class:Sneaker, unit:LAYER:CH"), "210px"),
        _control("Image set", dcc.Input(id="imageset", type="text", debounce=True, placeholder="all, Sneaker - all, image"), "190px"),
        _control("Metric", dcc.Dropdown(id="metric", clearable=False), "150px"),
        _control("Threshold", dcc.RadioItems(id="mode", options=[{"label": m, "value": m} for m in MODES], inline=True)),
        _control("Value", dcc.Input(id="value", type="number", debounce=True, step="any"), "90px"),
        _control("Layout", dcc.Dropdown(id="layout", clearable=False), "110px"),
        html.Div([html.Button("Export snapshot", id="export"),
                  dcc.Upload(html.Button("Open snapshot"), id="snap-upload", max_size=16 * 1024 * 1024)],
                 className="control buttons"),
    ], className="controls")

    left = html.Div([
        html.Div(id="edge-info", className="info"),
        dcc.Loading(dcc.Graph(id="graph3d", style={"height": "62vh"}, config={"displaylogo": False}),
                    type="circle", delay_show=400),
        html.Div([html.Span(id="run-status"), html.Span(id="run-progress")], className="info"),
        html.H4("Circuit (2D)"),
        cyto.Cytoscape(id="cyto", elements=[], layout={"name": "preset"}, stylesheet=STYLESHEET,
                       style={"width": "100%", "height": "420px", "border": "1px solid #ddd"},
                       minZoom=0.2, maxZoom=3),
    ], className="left")

    right = html.Div([
        html.H4("Input image"),
        dcc.Graph(id="input-fig", config={"displayModeBar": False}, style={"height": "240px"}),
        dcc.Upload(html.Div(["Drop or ", html.A("choose a PNG/JPEG")]), id="upload", className="upload",
                   max_size=32 * 1024 * 1024),  # no accept=: a wrong file type gets a message, not silence
        html.Div(id="upload-msg", className="error"),
        html.Div(id="gallery", className="gallery"),
        html.Div(id="prediction", className="info"),
        html.Div([dcc.Checklist(id="relu", options=[{"label": " ReLU on maps", "value": "relu"}], inline=True),
                  html.Button("Ablate selection", id="ablate-add"), html.Button("Clear ablations", id="ablate-clear")],
                 className="row"),
        html.Div(id="ablate-info", className="info"),
        html.Div(id="panel", className="panel"),
    ], className="right")

    return html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Location(id="nav", refresh=True),
        dcc.Store(id="state"), dcc.Store(id="image"), dcc.Store(id="sel"), dcc.Store(id="ablate"),
        dcc.Store(id="run-request"), dcc.Store(id="scores-ready"), dcc.Store(id="cyto-data"),
        dcc.Download(id="download-json"), dcc.Download(id="download-html"),
        html.Div([html.H2("viscnn"), html.Span("a CNN microscope", className="sub")], className="header"),
        controls,
        html.Div(id="msg", className="error"),
        html.Div(id="url-msg", className="error"),
        html.Div(id="snap-msg", className="error"),
        html.Div([left, right], className="main"),
    ], className="page")
