"""In-layer 2D node positions (the layer axis comes from the graph), as pure functions over arrays.

``mds``: nodes that matter for the same classes sit together. Each node's vector of per-class
importances is L2-normalised (so a node is placed by *which* classes it serves, not how much),
and each layer is embedded on its own with metric MDS (SMACOF started from classical MDS; landmark
MDS above :data:`LANDMARK_THRESHOLD` nodes keeps big layers affordable). ``pca``: the two principal
axes of the same vectors (= classical MDS). ``grid``: channel order on a square grid.

Every layer is centred and scaled to unit RMS radius. MDS and PCA layers are then rotated (and
possibly reflected) to shorten their important edges to earlier layers, so that wires between
adjacent layers run roughly straight. Input-image nodes get a small fixed arrangement.

Cost is bounded per layer (SMACOF on at most 1,000 points or :data:`N_LANDMARKS` landmarks, the
alignment on at most :data:`MAX_ALIGN_EDGES` links); big graphs stay fast because the n x n loops
run in place, layers are embedded in parallel threads, and the alignment's edge selection reads
each layer's kernels once without ``graph.links`` (ResNet-50 at 64x64, 20 classes: 155 s -> 12 s
for all three layouts on two cores). Results are bit-identical to the plain code except where
vectors are wide (over :data:`EIGH_MIN_DIM` classes): there to rounding.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional

import numpy as np

from viscnn.errors import ViscnnError

LANDMARK_THRESHOLD = 1000  # layers with more nodes use landmark MDS
N_LANDMARKS = 500
EIGH_MIN_DIM = 200  # classical MDS of [n, d] vectors with min(n, d) above this: top-2 eigenproblem, not a full SVD
MAX_GRAM_NODES = 4096  # landmark sampling of wider vectors uses an n x n Gram matrix up to this many nodes
MAX_ALIGN_EDGES = 4000  # the rotation search looks at this many highest-scoring edges per layer
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


def pairwise_distances(x: np.ndarray, y: Optional[np.ndarray] = None, out: Optional[np.ndarray] = None,
                       tmp: Optional[np.ndarray] = None) -> np.ndarray:
    """Euclidean distances [len(x), len(y)]; into ``out`` (``tmp`` a scratch of the same shape) when given.

    The in-place form does the same operations as the plain expression (same result bit for bit)
    without allocating: landmark MDS calls it every refinement step on [n, landmarks] arrays.
    """
    y = x if y is None else y
    if out is None:
        d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
        return np.sqrt(np.maximum(d2, 0.0))
    np.add((x * x).sum(1)[:, None], (y * y).sum(1)[None, :], out=out)
    np.subtract(out, np.matmul(2.0 * x, y.T, out=tmp), out=out)
    np.maximum(out, 0.0, out=out)
    return np.sqrt(out, out=out)


def _safe_ratio(d: np.ndarray, dist: np.ndarray, tiny: float, out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``out`` = d / dist where dist > tiny, else 0: the values of ``np.divide(d, dist, out=zeros, where=dist > tiny)``.

    Divide everything, then zero the few excluded entries: half the time of a masked divide into a
    freshly zeroed array (it runs once per SMACOF iteration over n x n).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(d, dist, out=out)
    np.greater(dist, tiny, out=mask)
    np.logical_not(mask, out=mask)
    np.copyto(out, 0.0, where=mask)
    return out


# -- embeddings -------------------------------------------------------------------------------
def classical_mds(vectors: np.ndarray) -> np.ndarray:
    """Classical (Torgerson) MDS of Euclidean distances = PCA scores of the centred vectors.

    Computed from the [n, d] vectors via SVD (O(n d^2)) instead of eigendecomposing the n x n
    double-centred matrix; the two are identical for Euclidean distances. Signs are fixed
    (largest |coordinate| of each axis positive) so the result is deterministic. When both n and d
    exceed :data:`EIGH_MIN_DIM` (e.g. a 2,048-node layer with 1,000 classes) only the top two axes
    are computed, from the smaller of the covariance and Gram matrices (:func:`_top2_scores`):
    the full SVD took 0.6 s per such layer, this 0.1 s; same axes to rounding (tested).
    """
    n = len(vectors)
    x = vectors - vectors.mean(0)
    out = np.zeros((n, 2))
    if n < 2:
        return out
    if min(x.shape) > EIGH_MIN_DIM:
        k, y = 2, _top2_scores(x)
    else:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        k = min(2, len(s))
        y = u[:, :k] * s[:k]
    for j in range(k):
        i = int(np.argmax(np.abs(y[:, j])))
        if y[i, j] < 0:
            y[:, j] = -y[:, j]
    out[:, :k] = y
    return out


def _top2_scores(x: np.ndarray) -> np.ndarray:
    """[n, 2] scores u_k s_k of the two largest singular values of centred ``x``, without a full SVD.

    Eigenvectors of the two largest eigenvalues of x^T x (d x d, then scores = x v) or of x x^T
    (n x n, then scores = u sqrt(lambda)), whichever is smaller; squaring only loses accuracy in the
    small singular values, which are not used.
    """
    from scipy.linalg import eigh

    n, d = x.shape
    if d <= n:
        _, v = eigh(x.T @ x, subset_by_index=[d - 2, d - 1])
        return x @ v[:, ::-1]
    w, u = eigh(x @ x.T, subset_by_index=[n - 2, n - 1])
    return u[:, ::-1] * np.sqrt(np.maximum(w[::-1], 0.0))


def _distances_2d(x: np.ndarray, out: Optional[np.ndarray] = None, tmp: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact Euclidean distances between rows of a small [n, 2] array (no cancellation error).

    sqrt(dx^2 + dy^2) from two [n, n] outer differences, written into ``out`` (``tmp`` a scratch
    buffer) when given: bit-identical to summing an [n, n, 2] difference array over its last axis,
    but that reduction over a length-2 axis was 80% of all SMACOF time (8 ms per call at n = 512,
    now 0.9 ms), and reusing buffers avoids page-faulting fresh n x n arrays every iteration.
    """
    c0, c1 = np.ascontiguousarray(x[:, 0]), np.ascontiguousarray(x[:, 1])  # contiguous columns: 20% faster
    out = np.subtract(c0[:, None], c0[None, :], out=out)
    tmp = np.subtract(c1[:, None], c1[None, :], out=tmp)
    np.multiply(out, out, out=out)
    np.multiply(tmp, tmp, out=tmp)
    np.add(out, tmp, out=out)
    return np.sqrt(out, out=out)


