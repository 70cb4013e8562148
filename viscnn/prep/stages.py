"""The prep stages. Each writes its artifacts atomically and returns manifest fields to record."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from viscnn.errors import UnsupportedOperationError
from viscnn.graph import Graph, build_graph
from viscnn.io import atomic_save_npy, atomic_write_bytes, atomic_write_text
from viscnn.prep.config import PrepConfig
from viscnn.prep.dataset import PrepDataset
from viscnn.prep.state import Manifest

# which config sections decide each stage's output
STAGE_INPUTS = {
    "graph": ("model", "preprocess"),
    "kernels": ("model",),
    "scores": ("model", "data", "preprocess", "run.metrics", "run.class_scores", "run.sparse_scores", "run.sparse_mass",
               "run.sparse_min_per_layer", "run.sparse_max_fraction", "run.class_kernel_score"),
    "layouts": ("model", "data", "preprocess", "run.metrics", "run.seed"),
    "featurevis": ("model", "preprocess", "featurevis", "run.seed", "data"),
    "exemplars": ("model", "data", "preprocess", "exemplars"),
    "images": ("data", "app"),
}


@dataclass
class Context:
    cfg: PrepConfig
    out: Path
    model: nn.Module
    data: PrepDataset
    manifest: Manifest
    rank: int
    world: int
    log: callable

    @property
    def graph(self) -> Graph:
        if not hasattr(self, "_graph"):
            self._graph = Graph.load(self.out / "graph")
        return self._graph


# bumped when a stage's code changes what it writes for the same config: graph 2 (channels-last
# layers in graph.json), scores 2 (conv node Taylor scores are replacement Taylor), layouts 2 (from them)
CODE_VERSIONS = {"graph": 2, "scores": 2, "layouts": 2}


def stage_hash(cfg: PrepConfig, stage: str) -> str:
    import hashlib

    from viscnn.prep.config import NEW_KEYS, _NOPE

    parts = {}
    for key in STAGE_INPUTS[stage]:
        top, _, sub = key.partition(".")
        v = cfg[top][sub] if sub else cfg.section(top)
        if not (sub and NEW_KEYS.get(key, _NOPE) == v):  # a newer key at its default keeps older hashes
            parts[key] = v
    parts["weights"] = cfg["weights"]
    if CODE_VERSIONS.get(stage, 1) > 1:
        parts["code"] = CODE_VERSIONS[stage]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def exemplar_tables_key(ctx: Context) -> str:
    """What the scoring pass's exemplar tables depend on: the exemplars stage's inputs and the images."""
    return stage_hash(ctx.cfg, "exemplars") + f":{len(ctx.data)}"


def outputs_exist(ctx: Context, stage: str) -> bool:
    o = ctx.out
    if stage == "graph":
        return (o / "graph" / "graph.json").is_file()
    if stage == "scores":  # a prep from before the own-class scores lacks their files: scores are redone
        from viscnn.prep.own_class import class_score_metrics

        from viscnn.prep.scoring_sparse import kernel_score, sparse_params

        sparse = ctx.manifest.data.get("scores_layout") == "sparse"
        # what a newer default ("auto" criterion, sparse cap) means for this folder: redo if it differs from
        # what was stored (a folder from before run.class_kernel_score was scored per image)
        if ctx.manifest.data.get("class_kernel_score", "per_image") != kernel_score(ctx.cfg, sparse):
            return False
        if sparse and ctx.manifest.data.get("sparse") != sparse_params(ctx.cfg):
            return False
        if sparse:
            from viscnn.importance.sparse_scores import group_files

            want = [(m, f) for m in ctx.cfg["run"]["metrics"] for f in SPARSE_FILES + tuple(group_files("edges"))]
            want += [(m, f) for m in class_score_metrics(ctx.cfg) for f in ("class_nodes.npy", *group_files("class_edges"))]
        else:
            want = [(m, f) for m in ctx.cfg["run"]["metrics"] for f in ("nodes.npy", "edges.npy")]
            want += [(m, f) for m in class_score_metrics(ctx.cfg) for f in CLASS_FILES]
        return all((o / "scores" / m / f).is_file() for m, f in want)
    if stage == "images":
        return (o / "images" / "index.json").is_file()
    return (o / stage).is_dir()


# -- graph and kernels ----------------------------------------------------------------
def stage_graph(ctx: Context):
    pp = ctx.cfg["preprocess"]
    try:
        g = build_graph(ctx.model, tuple(pp["size"]), pp["channels"], include_classes=True, model_name=ctx.cfg["model"])
    except UnsupportedOperationError:  # a head that mixes features: graph without class nodes
        g = build_graph(ctx.model, tuple(pp["size"]), pp["channels"], include_classes=False, model_name=ctx.cfg["model"])
    g.save(ctx.out / "graph")
    ctx._graph = g
    return {"graph": g.summary() | {"layers": len(g.layers)}}


def stage_kernels(ctx: Context):
    mods = dict(ctx.model.named_modules())
    for layer in ctx.graph.layers[1:]:
        w = mods[layer.name].weight.detach().float().cpu().numpy()
        if w.ndim == 2:  # class rows as per-channel "kernels" over the flattened map; a channels-last Linear as 1x1
            w = w.reshape(layer.channels, layer.in_channels // layer.groups, *layer.kernel_size)
        atomic_save_npy(ctx.out / "kernels" / f"{layer.name}.npy", w.astype(np.float32))


# -- scores ----------------------------------------------------------------------------
CLASS_FILES = ("class_nodes.npy", "class_edges.npy")  # own-class scores: class:K over the images of K


SPARSE_FILES = ("nodes.npy", "edges_all.npy", "edges_all.order.npy")  # dense per set / the "all" row and its ranking


def stage_scores(ctx: Context):
    from viscnn.prep.scoring_sparse import use_sparse

    if use_sparse(ctx.cfg, ctx.graph, len(ctx.data.classes)):
        from viscnn.prep.scores_sparse_stage import stage_scores_sparse

        return stage_scores_sparse(ctx)
    return stage_scores_dense(ctx)


def stage_scores_dense(ctx: Context):
    from viscnn.prep.scoring import OWN, score_dataset

    means, counts, top = score_dataset(ctx)  # under torchrun, returns after every rank's sums are reduced
    stored = [k[len(OWN):] for k in means if k.startswith(OWN)]
    if ctx.rank == 0:
        if top is not None:  # exemplar tables from the same pass, for the exemplars stage
            from viscnn.prep.scoring import save_exemplar_tables

            save_exemplar_tables(ctx.out / "scores" / "_exemplars", top, exemplar_tables_key(ctx))
        n_classes = len(ctx.data.classes)
        for key, (nodes, edges) in means.items():
            own = key.startswith(OWN)
            metric, files = (key[len(OWN):], CLASS_FILES) if own else (key, ("nodes.npy", "edges.npy"))
            rows = slice(0, n_classes) if own else slice(None)  # own-class: the class rows only
            atomic_save_npy(ctx.out / "scores" / metric / files[0], nodes[rows].astype(np.float32))
            atomic_save_npy(ctx.out / "scores" / metric / files[1], edges[rows].astype(np.float32))
        import shutil

        shutil.rmtree(ctx.out / "scores" / "_partial", ignore_errors=True)  # checkpoints are no longer needed
        for m in ctx.cfg["run"]["metrics"]:  # class files of a metric no longer own-class scored
            if m not in stored:
                for f in CLASS_FILES:
                    (ctx.out / "scores" / m / f).unlink(missing_ok=True)
        from viscnn.prep.scores_sparse_stage import remove_files

        remove_files(ctx, sparse=True)  # a previous sparse prep's files
    own_info = {"metrics": stored, "images": [int(c) for c in counts[:len(ctx.data.classes)]]} if stored else None
    from viscnn.prep.scoring_sparse import kernel_score

    return {"image_counts": [int(c) for c in counts], "score_ranks": ctx.world, "class_scores": own_info,
            "scores_layout": "dense", "sparse": None, "class_kernel_score": kernel_score(ctx.cfg, sparse=False)}


# -- layouts ---------------------------------------------------------------------------
def stage_layouts(ctx: Context):
    from viscnn.layout import LAYOUTS, compute_layout

    metric = "taylor" if "taylor" in ctx.cfg["run"]["metrics"] else ctx.cfg["run"]["metrics"][0]
    nodes = np.load(ctx.out / "scores" / metric / "nodes.npy")
    sparse = (ctx.out / "scores" / metric / "edges_all.npy").is_file() and not (ctx.out / "scores" / metric / "edges.npy").is_file()
    all_edges = np.load(ctx.out / "scores" / metric / ("edges_all.npy" if sparse else "edges.npy"), mmap_mode="r")
    all_edges = all_edges if sparse else all_edges[-1]
    n_classes = len(ctx.data.classes)
    names = []
    from tqdm import tqdm

    for name in tqdm(LAYOUTS, desc="layouts", unit="layout"):
        pos = compute_layout(name, ctx.graph, np.abs(nodes[:n_classes]), np.abs(all_edges))
        atomic_save_npy(ctx.out / "layouts" / f"{name}.npy", np.asarray(pos, np.float32))
        names.append(name)
    return {"layouts": names}


# -- feature visualizations and exemplars ----------------------------------------------------
def stage_featurevis(ctx: Context):
    from viscnn.prep.visuals import featurevis_stage

    return featurevis_stage(ctx)


def stage_exemplars(ctx: Context):
    from viscnn.prep.visuals import exemplars_stage

    return exemplars_stage(ctx)


# -- the app's input images -------------------------------------------------------------------
def stage_images(ctx: Context):
    from PIL import Image

    per = ctx.cfg["app"]["images_per_class"]
    labels = ctx.data.labels
    index = []
    for c, cname in enumerate(ctx.data.classes):
        for pos in np.flatnonzero(labels == c)[-per:] if per else []:
            raw = ctx.data.raw(int(pos))
            im = Image.fromarray(raw[:, :, 0] if raw.shape[2] == 1 else raw)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            fname = f"{len(index):03d}.png"
            atomic_write_bytes(ctx.out / "images" / fname, buf.getvalue())
            index.append({"file": fname, "label": c, "class": cname})
    atomic_write_text(ctx.out / "images" / "index.json", json.dumps(index, indent=1))
    return {"app_images": len(index)}


def as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
