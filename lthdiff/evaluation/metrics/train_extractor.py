"""Train the offline "lthdiff-digits" feature extractor: ``python -m lthdiff.evaluation.metrics.train_extractor``.

Deterministic (fixed seed, one CPU thread), well under a minute on a laptop CPU.  Trains
:class:`~lthdiff.evaluation.metrics.extractor.DigitsNet` on the digits train split (16x16) with +-1 pixel
shifts, reports accuracy on the test split and writes the weights to ``data/`` and to the package
(the copy ``pip install`` ships).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lthdiff.runtime import progress_bar
from .extractor import PACKAGE_WEIGHTS, IMAGE_SIZE, DigitsNet

__all__ = ["fit", "train", "accuracy", "shift", "main"]


def shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (background -1 fills the border)."""
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=g)).tolist()
    return torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``net`` on float images ``x`` in [-1, 1] with labels ``y``."""
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def fit(make_net: Callable[[], nn.Module], dataset: str, image_size: int, *, epochs: int, seed: int = 0,
        batch_size: int = 64, lr: float = 2e-3, max_shift: int = 1, desc: str = "train extractor",
        progress: bool = True) -> tuple[nn.Module, dict]:
    """Train a digit classifier (``make_net()``, built after seeding) on ``dataset``/train at
    ``image_size`` px: AdamW + one-cycle LR, random shifts of up to ``max_shift`` px, cross-entropy.

    Then sets the net's ``scale`` buffer so its features have unit mean square on the train split.
    Returns the net (eval mode) and a summary (train/test accuracy, sizes, seconds).  One CPU thread:
    bit-identical weights on every run.
    """
    from lthdiff.data.datasets import load_dataset

    tr = load_dataset(dataset, image_size=image_size, split="train")
    te = load_dataset(dataset, image_size=image_size, split="test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-identical weights on every run
    t0 = time.perf_counter()
    try:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        net = make_net()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = -(-len(tr.tensors) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        for _ in progress_bar(range(epochs), desc=desc, disable=not progress, leave=False):
            net.train()
            perm = torch.randperm(len(tr.tensors), generator=g)
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(net(shift(tr.tensors[idx], g, max_shift=max_shift)), tr.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            net.scale.fill_(1.0 / net.features(tr.tensors).pow(2).mean().sqrt())
        summary = {"train_accuracy": accuracy(net, tr.tensors, tr.labels),
                   "test_accuracy": accuracy(net, te.tensors, te.labels),
                   "n_train": len(tr.tensors), "n_test": len(te.tensors), "epochs": epochs, "seed": seed,
                   "batch_size": batch_size, "lr": lr, "seconds": time.perf_counter() - t0,
                   "params": sum(p.numel() for p in net.parameters())}
    finally:
        torch.set_num_threads(threads)
    return net, summary


def train(epochs: int = 20, *, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
          progress: bool = True) -> tuple[DigitsNet, dict]:
    """Train :class:`DigitsNet` on digits/train; return the net and a summary (accuracies, seconds)."""
    return fit(DigitsNet, "digits", IMAGE_SIZE, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
               max_shift=1, desc="train digits extractor", progress=progress)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.evaluation.metrics.train_extractor", description=__doc__)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, nargs="*", default=[PACKAGE_WEIGHTS],
                    help="weights files to write (default: the package copy)")
    args = ap.parse_args(argv)
    from lthdiff.store.io import save_tensors

    net, summary = train(args.epochs, seed=args.seed)
    meta = {**{k: v for k, v in summary.items() if k != "seconds"}, "architecture": "DigitsNet",
            "features": "penultimate fc1 (64, post-ReLU, times scale: unit mean square on train)",
            "image_size": IMAGE_SIZE}
    for path in args.out:
        save_tensors(path, net.state_dict(), meta)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    print(f"test accuracy {summary['test_accuracy']:.4f} ({summary['n_test']} images), "
          f"train accuracy {summary['train_accuracy']:.4f}, {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
