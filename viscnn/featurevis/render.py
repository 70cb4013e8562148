"""Batched feature visualisation: gradient ascent on Fourier-parameterised images.

Recipe (Lucid/Lucent's, see :mod:`viscnn.featurevis.param` for why it is re-implemented): Fourier
coefficients with 1/f scaling, decorrelated colour for RGB, sigmoid to [0, 1], a random
pad/scale/rotate/jitter per step, the model's own input normalisation, Adam at lr 0.05.

Speed comes from two things the one-unit-at-a-time approach lacks: many objectives are optimised
at once (image k of the batch serves objective k; the loss is the sum, so each image gets exactly
its own gradient), and the forward pass stops at the deepest tensor the objectives read
(:class:`~viscnn.featurevis.capture.Capture`). Each image's initial coefficients come from a seed
derived from ``seed`` and its objective's text, and the transforms from ``(seed, step)``, so a unit's
image does not depend on batch size or batch mates; the tests use that to check the batched,
early-exit path against rendering one unit at a time through the whole model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from viscnn.errors import ViscnnError
from viscnn.featurevis.capture import Capture
from viscnn.featurevis.objectives import (Objective, as_objective, channel, check_objectives, diagonal_values,
                                          edge, unit_needs)
from viscnn.featurevis.param import FourierImage, default_margin
from viscnn.featurevis.transform import TransformSpec, random_transform, step_generator
from viscnn.model_copy import working_copy

Normalize = Optional[Tuple[Sequence[float], Sequence[float]]]


@dataclass
class FeatureVisResult:
    """One rendered image per objective, with the objective's value on it.

    ``objective`` is measured on the final uint8 image (what the app shows), untransformed; ``start``
    on the initial random image. ``best_real``/``beats_real`` are filled by
    :func:`viscnn.featurevis.validate.validate`.
    """

    objectives: List[str]
    images: np.ndarray  # uint8 [N, h, w, 3]
    objective: np.ndarray  # float32 [N]
    start: np.ndarray  # float32 [N]
    best_real: Optional[np.ndarray] = None  # float32 [N]
    beats_real: Optional[np.ndarray] = None  # bool [N]
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The prepped model's ``featurevis/LAYER.json``."""
        d = {"objectives": self.objectives, "objective": [float(v) for v in self.objective],
             "start": [float(v) for v in self.start], "settings": self.settings}
        if self.best_real is not None:
            d["best_real"] = [float(v) for v in self.best_real]
            d["beats_real"] = [bool(v) for v in self.beats_real]
        return d


