"""Figures and data for a clicked class node: the model's output over all classes (softmax
probabilities, raw logits on hover), the class's Linear weights per input channel, and the gallery
images of that class.

The figure builders are pure (numpy/lists in, Plotly dicts out). ``channel_weights`` works on a bare
graph and weight array, so it needs no prepped model; ``class_channel_weights`` and
``class_exemplar_files`` read a :class:`viscnn.prepped.PreppedModel`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from viscnn.app.figures.colors import INACTIVE, POS, diverging_css, symmetric_limit
from viscnn.errors import ViscnnError

MAX_CLASSES = 30  # logits_figure shows at most this many bars (the top ones by value)
MAX_WEIGHTS_EACH_END = 32  # class_weights_figure: top/bottom this many channels when there are more


# -- data ---------------------------------------------------------------------------------------
def softmax(logits) -> np.ndarray:
    """Numerically stable softmax in float64 (an empty input gives an empty array)."""
    z = np.asarray(logits, np.float64).reshape(-1)
    if z.size == 0:
        return z
    e = np.exp(z - np.max(z))
    return e / e.sum()


def class_layer_index(graph) -> int:
    """Index of the class layer (the last layer, kind "linear"); ViscnnError when there is none."""
    if not graph.layers or graph.layers[-1].kind != "linear":
        raise ViscnnError("this model's graph has no class layer (prep it with include_classes)")
    return len(graph.layers) - 1


def class_index_of_node(graph, node: int) -> Optional[int]:
    """The class index of a global node index, or None when the node is not a class node."""
    li = int(graph.node_layer[int(node)])
    if graph.layers[li].kind != "linear":
        return None
    return int(graph.node_channel[int(node)])


def channel_labels(graph, class_index: int = 0) -> List[str]:
    """Node ids of the inputs of the class layer, one per input channel.

    Taken from the source links of class ``class_index``'s edges (``graph.links``), so after a
    residual add the id is a real filter. When one input channel is a sum of several filters the
    first source link is used; a channel with no source node is labelled ``LAYER.in:I``.
    """
    li = class_layer_index(graph)
    layer = graph.layers[li]
    if not 0 <= class_index < layer.channels:
        raise ViscnnError(f"no class {class_index}: the class layer has {layer.channels} classes")
    n_in = layer.in_channels
    per_in = n_in // layer.groups
    first = layer.edge_offset + class_index * per_in
    links = np.asarray(graph.links)
    sel = links[(links[:, 0] >= first) & (links[:, 0] < first + per_in)]
    src = {}
    for e, s in sel:  # links are in edge order, sources in order: keep the first per edge
        src.setdefault(int(e), int(s))
    out = []
    for k in range(per_in):
        e = first + k
        in_ch = int(graph.edges[e, 2])
        out.append(graph.node_id(src[e]) if e in src else f"{layer.name}.in:{in_ch}")
    return out


def channel_weights(graph, linear_weight: np.ndarray, class_index: int, reduce: str = "sum") -> Tuple[np.ndarray, List[str]]:
    """(float64 [in_channels], channel node ids): one class's Linear weights per input channel.

    ``linear_weight`` is the Linear weight ``[classes, in_features]`` or the prepped class "kernels"
    ``[classes, in_channels, kh, kw]`` (the same numbers reshaped). A Linear after a global pool has
    one feature per channel: the value is that weight. On a flattened ``C x H x W`` map channel ``i``
    owns the contiguous block of features ``i*k:(i+1)*k`` (``k = H*W``); ``reduce="sum"`` gives the
    sum over the block (the class logit's change per unit of a spatially uniform channel, signed),
    ``reduce="l2"`` its L2 norm (how strongly the class reads the channel at all, unsigned).
    """
    li = class_layer_index(graph)
    layer = graph.layers[li]
    w = np.asarray(linear_weight, np.float64)
    if w.ndim < 2 or w.shape[0] != layer.channels:
        raise ViscnnError(f"class weight of shape {w.shape} does not match {layer.channels} classes")
    if not 0 <= class_index < layer.channels:
        raise ViscnnError(f"no class {class_index}: the class layer has {layer.channels} classes")
    row = w[class_index].reshape(-1)
    n_in = layer.in_channels // layer.groups
    per_ch = int(np.prod(layer.kernel_size)) or 1  # features per channel (the flattened map's H*W)
    if n_in <= 0 or row.size != n_in * per_ch:
        raise ViscnnError(f"{row.size} class weights do not split into {n_in} input channels of {per_ch} features")
    blocks = row.reshape(n_in, row.size // n_in)
    if reduce == "sum":
        vals = blocks.sum(1)
    elif reduce == "l2":
        vals = np.sqrt((blocks ** 2).sum(1))
    else:
        raise ViscnnError(f"reduce must be 'sum' or 'l2', not {reduce!r}")
    return vals, channel_labels(graph, class_index)


def class_channel_weights(pm, class_index: int, reduce: str = "sum") -> Tuple[np.ndarray, List[str]]:
    """:func:`channel_weights` of a prepped model (its class layer's kernels)."""
    li = class_layer_index(pm.graph)
    return channel_weights(pm.graph, pm.kernels(pm.graph.layers[li].name), class_index, reduce)


def class_exemplar_files(pm, class_index: int, k: int = 8) -> List[str]:
    """Up to ``k`` gallery image files (``pm.images()``, in gallery order) whose label is the class."""
    out = []
    for it in pm.images():
        if k is not None and len(out) >= k:
            break
        try:
            if int(it.get("label", -1)) == int(class_index):
                out.append(str(it["file"]))
        except (TypeError, ValueError, KeyError):
            continue
    return out


# -- figures ------------------------------------------------------------------------------------
def _title(text: str) -> dict:
    return {"text": text, "font": {"size": 12}}


def logits_figure(logits, classes: Sequence[str], highlight: Optional[int] = None, show: str = "prob",
                  title: Optional[str] = None) -> dict:
    """Horizontal bars of all classes' softmax probabilities (``show="prob"``) or raw logits
    (``show="logit"``), in class order top to bottom; hover shows both. The ``highlight`` class is
    drawn in POS, the others grey. With more than 30 classes only the 30 largest (plus the highlighted
    class, if it is not among them) are drawn, still in class order, and the title says so."""
    if show not in ("prob", "logit"):
        raise ViscnnError(f"show must be 'prob' or 'logit', not {show!r}")
    z = np.asarray(logits, np.float64).reshape(-1)
    n = z.size
    names = [str(c) for c in classes] if len(classes) == n else [str(i) for i in range(n)]
    p = softmax(z)
    hl = int(highlight) if highlight is not None and 0 <= int(highlight) < n else None
    keep = np.arange(n)
    note = ""
    if n > MAX_CLASSES:
        top = np.argsort(-z, kind="stable")[:MAX_CLASSES]
        keep = np.sort(top)
        note = f" (top {MAX_CLASSES} of {n} classes by value"
        if hl is not None and hl not in set(top.tolist()):
            keep = np.sort(np.append(top, hl))
            note += " + selected"
        note += ")"
    x = p[keep] if show == "prob" else z[keep]
    colors = [POS if int(i) == hl else INACTIVE for i in keep]
    head = title if title is not None else ("class probabilities" if show == "prob" else "class logits")
    if hl is not None:
        head += f": {names[hl]} {p[hl]:.1%}"
    tr = {
        "type": "bar", "orientation": "h", "x": np.round(x, 6).tolist(), "y": [int(i) for i in keep],
        "marker": {"color": colors},
        "customdata": [[names[i], float(p[i]), float(z[i])] for i in keep],
        "hovertemplate": "%{customdata[0]}<br>p = %{customdata[1]:.2%}<br>logit = %{customdata[2]:.4g}<extra></extra>",
    }
    xaxis = {"title": {"text": "probability (softmax of logits)" if show == "prob" else "logit", "font": {"size": 11}},
             "zeroline": True}
    if show == "prob":
        xaxis["range"] = [0, 1]
    return {"data": [tr], "layout": {
        "title": _title(head + note), "height": max(160, 40 + 16 * len(keep)),
        "margin": {"l": 90, "r": 8, "t": 28, "b": 36}, "showlegend": False, "bargap": 0.15,
        "xaxis": xaxis,
        "yaxis": {"tickmode": "array", "tickvals": [int(i) for i in keep], "ticktext": [names[i] for i in keep],
                  "autorange": "reversed", "type": "linear", "tickfont": {"size": 10}}}}


def class_weights_figure(weights_per_channel, channel_labels: Sequence[str], title: str = "class weights per channel") -> dict:
    """Bars of one class's (signed) weights per input channel, largest first, each coloured on the
    diverging map with limits symmetric about zero; hover shows the channel id and weight. With more
    than 64 channels only the top 32 and bottom 32 are drawn, and the title says so."""
    w = np.asarray(weights_per_channel, np.float64).reshape(-1)
    n = w.size
    labels = [str(s) for s in channel_labels] if len(channel_labels) == n else [str(i) for i in range(n)]
    order = np.argsort(-w, kind="stable")
    note = ""
    m = MAX_WEIGHTS_EACH_END
    if n > 2 * m:
        order = np.concatenate([order[:m], order[-m:]])
        note = f" (top {m} and bottom {m} of {n} channels)"
    lim = symmetric_limit(w)
    vals = w[order]
    tr = {
        "type": "bar", "x": list(range(len(order))), "y": np.round(vals, 6).tolist(),
        "marker": {"color": [diverging_css(v / lim) for v in vals], "line": {"color": "#888", "width": 0.5}},
        "customdata": [[labels[i], float(w[i])] for i in order],
        "hovertemplate": "%{customdata[0]}<br>weight = %{customdata[1]:.4g}<extra></extra>",
    }
    return {"data": [tr], "layout": {
        "title": _title(title + note), "height": 240, "showlegend": False, "bargap": 0.1,
        "margin": {"l": 44, "r": 8, "t": 28, "b": 64},
        # more than 16 channel names would only overprint each other: then the ids are on hover
        "xaxis": ({"tickmode": "array", "tickvals": list(range(len(order))), "ticktext": [labels[i] for i in order],
                   "tickangle": -60, "tickfont": {"size": 9}} if len(order) <= 16 else
                  {"showticklabels": False, "title": {"text": f"{len(order)} input channels, largest first (hover for ids)",
                                                      "font": {"size": 11}}}),
        "yaxis": {"title": {"text": "weight", "font": {"size": 11}}, "zeroline": True,
                  "range": [-1.05 * lim, 1.05 * lim]}}}
