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

from viscnn.io import atomic_write_text

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

    from viscnn.prep.scoring_sparse import kernel_score

    batch_crit = kernel_score(cfg, sparse=False) == "batch"
    k_ex = cfg["exemplars"]["k"] if _exemplars_to_run(ctx) else 0
    key = stage_hash(cfg, "scores") + f":{bs}" + (f":exemplars{k_ex}" if k_ex else "") + (":batch" if batch_crit else "")
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
        member = membership(x, y).T.double().numpy()  # [sets, images]: its class row and the "all" row
        if batch_crit:  # signed per-class sums; |.| and the "all" row once every batch is in (_finish_batch)
            _add_groups(sums, scorer.scorer, x.to(device), y.to(device), graph, "")
            outs = scorer.scorer.last_outputs
            if own is not None:
                _add_groups(sums, own.scorer, x.to(device), y.to(device), graph, OWN)
        else:
            per_image = scorer(x.to(device), y.to(device))  # {metric: (nodes [B, N], edges [B, E])}
            outs = scorer.last_outputs
            _add(sums, per_image, member, "")
            if own is not None:  # one more backward: every image's own-class logit
                del per_image
                _add(sums, own(x.to(device), y.to(device)), member, OWN)
        if top is not None:
            for layer in conv_channels:
                top.add(layer, outs[layer], start)
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
    if batch_crit:
        _finish_batch(sums)
    safe = np.maximum(counts, 1)[:, None]
    means = {m: (s[0] / safe, s[1] / safe) for m, s in sums.items()}
    return means, counts, top


OWN = "class."  # the key prefix of the own-class sums


def _add(sums, per_image, member, prefix: str) -> None:
    """Per-set sums as one float64 matmul per array (np.add.at is slow)."""
    for m, (pn, pe) in per_image.items():
        sums[prefix + m][0][...] += member @ pn.double().cpu().numpy()
        sums[prefix + m][1][...] += member @ pe.double().cpu().numpy()


def _add_groups(sums, scorer, x, y, graph, prefix: str) -> None:
    """The batch criterion's per-class sums: node scores summed per class, kernel Taylor terms summed
    signed per class (:meth:`viscnn.importance.scorer.Scorer.group_layer_scores`); the "all" row is left
    to :func:`_finish_batch`."""
    yc = y.cpu().long()
    classes = torch.unique(yc).tolist()
    groups = [torch.nonzero(yc == c).squeeze(1).to(x.device) for c in classes]
    rows = np.asarray(classes, np.int64)
    for li, sc in scorer.group_layer_scores(x, y, groups):
        l = graph.layers[li]
        nsl = slice(l.node_offset, l.node_offset + l.channels)
        for m, (n, e) in sc.items():
            sums[prefix + m][0][rows, nsl] += n.cpu().numpy()
            if e.shape[1]:
                esl = slice(l.edge_offset, l.edge_offset + l.num_edges)
                sums[prefix + m][1][rows, esl] += e.cpu().numpy()


def _finish_batch(sums) -> None:
    """In place, once the signed class sums of every rank are in: ``taylor`` class rows |sum|, and every
    "all" row (the last) the sum of the class rows (for ``taylor``: Σ_K |sum_K|, so the "all" mean is the
    image-weighted mean of the class scores)."""
    from viscnn.importance.scorer import batch_set_score

    for key, (n, e) in sums.items():
        metric = key[len(OWN):] if key.startswith(OWN) else key
        if metric == "taylor":
            e[:-1] = batch_set_score(metric, e[:-1], 1)
        # the class rows added one by one in class order, as the sparse pass adds each finished class to its
        # "all" sums (a pairwise sum differs in the last float64 bit, enough to flip an ill-conditioned MDS)
        n[-1], e[-1] = 0, 0
        for r in range(len(e) - 1):
            n[-1] += n[r]
            e[-1] += e[r]


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
    from viscnn.prep.checkpoint import empty_top, load_array, load_checkpoint, load_top

    sums, counts, cursor = _zeros(metrics, n_sets, graph), np.zeros(n_sets, np.int64), -1
    top = empty_top(k_ex, conv_channels)
    folder, info = load_checkpoint(part)
    if info and info.get("key") == key and info.get("metrics") == metrics and info.get("shape") == [n_sets, graph.num_nodes, graph.num_edges]:
        sums = {m: (load_array(folder, f"{m}.nodes"), load_array(folder, f"{m}.edges")) for m in metrics}
        counts, cursor = load_array(folder, "counts"), info["cursor"]
        if top is not None:
            top = load_top(folder, k_ex, conv_channels)
    return sums, counts, cursor, top


def _save_partial(part, sums, counts, cursor, key, top=None):
    from viscnn.prep.checkpoint import save_checkpoint

    arrays = {}
    for m, (n, e) in sums.items():
        arrays[f"{m}.nodes"], arrays[f"{m}.edges"] = n, e
    arrays["counts"] = counts
    n0, e0 = next(iter(sums.values()))
    save_checkpoint(part, arrays, {"key": key, "cursor": cursor, "metrics": list(sums),
                                   "shape": [len(counts), n0.shape[1], e0.shape[1]]}, top)


def _all_reduce(sums, counts):
    from viscnn.prep.checkpoint import all_reduce

    flat = {"counts": counts}
    for m, (n, e) in sums.items():
        flat[f"{m}.nodes"], flat[f"{m}.edges"] = n, e
    out = all_reduce(flat)
    return {m: (out[f"{m}.nodes"], out[f"{m}.edges"]) for m in sums}, out["counts"]


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
