"""Image-set sources, streamed in batches (never the whole set in memory as float tensors).

Spec strings (the CLI's ``--images``):
  folder:PATH | PATH      image files; one subfolder per class (labels), or a flat folder (no labels)
  tensor:FILE.pt          a saved tensor [N,C,H,W] (or {"images", "labels"}), torch.load weights_only=True
  random:N[:SEED]         N seeded Gaussian images (already "normalised": no normalisation applied)
  fmnist:SPLIT[:CLASS][:N]  Fashion-MNIST train/test, optionally one class (name or index), first N
  fmnist:SPLIT:CLASS:N:SKIP the N images after the first SKIP (a held-out set disjoint from :N)
  torchvision:NAME:ROOT[:SPLIT]  a torchvision dataset already on disk (never downloaded)

Images are converted to the model's input: uint8 -> [0, 1], grey <-> RGB, resized with
``torch.nn.functional.interpolate``, then normalised with ``normalize={"mean", "std"}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from viscnn.errors import ViscnnError

from viscnn.data.images import IMAGE_EXTS
Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]


@dataclass
class ImageSource:
    """``len`` images readable in index ranges by ``read(start, stop) -> (images, labels or None)``."""

    name: str
    length: int
    read: Callable[[int, int], Tuple[object, Optional[np.ndarray]]]
    classes: Optional[List[str]] = None
    raw_float: bool = False  # images are already model-ready floats (no /255, no normalisation)

    def __len__(self) -> int:
        return self.length

    def batches(self, batch_size: int, input_shape: Sequence[int], normalize: Optional[dict] = None,
                limit: Optional[int] = None) -> Iterator[Batch]:
        n = self.length if limit is None else min(self.length, int(limit))
        if batch_size < 1:
            raise ViscnnError("batch size must be >= 1")
        for s in range(0, n, batch_size):
            imgs, labels = self.read(s, min(n, s + batch_size))
            x = to_model_input(imgs, input_shape, None if self.raw_float else normalize, scale=not self.raw_float)
            y = torch.as_tensor(np.asarray(labels), dtype=torch.long) if labels is not None else None
            yield x, y


def to_model_input(imgs, input_shape: Sequence[int], normalize: Optional[dict] = None, scale: bool = True) -> torch.Tensor:
    """[B,H,W] / [B,H,W,C] uint8 arrays or [B,C,H,W] tensors -> float [B,C,H,W] of ``input_shape``."""
    c, h, w = (int(v) for v in input_shape)
    x = torch.as_tensor(np.asarray(imgs)) if not isinstance(imgs, torch.Tensor) else imgs
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.dim() != 4:
        raise ViscnnError(f"images must be [N,H,W], [N,H,W,C] or [N,C,H,W]; got shape {tuple(x.shape)}")
    is_int = not x.is_floating_point()
    x = x.float()
    if is_int and scale:
        x = x / 255.0
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ViscnnError(f"cannot convert {x.shape[1]}-channel images to the model's {c} channels")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if normalize:
        mean = torch.as_tensor(normalize["mean"], dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.as_tensor(normalize["std"], dtype=torch.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def open_images(spec: str, input_shape: Sequence[int] = (3, 224, 224)) -> ImageSource:
    """The :class:`ImageSource` named by ``spec`` (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ViscnnError("empty image-set spec: use folder:PATH, tensor:FILE.pt, random:N or fmnist:train|test")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind == "random":
        return _random(rest, input_shape)
    if kind == "tensor":
        return _tensor(rest)
    if kind == "fmnist":
        return _fmnist(rest)
    if kind == "folder":
        return _folder(rest)
    if kind == "torchvision":
        return _torchvision(rest)
    if Path(spec).is_dir():
        return _folder(spec)
    raise ViscnnError(f"unknown image-set spec {spec!r}: use folder:PATH (or a directory), tensor:FILE.pt, random:N[:SEED], "
                      "fmnist:train|test[:CLASS][:N] or torchvision:NAME:ROOT")


def image_batches(spec: str, batch_size: int, input_shape: Sequence[int], normalize: Optional[dict] = None,
                  limit: Optional[int] = None) -> Iterator[Batch]:
    """Stream ``(x float [B,C,H,W], y long [B] or None)`` batches of the image set ``spec``."""
    return open_images(spec, input_shape).batches(batch_size, input_shape, normalize, limit)


def _int(text: str, what: str, spec: str) -> int:
    if not re.fullmatch(r"\d+", text or ""):
        raise ViscnnError(f"bad {what} {text!r} in image-set spec {spec!r}: expected a whole number")
    return int(text)


def _random(rest: str, input_shape) -> ImageSource:
    parts = rest.split(":")
    n = _int(parts[0], "count", f"random:{rest}")
    seed = _int(parts[1], "seed", f"random:{rest}") if len(parts) > 1 else 0
    shape = tuple(int(v) for v in input_shape)

    def read(a, b):
        out = torch.empty(b - a, *shape)
        for k in range(a, b):  # image k is the same whatever the batch size
            out[k - a] = torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + k))
        return out, None
    return ImageSource(f"random:{n}", n, read, None, raw_float=True)


