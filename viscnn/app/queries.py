"""Circuit queries behind the app: which scores answer the current settings, and the circuit they give.

Loss targets over prepped image sets (a class, ``all``, or a combination such as ``Sneaker - all``)
are answered from the memory-mapped per-set score arrays, without running the model, and so is
``class:K`` over the image set K (prep's own-class scores, when the model has them). Any other target
(``class:K`` over other sets, ``unit:LAYER:CH``, combinations) or the image set ``image`` (the current
input image) needs a model run: :func:`run_scores` does it over N images of each named set of the
prepped dataset.
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
        return own_class(pm, q) is None
    return any(name == IMAGE_SET for _, name in terms)


def own_class(pm, q: Query) -> Optional[int]:
    """K when the query is ``class:K`` (any spelling: ``class:7``, ``class:Sneaker``) over exactly the
    image set K and prep stored own-class scores for its metric; else None."""
    if is_loss(q.target) or q.metric not in pm.class_score_metrics:
        return None
    terms = parse_target(pm, q.target).terms
    sets = parse_sets(pm, q.image_set)
    if len(terms) != 1 or terms[0][0] != 1.0 or terms[0][1].kind != "class" or len(sets) != 1 or sets[0][0] != 1.0:
        return None
    k = terms[0][1].channel
    return k if k < len(pm.classes) and pm.classes[k] == sets[0][1] else None


def parse_target(pm, text: str):
    from viscnn.importance.targets import parse_target as _parse

    return _parse(text.strip() or "loss", pm.graph, pm.classes)


def combine_terms(terms: Sequence[Tuple[float, str]], lookup: Callable[[str], np.ndarray]) -> np.ndarray:
    """``sum(coef * lookup(name))`` (``viscnn.importance.imagesets.combine``) as float32."""
    from viscnn.importance.imagesets import combine

    return np.asarray(combine(list(terms), lookup), np.float32)


def precomputed_scores(pm, q: Query) -> Tuple[np.ndarray, np.ndarray]:
    """(node scores [N], edge scores [E]) of a loss query, or of ``class:K`` over K, straight from the
    prepped arrays."""
    k = own_class(pm, q)
    if k is not None:
        return pm.class_scores(q.metric, k)
    terms = parse_sets(pm, q.image_set)
    if len(terms) == 1 and terms[0][0] == 1.0:  # the common case: one row, no copy needed
        return pm.node_scores(q.metric, terms[0][1]), pm.edge_scores(q.metric, terms[0][1])
    return (combine_terms(terms, lambda n: pm.node_scores(q.metric, n)),
            combine_terms(terms, lambda n: pm.edge_scores(q.metric, n)))


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
               progress: Optional[Callable[[int, int], None]] = None, count=None) -> Tuple[np.ndarray, np.ndarray, dict]:
    """Scores of any query by running the model: the mean per-image score over ``count`` images of each
    named set of the prepped dataset (``viscnn.app.dataset_sets``), combined with the expression's
    coefficients; ``progress(images done, images in all)``. Where the dataset is not on this machine, the
    prepped gallery images stand in. Returns (node scores, edge scores, what they rest on:
    {"sets": {name: {"images": n, "source": "dataset"|"gallery"|"image"}}, "fallback": reason or None,
    "count": the requested count})."""
    from viscnn.app import dataset_sets as D
    from viscnn.app.activations import to_tensor
    from viscnn.importance.scorer import Scorer

    terms = parse_sets(pm, q.image_set)
    n = D.count_of(count)
    scorer = Scorer(model, pm.graph, parse_target(pm, q.target), metrics=(q.metric,), classes=pm.classes)
    ds, fallback = None, None
    if any(name != IMAGE_SET for _, name in terms):
        try:
            ds = D.open_dataset(pm)
        except ViscnnError as e:
            fallback = str(e)
    plans = {}  # set name -> (source, batches factory, images)
    for _, name in terms:
        if name in plans:
            continue
        if name == IMAGE_SET:
            if current_image is None:
                raise ViscnnError("image set 'image' needs an input image: pick one from the gallery or upload one")
            x = to_tensor(current_image, pm)
            plans[name] = ("image", lambda x=x: [(x, None)], 1)
        elif ds is not None:
            pos = D.set_positions(ds, pm.classes, name, n)
            plans[name] = ("dataset", lambda pos=pos: D.dataset_batches(ds, pos), len(pos))
        else:
            x, labels = gallery_batch(pm, name, load_gallery)
            plans[name] = ("gallery", lambda x=x, labels=labels: [(x, labels)], int(x.shape[0]))
    total = sum(p[2] for p in plans.values())
    rows: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    done = 0
    if progress:
        progress(0, total)
    for name, (source, batches, k) in plans.items():
        step = (lambda d, t, base=done: progress(base + d, total)) if progress else None
        ns, es, used = D.mean_scores(scorer, q.metric, batches(), k, step)
        rows[name] = (ns, es)
        done += used
    info = {"sets": {name: {"images": p[2], "source": p[0]} for name, p in plans.items()},
            "fallback": fallback, "count": "all" if n is None else n}
    return combine_terms(terms, lambda m: rows[m][0]), combine_terms(terms, lambda m: rows[m][1]), info


def circuit_of(graph, node_scores: np.ndarray, edge_scores: np.ndarray, threshold: Dict[str, object],
               targets: Optional[List[int]] = None, ranked=None):
    """The circuit for the threshold settings (``viscnn.importance.circuits.extract_circuit``); with
    ``ranked`` (:func:`ranked_of`, made once per score vector) in O(edges kept), the same circuit."""
    if ranked is not None:
        from viscnn.importance.ranked import extract_circuit_ranked

        return extract_circuit_ranked(graph, ranked, node_scores, target_nodes=targets, **threshold)
    from viscnn.importance.circuits import extract_circuit

    return extract_circuit(graph, node_scores, edge_scores, target_nodes=targets, **threshold)


def ranked_of(pm, q: Optional[Query], edge_scores: np.ndarray):
    """Per-layer edge orderings of a query's edge scores: read sorted from sparse prepped scores where
    the query is one stored row, else sorted once here."""
    from viscnn.importance.ranked import RankedEdges

    if q is not None and hasattr(pm, "ranked_edges"):
        r = stored_ranking(pm, q)
        if r is not None:
            return r
    return RankedEdges.from_dense(pm.graph, edge_scores)


def stored_ranking(pm, q: Query):
    """The prepped ranking of a precomputed one-row query (sparse scores), or None."""
    if needs_run(pm, q):
        return None
    k = own_class(pm, q)
    if k is not None:
        return pm.ranked_edges(q.metric, k, own_class=True)
    terms = parse_sets(pm, q.image_set)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return pm.ranked_edges(q.metric, terms[0][1])
    return None


def signed_scores(pm, metric: str, edge_scores: np.ndarray, q: Query):
    """(node scores, edge scores, metric name) whose signs colour the graph when ``metric`` is unsigned:
    the matching ``*_signed`` prepped metric over the same image sets. None when the scores carry their
    own sign (or no signed metric answers this query)."""
    if (np.asarray(edge_scores) < 0).any():
        return None
    signed = next((m for m in pm.metrics if m.endswith("_signed") and m.startswith(metric)), None)
    if signed is None:
        return None
    try:
        sq = Query(q.target, q.image_set, signed)
        if needs_run(pm, sq):
            return None
        ns, es = precomputed_scores(pm, sq)
    except ViscnnError:
        return None
    return ns, es, signed


def edge_signs(pm, metric: str, image_set_scores: np.ndarray, q: Query) -> Optional[np.ndarray]:
    """Edge signs for colouring: the scores' own when they are signed, else the signed metric's."""
    r = signed_scores(pm, metric, image_set_scores, q)
    return None if r is None else r[1]


def basis(pm, q: Query, ran: bool, info: Optional[dict] = None) -> str:
    """What the scores rest on, for the page: how many images of which set, which metric and target.
    ``info``: what a model run used (:func:`run_scores`); without it, the prepped counts."""
    terms = parse_sets(pm, q.image_set)
    counts = dict(zip(pm.image_sets, pm.manifest.get("image_counts") or []))
    split = (pm.manifest.get("data") or {}).get("split") or "prepped"
    used = (info or {}).get("sets") or {}
    own = None if ran else own_class(pm, q)
    parts = []
    for coef, name in terms:
        u = used.get(name)
        if name == IMAGE_SET:
            n, where = 1, "the current input image"
        elif ran and u is not None:
            n = u["images"]
            where = (f"{split} images of {name!r} (evenly spaced through the prepped set)" if u["source"] == "dataset"
                     else f"gallery images of {name!r}")
        elif ran:
            n, where = "?", f"images of {name!r}"
        elif own is not None:
            n, where = pm.class_image_count(own), f"{split} images of {name!r} (precomputed)"
        else:
            n, where = counts.get(name), f"{split} images of {name!r}"
        c = "" if coef == 1 else f"{coef:g} x "
        parts.append(f"{c}mean over {n if n is not None else '?'} {where}")
    tgt = q.target.strip() or "loss"
    out = f"Scores: {q.metric} of {tgt}, " + "; ".join(parts) + "."
    sp = pm.manifest.get("sparse") if getattr(pm, "sparse", False) and not ran else None
    if sp and any(name not in ("all", IMAGE_SET) for _, name in terms):
        out += (f" Edge scores of class sets are stored sparse: per layer the top edges holding {sp['mass']:g} of its "
                f"|score|, at least {sp['min_per_layer']} and at most {sp['max_fraction']:.0%} of its kernels.")
    if ran and info and info.get("fallback"):
        out += f" (The prepped dataset is not available here: {info['fallback']}; the gallery images stand in.)"
    if info and info.get("method"):
        from viscnn.app.views.circuit.method import method_line

        out += " " + method_line(info["method"])
    return out
