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
from viscnn.graph import provenance as P
from viscnn.graph.structure import Graph, Layer


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(x) for x in v)


def infer_input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ViscnnError(f"{type(model).__name__} has no Conv2d layer; viscnn graphs are built from Conv2d kernels")


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace an eval-mode copy of ``model`` (the copy is returned inside the GraphModule)."""
    m = copy.deepcopy(model).eval()
    tracer = fx.Tracer()
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

    ``include_classes`` adds the Linear that produces the model output as a last layer of class
    nodes, when its input is a flattened conv map (raises otherwise, naming the mixing op).
    """
    c_in = in_channels or infer_input_channels(model)
    gm = trace(model)
    h, w = _pair(tuple(input_size)) if len(input_size) == 2 else _pair(input_size[0])
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, c_in, h, w))
    except Exception as e:
        raise ViscnnError(f"running {type(model).__name__} on a 1x{c_in}x{h}x{w} input failed: {type(e).__name__}: {e}") from None
    return _Walker(gm, c_in, (h, w), include_classes, model_name or type(model).__name__).run()


class _Walker:
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

    def add_layer(self, layer: Layer, reads, node: fx.Node) -> P.Chan:
        """Register a conv/linear layer reading channel provenance ``reads``; return its own provenance."""
        if isinstance(reads, P.Mixed):
            raise UnsupportedOperationError(
                f"{layer.kind} {layer.name} reads a tensor made by {reads.op} ({reads.where}), which mixes "
                "channels without being a conv; viscnn cannot map its kernels to source filters"
            )
        if not isinstance(reads, P.Chan) or len(reads.sources) != layer.in_channels:
            raise UnsupportedOperationError(f"{layer.kind} {layer.name}: cannot map its {layer.in_channels} input channels ({self.where(node)})")
        prev = self.layers[-1]
        layer.node_offset = prev.node_offset + prev.channels
        layer.edge_offset = prev.edge_offset + prev.num_edges
        layer.input_sources = [sorted(s) for s in reads.sources]
        srcs = set().union(*reads.sources) if reads.sources else set()
        layer.depth = 1 + max((self.node_depth[s] for s in srcs), default=0)
        for c in range(layer.channels):
            self.node_depth[layer.node_offset + c] = layer.depth
        self.layers.append(layer)
        return P.Chan(tuple(frozenset({layer.node_offset + c}) for c in range(layer.channels)))

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
        if isinstance(m, nn.Conv2d):
            if any(l.name == node.target for l in self.layers):
                raise UnsupportedOperationError(
                    f"conv {node.target} is called more than once in forward (shared weights); not supported yet")
            in_hw = self.shape(node.args[0])[2:]
            out_hw = self.shape(node)[2:]
            layer = Layer(
                node.target, "conv", m.out_channels, m.in_channels, m.groups, _pair(m.kernel_size), _pair(m.stride),
                _pair(m.padding) if not isinstance(m.padding, str) else _pair(_same_padding(m)),
                _pair(m.dilation), m.padding_mode, m.bias is not None, tuple(out_hw), tuple(in_hw),
            )
            return self.add_layer(layer, x, node)
        if isinstance(m, P.PRESERVING_MODULES):
            return x
        if isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels:
            return x
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim)
        if isinstance(m, nn.Sequential) and len(m) == 0:
            return x
        return P.Mixed(f"{type(m).__name__}", self.where(node))

    def visit_function(self, node: fx.Node):
        fn = node.target
        name = getattr(fn, "__name__", str(fn))
        if fn in P.PRESERVING_FUNCTIONS:
            return self.arg(node.args[0])
        if fn in P.ELEMENTWISE_BINARY_FUNCTIONS:
            return P.union_binary([self.arg(a) for a in node.args[:2]], self.out_channels(node), f"{name}", self.where(node))
        if fn is torch.cat or fn is torch.concat:
            return self.cat(node)
        if fn is torch.flatten:
            return self.flatten(node, self.arg(node.args[0]), _argv(node, 1, "start_dim", 0), _argv(node, 2, "end_dim", -1))
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            return self.reduce(node, self.arg(node.args[0]), _argv(node, 1, "dim", None))
        if fn is operator.getitem:
            return self.getitem(node)
        if fn is torch.unsqueeze:
            return self.unsqueeze(node, self.arg(node.args[0]), _argv(node, 1, "dim", None))
        if fn in (torch.split, torch.chunk):
            return self.split(node, self.arg(node.args[0]), _argv(node, 2, "dim", 0))
        if fn is getattr:
            return P.CONST
        if name in ("is_scripting", "_assert"):
            return P.CONST
        if isinstance(self.arg(node.args[0]) if node.args else P.CONST, P.Chan) or any(
            isinstance(self.arg(a), (P.Chan, P.Mixed, P.Squeezed)) for a in node.args if isinstance(a, fx.Node)):
            return P.Mixed(f"function {getattr(fn, '__module__', '')}.{name}".replace("_operator.", "operator."), self.where(node))
        return P.CONST

    def visit_method(self, node: fx.Node):
        m = node.target
        x = self.arg(node.args[0])
        if m in P.PRESERVING_METHODS:
            return x
        if m in P.CONST_METHODS:
            return P.CONST
        if m in P.ELEMENTWISE_BINARY_METHODS:
            return P.union_binary([x, self.arg(node.args[1])], self.out_channels(node), f"Tensor.{m}", self.where(node))
        if m == "flatten":
            return self.flatten(node, x, _argv(node, 1, "start_dim", 0), _argv(node, 2, "end_dim", -1))
        if m in ("view", "reshape"):
            return self.reshape(node, x)
        if m in ("mean", "sum", "amax", "amin"):
            return self.reduce(node, x, _argv(node, 1, "dim", None))
        if m == "unsqueeze":
            return self.unsqueeze(node, x, _argv(node, 1, "dim", None))
        if m in ("split", "chunk"):
            return self.split(node, x, _argv(node, 2, "dim", 0))
        return P.Mixed(f"method Tensor.{m}", self.where(node))

    # -- structural ops --------------------------------------------------------------
    def cat(self, node):
        parts = self.arg(node.args[0])
        dim = _argv(node, 1, "dim", 0)
        nd = len(self.shape(node) or ())
        tensors = [p for p in parts if p is not P.CONST]
        if any(isinstance(p, P.Mixed) for p in tensors):
            return next(p for p in tensors if isinstance(p, P.Mixed))
        if dim in (1, 1 - nd) and all(isinstance(p, P.Chan) and p.spatial == 1 for p in tensors):
            return P.Chan(tuple(s for p in tensors for s in p.sources))
        if dim in (1, 1 - nd) and all(isinstance(p, P.Squeezed) for p in tensors):
            return P.Mixed("torch.cat of indexed channels", self.where(node))
        return P.Mixed(f"torch.cat along dim {dim}", self.where(node))

    def flatten(self, node, x, start, end):
        shp = self.shape(node.args[0])
        if not isinstance(x, P.Chan) or shp is None:
            return x if x is P.CONST or isinstance(x, P.Mixed) else P.Mixed("flatten", self.where(node))
        nd = len(shp)
        start, end = start % nd, end % nd
        if start >= 2 or start == end:
            return x  # only spatial dims merged
        if start == 1 and end == nd - 1 and x.spatial == 1:
            spatial = 1
            for d in shp[2:]:
                spatial *= d
            return P.Chan(x.sources, spatial)
        return P.Mixed("flatten across the batch/channel dims", self.where(node))

    def reshape(self, node, x):
        ins, outs = self.shape(node.args[0]), self.shape(node)
        if not isinstance(x, P.Chan) or ins is None or outs is None:
            return x if x is P.CONST or isinstance(x, P.Mixed) else P.Mixed("view/reshape", self.where(node))
        if len(outs) == 2 and len(ins) >= 2 and outs[0] == ins[0] and x.spatial == 1:
            return self.flatten(node, x, 1, -1)
        if len(outs) >= 2 and outs[:2] == ins[:2]:
            return x
        return P.Mixed("view/reshape that regroups channels", self.where(node))

    def reduce(self, node, x, dim):
        if not isinstance(x, P.Chan):
            return x if x is P.CONST or isinstance(x, P.Mixed) else P.Mixed("reduction", self.where(node))
        nd = len(self.shape(node.args[0]) or ())
        dims = [dim] if isinstance(dim, int) else list(dim) if dim is not None else list(range(nd))
        if x.spatial == 1 and all(d % nd >= 2 for d in dims):
            return x
        return P.Mixed("a reduction over channels", self.where(node))

    def unsqueeze(self, node, x, dim):
        if isinstance(x, P.Squeezed) and dim == 1:
            return P.Chan((x.sources,))
        if isinstance(x, P.Chan) and dim is not None and dim >= 2:
            return x
        return x if x is P.CONST or isinstance(x, P.Mixed) else P.Mixed("unsqueeze", self.where(node))

    def split(self, node, x, dim):
        outs = node.meta.get("tensor_meta")
        if not isinstance(x, P.Chan) or dim != 1 or not isinstance(outs, (tuple, list)) or x.spatial != 1:
            return x if x is P.CONST or isinstance(x, P.Mixed) else P.Mixed("split", self.where(node))
        res, start = [], 0
        for tm in outs:
            c = tm.shape[1]
            res.append(P.Chan(x.sources[start:start + c]))
            start += c
        return tuple(res)

    def getitem(self, node):
        x = self.arg(node.args[0])
        idx = node.args[1]
        if isinstance(x, tuple):
            return x[idx] if isinstance(idx, int) else P.CONST
        if not isinstance(x, P.Chan):
            return x if x is P.CONST or isinstance(x, P.Mixed) else P.Mixed("indexing", self.where(node))
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) < 2 or idx[1] is Ellipsis:
            first = idx[0] if idx else slice(None)
            return x if first == slice(None) or isinstance(first, slice) else P.Mixed("indexing the batch", self.where(node))
        ch = idx[1]
        if x.spatial != 1:
            return P.Mixed("indexing a flattened tensor", self.where(node))
        if isinstance(ch, int):
            return P.Squeezed(x.sources[ch])
        if isinstance(ch, slice):
            return P.Chan(x.sources[ch])
        return P.Mixed("fancy indexing of channels", self.where(node))

    # -- classes -----------------------------------------------------------------------
    def add_classes(self, output_node):
        out = output_node.args[0]
        while isinstance(out, fx.Node) and out.op == "call_module" and isinstance(self.modules[out.target], (nn.Identity, nn.Dropout)):
            out = out.args[0]
        if not (isinstance(out, fx.Node) and out.op == "call_module" and isinstance(self.modules[out.target], nn.Linear)):
            raise UnsupportedOperationError("cannot add a class layer: the model output is not produced by an nn.Linear")
        lin = self.modules[out.target]
        x = self.arg(out.args[0])
        if isinstance(x, P.Chan) and x.spatial * len(x.sources) != lin.in_features:
            raise UnsupportedOperationError(f"class layer {out.target}: {lin.in_features} features do not map onto conv channels")
        spatial = x.spatial if isinstance(x, P.Chan) else 1
        side = int(round(spatial ** 0.5))
        ks = (side, side) if side * side == spatial else (1, spatial)
        layer = Layer(out.target, "linear", lin.out_features, len(x.sources) if isinstance(x, P.Chan) else lin.in_features,
                      1, ks, (1, 1), (0, 0), (1, 1), "zeros", lin.bias is not None, (1, 1), ks)
        self.add_layer(layer, x, out)


def _argv(node: fx.Node, pos: int, name: str, default):
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


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
