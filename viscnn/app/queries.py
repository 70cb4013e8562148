"""Circuit queries behind the app: which scores answer the current settings, and the circuit they give.

Loss targets over prepped image sets (a class, ``all``, or a combination such as ``Sneaker - all``)
are answered from the memory-mapped per-set score arrays, without running the model. Any other target
(``class:K``, ``unit:LAYER:CH``, combinations) or the image set ``image`` (the current input image)
needs a model run: :func:`run_scores` does it on the prepped gallery images of each named set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from viscnn.errors import ViscnnError

IMAGE_SET = "image"  # the current input image (gallery or upload) as an image set


@dataclass
class Query:
    target: str
    image_set: str
    metric: str

    @property
    def key(self) -> str:
        return f"{self.target.strip()}|{self.image_set.strip()}|{self.metric}"


def is_loss(target: str) -> bool:
    return (target or "").strip().lower() in ("", "loss")


def parse_sets(pm, text: str) -> List[Tuple[float, str]]:
    """``[(coef, set name)]`` of an image-set expression; ``image`` is allowed besides the prepped sets."""
    from viscnn.importance.imagesets import parse_set_expression

    return parse_set_expression(text, list(pm.image_sets) + [IMAGE_SET])


def needs_run(pm, q: Query) -> bool:
    """Whether the query needs a model run (else it is read from the precomputed arrays)."""
    terms = parse_sets(pm, q.image_set)
    if not is_loss(q.target):
        parse_target(pm, q.target)
        return True
    return any(name == IMAGE_SET for _, name in terms)


def parse_target(pm, text: str):
    from viscnn.importance.targets import parse_target as _parse

    return _parse(text.strip() or "loss", pm.graph, pm.classes)


def combine_terms(terms: Sequence[Tuple[float, str]], lookup: Callable[[str], np.ndarray]) -> np.ndarray:
    """``sum(coef * lookup(name))`` (``viscnn.importance.imagesets.combine``) as float32."""
    from viscnn.importance.imagesets import combine

    return np.asarray(combine(list(terms), lookup), np.float32)


def precomputed_scores(pm, q: Query) -> Tuple[np.ndarray, np.ndarray]:
    """(node scores [N], edge scores [E]) of a loss query, straight from the prepped arrays."""
    terms = parse_sets(pm, q.image_set)
    if len(terms) == 1 and terms[0][0] == 1.0:  # the common case: one row, no copy needed
        return pm.node_scores(q.metric, terms[0][1]), pm.edge_scores(q.metric, terms[0][1])
    nodes = pm.node_scores(q.metric)
    edges = pm.edge_scores(q.metric)
    return (combine_terms(terms, lambda n: nodes[pm.set_index(n)]),
            combine_terms(terms, lambda n: edges[pm.set_index(n)]))


def target_nodes(pm, target: str) -> Optional[List[int]]:
    """The nodes a target reads (circuit sinks), or None for the plain loss."""
    if is_loss(target):
        return None
    return parse_target(pm, target).sink_nodes(pm.graph)


def gallery_batch(pm, set_name: str, load: Callable[[str], np.ndarray]):
    """(x [B, C, H, W], labels [B] or None) of the prepped gallery images in one set."""
    import torch

    from viscnn.app.activations import to_tensor

    items = pm.images()
    if set_name != "all":
        items = [it for it in items if it.get("class") == set_name]
    if not items:
        raise ViscnnError(f"no gallery images in set {set_name!r} to run the model on")
    x = torch.cat([to_tensor(load(it["file"]), pm) for it in items])
    labels = torch.tensor([int(it.get("label", -1)) for it in items])
    return x, (labels if bool((labels >= 0).all()) else None)


def run_scores(pm, model, q: Query, load_gallery: Callable[[str], np.ndarray], current_image: Optional[np.ndarray],
               progress: Optional[Callable[[int, int], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Scores of any query by running the model: the mean per-image score over each named set's images,
    combined with the expression's coefficients."""
    from viscnn.app.activations import to_tensor
    from viscnn.importance.scorer import Scorer

    terms = parse_sets(pm, q.image_set)
    scorer = Scorer(model, pm.graph, parse_target(pm, q.target), metrics=(q.metric,), classes=pm.classes)
    rows: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for k, (_, name) in enumerate(terms):
        if progress:
            progress(k, len(terms))
        if name == IMAGE_SET:
            if current_image is None:
                raise ViscnnError("image set 'image' needs an input image: pick one from the gallery or upload one")
            x, labels = to_tensor(current_image, pm), None
        else:
            x, labels = gallery_batch(pm, name, load_gallery)
        n, e = scorer(x, labels)[q.metric]
        rows[name] = (n.mean(0).numpy().astype(np.float32), e.mean(0).numpy().astype(np.float32))
    if progress:
        progress(len(terms), len(terms))
    return (combine_terms(terms, lambda n: rows[n][0]), combine_terms(terms, lambda n: rows[n][1]))


def circuit_of(graph, node_scores: np.ndarray, edge_scores: np.ndarray, threshold: Dict[str, object],
               targets: Optional[List[int]] = None):
    """The circuit for the threshold settings (``viscnn.importance.circuits.extract_circuit``)."""
    from viscnn.importance.circuits import extract_circuit

    return extract_circuit(graph, node_scores, edge_scores, target_nodes=targets, **threshold)


def signed_scores(pm, metric: str, edge_scores: np.ndarray, q: Query):
    """(node scores, edge scores, metric name) whose signs colour the graph when ``metric`` is unsigned:
    the matching ``*_signed`` prepped metric over the same image sets. None when the scores carry their
    own sign (or no signed metric answers this query)."""
    if (np.asarray(edge_scores) < 0).any():
        return None
    signed = next((m for m in pm.metrics if m.endswith("_signed") and m.startswith(metric)), None)
    if signed is None or not is_loss(q.target):
        return None
    try:
        ns, es = precomputed_scores(pm, Query(q.target, q.image_set, signed))
    except ViscnnError:
        return None
    return ns, es, signed


def edge_signs(pm, metric: str, image_set_scores: np.ndarray, q: Query) -> Optional[np.ndarray]:
    """Edge signs for colouring: the scores' own when they are signed, else the signed metric's."""
    r = signed_scores(pm, metric, image_set_scores, q)
    return None if r is None else r[1]


def basis(pm, q: Query, ran: bool) -> str:
    """What the scores rest on, for the page: how many images of which set, which metric and target."""
    terms = parse_sets(pm, q.image_set)
    counts = dict(zip(pm.image_sets, pm.manifest.get("image_counts") or []))
    split = (pm.manifest.get("data") or {}).get("split") or "prepped"
    items = pm.images()
    parts = []
    for coef, name in terms:
        if name == IMAGE_SET:
            n, where = 1, "the current input image"
        elif ran:
            n = len(items) if name == "all" else sum(1 for it in items if it.get("class") == name)
            where = f"gallery images of {name!r}"
        else:
            n, where = counts.get(name), f"{split} images of {name!r}"
        c = "" if coef == 1 else f"{coef:g} x "
        parts.append(f"{c}mean over {n if n is not None else '?'} {where}")
    tgt = q.target.strip() or "loss"
    return f"Scores: {q.metric} of {tgt}, " + "; ".join(parts) + "."
