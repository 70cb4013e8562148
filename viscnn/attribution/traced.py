"""The traced working copy every attribution method runs on.

One deep copy of the user's model (eval mode, in-place flags off, no parameter gradients) is
traced once with torch.fx; each ReLU rule is a rewrite of that graph sharing its parameters,
so Grad-CAM, guided backprop and DeconvNet of one model cost one copy of the weights. A run
asks for *taps*, graph nodes whose values (and gradients) are returned next to the output;
the graph is cut after the last node the run needs (dead-code elimination), so a target
inside the network stops the forward there and a layer gradient stops the backward there.

Layer names are module paths. A leaf module's output is its call; a container's output is
the last node computed inside it (``layer4`` of a ResNet is its last block's final ReLU).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from viscnn.attribution.relu_rules import apply_rule, check_rule
from viscnn.errors import ViscnnError
from viscnn.graph.fx_tracer import ThreadSafeTracer
from viscnn.model_copy import working_copy

_VIEW_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "narrow", "select",
                 "expand", "as_strided", "chunk", "split", "t", "contiguous", "detach", "view_as", "unflatten"}
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _is_inplace(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (bool(node.kwargs.get("inplace")) or (name.endswith("_") and not name.endswith("__"))
                or (name.startswith("i") and getattr(node.target, "__module__", "") in ("_operator", "operator")))
    return False


def _overwritten_later(node: fx.Node) -> bool:
    """Whether an in-place op may overwrite ``node``'s value (through views too)."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            if _is_inplace(u) and u.args and u.args[0] is n:
                return True
            name = u.target if u.op == "call_method" else getattr(u.target, "__name__", "")
            if name in _VIEW_METHODS or name == "getitem":
                todo.append(u)
    return False


