"""The scores stage's writer for sparse scores (format version 2, ``"scores_layout": "sparse"``).

Per metric (``scores/METRIC/``): ``nodes.npy`` [sets, nodes] dense as in the dense layout; the ``all`` row
dense as ``edges_all.npy`` [edges] with its ranking ``edges_all.order.npy`` (nonzero edges, layer by layer,
|score| descending); the class sets' rows as the ``edges`` group of :mod:`viscnn.importance.sparse_scores`;
own-class scores as ``class_nodes.npy`` [classes, nodes] and the ``class_edges`` group.
"""

from __future__ import annotations

import shutil

import numpy as np

from viscnn.io import atomic_save_npy


def stage_scores_sparse(ctx):
    from viscnn.importance.sparse_scores import ranking_of_dense, write_group
    from viscnn.prep.scoring import OWN, save_exemplar_tables
    from viscnn.prep.scoring_sparse import kernel_score, score_dataset_sparse, sparse_params
    from viscnn.prep.stages import exemplar_tables_key

    nodes, edges_all, counts, files, top = score_dataset_sparse(ctx)
    C = len(ctx.data.classes)
    stored = [k[len(OWN):] for k in nodes if k.startswith(OWN)]
    if ctx.rank == 0:
        if top is not None:
            save_exemplar_tables(ctx.out / "scores" / "_exemplars", top, exemplar_tables_key(ctx))
        for key, table in nodes.items():
            own = key.startswith(OWN)
            metric = key[len(OWN):] if own else key
            folder = ctx.out / "scores" / metric
            if own:
                atomic_save_npy(folder / "class_nodes.npy", table[:C].astype(np.float32))
                write_group(folder, "class_edges", files[key], ctx.graph.num_edges)
            else:
                atomic_save_npy(folder / "nodes.npy", table.astype(np.float32))
                e = edges_all[key].astype(np.float32)
                atomic_save_npy(folder / "edges_all.npy", e)
                atomic_save_npy(folder / "edges_all.order.npy", ranking_of_dense(ctx.graph, e))
                write_group(folder, "edges", files[key], ctx.graph.num_edges)
        shutil.rmtree(ctx.out / "scores" / "_partial", ignore_errors=True)
        remove_files(ctx, sparse=False, keep_own=stored)
    own_info = {"metrics": stored, "images": [int(c) for c in counts[:C]]} if stored else None
    return {"image_counts": [int(c) for c in counts], "score_ranks": ctx.world, "class_scores": own_info,
            "scores_layout": "sparse", "sparse": sparse_params(ctx.cfg), "class_kernel_score": kernel_score(ctx.cfg, sparse=True)}


def remove_files(ctx, sparse: bool, keep_own=()) -> None:
    """Files of the other layout (``sparse``: the sparse layout's), and own-class files of metrics no
    longer own-class scored, so a folder never mixes two layouts."""
    from viscnn.importance.sparse_scores import group_files

    dense_only = ("edges.npy", "class_edges.npy")
    sparse_only = ("edges_all.npy", "edges_all.order.npy", *group_files("edges"), *group_files("class_edges"))
    root = ctx.out / "scores"
    for m in ctx.cfg["run"]["metrics"]:
        for f in sparse_only if sparse else dense_only:
            (root / m / f).unlink(missing_ok=True)
        if not sparse and m not in keep_own:
            for f in ("class_nodes.npy", *group_files("class_edges")):
                (root / m / f).unlink(missing_ok=True)
