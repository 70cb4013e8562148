"""The app's views, one small package each over the shared shell (``viscnn.app.shell``).

A view package has ``layout(models) -> component`` and ``register(app, actx)``; the shell
shows one at a time (the ``view`` key of the URL)."""

from __future__ import annotations

from typing import List, Tuple

# (URL value, tab label, one-line description shown as the tab's tooltip)
VIEWS: List[Tuple[str, str, str]] = [
    ("circuit", "Circuit", "the kernel graph, its circuit for a target, and click-through to maps and kernels"),
    ("artifacts", "Artifacts", "mean feature maps under baseline inputs, padding and kernel asymmetries"),
    ("attribution", "Attribution", "saliency, DeconvNet, guided backprop, CAM and Grad-CAM on the input image"),
    ("compare", "Compare", "the same image and target across prepped models"),
]
VIEW_NAMES = tuple(v for v, _, _ in VIEWS)
DEFAULT_VIEW = "circuit"


def view_packages():
    """The view modules in tab order."""
    from viscnn.app.views import artifacts, attribution, circuit, compare

    return {"circuit": circuit, "artifacts": artifacts, "attribution": attribution, "compare": compare}


def register_view_props(app, actx, view: str, outputs, props, msg: str) -> None:
    """One callback for a view drawn from the URL state: ``props(actx, state)`` -> {id: {prop: value}}
    fills ``outputs`` while ``view`` is shown; a ViscnnError goes to the ``msg`` component's children and
    leaves the last good drawing on the page."""
    from dash import Input, Output, no_update

    from viscnn.errors import ViscnnError

    @app.callback([Output(c, p) for c, p in outputs], Input("state", "data"))
    def update(s):
        if not s or s.get("view") != view:
            return [no_update] * len(outputs)
        try:
            got = props(actx, s)
        except ViscnnError as e:
            return [str(e) if (c, p) == (msg, "children") else no_update for c, p in outputs]
        return [got[c][p] for c, p in outputs]
