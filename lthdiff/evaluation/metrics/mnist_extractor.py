"""The offline feature extractor "lthdiff-mnist": a small CNN MNIST classifier for FID/KID/PRC.

The MNIST counterpart of ``lthdiff-digits`` (:mod:`.extractor`): the penultimate layer (128 dims)
of a classifier trained on the mnist5k train split (4000 real digits, 28x28), the MNIST-FID
practice of using a domain classifier's features instead of Inception-v3 (Heusel et al. 2017),
which would need ~100 MB of weights from the internet and sees 28 px digits upsampled 10x.
Weights (~0.5 MB) ship in the package, one copy (``lthdiff/metrics/mnist_extractor.safetensors``).
Inputs of 32x32 (mnist5k/MNIST zero-padded to 32) are center-cropped back to 28x28, other sizes
resized.  Train with ``python -m lthdiff.evaluation.metrics.mnist_extractor``; deterministic (seed, 1 thread).
Scores from different extractors are not comparable; every result names its extractor.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .extractor import NetFeatureExtractor, gray_input, register_extractor

__all__ = ["NAME", "FEATURES", "IMAGE_SIZE", "DATASETS", "MnistNet", "MnistFeatureExtractor", "weights_path",
           "load_net", "to_input", "register", "train", "main"]

NAME = "lthdiff-mnist"
FEATURES = "128"  # penultimate layer: the features FID/KID/PRC use
IMAGE_SIZE = 28
DATASETS = ("mnist5k", "mnist")  # the grayscale references this extractor fits ("auto" picks it for them)
_WEIGHTS = Path(__file__).resolve().parent / "mnist_extractor.safetensors"


class MnistNet(nn.Module):
    """3 conv (32, 64, 64; each + 2x2 max-pool) + 2 linear layers on 1x28x28 images in [-1, 1]."""

    def __init__(self, features: int = int(FEATURES), classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 3 * 3, features)
        self.fc2 = nn.Linear(features, classes)
        # Unit mean-square features on the train split, as lthdiff-digits: KID's cubic kernel is scale-sensitive.
        self.register_buffer("scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, 128) of float images (N, 1, 28, 28) in [-1, 1]."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 7
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 3
        return F.relu(self.fc1(x.flatten(1))) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x) / self.scale)


def weights_path() -> Path:
    """The packaged weights file."""
    if not _WEIGHTS.exists():
        raise FileNotFoundError(f"{NAME} weights not found at {_WEIGHTS}; recreate them with "
                                "`python -m lthdiff.evaluation.metrics.mnist_extractor`")
    return _WEIGHTS


def load_net(path: str | Path | None = None) -> MnistNet:
    """A :class:`MnistNet` with the packaged (or given) weights, in eval mode."""
    from lthdiff.store.io import load_tensors

    state, _ = load_tensors(path if path is not None else weights_path())
    net = MnistNet(features=state["fc1.weight"].shape[0])
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 1 or 3, H, W) -> float (N, 1, 28, 28) in [-1, 1].

    RGB goes to luma; 32x32 is center-cropped (undoing mnist5k's 2 px zero padding, no resampling);
    any other size is resized bilinearly (antialiased).
    """
    return gray_input(x, IMAGE_SIZE, NAME, crop_from=32)


class MnistFeatureExtractor(NetFeatureExtractor):
    """torch-fidelity wrapper of :class:`MnistNet`: features ``"128"`` (penultimate) and ``"logits"``."""

    FEATURES = FEATURES
    IMAGE_SIZE = IMAGE_SIZE
    load_net = staticmethod(load_net)
    to_input = staticmethod(to_input)


def register() -> str:
    """Register :class:`MnistFeatureExtractor` with torch-fidelity as ``"lthdiff-mnist"``; idempotent
    (a re-run notebook cell or a reloaded module replaces its own stale class, never a foreign one)."""
    return register_extractor(NAME, MnistFeatureExtractor)


# --------------------------------------------------------------------------- training
def train(epochs: int = 30, *, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
          progress: bool = True) -> tuple[MnistNet, dict]:
    """Train :class:`MnistNet` on mnist5k/train (28 px, +-2 px shifts); return the net and a summary
    (train/test accuracy on mnist5k, seconds).  One CPU thread: bit-identical weights on every run."""
    from .train_extractor import fit

    return fit(MnistNet, "mnist5k", IMAGE_SIZE, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
               max_shift=2, desc="train mnist extractor", progress=progress)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.evaluation.metrics.mnist_extractor",
                                 description="Train the lthdiff-mnist feature extractor on mnist5k/train.")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=_WEIGHTS, help="weights file (default: the packaged copy)")
    args = ap.parse_args(argv)
    from lthdiff.store.io import save_tensors

    net, summary = train(args.epochs, seed=args.seed)
    meta = {**{k: v for k, v in summary.items() if k != "seconds"}, "architecture": "MnistNet",
            "features": "penultimate fc1 (128, post-ReLU, times scale: unit mean square on train)",
            "dataset": "mnist5k", "image_size": IMAGE_SIZE}
    save_tensors(args.out, net.state_dict(), meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")
    print(f"test accuracy {summary['test_accuracy']:.4f} ({summary['n_test']} images), "
          f"train accuracy {summary['train_accuracy']:.4f}, {summary['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
