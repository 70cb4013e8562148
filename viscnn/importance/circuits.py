"""Circuits: the kernels and filters that matter for a target, from node and edge scores.

Thresholds (exactly one): ``mass`` keeps, per layer, the fewest highest-scoring edges
holding that fraction of the layer's total |score| (VISCNN's hierarchical rule, on edges only);
``keep`` keeps the top-k edges globally (int) or a fraction of all edges (float in (0, 1));
``min_score`` keeps edges with |score| >= it. Then effective connectivity: only edges and
nodes on some path from an input channel to a target node survive. Vectorised numpy, layer by
layer over ``graph.links`` (edge -> source), fast enough to rerun on every slider move.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph

FORMAT = "viscnn.circuit"
VERSION = 1


@dataclass
class Circuit:
    nodes: np.ndarray  # sorted global node indices
    edges: np.ndarray  # sorted global edge indices
    node_scores: np.ndarray  # aligned with nodes
    edge_scores: np.ndarray  # aligned with edges
    settings: dict = field(default_factory=dict)

    def to_json(self, graph: Graph) -> dict:
        """Stable JSON form: node ids ``LAYER:CH``, edges ``[layer, out, in]``."""
        e = graph.edges[self.edges] if len(self.edges) else np.zeros((0, 3), np.int32)
        return {
            "format": FORMAT, "version": VERSION, "model": graph.model_name,
            "nodes": [graph.node_id(int(i)) for i in self.nodes],
            "node_scores": [_num(v) for v in self.node_scores],
            "edges": [[graph.layers[int(l)].name, int(j), int(i)] for l, j, i in e],
            "edge_scores": [_num(v) for v in self.edge_scores],
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, d: dict, graph: Graph) -> "Circuit":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ViscnnError("not a viscnn circuit (format is not 'viscnn.circuit')")
        if d.get("version") != VERSION:
            raise ViscnnError(f"circuit format version {d.get('version')} is not supported (this viscnn reads {VERSION})")
        try:
            nodes = np.array([graph.node_index(n) for n in d["nodes"]], np.int64)
            edges = np.array([graph.edge_index(l, int(j), int(i)) for l, j, i in d["edges"]], np.int64)
            ns = np.array([np.nan if v is None else v for v in d["node_scores"]], np.float64)
            es = np.array([np.nan if v is None else v for v in d["edge_scores"]], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ViscnnError(f"malformed circuit JSON: {e}") from None
        if len(ns) != len(nodes) or len(es) != len(edges):
            raise ViscnnError("malformed circuit JSON: scores are not aligned with nodes/edges")
        on, oe = np.argsort(nodes, kind="stable"), np.argsort(edges, kind="stable")
        return cls(nodes[on], edges[oe], ns[on], es[oe], dict(d.get("settings", {})))

    @property
    def size(self) -> Tuple[int, int]:
        return len(self.nodes), len(self.edges)


def _num(v) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


_CACHE: "weakref.WeakKeyDictionary[Graph, list]" = weakref.WeakKeyDictionary()


def _layer_links(graph: Graph) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """Per non-input layer: (layer index, link edges, link sources); cached per graph."""
    if graph in _CACHE:
        return _CACHE[graph]
    links = graph.links
    lay = graph.edges[links[:, 0], 0] if len(links) else np.zeros(0, np.int32)
    order = np.argsort(lay, kind="stable")
    links, lay = links[order], lay[order]
    out = []
    for li in range(1, len(graph.layers)):
        a, b = np.searchsorted(lay, li, "left"), np.searchsorted(lay, li, "right")
        out.append((li, links[a:b, 0].astype(np.int64), links[a:b, 1].astype(np.int64)))
    _CACHE[graph] = out
    return out


def _mass_keep(scores: np.ndarray, offsets: Sequence[Tuple[int, int]], mass: float) -> np.ndarray:
    keep = np.zeros(len(scores), bool)
    for a, b in offsets:
        s = scores[a:b]
        tot = s.sum()
        if b <= a or tot <= 0:
            continue
        order = np.argsort(-s, kind="stable")
        cum = np.cumsum(s[order])
        n = int(np.searchsorted(cum, mass * tot - 1e-12 * tot, "left")) + 1
        keep[a + order[:min(n, b - a)]] = True
    keep &= scores > 0
    return keep


def extract_circuit(graph: Graph, node_scores: np.ndarray, edge_scores: np.ndarray, *, mass: Optional[float] = None,
                    keep: Union[int, float, None] = None, min_score: Optional[float] = None,
                    target_nodes: Optional[Sequence[int]] = None) -> Circuit:
    """The circuit of edges passing one threshold, cleaned to paths from the input to ``target_nodes``
    (default: the last layer's nodes). Thresholds use |score| (so signed metrics work)."""
    node_scores = np.asarray(node_scores, np.float64).reshape(-1)
    edge_scores = np.asarray(edge_scores, np.float64).reshape(-1)
    if node_scores.shape[0] != graph.num_nodes or edge_scores.shape[0] != graph.num_edges:
        raise ViscnnError(f"scores do not fit the graph: {node_scores.shape[0]} nodes / {edge_scores.shape[0]} edges given, "
                          f"graph has {graph.num_nodes} / {graph.num_edges}")
    check_one_threshold(mass, keep, min_score)
    ae = np.nan_to_num(np.abs(edge_scores))
    E = graph.num_edges
    node_ok = np.ones(graph.num_nodes, bool)
    if mass is not None:
        if not 0 < mass <= 1:
            raise ViscnnError(f"mass must be in (0, 1], got {mass}")
        layers = graph.layers
        edge_ok = _mass_keep(ae, [(l.edge_offset, l.edge_offset + l.num_edges) for l in layers if l.kind != "input"], mass)
        # nodes are not thresholded on their own (as for keep/min_score): a node is in the circuit when
        # kept edges connect it. A separate node mass cut emptied circuits whenever node and kernel
        # scores rank a layer's channels differently (replacement node Taylor vs kernel Taylor).
    elif keep is not None:
        k = keep_count(keep, E)
        edge_ok = np.zeros(E, bool)
        if k > 0:
            top = np.argpartition(-ae, k - 1)[:k] if k < E else np.arange(E)
            edge_ok[top] = True
        edge_ok &= ae > 0
    else:
        edge_ok = (ae >= float(min_score)) & (ae > 0)
    settings = threshold_settings(mass, keep, min_score)
    target_nodes = resolve_targets(graph, target_nodes)
    nodes, edges = connectivity(graph, edge_ok, node_ok, target_nodes)
    settings["target_nodes"] = [graph.node_id(int(i)) for i in target_nodes]
    return Circuit(nodes, edges, node_scores[nodes], edge_scores[edges], settings)


def check_one_threshold(mass, keep, min_score) -> None:
    given = [k for k, v in (("mass", mass), ("keep", keep), ("min_score", min_score)) if v is not None]
    if len(given) != 1:
        raise ViscnnError("give exactly one threshold: mass, keep or min_score" + (f" (got {', '.join(given)})" if given else ""))


def keep_count(keep, E: int) -> int:
    """How many edges ``keep`` means: an int (top k) or a fraction in (0, 1) of the ``E`` edges."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise ViscnnError(f"keep must be an int (top k edges) or a fraction in (0, 1), got {keep!r}")
    if isinstance(keep, (float, np.floating)) and not float(keep).is_integer():
        if not 0 < keep < 1:
            raise ViscnnError(f"a fractional keep must be in (0, 1), got {keep}")
        return min(int(math.ceil(keep * E)), E)
    k = int(keep)
    if k < 0:
        raise ViscnnError(f"keep must be >= 0, got {k}")
    return min(k, E)


def threshold_settings(mass, keep, min_score) -> dict:
    """The circuit JSON's record of the one threshold given."""
    if mass is not None:
        return {"rule": "mass", "mass": float(mass)}
    if keep is not None:
        return {"rule": "keep", "keep": float(keep) if isinstance(keep, (float, np.floating)) else int(keep)}
    return {"rule": "min_score", "min_score": float(min_score)}


def resolve_targets(graph: Graph, target_nodes: Optional[Sequence[int]]) -> np.ndarray:
    """The circuit's sink nodes (default: the last layer's), checked."""
    if target_nodes is None:
        last = graph.layers[-1]
        target_nodes = np.arange(last.node_offset, last.node_offset + last.channels)
    target_nodes = np.asarray(target_nodes, np.int64)
    if len(target_nodes) and (target_nodes.min() < 0 or target_nodes.max() >= graph.num_nodes):
        raise ViscnnError("target node index out of range")
    return target_nodes


def connectivity(graph: Graph, edge_ok: np.ndarray, node_ok: np.ndarray, target_nodes: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes and edges on some path input -> target using only allowed edges and nodes."""
    per_layer = _layer_links(graph)
    node_ok = node_ok.copy()
    node_ok[target_nodes] = True
    et = graph.edge_target.astype(np.int64)
    fwd = np.zeros(graph.num_nodes, bool)
    fwd[:graph.layers[0].channels] = True
    for li, le, ls in per_layer:  # topological order: sources lie in earlier layers
        ok = edge_ok[le] & fwd[ls]
        t = et[le[ok]]
        fwd[t[node_ok[t]]] = True
    bwd = np.zeros(graph.num_nodes, bool)
    bwd[target_nodes] = True
    for li, le, ls in reversed(per_layer):
        ok = edge_ok[le] & bwd[et[le]] & node_ok[ls]
        bwd[ls[ok]] = True
    live = fwd & bwd
    ok_link = np.zeros(0, bool)
    keep_edge = np.zeros(len(et), bool)
    for li, le, ls in per_layer:
        ok_link = edge_ok[le] & live[ls] & live[et[le]]
        keep_edge[le[ok_link]] = True
    nodes = np.flatnonzero(live)
    # a live node with no kept edge at all (a target never reached) is not part of the circuit
    touched = np.zeros(graph.num_nodes, bool)
    ke = np.flatnonzero(keep_edge)
    touched[et[ke]] = True
    for li, le, ls in per_layer:
        m = keep_edge[le]
        touched[ls[m]] = True
    nodes = nodes[touched[nodes]]
    return nodes.astype(np.int64), ke.astype(np.int64)
