"""The scoring stage: one pass over the dataset, per-image scores for the ``loss`` target
scatter-added into per-class rows plus an ``all`` row, in float64.

When the exemplars stage is configured, the same pass also keeps every conv unit's top-k images
(:class:`~viscnn.featurevis.exemplars.TopK`, from the conv outputs the scorer already computed),
so exemplars cost no second forward pass over the dataset; the tables are checkpointed with the
sums, merged across ranks, and left in ``scores/_exemplars`` for the exemplars stage.

The same pass also scores the own-class logit (:mod:`viscnn.prep.own_class`, one extra
forward+backward per batch) for the target-dependent metrics; its sums are kept under the keys
``class.METRIC`` next to the loss sums (same rows, same checkpoints, same all-reduce), and their class
rows are ``class:K`` over the images of K.

Resumable: the running sums are checkpointed atomically (plain .npy + a JSON cursor) every few
seconds; a rerun continues after the last checkpointed batch and adds the remaining batches in
the same order, so the result is bit-identical to an uninterrupted run. Distributed: batch b goes
to rank b % world, and the per-rank sums are all-reduced at the end.
"""

from __future__ import annotations

import json
import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from viscnn.io import atomic_save_npy, atomic_write_text

import os

CHECKPOINT_SECONDS = float(os.environ.get("VISCNN_CHECKPOINT_SECONDS", "5"))
_TEST_DELAY = float(os.environ.get("VISCNN_TEST_BATCH_DELAY", "0"))  # lets the kill-and-resume test land mid-run


def score_dataset(ctx) -> Tuple[Dict[str, Tuple[np.ndarray, np.ndarray]], np.ndarray, Optional["TopK"]]:
    """Per-set mean scores {metric: (nodes [S, N], edges [S, E])} (the own-class ones under
    ``class.METRIC``), image counts [S], and the conv units' top-k exemplar tables (None unless the
    exemplars stage is still to run)."""
    from tqdm import tqdm

    from viscnn.importance.accumulate import class_membership
    from viscnn.importance.prep_api import BatchScorer

    cfg, graph, data = ctx.cfg, ctx.graph, ctx.data
    metrics = list(cfg["run"]["metrics"])
    n_sets = len(data.classes) + 1
    bs = cfg["run"]["batch_size"]
    device = torch.device(cfg["run"]["device"])
    part = ctx.out / "scores" / "_partial" / f"rank{ctx.rank}of{ctx.world}"
    from viscnn.prep.stages import stage_hash

    from viscnn.prep.own_class import OwnClassTarget, class_score_metrics

    k_ex = cfg["exemplars"]["k"] if _exemplars_to_run(ctx) else 0
    key = stage_hash(cfg, "scores") + f":{bs}" + (f":exemplars{k_ex}" if k_ex else "")
    conv_channels = {l.name: l.channels for l in graph.conv_layers()}
    own_metrics = class_score_metrics(cfg)
    keys = metrics + [OWN + m for m in own_metrics]
    sums, counts, cursor, top = _load_partial(part, keys, n_sets, graph, key, k_ex, conv_channels)
    scorer = BatchScorer(ctx.model, graph, metrics, device=device)
    own = BatchScorer(ctx.model, graph, own_metrics, device=device, target=OwnClassTarget()) if own_metrics else None
    membership = class_membership(len(data.classes))
    total = data.num_batches(bs)
    mine = [b for b in range(total) if b % ctx.world == ctx.rank]
    todo = [b for b in mine if b > cursor]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"scores (rank {ctx.rank})" if ctx.world > 1 else "scores",
               unit="batch", disable=ctx.rank != 0)
    last_save = time.time()
    for b in todo:
        start = b * bs
        x, y = data.batch(range(start, min(start + bs, len(data))))
        per_image = scorer(x.to(device), y.to(device))  # {metric: (nodes [B, N], edges [B, E])}
        if top is not None:
            outs = scorer.last_outputs
            for layer in conv_channels:
                top.add(layer, outs[layer], start)
        member = membership(x, y).T.double().numpy()  # [sets, images]: its class row and the "all" row
        _add(sums, per_image, member, "")
        if own is not None:  # one more backward: every image's own-class logit
            del per_image
            _add(sums, own(x.to(device), y.to(device)), member, OWN)
        counts += member.sum(1).astype(np.int64)
        cursor = b
        bar.update(1)
        if _TEST_DELAY:
            time.sleep(_TEST_DELAY)
        if time.time() - last_save > CHECKPOINT_SECONDS:
            _save_partial(part, sums, counts, cursor, key, top)
            last_save = time.time()
    bar.close()
    _save_partial(part, sums, counts, cursor, key, top)
    if ctx.world > 1:
        sums, counts = _all_reduce(sums, counts)
        top = _all_gather_top(top) if top is not None else None
    safe = np.maximum(counts, 1)[:, None]
    means = {m: (s[0] / safe, s[1] / safe) for m, s in sums.items()}
    return means, counts, top


