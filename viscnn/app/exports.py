"""Downloads of a circuit: two CSV tables (nodes and edges) and a safe file-name stem.

``circuit_csv`` returns two separate CSV texts rather than one table with a ``kind`` column: nodes and
edges have different columns, and two flat tables load straight into a spreadsheet or
``pandas.read_csv``. Save them as ``STEM-nodes.csv`` and ``STEM-edges.csv`` with
``STEM = export_basename(...)``.

Node columns: ``id`` (``LAYER:CHANNEL``), ``index`` (global node index), ``layer``, ``channel``,
``label`` (e.g. the class name of a class node; empty when unknown), ``score``, ``rank``.

Edge columns: ``index`` (global edge index), ``layer``, ``out_channel``, ``in_channel``, ``source``
(node id of the first source of the kernel's input channel), ``target`` (node id of its output
filter), ``sources`` (all source node ids joined with ``+``: several after a residual add), ``score``,
``sign`` (``+``, ``-`` or ``0`` from ``signs``; empty when not given), ``rank``.

``rank`` is 1 for the largest ``|score|`` within the circuit (ties: lower index first; NaN last).
Rows are written in rank order. Scores are written with ``repr(float(x))``, so they parse back to
exactly the stored float32/float64 values.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from viscnn.errors import ViscnnError

NODE_COLUMNS = ["id", "index", "layer", "channel", "label", "score", "rank"]
EDGE_COLUMNS = ["index", "layer", "out_channel", "in_channel", "source", "target", "sources", "score", "sign", "rank"]

Labels = Union[Mapping[int, str], Sequence[str], None]


def class_labels(graph, classes: Sequence[str]) -> Dict[int, str]:
    """{global node index: class name} for the class layer (empty when there is none), for ``labels``."""
    if not graph.layers or graph.layers[-1].kind != "linear":
        return {}
    layer = graph.layers[-1]
    return {layer.node_offset + i: str(c) for i, c in enumerate(list(classes)[: layer.channels])}


def _ranks(scores: np.ndarray) -> np.ndarray:
    """rank (1-based) of each entry by descending |score|; ties by position; NaN last."""
    a = np.abs(np.asarray(scores, np.float64))
    a = np.where(np.isnan(a), -np.inf, a)
    order = np.argsort(-a, kind="stable")
    r = np.empty(len(a), np.int64)
    r[order] = np.arange(1, len(a) + 1)
    return r


def _indices(sel, n: int, what: str) -> np.ndarray:
    idx = np.unique(np.asarray(list(sel) if not isinstance(sel, np.ndarray) else sel, np.int64).reshape(-1))
    if idx.size and (idx[0] < 0 or idx[-1] >= n):
        raise ViscnnError(f"{what} index out of range 0..{n - 1}")
    return idx


def _full(arr, n: int, what: str) -> np.ndarray:
    a = np.asarray(arr).reshape(-1)
    if a.size != n:
        raise ViscnnError(f"{what} has {a.size} entries; expected one per graph {what.split('_')[0]} ({n})")
    return a


def _num(v) -> str:
    return repr(float(v))


def _label(labels: Labels, node: int) -> str:
    if labels is None:
        return ""
    if isinstance(labels, Mapping):
        return str(labels.get(node, labels.get(str(node), "")))
    return str(labels[node]) if node < len(labels) else ""


def _sign(v) -> str:
    v = float(v)
    return "+" if v > 0 else "-" if v < 0 else "0"


def circuit_csv(graph, nodes, edges, node_scores, edge_scores, labels: Labels = None,
                signs=None) -> Tuple[str, str]:
    """(nodes CSV, edges CSV) of a circuit: the given global node and edge indices (duplicates dropped)
    with their scores, taken from full-length arrays (``len == graph.num_nodes`` / ``num_edges``).

    ``labels``: {node index: text} or a full-length sequence (see :func:`class_labels`).
    ``signs``: a full-length edge array whose sign fills the ``sign`` column (e.g. signed scores).
    """
    nn_, ne = graph.num_nodes, graph.num_edges
    ns = _full(node_scores, nn_, "node_scores")
    es = _full(edge_scores, ne, "edge_scores")
    sg = None if signs is None else _full(signs, ne, "edge_signs")
    if labels is not None and not isinstance(labels, Mapping) and len(labels) != nn_:
        raise ViscnnError(f"labels has {len(labels)} entries; expected a mapping or one per graph node ({nn_})")
    ni = _indices(nodes, nn_, "node")
    ei = _indices(edges, ne, "edge")

    nr = _ranks(ns[ni])

    def node_row(k: int) -> dict:
        n = int(ni[k])
        return {"id": graph.node_id(n), "index": n, "layer": graph.layers[int(graph.node_layer[n])].name,
                "channel": int(graph.node_channel[n]), "label": _label(labels, n), "score": _num(ns[n]),
                "rank": int(nr[k])}

    srcs: Dict[int, List[int]] = {}
    if ei.size:
        links = np.asarray(graph.links)
        sel = links[np.isin(links[:, 0], ei)]
        for e, s in sel:
            srcs.setdefault(int(e), []).append(int(s))
    tgt = graph.edge_target
    er = _ranks(es[ei])

    def edge_row(k: int) -> dict:
        e = int(ei[k])
        li, oc, ic = (int(v) for v in graph.edges[e])
        s = srcs.get(e, [])
        return {"index": e, "layer": graph.layers[li].name, "out_channel": oc, "in_channel": ic,
                "source": graph.node_id(s[0]) if s else "", "target": graph.node_id(int(tgt[e])),
                "sources": "+".join(graph.node_id(x) for x in s), "score": _num(es[e]),
                "sign": _sign(sg[e]) if sg is not None else "", "rank": int(er[k])}

    return (_csv(NODE_COLUMNS, map(node_row, np.argsort(nr, kind="stable"))),
            _csv(EDGE_COLUMNS, map(edge_row, np.argsort(er, kind="stable"))))


def _csv(columns: Sequence[str], rows) -> str:
    """CSV text of dict ``rows`` with a header (csv module quoting, \\n line ends)."""
    out = io.StringIO()
    w = csv.DictWriter(out, columns, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


# -- file names ----------------------------------------------------------------------------------
_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_part(text, limit: int = 48, empty: str = "unnamed") -> str:
    """``text`` reduced to ``[A-Za-z0-9_.-]``: other runs become ``_``, runs of dots or underscores
    collapse, leading/trailing ``._-`` go (so no ``..`` path part or hidden name), and a part longer
    than ``limit`` is cut and ends in ``_`` + 6 hex digits of the full text's hash (still unique)."""
    raw = "" if text is None else str(text)
    s = _BAD.sub("_", raw)
    s = re.sub(r"\.{2,}", ".", s)
    s = re.sub(r"_{2,}", "_", s)
    s = s.strip("._-")
    if not s:
        return empty
    if len(s) > limit:
        h = hashlib.sha1(raw.encode("utf-8")).hexdigest()[:6]
        s = s[: max(1, limit - 7)].rstrip("._-") + "_" + h
    return s


def export_basename(model, target, image_set, when: Optional[datetime] = None) -> str:
    """A safe file-name stem ``viscnn-MODEL-TARGET-SET-YYYYmmddTHHMMZ`` (e.g.
    ``viscnn-fmnist-class_Sneaker-all-20261202T1530Z``). An empty target is the loss: ``loss``.
    ``when`` is shown in UTC (a naive datetime is taken as UTC; None is now)."""
    if when is None:
        when = datetime.now(timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    ts = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")
    t = (target or "").strip()
    return "-".join(["viscnn", safe_part(model, 40, "model"), safe_part(t, 60, "loss") if t else "loss",
                     safe_part(image_set, 40, "all"), ts])
