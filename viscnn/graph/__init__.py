"""The kernel-level graph of a CNN: build it (torch.fx), query it, save and load it."""

from viscnn.graph.build import build_graph, trace
from viscnn.graph.structure import Graph, Layer

__all__ = ["Graph", "Layer", "build_graph", "trace"]
