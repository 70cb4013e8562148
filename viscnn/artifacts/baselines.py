"""Baseline inputs that make feature-map artifacts stand out (Alsallakh et al., Sec. 2.2).

Natural images keep selective activations that hide systematic artifacts; random, constant and
"simplified" (one stimulus on a constant background) inputs do not. Every baseline is made as
pixels in [0, 1] (the valid range) and then normalised like the model's real input
(``normalize = {"mean": [...], "std": [...]}``, as in a prepped model's manifest), so ``white``
is what a white image becomes, not a tensor of ones.

Spec strings:
  random:K[:SEED]   K images, each pixel uniform over [0, 1] (seeded; image k is the same for any K)
  zero              the all-zero model input (the mean image after normalisation; black if none)
  black | white     pixels 0 | 1
  stimulus:SHAPE[:key=value,...]  SHAPE one of dot, square, bar, hbar, vbar, checker; keys:
      size=PX       dot diameter, square side, bar width, checker cell (default 1/8 of the image)
      y=PX, x=PX    centre (default the image centre); length=PX (bar, default the whole image);
      extent=PX     side of the checker patch (default the whole image); orient=h|v (bar)
      bg=V          background pixel value in [0, 1] (default 0.5)
      contrast=V    stimulus value minus background, signed (default 0.5); bg+contrast in [0, 1]
  images:IMAGESPEC  natural images through the image-set specs of ``viscnn circuit --images``
"""

from __future__ import annotations

import re
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

from viscnn.errors import ViscnnError

