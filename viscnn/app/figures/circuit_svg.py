"""The 2D circuit as a standalone SVG file, drawn on the server from the diagram's cytoscape elements.

The browser posts what it shows (``cy.json().elements``: positions after any dragging, the selection
classes); this module draws the same boxes, pictures, labels and lines with the geometry and colours
of :mod:`viscnn.app.figures.cytoscape`'s stylesheet. Pictures are embedded as data URIs, so the file
opens anywhere, offline. (Doing this in the browser would need dash-cytoscape's 1.4 MB extra bundle
on every page load, for one button.)
"""

from __future__ import annotations

import base64
import math
from typing import Callable, Dict, Iterable, List, Optional, Tuple
from xml.sax.saxutils import escape, quoteattr

from viscnn.app.figures import cytoscape as C
from viscnn.errors import ViscnnError

MAX_ELEMENTS = 20000  # far above the 2D cap (400 edges -> about 1,700 elements)
MARGIN = 12
FONT_FAMILY = "Helvetica, Arial, sans-serif"


def _elements(payload) -> Tuple[List[dict], List[dict]]:
    """(nodes, edges) from ``cy.json().elements`` ({"nodes": [...], "edges": [...]}) or a flat list
    of elements as the app sends them to cytoscape; anything else is a ViscnnError."""
    if isinstance(payload, dict) and isinstance(payload.get("elements"), (dict, list)):
        payload = payload["elements"]
    if isinstance(payload, dict):
        nodes, edges = payload.get("nodes") or [], payload.get("edges") or []
    elif isinstance(payload, list):
        nodes = [e for e in payload if isinstance(e, dict) and "source" not in (e.get("data") or {})]
        edges = [e for e in payload if isinstance(e, dict) and "source" in (e.get("data") or {})]
    else:
        raise ViscnnError("the 2D circuit export needs the diagram's elements")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        raise ViscnnError("the 2D circuit export needs lists of nodes and edges")
    if len(nodes) + len(edges) > MAX_ELEMENTS:
        raise ViscnnError(f"the 2D circuit has more than {MAX_ELEMENTS} elements")
    return nodes, edges


def _num(v, what: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ViscnnError(f"bad number in the 2D circuit: {what}") from None
    if not math.isfinite(x):
        raise ViscnnError(f"bad number in the 2D circuit: {what}")
    return x


def _classes(el: dict) -> set:
    c = el.get("classes") or ""
    return set(c.split() if isinstance(c, str) else [str(x) for x in c])


def _size(cls: set) -> Tuple[float, float]:
    if "cls" in cls:
        return C.CLASS_W, C.NODE
    if "kernel" in cls:
        return C.KERNEL, C.KERNEL
    if "title" in cls:
        return 0.0, 0.0
    return C.NODE, C.NODE


def _text(x: float, y: float, label: str, *, size: int = C.FONT, bold: bool = False, color: str = "#222",
          anchor_top: bool = False) -> str:
    """Centred (multi-line) text; ``anchor_top``: the first line's top at ``y``, else the block centred on y."""
    lines = str(label).split("\n")
    first = y + size * 0.8 if anchor_top else y - (len(lines) - 1) * C.LABEL_H / 2 + size * 0.35
    tsp = "".join(f'<tspan x="{x:.1f}" y="{first + i * C.LABEL_H:.1f}">{escape(t)}</tspan>'
                  for i, t in enumerate(lines))
    weight = ' font-weight="bold"' if bold else ""
    return (f'<text text-anchor="middle" font-family="{FONT_FAMILY}" font-size="{size}" fill="{color}"'
            f'{weight}>{tsp}</text>')


def _border_point(cx: float, cy: float, w: float, h: float, fx: float, fy: float) -> Tuple[float, float]:
    """Where the segment from (fx, fy) to the box centre (cx, cy) enters the w x h box."""
    dx, dy = fx - cx, fy - cy
    if (dx == 0 and dy == 0) or w == 0 or h == 0:
        return cx, cy
    t = min(w / 2 / abs(dx) if dx else math.inf, h / 2 / abs(dy) if dy else math.inf)
    t = min(t, 1.0)
    return cx + dx * t, cy + dy * t


def circuit_svg(payload, fetch_image: Optional[Callable[[str], Optional[bytes]]] = None,
                title: str = "viscnn 2D circuit") -> str:
    """The SVG document of the diagram in ``payload``. ``fetch_image(url)`` returns the PNG bytes of a
    picture URL (None: drawn as an empty box); it is asked once per distinct URL."""
    nodes, edges = _elements(payload)
    pos: Dict[str, Tuple[float, float, set]] = {}
    for el in nodes:
        d = el.get("data") or {}
        p = el.get("position") or {}
        nid = str(d.get("id", ""))
        pos[nid] = (_num(p.get("x"), f"x of {nid}"), _num(p.get("y"), f"y of {nid}"), _classes(el))
    images: Dict[str, Optional[str]] = {}

    def data_uri(url) -> Optional[str]:
        if not isinstance(url, str) or not url or fetch_image is None:
            return None
        if url not in images:
            png = fetch_image(url)
            images[url] = "data:image/png;base64," + base64.b64encode(png).decode() if png else None
        return images[url]

    # extent: boxes plus the labels under filter nodes and the column titles
    xs: List[float] = []
    ys: List[float] = []
    for el in nodes:
        d = el.get("data") or {}
        x, y, cls = pos[str(d.get("id", ""))]
        w, h = _size(cls)
        label = str(d.get("label", ""))
        lw = max((C.label_width(t) for t in label.split("\n")), default=0.0)
        below = C.LABEL_GAP + C.LABEL_H * (label.count("\n") + 1) if ("filter" in cls and "cls" not in cls and label) else 0
        half_w = max(w, lw if "cls" not in cls else 0) / 2
        half_h = h / 2 if "title" not in cls else C.LABEL_H * (label.count("\n") + 1) / 2
        xs += [x - half_w, x + half_w]
        ys += [y - half_h, y + h / 2 + below]
    if not xs:
        xs, ys = [0.0, 100.0], [0.0, 40.0]
    x0, y0 = min(xs) - MARGIN, min(ys) - MARGIN
    W, H = max(xs) - x0 + MARGIN, max(ys) - y0 + MARGIN

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
           f'width="{W:.0f}" height="{H:.0f}" viewBox="{x0:.1f} {y0:.1f} {W:.1f} {H:.1f}">',
           f"<title>{escape(title)}</title>",
           f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{W:.1f}" height="{H:.1f}" fill="white"/>',
           '<g id="edges">']
    out += list(_edges_svg(edges, pos))
    out.append('</g><g id="nodes">')
    for el in nodes:
        out.append(_node_svg(el, pos, data_uri))
    out.append("</g></svg>")
    return "\n".join(out)


