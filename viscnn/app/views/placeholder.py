"""The page of a view that is not built yet: it says so plainly instead of showing an empty tab."""

from __future__ import annotations

from dash import html


def placeholder_layout(view: str, title: str, will_show: str) -> html.Div:
    return html.Div([
        html.H3(title),
        html.P(f"This view is not built yet. It will show {will_show}."),
        html.P("Until then, the Circuit view has the activation maps, kernels and feature visualizations "
               "of every unit."),
    ], className="view-placeholder", id=f"{view}-placeholder")
