"""Train the default model (:func:`viscnn.zoo.fmnist.fmnist_cnn`) on Fashion-MNIST, on the CPU.

    python -m viscnn.zoo.train_fmnist --out prepped_models/fmnist/weights.pt

Seeded and deterministic (same seed, threads and torch build -> same weights), so the committed
weights can be regenerated. Prints each epoch's training time and test accuracy; the state_dict
is written atomically.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from viscnn.data.fashion_mnist import FMNIST_MEAN, FMNIST_STD, load_fashion_mnist
from viscnn.errors import ViscnnError
from viscnn.io import atomic_write_bytes
from viscnn.zoo.fmnist import fmnist_cnn


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalised float32 [N, 1, 28, 28] (the model's input convention)."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return x.sub_(FMNIST_MEAN).div_(FMNIST_STD)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 0) -> torch.Tensor:
    """Random horizontal flips, and random shifts of up to ``pad`` pixels (one shift per batch, cheap)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad:
        bg = -FMNIST_MEAN / FMNIST_STD  # a black pixel after normalisation
        xp = F.pad(x, (pad, pad, pad, pad), value=bg)
        dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
        x = xp[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return x.contiguous()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def train(epochs: int = 8, batch_size: int = 128, lr: float = 0.05, seed: int = 0, threads: int = 1,
          augment_data: bool = True, shift: int = 0, limit: Optional[int] = None, log=None,
          device: str = "cpu") -> tuple:
    """Train from scratch; returns ``(model, test_accuracy, epoch_seconds list)``.

    ``limit`` uses only the first ``limit`` training and test images (smoke tests). ``device``
    "cuda" trains there (benchmarks/prep.py's reference epoch on a GPU); the committed weights
    are trained on the CPU, and only there is the run bit-reproducible.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ViscnnError(f"device {device!r} but CUDA is not available")
    log = log or (lambda msg: print(msg, flush=True))
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
            torch.manual_seed(seed)
            return _train(epochs, batch_size, lr, seed, threads, augment_data, shift, limit, log, torch.device(device))
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _train(epochs, batch_size, lr, seed, threads, augment_data, shift, limit, log, device) -> tuple:
    gen = torch.Generator().manual_seed(seed)

    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    if limit is not None:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]
    xt, yt = to_tensor(x_train), torch.from_numpy(y_train)
    xv, yv = to_tensor(x_test).to(device), torch.from_numpy(y_test).to(device)

    model = fmnist_cnn().to(device)
    steps_per_epoch = (len(xt) + batch_size - 1) // batch_size
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr * 2, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                                pct_start=0.25)
    times = []
    acc = 0.0
    for ep in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = xt[idx], yt[idx]
            if augment_data:
                xb = augment(xb, gen, shift)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)   # no per-step sync with the device
            n += len(idx)
        total = float(total)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        acc = accuracy(model, xv, yv)
        log(f"epoch {ep + 1}/{epochs}: train loss {total / n:.4f}, epoch time {dt:.1f} s "
            f"({threads} threads), test accuracy {acc:.4f}")
    model.eval()
    return model, acc, times


def save_state_dict(model: torch.nn.Module, path) -> None:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m viscnn.zoo.train_fmnist", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where to write the state_dict (e.g. prepped_models/fmnist/weights.pt)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a busy 2-core machine, 2 OpenMP threads ran 3x slower "
                        "than 1; the weights depend on it only through float rounding)")
    p.add_argument("--no-augment", action="store_true", help="train without random horizontal flips")
    p.add_argument("--shift", type=int, default=0, help="also shift each batch randomly by up to this many pixels")
    p.add_argument("--limit", type=int, help="use only the first N training and test images (smoke tests)")
    p.add_argument("--min-accuracy", type=float, default=0.90, help="exit 1 (and write nothing) below this test accuracy")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.batch_size < 1 or a.threads < 1 or a.lr <= 0 or a.shift < 0 or (a.limit is not None and a.limit < 1):
        p.error("--epochs, --batch-size, --threads, --lr and --limit must be positive, --shift >= 0")
    try:
        t0 = time.perf_counter()
        model, acc, times = train(a.epochs, a.batch_size, a.lr, a.seed, a.threads, not a.no_augment, a.shift, a.limit)
    except ViscnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"one training epoch: {np.median(times):.1f} s (median of {len(times)}; {a.threads} threads); "
          f"total {time.perf_counter() - t0:.1f} s; final test accuracy {acc:.4f}")
    if acc < a.min_accuracy:
        print(f"error: test accuracy {acc:.4f} is below --min-accuracy {a.min_accuracy}; not writing {a.out}",
              file=sys.stderr)
        return 1
    save_state_dict(model, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
