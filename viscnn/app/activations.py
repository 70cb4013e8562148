"""Run the prepped model on one input image and keep every conv's input and output maps.

The model is loaded once per process (a working copy, never the original) and results are
cached per (model, image, ablation), so clicking around the graph never re-runs the network.
Ablation zeroes chosen nodes (a channel of a layer's output) or edges (one kernel) on a copy.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Optional

import numpy as np

from viscnn.errors import ViscnnError

_MODELS: Dict[str, object] = {}
_CACHE: "OrderedDict[tuple, Activations]" = OrderedDict()
_LOCK = threading.Lock()
_RUN_LOCK = threading.Lock()  # hooks live on the shared model: one forward pass at a time


def _fresh_locks() -> None:
    """Background callbacks fork the threaded server; a lock held by another thread at that moment
    would stay locked forever in the child."""
    global _LOCK, _RUN_LOCK
    _LOCK, _RUN_LOCK = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks)
CACHE_SIZE = 24


@dataclass
class Activations:
    # channels first for every graph layer: a Linear over NHWC channels (a 1x1 conv layer) too
    inputs: Dict[str, np.ndarray]  # layer -> float32 [C_in, H, W] (or [F] for a linear layer)
    outputs: Dict[str, np.ndarray]  # layer -> float32 [C, H, W] (or [C] for a linear layer)
    image: np.ndarray  # float32 [C, H, W], normalized as the model sees it
    logits: np.ndarray  # float32 [n_out]


def get_model(pm):
    """The prepped model's working copy, loaded once per process."""
    from viscnn.model_copy import working_copy

    key = str(pm.root.resolve())
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = working_copy(pm.load_model())
        return _MODELS[key]


def to_tensor(arr: np.ndarray, pm):
    """uint8 [H, W] or [H, W, 3] -> normalized float tensor [1, C, H, W] for ``pm``."""
    import torch

    a = np.asarray(arr, dtype=np.float32) / 255.0
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    c = pm.input_shape[0]
    if a.shape[0] != c:
        raise ViscnnError(f"image has {a.shape[0]} channels, the model needs {c}")
    mean = np.asarray(pm.normalize.get("mean", [0.0] * c), np.float32).reshape(-1, 1, 1)
    std = np.asarray(pm.normalize.get("std", [1.0] * c), np.float32).reshape(-1, 1, 1)
    return torch.from_numpy((a - mean) / std)[None]


OUTSIDE = "outside"  # ablation token: every conv kernel outside the current circuit (see outside_edges)


def outside_edges(graph, circuit_edges) -> np.ndarray:
    """The conv kernels not in the circuit: what "ablate outside the circuit" zeroes. The class layer
    stays whole, so the prediction says what the circuit's channels alone make of the image."""
    keep = np.zeros(graph.num_edges, bool)
    keep[np.asarray(circuit_edges, np.int64)] = True
    conv = np.zeros(graph.num_edges, bool)
    for layer in graph.layers:
        if layer.kind == "conv":
            conv[layer.edge_offset:layer.edge_offset + layer.num_edges] = True
    return np.flatnonzero(conv & ~keep)


def parse_ablation(graph, items: Sequence[str]) -> Tuple[List[int], List[int]]:
    """Ablation strings ("LAYER:CH" nodes, "eN" edges; ``outside`` is resolved by the caller, see
    :func:`outside_edges`) -> (node indices, edge indices)."""
    nodes, edges = [], []
    for it in items:
        if it == OUTSIDE:
            continue
        if it.startswith("e") and it[1:].isdigit():
            e = int(it[1:])
            if not 0 <= e < graph.num_edges:
                raise ViscnnError(f"no edge {e} to ablate (the graph has {graph.num_edges})")
            edges.append(e)
        else:
            nodes.append(graph.node_index(it))
    return sorted(set(nodes)), sorted(set(edges))


def run(pm, image_key: str, arr: np.ndarray, ablate: Sequence[str] = (),
        extra_edges: Optional[np.ndarray] = None) -> Activations:
    """Activations of ``pm``'s model on ``arr``, with ``ablate`` (and the kernels ``extra_edges``, e.g.
    everything outside a circuit) zeroed; cached."""
    extra = np.asarray(extra_edges if extra_edges is not None else [], np.int64)
    import hashlib

    key = (str(pm.root), image_key, tuple(sorted(ablate)), hashlib.sha1(extra.tobytes()).hexdigest() if len(extra) else "")
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    acts = _run(pm, arr, ablate, extra)
    with _LOCK:
        _CACHE[key] = acts
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return acts


