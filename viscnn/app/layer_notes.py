"""How the graph treats a layer that is not a plain Conv2d + BatchNorm, as sentences for the node panel."""

from __future__ import annotations

from viscnn.errors import ViscnnError


LINEAR_NOTE = ("{name} is an nn.Linear over the channels of a channels-last (NHWC) map, treated as a 1x1 conv "
               "layer: each weight entry [out, in] is a 1x1 kernel, and its maps are shown channels-first.")
NORM_NOTE = ("Its output is normalised by {what}, which viscnn treats like BatchNorm: per channel in the graph, with "
             "no edges of its own (it couples the channels at each position only through their mean and variance).")
_NORM_SKIP = 64  # ops followed from a layer's output before giving up on finding its normalisation


def layer_notes(model, graph) -> dict:
    """{layer name: [sentences]} saying how the graph treats a layer that is not a plain Conv2d + BatchNorm:
    a channels-last Linear (ConvNeXt's pointwise layers, a 1x1 conv layer) and a layer whose output a
    LayerNorm/GroupNorm over channels normalises (found by following the traced dataflow from the layer
    up to the next graph layers)."""
    import torch.nn.functional as F
    from torch import nn

    from viscnn.graph.build import trace

    try:
        gm = trace(model)
    except ViscnnError:
        return {}
    mods = dict(gm.named_modules())
    names = {l.name for l in graph.layers if l.kind != "input"}

    def norm_of(n):
        if n.op == "call_module" and isinstance(mods[n.target], (nn.LayerNorm, nn.GroupNorm)):
            m = mods[n.target]
            over = "over channels" if isinstance(m, nn.GroupNorm) or len(m.normalized_shape) == 1 else \
                f"over {tuple(m.normalized_shape)}"
            return f"{type(m).__name__} {n.target} ({over})"
        if n.op == "call_function" and n.target in (F.layer_norm, F.group_norm):
            stack = n.meta.get("nn_module_stack") or {}
            inside = list(stack.values())[-1] if stack else None
            where = f"{inside[1].__name__} {inside[0]}" if inside and isinstance(inside[1], type) else f"fx node {n.name}"
            return f"{n.target.__name__} in {where} (over channels)"
        return None

    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in names:
            continue
        layer = graph.layer(node.target)
        notes = [LINEAR_NOTE.format(name=layer.name)] if layer.channels_last else []
        todo, seen, norms = list(node.users), set(), []
        while todo and len(seen) < _NORM_SKIP:
            n = todo.pop(0)
            if n in seen or (n.op == "call_module" and n.target in names):
                continue
            seen.add(n)
            what = norm_of(n)
            if what:  # the channel is normalised here; what comes after is another layer's business
                if what not in norms:
                    norms.append(what)
                continue
            todo.extend(n.users)
        if norms:
            notes.append(NORM_NOTE.format(what=" and ".join(norms)))
        if notes:
            out[layer.name] = notes
    return out
