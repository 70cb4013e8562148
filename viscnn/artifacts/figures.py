"""PNG figures of the artifact analysis, drawn with PIL (matplotlib is not a viscnn dependency).

Every signed value uses the project's one diverging map (:mod:`viscnn.app.figures.colors`: red =
positive, blue = negative, white = zero) with limits symmetric about zero; each tile's caption
gives its limit. Mean patches are drawn as ``patch - mean(patch)``: a patch of post-ReLU inputs
is positive everywhere, and on a zero-centred scale its (small) asymmetry would be invisible.
Downsampling layers (stride > 1) get a thick dark frame and "stride s" in their caption.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from viscnn.app.figures.colors import diverging_rgb, symmetric_limit
from viscnn.io import atomic_write_bytes

TILE = 112  # displayed map side in pixels
PAD = 8
FRAME = (40, 40, 40)
BG = (255, 255, 255)
TEXT = (20, 20, 20)


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font
        return ImageFont.load_default()


def heat(arr: np.ndarray, limit: Optional[float] = None, side: int = TILE) -> Image.Image:
    """A 2D array as a diverging-colour tile whose longer side is ``side`` (nearest-neighbour)."""
    a = np.asarray(arr, np.float64)
    lim = symmetric_limit(a) if limit is None else (limit if limit > 1e-12 else 1.0)
    img = Image.fromarray(diverging_rgb(a / lim), "RGB")
    h, w = a.shape
    s = side / max(h, w)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST)


def _save(img: Image.Image, path) -> None:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(Path(path), buf.getvalue())


def _grid(tiles: List[Image.Image], captions: List[List[str]], frames: List[bool], cols: int, title: str,
          side: int = TILE) -> Image.Image:
    font, tfont = _font(11), _font(14)
    lines = max((len(c) for c in captions), default=1)
    tw = max([side] + [t.width for t in tiles])
    th = max([1] + [t.height for t in tiles])
    cell_w, cell_h = tw + 2 * PAD, th + PAD + 14 * lines + PAD
    rows = max(1, -(-len(tiles) // cols))
    head = 28
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    img = Image.new("RGB", (int(max(cols * cell_w, probe.textlength(title, font=tfont) + 2 * PAD, 360)),
                            head + rows * cell_h), BG)
    d = ImageDraw.Draw(img)
    d.text((PAD, 6), title, fill=TEXT, font=tfont)
    for i, (t, cap, fr) in enumerate(zip(tiles, captions, frames)):
        x0, y0 = (i % cols) * cell_w + PAD, head + (i // cols) * cell_h
        ox, oy = x0 + (tw - t.width) // 2, y0 + (th - t.height) // 2
        img.paste(t, (ox, oy))
        d.rectangle([ox - 1, oy - 1, ox + t.width, oy + t.height], outline=FRAME if fr else (200, 200, 200),
                    width=3 if fr else 1)
        for j, line in enumerate(cap):
            d.text((x0, y0 + th + 4 + 14 * j), _fit(d, line, font, tw + PAD), fill=TEXT, font=font)
    return img


def _fit(d: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if d.textlength(text, font=font) <= width:
        return text
    while len(text) > 2 and d.textlength("\u2026" + text, font=font) > width:
        text = text[1:]
    return "\u2026" + text  # keep the end of a long module path (the distinctive part)


def layer_strip(maps: Sequence, path, title: str = "", cols: int = 8) -> None:
    """Mean map of every layer, each on its own symmetric scale, titled "H×W, C ch"."""
    tiles, caps, frames = [], [], []
    for m in maps:
        lim = symmetric_limit(m.map)
        tiles.append(heat(m.map, lim))
        st = max(m.stride)
        caps.append([m.layer, m.title.replace("\u00d7", "x") + (f", stride {st}" if st > 1 else ""), f"\u00b1{lim:.3g}"])
        frames.append(st > 1)
    _save(_grid(tiles, caps, frames, min(cols, max(1, len(tiles))), title or "mean feature maps"), path)


def drill_grid(maps: np.ndarray, order: Sequence[int], scores: Sequence[float], path, title: str = "",
               shared: bool = True, limit: int = 64, cols: int = 8) -> None:
    """Individual channel maps in ``order`` (most suspicious first), with one shared symmetric
    scale (``shared``) or each map on its own."""
    idx = list(order)[:limit]
    lim_all = symmetric_limit(maps[idx]) if idx else 1.0
    tiles, caps = [], []
    for c in idx:
        lim = lim_all if shared else symmetric_limit(maps[c])
        tiles.append(heat(maps[c], lim, side=88))
        caps.append([f"ch {c}  score {scores[c]:.3g}", f"\u00b1{lim:.3g}"])
    head = (title or "channel maps") + (f"  (shared scale \u00b1{lim_all:.3g})" if shared else "  (per-map scale)")
    _save(_grid(tiles, caps, [False] * len(tiles), min(cols, max(1, len(tiles))), head, side=88), path)


def patch_kernel_table(patches: Sequence, path, title: str = "", cols: int = 4) -> None:
    """Per conv: mean input patch (minus its mean) and mean kernel, with their rot180 asymmetry."""
    from viscnn.artifacts.patches import asymmetry

    tiles, caps, frames = [], [], []
    side = 64
    for p in patches:
        dev = p.patch - p.patch.mean()
        pair = Image.new("RGB", (2 * side + 6, side), BG)
        pair.paste(heat(dev, side=side), (0, 0))
        pair.paste(heat(p.kernel, side=side), (side + 6, 0))
        tiles.append(pair)
        pa, ka = asymmetry(p.patch), asymmetry(p.kernel)
        kk = "x".join(map(str, p.kernel_size))
        caps.append([p.layer, f"{kk}" + (f", stride {max(p.stride)}" if p.downsampling else ""),
                     f"patch rot {pa['rot180']:.3g} tb {pa['top_bottom']:+.2g}",
                     f"kernel rot {ka['rot180']:.3g} tb {ka['top_bottom']:+.2g}"])
        frames.append(p.downsampling)
    head = (title or "mean input patch (left, minus its mean) | mean kernel (right)")
    _save(_grid(tiles, caps, frames, min(cols, max(1, len(tiles))), head, side=2 * side + 6), path)


def padding_table(report: dict, path, title: str = "") -> None:
    """The padding audit as a table; rows with unused padding or unread rows are marked."""
    font, tfont = _font(12), _font(14)
    head = ["layer", "kind", "input", "kernel", "stride", "dil", "ceil", "pad t/b/l/r", "unused b/r", "unread b/r"]
    rows = []
    for e in report["padding"]:
        p, u, r = e["pad"], e["unused_pad"], e["unread"]
        rows.append([e["layer"], e["kind"], "x".join(map(str, e["in_size"])), "x".join(map(str, e["kernel"])),
                     "x".join(map(str, e["stride"])), "x".join(map(str, e["dilation"])),
                     "yes" if e["ceil_mode"] else "", f"{p['top']}/{p['bottom']}/{p['left']}/{p['right']}",
                     f"{u['bottom']}/{u['right']}", f"{r['bottom']}/{r['right']}"])
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [max([probe.textlength(h, font=font)] + [probe.textlength(r[i], font=font) for r in rows]) + 14
              for i, h in enumerate(head)]
    lh = 18
    sizes = ", ".join("x".join(map(str, s)) for s in report.get("suggested_sizes", [])) or "none found"
    foot = f"no unused padding at sizes: {sizes}"
    W = int(max(sum(widths) + 2 * PAD, probe.textlength(foot, font=font) + 2 * PAD, 360))
    img = Image.new("RGB", (W, 30 + lh * (len(rows) + 1) + 34), BG)
    d = ImageDraw.Draw(img)
    size = "x".join(map(str, report.get("input_size", [])))
    d.text((PAD, 6), title or f"padding audit at {size}", fill=TEXT, font=tfont)
    y = 30
    for ri, r in enumerate([head] + rows):
        if ri > 0:
            e = report["padding"][ri - 1]
            if e["unused_pad"]["bottom"] or e["unused_pad"]["right"] or e["unread"]["bottom"] or e["unread"]["right"]:
                d.rectangle([PAD, y - 1, W - PAD, y + lh - 3], fill=(235, 235, 235))
        x = PAD
        for i, cell in enumerate(r):
            d.text((x, y), cell, fill=TEXT, font=font)
            x += widths[i]
        if ri == 0:
            d.line([PAD, y + lh - 3, W - PAD, y + lh - 3], fill=(150, 150, 150))
        y += lh
    d.text((PAD, y + 8), foot, fill=TEXT, font=font)
    _save(img, path)


def compare_figure(rows: Sequence[dict], path, labels=("A", "B"), title: str = "") -> None:
    """Per layer: A, B (resized to A's size when the sizes differ) and A - B, the three on one
    symmetric scale per row."""
    tiles, caps = [], []
    side = 88
    for r in rows:
        a, b, dmap = np.asarray(r["a"]), np.asarray(r["b_resized"]), np.asarray(r["diff"])
        lim = r["limit"]
        trip = Image.new("RGB", (3 * side + 12, side), BG)
        for j, arr in enumerate((a, b, dmap)):
            t = heat(arr, lim, side=side)
            trip.paste(t, (j * (side + 6) + (side - t.width) // 2, (side - t.height) // 2))
        tiles.append(trip)
        sa, sb = "x".join(map(str, r["size_a"])), "x".join(map(str, r["size_b"]))
        caps.append([r["layer"], f"{labels[0]} {sa} | {labels[1]} {sb}" + (" (resized)" if r["resized"] else ""),
                     f"\u00b1{lim:.3g}  max|diff| {r['max_abs_diff']:.3g}"])
    head = title or f"{labels[0]} | {labels[1]} | {labels[0]} - {labels[1]} (one scale per row)"
    _save(_grid(tiles, caps, [False] * len(tiles), 3, head, side=3 * side + 12), path)
