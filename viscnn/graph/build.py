"""Build the kernel-level :class:`Graph` of any traceable PyTorch CNN with torch.fx.

The user's model is never touched: an eval-mode deep copy is traced (inference dataflow, so
GoogLeNet's training-only aux heads are not part of the graph) and shapes come from running
that copy once on a zero image of the requested size.
"""

from __future__ import annotations

import copy
import operator
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from viscnn.errors import UnsupportedOperationError, ViscnnError
from viscnn.graph.fx_tracer import ThreadSafeTracer
from viscnn.graph import provenance as P
from viscnn.graph.channel_ops import LAYOUT_FUNCTIONS, LAYOUT_METHODS, ChannelOps, _argv
from viscnn.graph.structure import Graph, Layer


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(x) for x in v)


def infer_input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ViscnnError(f"{type(model).__name__} has no Conv2d layer; viscnn graphs are built from Conv2d kernels")


class _Tracer(ThreadSafeTracer):
    """Keeps ``nn.Linear`` subclasses (timm's ``Linear``) whole, so they are modules of the graph
    (class layer, channels-last 1x1 layer) and not a bare ``F.linear``."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Linear) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace an eval-mode copy of ``model`` (the copy is returned inside the GraphModule)."""
    m = copy.deepcopy(model).eval()
    tracer = _Tracer()
    tracer.record_stack_traces = True
    try:
        g = tracer.trace(m)
    except Exception as e:
        raise ViscnnError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. viscnn needs a model "
            "whose forward has no data-dependent Python control flow."
        ) from None
    return fx.GraphModule(tracer.root, g, type(model).__name__)


def build_graph(model: nn.Module, input_size: Sequence[int] = (224, 224), in_channels: Optional[int] = None,
                include_classes: bool = False, model_name: str = "") -> Graph:
    """Nodes per Conv2d output channel and per input channel, one edge per existing kernel.

    An ``nn.Linear`` over the channel axis of a channels-last (NHWC) tensor, as in ConvNeXt
    blocks, is a 1x1 conv: it becomes a ``conv`` layer with ``channels_last=True``, its weight
    rows are kernels and its outputs are nodes.

    ``include_classes`` adds the Linear that produces the model output as a last layer of class
    nodes, when its input is a flattened conv map (raises otherwise, naming the mixing op).
    """
    c_in = in_channels or infer_input_channels(model)
    gm = trace(model)
    h, w = _pair(tuple(input_size)) if len(input_size) == 2 else _pair(input_size[0])
    try:
        with torch.no_grad():
            _ValueProp(gm).propagate(torch.zeros(1, c_in, h, w))
    except Exception as e:
        raise ViscnnError(f"running {type(model).__name__} on a 1x{c_in}x{h}x{w} input failed: {type(e).__name__}: {e}") from None
    return _Walker(gm, c_in, (h, w), include_classes, model_name or type(model).__name__).run()


class _ValueProp(ShapeProp):
    """ShapeProp that also keeps the concrete small values later ops take as arguments
    (``size()`` ints, index tensors built in forward), for replaying rearrangements."""

    def run_node(self, n: fx.Node):
        r = super().run_node(n)
        if isinstance(r, torch.Tensor):
            if not r.is_floating_point() and r.numel() <= 1 << 20:
                n.meta["viscnn_value"] = r.detach().clone()
        elif isinstance(r, (int, float, bool, slice, torch.Size, str)) or (
                isinstance(r, (tuple, list)) and all(isinstance(v, (int, float, bool)) for v in r)):
            n.meta["viscnn_value"] = r
        return r


