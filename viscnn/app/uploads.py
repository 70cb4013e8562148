"""Safe decoding of user images (and snapshot files) sent through the browser.

Everything a user uploads is untrusted: the size is bounded before decoding, Pillow's
decompression-bomb check is made strict, ``verify()`` catches truncated and corrupt files, and only
PNG and JPEG are accepted. The result is converted to the model's channels and input size.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Tuple

import numpy as np

from viscnn.errors import ViscnnError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 20_000_000
MAX_ASPECT = 20.0
FORMATS = ("PNG", "JPEG")


def data_url_bytes(contents: str, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of a ``data:...;base64,...`` URL as dcc.Upload sends them."""
    if not isinstance(contents, str) or "," not in contents:
        raise ViscnnError("the upload is empty or not a file")
    head, _, b64 = contents.partition(",")
    if ";base64" not in head:
        raise ViscnnError("the upload is not base64-encoded")
    if len(b64) > (max_bytes * 4) // 3 + 8:
        raise ViscnnError(f"the file is larger than {max_bytes // (1024 * 1024)} MB")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ViscnnError("the upload is not valid base64") from None


def decode_image(data: bytes, channels: int, size: Tuple[int, int], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``data`` (PNG or JPEG bytes) as uint8 [H, W] (1 channel) or [H, W, 3], resized to ``size``.

    Raises ViscnnError with a specific message for anything that is not a sane image.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ViscnnError("the uploaded file is empty")
    old = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                with Image.open(io.BytesIO(data)) as probe:
                    fmt = probe.format
                    w, h = probe.size
                    probe.verify()
                if fmt not in FORMATS:
                    raise ViscnnError(f"unsupported image format {fmt}; upload a PNG or JPEG")
                if w * h > max_pixels:
                    raise ViscnnError(f"the image is too large ({w}x{h} pixels; at most {max_pixels} pixels)")
                if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT:
                    raise ViscnnError(f"the image has an odd shape ({w}x{h}); use one at most {MAX_ASPECT:g} times wider than tall")
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    img = _to_mode(img, channels)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ViscnnError(f"the image is too large (a decompression bomb; at most {max_pixels} pixels)") from None
            except UnidentifiedImageError:
                raise ViscnnError("the file is not an image Pillow can read, or it is corrupt (upload a PNG or JPEG)") from None
            except ViscnnError:
                raise
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ViscnnError(f"the image is corrupt or truncated: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    img = _center_crop(img).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()


def _to_mode(img, channels: int):
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        from PIL import Image

        img = Image.fromarray(((a - lo) / (hi - lo or 1) * 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        from PIL import Image

        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def _center_crop(img):
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def to_png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
