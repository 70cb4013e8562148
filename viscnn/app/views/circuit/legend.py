"""The 3D graph's legend: what edge colour, width and opacity and node size and colour mean, with the
meaning of red and blue spelled out for the current metric and image set."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from dash import html

from viscnn.app.figures import colors, graph3d


def sign_meaning(terms: Sequence[Tuple[float, str]], metric: str, sign_metric: Optional[str]) -> Tuple[str, str]:
    """(what red means, what blue means) for an image-set expression ``[(coef, set)]`` and the metric
    whose sign colours the edges (None: the scores' own sign)."""
    pos = [n for c, n in terms if c > 0]
    neg = [n for c, n in terms if c < 0]
    if pos and neg:
        a, b = " + ".join(pos), " + ".join(neg)
        return (f"more important for {a} than for {b}", f"more important for {b} than for {a}")
    m = sign_metric or metric
    if m.endswith("_signed") or sign_metric:
        return (f"positive {m} (activation x gradient > 0)", f"negative {m} (activation x gradient < 0)")
    return (f"positive {m}", f"negative {m}")


def _swatch(color: str, width: float, label: str, kind: str) -> html.Span:
    return html.Span([html.Span(className="sw-line", style={"backgroundColor": color, "height": f"{width}px"},
                                **{"data-color": color, "data-kind": kind}), label], className="sw")


def legend_children(terms: Sequence[Tuple[float, str]], metric: str, sign_metric: Optional[str],
                    n_images: Optional[str] = None) -> List:
    """The legend's content. ``sign_metric``: the signed metric the edge colours come from, if not ``metric``."""
    red, blue = sign_meaning(terms, metric, sign_metric)
    top = graph3d.N_BUCKETS - 1
    widths = [_swatch(graph3d.edge_color(False, b), graph3d.WIDTHS[b],
                      f"≥{round(100 * (b / graph3d.N_BUCKETS) ** 2)}%", f"bucket{b}") for b in range(graph3d.N_BUCKETS)]
    kids = [
        html.Span("Edges:", className="lg-h"),
        _swatch(graph3d.edge_color(False, top), 4, f"red = {red}", "pos"),
        _swatch(graph3d.edge_color(True, top), 4, f"blue = {blue}", "neg"),
        html.Span("width & opacity = |score| as a share of the largest:", className="lg-h"), *widths,
        html.Span("Nodes:", className="lg-h"),
        html.Span([html.Span(className="dot", style={"backgroundColor": colors.POS, "width": "12px", "height": "12px"}),
                   html.Span(className="dot", style={"backgroundColor": colors.POS, "width": "7px", "height": "7px"}),
                   "size = |score|, colour = sign as for edges"], className="sw"),
        html.Span([html.Span(className="dot", style={"backgroundColor": colors.INACTIVE, "width": "5px", "height": "5px"}),
                   "not in the circuit"], className="sw"),
        html.Span([html.B("×", style={"color": "#111"}), " ablated (zeroed) node or kernel"], className="sw"),
    ]
    if n_images:
        kids.append(html.Span(n_images, className="lg-basis"))
    return kids
