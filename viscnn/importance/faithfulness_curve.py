"""Faithfulness against circuit size: the circuit a rule gives at each size (a fraction of all
kernels), alone against the full model, next to random circuits with as many kernels per layer,
on the same images. One model copy at a time (memory stays that of two models), the images kept
in memory once.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.graph.structure import Graph
from viscnn.importance.capture import capture, layer_modules
from viscnn.importance.circuits import Circuit
from viscnn.importance.faithfulness import compare, masked_model, random_edges
from viscnn.importance.targets import Target
from viscnn.model_copy import working_copy

FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def _values(m: nn.Module, graph: Graph, target: Target, data, device) -> np.ndarray:
    mods = layer_modules(m.to(device), graph)
    out = []
    for x, labels in data:
        cap = capture(m, mods, graph, target, x, labels, clone=True, need_grads=False)
        out.append(cap.values.double().cpu().numpy())
    return np.concatenate(out)


def size_curve(model: nn.Module, graph: Graph, target: Target, circuit_at: Callable[[float], Circuit],
               batches: Iterable, fractions: Sequence[float] = FRACTIONS, n_random: int = 3, seed: int = 0,
               device=None, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """``{"fractions", "edges", "pearson", "relative_error", "random_pearson", "random_pearson_best",
    "random_relative_error", "images"}``, one entry per fraction; ``circuit_at(f)`` gives the circuit
    for the fraction ``f`` of all kernels. For ``loss`` without labels the full model's predictions
    are the labels of every copy. ``progress(copies done, copies in all)``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    full = working_copy(model).to(device)
    fmods = layer_modules(full, graph)
    data, full_vals = [], []
    for x, y in batches:
        x = x.to(device)
        labels = y.to(device) if y is not None else None
        cap = capture(full, fmods, graph, target, x, labels, clone=True, need_grads=False)
        if labels is None and cap.logits is not None:
            labels = cap.logits.argmax(1)
        data.append((x, labels))
        full_vals.append(cap.values.double().cpu().numpy())
    if not data:
        raise ViscnnError("no images for the faithfulness curve")
    del full
    v_full = np.concatenate(full_vals)
    rng = np.random.default_rng(seed)
    total = len(fractions) * (1 + n_random)
    res: Dict[str, List] = {k: [] for k in ("fractions", "edges", "pearson", "relative_error", "random_pearson",
                                            "random_pearson_best", "random_relative_error")}
    done = 0
    for f in fractions:
        c = circuit_at(float(f))
        cmp = compare(v_full, _values(masked_model(model, graph, c.edges), graph, target, data, device))
        done += 1
        if progress:
            progress(done, total)
        rand = []
        for _ in range(n_random if len(c.edges) else 0):
            rand.append(compare(v_full, _values(masked_model(model, graph, random_edges(graph, c.edges, rng)),
                                                graph, target, data, device)))
            done += 1
            if progress:
                progress(done, total)
        rp = [r["pearson"] for r in rand if r["pearson"] is not None]
        rr = [r["relative_error"] for r in rand if r["relative_error"] is not None]
        res["fractions"].append(float(f))
        res["edges"].append(int(len(c.edges)))
        res["pearson"].append(cmp["pearson"])
        res["relative_error"].append(cmp["relative_error"])
        res["random_pearson"].append(float(np.mean(rp)) if rp else None)
        res["random_pearson_best"].append(float(max(rp)) if rp else None)
        res["random_relative_error"].append(float(np.mean(rr)) if rr else None)
    res["images"] = int(len(v_full))
    res["random_circuits"] = int(n_random)
    return res
