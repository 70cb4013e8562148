"""Prep configuration: a TOML file (or the same keys as CLI flags), validated before any work.

Example (prepped_models/fmnist.toml)::

    name = "fmnist"
    model = "viscnn.zoo.fmnist:fmnist_cnn"  # or "mynet.py:factory" (copied into the prepped folder)
    weights = "fmnist/weights.pt"
    models_dir = ""               # where NAME/ is written; "" = $VISCNN_MODELS_DIR or the repo's prepped_models/

    [data]
    kind = "fashion-mnist"        # or "folder" (one subfolder per class), or "torchvision"
    root = ""                     # folder / torchvision root; "" = the Debian package's files
    split = "train"
    images_per_class = 6000       # 0 = all
    dataset = ""                  # torchvision dataset class name when kind = "torchvision"
    bad_images = "error"          # "folder": unreadable/truncated files stop the run, or "skip" them

    [preprocess]
    size = [28, 28]
    channels = 1
    mean = [0.2860]
    std = [0.3530]

    [run]
    batch_size = 256
    device = "cpu"
    seed = 0
    stages = ["graph", "kernels", "scores", "layouts", "featurevis", "exemplars", "images"]
    metrics = ["taylor", "taylor_signed", "actgrad_abs", "activation", "gradient", "weight"]
    class_scores = true           # also class:K over the images of K (one more backward per batch)
    sparse_scores = "auto"        # per-class edge scores stored sparse: "on", "off", or "auto" (past 2 GiB dense)
    sparse_mass = 0.999           # sparse rows keep, per layer, the top edges holding this share of |score|,
    sparse_min_per_layer = 256    # at least this many edges (all of a smaller layer)
    sparse_max_fraction = 0.015   # and at most this fraction of the layer's edges
    class_kernel_score = "auto"   # per-set kernel Taylor: "per_image" (mean of |T| per image), "batch" (|mean T|,
                                  # from each class's batched weight gradient), "auto" (batch when stored sparse)

    [featurevis]
    steps = 128
    edges_per_node = 3
    layers = []                   # conv layers to visualize ([] = all of them)

    [exemplars]
    k = 6

    [app]
    images_per_class = 2

Every relative path in the file (model file, weights, data.root, models_dir) is resolved from the
file's folder, never from the current directory, so the same command works from anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from viscnn.errors import ViscnnError

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

STAGES = ["graph", "kernels", "scores", "layouts", "featurevis", "exemplars", "images"]
METRICS = ["taylor", "taylor_signed", "actgrad_abs", "activation", "gradient", "weight"]
DATA_KINDS = ["fashion-mnist", "folder", "torchvision"]
KERNEL_SCORES = ["auto", "per_image", "batch"]
NEW_KEYS = {"data.bad_images": "error", "featurevis.layers": [], "run.class_scores": True, "run.sparse_scores": "auto",
            "run.sparse_mass": 0.999, "run.sparse_min_per_layer": 256, "run.sparse_max_fraction": 0.015,
            "run.class_kernel_score": "auto"}  # see PrepConfig.section
_NOPE = object()

DEFAULTS: Dict[str, Any] = {
    "name": None,
    "model": None,
    "weights": "",
    "models_dir": "",
    "data": {"kind": "fashion-mnist", "root": "", "split": "train", "images_per_class": 0, "dataset": "",
             "bad_images": "error"},
    "preprocess": {"size": [28, 28], "channels": 1, "mean": [0.0], "std": [1.0]},
    "run": {"batch_size": 256, "device": "cpu", "seed": 0, "stages": list(STAGES), "metrics": ["taylor", "taylor_signed"],
            "class_scores": True, "sparse_scores": "auto", "sparse_mass": 0.999, "sparse_min_per_layer": 256,
            "sparse_max_fraction": 0.015, "class_kernel_score": "auto"},
    "featurevis": {"steps": 128, "edges_per_node": 3, "layers": []},
    "exemplars": {"k": 6},
    "app": {"images_per_class": 2},
}


@dataclass
class PrepConfig:
    values: Dict[str, Any]
    base_dir: Path  # relative paths in the config are resolved against this

    def __getitem__(self, key):
        return self.values[key]

    @property
    def name(self) -> str:
        return self.values["name"]

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.base_dir / p)

    def section(self, key: str):
        """A config value with keys added after format 1 dropped while they hold their default, so
        configs written before them keep their stage hashes (and a rerun resumes)."""
        v = self.values[key]
        if isinstance(v, dict):
            v = {k: x for k, x in v.items() if NEW_KEYS.get(f"{key}.{k}", _NOPE) != x}
        return v

    def model_spec(self) -> str:
        """The model spec with a file spec's path resolved from the config's folder."""
        from viscnn.model_spec import resolve_spec

        return resolve_spec(self.values["model"], self.base_dir)

    def models_dir(self) -> Optional[Path]:
        return self.path(self.values["models_dir"]) if self.values["models_dir"] else None

    def hash(self, *sections: str) -> str:
        """Hash of the settings that decide a stage's output (resume only when they match)."""
        keys = sections or tuple(self.values)
        blob = json.dumps({k: self.values[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise ViscnnError(f"unknown config key '{where}{k}'; known: {', '.join(base)}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ViscnnError(f"config [{where}{k}] must be a table")
            out[k] = _merge(base[k], v, f"{where}{k}.")
        else:
            out[k] = v
    return out


def load_config(path=None, overrides: Dict[str, Any] = None, base_dir=None) -> PrepConfig:
    """Read TOML ``path`` (optional), apply dotted ``overrides`` ({"run.batch_size": 64}), validate."""
    raw: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ViscnnError(f"config file not found: {p}")
        try:
            raw = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ViscnnError(f"config {p} is not valid TOML: {e}") from None
    values = _merge(DEFAULTS, raw, "")
    if base_dir is None:
        base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    for dotted, v in (overrides or {}).items():
        if v is None:
            continue
        *parents, leaf = dotted.split(".")
        d = values
        for part in parents:
            d = d[part]
        if leaf not in d:
            raise ViscnnError(f"unknown config key {dotted!r}")
        d[leaf] = v
    validate(values)
    return PrepConfig(values, Path(base_dir))


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ViscnnError(f"bad config value for {key}: {msg}")


def validate(v: Dict[str, Any]) -> None:
    _need(isinstance(v["name"], str) and v["name"].replace("-", "").replace("_", "").isalnum(), "name",
          f"{v['name']!r} (letters, digits, - and _ only)")
    _need(isinstance(v["model"], str) and bool(v["model"]), "model", "a model spec string is required")
    _need(isinstance(v["weights"], str), "weights", "a file path string ('' for none)")
    _need(isinstance(v["models_dir"], str), "models_dir", "a folder path string ('' for the default)")
    d = v["data"]
    _need(d["kind"] in DATA_KINDS, "data.kind", f"{d['kind']!r}; one of {DATA_KINDS}")
    _need(d["kind"] != "folder" or bool(d["root"]), "data.root", "required when data.kind = 'folder'")
    _need(d["kind"] != "torchvision" or bool(d["dataset"]), "data.dataset", "a torchvision dataset class name")
    _need(d["bad_images"] in ("error", "skip"), "data.bad_images", f"{d['bad_images']!r}; 'error' or 'skip'")
    _need(d["split"] in ("train", "test"), "data.split", f"{d['split']!r}; 'train' or 'test'")
    _need(_is_int(d["images_per_class"]) and d["images_per_class"] >= 0, "data.images_per_class", f"{d['images_per_class']!r}; an integer >= 0")
    pp = v["preprocess"]
    _need(isinstance(pp["size"], list) and len(pp["size"]) == 2 and all(_is_int(s) and s > 0 for s in pp["size"]),
          "preprocess.size", f"{pp['size']!r}; [H, W] positive integers")
    _need(pp["channels"] in (1, 3), "preprocess.channels", f"{pp['channels']!r}; 1 or 3")
    for k in ("mean", "std"):
        _need(isinstance(pp[k], list) and len(pp[k]) in (1, pp["channels"]) and all(isinstance(x, (int, float)) for x in pp[k]),
              f"preprocess.{k}", f"{pp[k]!r}; a list of 1 or {pp['channels']} numbers")
    _need(all(x > 0 for x in pp["std"]), "preprocess.std", "must be positive")
    r = v["run"]
    _need(_is_int(r["batch_size"]) and r["batch_size"] > 0, "run.batch_size", f"{r['batch_size']!r}; a positive integer")
    _need(isinstance(r["device"], str) and (r["device"] == "cpu" or r["device"].startswith("cuda")), "run.device", f"{r['device']!r}; 'cpu' or 'cuda[:N]'")
    _need(_is_int(r["seed"]), "run.seed", f"{r['seed']!r}; an integer")
    bad = [s for s in r["stages"]] if not isinstance(r["stages"], list) else [s for s in r["stages"] if s not in STAGES]
    _need(not bad, "run.stages", f"unknown {bad}; stages are {STAGES}")
    bad = [m for m in r["metrics"] if m not in METRICS] if isinstance(r["metrics"], list) else [r["metrics"]]
    _need(not bad and bool(r["metrics"]), "run.metrics", f"unknown {bad}; metrics are {METRICS}")
    _need(isinstance(r["class_scores"], bool), "run.class_scores", f"{r['class_scores']!r}; true or false")
    _need(r["sparse_scores"] in ("auto", "on", "off"), "run.sparse_scores", f"{r['sparse_scores']!r}; 'auto', 'on' or 'off'")
    _need(isinstance(r["sparse_mass"], (int, float)) and 0 < r["sparse_mass"] <= 1, "run.sparse_mass", f"{r['sparse_mass']!r}; in (0, 1]")
    _need(_is_int(r["sparse_min_per_layer"]) and r["sparse_min_per_layer"] >= 1, "run.sparse_min_per_layer",
          f"{r['sparse_min_per_layer']!r}; an integer >= 1")
    _need(isinstance(r["sparse_max_fraction"], (int, float)) and 0 < r["sparse_max_fraction"] <= 1, "run.sparse_max_fraction",
          f"{r['sparse_max_fraction']!r}; in (0, 1]")
    _need(r["class_kernel_score"] in KERNEL_SCORES, "run.class_kernel_score",
          f"{r['class_kernel_score']!r}; one of {KERNEL_SCORES}")
    _need(_is_int(v["featurevis"]["steps"]) and v["featurevis"]["steps"] > 0, "featurevis.steps", "a positive integer")
    _need(_is_int(v["featurevis"]["edges_per_node"]) and v["featurevis"]["edges_per_node"] >= 0, "featurevis.edges_per_node", "an integer >= 0")
    fl = v["featurevis"]["layers"]
    _need(isinstance(fl, list) and all(isinstance(x, str) and x for x in fl), "featurevis.layers",
          f"{fl!r}; a list of layer names ([] = all conv layers)")
    _need(_is_int(v["exemplars"]["k"]) and v["exemplars"]["k"] > 0, "exemplars.k", "a positive integer")
    _need(_is_int(v["app"]["images_per_class"]) and v["app"]["images_per_class"] >= 0, "app.images_per_class", "an integer >= 0")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
