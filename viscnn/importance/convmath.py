"""Per-kernel quantities of one Conv2d without a per-kernel forward pass.

For kernel ``w_ji`` (output channel j, input channel i) the kernel's map is ``h_ji = a_i ⋆ w_ji``
and the conv output is ``y_j = b_j + Σ_i h_ji``. Its Taylor term ``Σ_p g_j·h_ji`` equals
``⟨w_ji, G_ji⟩`` where ``G = ∂(Σ_p g·y)/∂w`` for one image (the per-sample weight gradient):
one weight-gradient convolution per image, the cost of one ordinary weight backward for the
batch. Metrics that need ``|h_ji|`` itself are computed from the maps in bounded chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

#: Default bound on the elements of one chunk of kernel maps (64 Mi floats = 256 MiB).
CHUNK_ELEMENTS = 1 << 26


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class PointwiseConv:
    """A channels-last ``nn.Linear`` (ConvNeXt's pointwise layers) as the 1x1 Conv2d it is on NCHW
    maps: just the attributes the per-kernel maths read; ``weight`` [out, in, 1, 1] is a view of
    the Linear's, so scores stay in step with the module."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int] = (1, 1)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"


def as_conv(mod: Union[nn.Conv2d, nn.Linear]) -> Union[nn.Conv2d, PointwiseConv]:
    """The conv view of a graph layer's module (a Conv2d itself, a Linear as a 1x1 conv)."""
    if isinstance(mod, nn.Linear):
        return PointwiseConv(mod.weight[:, :, None, None], mod.bias, mod.in_features, mod.out_features)
    return mod


def padded_input(conv: nn.Conv2d, a: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The input with any non-zero or string padding applied explicitly, and the remaining
    zero padding to pass to a convolution call (so every path sees the same geometry)."""
    if conv.padding_mode != "zeros":
        return F.pad(a, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), (0, 0)
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return a, (0, 0)
        k, d = _pair(conv.kernel_size), _pair(conv.dilation)
        pads = []
        for dim in (1, 0):  # F.pad order: last dim first
            total = d[dim] * (k[dim] - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(a, pads), (0, 0)
    return a, _pair(conv.padding)


#: Below this many unfolded elements (images x in x taps x positions) one unfold+matmul for the
#: whole batch beats a loop of per-image calls (small models: per-call overhead dominates).
UNFOLD_ELEMENTS = 1 << 18
#: Small-kernel, small-weight layers (the default model's 3x3 convs) run chunks of images as the
#: groups of one grouped weight-gradient call: ~1.5x faster than the per-image loop there on CPU,
#: slower for large kernels (AlexNet's 11x11) and wide layers, which keep the loop.
GROUPED_MAX_WEIGHT, GROUPED_MAX_TAPS = 1 << 16, 9
GROUPED_CHUNK_WEIGHTS = 1 << 19  # images per grouped call x weight elements


def per_sample_taylor(conv: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """``T[n, j, i_local] = Σ_p g[n, j, p] · (a[n, i] ⋆ w[j, i_local])[p]`` via per-sample weight
    gradients. Returns [B, out_channels, in_channels // groups].

    One ``convolution_backward`` (weight gradient only) per image, handed the real weight so the
    backend's fast path runs (``torch.nn.grad.conv2d_weight`` passes a stride-0 stand-in that
    costs a copy per call); measured faster than unfold+bmm and than a batch-as-groups conv on CPU
    for AlexNet-sized layers. Small layers (``method="auto"``) use one unfold+matmul instead, and
    small 3x3 layers a grouped call over chunks of images (see ``GROUPED_*``).
    """
    w = conv.weight.detach()
    a, pad = padded_input(conv, a.detach())
    g = g.detach().to(a.dtype)
    w = w.to(a.dtype).contiguous()
    k = w.shape[2] * w.shape[3]
    if method == "auto":
        if a.shape[0] * a.shape[1] * k * g.shape[2] * g.shape[3] <= UNFOLD_ELEMENTS:
            method = "unfold"
        elif w.numel() <= GROUPED_MAX_WEIGHT and k <= GROUPED_MAX_TAPS:
            method = "grouped"
        else:
            method = "loop"
    if method == "grouped":  # images as groups: weight gradient [n*out, in/groups, kh, kw] per call
        N, out = a.shape[0], torch.empty(a.shape[0], w.shape[0], w.shape[1], dtype=a.dtype, device=a.device)
        n = max(1, min(N, GROUPED_CHUNK_WEIGHTS // w.numel()))
        wk = w.view(1, w.shape[0], w.shape[1], k)
        for n0 in range(0, N, n):
            m = min(n, N - n0)
            gw = torch.ops.aten.convolution_backward(
                g[n0:n0 + m].reshape(1, -1, *g.shape[2:]), a[n0:n0 + m].reshape(1, -1, *a.shape[2:]),
                w.repeat(m, 1, 1, 1), None, _pair(conv.stride), _pair(pad), _pair(conv.dilation), False, [0, 0],
                conv.groups * m, (False, True, False))[1]
            torch.sum(gw.view(m, w.shape[0], w.shape[1], k).mul_(wk), -1, out=out[n0:n0 + m])
        return out
    if method == "unfold":
        N, G = a.shape[0], conv.groups
        U = F.unfold(a, w.shape[2:], _pair(conv.dilation), pad, _pair(conv.stride))  # [N, Cin*k, P]
        U = U.view(N, G, -1, U.shape[-1])  # [N, G, Cg*k, P]
        Gr = g.reshape(N, G, w.shape[0] // G, -1)  # [N, G, Jg, P]
        psg = torch.matmul(Gr, U.transpose(-1, -2))  # per-image weight gradients [N, G, Jg, Cg*k]
        return (psg.reshape(N, w.shape[0], w.shape[1], k) * w.view(1, w.shape[0], w.shape[1], k)).sum(-1)
    ones = torch.ones(k, dtype=a.dtype, device=a.device)
    out = torch.empty(a.shape[0], w.shape[0] * w.shape[1], dtype=a.dtype, device=a.device)
    for n in range(a.shape[0]):
        gw = torch.ops.aten.convolution_backward(g[n:n + 1], a[n:n + 1], w, None, _pair(conv.stride), _pair(pad),
                                                 _pair(conv.dilation), False, [0, 0], conv.groups, (False, True, False))[1]
        torch.mv(gw.mul_(w).reshape(-1, k), ones, out=out[n])  # Σ over kernel taps as a GEMV
    return out.view(a.shape[0], w.shape[0], w.shape[1])


def kernel_maps(conv: nn.Conv2d, a: torch.Tensor, jj: slice) -> torch.Tensor:
    """Maps ``a_i ⋆ w_ji`` of output channels ``group*J + jj`` for every group, with one
    depthwise convolution. Returns [B, groups, J, in/groups, Ho, Wo]."""
    w = conv.weight.detach()
    G = conv.groups
    cout, cg = w.shape[0], w.shape[1]
    jg = cout // G
    a, pad = padded_input(conv, a)
    wk = w.view(G, jg, cg, *w.shape[2:])[:, jj]  # [G, J, cg, kh, kw]
    J = wk.shape[1]
    dw = wk.permute(0, 2, 1, 3, 4).reshape(G * cg * J, 1, *w.shape[2:])  # input channel major
    h = F.conv2d(a, dw, None, conv.stride, pad, conv.dilation, groups=G * cg)  # [B, G*cg*J, Ho, Wo]
    return h.view(a.shape[0], G, cg, J, *h.shape[2:]).transpose(2, 3)


def chunked_kernel_maps(conv: nn.Conv2d, a: torch.Tensor, out_hw, chunk_elements: int = CHUNK_ELEMENTS
                        ) -> Iterator[Tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield ``(batch slice, out-channel index tensor [G*J], maps [b, G*J, cg, Ho, Wo])`` chunks of
    at most ``chunk_elements`` map elements (one image and one channel per group at the least)."""
    G = conv.groups
    jg = conv.out_channels // G
    per = conv.in_channels * out_hw[0] * out_hw[1]  # elements per image per jj
    B = a.shape[0]
    nb = max(1, min(B, chunk_elements // max(per, 1)))
    J = max(1, min(jg, chunk_elements // max(per * nb, 1)))
    for b0 in range(0, B, nb):
        bs = slice(b0, min(B, b0 + nb))
        for j0 in range(0, jg, J):
            jj = slice(j0, min(jg, j0 + J))
            h = kernel_maps(conv, a[bs], jj)  # [b, G, J, cg, Ho, Wo]
            idx = (torch.arange(G, device=a.device)[:, None] * jg + torch.arange(jj.start, jj.stop, device=a.device)[None]).reshape(-1)
            yield bs, idx, h.reshape(h.shape[0], -1, *h.shape[3:])


def group_taylor(conv, a: torch.Tensor, g: torch.Tensor, groups, method: str = "auto",
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``S[k, j, i_local] = Σ_{n ∈ groups[k]} Σ_p g[n, j, p] · (a[n, i] ⋆ w[j, i_local])[p]``: the signed
    kernel Taylor terms summed over each group of images, i.e. ``⟨w_ji, ∂(Σ_{n∈k} target_n)/∂w_ji⟩`` from
    the group's ordinary (batched) weight gradient; no per-image products. Returns [len(groups),
    out_channels, in_channels // groups] (float32 for float32 inputs), written into ``out`` when given.

    ``groups``: index tensors (or slices) into the batch. The batch-gradient Taylor criterion
    (Molchanov et al. 2019) takes |S| of a set's total; :func:`per_sample_taylor` summed over a group
    equals S (tested).

    ``method``: "loop" one ``convolution_backward`` per group; "mm" the weight gradient as one matmul
    per group (``[out, n·P] @ [n·P, in·taps]``, the input unfolded for taps > 1) into a reused buffer;
    "auto" picks "mm" for ungrouped 1x1 layers and for k x k layers with few positions (``B·P <= out``,
    ResNet-50's layer3/4: the unfolded input is no bigger than the weight). Per-group weight gradients
    are weight-sized and the per-call allocations page-faulted: on ResNet-50 at 64 px the mm path took
    the 1x1 layers from 182 to 63 ms per batch of 8 groups, layer4's 3x3 from ~22 to ~8 ms each."""
    w = conv.weight.detach()
    a, pad = padded_input(conv, a.detach())
    g = g.detach().to(a.dtype)
    w = w.to(a.dtype).contiguous()
    k = w.shape[2] * w.shape[3]
    if out is None:
        out = torch.empty(len(groups), w.shape[0], w.shape[1], dtype=a.dtype, device=a.device)
    if method == "auto":
        P = g.shape[2] * g.shape[3]
        method = "mm" if conv.groups == 1 and (k == 1 or a.shape[0] * P <= w.shape[0]) else "loop"
    if method == "mm":
        return _group_taylor_mm(conv, a, g, w, pad, groups, out)
    ones = torch.ones(k, dtype=a.dtype, device=a.device)
    for r, idx in enumerate(groups):
        gw = torch.ops.aten.convolution_backward(g[idx], a[idx], w, None, _pair(conv.stride), _pair(pad),
                                                 _pair(conv.dilation), False, [0, 0], conv.groups, (False, True, False))[1]
        if k == 1:
            torch.mul(gw.view(w.shape[0], w.shape[1]), w.view(w.shape[0], w.shape[1]), out=out[r])
        else:
            torch.mv(gw.mul_(w).reshape(-1, k), ones, out=out[r].view(-1))
    return out


def _group_taylor_mm(conv, a, g, w, pad, groups, out) -> torch.Tensor:
    """:func:`group_taylor` of an ungrouped conv as one matmul per group (see there)."""
    J, C, kh, kw = w.shape
    k, B = kh * kw, a.shape[0]
    P = g.shape[2] * g.shape[3]
    if k == 1 and pad == (0, 0) and _pair(conv.dilation) == (1, 1):  # a 1x1 conv: the strided input itself
        st = _pair(conv.stride)
        cols = a[:, :, ::st[0], ::st[1]][:, :, :g.shape[2], :g.shape[3]].reshape(B, C, P)
    else:
        cols = F.unfold(a, (kh, kw), _pair(conv.dilation), pad, _pair(conv.stride))  # [B, C*k, P]
    cols = cols.transpose(1, 2)  # [B, P, C*k]
    gm = g.reshape(B, J, P).transpose(0, 1)  # [J, B, P]
    gw = None if k == 1 else torch.empty(J, C * k, dtype=a.dtype, device=a.device)  # reused by every group
    ones = torch.ones(k, dtype=a.dtype, device=a.device)
    w2 = w.view(J, C * k)
    for r, idx in enumerate(groups):
        gi, ci = gm[:, idx], cols[idx]
        dst = out[r] if k == 1 else gw
        torch.mm(gi.reshape(J, -1), ci.reshape(-1, C * k), out=dst)
        if k == 1:
            dst.mul_(w2)
        else:
            torch.mv(dst.mul_(w2).view(-1, k), ones, out=out[r].view(-1))
    return out


def group_linear_taylor(lin: nn.Linear, a: torch.Tensor, g: torch.Tensor, in_channels: int, groups,
                        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The class layer's edges (class k, channel c) as :func:`group_taylor`: ``S[r, k, c] = Σ_s W[k, c, s] ·
    Σ_{n∈groups[r]} g[n, k] a[n, c, s]`` (the weight gradient of the group's summed target times W).
    Returns [len(groups), K, in_channels], written into ``out`` (float32) when given."""
    W = lin.weight.detach().float()
    K = W.shape[0]
    S = W.shape[1] // in_channels
    af, gf = a.detach().reshape(a.shape[0], -1).float(), g.detach().reshape(g.shape[0], -1).float()
    if out is None:
        out = torch.empty(len(groups), K, in_channels, dtype=torch.float32, device=W.device)
    for r, idx in enumerate(groups):
        if S == 1:  # one position per channel (after a global pool): the gradient straight into out
            torch.mm(gf[idx].T, af[idx], out=out[r]).mul_(W)
            continue
        gw = gf[idx].T @ af[idx]  # [K, in*S]
        torch.sum(gw.mul_(W).view(K, in_channels, S), 2, out=out[r])
    return out