class _Walker(ChannelOps):
    def __init__(self, gm: fx.GraphModule, c_in: int, hw, include_classes: bool, name: str):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.include_classes = include_classes
        self.name = name
        self.hw = hw
        self.layers = [Layer("input", "input", c_in, out_size=tuple(hw), depth=0, node_offset=0)]
        self.node_depth: Dict[int, int] = {i: 0 for i in range(c_in)}
        self.prov: Dict[fx.Node, object] = {}
        self.seen_images = 0
        self.layer_names: set = set()

    # -- helpers ---------------------------------------------------------------
    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module {node.target}"
        stack = node.meta.get("nn_module_stack") or {}
        inside = list(stack.values())[-1][0] if stack else ""
        return f"fx node {node.name!r}" + (f" inside {inside}" if inside else "") + _user_line(node)

    @staticmethod
    def shape(node) -> Optional[tuple]:
        tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None

    def out_channels(self, node) -> Optional[int]:
        s = self.shape(node)
        return s[1] if s is not None and len(s) >= 2 else None

    def arg(self, a):
        if isinstance(a, fx.Node):
            return self.prov[a]
        if isinstance(a, (list, tuple)):
            return tuple(self.arg(x) for x in a)
        return P.CONST

    def add_layer(self, layer: Layer, reads, node: fx.Node, dim: int = 1) -> P.Chan:
        """Register a layer reading channel provenance ``reads`` (channels on axis ``dim``); return
        its own provenance (its output channels on the same axis)."""
        what = f"{layer.kind} {layer.name}"
        if isinstance(reads, P.Mixed):
            raise UnsupportedOperationError(
                f"{what} reads a tensor made by {reads.op} ({reads.where}), {reads.reason()}")
        if isinstance(reads, P.Grid):
            raise UnsupportedOperationError(
                f"{what} reads a tensor whose channels are spread over several axes by {reads.op} ({reads.where}); "
                "only rearrangements that end with channels on one axis are supported")
        if isinstance(reads, P.Chan) and reads.dim != dim and layer.kind != "linear":
            raise UnsupportedOperationError(
                f"{what} ({self.where(node)}) reads a tensor with its channels in axis {reads.dim}, not {dim} "
                "(a channels-last tensor not permuted back?)")
        if not isinstance(reads, P.Chan) or len(reads.sources) != layer.in_channels:
            raise UnsupportedOperationError(f"{what}: cannot map its {layer.in_channels} input channels ({self.where(node)})")
        prev = self.layers[-1]
        layer.node_offset = prev.node_offset + prev.channels
        layer.edge_offset = prev.edge_offset + prev.num_edges
        layer.input_sources = [sorted(s) for s in reads.sources]
        srcs = set().union(*reads.sources) if reads.sources else set()
        layer.depth = 1 + max((self.node_depth[s] for s in srcs), default=0)
        for c in range(layer.channels):
            self.node_depth[layer.node_offset + c] = layer.depth
        self.layers.append(layer)
        self.layer_names.add(layer.name)
        return P.Chan(tuple(frozenset({layer.node_offset + c}) for c in range(layer.channels)), 1, dim)

    # -- the walk ----------------------------------------------------------------
    def run(self) -> Graph:
        output_node = None
        for node in self.gm.graph.nodes:
            if node.op == "output":
                output_node = node
                continue
            self.prov[node] = self.visit(node)
        if self.include_classes:
            self.add_classes(output_node)
        return Graph(self.layers, (self.layers[0].channels, *self.hw), self.name)

    def visit(self, node: fx.Node):
        op = node.op
        if op == "placeholder":
            self.seen_images += 1
            if self.seen_images > 1:
                return P.Mixed("a second model input", self.where(node))
            return P.Chan(tuple(frozenset({c}) for c in range(self.layers[0].channels)))
        if op == "get_attr":
            return P.CONST
        if op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if op == "call_function":
            return self.visit_function(node)
        if op == "call_method":
            return self.visit_method(node)
        return P.Mixed(f"fx op {op}", self.where(node))

    def visit_module(self, node: fx.Node, m: nn.Module):
        x = self.arg(node.args[0]) if node.args else P.CONST
        if isinstance(m, (nn.Conv2d, nn.Linear)) and node.target in self.layer_names:
            raise UnsupportedOperationError(
                f"{type(m).__name__} {node.target} is called more than once in forward (shared weights); not supported yet")
        if isinstance(m, nn.Conv2d):
            in_hw = self.shape(node.args[0])[2:]
            out_hw = self.shape(node)[2:]
            layer = Layer(
                node.target, "conv", m.out_channels, m.in_channels, m.groups, _pair(m.kernel_size), _pair(m.stride),
                _pair(m.padding) if not isinstance(m.padding, str) else _pair(_same_padding(m)),
                _pair(m.dilation), m.padding_mode, m.bias is not None, tuple(out_hw), tuple(in_hw),
            )
            return self.add_layer(layer, x, node)
        if isinstance(m, nn.Linear):
            return self.channel_linear(node, m, x)
        if isinstance(m, P.ELEMENTWISE_MODULES):
            return x
        if isinstance(m, P.NCHW_MODULES):
            return self.nchw(node, x, type(m).__name__)
        if isinstance(m, P.NORM_MODULES):
            return self.norm(node, x, type(m).__name__, channels_first=isinstance(m, nn.GroupNorm))
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim)
        if isinstance(m, nn.Unflatten):
            return self.layout(node, x, "unflatten", True)
        if isinstance(m, nn.Sequential) and len(m) == 0:
            return x
        return self.unknown(node, type(m).__name__)

    def channel_linear(self, node: fx.Node, m: nn.Linear, x):
        """A Linear over the last axis of a channels-last 4D tensor is a 1x1 conv (a graph layer);
        any other Linear (a classifier head) mixes channels."""
        ins, outs = self.shape(node.args[0]), self.shape(node)
        if not (isinstance(x, P.Chan) and x.spatial == 1 and ins is not None and len(ins) == 4 and x.dim == 3):
            return x if x is P.CONST or isinstance(x, P.Mixed) else P.Mixed("Linear", self.where(node), P.MIX)
        layer = Layer(node.target, "conv", m.out_features, m.in_features, 1, (1, 1), (1, 1), (0, 0), (1, 1), "zeros",
                      m.bias is not None, tuple(outs[1:3]), tuple(ins[1:3]), channels_last=True)
        return self.add_layer(layer, x, node, dim=3)

    def visit_function(self, node: fx.Node):
        fn = node.target
        name = getattr(fn, "__name__", str(fn))
        x0 = self.arg(node.args[0]) if node.args else P.CONST
        if fn in P.ELEMENTWISE_FUNCTIONS:
            return x0
        if fn in P.NCHW_FUNCTIONS:
            return self.nchw(node, x0, name)
        if fn in P.NORM_FUNCTIONS:
            return self.norm(node, x0, name, channels_first=name == "group_norm")
        if fn in P.ELEMENTWISE_BINARY_FUNCTIONS:
            return self.binary(node, node.args[:2], name)
        if fn is torch.cat or fn is torch.concat:
            return self.cat(node)
        if fn is torch.stack:
            return self.stack(node)
        if fn is torch.flatten:
            return self.flatten(node, x0, _argv(node, 1, "start_dim", 0), _argv(node, 2, "end_dim", -1))
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            return self.reduce(node, x0, _argv(node, 1, "dim", None), _argv(node, 2, "keepdim", False))
        if fn is operator.getitem:
            return self.getitem(node)
        if fn is torch.unsqueeze:
            return self.unsqueeze(node, x0, _argv(node, 1, "dim", None))
        if fn in (torch.split, torch.chunk, torch.tensor_split):
            return self.split(node, x0, self.const(_argv(node, 2, "dim", 0)), name)
        if fn is torch.unbind:
            return self.split(node, x0, self.const(_argv(node, 1, "dim", 0)), "unbind")
        if fn in LAYOUT_FUNCTIONS:
            return self.layout(node, x0, name, False)
        if fn is getattr:
            return P.CONST
        if name in ("is_scripting", "_assert"):
            return P.CONST
        return self.unknown(node, f"function {getattr(fn, '__module__', '')}.{name}".replace("_operator.", "operator."))

    def visit_method(self, node: fx.Node):
        m = node.target
        x = self.arg(node.args[0])
        if m in P.PRESERVING_METHODS:
            return x
        if m in P.CONST_METHODS:
            return P.CONST
        if m in P.ELEMENTWISE_BINARY_METHODS:
            return self.binary(node, node.args[:2], f"Tensor.{m}")
        if m == "flatten":
            return self.flatten(node, x, _argv(node, 1, "start_dim", 0), _argv(node, 2, "end_dim", -1))
        if m in ("view", "reshape"):
            return self.reshape(node, x)
        if m in ("mean", "sum", "amax", "amin"):
            return self.reduce(node, x, _argv(node, 1, "dim", None), _argv(node, 2, "keepdim", False))
        if m == "unsqueeze":
            return self.unsqueeze(node, x, _argv(node, 1, "dim", None))
        if m in ("split", "chunk", "tensor_split"):
            return self.split(node, x, self.const(_argv(node, 2, "dim", 0)), m)
        if m == "unbind":
            return self.split(node, x, self.const(_argv(node, 1, "dim", 0)), m)
        if m in LAYOUT_METHODS:
            return self.layout(node, x, m, True)
        return self.unknown(node, f"method Tensor.{m}")

    def unknown(self, node: fx.Node, name: str):
        """An op viscnn does not know: constant if all its inputs are, else a (possibly mixing) op;
        an input that already mixes channels is reported first."""
        provs = [p for p in _flat(self.arg(list(node.args) + list(node.kwargs.values()))) if p is not P.CONST]
        if not provs:
            return P.CONST
        return next((p for p in provs if isinstance(p, P.Mixed)), None) or P.Mixed(name, self.where(node), P.UNKNOWN)

    def binary(self, node: fx.Node, args, name: str):
        provs = [self.arg(a) if isinstance(a, fx.Node) else P.CONST for a in args]
        shapes = [self.shape(a) for a in args]
        return P.union_binary(provs, shapes, self.shape(node), name, self.where(node))

    # -- classes -----------------------------------------------------------------------
    def add_classes(self, output_node):
        out = output_node.args[0]
        while isinstance(out, fx.Node) and out.op == "call_module" and isinstance(self.modules[out.target], (nn.Identity, nn.Dropout)):
            out = out.args[0]
        if not (isinstance(out, fx.Node) and out.op == "call_module" and isinstance(self.modules[out.target], nn.Linear)):
            raise UnsupportedOperationError("cannot add a class layer: the model output is not produced by an nn.Linear")
        lin = self.modules[out.target]
        x = self.arg(out.args[0])
        if isinstance(x, P.Chan) and (x.spatial * len(x.sources) != lin.in_features or x.dim != 1):
            raise UnsupportedOperationError(f"class layer {out.target}: {lin.in_features} features do not map onto conv channels")
        spatial = x.spatial if isinstance(x, P.Chan) else 1
        side = int(round(spatial ** 0.5))
        ks = (side, side) if side * side == spatial else (1, spatial)
        layer = Layer(out.target, "linear", lin.out_features, len(x.sources) if isinstance(x, P.Chan) else lin.in_features,
                      1, ks, (1, 1), (0, 0), (1, 1), "zeros", lin.bias is not None, (1, 1), ks)
        self.add_layer(layer, x, out)


def _flat(prov) -> list:
    """The tensor provenances inside nested tuples (an op's args)."""
    return [q for p in prov for q in _flat(p)] if isinstance(prov, tuple) else [prov]


def _user_line(node: fx.Node) -> str:
    st = node.meta.get("stack_trace")
    if not st:
        return ""
    lines = [l.strip() for l in st.strip().splitlines()
             if l.strip().startswith("File") and "/torch/" not in l and "/torch\\" not in l]
    return f" ({lines[-1]})" if lines else ""


def _same_padding(m: nn.Conv2d):
    if m.padding == "valid":
        return (0, 0)
    k = _pair(m.kernel_size)
    d = _pair(m.dilation)
    return tuple((d[i] * (k[i] - 1)) // 2 for i in range(2))
