"""The Attributions view: not built yet (see ``viscnn.app.views.placeholder``)."""

from __future__ import annotations

from viscnn.app.views.placeholder import placeholder_layout

VIEW = "attribution"


def layout(models):
    return placeholder_layout(VIEW, "Attributions", "saliency, DeconvNet, guided backprop, CAM, Grad-CAM and its crop on the current input image, with ReLU rules applied on the traced graph")


def register(app, actx, manager) -> None:
    """No callbacks yet."""
