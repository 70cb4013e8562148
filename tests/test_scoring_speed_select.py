"""The sampled threshold of :func:`viscnn.importance.sparse_scores.select_layer` (an odd-stride sample,
a second lower threshold when the first leaves fewer than the cap) against the full stable argsort."""

import numpy as np
import pytest

from viscnn.importance import sparse_scores as S
from test_sparse_select import reference_select


def rows(n: int, rng):
    """Rows a sampled threshold can misjudge: an [out, in] weight layout with a few input channels dead
    (those a power-of-two stride samples), the sampled positions boosted (the second threshold at 2^16
    edges, the all-nonzero fallback at 2^20), mildly boosted, half zero, plain random."""
    base = (rng.standard_normal(n) ** 3).astype(np.float32)
    step = max(1, n // 16384) | 1
    dead = base.reshape(-1, 512).copy()
    dead[:, ::64] = 0
    boosted = base.copy()
    boosted[::step] *= 50
    mild = np.abs(base)
    mild[::step] = np.maximum(mild[::step], np.quantile(mild, 0.97))
    halfzero = base * (rng.random(n) < 0.5)
    return {"random": base, "dead channels": dead.reshape(-1), "boosted sample": boosted, "mild boost": mild, "half zero": halfzero}


@pytest.mark.parametrize("n", [1 << 16, 1 << 20])
def test_sampled_threshold_selects_the_reference_edges(n):
    rng = np.random.default_rng(n)
    for name, seg in rows(n, rng).items():
        for mass, mn, mf in ((0.999, 256, 0.015), (0.5, 16, 0.01)):
            o, tot, full = S.select_layer(seg, mass, mn, mf)
            ro, rtot, rfull = reference_select(seg, mass, mn, mf)
            np.testing.assert_array_equal(o, ro, err_msg=f"{name} n={n} mass={mass}")
            assert tot == rtot and full == rfull, name
