"""The per-layer selection of sparse rows (viscnn.importance.sparse_scores) against slow, obviously right
references: a full stable argsort of |score|, and the previous implementation (int64 keys of every
candidate, partitioned). Random rows with many ties and zeros, layers small and past the sampling size."""

import numpy as np
import pytest

from viscnn.importance import sparse_scores as S


def reference_select(seg, mass, min_per_layer, max_fraction):
    """The rule as stated: the first of a stable descending sort of |score| (ties by index)."""
    s = np.abs(np.asarray(seg, np.float32))
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), 0.0, True
    tot = float(s.sum(dtype=np.float64))
    cap = max(min_per_layer, int(np.ceil(max_fraction * n)))
    order = np.argsort(-s, kind="stable")
    nz = order[s[order] > 0]
    if nz.shape[0] <= cap:
        return nz, tot, True
    top = nz[:cap]
    cum = np.cumsum(s[top].astype(np.float64))
    need = int(np.searchsorted(cum, mass * tot - 1e-12 * tot, "left")) + 1
    return top[:min(max(need, min_per_layer), cap)], tot, False


def previous_select(seg, mass, min_per_layer, max_fraction):
    """The implementation before the float32-partition one (commit 00eda94), kept as a second reference."""
    s = np.abs(np.asarray(seg, np.float32))
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), 0.0, True
    tot = float(s.sum(dtype=np.float64))
    cap = max(min_per_layer, int(np.ceil(max_fraction * n)))
    cand, nnz = None, None
    if n > 65536 and 16 * cap < n:
        sample = s[::max(1, n // 16384)]
        r = min(sample.shape[0], max(1, int(sample.shape[0] * (1.0 - 1.5 * cap / n))))
        thr = np.partition(sample, r - 1)[r - 1]
        cand = np.flatnonzero(s > thr)
        if thr <= 0:
            nnz = cand.shape[0]
        elif cand.shape[0] < cap:
            cand = None
        elif cand.shape[0] == cap:
            nnz = int(np.count_nonzero(s))
        else:
            nnz = cap + 1
    if cand is None:
        cand = np.flatnonzero(s)
        nnz = cand.shape[0]
    k = min(cap, nnz)
    keys = ((0x7FFFFFFF - s[cand].view(np.int32).astype(np.int64)) << 32) | cand.astype(np.int64)
    if k < keys.shape[0]:
        keys = np.partition(keys, k - 1)[:k] if k > 0 else keys[:0]
    keys.sort()
    top = keys & 0xFFFFFFFF
    if nnz <= cap:
        return top, tot, True
    cum = np.cumsum(s[top].astype(np.float64))
    need = int(np.searchsorted(cum, mass * tot - 1e-12 * tot, "left")) + 1
    return top[:min(max(need, min_per_layer), cap)].astype(np.int64), tot, False


def rows(rng):
    """Signed float32 layers: continuous, heavy ties (few distinct values), mostly zeros, all zero,
    constant, tiny; sizes around the sampling threshold and the caps."""
    for n in (0, 1, 7, 300, 4096, 4097, 9000, 70000, 300000):
        yield n, (rng.standard_normal(n) * rng.lognormal(0, 2, n)).astype(np.float32)
        yield n, rng.integers(-3, 4, n).astype(np.float32)  # ties and zeros everywhere
        v = np.zeros(n, np.float32)
        nz = rng.choice(n, size=min(n, rng.integers(0, 600)), replace=False) if n else []
        v[nz] = rng.choice([1.0, 2.0, 0.5], len(nz))
        yield n, v  # mostly zeros: fewer nonzero than the cap (or not)
        yield n, np.zeros(n, np.float32)
        yield n, np.full(n, -0.25, np.float32)
        yield n, (rng.random(n) < 0.5).astype(np.float32) * np.float32(1e-30)


PARAMS = [(0.999, 256, 0.015), (0.5, 16, 0.05), (0.9, 8, 0.1), (1.0, 1, 0.5), (0.3, 0, 0.001)]


@pytest.mark.parametrize("params", PARAMS)
def test_select_layer_equals_the_references(params):
    rng = np.random.default_rng(sum(int(p * 1000) for p in params))
    for n, seg in rows(rng):
        got = S.select_layer(seg, *params)
        for ref in (reference_select(seg, *params), previous_select(seg, *params)):
            np.testing.assert_array_equal(got[0], ref[0], err_msg=f"n={n} {params}")
            assert got[0].dtype == np.int64
            assert got[1] == ref[1] and got[2] == ref[2]


def test_row_parts_nonneg_and_threaded_equal_the_plain_path():
    rng = np.random.default_rng(3)
    segs = [seg for n, seg in rows(rng) if n == 70000]
    segs = np.stack([np.abs(s) for s in segs])
    params = dict(mass=0.999, min_per_layer=256, max_fraction=0.015)
    plain, fast = [S.RowParts() for _ in segs], [S.RowParts() for _ in segs]
    for p, s in zip(plain, segs):
        p.add(10, s, **params)
    S.add_rows(fast, 10, segs, **params, nonneg=True)
    for p, f, s in zip(plain, fast, segs):
        a, b = p.row(), f.row()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        ref = reference_select(s, **params)
        np.testing.assert_array_equal(a["index"], 10 + ref[0])
        np.testing.assert_array_equal(a["value"], s[ref[0]])


def test_nan_and_inf_are_stored_as_nan_to_num():
    seg = np.array([1.0, np.nan, -np.inf, 3.0, 0.0, -2.0], np.float32)
    p = S.RowParts()
    p.add(0, seg, 1.0, 1, 1.0)
    r = p.row()
    want = np.nan_to_num(seg)
    ref = reference_select(want, 1.0, 1, 1.0)
    np.testing.assert_array_equal(r["index"], ref[0])
    np.testing.assert_array_equal(r["value"], want[ref[0]])
    assert r["totals"][0] == ref[1] and np.isfinite(r["totals"][0])


def test_ranking_of_dense_float32_equals_a_stable_argsort():
    from types import SimpleNamespace

    rng = np.random.default_rng(5)
    sizes = [0, 5, 4097, 30000, 1000]
    layers, off = [], 0
    for n in sizes:
        layers.append(SimpleNamespace(edge_offset=off, num_edges=n, kind="conv" if n else "input"))
        off += n
    graph = SimpleNamespace(layers=layers, num_edges=off)
    x = rng.integers(-4, 5, off).astype(np.float32) * rng.choice([1.0, 0.5], off).astype(np.float32)
    x[3] = np.nan
    got = S.ranking_of_dense(graph, x)
    old = S.ranking_of_dense(graph, x.astype(np.float64))  # the float64 path: the previous code
    np.testing.assert_array_equal(got, old)
    s = np.abs(np.nan_to_num(x.astype(np.float64)))
    want = np.concatenate([a + np.argsort(-s[a:b], kind="stable")[:np.count_nonzero(s[a:b])] for a, b in S.layer_bounds(graph)])
    np.testing.assert_array_equal(got, want)
