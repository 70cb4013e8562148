"""The scoring stage at scale: class by class, each class's edge scores stored as a sparse row.

Dense per-set sums are [sets, edges] in float64 (ResNet-50 over 1,000 classes: 107 GB per metric), so
for big models the pass goes class by class instead: the images of one class are scored, its mean row is
reduced to the edges that can enter a circuit (:func:`viscnn.importance.sparse_scores.sparsify`) and
saved, and only the ``all`` row stays dense (its sum over every image, [edges] float64 per metric).
Node scores stay dense for every set. The own-class logit target (``class.METRIC``) is scored in the
same pass, as in :mod:`viscnn.prep.scoring`.

The images go class by class in fixed batches (a batch may span classes). Resumable at class
granularity: finished classes' rows are files, and the ``all`` sums, counts, exemplar tables and the list
of finished classes are checkpointed together (atomically) every ``SPARSE_CHECKPOINT_SECONDS``; on resume
every batch holding an unfinished class is redone whole (exemplar tables count an image offered twice
once), so the result is bit-identical to an uninterrupted run. Distributed: class c goes to rank c % world; the ``all`` sums are all-reduced and
rank 0 gathers the row files (one folder on the shared disk).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch


SPARSE_CHECKPOINT_SECONDS = float(os.environ.get("VISCNN_SPARSE_CHECKPOINT_SECONDS", "30"))
_TEST_DELAY = float(os.environ.get("VISCNN_TEST_BATCH_DELAY", "0"))  # lets the kill-and-resume test land mid-run
AUTO_DENSE_BYTES = 2 * 2**30  # "auto": sparse once the dense float32 edge files would pass 2 GiB


def sparse_params(cfg) -> Dict[str, float]:
    r = cfg["run"]
    return {"mass": float(r["sparse_mass"]), "min_per_layer": int(r["sparse_min_per_layer"]),
            "max_fraction": float(r["sparse_max_fraction"])}


def use_sparse(cfg, graph, n_classes: int) -> bool:
    """Whether the scores are stored sparse: ``run.sparse_scores`` "on"/"off", or "auto" by size."""
    from viscnn.prep.own_class import class_score_metrics

    mode = cfg["run"]["sparse_scores"]
    if mode != "auto":
        return mode == "on"
    rows = (n_classes + 1) * len(cfg["run"]["metrics"]) + n_classes * len(class_score_metrics(cfg))
    return 4 * graph.num_edges * rows > AUTO_DENSE_BYTES


def kernel_score(cfg, sparse: bool) -> str:
    """The per-set kernel Taylor criterion ``run.class_kernel_score`` resolves to: "per_image" (a set's score
    is the mean over its images of each image's |Σ_p g·h|, the exact reference) or "batch" (|the set's
    mean of Σ_p g·h|, from each class's batched weight gradient: Molchanov et al. 2019's minibatch
    criterion with class-pure groups, no per-image kernel products); "auto" is batch when the scores
    are stored sparse. Only ``taylor`` differs between the two (``taylor_signed`` is linear)."""
    mode = cfg["run"]["class_kernel_score"]
    return ("batch" if sparse else "per_image") if mode == "auto" else mode


def rows_dir(ctx) -> Path:
    return ctx.out / "scores" / "_partial" / "rows"


def row_file(ctx, key: str, c: int) -> Path:
    return rows_dir(ctx) / key / f"{c}.npz"


def score_dataset_sparse(ctx):
    """Returns ({key: node means [S, N] (own keys: the class rows)}, {loss key: ``all`` edge means [E]},
    counts [S], {key: [row file per class]}, top-k exemplar tables or None)."""
    from tqdm import tqdm

    from viscnn.importance.prep_api import BatchScorer
    from viscnn.importance.scorer import Scorer
    from viscnn.importance.sparse_scores import save_row, sparsify
    from viscnn.prep.own_class import OwnClassTarget, class_score_metrics
    from viscnn.prep.scoring import OWN, _all_gather_top, _exemplars_to_run
    from viscnn.prep.stages import stage_hash

    cfg, graph, data = ctx.cfg, ctx.graph, ctx.data
    metrics, own_metrics = list(cfg["run"]["metrics"]), class_score_metrics(cfg)
    keys = metrics + [OWN + m for m in own_metrics]
    C, E, N = len(data.classes), graph.num_edges, graph.num_nodes
    bs, device = cfg["run"]["batch_size"], torch.device(cfg["run"]["device"])
    params = sparse_params(cfg)
    k_ex = cfg["exemplars"]["k"] if _exemplars_to_run(ctx) else 0
    batch = kernel_score(cfg, sparse=True) == "batch"
    key = stage_hash(cfg, "scores") + f":{bs}:sparse:{json.dumps(params, sort_keys=True)}" + (f":exemplars{k_ex}" if k_ex else "")
    key += ":batch" if batch else ""
    part = ctx.out / "scores" / "_partial" / f"rank{ctx.rank}of{ctx.world}"
    conv_channels = {l.name: l.channels for l in graph.conv_layers()}
    all_sums, counts, done, top = _load(part, key, metrics, C + 1, E, k_ex, conv_channels)
    if batch:  # the Scorer itself: group_layer_scores
        scorer = Scorer(ctx.model, graph, "loss", metrics, device=device)
        own = Scorer(ctx.model, graph, OwnClassTarget(), own_metrics, device=device) if own_metrics else None
    else:
        scorer = BatchScorer(ctx.model, graph, metrics, device=device)
        own = BatchScorer(ctx.model, graph, own_metrics, device=device, target=OwnClassTarget()) if own_metrics else None
    mine = [c for c in range(C) if c % ctx.world == ctx.rank]
    positions = {c: np.flatnonzero(data.labels == c) for c in mine}
    # this rank's images class by class, in fixed batches that may span classes (a resumed run redoes a
    # batch holding any unfinished class whole, so every batch is the same as in an uninterrupted run)
    order = np.concatenate([positions[c] for c in mine]) if mine else np.zeros(0, np.int64)
    cls_of = data.labels[order] if len(order) else np.zeros(0, np.int64)
    left = {c: len(positions[c]) for c in mine}
    done_set = set(done)
    bar = tqdm(total=len(order), initial=sum(len(positions[c]) for c in mine if c in done_set),
               desc=f"scores, sparse (rank {ctx.rank})" if ctx.world > 1 else "scores, sparse", unit="img",
               disable=ctx.rank != 0)
    active: Dict[int, tuple] = {}
    pool = _Buffers(E)
    last_save = time.time()
    for a in range(0, len(order), bs):
        p, pc = order[a:a + bs], cls_of[a:a + bs]
        todo = [c for c in dict.fromkeys(pc.tolist()) if c not in done_set]
        if not todo:
            continue
        x, y = data.batch(p)
        x, y = x.to(device), y.to(device)
        if batch:
            _batch_step(graph, scorer, own, x, y, p, pc, todo, positions, active, pool, all_sums, params, keys,
                        lambda c, k: row_file(ctx, k, c), OWN, N)
            outs = scorer.last_outputs
        else:
            for c in todo:
                if c not in active:
                    active[c] = ({k: np.zeros(N) for k in keys}, {k: pool.take() for k in keys})
            weights = torch.from_numpy(np.stack([(pc == c) for c in todo]).astype(np.float64))  # [classes here, B]
            into = [{m: (active[c][0][m], active[c][1][m]) for m in metrics} for c in todo]
            scorer.add_weighted(x, y, weights, into)
            outs = scorer.last_outputs
            if own is not None:
                into = [{m: (active[c][0][OWN + m], active[c][1][OWN + m]) for m in own_metrics} for c in todo]
                own.add_weighted(x, y, weights, into)
        if top is not None:
            for layer in conv_channels:
                top.add(layer, outs[layer], 0, indices=p)  # duplicates from a redone batch count once
        for c in todo:
            m = pc == c
            left[c] -= int(m.sum())
            bar.update(int(m.sum()))
            if left[c] == 0:  # the class is complete: its sparse rows, then its share of the "all" sums
                nsum, esum = active.pop(c)
                n = len(positions[c])
                for k in esum:  # (a class scored whole in one batch under the batch criterion has no sums here: saved)
                    metric = k[len(OWN):] if k.startswith(OWN) else k
                    if batch and metric == "taylor":
                        np.abs(esum[k], out=esum[k])
                    if not k.startswith(OWN):
                        all_sums[k] += esum[k]
                    esum[k] /= n  # in place: the class mean (the buffer goes back to the pool below)
                    row = sparsify(graph, esum[k], **params)
                    row["nodes"], row["images"] = nsum[k] / n, np.asarray(n, np.int64)
                    save_row(row_file(ctx, k, c), row)
                for k in esum:
                    pool.give(esum[k])
                counts[c] = n
                done.append(c)
                done_set.add(c)
        if _TEST_DELAY:
            time.sleep(_TEST_DELAY)
        if time.time() - last_save > SPARSE_CHECKPOINT_SECONDS:  # unfinished classes are redone on resume
            _save(part, all_sums, counts, done, key, top)
            last_save = time.time()
    bar.close()
    _save(part, all_sums, counts, done, key, top)
    if ctx.world > 1:
        all_sums, counts = _all_reduce(all_sums, counts)
        top = _all_gather_top(top) if top is not None else None
    counts[C] = counts[:C].sum()
    files = {k: [row_file(ctx, k, c) for c in range(C)] for k in keys}
    nodes = {}
    for k in keys:
        table = np.zeros((C + 1, N))
        for c, f in enumerate(files[k]):
            with np.load(f, allow_pickle=False) as z:
                table[c] = z["nodes"]
        table[C] = (table[:C] * counts[:C, None]).sum(0) / max(counts[C], 1)
        nodes[k] = table
    edges_all = {m: all_sums[m] / max(counts[C], 1) for m in metrics}
    return nodes, edges_all, counts, files, top


def _batch_step(graph, scorer, own, x, y, p, pc, todo, positions, active, pool, all_sums, params, keys, row_path, OWN, N):
    """One batch under the batch criterion: every class of the batch gets its signed kernel Taylor sums
    from its own images' batched weight gradient (``Scorer.group_layer_scores``, the loss and then the
    own-class target). A class whose images all lie in this batch (the usual case with few images per
    class) is finished here layer by layer: its row is sparsified as each layer's sums come out (the
    same rows as :func:`sparsify` on the whole row) and saved, its share of the ``all`` sums added, and it
    needs no [E] buffer. A class spanning batches accumulates float64 sums in ``active`` as before."""
    from viscnn.importance.sparse_scores import RowParts, add_rows, save_row

    groups, whole = [], []
    for c in todo:
        at = np.flatnonzero(pc == c)
        assert at[-1] - at[0] + 1 == len(at), "class-sorted batches"
        groups.append(slice(int(at[0]), int(at[-1]) + 1))
        whole.append(len(at) == len(positions[c]))
    for c, w in zip(todo, whole):
        if c not in active:
            active[c] = ({k: np.zeros(N) for k in keys}, {} if w else {k: pool.take() for k in keys})
    parts = {(c, k): RowParts() for c, w in zip(todo, whole) if w for k in keys}
    wr = [r for r, w in enumerate(whole) if w]
    div = [float(max(len(positions[todo[r]]), 1)) for r in wr]
    scratch = pool.scratch
    # one forward for both targets (a backward each); each layer's Taylor edges in a reused buffer
    caps = scorer.capture_with(x, y, [own] if own is not None else [])
    for sc, prefix, cap in ((scorer, "", caps[0]), (own, OWN, caps[-1])):
        if sc is None:
            continue
        for li, scores in sc.group_layer_scores(x, y, groups, taylor_dtype=torch.float32, cap=cap, reuse=True):
            l = graph.layers[li]
            nsl = slice(l.node_offset, l.node_offset + l.channels)
            esl = slice(l.edge_offset, l.edge_offset + (l.num_edges if l.kind != "input" else 0))
            for m, (nt, et) in scores.items():
                k = prefix + m
                nn_, en = nt.cpu().numpy(), et.cpu().numpy()
                for r, c in enumerate(todo):
                    active[c][0][k][nsl] += nn_[r]
                    if not whole[r] and en.shape[1]:
                        active[c][1][k][esl] += en[r]
                if not wr:
                    continue
                # the finished classes' rows, as batch_set_score makes them (|total| / count for taylor),
                # rounded once to float32, sparsified on the pool; meanwhile their share of the "all" sums,
                # added class by class in a fixed order (a resumed run adds the same terms in the same order)
                rows = en if len(wr) == len(todo) else en[wr]

                def add_all(rows=rows, k=k, m=m, esl=esl):
                    for i in range(len(wr)):
                        all_sums[k][esl] += np.abs(rows[i], out=scratch.get("abs", rows[i].shape, rows.dtype)) if m == "taylor" else rows[i]
                add_rows([parts[(todo[r], k)] for r in wr], l.edge_offset, rows, **params, nonneg=m == "taylor",
                         divisors=div, during=None if prefix else add_all)
    for r in wr:
        c = todo[r]
        n = len(positions[c])
        for k in keys:
            row = parts[(c, k)].row()
            row["nodes"], row["images"] = active[c][0][k] / n, np.asarray(n, np.int64)
            save_row(row_path(c, k), row)


class _Buffers:
    """Reused float64 [E] accumulators: a fresh 107 MB array per class and metric (ResNet-50) costs page
    faults on every batch, which on a VM stalled the pass for seconds; zeroing a warm one does not."""

    def __init__(self, size: int):
        self.size, self.free = size, []
        self.scratch = _Scratch()

    def take(self) -> np.ndarray:
        if self.free:
            a = self.free.pop()
            a.fill(0.0)
            return a
        return np.zeros(self.size)

    def give(self, a: np.ndarray) -> None:
        self.free.append(a)


class _Scratch:
    """Reused buffers for one layer's rows at a time (same reason as :class:`_Buffers`)."""

    def __init__(self):
        self.bufs: Dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape))
        buf = self.bufs.get((name, np.dtype(dtype)))
        if buf is None or buf.shape[0] < n:
            buf = self.bufs[(name, np.dtype(dtype))] = np.empty(n, dtype)
        return buf[:n].reshape(shape)


