"""Per-consumer copies of the page state, made in the browser, so a change reaches only the callbacks
it concerns.

Every server callback with ``Input("state", "data")`` is a request on every state change: a threshold
change used to fire the Artifacts, Attribution and Compare views' callbacks (hidden, answering
no_update) and the gallery's, four requests of ten, which queue behind each other in a threaded server.
A derived store is filled by a clientside callback: with the state while its view is shown
(``view``), or with only the ``keys`` its consumer reads; it is left unchanged (no request downstream)
when that copy would not change.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional

DERIVED: Dict[str, dict] = {
    "artifacts-state": {"view": "artifacts"},
    "attribution-state": {"view": "attribution"},
    "compare-state": {"view": "compare"},
    "gallery-state": {"keys": ["model", "image"]},
}

_JS = """function(s, prev) {
    const nu = window.dash_clientside.no_update;
    if (!s) { return nu; }
    const view = %s, keys = %s;
    if (view && s.view !== view) { return nu; }
    let out = s;
    if (keys) { out = {}; for (const k of keys) { out[k] = (k in s) ? s[k] : null; } }
    if (prev && JSON.stringify(prev) === JSON.stringify(out)) { return nu; }
    return out;
}"""


def stores() -> list:
    from dash import dcc

    return [dcc.Store(id=sid) for sid in DERIVED]


def derive(s: Optional[dict], sid: str) -> Optional[dict]:
    """What the clientside callback puts in store ``sid`` for state ``s`` (None: left unchanged); the
    server side uses it where it fills a page without the browser (first paint, tests)."""
    spec = DERIVED[sid]
    if not s or (spec.get("view") and s.get("view") != spec["view"]):
        return None
    return {k: s.get(k) for k in spec["keys"]} if spec.get("keys") else s


def register(app) -> None:
    from dash import Input, Output, State

    for sid, spec in DERIVED.items():
        app.clientside_callback(_JS % (json.dumps(spec.get("view")), json.dumps(spec.get("keys"))),
                                Output(sid, "data"), Input("state", "data"), State(sid, "data"))


def ids() -> List[str]:
    return list(DERIVED)
