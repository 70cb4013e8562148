"""In-layer 2D node positions (the layer axis comes from the graph), as pure functions over arrays.

``mds``: nodes that matter for the same classes sit together. Each node's vector of per-class
importances is L2-normalised (so a node is placed by *which* classes it serves, not how much),
and each layer is embedded on its own with metric MDS (SMACOF started from classical MDS; landmark
MDS above :data:`LANDMARK_THRESHOLD` nodes keeps big layers affordable). ``pca``: the two principal
axes of the same vectors (= classical MDS). ``grid``: channel order on a square grid.

Every layer is centred and scaled to unit RMS radius. MDS and PCA layers are then rotated (and
possibly reflected) to shorten their important edges to earlier layers, so that wires between
adjacent layers run roughly straight. Input-image nodes get a small fixed arrangement.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np

from viscnn.errors import ViscnnError

LANDMARK_THRESHOLD = 1000  # layers with more nodes use landmark MDS
N_LANDMARKS = 500
EIGH_MIN_DIM = 200  # classical MDS of [n, d] vectors with min(n, d) above this: top-2 eigenproblem, not a full SVD
MAX_ALIGN_EDGES = 4000  # the rotation search looks at this many highest-scoring edges per layer
INPUT_RADIUS = 0.5


# -- per-layer vectors --------------------------------------------------------------------
def normalized_class_vectors(class_node_scores: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """float64 [len(nodes), n_classes]: each node's per-class importances, L2-normalised (zeros stay 0)."""
    v = np.asarray(class_node_scores, np.float64)[:, nodes].T
    v = np.where(np.isfinite(v), v, 0.0)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 1e-12)


def pairwise_distances(x: np.ndarray, y: Optional[np.ndarray] = None) -> np.ndarray:
    y = x if y is None else y
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.sqrt(np.maximum(d2, 0.0))


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
    out = np.subtract.outer(x[:, 0], x[:, 0], out=out)
    tmp = np.subtract.outer(x[:, 1], x[:, 1], out=tmp)
    np.multiply(out, out, out=out)
    np.multiply(tmp, tmp, out=tmp)
    np.add(out, tmp, out=out)
    return np.sqrt(out, out=out)