def _tensor(path: str) -> ImageSource:
    p = Path(path)
    if not p.is_file():
        raise ViscnnError(f"image tensor file not found: {path}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ViscnnError(f"cannot load {path} (torch.load weights_only=True): {type(e).__name__}: {e}") from None
    labels = None
    if isinstance(obj, dict):
        if "images" not in obj:
            raise ViscnnError(f"{path}: a dict needs an 'images' tensor (and optionally 'labels')")
        obj, labels = obj["images"], obj.get("labels")
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        obj, labels = obj
    if not isinstance(obj, torch.Tensor) or obj.dim() not in (3, 4):
        raise ViscnnError(f"{path}: expected a tensor [N,C,H,W], got {type(obj).__name__}")
    lab = labels.numpy() if isinstance(labels, torch.Tensor) else None
    return ImageSource(f"tensor:{path}", obj.shape[0], lambda a, b: (obj[a:b], None if lab is None else lab[a:b]),
                       None, raw_float=obj.is_floating_point())


def _fmnist(rest: str) -> ImageSource:
    from viscnn.data.fashion_mnist import CLASSES, load_fashion_mnist

    parts = rest.split(":") if rest else ["train"]
    split = parts[0] or "train"
    images, labels = load_fashion_mnist(split)
    extra = parts[1:]
    if len(extra) > 3:
        raise ViscnnError(f"bad Fashion-MNIST spec fmnist:{rest}: use fmnist:train|test[:CLASS][:N[:SKIP]]")
    cls, n, skip = None, None, 0
    if len(extra) == 3:
        skip = _int(extra.pop(), "skip", f"fmnist:{rest}")
    if len(extra) == 2 or (extra and not extra[0].isdigit()):
        part = extra[0]
        names = {c.lower(): i for i, c in enumerate(CLASSES)}
        if part.isdigit() and int(part) < len(CLASSES):
            cls = int(part)
        elif part.lower() in names:
            cls = names[part.lower()]
        else:
            raise ViscnnError(f"unknown Fashion-MNIST class {part!r}; classes: {', '.join(CLASSES)} (or 0-9)")
        extra = extra[1:]
    if extra:
        n = _int(extra[0], "count", f"fmnist:{rest}")
    if cls is not None:
        idx = np.flatnonzero(labels == cls)
        images, labels = images[idx], labels[idx]
    if n is not None or skip:
        stop = None if n is None else skip + n
        images, labels = images[skip:stop], labels[skip:stop]
    return ImageSource(f"fmnist:{rest}", len(images), lambda a, b: (images[a:b], labels[a:b]), list(CLASSES))


def _folder(path: str) -> ImageSource:
    root = Path(path)
    if not root.is_dir():
        raise ViscnnError(f"image folder not found: {path}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: List[Path] = []
    labels: Optional[List[int]] = None
    classes = None
    if subdirs:
        classes, labels = [d.name for d in subdirs], []
        for k, d in enumerate(subdirs):
            fs = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS)
            files += fs
            labels += [k] * len(fs)
    else:
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ViscnnError(f"no image files ({', '.join(sorted(IMAGE_EXTS))}) in {path}")
    lab = np.array(labels, np.int64) if labels is not None else None

    def read(a, b):
        from viscnn.data.images import read_image

        arrs = []
        for f in files[a:b]:
            try:
                arr = read_image(f, 3)  # 16-bit and float modes scaled, not clipped to white
            except Exception as e:
                raise ViscnnError(f"cannot read image {f}: {e}") from None
            arrs.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        shapes = {t.shape for t in arrs}
        if len(shapes) > 1:  # differing sizes: resize each to the first's size before stacking
            h, w = arrs[0].shape[1:]
            arrs = [F.interpolate(t[None].float(), size=(h, w), mode="bilinear", antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
                    for t in arrs]
        return torch.stack(arrs), None if lab is None else lab[a:b]
    return ImageSource(f"folder:{path}", len(files), read, classes)


def _torchvision(rest: str) -> ImageSource:
    parts = rest.split(":")
    if len(parts) < 2:
        raise ViscnnError("torchvision image sets are torchvision:NAME:ROOT[:train|test]")
    name, root = parts[0], parts[1]
    train = (parts[2] if len(parts) > 2 else "train") == "train"
    import torchvision.datasets as D

    from viscnn.data.images import to_uint8

    cls = getattr(D, name, None)
    if cls is None:
        raise ViscnnError(f"unknown torchvision dataset {name!r}")
    try:
        ds = cls(root, train=train, download=False)
    except Exception as e:
        raise ViscnnError(f"cannot open torchvision dataset {name} at {root} (never downloaded): {e}") from None

    def read(a, b):
        imgs, labs = [], []
        for k in range(a, b):
            im, lab = ds[k]
            imgs.append(torch.from_numpy(to_uint8(im, 3).copy()).permute(2, 0, 1))
            labs.append(int(lab))
        return torch.stack(imgs), np.array(labs, np.int64)
    return ImageSource(f"torchvision:{rest}", len(ds), read, list(getattr(ds, "classes", [])) or None)
