"""Load a model from a spec string; every command shares this.

Spec forms:
  torchvision:NAME               random init (e.g. ``torchvision:resnet18``)
  torchvision:NAME:WEIGHTS       torchvision's pretrained weights (``DEFAULT``, ``IMAGENET1K_V1``...),
                                 only when the file is already in the local torch cache
  timm:NAME                      a timm model with random weights (``timm.create_model(NAME,
                                 pretrained=False)``; needs ``pip install 'viscnn[timm]'``)
  torchvision:NAME[:WEIGHTS]:k=v,...  keyword arguments for the builder (``num_classes=5``); values
                                 are ints, floats, true/false/none or strings (never evaluated)
  path/to/file.py:factory        a Python file of the user's whose ``factory()`` builds the model
  package.module:factory         an importable module's factory (e.g. ``viscnn.zoo.fmnist:fmnist_cnn``)
  NAME                           a prepped model under ``prepped_models/`` (see ``viscnn.prep``)

A ``weights`` file (a state_dict) is loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from viscnn.errors import ViscnnError

PathLike = Union[str, os.PathLike]


def load_model(spec: str, weights: Optional[PathLike] = None, models_dir: Optional[PathLike] = None) -> nn.Module:
    """Build the model named by ``spec`` and, if given, load a state_dict from ``weights``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ViscnnError("empty model spec: use torchvision:NAME, path/to/file.py:factory or a prepped model name")
    spec = spec.strip()
    if spec.startswith("torchvision:"):
        model = _torchvision_model(spec[len("torchvision:"):])
    elif spec.startswith("timm:"):
        model = _timm_model(spec[len("timm:"):])
    elif ".py:" in spec or spec.endswith(".py"):
        model = _file_model(spec)
    elif ":" in spec:
        model = _module_model(spec)
    else:
        return _prepped_model(spec, weights, models_dir)
    if weights is not None:
        load_weights(model, weights)
    return model


