"""A small but complete prepped model for the app's tests (and the app benchmark).

``make_prepped(root, name)`` writes prepped_models/NAME/ in exactly the format documented in
``viscnn.prepped``, using the real graph builder. Weights and scores are seeded random: the app only
needs the arrays' shapes and meaning, not a trained network.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

TINY_PY = '''
import torch
from torch import nn


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )
'''

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_prepped(root, name: str = "tiny", *, spec: Optional[str] = None, input_shape: Sequence[int] = (1, 28, 28),
                 classes: Optional[Sequence[str]] = None, include_classes: bool = True, n_images: int = 6,
                 seed: int = 0, fv_size: int = 16) -> Path:
    """Write a complete prepped model under ``root/name`` and return its folder.

    ``spec`` defaults to a tiny Fashion-MNIST-shaped CNN written into the folder
    (``tiny.py:tiny``); pass e.g. ``torchvision:alexnet`` for a big random model.
    """
    import torch

    from viscnn.graph import build_graph
    from viscnn.io import atomic_save_npy, atomic_write_bytes, atomic_write_text
    from viscnn.model_spec import load_model

    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    if spec is None:
        atomic_write_text(d / "tiny.py", TINY_PY)
        spec = f"{d / 'tiny.py'}:tiny"
        classes = list(classes or CLASSES)
    torch.manual_seed(seed)
    model = load_model(spec).eval()
    torch.save(model.state_dict(), d / "weights.pt")
    c, h, w = input_shape
    graph = build_graph(model, (h, w), in_channels=c, include_classes=include_classes, model_name=name)
    graph.save(d / "graph")
    if classes is None:
        classes = [f"class{i}" for i in range(10)]
    rng = np.random.default_rng(seed)

    modules = dict(model.named_modules())
    for layer in graph.layers[1:]:
        wgt = modules[layer.name].weight.detach().numpy().astype(np.float32)
        if wgt.ndim == 2:  # linear after a global pool: [out, in] -> [out, in, 1, 1]
            wgt = wgt.reshape(wgt.shape[0], layer.in_channels, 1, 1)
        atomic_save_npy(d / "kernels" / f"{layer.name}.npy", wgt)

    sets = list(classes) + ["all"]
    metrics = ["taylor", "taylor_signed"]
    # Structured random scores: per set, some channels of each layer matter; kernels between two
    # of them score high, so circuits are connected paths as in a real model.
    src = np.zeros(graph.num_edges, np.int64)
    src[graph.links[:, 0]] = graph.links[:, 1]
    tgt = graph.edge_target.astype(np.int64)
    for m in metrics:
        nodes = np.empty((len(sets), graph.num_nodes), np.float32)
        edges = np.empty((len(sets), graph.num_edges), np.float32)
        for k in range(len(sets)):
            imp = rng.random(graph.num_nodes) < 0.4
            imp[: graph.layers[0].channels] = True
            nodes[k] = np.where(imp, 1.0, 0.05) * (0.2 + rng.random(graph.num_nodes))
            edges[k] = nodes[k][src] * nodes[k][tgt] * (0.5 + rng.random(graph.num_edges))
        if m == "taylor_signed":
            nodes = nodes * np.where(rng.random(nodes.shape) < 0.3, -1, 1)
            edges = edges * np.where(rng.random(edges.shape) < 0.3, -1, 1)
        atomic_save_npy(d / "scores" / m / "nodes.npy", nodes.astype(np.float32))
        atomic_save_npy(d / "scores" / m / "edges.npy", edges.astype(np.float32))

    grid = np.zeros((graph.num_nodes, 2), np.float32)
    for layer in graph.layers:
        n = layer.channels
        side = int(np.ceil(np.sqrt(n)))
        ch = np.arange(n)
        grid[layer.node_offset:layer.node_offset + n] = np.stack([ch % side, ch // side], 1) - (side - 1) / 2
    atomic_save_npy(d / "layouts" / "grid.npy", grid)
    for lay in ("mds", "pca"):
        atomic_save_npy(d / "layouts" / f"{lay}.npy", rng.normal(size=(graph.num_nodes, 2)).astype(np.float32))

    for layer in graph.layers[1:]:
        n = layer.channels
        fv = rng.integers(0, 256, size=(n, fv_size, fv_size, 3), dtype=np.uint8)
        atomic_save_npy(d / "featurevis" / f"{layer.name}.npy", fv)
        atomic_write_text(d / "featurevis" / f"{layer.name}.json", json.dumps(
            {"objective": rng.random(n).tolist(), "best_real": rng.random(n).tolist(),
             "beats_real": (rng.random(n) < 0.5).tolist()}))
        ex = rng.integers(0, 256, size=(n, 3, 12, 12, 3), dtype=np.uint8)
        atomic_save_npy(d / "exemplars" / f"{layer.name}.npy", ex)
        atomic_write_text(d / "exemplars" / f"{layer.name}.json", json.dumps(
            {"image_index": rng.integers(0, 100, size=(n, 3)).tolist(), "value": rng.random((n, 3)).tolist()}))

    some = np.arange(0, graph.num_edges, 7)
    atomic_save_npy(d / "featurevis" / "edges.npy", rng.integers(0, 256, size=(len(some), fv_size, fv_size, 3), dtype=np.uint8))
    atomic_write_text(d / "featurevis" / "edges.json", json.dumps({"edges": some.tolist()}))

    index = []
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(n_images):
        cls = k % len(classes)
        img = ((np.sin(xx * (k + 1) / 5.0) * np.cos(yy * (k + 2) / 7.0) + 1) * 127.5).astype(np.uint8)
        if c == 3:
            img = np.stack([img, img[::-1], img[:, ::-1]], -1)
        f = f"{k:03d}.png"
        atomic_write_bytes(d / "images" / f, _png(img))
        index.append({"file": f, "label": cls, "class": classes[cls]})
    atomic_write_text(d / "images" / "index.json", json.dumps(index))

    manifest = {
        "format": "viscnn.prepped", "version": 1, "name": name, "model": spec, "weights": "weights.pt",
        "weights_sha256": "", "input_shape": [c, h, w], "classes": list(classes),
        "normalize": {"mean": [0.5] * c, "std": [0.25] * c}, "viscnn_version": "test",
        "settings": {"fixture": True}, "image_sets": sets, "image_counts": [10] * len(classes) + [10 * len(classes)],
        "metrics": metrics, "layouts": ["mds", "pca", "grid"],
        "stages": {s: True for s in ("graph", "scores", "layouts", "featurevis", "exemplars", "images")},
    }
    atomic_write_text(d / "manifest.json", json.dumps(manifest))
    return d


def default_model() -> tuple:
    """(models dir, name) of the real default model, prepped_models/fmnist (committed): the browser
    tests and the first-paint benchmark run on it, as the acceptance asks."""
    from viscnn.paths import default_models_dir
    from viscnn.prepped import list_models

    d = default_models_dir()
    if "fmnist" not in list_models(d):
        raise RuntimeError(f"the default prepped model fmnist is missing from {d}")
    return d, "fmnist"


def app_model(tmp_path_factory) -> tuple:
    """(models dir, model name) the app tests run on: the real default model when
    ``VISCNN_APP_TEST_MODEL`` names one under prepped_models/ (e.g. ``fmnist``), else the tiny fixture."""
    import os

    from viscnn.paths import default_models_dir

    name = os.environ.get("VISCNN_APP_TEST_MODEL")
    if name:
        return default_models_dir(), name
    root = tmp_path_factory.mktemp("prepped")
    make_prepped(root, "tiny")
    return root, "tiny"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models_dir, name: str, port: int, extra=(), timeout: float = 60.0):
    """``viscnn serve`` in a subprocess; returns the Popen once the port answers. Its output goes to a
    temp file (``proc.log_path``): a pipe nobody reads would fill up and block the server's request log."""
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.request

    log = tempfile.NamedTemporaryFile(prefix="viscnn-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "viscnn", "serve", name, "--models-dir", str(models_dir),
                             "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    log.close()
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {open(proc.log_path, errors='replace').read()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


def walk(c):
    """Every Dash component under ``c`` (a component, a list of them, or None), depth first."""
    if isinstance(c, (list, tuple)):
        for x in c:
            yield from walk(x)
        return
    if c is None or isinstance(c, (str, int, float)):
        return
    yield c
    yield from walk(getattr(c, "children", None))
