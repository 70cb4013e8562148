"""The Artifact debugging view: not built yet. Its tab says so plainly instead of showing an empty page."""

from __future__ import annotations

from dash import html

VIEW = "artifacts"


def layout(models):
    return html.Div([
        html.H3("Artifact debugging"),
        html.P("This view is not built yet. It will show mean feature maps under baseline inputs (random, zero, black, white, stimuli), drill-down to channels, mean input patch against mean kernel, and a padding audit."),
        html.P("Until then, the Circuit view has the activation maps, kernels and feature visualizations "
               "of every unit."),
    ], className="view-placeholder", id="artifacts-placeholder")


def register(app, actx, manager) -> None:
    """No callbacks yet."""
