"""Prep stages for pictures: unit and edge feature visualizations (validated against real images)
and dataset exemplars. One file per layer, each written atomically, so a resumed run skips the
layers already done."""

from __future__ import annotations

import json

import numpy as np
from tqdm import tqdm

from viscnn.io import atomic_save_npy, atomic_write_text

VALIDATION_IMAGES = 2000  # real images the visualizations must beat


def _settings(ctx) -> dict:
    cfg = ctx.cfg
    pp = cfg["preprocess"]
    return {"size": tuple(pp["size"]), "steps": cfg["featurevis"]["steps"], "seed": cfg["run"]["seed"],
            "normalize": (pp["mean"], pp["std"]), "batch_size": 64, "device": cfg["run"]["device"]}


def _validation_positions(ctx, limit: int = VALIDATION_IMAGES) -> np.ndarray:
    """A fixed stride through the selection, so every class is represented."""
    return np.linspace(0, len(ctx.data) - 1, min(limit, len(ctx.data))).astype(np.int64)


def _unit_batches(ctx, positions: np.ndarray, batch_size: int = 250):
    for s in range(0, len(positions), batch_size):
        yield ctx.data.unit_batch(positions[s:s + batch_size])


def featurevis_stage(ctx) -> dict:
    from viscnn.featurevis.render import render_edges, render_layer
    from viscnn.featurevis.validate import validate

    kw = _settings(ctx)
    norm = kw["normalize"]
    done_key = json.dumps({k: v for k, v in kw.items() if k != "device"}, sort_keys=True, default=list)
    out = ctx.out / "featurevis"
    real = _validation_positions(ctx)
    beats, total = 0, 0
    edges = _top_incoming_edges(ctx, ctx.cfg["featurevis"]["edges_per_node"])
    steps = kw["steps"]
    bar = tqdm(total=(sum(l.channels for l in ctx.graph.conv_layers()) + len(edges)) * steps, desc="featurevis",
               unit="image-step", unit_scale=True)
    for layer in ctx.graph.conv_layers():
        meta = out / f"{layer.name}.json"
        if meta.is_file() and json.loads(meta.read_text()).get("key") == done_key and (out / f"{layer.name}.npy").is_file():
            d = json.loads(meta.read_text())
            beats, total = beats + sum(d["beats_real"]), total + len(d["beats_real"])
            bar.update(layer.channels * steps)
            continue
        res = validate(render_layer(ctx.model, layer.name, progress=bar, **kw), ctx.model, _unit_batches(ctx, real), norm)
        beats, total = beats + int(res.beats_real.sum()), total + len(res.beats_real)
        atomic_save_npy(out / f"{layer.name}.npy", res.images)
        atomic_write_text(meta, json.dumps(res.to_json() | {"key": done_key}))
    if len(edges):
        emeta = out / "edges.json"
        if not (emeta.is_file() and json.loads(emeta.read_text()).get("key") == done_key):
            g = ctx.graph
            triples = [(g.layers[int(g.edges[e, 0])].name, int(g.edges[e, 1]), int(g.edges[e, 2])) for e in edges]
            res = validate(render_edges(ctx.model, triples, graph=g, progress=bar, **kw), ctx.model,
                           _unit_batches(ctx, real), norm)
            atomic_save_npy(out / "edges.npy", res.images)
            atomic_write_text(emeta, json.dumps(res.to_json() | {"key": done_key, "edges": [int(e) for e in edges]}))
    bar.close()
    ctx.log(f"[featurevis] {beats}/{total} unit visualizations beat their best real image")
    return {"featurevis": {"layers": [l.name for l in ctx.graph.conv_layers()], "edges": int(len(edges)),
                           "units_beating_real": beats, "units": total}}


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
    """Crops of each unit's top-k images. The tables come from the scoring pass when it kept them
    (``scores/_exemplars``, see :mod:`viscnn.prep.scoring`); otherwise one forward pass finds them."""
    from viscnn.featurevis.exemplars import exemplar_crops, top_exemplars
    from viscnn.prep.scoring import load_exemplar_tables
    from viscnn.prep.stages import exemplar_tables_key
    from viscnn.receptive_field import ReceptiveFields

    k = ctx.cfg["exemplars"]["k"]
    pp = ctx.cfg["preprocess"]
    out = ctx.out / "exemplars"
    names = [l.name for l in ctx.graph.conv_layers()]
    tables_dir = ctx.out / "scores" / "_exemplars"
    top = load_exemplar_tables(tables_dir, exemplar_tables_key(ctx))
    if top is not None and set(top.tables) == set(names):
        ex = top.result()
        ctx.log("[exemplars] top-k tables from the scoring pass")
    else:
        everything = np.arange(len(ctx.data))
        bs = ctx.cfg["run"]["batch_size"]
        batches = tqdm(_unit_batches(ctx, everything, bs), total=-(-len(everything) // bs), desc="exemplars (top-k)", unit="batch")
        ex = top_exemplars(ctx.model, names, batches, k=k, normalize=(pp["mean"], pp["std"]), device=ctx.cfg["run"]["device"])
    rf = ReceptiveFields(ctx.model, tuple(pp["size"]), pp["channels"])
    source = lambda i: ctx.data.unit_batch([int(i)]).numpy()  # noqa: E731  (index -> [1, C, H, W])
    for name in tqdm(names, desc="exemplars (crops)", unit="layer"):
        crops = exemplar_crops(source, ex[name], rf, size=tuple(pp["size"]))
        atomic_save_npy(out / f"{name}.npy", crops)
        atomic_write_text(out / f"{name}.json", json.dumps(ex[name].to_json()))
    import shutil

    shutil.rmtree(tables_dir, ignore_errors=True)  # used: the exemplars folder now holds them
    return {"exemplars": {"k": k, "layers": names}}
