"""Per-image node and edge scores of one layer, for every metric, defined the same way for both.

With ``h`` a map and ``g = ∂target/∂h`` (for a node: the Conv2d output channel incl. bias; for
an edge i→j: the kernel's map ``a_i ⋆ w_ji``, whose gradient is ``g_j``), per image:

  taylor          |Σ_p g·h|    (Molchanov et al.; the change of the target if h were removed, to first order)
  taylor_signed    Σ_p g·h     (positive: h pushes the target up; negative: it inhibits it)

  For a conv *node* followed by per-channel elementwise modules (BN, ReLU, ...: its "chain"),
  both Taylor scores are taken at the chain's end with the value removal really leaves there:
  ``Σ_p g_a·(a - chain(0))``, ``a = chain(h)`` ("replacement Taylor", see
  :mod:`viscnn.importance.node_scores`): zeroing a filter is a large move across the ReLU kink
  that ``g·h`` at the conv output misjudges. Through BN alone it equals ``Σ g·h`` exactly.

  actgrad_abs     mean_p |g·h| (VISCNN's original score, for comparison)
  activation      mean_p |h|
  gradient        mean_p |g|   (for an edge, the gradient at its output channel)
  weight          mean |w|     (of the kernel; of all the filter's kernels for a node; 0 for input nodes)

Every metric is then averaged over the images of an image set.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.importance.convmath import CHUNK_ELEMENTS, chunked_kernel_maps, per_sample_taylor

METRICS = ("taylor", "taylor_signed", "actgrad_abs", "activation", "gradient", "weight")
NEEDS_GRAD = {"taylor", "taylor_signed", "actgrad_abs", "gradient"}


def check_metrics(metrics: Iterable[str]) -> tuple:
    metrics = tuple(metrics)
    for m in metrics:
        if m not in METRICS:
            raise ViscnnError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
    if not metrics:
        raise ViscnnError("no metric given")
    return metrics


def map_scores(h: Optional[torch.Tensor], g: Optional[torch.Tensor], metrics, B: int, C: int,
               weight_mag: Optional[torch.Tensor], device) -> Dict[str, torch.Tensor]:
    """Node scores [B, C] from maps ``h`` and gradients ``g`` ([B, C, ...] or None)."""
    out = {}
    hf = h.detach().reshape(B, C, -1).float() if h is not None else None
    gf = g.detach().reshape(B, C, -1).float() if g is not None else None
    zeros = torch.zeros(B, C, device=device)
    gh = gf * hf if (gf is not None and hf is not None) else None
    for m in metrics:
        if m in ("taylor", "taylor_signed"):
            out[m] = zeros if gh is None else (gh.sum(2).abs() if m == "taylor" else gh.sum(2))
        elif m == "actgrad_abs":
            out[m] = zeros if gh is None else gh.abs().mean(2)
        elif m == "activation":
            out[m] = zeros if hf is None else hf.abs().mean(2)
        elif m == "gradient":
            out[m] = zeros if gf is None else gf.abs().mean(2)
        elif m == "weight":
            out[m] = zeros if weight_mag is None else weight_mag.float().to(device).expand(B, C)
    return out


def replacement_node_taylor(a: torch.Tensor, g_a: torch.Tensor, zero: torch.Tensor, metrics) -> Dict[str, torch.Tensor]:
    """Conv node Taylor scores [B, C] at the end of the node's elementwise chain: ``Σ_p g_a·(a - chain(0))``."""
    B, C = a.shape[:2]
    d = (g_a.detach().float() * (a.detach().float() - zero.float().view(1, C, 1, 1))).reshape(B, C, -1).sum(2)
    return {m: (d.abs() if m == "taylor" else d) for m in ("taylor", "taylor_signed") if m in metrics}


def conv_edge_scores(conv: nn.Conv2d, a: Optional[torch.Tensor], g: Optional[torch.Tensor], metrics, B: int,
                     out_hw, chunk_elements: int = CHUNK_ELEMENTS,
                     node_gradient: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Edge scores [B, out*in/groups] in the graph's canonical kernel order.

    ``node_gradient``: the layer's node ``gradient`` scores [B, out] when already computed (an
    edge's gradient is its output channel's), to skip a second pass over ``g``."""
    w = conv.weight.detach()
    cout, cg = w.shape[:2]
    device = w.device
    out = {}
    zeros = torch.zeros(B, cout * cg, device=device)
    if any(m in ("taylor", "taylor_signed") for m in metrics):
        t = per_sample_taylor(conv, a, g).float().reshape(B, -1) if (a is not None and g is not None) else None
        for m in ("taylor", "taylor_signed"):
            if m in metrics:
                out[m] = zeros if t is None else (t.abs() if m == "taylor" else t)
    want_maps = [m for m in ("activation", "actgrad_abs") if m in metrics]
    if want_maps:
        acc = {m: torch.zeros(B, cout, cg, device=device) for m in want_maps}
        if a is not None:
            for bs, idx, h in chunked_kernel_maps(conv, a.detach(), out_hw, chunk_elements):
                hf = h.float()
                if "activation" in acc:
                    acc["activation"][bs, idx] = hf.abs().mean((3, 4))
                if "actgrad_abs" in acc and g is not None:
                    gj = g.detach()[bs][:, idx].float().unsqueeze(2)  # [b, J, 1, Ho, Wo]
                    acc["actgrad_abs"][bs, idx] = (hf * gj).abs().mean((3, 4))
        for m in want_maps:
            out[m] = acc[m].reshape(B, -1)
    if "gradient" in metrics:
        if g is None:
            out["gradient"] = zeros
        else:
            gm = node_gradient if node_gradient is not None else g.detach().float().abs().mean((2, 3))
            out["gradient"] = gm.repeat_interleave(cg, 1)
    if "weight" in metrics:
        out["weight"] = w.float().abs().mean((2, 3)).reshape(1, -1).expand(B, -1)
    return {m: out[m] for m in metrics}


def linear_edge_scores(lin: nn.Linear, a: Optional[torch.Tensor], g: Optional[torch.Tensor], metrics, B: int,
                       in_channels: int) -> Dict[str, torch.Tensor]:
    """Class-layer edges (class k, conv channel c): h_kc = W[k, block c] · a[block c], a scalar map."""
    W = lin.weight.detach()
    K = W.shape[0]
    S = W.shape[1] // in_channels
    Wb = W.view(K, in_channels, S).float()
    out = {}
    zeros = torch.zeros(B, K * in_channels, device=W.device)
    h = torch.einsum("bcs,kcs->bkc", a.detach().reshape(B, in_channels, S).float(), Wb) if a is not None else None
    gk = g.detach().float().unsqueeze(2) if g is not None else None  # [B, K, 1]
    for m in metrics:
        if m in ("taylor", "taylor_signed", "actgrad_abs"):
            v = None if (h is None or gk is None) else h * gk
            out[m] = zeros if v is None else (v if m == "taylor_signed" else v.abs()).reshape(B, -1)
        elif m == "activation":
            out[m] = zeros if h is None else h.abs().reshape(B, -1)
        elif m == "gradient":
            out[m] = zeros if gk is None else gk.abs().expand(B, K, in_channels).reshape(B, -1)
        elif m == "weight":
            out[m] = Wb.abs().mean(2).reshape(1, -1).expand(B, -1)
    return out
