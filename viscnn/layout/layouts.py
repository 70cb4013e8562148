"""The named layouts (mds, pca, grid) of a whole graph: per-layer vectors, positions and parallel embedding."""

from __future__ import annotations

import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional

import numpy as np

from viscnn.errors import ViscnnError
from viscnn.layout.align import _alignment_edges, align_layers
from viscnn.layout.mds import mds_embedding, pca_2d

INPUT_RADIUS = 0.5
MAX_WORKERS = 4  # threads embedding layers at once (at most the usable cores)


# -- per-layer vectors --------------------------------------------------------------------
def normalized_class_vectors(class_node_scores: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """float64 [len(nodes), n_classes]: each node's per-class importances, L2-normalised (zeros stay 0)."""
    # the layer's columns first, then float64 (not all [n_classes, N] per layer: 200 MB with 1,000 classes)
    v = np.asarray(class_node_scores)[:, nodes].astype(np.float64).T
    v = np.where(np.isfinite(v), v, 0.0)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 1e-12)


# -- normalisation, grids, inputs --------------------------------------------------------------
def normalize_positions(p: np.ndarray) -> np.ndarray:
    """Centre, then scale to unit RMS radius (a layer with no spread stays at the origin)."""
    p = p - p.mean(0)
    r = np.sqrt((p ** 2).sum(1).mean())
    return p / r if r > 1e-12 else p


def grid_positions(n: int) -> np.ndarray:
    """Channel c at column c % cols, row c // cols of a ceil(sqrt(n))-wide grid, unit RMS radius."""
    if n <= 0:
        return np.zeros((0, 2))
    cols = int(np.ceil(np.sqrt(n)))
    c = np.arange(n)
    p = np.stack([c % cols, -(c // cols)], 1).astype(np.float64)
    return normalize_positions(p)


def input_positions(n: int) -> np.ndarray:
    """Input image channels: one at the centre, or evenly on a small circle (RGB: 3 points)."""
    if n == 1:
        return np.zeros((1, 2))
    a = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    return INPUT_RADIUS * np.stack([np.cos(a), np.sin(a)], 1)


# -- public layouts ---------------------------------------------------------------------------
def _check(graph, class_node_scores, edge_scores) -> np.ndarray:
    s = np.asarray(class_node_scores)
    if s.ndim != 2 or s.shape[1] != graph.num_nodes:
        raise ViscnnError(f"class_node_scores must be [n_classes, {graph.num_nodes}] (one row per class, one "
                          f"column per node); got shape {s.shape}")
    if edge_scores is not None and np.shape(edge_scores) != (graph.num_edges,):
        raise ViscnnError(f"edge_scores must be [{graph.num_edges}] (one per edge); got shape {np.shape(edge_scores)}")
    return s


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, n))


@contextmanager
def _one_blas_thread():
    """BLAS single-threaded inside (where threadpoolctl is installed; scikit-learn depends on it).

    The layout's BLAS calls are small (SVDs of [n, n_classes], n x n times n x 2 products): with two
    BLAS threads on two busy cores they were up to 100x slower (a [1024, 20] SVD: 0.17 s vs 1.5 ms),
    and layers are embedded in parallel threads instead. Results are the same with either.
    """
    importlib.import_module("scipy.linalg")  # load scipy's own BLAS now: threadpoolctl limits loaded libraries only

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _embed_layer(scores, layer, embed: Callable[[np.ndarray, int], np.ndarray], seed: int) -> np.ndarray:
    if layer.kind == "input":
        return input_positions(layer.channels)
    v = normalized_class_vectors(scores, np.arange(layer.node_offset, layer.node_offset + layer.channels))
    p = normalize_positions(embed(v, seed)) if layer.channels > 1 else np.zeros((1, 2))
    if layer.channels > 1 and not np.any(p):  # identical vectors (e.g. all zero): nothing to show
        p = grid_positions(layer.channels)
    return p


def _embedded_layout(graph, class_node_scores, edge_scores, embed: Callable[[np.ndarray, int], np.ndarray],
                     seed: int, align: bool) -> np.ndarray:
    scores = _check(graph, class_node_scores, edge_scores)
    pos = np.zeros((graph.num_nodes, 2))
    layers = list(enumerate(graph.layers))
    with _one_blas_thread():
        # layers are independent (each its own seed), so they are embedded in parallel, biggest first;
        # numpy releases the GIL in the n x n array work. Same result as one after another.
        workers = _workers()
        if workers > 1 and len(layers) > 1:
            with ThreadPoolExecutor(workers) as pool:
                # the alignment's edge selection needs no positions: made (and cached) alongside
                edges = pool.submit(_alignment_edges, graph, edge_scores) if align else None
                jobs = [(layer, pool.submit(_embed_layer, scores, layer, embed, seed + li))
                        for li, layer in sorted(layers, key=lambda t: -t[1].channels)]
                for layer, job in jobs:
                    pos[layer.node_offset:layer.node_offset + layer.channels] = job.result()
                if edges is not None:
                    edges.result()
        else:
            for li, layer in layers:
                pos[layer.node_offset:layer.node_offset + layer.channels] = _embed_layer(scores, layer, embed, seed + li)
        if align:
            pos = align_layers(graph, pos, edge_scores)
    return pos.astype(np.float32)


def class_mds_layout(graph, class_node_scores: np.ndarray, edge_scores: Optional[np.ndarray] = None,
                     seed: int = 0, align: bool = True) -> np.ndarray:
    """float32 [n_nodes, 2]: per-layer metric MDS of L2-normalised per-class importance vectors."""
    return _embedded_layout(graph, class_node_scores, edge_scores, mds_embedding, seed, align)


def pca_layout(graph, class_node_scores: np.ndarray, edge_scores: Optional[np.ndarray] = None,
               seed: int = 0, align: bool = True) -> np.ndarray:
    """float32 [n_nodes, 2]: per-layer first two principal components of the same vectors."""
    return _embedded_layout(graph, class_node_scores, edge_scores, lambda v, s: pca_2d(v), seed, align)


def grid_layout(graph, class_node_scores=None, edge_scores=None, seed: int = 0) -> np.ndarray:
    """float32 [n_nodes, 2]: each layer's channels in order on a square grid (no scores needed)."""
    pos = np.zeros((graph.num_nodes, 2))
    for layer in graph.layers:
        sl = slice(layer.node_offset, layer.node_offset + layer.channels)
        pos[sl] = input_positions(layer.channels) if layer.kind == "input" else grid_positions(layer.channels)
    return pos.astype(np.float32)


LAYOUTS: Dict[str, Callable[..., np.ndarray]] = {"mds": class_mds_layout, "pca": pca_layout, "grid": grid_layout}


def compute_layout(name: str, graph, class_node_scores: Optional[np.ndarray] = None,
                   edge_scores: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
    """Dispatch to a layout of :data:`LAYOUTS` by name; ``grid`` needs no scores."""
    if name not in LAYOUTS:
        raise ViscnnError(f"unknown layout {name!r}; choose one of: {', '.join(LAYOUTS)}")
    if name != "grid" and class_node_scores is None:
        raise ViscnnError(f"layout {name!r} needs per-class node scores")
    return LAYOUTS[name](graph, class_node_scores, edge_scores, seed=seed)


def layout_names() -> List[str]:
    return list(LAYOUTS)