OWN = "class."  # the key prefix of the own-class sums


def _add(sums, per_image, member, prefix: str) -> None:
    """Per-set sums as one float64 matmul per array (np.add.at is slow)."""
    for m, (pn, pe) in per_image.items():
        sums[prefix + m][0][...] += member @ pn.double().cpu().numpy()
        sums[prefix + m][1][...] += member @ pe.double().cpu().numpy()


def _exemplars_to_run(ctx) -> bool:
    """Whether the exemplars stage will run after this pass (rerunning scores alone must not leave
    top-k tables behind that no stage consumes)."""
    from viscnn.prep.stages import outputs_exist, stage_hash

    if "exemplars" not in ctx.cfg["run"]["stages"]:
        return False
    return not (ctx.manifest.done("exemplars", stage_hash(ctx.cfg, "exemplars")) and outputs_exist(ctx, "exemplars"))


def save_exemplar_tables(folder, top, key: str) -> None:
    """The scoring pass's top-k tables for the exemplars stage (arrays first, then the key)."""
    top.save(folder)
    atomic_write_text(folder / "key.json", json.dumps({"key": key, "k": top.k, "layers": list(top.tables)}))


def load_exemplar_tables(folder, key: str):
    """The tables saved by :func:`save_exemplar_tables` under ``key``, or None."""
    from viscnn.featurevis.exemplars import TopK

    meta = folder / "key.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    if info.get("key") != key:
        return None
    return TopK.load(folder, info["k"], info["layers"])


def _zeros(metrics, n_sets, graph):
    return {m: (np.zeros((n_sets, graph.num_nodes)), np.zeros((n_sets, graph.num_edges))) for m in metrics}


def _load_partial(part, metrics, n_sets, graph, key, k_ex, conv_channels):
    from viscnn.featurevis.exemplars import TopK

    sums, counts, cursor = _zeros(metrics, n_sets, graph), np.zeros(n_sets, np.int64), -1
    top = TopK(k_ex, conv_channels) if k_ex else None
    if not (part / "cursor.json").is_file():  # killed between the two renames of _save_partial
        part = part.parent / (part.name + ".old")
    meta = part / "cursor.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("key") == key and info.get("metrics") == metrics and info.get("shape") == [n_sets, graph.num_nodes, graph.num_edges]:
            for m in metrics:
                sums[m] = (np.load(part / f"{m}.nodes.npy"), np.load(part / f"{m}.edges.npy"))
            counts = np.load(part / "counts.npy")
            cursor = info["cursor"]
            if top is not None:
                top = TopK.load(part, k_ex, conv_channels, prefix="exemplars.")
    return sums, counts, cursor, top


def _save_partial(part, sums, counts, cursor, key, top=None):
    # A checkpoint is a folder of arrays + cursor; write a fresh one, then switch folders by
    # rename, so a kill at any point leaves one complete checkpoint (``part`` or ``part.old``).
    gen = part.parent / (part.name + ".next")
    for m, (n, e) in sums.items():
        atomic_save_npy(gen / f"{m}.nodes.npy", n)
        atomic_save_npy(gen / f"{m}.edges.npy", e)
    atomic_save_npy(gen / "counts.npy", counts)
    if top is not None:
        top.save(gen, prefix="exemplars.")
    atomic_write_text(gen / "cursor.json", json.dumps({"key": key, "cursor": cursor, "metrics": list(sums),
                                                       "shape": [len(counts), *[a.shape[1] for a in next(iter(sums.values()))]]}))
    old = part.parent / (part.name + ".old")
    if part.exists():
        if old.exists():
            import shutil

            shutil.rmtree(old)
        part.rename(old)
    gen.rename(part)
    if old.exists():
        import shutil

        shutil.rmtree(old)


def _all_reduce(sums, counts):
    import torch.distributed as dist

    out = {}
    for m, (n, e) in sums.items():
        tn, te = torch.from_numpy(n), torch.from_numpy(e)
        dist.all_reduce(tn)
        dist.all_reduce(te)
        out[m] = (tn.numpy(), te.numpy())
    tc = torch.from_numpy(counts)
    dist.all_reduce(tc)
    return out, tc.numpy()


def _all_gather_top(top):
    """Every rank's top-k tables merged (the merge is order-independent, so all ranks agree)."""
    from viscnn.featurevis.exemplars import TopK

    mine = top.to_arrays()
    merged = TopK(top.k)
    for rank_arrays in zip(*[_all_gather(torch.from_numpy(np.ascontiguousarray(a))) for a in mine.values()]):
        merged.merge(TopK.from_arrays(top.k, {k: t.numpy() for k, t in zip(mine, rank_arrays)}))
    return merged


def _all_gather(t):
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return parts
