"""The Model comparison view: not built yet (see ``viscnn.app.views.placeholder``)."""

from __future__ import annotations

from viscnn.app.views.placeholder import placeholder_layout

VIEW = "compare"


def layout(models):
    return placeholder_layout(VIEW, "Model comparison", "the same input image and target side by side across the prepped models")


def register(app, actx, manager) -> None:
    """No callbacks yet."""
