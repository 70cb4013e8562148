"""The Artifact debugging view: not built yet (see ``viscnn.app.views.placeholder``)."""

from __future__ import annotations

from viscnn.app.views.placeholder import placeholder_layout

VIEW = "artifacts"


def layout(models):
    return placeholder_layout(VIEW, "Artifact debugging", "mean feature maps under baseline inputs (random, zero, black, white, stimuli), drill-down to channels, mean input patch against mean kernel, and a padding audit")


def register(app, actx, manager) -> None:
    """No callbacks yet."""
