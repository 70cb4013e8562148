"""The Compare view: one attribution method on the current image across every prepped model in the
folder that takes it, and the current model at a second input size (the "journey"'s comparison)."""

from __future__ import annotations

from viscnn.app.views.compare.layout import PARAMS, layout  # noqa: F401

VIEW = "compare"


def register(app, actx) -> None:
    from viscnn.app.views.compare import callbacks

    callbacks.register(app, actx)
