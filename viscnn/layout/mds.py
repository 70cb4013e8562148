"""2D embeddings of one layer's vectors: classical, metric (SMACOF) and landmark MDS, and their stress."""

from __future__ import annotations

from typing import Optional

import numpy as np

LANDMARK_THRESHOLD = 1000  # layers with more nodes use landmark MDS
N_LANDMARKS = 500
EIGH_MIN_DIM = 200  # classical MDS of [n, d] vectors with min(n, d) above this: top-2 eigenproblem, not a full SVD
MAX_GRAM_NODES = 4096  # landmark sampling of wider vectors uses an n x n Gram matrix up to this many nodes


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


def mds_embedding(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Full metric MDS up to :data:`LANDMARK_THRESHOLD` points, landmark MDS above."""
    if len(vectors) > LANDMARK_THRESHOLD:
        return landmark_mds(vectors, N_LANDMARKS, seed)
    return metric_mds(vectors)