SHAPES = ("dot", "square", "bar", "hbar", "vbar", "checker")
_KEYS = {"size", "y", "x", "length", "extent", "orient", "bg", "contrast"}
_NUM = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def normalise(pixels: torch.Tensor, normalize: Optional[dict]) -> torch.Tensor:
    """[B, C, H, W] pixels in [0, 1] -> the model's input space."""
    if not normalize:
        return pixels
    c = pixels.shape[1]
    mean = torch.as_tensor(normalize["mean"], dtype=torch.float32).reshape(-1)
    std = torch.as_tensor(normalize["std"], dtype=torch.float32).reshape(-1)
    if mean.numel() not in (1, c) or std.numel() not in (1, c):
        raise ViscnnError(f"normalisation has {mean.numel()} means / {std.numel()} stds for a {c}-channel input")
    return (pixels - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def is_constant(spec: str) -> bool:
    """True for the baselines whose every image is spatially constant (zero, black, white)."""
    return spec.strip() in ("zero", "black", "white")


def baseline_count(spec: str) -> Optional[int]:
    """Images in a synthetic baseline (None for ``images:``; their source knows)."""
    kind, _, rest = spec.strip().partition(":")
    if kind == "random":
        return _random_args(rest, spec)[0]
    if kind in ("zero", "black", "white", "stimulus"):
        return 1
    return None


def baseline_batches(spec: str, input_shape: Sequence[int], normalize: Optional[dict] = None,
                     batch_size: int = 16, limit: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Stream the baseline ``spec`` as float [B, C, H, W] batches in the model's input space."""
    if not isinstance(spec, str) or not spec.strip():
        raise ViscnnError("empty baseline: use random:K[:SEED], zero, black, white, stimulus:SHAPE[:k=v,...] or images:SPEC")
    spec = spec.strip()
    c, h, w = (int(v) for v in input_shape)
    kind, _, rest = spec.partition(":")
    if kind == "images":
        if not rest:
            raise ViscnnError("baseline images: needs an image-set spec, e.g. images:fmnist:test:64")
        from viscnn.data import open_images

        for x, _ in open_images(rest, (c, h, w)).batches(batch_size, (c, h, w), normalize, limit):
            yield x
        return
    if kind == "random":
        k, seed = _random_args(rest, spec)
        k = k if limit is None else min(k, int(limit))
        for s in range(0, k, batch_size):
            out = torch.empty(min(k, s + batch_size) - s, c, h, w)
            for i in range(s, s + out.shape[0]):
                g = torch.Generator().manual_seed(seed * 1_000_003 + i)
                out[i - s] = torch.rand((c, h, w), generator=g)
            yield normalise(out, normalize)
        return
    if rest and kind in ("zero", "black", "white"):
        raise ViscnnError(f"baseline {kind} takes no arguments (got {spec!r})")
    if kind == "zero":
        yield torch.zeros(1, c, h, w)
    elif kind in ("black", "white"):
        yield normalise(torch.full((1, c, h, w), 0.0 if kind == "black" else 1.0), normalize)
    elif kind == "stimulus":
        yield normalise(stimulus(rest, (h, w)).expand(1, c, h, w).contiguous(), normalize)
    else:
        raise ViscnnError(f"unknown baseline {spec!r}: use random:K[:SEED], zero, black, white, "
                          "stimulus:SHAPE[:key=value,...] or images:IMAGESPEC")


def make_baseline(spec: str, input_shape: Sequence[int], normalize: Optional[dict] = None,
                  limit: Optional[int] = None) -> torch.Tensor:
    """The whole baseline as one tensor (for small sets; prefer :func:`baseline_batches`)."""
    return torch.cat(list(baseline_batches(spec, input_shape, normalize, 64, limit)))


def _random_args(rest: str, spec: str) -> Tuple[int, int]:
    parts = rest.split(":") if rest else []
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
        raise ViscnnError(f"bad baseline {spec!r}: use random:K[:SEED] with whole numbers")
    k = int(parts[0])
    if k < 1:
        raise ViscnnError(f"bad baseline {spec!r}: K must be at least 1")
    return k, int(parts[1]) if len(parts) > 1 else 0


def _parse_options(text: str, spec: str) -> Dict[str, object]:
    opts: Dict[str, object] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or key not in _KEYS:
            raise ViscnnError(f"bad stimulus option {item!r} in {spec!r}: use key=value with keys {', '.join(sorted(_KEYS))}")
        val = val.strip()
        if key == "orient":
            if val not in ("h", "v"):
                raise ViscnnError(f"stimulus orient must be h or v, got {val!r}")
            opts[key] = val
        elif _NUM.fullmatch(val):
            opts[key] = float(val)
        else:
            raise ViscnnError(f"stimulus option {key}={val!r} is not a number")
    return opts


def stimulus(rest: str, hw: Tuple[int, int]) -> torch.Tensor:
    """[1, 1, H, W] pixels: a constant background with one shape (see the module docstring)."""
    spec = f"stimulus:{rest}"
    shape, _, opt_text = rest.partition(":")
    if shape not in SHAPES:
        raise ViscnnError(f"unknown stimulus shape {shape!r} in {spec!r}; shapes: {', '.join(SHAPES)}")
    o = _parse_options(opt_text, spec)
    h, w = hw
    bg, con = float(o.get("bg", 0.5)), float(o.get("contrast", 0.5))
    fg = bg + con
    if not (0.0 <= bg <= 1.0 and 0.0 <= fg <= 1.0):
        raise ViscnnError(f"stimulus {spec!r}: background {bg:g} and stimulus {fg:g} must lie in the pixel range [0, 1]")
    size = float(o.get("size", max(1, min(h, w) // 8)))
    cy, cx = float(o.get("y", (h - 1) / 2)), float(o.get("x", (w - 1) / 2))
    if size < 1:
        raise ViscnnError(f"stimulus {spec!r}: size must be at least 1 pixel")
    if shape == "bar":
        shape = "hbar" if o.get("orient", "h") == "h" else "vbar"
    if shape == "dot":
        half_y = half_x = size / 2
    elif shape == "square":
        half_y = half_x = size / 2
    elif shape == "hbar":
        half_y, half_x = size / 2, float(o.get("length", w)) / 2
    elif shape == "vbar":
        half_y, half_x = float(o.get("length", h)) / 2, size / 2
    else:  # checker
        ext = o.get("extent")
        half_y, half_x = (h / 2, w / 2) if ext is None else (float(ext) / 2, float(ext) / 2)
        if ext is None:
            cy, cx = (h - 1) / 2, (w - 1) / 2
    y0, y1, x0, x1 = cy - half_y + 0.5, cy + half_y + 0.5, cx - half_x + 0.5, cx + half_x + 0.5
    if y0 < -1e-9 or x0 < -1e-9 or y1 > h + 1e-9 or x1 > w + 1e-9:
        raise ViscnnError(f"stimulus {spec!r} (rows {y0:g}..{y1:g}, columns {x0:g}..{x1:g}) lies outside the {h}x{w} image")
    yy = torch.arange(h, dtype=torch.float32).view(-1, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, -1)
    inside = (yy + 0.5 > y0) & (yy + 0.5 <= y1) & (xx + 0.5 > x0) & (xx + 0.5 <= x1)  # pixel centres in the box
    if shape == "dot":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 2) ** 2
    elif shape == "checker":
        cell = max(1, int(round(size)))
        parity = (((yy - y0 + 0.5).floor() // cell + (xx - x0 + 0.5).floor() // cell) % 2) == 0
        inside = inside & parity
    img = torch.full((h, w), bg)
    img[inside] = fg
    if not bool(inside.any()):
        raise ViscnnError(f"stimulus {spec!r} covers no pixel of the {h}x{w} image")
    return img.view(1, 1, h, w)
