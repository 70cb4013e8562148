"""A tiny recursive-descent parser for linear combinations such as ``a - 0.5*b + 2*c``.

Shared by target strings and image-set expressions: the caller supplies how one *atom* is
read (``unit:features.8:3``, ``Sneaker``...), this module handles numbers, signs and ``*``.
User text is never evaluated; a bad token raises :class:`ViscnnError` with a caret under it.
"""

from __future__ import annotations

import re
from typing import Callable, Hashable, List, Tuple

from viscnn.errors import ViscnnError

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class AtomError(Exception):
    """Raised by an atom reader: ``message`` about the text at ``pos``."""

    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.message = message
        self.pos = pos


def syntax_error(what: str, text: str, pos: int, message: str) -> ViscnnError:
    """A ViscnnError whose message shows ``text`` with a caret under position ``pos``."""
    pos = max(0, min(pos, len(text)))
    return ViscnnError(f"bad {what} at position {pos}: {message}\n  {text}\n  {' ' * pos}^")


AtomReader = Callable[[str, int], Tuple[Hashable, int]]


def parse_linear(text: str, read_atom: AtomReader, what: str = "expression") -> List[Tuple[float, Hashable]]:
    """Parse ``[sign] [NUMBER '*'] ATOM ((+|-) [NUMBER '*'] ATOM)*`` into ``[(coef, atom)]``.

    Repeated atoms are merged (coefficients added), in order of first appearance.
    """
    if not isinstance(text, str) or not text.strip():
        raise ViscnnError(f"empty {what}")
    p = _Parser(text, read_atom, what)
    return p.parse()


class _Parser:
    def __init__(self, text: str, read_atom: AtomReader, what: str):
        self.text, self.read_atom, self.what, self.pos = text, read_atom, what, 0

    def error(self, message: str, pos=None) -> ViscnnError:
        return syntax_error(self.what, self.text, self.pos if pos is None else pos, message)

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> List[Tuple[float, Hashable]]:
        out: dict = {}
        sign = 1.0
        c = self.peek()
        if c in "+-" and c:
            sign = -1.0 if c == "-" else 1.0
            self.pos += 1
        while True:
            coef, atom = self.term()
            out[atom] = out.get(atom, 0.0) + sign * coef
            c = self.peek()
            if not c:
                break
            if c not in "+-":
                raise self.error(f"expected '+', '-' or the end, found {self.token()!r}")
            sign = -1.0 if c == "-" else 1.0
            self.pos += 1
            if not self.peek():
                raise self.error(f"expected a term after {c!r}")
        return [(v, a) for a, v in out.items()]

    def token(self) -> str:
        m = re.compile(r"\S+").match(self.text, self.pos)
        return m.group(0)[:30] if m else ""

    def term(self) -> Tuple[float, Hashable]:
        coef = 1.0
        self.skip()
        m = _NUMBER.match(self.text, self.pos)
        if m:
            coef = float(m.group(0))
            self.pos = m.end()
            if self.peek() != "*":
                raise self.error(f"expected '*' after the coefficient {m.group(0)}")
            self.pos += 1
            self.skip()
        if self.pos >= len(self.text) or self.text[self.pos] in "+-*":
            raise self.error("expected a term" + (f", found {self.token()!r}" if self.token() else ""))
        try:
            atom, end = self.read_atom(self.text, self.pos)
        except AtomError as e:
            raise self.error(e.message, e.pos) from None
        self.pos = end
        if self.peek() == "*":  # ATOM * NUMBER
            self.pos += 1
            self.skip()
            m = _NUMBER.match(self.text, self.pos)
            if not m:
                raise self.error("expected a number after '*'")
            coef *= float(m.group(0))
            self.pos = m.end()
        return coef, atom


def read_name(text: str, pos: int, names, kind: str) -> Tuple[str, int]:
    """Read one of ``names`` at ``pos`` (longest match, case-insensitive; quotes allowed).

    Names may contain spaces, dashes or slashes (``"T-shirt/top"``, ``Ankle boot``), so the
    longest known name that ends at a token boundary wins.
    """
    if pos < len(text) and text[pos] in "\"'":
        q = text[pos]
        end = text.find(q, pos + 1)
        if end < 0:
            raise AtomError("unterminated quote", pos)
        word = text[pos + 1:end]
        for n in names:
            if n.lower() == word.lower():
                return n, end + 1
        raise AtomError(f"unknown {kind} {word!r}; known: {_list(names)}", pos)
    best = None
    low = text.lower()
    for n in names:
        if low.startswith(n.lower(), pos):
            end = pos + len(n)
            if end == len(text) or text[end].isspace() or text[end] in "+-*)":
                if best is None or len(n) > len(best):
                    best = n
    if best is not None:
        return best, pos + len(best)
    m = re.compile(r"[^\s+*]+").match(text, pos)
    word = m.group(0) if m else ""
    raise AtomError(f"unknown {kind} {word!r}; known: {_list(names)}", pos)


def _list(names, n: int = 12) -> str:
    names = list(names)
    s = ", ".join(names[:n])
    return s + (f", ... ({len(names)} in all)" if len(names) > n else "") if names else "none"
