"""How well a circuit alone reproduces the target: a copy of the model with every kernel outside
the circuit zeroed is run on the image set, and its per-image target values are compared with
the full model's (Pearson, Spearman, relative error), next to random circuits of equal size
(the same number of kernels in every layer).

Fair measurement (what :mod:`benchmarks.circuits` and ``viscnn circuit`` do): measure on images
*held out* from the ones the circuit was found on (:func:`heldout_spec`); compare with the best of
several random circuits; ``ablation="mean"`` replaces removed kernels by their image-mean maps
(:mod:`.ablation`); for a class target, whether predictions are kept is asked with the class layer
whole (only the conv kernels masked): accuracy on the measured images, and how often images of
``other_batches`` are now called the target class."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.capture import capture, layer_modules
from viscnn.importance.circuits import Circuit
from viscnn.importance.targets import Target
from viscnn.model_copy import working_copy


def masked_model(model: nn.Module, graph: Graph, edges: np.ndarray) -> nn.Module:
    """A working copy in which every kernel (conv or class-layer block) not in ``edges`` is zero."""
    m = working_copy(model)
    keep = np.zeros(graph.num_edges, bool)
    keep[np.asarray(edges, np.int64)] = True
    mods = layer_modules(m, graph)
    with torch.no_grad():
        for layer in graph.layers:
            if layer.kind == "input":
                continue
            k = torch.from_numpy(keep[layer.edge_offset:layer.edge_offset + layer.num_edges])
            w = mods[layer.name].weight
            if layer.kind == "conv":  # a Conv2d [out, in, kh, kw] or a channels-last Linear (1x1 conv) [out, in]
                mask = k.view(w.shape[0], w.shape[1], *([1] * (w.dim() - 2)))
            else:
                mask = k.view(w.shape[0], layer.in_channels, 1).expand(-1, -1, w.shape[1] // layer.in_channels).reshape(w.shape)
            w.mul_(mask.to(w.dtype).to(w.device))
    return m


def random_edges(graph: Graph, circuit_edges: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random kernels, as many per layer as the circuit has. In the class layer they are drawn only
    among the kernels into the classes the circuit reaches (its target), so that a random circuit is
    not cut off from the target by construction, which would make it easy to beat."""
    ce = np.asarray(circuit_edges, np.int64)
    lay = graph.edges[ce, 0]
    out = []
    for li, n in zip(*np.unique(lay, return_counts=True)):
        l = graph.layers[int(li)]
        pool = np.arange(l.num_edges)
        if l.kind == "linear":
            reached = np.unique(graph.edge_target[ce[lay == li]])
            pool = pool[np.isin(graph.edge_target[l.edge_offset + pool], reached)]
        out.append(l.edge_offset + rng.choice(pool, size=int(n), replace=False))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


MIN_CORRELATION_IMAGES = 3  # two points always correlate at +-1: "Pearson 1.00" on 2 images says nothing


def compare(full: np.ndarray, part: np.ndarray) -> Dict[str, Optional[float]]:
    """Pearson, Spearman (None on fewer than :data:`MIN_CORRELATION_IMAGES` values or a constant one)
    and relative error mean|part - full| / mean|full| of a circuit's target values against the full model's."""
    from scipy.stats import pearsonr, spearmanr

    ok = len(full) >= MIN_CORRELATION_IMAGES and np.std(full) > 0 and np.std(part) > 0
    pr = float(pearsonr(full, part)[0]) if ok else None
    sr = float(spearmanr(full, part)[0]) if ok else None
    denom = float(np.mean(np.abs(full)))
    rel = float(np.mean(np.abs(part - full)) / denom) if denom > 0 else None
    return {"pearson": pr, "spearman": sr, "relative_error": rel}


def heldout_spec(spec: str) -> Optional[str]:
    """The image set just after ``spec`` and as large, when the spec can say so
    (``fmnist:SPLIT:CLASS:N[:SKIP]`` -> ``fmnist:SPLIT:CLASS:N:SKIP+N``); else None."""
    parts = spec.strip().split(":")
    if parts[0] != "fmnist" or len(parts) not in (4, 5) or not all(p.isdigit() for p in parts[3:]):
        return None
    n, skip = int(parts[3]), int(parts[4]) if len(parts) == 5 else 0
    return ":".join(parts[:4] + [str(skip + n)])


def _class_of(target: Target) -> Optional[int]:
    return target.terms[0][1].channel if len(target.terms) == 1 and target.terms[0][1].kind == "class" else None


def _variant(model, graph, edges, ablation, means):
    if ablation == "zero":
        return masked_model(model, graph, edges)
    from viscnn.importance.ablation import ablated_model

    return ablated_model(model, graph, edges, ablation, means)


