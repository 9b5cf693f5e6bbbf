"""Datasets as float tensors in [-1, 1], shape (C, H, W).

``digits`` (scikit-learn's 1797 bundled 8x8 digits, upsampled bilinearly) is the offline default:
it needs no download, so every test and quick-mode notebook runs on it.  The torchvision sets
download where there is network (Colab, Kaggle) and otherwise say where their files must go.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["as_tensor", "DATASETS", "TensorImageDataset", "load_dataset", "load_labelled", "to_uint8"]

DATASETS = ("digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "flowers102", "folder", "synthetic-lung-ct")
# Natural images get horizontal flips under augment=True; digits and letters must not be mirrored.
_FLIPPABLE = {"cifar10", "flowers102", "folder"}
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0


class TensorImageDataset(Dataset):
    """An in-memory image set: ``tensors`` (N, C, H, W) float in [-1, 1] and ``labels`` (N,)."""

    def __init__(self, tensors: torch.Tensor, labels: torch.Tensor | None = None, *,
                 flip: bool = False, name: str = "tensors") -> None:
        if tensors.ndim != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(tensors.shape)}")
        self.tensors = tensors
        self.labels = labels if labels is not None else torch.zeros(len(tensors), dtype=torch.long)
        self.flip = flip
        self.name = name

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.tensors[i]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.tensors.shape[1:])  # type: ignore[return-value]


class _Labelled(Dataset):
    """View of an image dataset that yields ``(image, label)`` pairs (for classifiers)."""

    def __init__(self, base: TensorImageDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i], self.base.labels[i]


def _digits(image_size: int, split: str) -> TensorImageDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # sklearn pixel range is 0..16
    y = torch.tensor(d.target, dtype=torch.long)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    n_test = round(len(x) * _DIGITS_TEST_FRACTION)
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    idx = idx.sort().values
    return TensorImageDataset(x[idx], y[idx], name="digits")


def _torchvision(name: str, image_size: int, split: str, root: Path, augment: bool, path: str | None,
                 labels: bool = False) -> Dataset:
    import torchvision
    from torchvision import transforms as T

    gray = name in ("mnist", "fashion-mnist")
    tf: list[Callable] = [T.Resize(image_size), T.CenterCrop(image_size)]
    if augment and name in _FLIPPABLE:
        tf.append(T.RandomHorizontalFlip())
    tf += [T.ToTensor(), T.Normalize([0.5] * (1 if gray else 3), [0.5] * (1 if gray else 3))]
    transform = T.Compose(tf)
    train = split == "train"
    if name == "folder":
        if path is None or not Path(path).is_dir():
            raise ValueError(f"dataset 'folder' needs path= an ImageFolder directory, got {path!r}")
        base = torchvision.datasets.ImageFolder(path, transform=transform)
        return base if labels else _DropLabel(base)
    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10, "flowers102": torchvision.datasets.Flowers102}[name]
    kwargs = {"split": "train" if train else "test"} if name == "flowers102" else {"train": train}
    try:
        base = cls(str(root), download=True, transform=transform, **kwargs)
    except Exception as exc:  # urllib errors, RuntimeError "Dataset not found", ...
        from lthdiff.errors import DatasetUnavailableError

        raise DatasetUnavailableError(
            f"dataset {name!r} is not in {root.resolve()} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Place torchvision's {cls.__name__} files under {root.resolve()} (as torchvision.datasets.{cls.__name__}"
            f"(root={str(root)!r}, download=True) would on a machine with network), or use name='digits' offline."
        ) from exc
    return base if labels else _DropLabel(base)  # torchvision sets already yield (image, label)


class _DropLabel(Dataset):
    """torchvision sets yield (image, label); the diffusion trainer wants images only."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.base[i][0]


def load_dataset(name: str = "digits", image_size: int = 16, split: str = "train", root: str | Path = "data",
                 augment: bool = False, *, path: str | None = None, labels: bool = False,
                 n: int | None = None) -> Dataset:
    """Load an image dataset as float tensors in [-1, 1] of shape (C, image_size, image_size).

    ``name`` is one of :data:`DATASETS` (``mnist5k``: 5000 real MNIST digits, offline, stratified
    4000/1000 split, image_size 28 or 32; ``mnist``: torchvision's full 60k/10k); ``split`` is ``"train"`` or ``"test"``; ``path`` is the
    ImageFolder root for ``name="folder"``.  With ``labels=True`` items are ``(image, label)``
    pairs, for the classifier experiments.  ``n``: number of slices of ``"synthetic-lung-ct"``
    (procedural, :mod:`lthdiff.data.lung_ct`; default 1024 train / 256 test).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; accepted: 'train', 'test'")
    if name == "mnist5k":  # offline real MNIST (lthdiff.data.mnist5k); checks image_size itself (28 or 32)
        from .mnist5k import load_mnist5k

        ds = TensorImageDataset(*load_mnist5k(image_size, split), name="mnist5k")
        return _Labelled(ds) if labels else ds
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size must be an int >= 4, got {image_size!r}")
    if name == "digits":
        ds = _digits(image_size, split)
        ds.flip = False  # digits are never mirrored, even with augment=True
        return _Labelled(ds) if labels else ds
    if name == "synthetic-lung-ct":
        from .lung_ct import NAME, load

        ds = TensorImageDataset(*load(image_size, split, root, n=n), name=NAME)
        return _Labelled(ds) if labels else ds
    return _torchvision(name, image_size, split, Path(root), augment, path, labels)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map float images in [-1, 1] to uint8 in [0, 255] (rounding, clamped)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def as_tensor(dataset: Dataset, limit: int | None = None) -> torch.Tensor:
    """All (or the first ``limit``) images of ``dataset`` stacked into one (N, C, H, W) tensor."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.tensors[:limit]
    n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    items = [dataset[i] for i in range(n)]
    return torch.stack([x[0] if isinstance(x, (tuple, list)) else x for x in items])


def load_labelled(name: str = "digits", image_size: int = 16, split: str = "train", root: str | Path = "data") -> Dataset:
    """A dataset of ``(image in [-1, 1], label)`` pairs for the classifier experiments.

    ``digits`` and ``mnist5k`` are in memory (offline); ``mnist``, ``fashion-mnist`` and ``cifar10`` come from
    torchvision (downloaded where there is network), with the same transforms as
    :func:`lthdiff.data.load_dataset`.
    """
    if name in ("digits", "mnist5k"):
        return load_dataset(name, image_size=image_size, split=split, root=root, labels=True)
    if name not in ("mnist", "fashion-mnist", "cifar10"):
        raise ValueError(f"unknown labelled dataset {name!r}; accepted: 'digits', 'mnist5k', 'mnist', 'fashion-mnist', 'cifar10'")
    images_only = load_dataset(name, image_size=image_size, split=split, root=root)
    # load_dataset(labels=True) refuses torchvision sets; its wrapper drops the label of `.base`.
    return images_only.base