def _torchvision_model(rest: str) -> nn.Module:
    import torchvision.models as tvm

    name, _, tail = rest.partition(":")
    wname, kwargs = _torchvision_tail(name, tail)
    available = set(tvm.list_models())
    if name not in available:
        close = sorted(n for n in available if name.lower()[:4] in n)[:8]
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ViscnnError(f"unknown torchvision model {name!r}{hint}")
    if not wname:
        # aux_logits/init_weights defaults differ between models; weights=None is random init.
        return _build_tv(tvm, name, None, kwargs)
    try:
        wenum = tvm.get_model_weights(name)
        w = wenum.DEFAULT if wname == "DEFAULT" else wenum[wname]
    except (KeyError, ValueError):
        raise ViscnnError(f"torchvision model {name!r} has no weights named {wname!r}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not cached.exists():
        raise ViscnnError(
            f"pretrained weights for {name} are not in the local torch cache ({cached}) and viscnn never "
            f"downloads at run time; download {w.url} yourself and pass it with --weights FILE "
            f"(spec torchvision:{name}), or place it at {cached}"
        )
    model = _build_tv(tvm, name, None, {**_weights_kwargs(w), **kwargs})
    load_weights(model, cached)
    return model


def _torchvision_tail(name: str, tail: str):
    """``WEIGHTS``, ``k=v,k=v`` or ``WEIGHTS:k=v,...`` -> (weights name or "", kwargs)."""
    wname, kwargs = "", {}
    for part in [p for p in tail.split(":") if p.strip()] if tail else []:
        if "=" not in part:
            if wname or kwargs:
                raise ViscnnError(f"bad spec torchvision:{name}:{tail}: use torchvision:NAME[:WEIGHTS][:key=value,...]")
            wname = part.strip()
            continue
        for item in part.split(","):
            k, eq, v = item.partition("=")
            k = k.strip()
            if not eq or not k.isidentifier():
                raise ViscnnError(f"bad keyword argument {item!r} in torchvision:{name}:{tail}: use key=value")
            kwargs[k] = parse_value(v.strip())
    return wname, kwargs


def parse_value(text: str):
    """A spec's ``value``: int, float, true/false, none, else the string itself (no eval)."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip("'\"")


def _build_tv(tvm, name: str, weights, kwargs: dict) -> nn.Module:
    try:
        return tvm.get_model(name, weights=weights, **kwargs)
    except (TypeError, ValueError) as e:
        raise ViscnnError(f"torchvision:{name} does not take {kwargs}: {e}") from None


def _timm_model(name: str) -> nn.Module:
    """A timm model, random init: viscnn never downloads weights (use --weights FILE for trained ones)."""
    try:
        import timm
    except ImportError:
        raise ViscnnError("model spec timm:NAME needs timm, which is not installed: pip install 'timm>=0.9' "
                          "(or pip install 'viscnn[timm]')") from None
    if not name or name not in set(timm.list_models()):
        close = sorted(timm.list_models(f"*{name[:5]}*"))[:8] if name else []
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ViscnnError(f"unknown timm model {name!r}{hint}")
    try:
        return timm.create_model(name, pretrained=False)
    except Exception as e:  # a timm-side failure, reported in one line
        raise ViscnnError(f"timm.create_model({name!r}) failed: {type(e).__name__}: {e}") from None


def _weights_kwargs(w) -> dict:
    # Models such as googlenet/inception need num_classes and aux settings that match the checkpoint.
    kw = {}
    cats = w.meta.get("categories")
    if cats:
        kw["num_classes"] = len(cats)
    return kw


def file_spec_parts(spec: str) -> Optional[tuple]:
    """(path, factory) of a ``path/to/file.py:factory`` spec, else None."""
    if spec.startswith(("torchvision:", "timm:")) or not (".py:" in spec or spec.endswith(".py")):
        return None
    return spec.rpartition(":")[::2] if ".py:" in spec else (spec, "")


def resolve_spec(spec: str, base: PathLike) -> str:
    """A file spec with its relative path made absolute from ``base``; other specs unchanged."""
    parts = file_spec_parts(spec.strip()) if isinstance(spec, str) else None
    if parts is None or Path(parts[0]).is_absolute():
        return spec
    path = (Path(base) / parts[0]).resolve()
    return f"{path}:{parts[1]}" if parts[1] else str(path)


def manifest_spec(spec: str, root: PathLike) -> str:
    """A prepped manifest's model spec: a file spec is relative to the prepped folder (where prep copies
    the file); manifests written before that named it relative to where prep ran, kept as a fallback."""
    parts = file_spec_parts(spec)
    if parts is None:
        return spec
    inside = resolve_spec(spec, root)
    return inside if Path(file_spec_parts(inside)[0]).is_file() or not Path(parts[0]).is_file() else spec


def _file_model(spec: str) -> nn.Module:
    path, factory = file_spec_parts(spec) or (spec, "")
    if not factory:
        raise ViscnnError(f"model spec {spec!r} names a file but no factory: use {spec}:FUNCTION")
    p = Path(path)
    if not p.is_file():
        raise ViscnnError(f"model file not found: {path}")
    mod_name = f"viscnn_user_{abs(hash(str(p.resolve())))}"
    try:
        sp = importlib.util.spec_from_file_location(mod_name, p)
        module = importlib.util.module_from_spec(sp)
        sys.modules[mod_name] = module
        sp.loader.exec_module(module)  # the user's own model file, run as they asked
    except Exception as e:  # report, not a traceback dump
        raise ViscnnError(f"could not import {path}: {type(e).__name__}: {e}") from None
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ViscnnError(f"{path} has no callable {factory!r}; callables there: {', '.join(names) or 'none'}")
    try:
        model = fn()
    except Exception as e:
        raise ViscnnError(f"{path}:{factory}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ViscnnError(f"{path}:{factory}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _module_model(spec: str) -> nn.Module:
    modname, _, factory = spec.partition(":")
    if not modname.replace(".", "").replace("_", "").isalnum():
        raise ViscnnError(f"bad model spec {spec!r}: expected package.module:factory")
    try:
        module = importlib.import_module(modname)
    except ImportError as e:
        raise ViscnnError(f"cannot import module {modname!r} for model spec {spec!r}: {e}") from None
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        raise ViscnnError(f"module {modname} has no callable {factory!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise ViscnnError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _prepped_model(name: str, weights, models_dir) -> nn.Module:
    from viscnn.paths import default_models_dir

    root = Path(models_dir) if models_dir else default_models_dir()
    manifest = root / name / "manifest.json"
    if not manifest.is_file():
        names = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
        raise ViscnnError(
            f"unknown model spec {name!r}: not torchvision:NAME, not path/to/file.py:factory, and not a prepped "
            f"model in {root} (prepped models: {', '.join(names) or 'none'})"
        )
    import json

    meta = json.loads(manifest.read_text())
    model = load_model(manifest_spec(meta["model"], root / name), None)
    wfile = weights if weights is not None else (root / name / meta["weights"] if meta.get("weights") else None)
    if wfile is not None:
        load_weights(model, wfile)
    return model


def load_weights(model: nn.Module, weights: PathLike) -> nn.Module:
    """Load a state_dict file into ``model`` safely, with a readable error on any mismatch."""
    p = Path(weights)
    if not p.is_file():
        raise ViscnnError(f"weights file not found: {p}")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ViscnnError(_unsafe_load_message(p, e)) from None
    if isinstance(sd, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ViscnnError(f"{p} does not hold a state_dict (a dict of parameter name -> tensor)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise ViscnnError(f"weights {p} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(sd)
    return model


def _unsafe_load_message(p: Path, e: Exception) -> str:
    """One clean line for a file that torch.load(weights_only=True) refuses (its own message spans
    many lines with ANSI colour codes)."""
    import re

    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(p))
    except Exception:
        names = []
    if any(n.startswith("torch.nn.modules.") for n in names):
        return (f"{p} is a pickled whole model, not a state_dict; save it with "
                f"torch.save(model.state_dict(), 'weights.pt') and pass that file (viscnn never unpickles code)")
    if names:
        return (f"{p} holds pickled Python objects ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}) that "
                f"torch.load(weights_only=True) refuses; save model.state_dict() with torch.save and pass that file")
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return f"could not read weights {p} as a state_dict (torch.load weights_only=True): {type(e).__name__}: {first[0] if first else ''}"


# preprocessing given on the command line for non-prepped specs (viscnn.cli --channels/--mean/--std/--config)
_PREPROCESS: dict = {}


def set_preprocess(spec: str, meta: dict) -> None:
    """Make ``prepped_manifest(spec)`` answer ``meta`` ({"input_shape", "normalize", ...}) for a file,
    module or torchvision spec, so every command reads the user's preprocessing the same way."""
    _PREPROCESS[spec] = dict(meta)


def clear_preprocess() -> None:
    """Forget what :func:`set_preprocess` recorded (``viscnn.cli.main`` does, after each command)."""
    _PREPROCESS.clear()


def prepped_manifest(spec: str, models_dir: Optional[PathLike] = None) -> Optional[dict]:
    """A prepped model's manifest (classes, normalize, input_shape, ...), or None for other specs."""
    if spec in _PREPROCESS:
        return dict(_PREPROCESS[spec])
    if ":" in spec or ".py" in spec:
        return None
    from viscnn.paths import default_models_dir
    import json

    manifest = (Path(models_dir) if models_dir else default_models_dir()) / spec / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def prepped_input_shape(spec: str, models_dir: Optional[PathLike] = None) -> Optional[tuple]:
    """(C, H, W) recorded in a prepped model's manifest, or None for other specs."""
    shape = (prepped_manifest(spec, models_dir) or {}).get("input_shape")
    return tuple(shape) if shape else None
