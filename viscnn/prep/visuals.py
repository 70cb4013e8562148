"""Prep stages for pictures: unit and edge feature visualizations (validated against real images)
and dataset exemplars. One file per layer, each written atomically, so a resumed run skips the
layers already done."""

from __future__ import annotations

import json

import numpy as np

from viscnn.io import atomic_save_npy, atomic_write_text

VALIDATION_IMAGES = 2000  # real images the visualizations must beat


def _settings(ctx) -> dict:
    cfg = ctx.cfg
    pp = cfg["preprocess"]
    return {"size": tuple(pp["size"]), "steps": cfg["featurevis"]["steps"], "seed": cfg["run"]["seed"],
            "normalize": (pp["mean"], pp["std"]), "batch_size": 64, "device": cfg["run"]["device"]}


def _real_batches(ctx, limit: int = VALIDATION_IMAGES, batch_size: int = 250):
    n = min(limit, len(ctx.data))
    # a fixed stride through the selection covers every class
    pos = np.linspace(0, len(ctx.data) - 1, n).astype(np.int64)
    for s in range(0, n, batch_size):
        yield ctx.data.batch(pos[s:s + batch_size])


def featurevis_stage(ctx) -> dict:
    from viscnn.featurevis.render import render_edges, render_layer

    validate = _validator()
    kw = _settings(ctx)
    done_key = json.dumps({k: v for k, v in kw.items() if k != "device"}, sort_keys=True, default=list)
    out = ctx.out / "featurevis"
    for layer in ctx.graph.conv_layers():
        meta = out / f"{layer.name}.json"
        if meta.is_file() and json.loads(meta.read_text()).get("key") == done_key and (out / f"{layer.name}.npy").is_file():
            continue
        ctx.log(f"[featurevis] {layer.name}: {layer.channels} units")
        res = render_layer(ctx.model, layer.name, **kw)
        if validate is not None:
            res = validate(ctx.model, res, _real_batches(ctx))
        atomic_save_npy(out / f"{layer.name}.npy", res.images)
        atomic_write_text(meta, json.dumps(res.to_json() | {"key": done_key}))
    edges = _top_incoming_edges(ctx, ctx.cfg["featurevis"]["edges_per_node"])
    if len(edges):
        emeta = out / "edges.json"
        if not (emeta.is_file() and json.loads(emeta.read_text()).get("key") == done_key):
            ctx.log(f"[featurevis] {len(edges)} edges")
            g = ctx.graph
            triples = [(g.layers[int(g.edges[e, 0])].name, int(g.edges[e, 1]), int(g.edges[e, 2])) for e in edges]
            res = render_edges(ctx.model, triples, graph=g, **kw)
            atomic_save_npy(out / "edges.npy", res.images)
            atomic_write_text(emeta, json.dumps(res.to_json() | {"key": done_key, "edges": [int(e) for e in edges]}))
    return {"featurevis": {"layers": [l.name for l in ctx.graph.conv_layers()], "edges": int(len(edges))}}


def _validator():
    try:
        from viscnn.featurevis.validate import validate
    except ImportError:
        return None
    return validate


def _top_incoming_edges(ctx, k: int) -> np.ndarray:
    """The ``k`` most important incoming kernels of every conv node (overall taylor score)."""
    if k <= 0:
        return np.zeros(0, np.int64)
    metric = "taylor" if "taylor" in ctx.cfg["run"]["metrics"] else ctx.cfg["run"]["metrics"][0]
    scores = np.abs(np.load(ctx.out / "scores" / metric / "edges.npy", mmap_mode="r")[-1])
    g = ctx.graph
    picked = []
    for layer in g.conv_layers():
        per = layer.in_channels // layer.groups
        s = np.asarray(scores[layer.edge_offset:layer.edge_offset + layer.num_edges]).reshape(layer.channels, per)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        picked.append(layer.edge_offset + (np.arange(layer.channels)[:, None] * per + top).ravel())
    return np.sort(np.concatenate(picked))


def exemplars_stage(ctx) -> dict:
    from viscnn.featurevis.exemplars import layer_exemplars

    k = ctx.cfg["exemplars"]["k"]
    out = ctx.out / "exemplars"
    names = [l.name for l in ctx.graph.conv_layers()]
    result = layer_exemplars(ctx.model, names, ctx.data, k=k, batch_size=ctx.cfg["run"]["batch_size"])
    for name, (crops, meta) in result.items():
        atomic_save_npy(out / f"{name}.npy", crops)
        atomic_write_text(out / f"{name}.json", json.dumps(meta))
    return {"exemplars": {"k": k, "layers": names}}
