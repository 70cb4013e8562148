"""The Model comparison view: not built yet. Its tab says so plainly instead of showing an empty page."""

from __future__ import annotations

from dash import html

VIEW = "compare"


def layout(models):
    return html.Div([
        html.H3("Model comparison"),
        html.P("This view is not built yet. It will show the same input image and target side by side across the prepped models."),
        html.P("Until then, the Circuit view has the activation maps, kernels and feature visualizations "
               "of every unit."),
    ], className="view-placeholder", id="compare-placeholder")


def register(app, actx, manager) -> None:
    """No callbacks yet."""
