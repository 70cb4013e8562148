"""Train :func:`viscnn.zoo.resnet_pad.resnet_pad` on Fashion-MNIST at 28x28 or 29x29, on the CPU.

    python -m viscnn.zoo.train_resnet_pad --size 28 --out prepped_models/fmnist_pad28
    python -m viscnn.zoo.train_resnet_pad --size 29 --out prepped_models/fmnist_pad29

The padding experiment of issue 13 (Alsallakh et al., Fig. 6): at 28 the stride-2 convs never read
their bottom/right padding, at 29 they read it on all sides. Writes ``DIR/weights.pt`` (state_dict)
and ``DIR/train.json`` (test accuracy, epochs, images, seconds, seed, ...).

How 29x29 images are made (``--fit``, default ``resize``): the 28x28 uint8 image is scaled to
[0, 1], resized to 29x29 with ``F.interpolate(mode="bilinear", align_corners=False,
antialias=True)`` and then normalised -- exactly what ``viscnn prep`` (``PrepDataset.to_unit``),
the app and every ``--images fmnist:...`` image set do when a model's input size differs from the
image's. The model is therefore trained on the very inputs the tools later feed it (prep scores,
exemplars, ``viscnn artifacts`` mean patches). Padding by one background (black) row at the bottom
and one column at the right (``--fit pad``) would keep the content pixel-identical, the cleaner
comparison, but the tools would then feed the model resized images it was not trained on; for
the padding question the two are equivalent in what matters (the even/odd map sizes, and a black
border much darker than the conv's zero padding, which is the dataset mean after normalisation),
so the shipped models use ``resize``.

Seeded and deterministic (same seed, threads, torch build -> same weights). Uses the first
``--limit`` training images (default 30000, 3 epochs) and the whole 10k test set (``--test-limit``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from viscnn.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from viscnn.errors import ViscnnError
from viscnn.io import atomic_write_text
from viscnn.zoo.resnet_pad import resnet_pad
from viscnn.zoo.train_fmnist import accuracy, augment, save_state_dict

SIZES = (28, 29)


def to_tensor(images: np.ndarray, size: int, fit: str = "resize") -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float32 [N, 1, size, size] (see the module docstring)."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    if size != x.shape[-1]:
        if fit == "pad":  # background (black, 0) row at the bottom and column at the right
            x = F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]), value=0.0)
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.sub_(FMNIST_MEAN).div_(FMNIST_STD).contiguous()


def train(size: int = 28, epochs: int = 3, limit: Optional[int] = 30000, test_limit: Optional[int] = None,
          batch_size: int = 128, lr: float = 0.05, seed: int = 0, threads: int = 1, fit: str = "resize", log=None):
    """Train from scratch; returns ``(model, test_accuracy, epoch_seconds, n_train, n_test)``."""
    log = log or (lambda msg: print(msg, flush=True))
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            x_train, y_train = load_fashion_mnist("train")
            x_test, y_test = load_fashion_mnist("test")
            if limit:
                x_train, y_train = x_train[:limit], y_train[:limit]
            if test_limit:
                x_test, y_test = x_test[:test_limit], y_test[:test_limit]
            xt, yt = to_tensor(x_train, size, fit), torch.from_numpy(y_train)
            xv, yv = to_tensor(x_test, size, fit), torch.from_numpy(y_test)
            model = resnet_pad()
            steps = (len(xt) + batch_size - 1) // batch_size
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr * 2, epochs=epochs, steps_per_epoch=steps,
                                                        pct_start=0.25)
            times, acc = [], 0.0
            for ep in range(epochs):
                model.train()
                t0 = time.perf_counter()
                perm = torch.randperm(len(xt), generator=gen)
                total, n = 0.0, 0
                for i in range(0, len(xt), batch_size):
                    idx = perm[i:i + batch_size]
                    xb = augment(xt[idx], gen)  # random horizontal flips only (no shifts: they would move the border)
                    loss = F.cross_entropy(model(xb), yt[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                    n += len(idx)
                times.append(time.perf_counter() - t0)
                acc = accuracy(model, xv, yv)
                log(f"[{size}x{size}] epoch {ep + 1}/{epochs}: train loss {total / n:.4f}, {times[-1]:.1f} s, "
                    f"test accuracy {acc:.4f} ({len(xv)} images)")
            model.eval()
            return model, acc, times, len(xt), len(xv)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m viscnn.zoo.train_resnet_pad", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, required=True, choices=SIZES, help="input size (28 or 29)")
    p.add_argument("--out", required=True, help="folder for weights.pt and train.json")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=30000, help="use the first N training images (0 = all 60000)")
    p.add_argument("--test-limit", type=int, default=0, help="use the first N test images (0 = all 10000)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fit", choices=("resize", "pad"), default="resize", help="how 28x28 images become 29x29")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.batch_size < 1 or a.threads < 1 or a.lr <= 0 or a.limit < 0 or a.test_limit < 0:
        p.error("--epochs, --batch-size, --threads and --lr must be positive, --limit and --test-limit >= 0")
    try:
        t0 = time.perf_counter()
        model, acc, times, n_train, n_test = train(a.size, a.epochs, a.limit or None, a.test_limit or None,
                                                   a.batch_size, a.lr, a.seed, a.threads, a.fit)
        seconds = time.perf_counter() - t0
    except ViscnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(model, out / "weights.pt")
    info = {"model": "viscnn.zoo.resnet_pad:resnet_pad", "input_size": [a.size, a.size], "fit": a.fit,
            "test_accuracy": round(acc, 4), "test_images": n_test, "epochs": a.epochs, "images": n_train,
            "batch_size": a.batch_size, "lr": a.lr, "seconds": round(seconds, 1),
            "epoch_seconds": [round(t, 1) for t in times], "threads": a.threads, "seed": a.seed,
            "torch": torch.__version__}
    atomic_write_text(out / "train.json", json.dumps(info, indent=1) + "\n")
    print(f"total {seconds:.1f} s; test accuracy {acc:.4f}; wrote {out / 'weights.pt'} and {out / 'train.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
