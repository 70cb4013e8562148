"""The Attributions view: not built yet. Its tab says so plainly instead of showing an empty page."""

from __future__ import annotations

from dash import html

VIEW = "attribution"


def layout(models):
    return html.Div([
        html.H3("Attributions"),
        html.P("This view is not built yet. It will show saliency, DeconvNet, guided backprop, CAM, Grad-CAM and its crop on the current input image, with ReLU rules applied on the traced graph."),
        html.P("Until then, the Circuit view has the activation maps, kernels and feature visualizations "
               "of every unit."),
    ], className="view-placeholder", id="attribution-placeholder")


def register(app, actx, manager) -> None:
    """No callbacks yet."""
