"""URL keys that belong to one view (the Attribution view's methods, the Artifacts view's baseline...).

A view package lists its keys as :class:`Param` in ``PARAMS``; the shell's URL state (``state.py``)
and the URL <-> controls loop (``callbacks_state.py``) treat them like their own keys, so every
view's settings are in the link without the shell knowing what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

KINDS = ("text", "choice", "multi", "flag", "number")
MAX_TEXT = 500


@dataclass(frozen=True)
class Param:
    """One URL key bound to one control. ``kind``: ``text`` (free text), ``choice`` (one of
    ``choices``, when given), ``multi`` (a comma-joined list, shown in a Checklist), ``flag``
    (on/off, a one-option Checklist) or ``number`` (a float in [lo, hi])."""

    key: str
    component: str
    prop: str
    default: Any
    kind: str = "text"
    choices: Tuple[str, ...] = ()
    lo: float = float("-inf")
    hi: float = float("inf")

    def to_control(self, v):
        if self.kind == "flag":
            return ["on"] if v else []
        return list(v) if self.kind == "multi" else v

    def from_control(self, v):
        if self.kind == "flag":
            return bool(v)
        if self.kind == "multi":
            return [str(x) for x in (v or [])]
        if self.kind == "number":
            try:
                return min(max(float(v), self.lo), self.hi)
            except (TypeError, ValueError):
                return self.default
        return self.default if v is None else (str(v)[:MAX_TEXT] if self.kind == "text" else v)

    def encode(self, v) -> str:
        if self.kind == "flag":
            return "1" if v else "0"
        if self.kind == "multi":
            return ",".join(v or [])
        if self.kind == "number":
            f = float(v)
            return str(int(f)) if f.is_integer() else repr(f)
        return "" if v is None else str(v)

    def decode(self, text: str) -> Tuple[Any, Optional[str]]:
        """(value, warning or None) for the URL's text of this key."""
        if self.kind == "flag":
            return text not in ("0", "false", ""), None
        if self.kind == "multi":
            items = [x for x in text.split(",") if x][:50]
            bad = [x for x in items if self.choices and x not in self.choices]
            if bad:
                return [x for x in items if x not in bad], f"unknown {self.key} {', '.join(map(repr, bad))} ignored"
            return items, None
        if self.kind == "number":
            try:
                f = float(text)
            except ValueError:
                return self.default, f"{self.key} {text!r} is not a number; using {self.default:g}"
            if not self.lo <= f <= self.hi:
                return self.default, f"{self.key} {f:g} is outside [{self.lo:g}, {self.hi:g}]; using {self.default:g}"
            return f, None
        if self.kind == "choice" and self.choices and text not in self.choices:
            return self.default, f"unknown {self.key} {text!r}; using {self.default}"
        return text[:MAX_TEXT], None


def all_params() -> List[Param]:
    """Every view's params, in tab order (keys are unique across views: checked here)."""
    from viscnn.app.views import view_packages

    out: List[Param] = []
    for pkg in view_packages().values():
        out.extend(getattr(pkg, "PARAMS", ()))
    keys = [p.key for p in out]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise RuntimeError(f"URL keys used by two views: {sorted(dup)}")
    return out


def defaults(params: Sequence[Param]) -> dict:
    return {p.key: p.default for p in params}