class _RedirectedReLUFn(torch.autograd.Function):
    """ReLU whose backward, for an image whose true ReLU gradient is all zero, lets through the
    gradient that would raise negative inputs (Lucid's ``redirected_relu_grad``): without it an
    objective behind a ReLU that is dead on the starting image never moves (edge objectives read a
    post-ReLU input channel, hence VISCNN's non-converging edges)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        relu_grad = torch.ops.aten.threshold_backward(g, y, 0)  # nn.ReLU's own backward
        flat = relu_grad.flatten(1)
        alive = (flat.amax(1) != 0) | (flat.amin(1) != 0)  # any gradient left, per image? (no temporary)
        if bool(alive.all()):
            return relu_grad
        dead = (~alive).nonzero().squeeze(1)  # usually a few images: redirect only those
        gd, yd = g[dead], y[dead]
        relu_grad[dead] = gd.masked_fill_((yd <= 0) & (gd > 0), 0)  # never push negatives lower
        return relu_grad


class RedirectedReLU(nn.Module):
    def forward(self, x):
        return _RedirectedReLUFn.apply(x)


def redirect_relus(net: nn.Module) -> int:
    """Swap every ``nn.ReLU`` module of a working copy for :class:`RedirectedReLU` (same forward)."""
    n = 0
    for mod in list(net.modules()):
        for name, child in list(mod.named_children()):
            if type(child) is nn.ReLU:
                setattr(mod, name, RedirectedReLU())
                n += 1
    return n


def _pair(size) -> Tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(v) for v in size)
    return (h, w)


class Normalizer(nn.Module):
    """[0, 1] image -> the model's input space, ``(x - mean) / std`` per channel."""

    def __init__(self, normalize: Normalize, channels: int):
        super().__init__()
        if normalize is None:
            mean, std = [0.0] * channels, [1.0] * channels
        else:
            mean, std = (list(np.broadcast_to(np.asarray(v, np.float32).reshape(-1), (channels,))) for v in normalize)
        if any(s <= 0 for s in std):
            raise ViscnnError(f"normalisation std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def signed(self, t: torch.Tensor) -> torch.Tensor:
        """The same for a signed image ``t = 2x - 1``, as one fused multiply-add."""
        return torch.addcmul((0.5 - self.mean) / self.std, t, 0.5 / self.std)


def in_channels_of(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ViscnnError(f"{type(model).__name__} has no Conv2d layer")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, h, w] in [0, 1] -> uint8 [N, h, w, 3] (grayscale repeated)."""
    a = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(a, 3, axis=3) if a.shape[3] == 1 else a


def from_uint8(a: np.ndarray, channels: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0
    return x[:, :1] if channels == 1 else x


def objective_seed(seed: int, obj: Objective) -> int:
    return (int(seed) * 2_654_435_761 + zlib.crc32(str(obj).encode())) % (2 ** 63)


def render(model: nn.Module, objectives: Sequence[Union[str, Objective]], size=(224, 224), steps: int = 256,
           lr: float = 0.05, normalize: Normalize = None, seed: int = 0, batch_size: int = 64,
           transforms: bool = True, early_exit: bool = True, redirect_relu: bool = True,
           margin: Optional[int] = None, device: Union[str, torch.device, None] = None, progress=False) -> FeatureVisResult:
    """Render one image per objective (strings like ``features.3:17`` or :class:`Objective`).

    ``redirect_relu`` swaps ``nn.ReLU`` modules for :class:`RedirectedReLU` during optimisation only
    (the reported objective values use the unchanged forward, which is the same function).
    ``margin``: extra parameterised pixels per side (default ~size/7, see :mod:`viscnn.featurevis.param`).
    ``progress``: True for a bar over batches, or a tqdm-like object advanced by one per image-step."""
    objs = [as_objective(o) for o in objectives]
    if not objs:
        raise ViscnnError("no objectives to render")
    if steps < 0 or batch_size < 1:
        raise ViscnnError("steps must be >= 0 and batch_size >= 1")
    h, w = _pair(size)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    net = working_copy(model, channels_last=True).to(dev)
    if redirect_relu:
        redirect_relus(net)
    c = in_channels_of(net)
    norm = Normalizer(normalize, c).to(dev)
    modules = dict(net.named_modules())
    needs = set().union(*(o.needs for o in objs))
    spec = TransformSpec.for_size((h, w))
    images, final, start = [], [], []
    with Capture(net, needs, early_exit=True) as cap, torch.no_grad():
        shapes = {k: tuple(v.shape) for k, v in cap(norm(torch.full((1, c, h, w), 0.5, device=dev))).items()}
    check_objectives(objs, net, shapes)
    # early exit: capture conv inputs and compute only each image's own channel; otherwise the
    # whole model runs (the one-unit-at-a-time reference) and the outputs are read
    with Capture(net, unit_needs(objs, modules) if early_exit else needs, early_exit) as cap:
        chunks = range(0, len(objs), batch_size)
        bar = progress if hasattr(progress, "update") else None
        if progress is True:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="featurevis", unit="batch")
        for b0 in chunks:
            batch = objs[b0:b0 + batch_size]
            param = FourierImage(len(batch), c, (h, w), [objective_seed(seed, o) for o in batch],
                                 margin=default_margin((h, w)) if margin is None else margin).to(dev)
            with torch.no_grad():
                start.append(diagonal_values(batch, cap(norm(param())), modules).cpu())
            opt = _adam(param.parameters(), lr)
            for step in range(steps):
                img = param.signed()
                if transforms:
                    img = random_transform(img, spec, step_generator(seed, step))
                loss = -diagonal_values(batch, cap(norm.signed(img)), modules).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if bar is not None:
                    bar.update(len(batch))
            with torch.no_grad():
                u8 = to_uint8(param())
                final.append(diagonal_values(batch, cap(norm(from_uint8(u8, c).to(dev))), modules).cpu())
            images.append(u8)
    settings = {"size": [h, w], "steps": steps, "lr": lr, "seed": seed, "transforms": transforms,
                "margin": default_margin((h, w)) if margin is None else margin,
                "redirect_relu": redirect_relu,
                "normalize": None if normalize is None else [list(map(float, np.ravel(v))) for v in normalize]}
    return FeatureVisResult([str(o) for o in objs], np.concatenate(images), torch.cat(final).numpy().astype(np.float32),
                            torch.cat(start).numpy().astype(np.float32), settings=settings)


def _adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this torch build has it (same update, fewer passes)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def render_layer(model: nn.Module, layer: str, channels: Optional[Sequence[int]] = None, **kw) -> FeatureVisResult:
    """Unit visualisations (channel means) of ``layer``, all channels by default."""
    mods = dict(model.named_modules())
    if layer not in mods or not layer:
        raise ViscnnError(f"no module {layer!r} in the model")
    if channels is None:
        m = mods[layer]
        n = getattr(m, "out_channels", None) or getattr(m, "num_features", None) or getattr(m, "out_features", None)
        if n is None:
            raise ViscnnError(f"cannot tell how many channels {layer} has; pass channels=")
        channels = range(n)
    return render(model, [channel(layer, c) for c in channels], **kw)


def render_edges(model: nn.Module, edges: Sequence[Tuple[str, int, int]], graph=None,
                 at: Union[None, str, Tuple[int, int]] = None, **kw) -> FeatureVisResult:
    """Edge visualisations: ``(layer, out_ch j, in_ch i)``, the kernel w_ji applied to input channel i;
    the mean of its map, or its value at ``at`` ("center" or (y, x)), which shows the kernel's
    spatial pattern (see :mod:`viscnn.featurevis.objectives`).

    With a :class:`~viscnn.graph.Graph`, each edge is checked to exist in it first."""
    if graph is not None:
        for l, j, i in edges:
            graph.edge_index(l, int(j), int(i))
    return render(model, [edge(l, j, i, at) for l, j, i in edges], **kw)
