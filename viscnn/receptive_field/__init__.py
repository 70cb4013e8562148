"""Exact receptive fields: which input pixels can influence a unit at (layer, y, x).

The :class:`~viscnn.graph.Graph` records convs only, but pooling, padding and adaptive pooling
between them change the receptive field too, so this module traces the model itself with torch.fx
and walks its dataflow *backwards* from the target layer to the image, mapping per-dimension
intervals through every spatial op (Conv2d, max/avg/LP pool, adaptive pool, F.pad and pad modules,
including reflect/replicate/circular padding) along *every* path. Branches (residual adds,
Inception concatenations) are merged by union, and each interval is clipped to the real pixels of
its tensor at every stage, so the box is exact even where a stride leaves the last input rows unread
or a deep unit's window hangs over an earlier layer's padding.

All these ops are separable (an output row's input rows do not depend on the column), so a layer's
boxes are two tables, ``rows[y] = (y0, y1)`` and ``cols[x] = (x0, x1)``, half-open; the walk runs on
whole tables at once with numpy. Pointwise ops (activations, batch norm, residual adds) keep the
interval; an operand broadcast along space (a squeeze-excitation gate of size 1x1) and ops that mix
all positions (global means, instance/group norm, softmax over space) widen it to the whole
map. An op that changes the spatial size in a way this module does not know raises.

Layouts are followed, not assumed: a forward pass over the traced graph records, per tensor, which
axes hold the image's rows and columns. Rearrangements (``permute`` to channels-last NHWC,
ShuffleNet's ``view -> transpose -> view`` channel shuffle, ``chunk``/``split``, indexing, ``flip``,
``roll``...) are replayed on a tensor of pixel-position codes, so each output row and column is
mapped to the input row and column it holds. Ops over the last axis (a Linear over NHWC channels as
in ConvNeXt, LayerNorm over channels) are pointwise in space unless that axis is a spatial one. A
spatial op (conv, pool, pad) that reads a tensor whose rows and columns are not its axes 2 and 3
raises, naming the op.

A max-pool's gradient reaches only the arg-max of each window, so for one input the gradient
support can be smaller than the box; the box is the union over all inputs (what *can* influence
the unit), which is what the tests check against gradient supports.

Modules: :mod:`~viscnn.receptive_field.windows` (interval arithmetic of one dimension and the
:class:`RFTable`), :mod:`~viscnn.receptive_field.ops` (how fx nodes are classified),
:mod:`~viscnn.receptive_field.tracer` (:class:`ReceptiveFields`: tracing, the layout pass, queries),
:mod:`~viscnn.receptive_field.walk` (the backward walk); the functional API is here.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch.fx as fx
from torch import nn

from viscnn.receptive_field.tracer import ReceptiveFields
from viscnn.receptive_field.windows import Box, RFTable

__all__ = ["Box", "RFTable", "ReceptiveFields", "layer_rf_params", "layer_rf_table", "receptive_field"]


# -- functional API ------------------------------------------------------------------------------------
def receptive_field(model: Union[nn.Module, fx.GraphModule, ReceptiveFields], layer_name: str, y: int, x: int,
                    input_size: Sequence[int] = (224, 224)) -> Box:
    """Input box ``(y0, y1, x0, x1)`` (half-open, clipped to the image) that can influence
    ``layer_name``'s output at ``(y, x)``."""
    rf = model if isinstance(model, ReceptiveFields) else ReceptiveFields(model, input_size)
    return rf.box(layer_name, y, x)


def layer_rf_table(model: Union[nn.Module, fx.GraphModule, ReceptiveFields], layer_name: str,
                   input_size: Sequence[int] = (224, 224)) -> RFTable:
    """Boxes of every position of a layer at once: ``box(y, x) = (*rows[y], *cols[x])``."""
    rf = model if isinstance(model, ReceptiveFields) else ReceptiveFields(model, input_size)
    return rf.table(layer_name)


def layer_rf_params(model: Union[nn.Module, fx.GraphModule, ReceptiveFields], layer_name: str,
                    input_size: Sequence[int] = (224, 224)) -> Optional[dict]:
    """``{"start": (y, x), "stride": (y, x), "size": (h, w)}`` of the unclipped field, or None."""
    rf = model if isinstance(model, ReceptiveFields) else ReceptiveFields(model, input_size)
    return rf.params(layer_name)
