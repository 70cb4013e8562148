"""Side by side: the same analysis at two input sizes (224 vs 225) or for two models.

Layers are paired by module path (two trainings of one architecture); when the two models share
no conv name they are paired by position in forward order. Mean maps of a pair can differ in
size (224 -> 112, 225 -> 113): B is then resized to A's spatial size with bilinear interpolation
(``align_corners=False``), and the difference is ``A - resize(B)``. A, resized B and the
difference are drawn on one symmetric colour scale per layer, the largest ``|value|`` of the
three, so equal colours mean equal values within a row.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def resize_to(b: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=False) of a 2D map to ``shape``; a copy when already there."""
    b = np.asarray(b, np.float64)
    if tuple(b.shape) == tuple(shape):
        return b.copy()
    t = torch.from_numpy(b)[None, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def diff_map(a: np.ndarray, b: np.ndarray) -> Dict[str, object]:
    """``{"a", "b_resized", "diff", "resized", "limit", "max_abs_diff", "mean_abs_diff"}``."""
    a = np.asarray(a, np.float64)
    br = resize_to(b, a.shape)
    d = a - br
    lim = float(max(np.abs(a).max(initial=0), np.abs(br).max(initial=0), np.abs(d).max(initial=0)))
    return {"a": a, "b_resized": br, "diff": d, "resized": tuple(np.shape(b)) != a.shape,
            "limit": lim if lim > 1e-12 else 1.0, "max_abs_diff": float(np.abs(d).max(initial=0)),
            "mean_abs_diff": float(np.abs(d).mean()) if d.size else 0.0}


def pair_layers(names_a: Sequence[str], names_b: Sequence[str]) -> List[Tuple[str, str]]:
    """(layer of A, layer of B) pairs: by name where the two share names, else by position."""
    common = set(names_b)
    pairs = [(n, n) for n in names_a if n in common]
    return pairs if pairs else list(zip(names_a, names_b))


def compare_mean_maps(maps_a: Sequence, maps_b: Sequence) -> List[dict]:
    """One row per paired layer: both sizes, the maps, the difference and its statistics."""
    by_b = {m.layer: m for m in maps_b}
    by_a = {m.layer: m for m in maps_a}
    rows = []
    for la, lb in pair_layers([m.layer for m in maps_a], [m.layer for m in maps_b]):
        ma, mb = by_a[la], by_b[lb]
        r = diff_map(ma.map, mb.map)
        r.update({"layer": la, "layer_b": lb, "size_a": list(ma.size), "size_b": list(mb.size),
                  "channels_a": ma.channels, "channels_b": mb.channels})
        rows.append(r)
    return rows


def compare_patches(pa: Sequence, pb: Sequence) -> List[dict]:
    """Asymmetry of the mean patch and mean kernel of each paired conv, A beside B."""
    from viscnn.artifacts.patches import asymmetry

    by_a, by_b = {p.layer: p for p in pa}, {p.layer: p for p in pb}
    out = []
    for la, lb in pair_layers([p.layer for p in pa], [p.layer for p in pb]):
        a, b = by_a[la], by_b[lb]
        out.append({"layer": la, "layer_b": lb, "downsampling": a.downsampling or b.downsampling,
                    "patch_asymmetry": [asymmetry(a.patch), asymmetry(b.patch)],
                    "kernel_asymmetry": [asymmetry(a.kernel), asymmetry(b.kernel)]})
    return out


def compare_padding(ra: dict, rb: dict) -> List[dict]:
    """Unused padding and unread rows of each audited layer, A beside B (by name)."""
    by_b = {e["layer"]: e for e in rb["padding"]}
    out = []
    for e in ra["padding"]:
        f = by_b.get(e["layer"])
        out.append({"layer": e["layer"], "unused_pad": [e["unused_pad"], f["unused_pad"] if f else None],
                    "unread": [e["unread"], f["unread"] if f else None]})
    return out


def rows_to_json(rows: Sequence[dict], digits: int = 6) -> List[dict]:
    """Comparison rows with the arrays as rounded nested lists."""
    from viscnn.artifacts.mean_maps import _round

    out = []
    for r in rows:
        out.append({k: (_round(v, digits) if isinstance(v, np.ndarray) else v) for k, v in r.items()})
    return out
