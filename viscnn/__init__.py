"""viscnn: a CNN microscope.

Shows a PyTorch CNN as a graph whose nodes are filters (conv output channels) and
whose edges are the individual 2D kernels, finds circuits that produce a chosen
output, and explains them with activation maps, kernels and feature visualizations.
"""

__version__ = "0.1.0"

from viscnn.errors import ViscnnError  # noqa: E402
from viscnn.graph import Graph, build_graph  # noqa: E402

__all__ = ["ViscnnError", "Graph", "build_graph", "__version__"]
