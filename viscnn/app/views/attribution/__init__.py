"""The Attribution view: saliency, DeconvNet, guided backprop, CAM and Grad-CAM (with its crop) on the
current input image, on the full model or on the circuit-masked one."""

from __future__ import annotations

from viscnn.app.views.attribution.layout import PARAMS, layout  # noqa: F401

VIEW = "attribution"


def register(app, actx) -> None:
    from viscnn.app.views.attribution import callbacks

    callbacks.register(app, actx)