def _run(pm, arr, ablate, extra=()) -> Activations:
    import torch

    from viscnn.importance.capture import channels_last, nchw

    graph = pm.graph
    model = get_model(pm)
    nodes, edges = parse_ablation(graph, ablate)
    edges = sorted(set(edges) | {int(e) for e in extra})
    if edges:
        import copy

        with _RUN_LOCK:  # not while another run has its hooks on the shared model: the copy would keep them
            model = copy.deepcopy(model)
        _zero_kernels(model, graph, edges)
    x = to_tensor(arr, pm)
    zero_by_layer: Dict[str, List[int]] = {}
    for n in nodes:
        layer = graph.layers[int(graph.node_layer[n])]
        zero_by_layer.setdefault(layer.name, []).append(int(graph.node_channel[n]))
    if "input" in zero_by_layer:
        x = x.clone()
        x[:, zero_by_layer["input"]] = 0
    modules = dict(model.named_modules())
    ins: Dict[str, np.ndarray] = {}
    outs: Dict[str, np.ndarray] = {}
    hooks = []

    def hook(name):
        def f(mod, inp, out):
            cl = channels_last(mod, out)  # NHWC in and out: kept as [C, H, W] like every other layer
            if name in zero_by_layer:
                out = out.clone()
                out[(slice(None),) * (3 if cl else 1) + (zero_by_layer[name],)] = 0
            a, o = (nchw(inp[0]), nchw(out)) if cl else (inp[0], out)
            ins[name] = a[0].detach().numpy().astype(np.float32, copy=True)
            outs[name] = o[0].detach().numpy().astype(np.float32, copy=True)
            return out
        return f

    with _RUN_LOCK:
        for layer in graph.layers[1:]:
            hooks.append(modules[layer.name].register_forward_hook(hook(layer.name)))
        try:
            with torch.no_grad():
                y = model(x)
        except Exception as e:
            raise ViscnnError(f"running the model failed: {type(e).__name__}: {e}") from None
        finally:
            for h in hooks:
                h.remove()
    logits = y[0].detach().numpy().astype(np.float32).reshape(-1) if hasattr(y, "detach") else np.zeros(0, np.float32)
    return Activations(ins, outs, x[0].numpy().astype(np.float32), logits)


def _zero_kernels(model, graph, edges: Sequence[int]) -> None:
    """Zero the kernels ``edges`` in place (on a copy of the model), one masked write per layer."""
    import torch

    modules = dict(model.named_modules())
    e = np.asarray(edges, np.int64)
    if not len(e):
        return
    rows = graph.edges[e].astype(np.int64)
    with torch.no_grad():
        for li in np.unique(rows[:, 0]):
            layer = graph.layers[int(li)]
            j, i = rows[rows[:, 0] == li, 1], rows[rows[:, 0] == li, 2]
            w = modules[layer.name].weight
            if w.ndim == 4:
                per_in = layer.in_channels // layer.groups
                w[torch.from_numpy(j), torch.from_numpy(i % per_in)] = 0
            else:  # Linear on a flattened map: channel i owns a contiguous block of features
                k = w.shape[1] // layer.in_channels
                cols = (i[:, None] * k + np.arange(k)[None]).reshape(-1)
                w[torch.from_numpy(np.repeat(j, k)), torch.from_numpy(cols)] = 0


def node_map(graph, acts: Activations, node: int, relu: bool = False) -> np.ndarray:
    """The activation map of one node: [H, W] (a [1, 1] map for class nodes)."""
    layer = graph.layers[int(graph.node_layer[node])]
    ch = int(graph.node_channel[node])
    if layer.kind == "input":
        m = acts.image[ch]
    else:
        o = acts.outputs[layer.name]
        m = o[ch] if o.ndim == 3 else np.asarray(o[ch]).reshape(1, 1)
    return np.maximum(m, 0) if relu else m


def edge_maps(graph, acts: Activations, kernel: np.ndarray, edge: int) -> Tuple[np.ndarray, np.ndarray]:
    """(input map, output map) of one kernel: the channel it reads and that channel convolved with it."""
    import torch
    import torch.nn.functional as F

    li, j, i = (int(v) for v in graph.edges[edge])
    layer = graph.layers[li]
    inp = acts.inputs[layer.name]
    if layer.kind == "linear" or inp.ndim != 3:
        flat = inp.reshape(-1)
        k = flat.size // layer.in_channels
        block = flat[i * k:(i + 1) * k]
        side = layer.in_size if layer.in_size[0] * layer.in_size[1] == k else (1, k)
        return block.reshape(side), np.asarray([[float((block * kernel.reshape(-1)[:k]).sum())]], np.float32)
    m = torch.from_numpy(np.array(inp[i], dtype=np.float32))[None, None]
    w = torch.from_numpy(np.array(kernel, dtype=np.float32))[None, None]
    out = F.conv2d(m, w, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    return inp[i], out[0, 0].numpy()


def clear_caches() -> None:
    with _LOCK:
        _CACHE.clear()
        _MODELS.clear()
