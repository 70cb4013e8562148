"""``viscnn prep``: run the stages in order, each resumable and atomic.

Under torchrun (WORLD_SIZE > 1) every rank joins the scoring stage (dataset sharded, sums
all-reduced) and rank 0 alone runs and writes everything else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch

from viscnn.errors import ViscnnError
from viscnn.prep import stages
from viscnn.prep.config import STAGES, PrepConfig
from viscnn.prep.state import Manifest, sha256_file


def dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def run_prep(cfg: PrepConfig, out_root: Optional[Path] = None, log=print) -> Path:
    """Run (or resume) the configured stages; returns the prepped model's folder."""
    from viscnn.model_spec import load_model
    from viscnn.paths import default_models_dir

    out = Path(out_root or cfg.models_dir() or default_models_dir()) / cfg.name
    rank, world = dist_info()
    weights = cfg.path(cfg["weights"]) if cfg["weights"] else None
    if weights is not None and not weights.is_file():
        raise ViscnnError(f"bad config value for weights: file not found: {weights}")
    device = cfg["run"]["device"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ViscnnError(f"bad config value for run.device: {device!r} but CUDA is not available")
    spec = cfg.model_spec()  # a model file's path is resolved from the config's folder
    model = load_model(spec, weights)  # validates the spec before any work
    from viscnn.prep.dataset import PrepDataset

    data = PrepDataset(cfg, log)  # validates the data before any work
    _check_outputs(model, cfg, data.classes)
    torch.manual_seed(cfg["run"]["seed"])

    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    out.mkdir(parents=True, exist_ok=True)
    man = Manifest(out)
    wname = _install_weights(out, weights) if rank == 0 else None
    mspec, msha = _install_model_file(out, spec) if rank == 0 else (cfg["model"], None)
    identity = {"name": cfg.name, "model": mspec, "weights_sha256": sha256_file(weights) if weights else None,
                "input_shape": [cfg["preprocess"]["channels"], *cfg["preprocess"]["size"]], "data": cfg.section("data")}
    if msha:  # a model file's code is part of the model: a changed file recomputes every stage
        identity["model_sha256"] = msha
    if rank == 0:
        if man.reset_if_incompatible(identity):
            log(f"{out}: model or data changed since the last prep; recomputing every stage")
        man.update(**identity, weights=wname, classes=data.classes,
                   normalize={"mean": cfg["preprocess"]["mean"], "std": cfg["preprocess"]["std"]},
                   image_sets=data.classes + ["all"], settings=cfg.values)
    if world > 1:
        torch.distributed.barrier()
        man = Manifest(out)

    ctx = stages.Context(cfg, out, model, data, man, rank, world, log)
    for stage in STAGES:
        if stage not in cfg["run"]["stages"]:
            continue
        if world > 1:  # every rank sees the previous stage's files and manifest
            torch.distributed.barrier()
            ctx.manifest = man = Manifest(out)
        h = stages.stage_hash(cfg, stage)
        if man.done(stage, h) and stages.outputs_exist(ctx, stage):
            if rank == 0:
                log(f"[{stage}] already done, skipping")
            continue
        if rank != 0 and stage != "scores":
            continue
        t = time.time()
        extra = getattr(stages, f"stage_{stage}")(ctx) or {}
        if rank == 0:
            if stage == "scores":
                extra.setdefault("metrics", cfg["run"]["metrics"])
            man.mark(stage, h, **extra)
            log(f"[{stage}] done in {time.time() - t:.1f}s")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return out


def _check_outputs(model, cfg: PrepConfig, classes) -> None:
    """One forward pass on a blank input: the model must run at the configured size, and its number
    of outputs must match the data's classes (an extra or missing class folder is caught here)."""
    pp = cfg["preprocess"]
    x = torch.zeros(1, pp["channels"], *pp["size"])
    was = model.training
    pointwise = set()  # Linears over the channels of an NHWC map (ConvNeXt): 1x1 conv layers of the graph
    hooks = [mod.register_forward_hook(lambda _m, _i, o, n=n: pointwise.add(n) if o.dim() == 4 else None)
             for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    try:
        model.eval()
        with torch.no_grad():
            y = model(x)
    except Exception as e:
        raise ViscnnError(f"the model does not run on a [1, {pp['channels']}, {pp['size'][0]}, {pp['size'][1]}] input "
                          f"(preprocess.size / preprocess.channels): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    y = y[0] if isinstance(y, (tuple, list)) else y
    if "featurevis" in cfg["run"]["stages"] and cfg["featurevis"]["layers"]:
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) or n in pointwise]
        bad = [n for n in cfg["featurevis"]["layers"] if n not in convs]
        if bad:
            raise ViscnnError(f"bad config value for featurevis.layers: {bad} are not Conv2d layers of the model "
                              f"(or Linears over the channels of a channels-last map); its conv layers: {', '.join(convs)}")
    if isinstance(y, torch.Tensor) and y.dim() == 2 and y.shape[1] != len(classes):
        where = f"class folders in {cfg.path(cfg['data']['root'])}" if cfg["data"]["kind"] == "folder" else "classes in the data"
        raise ViscnnError(f"the model has {y.shape[1]} outputs but there are {len(classes)} {where} "
                          f"({', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''})")


def _install_model_file(out: Path, spec: str):
    """Copy a model .py file into the prepped folder; returns (the spec relative to that folder, the
    file's sha256), or (spec, None) for module and torchvision specs, which need no file."""
    from viscnn.io import atomic_write_bytes
    from viscnn.model_spec import file_spec_parts

    parts = file_spec_parts(spec)
    if parts is None:
        return spec, None
    src = Path(parts[0])
    target = out / "model" / src.name
    data = src.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        atomic_write_bytes(target, data)
    import hashlib

    return f"model/{src.name}:{parts[1]}", hashlib.sha256(data).hexdigest()


def _install_weights(out: Path, weights: Optional[Path]) -> Optional[str]:
    """Keep a copy of the weights inside the prepped folder so it is self-contained."""
    if weights is None:
        return None
    target = out / "weights.pt"
    if weights.resolve() != target.resolve():
        from viscnn.io import atomic_write_bytes

        atomic_write_bytes(target, weights.read_bytes())
    return "weights.pt"