def faithfulness(model: nn.Module, graph: Graph, target: Target, circuit: Circuit,
                 batches: Iterable, n_random: int = 5, seed: int = 0, device=None, *, ablation: str = "zero",
                 means=None, other_batches: Optional[Iterable] = None) -> dict:
    """Faithfulness report of ``circuit`` over ``batches`` of ``(x, labels or None)`` (one pass).

    For ``loss`` without labels, the full model's predictions are the labels of every copy.
    ``ablation``/``means``: how removed kernels are replaced (:mod:`.ablation`; ``means`` from
    :func:`~viscnn.importance.ablation.layer_input_means` on the scoring images, not these).
    ``other_batches``: images of other classes, for a class target's false-positive rate.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    rng = np.random.default_rng(seed)
    variants = {"full": working_copy(model), "circuit": _variant(model, graph, circuit.edges, ablation, means)}
    for r in range(n_random):
        variants[f"random{r}"] = _variant(model, graph, random_edges(graph, circuit.edges, rng), ablation, means)
    k_cls = _class_of(target)
    whole = None
    if k_cls is not None and graph.layers[-1].kind == "linear":  # class layer whole: only conv kernels masked
        last = graph.layers[-1]
        lin = np.arange(last.edge_offset, last.edge_offset + last.num_edges)
        ce = np.asarray(circuit.edges, np.int64)
        whole = _variant(model, graph, np.union1d(ce[ce < last.edge_offset], lin), ablation, means).to(device)
    vals: Dict[str, List[np.ndarray]] = {k: [] for k in variants}
    preds: Dict[str, List[np.ndarray]] = {"full": [], "circuit": [], "labels": []}
    mods = {k: layer_modules(m.to(device), graph) for k, m in variants.items()}
    for x, y in batches:
        x = x.to(device)
        labels = y.to(device) if y is not None else None
        for k, m in variants.items():
            cap = capture(m, mods[k], graph, target, x, labels, clone=True, need_grads=False)
            if k == "full" and labels is None and cap.logits is not None:
                labels = cap.logits.argmax(1)
            if k == "full" and whole is not None:
                preds["full"].append(cap.logits.argmax(1).cpu().numpy())
            vals[k].append(cap.values.double().cpu().numpy())
        if whole is not None:
            with torch.no_grad():
                preds["circuit"].append(whole(x).argmax(1).cpu().numpy())
            preds["labels"].append(np.full(len(x), k_cls) if y is None else y.numpy())
    if not vals["full"]:
        raise ViscnnError("no images for the faithfulness check")
    v = {k: np.concatenate(a) for k, a in vals.items()}
    rand = [compare(v["full"], v[f"random{r}"]) for r in range(n_random)]
    summary = {}
    for key in ("pearson", "spearman", "relative_error"):
        xs = [r[key] for r in rand if r[key] is not None]
        summary[key] = float(np.mean(xs)) if xs else None
        summary[key + "_std"] = float(np.std(xs)) if xs else None
        summary[key + "_best"] = (float(min(xs)) if key == "relative_error" else float(max(xs))) if xs else None
    extra = {}
    if whole is not None:
        lab, pf, pc = (np.concatenate(preds[k]) for k in ("labels", "full", "circuit"))
        extra["predictions"] = {"class": int(k_cls), "accuracy_full": float(np.mean(pf == lab)),
                                "accuracy_circuit": float(np.mean(pc == lab))}
        if other_batches is not None:
            full_m = variants["full"]
            of, oc = [], []
            with torch.no_grad():
                for x, _ in other_batches:
                    x = x.to(device)
                    of.append(full_m(x).argmax(1).cpu().numpy() == k_cls)
                    oc.append(whole(x).argmax(1).cpu().numpy() == k_cls)
            extra["predictions"].update(others=int(sum(len(a) for a in of)),
                                        others_called_class_full=float(np.mean(np.concatenate(of))),
                                        others_called_class_circuit=float(np.mean(np.concatenate(oc))))
    warn = []
    if not len(circuit.edges):
        warn.append("the circuit is empty: no path from the input to the target survives its threshold")
    if len(v["full"]) < MIN_CORRELATION_IMAGES:
        warn.append(f"{len(v['full'])} image(s): Pearson and Spearman need at least {MIN_CORRELATION_IMAGES} "
                    "(two values always correlate at ±1); only the relative error means something here")
    if warn:
        extra["warning"] = "; ".join(warn)
    return {**extra, "ablation": ablation,"images": int(len(v["full"])), "nodes": int(len(circuit.nodes)), "edges": int(len(circuit.edges)),
            "total_edges": int(graph.num_edges), "circuit": compare(v["full"], v["circuit"]),
            "random": summary, "random_circuits": n_random,
            "target_mean": float(np.mean(v["full"])), "circuit_target_mean": float(np.mean(v["circuit"]))}
