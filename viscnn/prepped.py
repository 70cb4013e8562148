"""The on-disk format of a prepped model, and its reader. ``viscnn prep`` writes it; the app reads it.

prepped_models/NAME/
  manifest.json          {"format": "viscnn.prepped", "version": 2, "name", "model" (spec), "weights"
                          (file name in this folder or null), "weights_sha256", "input_shape" [C,H,W],
                          "classes" [names], "normalize" {"mean": [...], "std": [...]},
                          "viscnn_version", "settings" {...}, "image_sets" [names: classes..., "all"],
                          "image_counts" [per set], "metrics" [names], "layouts" [names], "stages" {stage: done},
                          "class_scores" {"metrics" [names], "images" [per class]} or absent/null,
                          "scores_layout" "dense"|"sparse" (absent: dense), "sparse" {"mass", "min_per_layer",
                          "max_fraction"} or null}
  weights.pt             state_dict (loaded with weights_only=True)
  graph/                 graph.json + edges.npy (viscnn.graph.Graph.save)
  kernels/LAYER.npy      float32 [out, in/groups, kh, kw] per conv/linear layer
  scores/METRIC/nodes.npy float32 [n_sets, n_nodes]   target = loss over each image set
  scores/METRIC/edges.npy float32 [n_sets, n_edges]
  scores/METRIC/class_nodes.npy float32 [n_classes, n_nodes]  row K: target = class:K over the images of K
  scores/METRIC/class_edges.npy float32 [n_classes, n_edges]  (own-class scores; only the metrics listed
                          in "class_scores", i.e. the target-dependent ones: activation and weight do not
                          depend on the target, so their own-class scores are nodes.npy/edges.npy's class rows)
  Sparse layout (big models; prep's run.sparse_scores, "auto" past 2 GiB of dense edge files): no edges.npy /
  class_edges.npy; instead edges_all.npy float32 [n_edges] (the "all" row, dense) with edges_all.order.npy
  (its nonzero edges layer by layer, |score| descending), and the class sets' rows and the own-class rows as
  the CSR groups "edges" and "class_edges" of viscnn.importance.sparse_scores (per row and layer the top
  edges, the layer's |score| total and whether it is complete). nodes.npy / class_nodes.npy stay dense.
  Version 1 folders (no "scores_layout") are read as dense.
  layouts/NAME.npy       float32 [n_nodes, 2]: in-layer positions (the layer axis comes from the graph)
  featurevis/LAYER.npy   uint8 [channels, h, w, 3]; featurevis/LAYER.json {"objective": [...],
                          "best_real": [...], "beats_real": [...]}
  featurevis/edges.npy   uint8 [n, h, w, 3] edge visualizations; featurevis/edges.json adds "edges" [global edge idx]
  exemplars/LAYER.npy    uint8 [channels, k, h, w, 3] crops; exemplars/LAYER.json {"image_index", "value", "pos"}
  images/NNN.png         the app's input images; images/index.json [{"file", "label", "class"}]

Every file is written atomically, and all arrays are plain .npy (no pickle). While a prep is
unfinished, ``scores/_partial/`` (scoring checkpoints), ``scores/_exemplars/`` (the scoring
pass's top-k tables, until the exemplars stage uses them) and ``featurevis/_partial/`` (rendered
batches of an unfinished layer) also exist; the reader ignores them. A model whose manifest lacks
the ``graph`` or ``scores`` stage is incomplete: :func:`list_models` leaves it out and
:meth:`PreppedModel.open` refuses it. A model given as a ``file.py:factory`` spec has that file copied
to ``model/file.py`` and the manifest's ``model`` is ``model/file.py:factory``, relative to the folder,
so the folder can be moved or copied anywhere and served.

The reader is shared by the app's request threads. Each array is memory-mapped (and each small JSON
file parsed) once per PreppedModel, under a lock; every caller gets the cached read-only memmap (and
a fresh copy of the parsed JSON). ``np.load`` parses the .npy header with ``ast.literal_eval``, which
is not thread-safe in CPython 3.11 (``SystemError: AST constructor recursion depth mismatch``), while
reading an open memmap is. A missing file is not cached (it is looked for again on the next call).
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from viscnn.errors import ViscnnError
from viscnn.graph import Graph

FORMAT = "viscnn.prepped"
VERSION = 2  # 2: optional sparse score layout ("scores_layout": "sparse"); version 1 folders read as dense
READS = (1, 2)
TARGET_FREE_METRICS = ("activation", "weight")  # the same for every target (viscnn.importance.metrics)

_OPEN: "weakref.WeakSet[PreppedModel]" = weakref.WeakSet()


def _fresh_locks() -> None:
    """The app's background callbacks fork the threaded server: a lock another thread held at that
    moment would stay locked forever in the child, so each reader gets a new one there."""
    for pm in list(_OPEN):
        pm._lock = threading.RLock()


os.register_at_fork(after_in_child=_fresh_locks)


def safe_layer_file(layer: str) -> str:
    """Module paths are dotted names; keep them as file names but refuse anything path-like."""
    if not layer or "/" in layer or "\\" in layer or layer.startswith("."):
        raise ViscnnError(f"bad layer name {layer!r}")
    return layer


class PreppedModel:
    """Read-only, memory-mapped view of ``prepped_models/NAME``."""

    def __init__(self, root):
        self.root = Path(root)
        mf = self.root / "manifest.json"
        if not mf.is_file():
            raise ViscnnError(f"{self.root} is not a prepped model (no manifest.json)")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise ViscnnError(f"corrupt manifest {mf}: {e}") from None
        if self.manifest.get("format") != FORMAT:
            raise ViscnnError(f"{mf} is not a viscnn prepped-model manifest")
        if self.manifest.get("version") not in READS:
            raise ViscnnError(f"{mf}: format version {self.manifest.get('version')} unsupported (this viscnn reads "
                              f"{', '.join(map(str, READS))})")
        self._lock = threading.RLock()  # re-entrant: a cached value may be built from other cached arrays
        self._opened: Dict[str, object] = {}  # cache key -> memmap / parsed JSON / graph
        _OPEN.add(self)

    def _once(self, key: str, load: Callable[[], object]):
        """``load()``'s result, made once (under the lock) and cached under ``key``."""
        v = self._opened.get(key)
        if v is not None:
            return v
        with self._lock:
            v = self._opened.get(key)
            if v is None:
                v = self._opened[key] = load()
            return v

    def _mmap(self, p: Path) -> np.ndarray:
        return self._once(f"npy:{p}", lambda: np.load(p, mmap_mode="r", allow_pickle=False))

    def _json(self, p: Path):
        """The parsed file, as a fresh copy (callers may modify it; the file is read only once)."""
        return _copy_json(self._once(f"json:{p}", lambda: json.loads(p.read_text())))

    @classmethod
    def open(cls, name: str, models_dir=None) -> "PreppedModel":
        from viscnn.paths import default_models_dir

        root = Path(models_dir) if models_dir else default_models_dir()
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ViscnnError(f"bad model name {name!r}")
        if not (root / name / "manifest.json").is_file():
            raise ViscnnError(f"unknown prepped model {name!r}; available: {', '.join(list_models(root)) or 'none'}")
        pm = cls(root / name)
        missing = missing_stages(pm.manifest)
        if missing:
            raise ViscnnError(f"prepped model {name!r} in {root} is incomplete (stages not done: {', '.join(missing)}); "
                              f"rerun `viscnn prep` on its config to finish it")
        return pm

    # -- metadata ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def classes(self) -> List[str]:
        return list(self.manifest.get("classes", []))

    @property
    def image_sets(self) -> List[str]:
        return list(self.manifest.get("image_sets", []))

    @property
    def metrics(self) -> List[str]:
        return list(self.manifest.get("metrics", []))

    @property
    def layouts(self) -> List[str]:
        return list(self.manifest.get("layouts", []))

    @property
    def input_shape(self) -> tuple:
        return tuple(self.manifest["input_shape"])

    @property
    def normalize(self) -> Dict[str, list]:
        return self.manifest.get("normalize", {"mean": [0.0], "std": [1.0]})

    @property
    def graph(self) -> Graph:
        """The model graph, loaded once."""
        return self._once("graph", lambda: Graph.load(self.root / "graph"))

    def load_model(self):
        """The model with its weights (a fresh object each call)."""
        from viscnn.model_spec import load_model, manifest_spec

        w = self.manifest.get("weights")
        return load_model(manifest_spec(self.manifest["model"], self.root), self.root / w if w else None)

    # -- arrays ----------------------------------------------------------------------
    def _npy(self, rel: str) -> np.ndarray:
        p = self.root / rel
        if not p.is_file():
            raise ViscnnError(f"{self.name}: missing {rel} (rerun `viscnn prep`)")
        return self._mmap(p)

    def set_index(self, image_set: str) -> int:
        try:
            return self.image_sets.index(image_set)
        except ValueError:
            raise ViscnnError(f"unknown image set {image_set!r}; sets: {', '.join(self.image_sets)}") from None

    def node_scores(self, metric: str, image_set: Optional[str] = None) -> np.ndarray:
        self._check_metric(metric)
        a = self._npy(f"scores/{metric}/nodes.npy")
        return a if image_set is None else a[self.set_index(image_set)]

    def edge_scores(self, metric: str, image_set: Optional[str] = None) -> np.ndarray:
        """[sets, E] (dense layout only), or one set's [E] row (a sparse row densified: 0 where not stored)."""
        self._check_metric(metric)
        if not self.sparse:
            a = self._npy(f"scores/{metric}/edges.npy")
            return a if image_set is None else a[self.set_index(image_set)]
        if image_set is None:
            raise ViscnnError(f"{self.name}: edge scores are stored sparse; ask for one image set at a time")
        if image_set == "all":
            return self._npy(f"scores/{metric}/edges_all.npy")
        from viscnn.importance.sparse_scores import dense_row

        return dense_row(self._group(metric, "edges"), self.set_index(image_set), self.graph.num_edges)

    @property
    def sparse(self) -> bool:
        """Whether the per-class edge scores are stored sparse (:mod:`viscnn.importance.sparse_scores`)."""
        return self.manifest.get("scores_layout") == "sparse"

    def _group(self, metric: str, group: str) -> Dict[str, np.ndarray]:
        from viscnn.importance.sparse_scores import SUFFIXES

        return {k: self._npy(f"scores/{metric}/{group}.sparse.{k}.npy") for k in SUFFIXES}

    def ranked_edges(self, metric: str, which, own_class: bool = False):
        """The stored per-layer ranking (:class:`~viscnn.importance.ranked.RankedEdges`) of one image set's
        edge scores (``own_class``: of ``class:K`` over K, ``which`` = K) in the sparse layout; None in the
        dense layout (the caller sorts the dense row)."""
        if not self.sparse:
            return None
        from viscnn.importance.sparse_scores import ranked_row

        self._check_metric(metric)
        E = self.graph.num_edges
        if own_class:
            k = self._class_index(which)
            if metric in TARGET_FREE_METRICS and metric not in (self.manifest.get("class_scores") or {}).get("metrics", []):
                return self.ranked_edges(metric, self.classes[k])
            return ranked_row(self._group(metric, "class_edges"), k, E)
        if which == "all":
            return self._once(f"ranked_all:{metric}", lambda: self._ranked_all(metric))
        return ranked_row(self._group(metric, "edges"), self.set_index(which), E)

    def _ranked_all(self, metric: str):
        from viscnn.importance.ranked import RankedEdges

        g = self.graph
        e = self._npy(f"scores/{metric}/edges_all.npy")
        order = np.asarray(self._npy(f"scores/{metric}/edges_all.order.npy"), np.int64)
        offs = np.array([l.edge_offset for l in g.layers] + [g.num_edges], np.int64)
        lay = np.searchsorted(offs, order, "right") - 1  # nondecreasing: the order goes layer by layer
        starts = np.searchsorted(lay, np.arange(len(g.layers) + 1), "left")
        ae = np.abs(np.asarray(e, np.float64))
        totals = np.array([ae[a:b].sum() if b > a else 0.0 for a, b in
                           ((l.edge_offset, l.edge_offset + (l.num_edges if l.kind != "input" else 0)) for l in g.layers)])
        return RankedEdges(order, np.asarray(e, np.float64)[order], starts.astype(np.int64), totals,
                           np.ones(len(g.layers), bool), g.num_edges, dense=e)

    @property
    def class_score_metrics(self) -> List[str]:
        """Prepped metrics whose own-class scores (``class:K`` over the images of K) are available."""
        stored = (self.manifest.get("class_scores") or {}).get("metrics")
        if not stored:
            return []
        return [m for m in self.metrics if m in stored or m in TARGET_FREE_METRICS]

    def class_image_count(self, cls) -> Optional[int]:
        """How many images of class ``cls`` (name or index) the own-class scores average over."""
        counts = (self.manifest.get("class_scores") or {}).get("images") or []
        k = self._class_index(cls)
        return int(counts[k]) if k < len(counts) else None

    def class_scores(self, metric: str, cls) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(nodes [N], edges [E]) of target ``class:K`` over the images of class K (``cls``: name or
        index), precomputed by prep; None when this model or metric has no own-class scores."""
        if metric not in self.class_score_metrics:
            return None
        k = self._class_index(cls)
        if metric in TARGET_FREE_METRICS and metric not in self.manifest["class_scores"]["metrics"]:
            return self.node_scores(metric)[k], self.edge_scores(metric, self.image_sets[k])
        if self.sparse:
            from viscnn.importance.sparse_scores import dense_row

            return (self._npy(f"scores/{metric}/class_nodes.npy")[k],
                    dense_row(self._group(metric, "class_edges"), k, self.graph.num_edges))
        return self._npy(f"scores/{metric}/class_nodes.npy")[k], self._npy(f"scores/{metric}/class_edges.npy")[k]

    def _class_index(self, cls) -> int:
        if isinstance(cls, (int, np.integer)) and 0 <= cls < len(self.classes):
            return int(cls)
        if isinstance(cls, str) and cls in self.classes:
            return self.classes.index(cls)
        raise ViscnnError(f"unknown class {cls!r}; classes: {', '.join(self.classes)}")

    def _check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise ViscnnError(f"metric {metric!r} was not prepped; prepped metrics: {', '.join(self.metrics)}")

    def layout(self, name: str) -> np.ndarray:
        if name not in self.layouts:
            raise ViscnnError(f"unknown layout {name!r}; layouts: {', '.join(self.layouts)}")
        return self._npy(f"layouts/{name}.npy")

    def kernels(self, layer: str) -> np.ndarray:
        return self._npy(f"kernels/{safe_layer_file(layer)}.npy")

    def featurevis(self, layer: str) -> Optional[np.ndarray]:
        p = self.root / "featurevis" / f"{safe_layer_file(layer)}.npy"
        return self._mmap(p) if p.is_file() else None

    def featurevis_meta(self, layer: str) -> Optional[dict]:
        p = self.root / "featurevis" / f"{safe_layer_file(layer)}.json"
        return self._json(p) if p.is_file() else None

    def edge_featurevis(self) -> tuple:
        """(global edge indices, uint8 images [n, h, w, 3], meta) of the prepped edge visualizations.
        Read once; every caller shares the same (read-only) objects."""
        p = self.root / "featurevis" / "edges.json"
        if not p.is_file():
            return np.zeros(0, np.int64), None, None

        def load():
            meta = json.loads(p.read_text())
            imgs = np.load(self.root / "featurevis" / "edges.npy", mmap_mode="r", allow_pickle=False)
            edges = np.asarray(meta["edges"], np.int64)
            edges.flags.writeable = False  # shared by every caller
            return edges, imgs, meta
        return self._once("edge_featurevis", load)

    def exemplars(self, layer: str) -> Optional[np.ndarray]:
        p = self.root / "exemplars" / f"{safe_layer_file(layer)}.npy"
        return self._mmap(p) if p.is_file() else None

    def images(self) -> List[dict]:
        p = self.root / "images" / "index.json"
        return self._json(p) if p.is_file() else []

    def image_path(self, file: str) -> Path:
        """Path of one prepped input image; refuses anything outside ``images/``."""
        base = (self.root / "images").resolve()
        p = (base / file).resolve()
        if base not in p.parents or not p.is_file():
            raise ViscnnError(f"no prepped image {file!r}")
        return p


def _copy_json(v):
    if isinstance(v, dict):
        return {k: _copy_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy_json(x) for x in v]
    return v


REQUIRED_STAGES = ("graph", "scores")  # without these the app has nothing to draw


def missing_stages(manifest: dict) -> List[str]:
    done = manifest.get("stages") or {}
    return [s for s in REQUIRED_STAGES if s not in done]


def _complete(folder: Path) -> bool:
    try:
        return not missing_stages(json.loads((folder / "manifest.json").read_text()))
    except (OSError, ValueError):
        return False


def list_models(models_dir=None, include_incomplete: bool = False) -> List[str]:
    """Names of the prepped models in ``models_dir``; a half-prepped one (graph only, or an
    interrupted run) is left out unless ``include_incomplete``."""
    from viscnn.paths import default_models_dir

    root = Path(models_dir) if models_dir else default_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()
                  and (include_incomplete or _complete(p)))
