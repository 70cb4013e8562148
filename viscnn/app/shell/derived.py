"""Per-consumer copies of the page state, made in the browser, so a change reaches only the callbacks
it concerns.

Every server callback with ``Input("state", "data")`` is a request on every state change: a threshold
change used to fire the Artifacts, Attribution and Compare views' callbacks (hidden, answering
no_update), the gallery's, the node panel's (a model run and a DeconvNet when a node is selected, 0.5 s
at p95 under load) and the background-run dispatcher's, six requests of ten, which queue behind each
other in a threaded server. A derived store is filled by a clientside callback: with the state while
its view is shown (``view``), or with only the ``keys`` its consumer reads, plus the keys of ``when``
entries ``[key, item, extra keys]`` whose ``key``'s value (a list or a text) includes ``item`` (the
panel reads the threshold only while 'ablate outside the circuit' is on; scores rest on the input image
only for an image set naming ``image``); it is left unchanged (no request downstream) when that copy
would not change.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional

# what the scores of a state rest on (AppContext.scores / run_key): a model run is keyed by these
SCORE_KEYS = ["model", "target", "set", "metric", "n"]
_IMAGE_SET = ["set", "image", ["image"]]  # queries.IMAGE_SET in the set: the scores rest on the input image
CIRCUIT_KEYS = SCORE_KEYS + ["mode", "value"]

DERIVED: Dict[str, dict] = {
    "artifacts-state": {"view": "artifacts"},
    "attribution-state": {"view": "attribution"},
    "compare-state": {"view": "compare"},
    "gallery-state": {"keys": ["model", "image"]},
    # the 3D graph, 2D circuit and tables: not the input image (unless the scores rest on it), the ReLU
    # switch, the view or the other views' settings
    "graph-state": {"keys": CIRCUIT_KEYS + ["layout", "cap", "sel", "ablate"], "when": [_IMAGE_SET]},
    # the node/edge panel, input image and prediction: the selection, image, ablations, ReLU switch and
    # the scores (top incoming edges); the circuit (threshold) only for 'ablate outside the circuit'
    "panel-state": {"keys": SCORE_KEYS + ["image", "sel", "ablate", "relu"],
                    "when": [["ablate", "outside", ["mode", "value"]]]},
    # the background model run: only what its scores rest on
    "run-state": {"keys": SCORE_KEYS, "when": [_IMAGE_SET]},
    # the faithfulness line: the circuit, in the Circuit view
    "faith-state": {"view": "circuit", "keys": ["view"] + CIRCUIT_KEYS, "when": [_IMAGE_SET]},
}

# the views' own copies (the whole state while the view is shown): each draws its view (register_view_props)
VIEW_STORES = [sid for sid, spec in DERIVED.items() if "view" in spec and "keys" not in spec]

_JS = """function(s, prev) {
    const nu = window.dash_clientside.no_update;
    if (!s) { return nu; }
    const view = %s, keys = %s, when = %s;
    if (view && s.view !== view) { return nu; }
    let out = s;
    if (keys) {
        let all = keys.slice();
        for (const [k, item, extra] of when) {
            const v = s[k];
            if ((Array.isArray(v) || typeof v === 'string') && v.includes(item)) { all = all.concat(extra); }
        }
        out = {};
        for (const k of all) { out[k] = (k in s) ? s[k] : null; }
    }
    if (prev && JSON.stringify(prev) === JSON.stringify(out)) { return nu; }
    return out;
}"""


def stores() -> list:
    from dash import dcc

    return [dcc.Store(id=sid) for sid in DERIVED]


def _keys(s: dict, spec: dict) -> List[str]:
    keys = list(spec["keys"])
    for k, item, extra in spec.get("when", []):
        v = s.get(k)
        if isinstance(v, (list, str)) and item in v:
            keys += extra
    return keys


def derive(s: Optional[dict], sid: str) -> Optional[dict]:
    """What the clientside callback puts in store ``sid`` for state ``s`` (None: left unchanged); the
    server side uses it where it fills a page without the browser (first paint, tests)."""
    spec = DERIVED[sid]
    if not s or (spec.get("view") and s.get("view") != spec["view"]):
        return None
    return {k: s.get(k) for k in _keys(s, spec)} if spec.get("keys") else s


def js(sid: str) -> str:
    """The clientside function of store ``sid``: ``(state, previous copy) -> copy or no_update``."""
    spec = DERIVED[sid]
    return _JS % (json.dumps(spec.get("view")), json.dumps(spec.get("keys")), json.dumps(spec.get("when", [])))


def register(app) -> None:
    from dash import Input, Output, State

    for sid in DERIVED:
        app.clientside_callback(js(sid), Output(sid, "data"), Input("state", "data"), State(sid, "data"))


def ids() -> List[str]:
    return list(DERIVED)
