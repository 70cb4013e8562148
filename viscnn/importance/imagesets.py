"""Linear combinations of per-image-set scores: ``class:Sneaker - all``, ``Sneaker - 0.5*all``.

Scores are kept per image set (each class, and ``all``); an expression combines the set means
(``lookup(name)``) linearly, clamping negatives to zero only when asked.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np

from viscnn.errors import ViscnnError
from viscnn.importance.linexpr import parse_linear, read_name


def parse_set_expression(text: str, names: Sequence[str]) -> List[Tuple[float, str]]:
    """``[(coef, set name)]``; names may be written bare or as ``class:NAME``, quoted if needed."""
    names = list(names)
    if not names:
        raise ViscnnError("no image sets are available")

    def read_atom(s: str, pos: int):
        if s.startswith("class:", pos) and not any(s.lower().startswith(n.lower(), pos) for n in names):
            pos += len("class:")
        return read_name(s, pos, names, "image set")
    return [(c, n) for c, n in parse_linear(text, read_atom, "image-set expression")]


def combine(expr, lookup: Callable[[str], np.ndarray], clamp: bool = False, names: Sequence[str] = None) -> np.ndarray:
    """``Σ coef * lookup(name)`` for an expression string (``names`` required) or parsed terms."""
    if isinstance(expr, str) and names is None:
        raise ViscnnError("combine() needs the set names to parse an expression string")
    terms = parse_set_expression(expr, names) if isinstance(expr, str) else list(expr)
    out = None
    for c, n in terms:
        v = np.asarray(lookup(n), np.float64) * c
        out = v if out is None else out + v
    if clamp:
        np.maximum(out, 0, out=out)
    return out