def smacof(d: np.ndarray, init: np.ndarray, max_iter: int = 300, eps: float = 1e-6) -> np.ndarray:
    """Metric SMACOF (stress majorisation, unit weights) of dissimilarities ``d`` from ``init``.

    Our own ~15 lines rather than scikit-learn's: its convergence rule changed between releases
    (1.7), which moved committed layouts; this one is fixed: stop when one Guttman transform lowers
    the raw stress by less than ``eps`` times its value. Tested against scikit-learn's at tight eps.
    The loop works in preallocated n x n buffers (in-place ufuncs, same operations in the same
    order as the plain expressions, so results are bit-identical to them) -- 5x faster at n = 512.
    """
    x = np.array(init, np.float64)
    n = len(d)
    if n < 3 or not np.any(d > 0):
        return x
    dist, tmp, ratio = np.empty_like(d), np.empty_like(d), np.empty_like(d)
    mask = np.empty(d.shape, bool)
    diag = np.diag_indices(n)

    def raw_stress() -> float:  # ((dist - d) ** 2).sum() / 2
        np.subtract(dist, d, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        return tmp.sum() / 2

    _distances_2d(x, dist, tmp)
    stress = raw_stress()
    for _ in range(max_iter):
        # Guttman transform x <- b x / n, b = -ratio with the row sums of ratio on the diagonal, ratio = d / dist
        # where dist > 1e-12, else 0 (so 0 on the diagonal). Computed as -(ratio' x) / n with ratio' = ratio
        # whose diagonal is minus the row sums: negation is exact, so this is b x bit for bit, minus a pass.
        rs = _safe_ratio(d, dist, 1e-12, ratio, mask).sum(1)
        ratio[diag] = -rs
        x = -(ratio @ x) / n
        _distances_2d(x, dist, tmp)
        new = raw_stress()
        done = stress - new <= eps * stress
        stress = new
        if done:
            break
    return x


def metric_mds(vectors: np.ndarray) -> np.ndarray:
    """Metric MDS (SMACOF from the classical solution) of the vectors' Euclidean distances."""
    return smacof(pairwise_distances(vectors), classical_mds(vectors))


def _maxmin_landmarks(vectors: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Farthest-point sampling: spread-out landmarks, so small clusters are represented.

    Squared row norms are computed once, not per step (the same values and formula as
    :func:`pairwise_distances`, so the same landmarks): with 1,000 classes re-summing them
    dominated the k steps.
    """
    n = len(vectors)
    sq = (vectors * vectors).sum(1)
    # wide vectors (many classes): inner products from one Gram matrix (a single BLAS-3 product)
    # instead of a pass over all [n, d] vectors per landmark: 1,000 classes, n = 2,048: 1.5 s -> 0.1 s.
    # Same distances up to rounding; narrow vectors keep the per-landmark product (same landmarks as before).
    gram = vectors @ vectors.T if vectors.shape[1] > EIGH_MIN_DIM and n <= MAX_GRAM_NODES else None

    def dist_to(i: int) -> np.ndarray:  # == pairwise_distances(vectors, vectors[i:i + 1])[:, 0]
        dot = gram[i] if gram is not None else (vectors @ vectors[i:i + 1].T)[:, 0]
        return np.sqrt(np.maximum(sq + sq[i] - 2.0 * dot, 0.0))

    chosen = [int(rng.integers(n))]
    dmin = dist_to(chosen[0])
    for _ in range(k - 1):
        i = int(np.argmax(dmin))
        if dmin[i] <= 0:  # the rest duplicate chosen points: fill with random others
            rest = np.setdiff1d(np.arange(n), chosen)
            chosen += rng.choice(rest, k - len(chosen), replace=False).tolist()
            break
        chosen.append(i)
        dmin = np.minimum(dmin, dist_to(i))
    return np.array(sorted(chosen))


def landmark_mds(vectors: np.ndarray, n_landmarks: int = N_LANDMARKS, seed: int = 0, refine_iter: int = 30) -> np.ndarray:
    """Metric MDS of landmarks, then every other point placed against the fixed landmarks.

    Non-landmarks start at the de Silva & Tenenbaum triangulation (distance-based linear map) and
    are refined by stress majorisation against the landmarks only: O(n * landmarks) memory and time.
    """
    n = len(vectors)
    if n <= n_landmarks:
        return metric_mds(vectors)
    rng = np.random.default_rng(seed)
    lm = _maxmin_landmarks(vectors, n_landmarks, rng)
    dl = pairwise_distances(vectors[lm])
    y = smacof(dl, classical_mds(vectors[lm]))

    d = pairwise_distances(vectors, vectors[lm])  # [n, L]
    yc = y - y.mean(0)
    # triangulation: x = -1/2 pinv(Y_c) (d^2 - mean_l d^2)
    x = -0.5 * (d ** 2 - (dl ** 2).mean(0)) @ np.linalg.pinv(yc).T + y.mean(0)
    y_mean, n_lm = y.mean(0), len(lm)
    dist, ratio, mask = np.empty_like(d), np.empty_like(d), np.empty(d.shape, bool)  # reused [n, L] buffers
    for _ in range(refine_iter):
        # Guttman update with fixed landmarks, unit weights: x <- mean_l (y_l + d_l (x - y_l) / |x - y_l|),
        # expanded so that only [n, L] matrices are formed
        pairwise_distances(x, y, out=dist, tmp=ratio)
        _safe_ratio(d, dist, 1e-9, ratio, mask)
        x = y_mean + ratio.mean(1)[:, None] * x - (ratio @ y) / n_lm
    x[lm] = y
    return x


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    return classical_mds(vectors)


def kruskal_stress(positions: np.ndarray, dissimilarities: np.ndarray) -> float:
    """Stress-1 after the best uniform scaling of ``positions``: 0 = distances reproduced exactly."""
    iu = np.triu_indices(len(positions), 1)
    dx = pairwise_distances(np.asarray(positions, np.float64))[iu]
    dd = np.asarray(dissimilarities, np.float64)[iu]
    if not np.any(dx > 0) or not np.any(dd > 0):
        return 0.0 if not np.any(dd > 0) else 1.0
    s = (dx @ dd) / (dx @ dx)
    return float(np.sqrt(((s * dx - dd) ** 2).sum() / (dd ** 2).sum()))


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


# -- rotation to shorten edges ----------------------------------------------------------------
def _rotations(n_angles: int) -> np.ndarray:
    """[2 * n_angles, 2, 2]: rotations, then rotations composed with a reflection (x -> -x)."""
    t = 2 * np.pi * np.arange(n_angles) / n_angles
    c, s = np.cos(t), np.sin(t)
    rot = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)
    refl = rot @ np.diag([-1.0, 1.0])
    return np.concatenate([rot, refl])


def weighted_edge_length(targets: np.ndarray, sources: np.ndarray, weights: np.ndarray) -> float:
    """Sum of weight * in-plane length of edges from ``sources`` to ``targets`` positions."""
    return float((weights * np.linalg.norm(targets - sources, axis=1)).sum())


def best_rotation(targets: np.ndarray, sources: np.ndarray, weights: np.ndarray, n_angles: int = 180) -> np.ndarray:
    """2x2 orthogonal matrix R minimising sum w * |R t - s|, searched over angles and reflection.

    Candidates: ``n_angles`` rotations with and without reflection (the identity among them, so the
    result is never worse than not rotating) and the weighted-least-squares optimum (Kabsch, closed
    form); the best is then refined on a finer grid around it.
    """
    if len(targets) == 0 or not np.any(weights > 0):
        return np.eye(2)
    m = (weights[:, None] * sources).T @ targets  # sum w s t^T
    u, _, vt = np.linalg.svd(m)
    cands = np.concatenate([_rotations(n_angles), (u @ vt)[None]])
    best = cands[int(np.argmin(_rotation_costs(cands, targets, sources, weights)))]
    # refine: +-1 coarse step around the best, 40 finer steps (keeps the best found so far)
    step = 2 * np.pi / n_angles
    t = np.linspace(-step, step, 41)
    fine = np.stack([np.stack([np.cos(t), -np.sin(t)], 1), np.stack([np.sin(t), np.cos(t)], 1)], 1) @ best
    cands = np.concatenate([best[None], fine])
    return cands[int(np.argmin(_rotation_costs(cands, targets, sources, weights)))]


def _rotation_costs(cands: np.ndarray, targets: np.ndarray, sources: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_e w_e |R_k t_e - s_e| for each candidate R_k, via two [K, E] products (no [K, E, 2] array).

    In place, from contiguous columns (the same operations as the plain expressions, so the same
    costs bit for bit, with fewer fresh [K, E] arrays): it runs twice per layer, ~1 s per ResNet-50 layout.
    """
    tx, ty, sx, sy = (np.ascontiguousarray(a) for a in (targets[:, 0], targets[:, 1], sources[:, 0], sources[:, 1]))
    c = [np.ascontiguousarray(cands[:, i, j]) for i in (0, 1) for j in (0, 1)]
    px, tmp = np.multiply.outer(c[0], tx), np.empty((len(cands), len(tx)))
    px += np.multiply.outer(c[1], ty, out=tmp)  # px = c00 t_x + c01 t_y - s_x
    px -= sx
    py = np.multiply.outer(c[2], tx)
    py += np.multiply.outer(c[3], ty, out=tmp)
    py -= sy
    px *= px
    py *= py
    px += py
    return np.sqrt(px, out=px) @ weights


def _edges_into_layer_from_links(graph, li: int, edge_scores: Optional[np.ndarray]):
    """:func:`_edges_into_layer` by masking ``graph.links``: general, but O(all links) per layer and it
    needs ``graph.links`` (ResNet-50: 40M rows, 6 s to build); the fallback and the reference in tests."""
    layer = graph.layers[li]
    links = graph.links
    lo, hi = layer.edge_offset, layer.edge_offset + layer.num_edges
    sel = links[(links[:, 0] >= lo) & (links[:, 0] < hi)]
    src = sel[:, 1].astype(np.int64)
    keep = graph.node_layer[src] < li
    sel, src = sel[keep], src[keep]
    tgt = graph.edge_target[sel[:, 0]].astype(np.int64)
    if edge_scores is None:
        w = np.ones(len(sel))
    else:
        w = np.abs(np.nan_to_num(np.asarray(edge_scores, np.float64)[sel[:, 0]]))
    if len(w) > MAX_ALIGN_EDGES:
        top = np.argpartition(-w, MAX_ALIGN_EDGES - 1)[:MAX_ALIGN_EDGES]
        tgt, src, w = tgt[top], src[top], w[top]
    return tgt, src, w


def _edges_into_layer(graph, li: int, edge_scores: Optional[np.ndarray]):
    """(target node, source node, weight) of links from earlier layers into layer ``li``.

    One row per link (kernel, source node) in ``graph.links`` order, weight |edge score|; above
    :data:`MAX_ALIGN_EDGES` links only the heaviest. Derived from the layer's own shape and
    ``input_sources`` (exactly how ``graph.links`` is built) rather than from ``graph.links``:
    masking all links per layer took 10 s per layout on ResNet-50 (40M links x 55 layers), and
    building ``graph.links`` itself 6 s. Per-link work is one float64 weight vector (the selection
    is made on the same vector as before, so the same links are chosen); targets and sources are
    looked up for the kept links only. Equal to :func:`_edges_into_layer_from_links` (tested).
    """
    layer = graph.layers[li]
    counts = np.array([len(s) for s in layer.input_sources], np.int64)  # sources per input channel
    flat = np.array([n for s in layer.input_sources for n in s], np.int64)
    if layer.num_edges == 0 or len(counts) != layer.in_channels or len(flat) == 0 or graph.node_layer[flat].max() >= li:
        return _edges_into_layer_from_links(graph, li, edge_scores)  # e.g. a source in this or a later layer
    lo, n_e = layer.edge_offset, layer.num_edges
    per_in, per_out = layer.in_channels // layer.groups, layer.channels // layer.groups
    k = np.arange(n_e)
    out_ch = k // per_in
    in_ch = (out_ch // per_out) * per_in + k % per_in  # canonical edge order, as graph.edges
    rep = counts[in_ch]  # links per edge
    one_each = bool(np.all(counts == 1))  # no residual sum at the input: links are the edges
    if edge_scores is None:
        w = np.ones(int(rep.sum()))
    else:
        w = np.abs(np.nan_to_num(np.asarray(edge_scores[lo:lo + n_e], np.float64)))
        if not one_each:
            w = np.repeat(w, rep)
    top = np.argpartition(-w, MAX_ALIGN_EDGES - 1)[:MAX_ALIGN_EDGES] if len(w) > MAX_ALIGN_EDGES else np.arange(len(w))
    if not one_each:  # link index -> (edge, which of its sources)
        ends = np.cumsum(rep)
        edge = np.searchsorted(ends, top, side="right")
        which = top - (ends[edge] - rep[edge])
    else:
        edge, which = top, 0
    src = flat[(np.cumsum(counts) - counts)[in_ch[edge]] + which]
    return layer.node_offset + out_ch[edge], src, w[top]


_edge_cache: Optional[tuple] = None  # (weakref to graph, key, {layer: edges}) of the last alignment


def _alignment_edges(graph, edge_scores: Optional[np.ndarray]) -> Dict[int, tuple]:
    """:func:`_edges_into_layer` of every layer, remembered for the last graph and edge scores.

    Prep aligns the mds and then the pca layout with the same scores; on ResNet-50 the selection
    (an argpartition over 40M link weights) is 1.5 s per layout, a SHA-1 of the scores 0.03 s.
    """
    global _edge_cache
    digest = None
    if edge_scores is not None:
        a = np.ascontiguousarray(edge_scores)
        digest = (hashlib.sha1(a, usedforsecurity=False).hexdigest(), a.dtype.str, a.shape)
    key = (digest, MAX_ALIGN_EDGES)
    cached = _edge_cache
    if cached is not None and cached[0]() is graph and cached[1] == key:
        return cached[2]
    edges = {li: _edges_into_layer(graph, li, edge_scores)
             for li, layer in enumerate(graph.layers) if layer.kind != "input" and layer.channels >= 2}
    _edge_cache = (weakref.ref(graph), key, edges)
    return edges


def align_layers(graph, pos: np.ndarray, edge_scores: Optional[np.ndarray], skip=()) -> np.ndarray:
    """Rotate/reflect each layer (in order) about its centre to shorten its weighted edges to earlier layers."""
    pos = pos.copy()
    edges = _alignment_edges(graph, edge_scores)
    for li, layer in enumerate(graph.layers):
        if layer.kind == "input" or li in skip or layer.channels < 2:
            continue
        tgt, src, w = edges[li]
        if len(w) == 0:
            continue
        r = best_rotation(pos[tgt], pos[src], w)
        sl = slice(layer.node_offset, layer.node_offset + layer.channels)
        pos[sl] = pos[sl] @ r.T
    return pos


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


def mds_embedding(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Full metric MDS up to :data:`LANDMARK_THRESHOLD` points, landmark MDS above."""
    if len(vectors) > LANDMARK_THRESHOLD:
        return landmark_mds(vectors, N_LANDMARKS, seed)
    return metric_mds(vectors)


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
