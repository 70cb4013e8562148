"""The kernel-level graph: nodes are filters (conv output channels, input image channels,
optionally class logits), edges are individual 2D kernels.

Node indices are global and contiguous per layer (``layer.node_offset + channel``); edge
indices are contiguous per layer too, in the canonical order ``(out_channel, in_channel)``.
A kernel reads one channel of its conv's input tensor; when that channel is a sum of
several filters (a residual add) the kernel has several *source* nodes, so ``links``
(edge, source) pairs can outnumber edges.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from viscnn.errors import ViscnnError
from viscnn.io import atomic_save_npy, atomic_write_text

FORMAT = "viscnn.graph"
VERSION = 1


@dataclass
class Layer:
    """One layer of nodes: the input image, a Conv2d (or a channels-last Linear, a 1x1 conv), or
    the final Linear (classes)."""

    name: str  # module path ("features.3"), or "input"
    kind: str  # "input" | "conv" | "linear"
    channels: int  # number of nodes
    in_channels: int = 0
    groups: int = 1
    kernel_size: Tuple[int, int] = (0, 0)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    padding_mode: str = "zeros"
    bias: bool = False
    out_size: Tuple[int, int] = (0, 0)  # spatial size of this layer's output map
    in_size: Tuple[int, int] = (0, 0)  # spatial size of the tensor its kernels read
    depth: int = 0  # longest path from the input, in layers (the 3D layout's axis)
    node_offset: int = 0
    edge_offset: int = 0
    # per input channel of this layer's input tensor: global indices of the nodes summed into it
    input_sources: List[List[int]] = field(default_factory=list)
    # an nn.Linear over the channel axis of NHWC tensors (ConvNeXt's pointwise layers): a 1x1 conv
    # whose weight [out, in] rows are the kernels; its module reads and writes channels-last tensors
    channels_last: bool = False

    @property
    def num_edges(self) -> int:
        if self.kind == "input":
            return 0
        return self.channels * (self.in_channels // self.groups)

    def in_channels_of(self, out_ch: int) -> range:
        """The input channels that output channel ``out_ch`` has kernels for (its group)."""
        per_in = self.in_channels // self.groups
        g = out_ch // (self.channels // self.groups)
        return range(g * per_in, (g + 1) * per_in)


class Graph:
    """Nodes, kernel edges and source links of a CNN. Built by :func:`viscnn.graph.build_graph`."""

    def __init__(self, layers: List[Layer], input_shape: Tuple[int, int, int], model_name: str = ""):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.model_name = model_name
        self._by_name: Dict[str, int] = {l.name: i for i, l in enumerate(layers)}

    # -- sizes and lookups -------------------------------------------------
    @property
    def num_nodes(self) -> int:
        last = self.layers[-1]
        return last.node_offset + last.channels

    @property
    def num_edges(self) -> int:
        last = self.layers[-1]
        return last.edge_offset + last.num_edges

    def layer(self, name: str) -> Layer:
        try:
            return self.layers[self._by_name[name]]
        except KeyError:
            raise ViscnnError(f"no layer {name!r} in the graph; layers: {', '.join(self._by_name)}") from None

    def layer_index(self, name: str) -> int:
        self.layer(name)
        return self._by_name[name]

    def conv_layers(self) -> List[Layer]:
        return [l for l in self.layers if l.kind == "conv"]

    def node_id(self, index: int) -> str:
        li = int(self.node_layer[index])
        return f"{self.layers[li].name}:{index - self.layers[li].node_offset}"

    def node_index(self, node_id: str) -> int:
        name, sep, ch = node_id.rpartition(":")
        if not sep or not ch.isdigit():
            raise ViscnnError(f"bad node id {node_id!r}: expected LAYER:CHANNEL, e.g. features.3:17")
        layer = self.layer(name)
        c = int(ch)
        if c >= layer.channels:
            raise ViscnnError(f"node {node_id!r}: layer {name} has only {layer.channels} channels")
        return layer.node_offset + c

    # -- arrays ---------------------------------------------------------------
    @cached_property
    def node_layer(self) -> np.ndarray:
        return np.concatenate([np.full(l.channels, i, np.int32) for i, l in enumerate(self.layers)])

    @cached_property
    def node_channel(self) -> np.ndarray:
        return np.concatenate([np.arange(l.channels, dtype=np.int32) for l in self.layers])

    @cached_property
    def edges(self) -> np.ndarray:
        """int32 [E, 3]: (layer index, out channel, in channel), in canonical order."""
        parts = []
        for li, l in enumerate(self.layers):
            if l.kind == "input":
                continue
            per_out = l.channels // l.groups
            per_in = l.in_channels // l.groups
            j = np.repeat(np.arange(l.channels), per_in)
            i = (j // per_out) * per_in + np.tile(np.arange(per_in), l.channels)
            parts.append(np.stack([np.full_like(j, li), j, i], 1))
        if not parts:
            return np.zeros((0, 3), np.int32)
        return np.concatenate(parts).astype(np.int32)

    @cached_property
    def edge_target(self) -> np.ndarray:
        """Global node index of each edge's output filter."""
        offs = np.array([l.node_offset for l in self.layers], np.int64)
        return (offs[self.edges[:, 0]] + self.edges[:, 1]).astype(np.int32)

    @cached_property
    def links(self) -> np.ndarray:
        """int32 [L, 2]: (edge index, source node index); one row per source of each kernel's input."""
        rows = []
        for li, l in enumerate(self.layers):
            if l.kind == "input":
                continue
            e = np.arange(l.edge_offset, l.edge_offset + l.num_edges)
            in_ch = self.edges[e, 2]
            counts = np.array([len(s) for s in l.input_sources], np.int64)
            flat = np.array([n for s in l.input_sources for n in s], np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rep = counts[in_ch]
            edge_rep = np.repeat(e, rep)
            pos = np.repeat(starts[in_ch], rep) + (np.arange(rep.sum()) - np.repeat(np.cumsum(rep) - rep, rep))
            rows.append(np.stack([edge_rep, flat[pos]], 1))
        if not rows:
            return np.zeros((0, 2), np.int32)
        return np.concatenate(rows).astype(np.int32)

    @cached_property
    def link_ptr(self) -> np.ndarray:
        """int64 [E + 1]: edge e's rows of :attr:`links` are ``link_ptr[e]:link_ptr[e + 1]`` (rows are grouped
        by edge, ascending), so finding an edge's sources never searches the whole link table."""
        links = self.links
        counts = np.bincount(links[:, 0], minlength=self.num_edges) if len(links) else np.zeros(self.num_edges, np.int64)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def link_rows(self, edges: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(position in ``edges``, source node), int64, for every source link of ``edges``, grouped by edge
        in the order given: one gather through :attr:`link_ptr`, no search of the link table."""
        edges = np.asarray(edges, np.int64)
        lo = self.link_ptr[edges]
        counts = self.link_ptr[edges + 1] - lo
        owner = np.repeat(np.arange(len(edges)), counts)
        rows = np.arange(len(owner)) + (lo - (np.cumsum(counts) - counts))[owner]
        return owner, self.links[:, 1][rows].astype(np.int64)

    def edge_index(self, layer: str, out_ch: int, in_ch: int) -> int:
        """Global index of the kernel ``layer.weight[out_ch, in_ch - group start]``."""
        l = self.layer(layer)
        if not 0 <= out_ch < l.channels or in_ch not in l.in_channels_of(out_ch):
            raise ViscnnError(f"no kernel {layer}[{out_ch}, {in_ch}]")
        per_in = l.in_channels // l.groups
        return l.edge_offset + out_ch * per_in + (in_ch % per_in)

    # -- summaries --------------------------------------------------------------
    def summary(self, include_input: bool = False) -> dict:
        convs = [l for l in self.layers if l.kind != "input" or include_input]
        layers = [
            {"name": l.name, "kind": l.kind, "nodes": l.channels, "edges": l.num_edges,
             "kernel_size": list(l.kernel_size), "stride": list(l.stride), "padding": list(l.padding),
             "dilation": list(l.dilation), "groups": l.groups, "out_size": list(l.out_size),
             "channels_last": l.channels_last}
            for l in convs
        ]
        return {
            "model": self.model_name,
            "input_shape": list(self.input_shape),
            "nodes": sum(l.channels for l in self.layers if l.kind == "conv"),
            "edges": sum(l.num_edges for l in self.layers if l.kind == "conv"),
            "input_nodes": sum(l.channels for l in self.layers if l.kind == "input"),
            "class_nodes": sum(l.channels for l in self.layers if l.kind == "linear"),
            "class_edges": sum(l.num_edges for l in self.layers if l.kind == "linear"),
            "links": int(len(self.links)),
            "layers": layers,
        }

    # -- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model_name,
                "input_shape": list(self.input_shape), "layers": [asdict(l) for l in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "Graph":
        if d.get("format") != FORMAT:
            raise ViscnnError(f"not a viscnn graph (format {d.get('format')!r})")
        if d.get("version") != VERSION:
            raise ViscnnError(f"graph format version {d.get('version')} is not supported (this viscnn reads {VERSION})")
        layers = []
        for ld in d["layers"]:
            ld = dict(ld)
            for k in ("kernel_size", "stride", "padding", "dilation", "out_size", "in_size"):
                ld[k] = tuple(ld[k])
            layers.append(Layer(**ld))
        return cls(layers, tuple(d["input_shape"]), d.get("model", ""))

    def save(self, directory) -> None:
        """Write ``graph.json`` (structure) and ``edges.npy`` (int32 [E,3]) atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(d / "edges.npy", self.edges)
        atomic_write_text(d / "graph.json", json.dumps(self.to_dict()))

    @classmethod
    def load(cls, directory) -> "Graph":
        p = Path(directory) / "graph.json"
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ViscnnError(f"cannot read graph {p}: {e}") from None
        return cls.from_dict(d)

    def __repr__(self) -> str:
        return f"Graph({self.model_name or 'model'}: {len(self.layers)} layers, {self.num_nodes} nodes, {self.num_edges} edges)"


def find_layer_for_module(graph: Graph, module_path: str) -> Optional[Layer]:
    return graph.layers[graph._by_name[module_path]] if module_path in graph._by_name else None
