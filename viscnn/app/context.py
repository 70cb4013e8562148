"""Per-server state of the app: open prepped models, node positions, images, and the shared cache.

Everything here is keyed by values from the URL state and memoized, so callbacks stay thin and a
threshold change only re-runs the circuit query and the figure builder.
"""

from __future__ import annotations

import hashlib
import tempfile
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from viscnn.app import dataset_sets, queries, state as st
from viscnn.errors import ViscnnError


@dataclass
class Resolved:
    """The answer to one state: scores, the circuit (None while a model run is pending)."""

    pm: object
    query: queries.Query
    node_scores: Optional[np.ndarray]
    edge_scores: Optional[np.ndarray]
    signs: Optional[np.ndarray]
    circuit: object
    pending: bool = False
    run_key: str = ""
    node_signs: Optional[np.ndarray] = None
    sign_metric: Optional[str] = None  # the signed metric the colours come from (None: the scores' own)
    run_info: Optional[dict] = None  # what a model run rested on (queries.run_scores), None for prepped scores


MAX_UPLOADS_LISTED = 12


def grid_layout(graph) -> np.ndarray:
    """float32 [N, 2]: each layer's channels on a square grid, in channel order."""
    xy = np.zeros((graph.num_nodes, 2), np.float32)
    for layer in graph.layers:
        side = int(np.ceil(np.sqrt(layer.channels)))
        ch = np.arange(layer.channels)
        xy[layer.node_offset:layer.node_offset + layer.channels] = np.stack([ch % side, ch // side], 1)
    return xy


def _after_fork(actx) -> None:
    if actx is not None:
        actx._lock = threading.Lock()
        actx._inflight = {}


class AppContext:
    def __init__(self, models_dir=None, default_model: str = "fmnist", cache_dir=None):
        import diskcache

        from viscnn.paths import default_models_dir

        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        self.default_model = default_model
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="viscnn-app-")
            cache_dir = self._tmp.name
        self.cache = diskcache.Cache(str(cache_dir), size_limit=2 ** 30)
        from viscnn.app.jobs import Jobs

        self.jobs = Jobs()  # long model runs (viscnn.app.jobs)
        self._pms: Dict[str, object] = {}
        self._memo: Dict[str, "OrderedDict[tuple, object]"] = {}  # per kind: see _lru
        self._lock = threading.Lock()
        self._inflight: Dict[object, threading.Event] = {}  # memo keys being computed (see _memoize)
        ref = weakref.ref(self)
        # background callbacks fork this threaded server: give the child a lock nobody holds (and no
        # computations of the parent's threads to wait for)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref()))

    # -- models ------------------------------------------------------------------------
    def models(self) -> List[str]:
        from viscnn.prepped import list_models

        return list_models(self.models_dir)

    def prepped(self, name: str):
        from viscnn.prepped import PreppedModel

        with self._lock:
            if name not in self._pms:
                self._pms[name] = PreppedModel.open(name, self.models_dir)
            return self._pms[name]

    def layouts(self, name: str) -> List[str]:
        """Prepped layouts, plus a channel grid (computed here) when prep has not written one."""
        lays = list(self.prepped(name).layouts)
        return lays + ["grid"] if "grid" not in lays else lays

    def defaults(self, name: str) -> dict:
        pm = self.prepped(name)
        return st.default_state(name, pm.metrics, self.layouts(name), [it["file"] for it in pm.images()])

    def _lru(self, key) -> "OrderedDict":
        """Memo entries are kept per kind (a tuple key's first item), each kind with its own size bound,
        so that one kind's entries never push out another's."""
        kind = key[0] if isinstance(key, tuple) and key else "_"
        return self._memo.setdefault(kind, OrderedDict())

    def memo_get(self, key):
        """The memoized value of ``key``, or None."""
        with self._lock:
            return self._lru(key).get(key)

    def _memoize(self, key, fn, size: int = 64):
        """``fn()`` once per key while it stays in the memo. Concurrent requests for a key being computed
        wait for that computation (one threshold change fires several callbacks that all need its circuit)
        instead of computing it again; if it fails, each waiter tries for itself."""
        while True:
            with self._lock:
                lru = self._lru(key)
                if key in lru:
                    lru.move_to_end(key)
                    return lru[key]
                ev = self._inflight.get(key)
                if ev is None:
                    ev = self._inflight[key] = threading.Event()
                    break
            ev.wait()
            with self._lock:
                lru = self._lru(key)
                if key in lru:
                    lru.move_to_end(key)
                    return lru[key]
            return fn()  # the computation we waited for failed (or was pushed out at once): our own
        try:
            v = fn()
            with self._lock:
                lru = self._lru(key)
                lru[key] = v
                while len(lru) > size:
                    lru.popitem(last=False)
            return v
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            ev.set()

    def positions(self, name: str, layout: str) -> np.ndarray:
        from viscnn.app.figures.graph3d import node_positions

        pm = self.prepped(name)
        if layout == "grid" and "grid" not in pm.layouts:
            return self._memoize(("pos", name, layout), lambda: node_positions(pm.graph, grid_layout(pm.graph)))
        return self._memoize(("pos", name, layout), lambda: node_positions(pm.graph, pm.layout(layout)))

    def labels(self, name: str) -> List[str]:
        pm = self.prepped(name)

        def make():
            g = pm.graph
            out = [g.node_id(i) for i in range(g.num_nodes)]
            last = g.layers[-1]
            if last.kind == "linear" and len(pm.classes) == last.channels:
                for c, cname in enumerate(pm.classes):
                    out[last.node_offset + c] += f" ({cname})"
            return out
        return self._memoize(("labels", name), make)

    # -- images --------------------------------------------------------------------------
    def gallery_image(self, name: str, file: str) -> np.ndarray:
        from viscnn.app.uploads import decode_image

        pm = self.prepped(name)
        c, h, w = pm.input_shape
        return self._memoize(("img", name, file), lambda: decode_image(pm.image_path(file).read_bytes(), c, (h, w)))

    def add_upload(self, arr: np.ndarray, name: str = "", model: str = "") -> str:
        """Keep an uploaded image (24 h) and list it, under its file name, in ``model``'s gallery."""
        key = hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()[:16]
        self.cache.set(f"upload:{key}", np.ascontiguousarray(arr), expire=24 * 3600)
        if model:
            with self.cache.transact():
                items = [it for it in (self.cache.get(f"uploads:{model}") or []) if it["key"] != f"up:{key}"]
                items.insert(0, {"key": f"up:{key}", "name": (name or "upload")[:80]})
                self.cache.set(f"uploads:{model}", items[:MAX_UPLOADS_LISTED], expire=24 * 3600)
        return f"up:{key}"

    def uploads(self, model: str) -> List[dict]:
        """[{key, name}] of the uploads still on the server for ``model``, newest first."""
        return [it for it in (self.cache.get(f"uploads:{model}") or []) if f"upload:{it['key'][3:]}" in self.cache]

    def image(self, name: str, key: str) -> np.ndarray:
        """The uint8 image of an image key: ``img:FILE`` (gallery) or ``up:HASH`` (an upload)."""
        if key.startswith("img:"):
            return self.gallery_image(name, key[4:])
        if key.startswith("up:"):
            arr = self.cache.get(f"upload:{key[3:]}")
            if arr is None:
                raise ViscnnError("that uploaded image is no longer on the server; upload it again")
            c, h, w = self.prepped(name).input_shape
            if arr.shape[:2] != (h, w):
                raise ViscnnError("that uploaded image was made for another model; upload it again")
            return arr
        raise ViscnnError(f"no input image {key!r}; pick one from the gallery or upload one")

    # -- scores and circuits ----------------------------------------------------------------
    def run_key(self, s: dict) -> str:
        q = queries.Query(s["target"], s["set"], s["metric"])
        img = s.get("image", "") if queries.IMAGE_SET in s["set"] else ""
        return f"scores:{s['model']}:{q.key}:{img}:n={s.get('n') or dataset_sets.DEFAULT_COUNT}"

    def scores(self, s: dict):
        """(pm, query, node scores, edge scores, signs, pending, run key, run info) for a state."""
        pm = self.prepped(s["model"])
        q = queries.Query(s["target"], s["set"], s["metric"])
        if s["metric"] not in pm.metrics:
            raise ViscnnError(f"metric {s['metric']!r} was not prepped; prepped metrics: {', '.join(pm.metrics)}")
        if not queries.needs_run(pm, q):
            ns, es = self._memoize(("pre", s["model"], q.key), lambda: queries.precomputed_scores(pm, q), 16)
            signs = self._memoize(("signs", s["model"], q.key), lambda: queries.signed_scores(pm, q.metric, es, q), 16)
            return pm, q, ns, es, signs, False, "", None
        key = self.run_key(s)
        hit = self.cache.get(key)
        if hit is None:
            return pm, q, None, None, None, True, key, None
        return pm, q, hit[0], hit[1], None, False, key, hit[2]

    def compute_run(self, s: dict, progress=None) -> str:
        """Run the model for a state's query and cache the scores (called on a job thread,
        viscnn.app.jobs). ``progress(images done, images in all)``."""
        from viscnn.app.activations import get_model

        key = self.run_key(s)
        if self.cache.get(key) is not None:
            return key
        pm = self.prepped(s["model"])
        q = queries.Query(s["target"], s["set"], s["metric"])
        cur = self.image(s["model"], s["image"]) if queries.IMAGE_SET in s["set"] and s.get("image") else None
        ns, es, info = queries.run_scores(pm, get_model(pm), q, lambda f: self.gallery_image(s["model"], f), cur,
                                          progress, s.get("n") or dataset_sets.DEFAULT_COUNT)
        self.cache.set(key, (ns, es, info), expire=24 * 3600)
        return key

    def method_circuit(self, s: dict):
        """(circuit, info) of the state's iterative/learned circuit when its job has cached it, else None
        (viscnn.app.views.circuit.method); raises ViscnnError for a state that has no method circuit."""
        from viscnn.app.views.circuit import method as M

        return self.cache.get(M.method_key(self, s))

    def resolve(self, s: dict) -> Resolved:
        pm, q, ns, es, signs, pending, key, info = self.scores(s)
        if pending:
            return Resolved(pm, q, None, None, None, None, True, key)
        from viscnn.app.views.circuit import method as M

        if M.method_of(s) != M.DEFAULT_METHOD:  # an iterative/learned circuit: computed by its job, cached on disk
            hit = self.method_circuit(s)
            if hit is None:
                return Resolved(pm, q, None, None, None, None, True, key)
            circ, minfo = hit
            info = dict(info or {}, method=minfo)
            if signs is None:
                return Resolved(pm, q, ns, es, None, circ, False, key, run_info=info)
            return Resolved(pm, q, ns, es, signs[1], circ, False, key, node_signs=signs[0], sign_metric=signs[2],
                            run_info=info)
        thr = st.threshold_kwargs(s["mode"], s["value"])
        ck = ("circ", s["model"], q.key, key, s["mode"], float(s["value"]))  # the run key has the image and count
        targets = self._memoize(("tn", s["model"], s["target"]), lambda: queries.target_nodes(pm, s["target"]), 16)
        # per-layer orderings, made once per score vector: a threshold change then costs O(edges kept)
        ranked = self._memoize(("rank", s["model"], q.key, key), lambda: queries.ranked_of(pm, q, es), 8)
        circ = self._memoize(ck, lambda: queries.circuit_of(pm.graph, ns, es, thr, targets, ranked), 16)
        if signs is None:
            return Resolved(pm, q, ns, es, None, circ, False, key, run_info=info)
        return Resolved(pm, q, ns, es, signs[1], circ, False, key, node_signs=signs[0], sign_metric=signs[2])
