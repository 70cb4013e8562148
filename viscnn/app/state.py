"""The app's view state as a URL query string, so that a link reopens the same view.

``decode`` never raises: unknown or malformed values fall back to the defaults and are reported
as warnings, so that a hand-edited link still opens.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple
from urllib.parse import parse_qs, urlencode

MODES = ("mass", "topk", "score")
CAP_DEFAULT, CAP_MAX = 40, 400  # edges drawn in the 2D circuit
MODE_DEFAULTS = {"mass": 0.5, "topk": 100, "score": 0.1}
KEYS = ("model", "view", "target", "set", "metric", "mode", "value", "layout", "cap", "image", "relu", "sel", "ablate")


def default_state(model: str, metrics: Sequence[str], layouts: Sequence[str], images: Sequence[str] = ()) -> dict:
    layout = next((l for l in ("mds", "pca", "grid") if l in layouts), layouts[0] if layouts else "grid")
    from viscnn.app.viewparams import all_params, defaults

    return {"model": model, "view": "circuit", "target": "loss", "set": "all", "metric": metrics[0] if metrics else "taylor",
            "mode": "mass", "value": MODE_DEFAULTS["mass"], "layout": layout, "cap": CAP_DEFAULT,
            "image": f"img:{images[0]}" if images else "", "relu": True, "sel": "", "ablate": [],
            **defaults(all_params())}


def encode(state: dict) -> str:
    """``?key=value&...`` in a fixed key order (ablations comma-joined), then the views' own keys."""
    from viscnn.app.viewparams import all_params

    q = []
    for k in KEYS:
        v = state.get(k)
        if k == "ablate":
            v = ",".join(v or [])
        elif k == "relu":
            v = "1" if v else "0"
        elif k == "value":
            v = fmt_value(v)
        q.append((k, "" if v is None else str(v)))
    for p in all_params():
        if p.key in state:
            q.append((p.key, p.encode(state[p.key])))
    return "?" + urlencode(q)


def fmt_value(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def decode(search: str, defaults: dict, metrics: Sequence[str], layouts: Sequence[str]) -> Tuple[dict, List[str]]:
    """The state in ``search`` over ``defaults``, and warnings for the values that were ignored."""
    state = dict(defaults)
    warnings: List[str] = []
    try:
        q = parse_qs((search or "").lstrip("?"), keep_blank_values=True, max_num_fields=100)
    except ValueError as e:
        return state, [f"ignored the link's settings: {e}"]
    get = {k: v[-1] for k, v in q.items()}
    for k in ("target", "set", "image", "sel"):
        if k in get:
            state[k] = get[k][:500]
    if "model" in get and get["model"]:
        state["model"] = get["model"][:200]
    if get.get("view"):
        from viscnn.app.views import VIEW_NAMES

        if get["view"] in VIEW_NAMES:
            state["view"] = get["view"]
        else:
            warnings.append(f"unknown view {get['view']!r}; showing {state['view']}")
    if "target" in state and not str(state["target"]).strip():
        state["target"] = "loss"
    if get.get("metric"):
        if get["metric"] in metrics:
            state["metric"] = get["metric"]
        else:
            warnings.append(f"unknown metric {get['metric']!r}; using {state['metric']}")
    if get.get("layout"):
        if get["layout"] in layouts:
            state["layout"] = get["layout"]
        else:
            warnings.append(f"unknown layout {get['layout']!r}; using {state['layout']}")
    if get.get("mode"):
        if get["mode"] in MODES:
            state["mode"] = get["mode"]
            state["value"] = MODE_DEFAULTS[state["mode"]]
        else:
            warnings.append(f"unknown threshold mode {get['mode']!r}; using {state['mode']}")
    if get.get("value"):
        try:
            state["value"] = float(get["value"])
        except ValueError:
            warnings.append(f"threshold value {get['value']!r} is not a number; using {state['value']}")
    if get.get("cap"):
        state["cap"] = clamp_cap(get["cap"])
    if "relu" in get:
        state["relu"] = get["relu"] not in ("0", "false", "")
    if "ablate" in get:
        state["ablate"] = [a for a in get["ablate"].split(",") if a][:200]
    from viscnn.app.viewparams import all_params

    for p in all_params():
        if p.key in get:
            state[p.key], warn = p.decode(get[p.key])
            if warn:
                warnings.append(warn)
    return state, warnings


def clamp_cap(v) -> int:
    """The 2D circuit's edge cap as a whole number in [1, CAP_MAX] (the default for anything else)."""
    try:
        return int(min(max(int(float(v)), 1), CAP_MAX))
    except (TypeError, ValueError, OverflowError):
        return CAP_DEFAULT


def parse_value(v):
    """A threshold field's text as a float when it is a number, else the text (reported when used)."""
    if isinstance(v, (int, float)) or v is None:
        return v
    try:
        return float(str(v).strip())
    except ValueError:
        return str(v)[:40]


def threshold_kwargs(mode: str, value) -> Dict[str, object]:
    """The ``extract_circuit`` keyword for a threshold mode; raises ViscnnError on a bad value."""
    from viscnn.errors import ViscnnError

    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ViscnnError(f"threshold value {value!r} is not a number") from None
    if v != v:
        raise ViscnnError("threshold value is NaN")
    if mode == "mass":
        if not 0 < v <= 1:
            raise ViscnnError(f"mass threshold must be in (0, 1], got {v:g}")
        return {"mass": v}
    if mode == "topk":
        if v < 1 or not v.is_integer():
            raise ViscnnError(f"top-k threshold must be a whole number of edges >= 1, got {v:g}")
        return {"keep": int(v)}
    if mode == "score":
        return {"min_score": v}
    raise ViscnnError(f"unknown threshold mode {mode!r}; use one of {', '.join(MODES)}")