class TracedModel:
    """A traced working copy of ``model`` (never modified) with per-rule graphs and taps."""

    def __init__(self, model: nn.Module, device=None):
        if isinstance(model, TracedModel):
            raise TypeError("already a TracedModel")
        self.name = type(model).__name__
        self.inplace = {n: bool(m.inplace) for n, m in model.named_modules() if isinstance(getattr(m, "inplace", None), bool)}
        self.device = torch.device(device) if device is not None else _param_device(model)
        self.base = _trace(working_copy(model)).to(self.device)
        self.modules = dict(self.base.named_modules())
        prm = next((p for p in self.base.parameters() if p.is_floating_point()), None)
        self.dtype = prm.dtype if prm is not None else torch.float32
        self._rules: Dict[str, fx.GraphModule] = {}
        self._programs: Dict[tuple, fx.GraphModule] = {}
        self._shapes: Dict[tuple, Dict[str, tuple]] = {}
        self._graphs: Dict[tuple, object] = {}
        self._outputs = self._module_outputs()

    # -- graphs ---------------------------------------------------------------
    def rule_graph(self, rule: str) -> fx.GraphModule:
        if rule not in self._rules:
            self._rules[rule] = apply_rule(self.base, rule, self.inplace)
        return self._rules[rule]

    def check_rule(self, rule: str) -> None:
        check_rule(self.base, rule)

    def program(self, rule: str, taps: Sequence[str], need_output: bool, cut: Sequence[str] = ()) -> fx.GraphModule:
        """The rule's graph returning ``(model output or None, *tap values)`` (node names ``taps``).

        Taps in ``cut`` become autograd leaves: nothing before them is recorded (Grad-CAM needs
        no gradient below its layer, so its forward up to the layer runs without autograd)."""
        key = (rule, tuple(taps), need_output, tuple(cut))
        if key in self._programs:
            return self._programs[key]
        src = self.rule_graph(rule)
        g = fx.Graph()
        env: Dict[fx.Node, fx.Node] = {}
        kept: Dict[fx.Node, fx.Node] = {}
        by_name = {n.name: n for n in src.graph.nodes}
        wanted = {by_name[t] for t in taps}
        out_val = None
        for node in src.graph.nodes:
            if node.op == "output":
                out_val = fx.map_arg(node.args[0], lambda n: env[n])
                continue
            env[node] = g.node_copy(node, lambda n: env[n])
            if node.name in cut:
                env[node] = g.call_function(grad_leaf, (env[node],))
            if node in wanted and _overwritten_later(node):  # keep the tapped value; the net reads a copy
                kept[node] = env[node]
                env[node] = g.call_method("clone", (kept[node],))
        vals = [kept.get(by_name[t], env[by_name[t]]) for t in taps]
        g.output((out_val if need_output else None, *vals))
        gm = fx.GraphModule(src, g, src.__class__.__name__)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        self._programs[key] = gm
        return gm

    # -- layer names -------------------------------------------------------------
    def _module_outputs(self) -> Dict[str, Optional[str]]:
        """Module path -> the node name of its output (None when it is called more than once)."""
        calls: Dict[str, set] = {}
        members: Dict[str, List[fx.Node]] = {}
        for node in self.base.graph.nodes:
            for key, val in (node.meta.get("nn_module_stack") or {}).items():
                qual = val[0] if isinstance(val, tuple) else str(val)
                calls.setdefault(qual, set()).add(key)
                members.setdefault(key, []).append(node)
            if node.op == "call_module" and not (node.meta.get("nn_module_stack")):
                calls.setdefault(node.target, set()).add(node.target)
                members.setdefault(node.target, []).append(node)
        out: Dict[str, Optional[str]] = {}
        for qual, keys in calls.items():
            if len(keys) > 1:
                out[qual] = None
                continue
            nodes = members[next(iter(keys))]
            inside = set(nodes)
            leaving = [n for n in nodes if any(u not in inside for u in n.users)]
            out[qual] = (leaving or nodes)[-1].name
        return out

    def layer_node(self, layer: str) -> str:
        """The node name holding module ``layer``'s output; a one-line error otherwise."""
        if layer in self._outputs:
            node = self._outputs[layer]
            if node is None:
                raise ViscnnError(f"module {layer} is called more than once in forward; pick the module around it")
            return node
        known = [n for n in self._outputs if n]
        hint = ", ".join(known[-8:])
        raise ViscnnError(f"unknown layer {layer!r}: not a module called in {self.name}'s forward (e.g. {hint})")

    def node_layer_name(self, node_name: str) -> str:
        """The outermost module path whose output is ``node_name`` (the node name if none)."""
        names = [q for q, n in self._outputs.items() if n == node_name]
        return min(names, key=lambda q: (q.count("."), len(q))) if names else node_name

    # -- shapes ----------------------------------------------------------------------
    def shapes(self, input_shape: Sequence[int]) -> Dict[str, tuple]:
        """Output shape of every node for a ``[1, *input_shape]`` input."""
        key = tuple(int(v) for v in input_shape)
        if key not in self._shapes:
            gm = self.base
            try:
                with torch.no_grad():
                    ShapeProp(gm).propagate(torch.zeros(1, *key, device=self.device, dtype=self.dtype))
            except Exception as e:
                raise ViscnnError(f"running {self.name} on a 1x{'x'.join(map(str, key))} input failed: "
                                  f"{type(e).__name__}: {e}") from None
            out = {}
            for n in gm.graph.nodes:
                tm = n.meta.pop("tensor_meta", None)
                if tm is not None and hasattr(tm, "shape"):
                    out[n.name] = tuple(tm.shape)
            self._shapes[key] = out
        return self._shapes[key]

    def default_spatial_node(self, input_shape: Sequence[int]) -> str:
        """The last node with a spatial map before the net collapses it (skipping adaptive pools,
        which only resample): a ResNet's ``layer4``, a VGG's ``features``."""
        shapes = self.shapes(input_shape)
        needed, todo = set(), [n for n in self.base.graph.nodes if n.op == "output"]
        while todo:
            n = todo.pop()
            for a in n.all_input_nodes:
                if a not in needed:
                    needed.add(a)
                    todo.append(a)
        for node in reversed(list(self.base.graph.nodes)):
            s = shapes.get(node.name)
            if node not in needed or s is None or len(s) != 4 or s[2] * s[3] <= 1:
                continue
            while node.op == "call_module" and isinstance(self.modules[node.target], _ADAPTIVE_POOLS) and node.args:
                node = node.args[0]
            return node.name
        raise ViscnnError(f"{self.name} has no layer with a spatial map (4D output larger than 1x1) "
                          f"for a {'x'.join(map(str, input_shape))} input")

    def viscnn_graph(self, input_shape: Sequence[int]):
        """The viscnn Graph (conv layers, class layer when possible) for parsing target strings."""
        from viscnn.errors import UnsupportedOperationError
        from viscnn.graph import build_graph

        key = tuple(int(v) for v in input_shape)
        if key not in self._graphs:
            c, h, w = key
            plain = self.device.type == "cpu" and self.dtype == torch.float32  # build_graph runs a float32 CPU image
            net = self.base if plain else copy.deepcopy(self.base).cpu().float()
            try:
                g = build_graph(net, (h, w), in_channels=c, include_classes=True, model_name=self.name)
            except UnsupportedOperationError:
                try:
                    g = build_graph(net, (h, w), in_channels=c, model_name=self.name)
                except UnsupportedOperationError:  # no kernel graph: class/loss targets still parse
                    from viscnn.graph.structure import Graph, Layer

                    g = Graph([Layer("input", "input", c, out_size=(h, w))], (c, h, w), self.name)
            self._graphs[key] = g
        return self._graphs[key]

    # -- running ----------------------------------------------------------------------
    def run(self, x: torch.Tensor, rule: str, taps: Sequence[str], need_output: bool,
            grad: bool = True, cut: Sequence[str] = ()) -> Tuple[Optional[object], torch.Tensor, List[torch.Tensor]]:
        """``(model output or None, input leaf, tap values)``, recorded for autograd if ``grad``
        (from the input, or only from the ``cut`` taps on)."""
        prog = self.program(rule, tuple(taps), need_output, tuple(cut))
        leaf = x.detach().to(self.device, self.dtype).requires_grad_(grad and not cut)
        with torch.set_grad_enabled(grad):
            res = prog(leaf)
        return res[0], leaf, list(res[1:])


def grad_leaf(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a new autograd leaf (the graph below it is not needed)."""
    return t.detach().requires_grad_(True)


def _trace(m: nn.Module) -> fx.GraphModule:
    """:func:`viscnn.graph.build.trace` without its defensive deep copy (``m`` is already our copy)."""
    tracer = ThreadSafeTracer()
    tracer.record_stack_traces = True
    try:
        g = tracer.trace(m)
    except Exception as e:
        raise ViscnnError(f"torch.fx could not trace {type(m).__name__}: {type(e).__name__}: {e}. Attribution needs a "
                          "model whose forward has no data-dependent Python control flow.") from None
    return fx.GraphModule(tracer.root, g, type(m).__name__)


def _param_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
