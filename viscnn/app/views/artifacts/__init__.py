"""The Artifacts view: mean feature maps under baseline inputs, the drill-down, mean input patch vs mean
kernel, the padding audit, and the same at a second input size (Alsallakh et al.'s debugger)."""

from __future__ import annotations

from viscnn.app.views.artifacts.layout import PARAMS, layout  # noqa: F401

VIEW = "artifacts"


def register(app, actx) -> None:
    from viscnn.app.views.artifacts import callbacks

    callbacks.register(app, actx)