def _edges_svg(edges: Iterable[dict], pos) -> Iterable[str]:
    for el in edges:
        d = el.get("data") or {}
        a, b = pos.get(str(d.get("source"))), pos.get(str(d.get("target")))
        if a is None or b is None:
            continue
        cls = _classes(el)
        sel = "sel" in cls or el.get("selected")
        color = C.SEL_COLOR if sel else str(d.get("color") or "#999")
        if not _safe_color(color):
            color = "#999"
        w = _num(d.get("w", 1), "edge width")
        tw, th = _size(b[2])
        ex, ey = _border_point(b[0], b[1], tw, th, a[0], a[1])
        opacity = 1.0 if sel else 0.85
        seg = (f'<line x1="{a[0]:.1f}" y1="{a[1]:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" stroke={quoteattr(color)} '
               f'stroke-width="{w:.2f}" stroke-opacity="{opacity}"/>')
        if "in" in cls:  # an arrowhead where the line meets the target box
            L = math.hypot(ex - a[0], ey - a[1]) or 1.0
            ux, uy = (ex - a[0]) / L, (ey - a[1]) / L
            size = 0.6 * (6 + 1.5 * w)
            bx, by = ex - ux * size, ey - uy * size
            pts = f"{ex:.1f},{ey:.1f} {bx - uy * size / 2:.1f},{by + ux * size / 2:.1f} {bx + uy * size / 2:.1f},{by - ux * size / 2:.1f}"
            seg += f'<polygon points="{pts}" fill={quoteattr(color)} fill-opacity="{opacity}"/>'
        yield seg


def _safe_color(c: str) -> bool:
    """CSS colours as the app writes them (#hex, rgb(...), rgba(...)): nothing else reaches the file."""
    import re

    return bool(re.fullmatch(r"#[0-9a-fA-F]{3,8}|rgba?\(\s*[0-9.,\s%]+\)", c))


def _node_svg(el: dict, pos, data_uri) -> str:
    d = el.get("data") or {}
    nid = str(d.get("id", ""))
    x, y, cls = pos[nid]
    label = str(d.get("label", ""))
    tip = f"<title>{escape(str(d.get('title', label)))}</title>"
    if "title" in cls:
        return f"<g>{tip}{_text(x, y, label, bold=True, color='#444')}</g>"
    w, h = _size(cls)
    sel = "sel" in cls or el.get("selected")
    fill = "#fff" if "cls" in cls else ("#d9d9d9" if "input" in cls else "#eeeeee")
    stroke, sw, dash = ("#666", 1, "") if ("cls" in cls or "kernel" in cls) else ("#999", 1, "")
    if "stretched" in cls:
        stroke, sw, dash = "#444", 2, ' stroke-dasharray="4,2"'
    if "ablated" in cls:
        stroke, sw, dash = "#111", 3, ' stroke-dasharray="2,2"'
    if sel:
        stroke, sw, dash = C.SEL_COLOR, 4, ""
    rx = 0 if "kernel" in cls else 4
    left, top = x - w / 2, y - h / 2
    parts = [f"<g>{tip}",
             f'<rect x="{left:.1f}" y="{top:.1f}" width="{w}" height="{h}" rx="{rx}" fill="{fill}"/>']
    img = None if "cls" in cls else data_uri(d.get("img"))
    if img:
        parts.append(f'<image x="{left:.1f}" y="{top:.1f}" width="{w}" height="{h}" preserveAspectRatio="none" '
                     f'style="image-rendering:pixelated" href="{img}" xlink:href="{img}"/>')
    parts.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{w}" height="{h}" rx="{rx}" fill="none" '
                 f'stroke="{stroke}" stroke-width="{sw}"{dash}/>')
    if "cls" in cls:
        parts.append(_text(x, y, label))
    elif "kernel" not in cls and label:
        parts.append(_text(x, y + h / 2 + C.LABEL_GAP, label, anchor_top=True))
    parts.append("</g>")
    return "".join(parts)
