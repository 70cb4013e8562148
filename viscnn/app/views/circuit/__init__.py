"""The Circuit view: the 3D kernel graph and its circuit for a target, the 2D circuit, tables,
click-through panels, ablation and snapshots."""

from __future__ import annotations

from viscnn.app.views.circuit.layout import PARAMS, layout  # noqa: F401

VIEW = "circuit"


def register(app, actx) -> None:
    from viscnn.app import callbacks_graph, callbacks_panels, callbacks_snapshot
    from viscnn.app.views.circuit import faithfulness, method, set_ablation

    callbacks_graph.register(app, actx)
    callbacks_panels.register(app, actx)
    callbacks_snapshot.register(app, actx)
    faithfulness.register(app, actx)
    method.register(app, actx)
    set_ablation.register(app, actx)
