"""An empty circuit's way out: the strictest value of the current threshold mode that keeps a path,
as a link (one widest-path pass over the scores, memoized per score vector and mode)."""

from __future__ import annotations

import math
from typing import Optional

from dash import html

from viscnn.app import state as st

RULES = {"mass": "mass", "topk": "keep", "score": "min_score"}


def display_value(mode: str, v: float) -> float:
    """``v`` rounded for the URL, never past it (a rounded-up min score or rounded-down mass is empty again)."""
    if mode == "topk":
        return float(int(v))
    if mode == "mass":
        return min(1.0, math.ceil(v * 1e4) / 1e4)
    if v <= 0:
        return v
    q = 10.0 ** (math.floor(math.log10(v)) - 5)  # 6 significant digits, rounded down
    k = math.floor(v / q)
    d = float(f"{k * q:.6g}")  # the short decimal (0.034472, not 0.034471999999999996)
    return d if d <= v else float(f"{(k - 1) * q:.6g}")


def strictest_value(actx, s: dict, r) -> Optional[float]:
    """The strictest value of ``s['mode']`` whose circuit keeps a path (None: no path at any value)."""
    from viscnn.app import queries
    from viscnn.importance.circuits import resolve_targets
    from viscnn.importance.strictest import strictest_by_paths

    pm = r.pm
    targets = actx._memoize(("tn", s["model"], s["target"]), lambda: queries.target_nodes(pm, s["target"]), 16)
    ends = resolve_targets(pm.graph, targets)  # None (the loss): the class layer, as for the circuit
    key = ("strictest", s["model"], r.query.key, r.run_key, s["mode"])
    v = actx._memoize(key, lambda: strictest_by_paths(pm.graph, r.edge_scores, RULES[s["mode"]], ends), 16)
    return None if v is None else display_value(s["mode"], v)


def empty_hint(actx, s: dict, r) -> html.Span:
    """The warning under an empty circuit, with the strictest value that keeps a path as a link."""
    v = strictest_value(actx, s, r)
    words = {"mass": "mass", "topk": "top-k", "score": "min score"}[s["mode"]]
    if v is None:
        return html.Span(" — empty: no path from the input to the target has nonzero scores at any threshold.",
                         className="warn", id="empty-hint")
    shown = st.fmt_value(v) if s["mode"] != "topk" else f"{int(v):,}"
    return html.Span([" — empty: no path from the input to the target survives this threshold; the strictest "
                      f"{words} that keeps one is ", html.A(shown, href=st.encode(dict(s, value=v)), id="empty-fix"),
                      "."], className="warn", id="empty-hint")
