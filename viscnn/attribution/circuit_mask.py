"""Circuit-restricted attribution: any method run on the circuit-masked model (every kernel
outside the circuit zeroed, :func:`viscnn.importance.faithfulness.masked_model`), next to the
full model, shows what the circuit alone sees in the image."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from viscnn.attribution.methods import make_method
from viscnn.graph.structure import Graph
from viscnn.importance.circuits import Circuit
from viscnn.importance.faithfulness import masked_model


def circuit_model(model: nn.Module, graph: Graph, circuit: Union[Circuit, np.ndarray]) -> nn.Module:
    """A working copy of ``model`` with every kernel outside ``circuit`` (or an edge array) zeroed."""
    edges = circuit.edges if isinstance(circuit, Circuit) else np.asarray(circuit, np.int64)
    return masked_model(model, graph, edges)


def attribute_in_circuit(method: str, model: nn.Module, graph: Graph, circuit: Union[Circuit, np.ndarray],
                         inputs: torch.Tensor, target=None, layer: Optional[str] = None, classes=None,
                         **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(full model's attribution, circuit-masked model's attribution)`` for the same inputs and target
    (None: the full model's predicted class, for both)."""
    meth = make_method(method, model, layer=layer, classes=classes)
    if target is None:
        target = meth.predict(inputs)
    full = meth.attribute(inputs, target, **kwargs)
    part = make_method(method, circuit_model(model, graph, circuit), layer=layer, classes=classes)
    return full, part.attribute(inputs, target, **kwargs)