def smacof(d: np.ndarray, init: np.ndarray, max_iter: int = 300, eps: float = 1e-6) -> np.ndarray:
    """Metric SMACOF (stress majorisation, unit weights) of dissimilarities ``d`` from ``init``.

    Our own ~15 lines rather than scikit-learn's: its convergence rule changed between releases
    (1.7), which moved committed layouts; this one is fixed: stop when one Guttman transform lowers
    the raw stress by less than ``eps`` times its value. Tested against scikit-learn's at tight eps.
    The loop works in four preallocated n x n buffers (in-place ufuncs, same operations in the same
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
        # ratio = d / dist where dist > 1e-12, else 0; b = -ratio with row sums of ratio on the diagonal
        ratio.fill(0.0)
        np.greater(dist, 1e-12, out=mask)
        np.divide(d, dist, out=ratio, where=mask)
        rs = ratio.sum(1)
        b = np.negative(ratio, out=ratio)
        b[diag] += rs
        x = b @ x / n  # Guttman transform
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

    def dist_to(i: int) -> np.ndarray:  # == pairwise_distances(vectors, vectors[i:i + 1])[:, 0]
        return np.sqrt(np.maximum(sq + sq[i] - 2.0 * (vectors @ vectors[i:i + 1].T)[:, 0], 0.0))

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
    for _ in range(refine_iter):
        # Guttman update with fixed landmarks, unit weights: x <- mean_l (y_l + d_l (x - y_l) / |x - y_l|),
        # expanded so that only [n, L] matrices are formed
        dist = pairwise_distances(x, y)
        ratio = np.divide(d, dist, out=np.zeros_like(d), where=dist > 1e-9)
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
    """sum_e w_e |R_k t_e - s_e| for each candidate R_k, via two [K, E] products (no [K, E, 2] array)."""
    tx, ty = targets[:, 0], targets[:, 1]
    px = np.outer(cands[:, 0, 0], tx) + np.outer(cands[:, 0, 1], ty) - sources[:, 0]
    py = np.outer(cands[:, 1, 0], tx) + np.outer(cands[:, 1, 1], ty) - sources[:, 1]
    return np.sqrt(px * px + py * py) @ weights


def _link_rows(graph) -> Optional[np.ndarray]:
    """[n_layers + 1] row bounds of each layer's links in ``graph.links``, or None if not sorted by edge.

    ``Graph.links`` is built layer by layer in edge order, so each layer's links are one contiguous
    block: slicing it replaces a boolean mask over all links per layer (ResNet-50: 40M links x 55
    layers, 10 s per layout). Checked, not assumed; unsorted links fall back to the mask.
    """
    e = graph.links[:, 0]
    if len(e) > 1 and not np.all(e[1:] >= e[:-1]):
        return None
    return np.searchsorted(e, [l.edge_offset for l in graph.layers] + [graph.num_edges])


_AUTO = object()


def _edges_into_layer(graph, li: int, edge_scores: Optional[np.ndarray], rows=_AUTO):
    """(target node, source node, weight) of links from earlier layers into layer ``li``.

    ``rows``: :func:`_link_rows` of the graph (computed here when not given), to select the layer's links.
    """
    layer = graph.layers[li]
    links = graph.links
    lo, hi = layer.edge_offset, layer.edge_offset + layer.num_edges
    rows = _link_rows(graph) if rows is _AUTO else rows
    if rows is None:
        sel = links[(links[:, 0] >= lo) & (links[:, 0] < hi)]
    else:
        sel = links[rows[li]:rows[li + 1]]
    src = sel[:, 1].astype(np.int64)
    keep = graph.node_layer[src] < li
    if not keep.all():
        sel, src = sel[keep], src[keep]
    e = sel[:, 0]
    tgt = graph.edge_target[e].astype(np.int64)
    if edge_scores is None:
        w = np.ones(len(sel))
    else:
        # gather the layer's scores, then convert: not the whole [E] vector to float64 per layer
        w = np.abs(np.nan_to_num(np.asarray(edge_scores)[e].astype(np.float64)))
    if len(w) > MAX_ALIGN_EDGES:
        top = np.argpartition(-w, MAX_ALIGN_EDGES - 1)[:MAX_ALIGN_EDGES]
        tgt, src, w = tgt[top], src[top], w[top]
    return tgt, src, w


def align_layers(graph, pos: np.ndarray, edge_scores: Optional[np.ndarray], skip=()) -> np.ndarray:
    """Rotate/reflect each layer (in order) about its centre to shorten its weighted edges to earlier layers."""
    pos = pos.copy()
    rows = _link_rows(graph)
    for li, layer in enumerate(graph.layers):
        if layer.kind == "input" or li in skip or layer.channels < 2:
            continue
        tgt, src, w = _edges_into_layer(graph, li, edge_scores, rows)
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


def _embedded_layout(graph, class_node_scores, edge_scores, embed: Callable[[np.ndarray, int], np.ndarray],
                     seed: int, align: bool) -> np.ndarray:
    scores = _check(graph, class_node_scores, edge_scores)
    pos = np.zeros((graph.num_nodes, 2))
    for li, layer in enumerate(graph.layers):
        sl = slice(layer.node_offset, layer.node_offset + layer.channels)
        if layer.kind == "input":
            pos[sl] = input_positions(layer.channels)
            continue
        v = normalized_class_vectors(scores, np.arange(sl.start, sl.stop))
        p = normalize_positions(embed(v, seed + li)) if layer.channels > 1 else np.zeros((1, 2))
        if layer.channels > 1 and not np.any(p):  # identical vectors (e.g. all zero): nothing to show
            p = grid_positions(layer.channels)
        pos[sl] = p
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
