"""Prep stages for pictures: unit and edge feature visualizations (validated against real images)
and dataset exemplars. One file per layer, each written atomically, so a resumed run skips the
layers already done; within a layer (and the edges) every rendered batch is kept under
``featurevis/_partial/`` until the layer is written, so Ctrl-C loses at most one batch."""

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


def featurevis_layers(ctx) -> list:
    """The conv layers to visualize: ``featurevis.layers``, or all of them when it is empty."""
    convs = ctx.graph.conv_layers()
    want = ctx.cfg["featurevis"]["layers"]
    if not want:
        return convs
    names = {l.name for l in convs}
    bad = [w for w in want if w not in names]
    if bad:
        from viscnn.errors import ViscnnError

        raise ViscnnError(f"bad config value for featurevis.layers: {bad} are not conv layers; conv layers: "
                          f"{', '.join(l.name for l in convs)}")
    return [l for l in convs if l.name in set(want)]


def _render_resumable(ctx, render_fn, objectives: list, part_dir, done_key: str, bs: int, bar, steps: int):
    """``render_fn(chunk)`` over chunks of ``bs`` objectives, each chunk saved under ``part_dir`` as it
    finishes, so an interrupted run redoes at most one chunk. Each image depends only on its own
    objective and the seed (see :mod:`viscnn.featurevis.render`), so the chunks equal one call."""
    import shutil

    from viscnn.featurevis.render import FeatureVisResult

    parts = []
    for b, s0 in enumerate(range(0, len(objectives), bs)):
        chunk = objectives[s0:s0 + bs]
        meta, arr = part_dir / f"{b:05d}.json", part_dir / f"{b:05d}.npy"
        if meta.is_file() and arr.is_file():
            d = json.loads(meta.read_text())
            if d.get("key") == done_key and d.get("objectives") == [str(o) for o in chunk]:
                parts.append(FeatureVisResult(d["objectives"], np.load(arr), np.asarray(d["objective"], np.float32),
                                              np.asarray(d["start"], np.float32), settings=d["settings"]))
                bar.update(len(chunk) * steps)
                continue
        res = render_fn(chunk)
        atomic_save_npy(arr, res.images)
        atomic_write_text(meta, json.dumps(res.to_json() | {"key": done_key}))
        parts.append(res)
    res = FeatureVisResult(sum((r.objectives for r in parts), []), np.concatenate([r.images for r in parts]),
                           np.concatenate([r.objective for r in parts]), np.concatenate([r.start for r in parts]),
                           settings=parts[0].settings)
    return res, lambda: shutil.rmtree(part_dir, ignore_errors=True)


def featurevis_stage(ctx) -> dict:
    from viscnn.featurevis.objectives import channel, edge
    from viscnn.featurevis.render import render
    from viscnn.featurevis.validate import validate

    kw = _settings(ctx)
    norm = kw["normalize"]
    done_key = json.dumps({k: v for k, v in kw.items() if k != "device"}, sort_keys=True, default=list)
    out = ctx.out / "featurevis"
    real = _validation_positions(ctx)
    beats, total = 0, 0
    layers = featurevis_layers(ctx)
    edges = _top_incoming_edges(ctx, ctx.cfg["featurevis"]["edges_per_node"], layers)
    steps = kw["steps"]
    bar = tqdm(total=(sum(l.channels for l in layers) + len(edges)) * steps, desc="featurevis",
               unit="image-step", unit_scale=True)
    draw = lambda objs: render(ctx.model, objs, progress=bar, **kw)  # noqa: E731
    for layer in layers:
        meta = out / f"{layer.name}.json"
        if meta.is_file() and json.loads(meta.read_text()).get("key") == done_key and (out / f"{layer.name}.npy").is_file():
            d = json.loads(meta.read_text())
            beats, total = beats + sum(d["beats_real"]), total + len(d["beats_real"])
            bar.update(layer.channels * steps)
            continue
        objs = [channel(layer.name, c) for c in range(layer.channels)]
        res, cleanup = _render_resumable(ctx, draw, objs, out / "_partial" / layer.name, done_key, kw["batch_size"], bar, steps)
        res = validate(res, ctx.model, _unit_batches(ctx, real), norm)
        beats, total = beats + int(res.beats_real.sum()), total + len(res.beats_real)
        atomic_save_npy(out / f"{layer.name}.npy", res.images)
        atomic_write_text(meta, json.dumps(res.to_json() | {"key": done_key}))
        cleanup()
    if len(edges):
        emeta = out / "edges.json"
        ekey = json.dumps([done_key, [int(e) for e in edges]])
        if not (emeta.is_file() and json.loads(emeta.read_text()).get("key") in (done_key, ekey)
                and json.loads(emeta.read_text()).get("edges") == [int(e) for e in edges]):
            g = ctx.graph
            triples = [(g.layers[int(g.edges[e, 0])].name, int(g.edges[e, 1]), int(g.edges[e, 2])) for e in edges]
            for l, j, i in triples:
                g.edge_index(l, j, i)
            objs = [edge(l, j, i, None) for l, j, i in triples]
            res, cleanup = _render_resumable(ctx, draw, objs, out / "_partial" / "_edges", ekey, kw["batch_size"], bar, steps)
            res = validate(res, ctx.model, _unit_batches(ctx, real), norm)
            atomic_save_npy(out / "edges.npy", res.images)
            atomic_write_text(emeta, json.dumps(res.to_json() | {"key": ekey, "edges": [int(e) for e in edges]}))
            cleanup()
    bar.close()
    import shutil

    shutil.rmtree(out / "_partial", ignore_errors=True)
    ctx.log(f"[featurevis] {beats}/{total} unit visualizations beat their best real image")
    return {"featurevis": {"layers": [l.name for l in layers], "edges": int(len(edges)),
                           "units_beating_real": beats, "units": total}}


def _top_incoming_edges(ctx, k: int, layers=None) -> np.ndarray:
    """The ``k`` most important incoming kernels of every conv node (overall taylor score)."""
    if k <= 0:
        return np.zeros(0, np.int64)
    metric = "taylor" if "taylor" in ctx.cfg["run"]["metrics"] else ctx.cfg["run"]["metrics"][0]
    scores = np.abs(np.load(ctx.out / "scores" / metric / "edges.npy", mmap_mode="r")[-1])
    g = ctx.graph
    picked = []
    for layer in layers if layers is not None else g.conv_layers():
        per = layer.in_channels // layer.groups
        s = np.asarray(scores[layer.edge_offset:layer.edge_offset + layer.num_edges]).reshape(layer.channels, per)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        picked.append(layer.edge_offset + (np.arange(layer.channels)[:, None] * per + top).ravel())
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


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
