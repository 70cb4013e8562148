"""Reading image files into uint8 arrays, whatever their PIL mode, and checking a folder of them.

``Image.convert("RGB")`` clips 16-bit and 32-bit modes (I;16, I, F) instead of scaling them, so a
16-bit grayscale PNG comes out pure white; :func:`to_uint8` scales them to 0..255 first.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _scale_wide(a: np.ndarray, mode: str) -> np.ndarray:
    """Integer or float pixels of a wide mode -> float in 0..255."""
    a = a.astype(np.float64)
    if mode.startswith("I;16"):
        return a / 257.0  # 65535 -> 255
    if mode == "F":
        lo, hi = float(a.min()) if a.size else 0.0, float(a.max()) if a.size else 0.0
        if lo >= 0.0 and hi <= 1.0:
            return a * 255.0  # a [0, 1] float image
        if lo >= 0.0 and hi <= 255.0:
            return a
        return (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    hi = float(a.max()) if a.size else 0.0  # mode "I": 32-bit ints, often 16-bit data
    if hi <= 255:
        return a
    if hi <= 65535:
        return a / 257.0
    lo = float(a.min())
    return (a - lo) / (hi - lo) * 255.0


def to_uint8(im, channels: int) -> np.ndarray:
    """A PIL image -> uint8 [H, W, channels] (1 = grey, 3 = RGB). Alpha is dropped (as torchvision's
    loader does); palette, CMYK, YCbCr etc. go through PIL's own conversion."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = np.clip(np.round(_scale_wide(np.asarray(im), mode)), 0, 255).astype(np.uint8)
        grey = grey.reshape(im.size[1], im.size[0])
        return grey[:, :, None] if channels == 1 else np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if channels == 1:
        if im.mode in ("LA", "La"):
            im = im.getchannel(0)
        arr = np.array(im.convert("L"))
    else:
        arr = np.array(im.convert("RGB"))
    return arr.reshape(im.size[1], im.size[0], -1)


def read_image(path, channels: int) -> np.ndarray:
    """uint8 [H, W, channels] of the image file ``path`` (decoded fully; raises on a bad file)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return to_uint8(im, channels)


def check_image(path) -> Optional[str]:
    """None when ``path`` decodes completely, else why not (unreadable, truncated, empty...)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # a truncated file fails here ("image file is truncated"), not in open()
            if im.size[0] == 0 or im.size[1] == 0:
                return "empty image"
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return "truncated file" if "truncat" in why.lower() else f"corrupt: {why}"
    except Exception as e:  # decoder bugs on hostile files: still a bad image, not a crash
        return f"{type(e).__name__}: {e}"
    return None


def scan_class_folders(root: Path) -> Tuple[List[str], List[List[Path]]]:
    """(class names, image files of each class), sorted; hidden entries skipped."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [sorted(f for f in (root / c).iterdir()
                    if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTS)
             for c in classes]
    return classes, files


def select_readable(per_class_files: Sequence[Sequence[Path]], per_class: int = 0,
                    workers: Optional[int] = None) -> Tuple[List[List[Path]], List[Tuple[Path, str]]]:
    """(the first ``per_class`` readable files of each class (all when 0), the bad files met on the way).
    Files are decoded on a thread pool (PIL's decoders release the GIL); order is kept."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(8, os.cpu_count() or 1)
    kept: List[List[Path]] = []
    bad: List[Tuple[Path, str]] = []
    with ThreadPoolExecutor(workers) as pool:
        for fs in per_class_files:
            good: List[Path] = []
            start = 0
            while start < len(fs) and not (per_class and len(good) >= per_class):
                need = len(fs) - start if not per_class else per_class - len(good)
                chunk = list(fs[start:start + need])
                start += len(chunk)
                for f, why in zip(chunk, pool.map(check_image, chunk)):
                    (good.append(f) if why is None else bad.append((f, why)))
            kept.append(good)
    return kept, bad


def describe_bad(bad: Sequence[Tuple[Path, str]], root: Path, first: int = 5) -> str:
    """``N bad image files under ROOT: a.jpg (why); ...`` for an error message."""
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)
    shown = "; ".join(f"{rel(p)} ({why})" for p, why in bad[:first])
    more = f"; and {len(bad) - first} more" if len(bad) > first else ""
    return f"{len(bad)} bad image file{'s' if len(bad) != 1 else ''} under {root}: {shown}{more}"