def _load(part: Path, key: str, metrics: List[str], n_sets: int, E: int, k_ex: int, conv_channels):
    from viscnn.prep.checkpoint import empty_top, load_array, load_checkpoint, load_top

    sums, counts, done = {m: np.zeros(E) for m in metrics}, np.zeros(n_sets, np.int64), []
    top = empty_top(k_ex, conv_channels)
    folder, info = load_checkpoint(part)
    if info and info.get("key") == key and info.get("metrics") == metrics and info.get("shape") == [n_sets, E]:
        sums = {m: load_array(folder, f"{m}.all_edges") for m in metrics}
        counts, done = load_array(folder, "counts"), list(info["done"])
        if top is not None:
            top = load_top(folder, k_ex, conv_channels)
    return sums, counts, done, top


def _save(part: Path, sums, counts, done, key: str, top) -> None:
    from viscnn.prep.checkpoint import save_checkpoint

    arrays = {f"{m}.all_edges": e for m, e in sums.items()}
    arrays["counts"] = counts
    save_checkpoint(part, arrays, {"key": key, "done": [int(c) for c in done], "metrics": list(sums),
                                   "shape": [len(counts), len(next(iter(sums.values())))]}, top)


def _all_reduce(sums, counts):
    from viscnn.prep.checkpoint import all_reduce

    out = all_reduce({"counts": counts, **{f"{m}.all_edges": e for m, e in sums.items()}})
    return {m: out[f"{m}.all_edges"] for m in sums}, out["counts"]
