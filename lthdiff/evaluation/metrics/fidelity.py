"""Sample quality: FID, KID and precision/recall through torch-fidelity's ``calculate_metrics``.

FID (Heusel et al. 2017), KID (Binkowski et al. 2018, unbiased MMD^2 with a cubic polynomial kernel)
and improved precision/recall (Kynkaanniemi et al. 2019, k=3 nearest neighbours) between generated
images (``input1``) and a reference set (``input2``).  Features come from Inception-v3
(``"inception"``, torch-fidelity's TF-compatible port) or, offline, from the digits classifier
``"lthdiff-digits"`` (:mod:`lthdiff.evaluation.metrics.extractor`); ``"auto"`` picks Inception when its weights
are reachable.  Reference features/statistics are cached by torch-fidelity under ``cache_dir`` with
a key naming the dataset, split, image size, number of images, extractor (and its weights) and a
fingerprint of the first images, so a changed reference never reuses stale statistics.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

__all__ = ["QualityResult", "evaluate", "fid", "kid", "reference_key", "resolve_extractor",
           "inception_available", "EXTRACTORS", "METRICS"]

INCEPTION = "inception-v3-compat"
EXTRACTORS = ("auto", "inception", "lthdiff-digits", "lthdiff-mnist")  # plus any name in torch-fidelity's registry
METRICS = ("fid", "kid", "prc")
_KEYS = {"frechet_inception_distance": "fid", "kernel_inception_distance_mean": "kid",
         "kernel_inception_distance_std": "kid_std", "precision": "precision", "recall": "recall",
         "f_score": "f_score"}
_FINGERPRINT_IMAGES = 16


@dataclass
class QualityResult:
    """Metric values plus everything needed to reproduce them.

    ``metrics`` holds ``fid``, ``kid``/``kid_std``, ``precision``/``recall``/``f_score`` (those computed).
    ``float(result)`` is the FID (or the first metric computed), so ``float(fid(...))`` works.
    """

    metrics: dict[str, float]
    n: int
    extractor: str
    reference: str
    n_reference: int
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    cache_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __float__(self) -> float:
        return float(next(iter(self.metrics.values())))

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]

    @property
    def fid(self) -> float | None:
        return self.metrics.get("fid")

    @property
    def kid(self) -> float | None:
        return self.metrics.get("kid")


# --------------------------------------------------------------------------- extractor choice
def _inception_file() -> Path:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


@lru_cache(maxsize=1)
def online(host: str = "github.com", port: int = 443, timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def inception_available(weights_path: str | os.PathLike | None = None) -> bool:
    """Whether Inception-v3 weights can be had without hanging: a given/env path, the torch hub
    cache, or (unless ``LTHDIFF_OFFLINE`` is set) a 2 s connection test to github.com."""
    path = weights_path or os.environ.get("LTHDIFF_INCEPTION_WEIGHTS")
    if path:
        return Path(path).exists()
    if _inception_file().exists():
        return True
    if os.environ.get("LTHDIFF_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        return False
    return online()


def resolve_extractor(name: str, channels: int, weights_path: str | os.PathLike | None = None,
                      reference: Any = None) -> str:
    """The torch-fidelity extractor name for ``name`` ("auto", "inception", "lthdiff-digits" or registered).

    ``"auto"``: Inception when :func:`inception_available`, else ``"lthdiff-digits"`` for 1-channel
    images; 3-channel images without Inception weights raise ``RuntimeError`` saying where to put them.
    1-channel images against a real-MNIST ``reference`` name ("mnist5k", "mnist") always get the
    domain extractor ``"lthdiff-mnist"``, online or not, so their scores do not depend on the network.
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from .extractor import NAME, register

    register()
    from . import mnist_extractor

    mnist_extractor.register()
    if name == "auto" and channels == 1 and isinstance(reference, str) and reference in mnist_extractor.DATASETS:
        return mnist_extractor.NAME
    if name == "auto":
        if inception_available(weights_path):
            return INCEPTION
        if channels == 1:
            return NAME
        raise RuntimeError(
            f"no feature extractor for {channels}-channel images offline: Inception-v3 weights are not in "
            f"{_inception_file()} and cannot be downloaded. Copy torch-fidelity's "
            f"{_inception_file().name} there, or pass feature_extractor_weights_path= (or set "
            "LTHDIFF_INCEPTION_WEIGHTS); 'lthdiff-digits' only fits grayscale digit-like images")
    if name == "inception":
        name = INCEPTION
    if name == INCEPTION and not inception_available(weights_path):
        raise RuntimeError(f"Inception-v3 weights are not in {_inception_file()} and cannot be downloaded here; "
                           "pass feature_extractor_weights_path= (or set LTHDIFF_INCEPTION_WEIGHTS), or use "
                           "feature_extractor='lthdiff-digits' for digit-like images")
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"unknown feature_extractor {name!r}; accepted: {', '.join(EXTRACTORS)} or one of "
                         f"torch-fidelity's {sorted(FEATURE_EXTRACTORS_REGISTRY)}")
    return name


def _extractor_tag(extractor: str, weights_path: str | os.PathLike | None) -> str:
    """Extractor name plus a weights digest (ours always; others only for a custom weights file)."""
    from .extractor import NAME, weights_digest

    from . import mnist_extractor

    if extractor == NAME:
        return f"{NAME}@{weights_digest(weights_path)}"
    if extractor == mnist_extractor.NAME:
        return f"{extractor}@{weights_digest(weights_path or mnist_extractor.weights_path())}"
    if weights_path:
        return f"{extractor}@{hashlib.sha256(str(Path(weights_path).resolve()).encode()).hexdigest()[:8]}"
    return extractor


# --------------------------------------------------------------------------- inputs
def _as_uint8(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"{what} must be images of shape (N, C, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.cpu()
    if x.is_floating_point():  # lthdiff's convention for float images: [-1, 1]
        from lthdiff.data.datasets import to_uint8

        return to_uint8(x.detach().float().cpu())
    raise ValueError(f"{what} must be uint8 in [0, 255] or float in [-1, 1], got dtype {x.dtype}")


class _Images(Dataset):
    """uint8 images for torch-fidelity from a tensor or a float [-1, 1] dataset, lazily converted
    (a reference whose statistics are cached is never read); grayscale repeated for RGB extractors."""

    def __init__(self, source: torch.Tensor | Dataset, indices: Sequence[int] | None = None,
                 rgb: bool = False) -> None:
        self.source, self.rgb = source, rgb
        self.indices = list(range(len(source))) if indices is None else list(indices)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 with its own channels."""
        x = self.source[self.indices[i]]
        if isinstance(x, (tuple, list)):  # (image, label) datasets
            x = x[0]
        return x if x.dtype == torch.uint8 else _as_uint8(x[None], "reference")[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.raw(i)
        return x.expand(3, -1, -1).contiguous() if self.rgb and x.shape[0] == 1 else x


def reference_key(dataset: str, split: str, image_size: int, extractor: str, n: int,
                  fingerprint: str = "") -> str:
    """Cache key (a file-name prefix) of a reference set's features/statistics.

    Every argument that changes the statistics is in the key: dataset, split, image size, extractor
    (with weights digest), number of images and a fingerprint of the reference content.
    """
    safe = lambda s: "".join(c if c.isalnum() or c in "-_.@" else "_" for c in str(s))  # noqa: E731
    parts = ["lthdiff", safe(dataset), safe(split), f"{int(image_size)}px", f"n{int(n)}", safe(extractor)]
    return "-".join(parts + ([safe(fingerprint)] if fingerprint else []))


def _fingerprint(images: _Images, k: int = _FINGERPRINT_IMAGES) -> str:
    h = hashlib.sha256()
    for i in range(min(k, len(images))):
        h.update(images.raw(i).numpy().tobytes())
    return h.hexdigest()[:10]


def _subset(n_all: int, n: int | None) -> torch.Tensor | None:
    """Indices of a random ``n``-image subset (sorted), the same for every call: a fixed seed (not the
    evaluation seed) keeps a cached reference valid; None for all images.  Dataset order is never
    trusted (mnist5k's source is sorted by class, so its first images are one digit)."""
    if n is None or int(n) >= n_all:
        return None
    return torch.randperm(n_all, generator=torch.Generator().manual_seed(0))[: int(n)].sort().values


def _image(item: Any) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _reference(reference: Any, *, image_size: int, split: str, reference_n: int | None, root: str | os.PathLike,
               path: str | None, extractor_tag: str, rgb: bool) -> tuple[_Images, str, str]:
    """(images, description, cache key) for a dataset name, a tensor or a float dataset."""
    if isinstance(reference, str):
        from lthdiff.data.datasets import load_dataset

        ds = load_dataset(reference, image_size=image_size, split=split, root=root, path=path)
        n_all = len(ds)  # type: ignore[arg-type]
        n_ref = n_all if reference_n is None else min(int(reference_n), n_all)
        idx = _subset(n_all, n_ref)
        images = _Images(ds, None if idx is None else idx.tolist(), rgb=rgb)
        name = reference if path is None else f"{reference}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
        key = reference_key(name, split, image_size, extractor_tag, n_ref, _fingerprint(images))
        return images, f"{reference}/{split}/{image_size}px", key
    if isinstance(reference, Dataset) and not isinstance(reference, torch.Tensor):
        from lthdiff.data.datasets import as_tensor

        n_all = len(reference)  # type: ignore[arg-type]
        idx = _subset(n_all, reference_n)
        reference = as_tensor(reference) if idx is None else torch.stack([_image(reference[i]) for i in idx.tolist()])
    elif isinstance(reference, torch.Tensor):
        idx = _subset(len(reference), reference_n)
        reference = reference if idx is None else reference[idx]
    if not isinstance(reference, torch.Tensor):
        raise ValueError(f"reference must be a dataset name, a uint8 tensor (N, C, H, W) or a Dataset, "
                         f"got {type(reference).__name__}")
    x = _as_uint8(reference, "reference")
    digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]
    key = reference_key("tensor", digest, x.shape[-1], extractor_tag, len(x))
    return _Images(x, rgb=rgb), f"tensor:{digest}", key


# --------------------------------------------------------------------------- metrics
def evaluate(
    unet_or_images: nn.Module | torch.Tensor,
    reference: str | torch.Tensor | Dataset = "digits",
    *,
    metrics: Sequence[str] = METRICS,
    n: int | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    feature_extractor: str = "auto",
    feature_extractor_weights_path: str | os.PathLike | None = None,
    image_size: int | None = None,
    split: str = "train",
    reference_n: int | None = None,
    data_root: str | os.PathLike = "data",
    data_path: str | None = None,
    cache_dir: str | os.PathLike | None = "runs/fid_cache",
    cuda: bool | None = None,
    batch_size: int = 256,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    progress: bool = True,
) -> QualityResult:
    """FID / KID / precision-recall of generated images against a reference set, in one pass.

    ``unet_or_images``: a UNet (``n`` images are sampled with :func:`lthdiff.evaluation.sampling.sample`,
    ``sampler``/``steps``/``seed``, default ``n=1000``) or images (N, C, H, W) as uint8 [0, 255]
    or float [-1, 1].  ``reference``: a dataset name for :func:`lthdiff.data.load_dataset`
    (``split``, ``image_size`` = the images' size), a Dataset, or images; ``reference_n``: a random
    subset of that many reference images (seeded, the same every call; default all), never the first n.
    ``metrics``: subset of ``("fid", "kid", "prc")``.  ``seed`` also seeds KID's random subsets, so
    the same seed gives the same scores.  KID subsets have ``min(kid_subset_size, N, N_ref)`` images.
    ``cache_dir=None`` disables the reference cache.  ``cuda=None``: use the GPU when available.
    """
    from torch_fidelity import calculate_metrics

    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metrics {bad or list(metrics)!r}; accepted: {', '.join(METRICS)}")
    cuda = torch.cuda.is_available() if cuda is None else bool(cuda)
    if cuda and not torch.cuda.is_available():
        raise ValueError("cuda=True but no CUDA device is available; pass cuda=False or None")
    sampled = isinstance(unet_or_images, nn.Module)
    # A bad extractor name fails before minutes of sampling, not after.
    in_channels = getattr(getattr(unet_or_images, "config", None), "in_channels", None) if sampled else None
    extractor = None if in_channels is None else resolve_extractor(
        feature_extractor, in_channels, feature_extractor_weights_path, reference)
    if sampled:
        from lthdiff.evaluation.sampling import sample

        n = 1000 if n is None else n
        images = sample(unet_or_images, n, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                        progress=progress)
    elif isinstance(unet_or_images, torch.Tensor):
        images = _as_uint8(unet_or_images, "images")
        if n is not None:
            if n > len(images):
                raise ValueError(f"n={n} but only {len(images)} images were given")
            images = images[:n]
    else:
        raise ValueError(f"unet_or_images must be a UNet (nn.Module) or an image tensor (N, C, H, W), "
                         f"got {type(unet_or_images).__name__}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 images for FID/KID, got {len(images)}")
    size = images.shape[-1]
    if image_size is not None and image_size != size:
        raise ValueError(f"image_size={image_size} but the images are {size}x{images.shape[-2]}")

    if extractor is None or images.shape[1] != in_channels:
        extractor = resolve_extractor(feature_extractor, images.shape[1], feature_extractor_weights_path, reference)
    from .extractor import NAME
    from .mnist_extractor import NAME as MNIST_NAME

    rgb = extractor not in (NAME, MNIST_NAME)  # every other extractor (Inception, CLIP, DINOv2...) wants 3 channels
    weights = feature_extractor_weights_path or (os.environ.get("LTHDIFF_INCEPTION_WEIGHTS") if extractor == INCEPTION
                                                 else None)
    ref, ref_desc, key = _reference(reference, image_size=size, split=split, reference_n=reference_n, root=data_root,
                                    path=data_path, extractor_tag=_extractor_tag(extractor, weights), rgb=rgb)
    first = ref.raw(0)
    if first.shape != images.shape[1:]:
        raise ValueError(f"generated images {tuple(images.shape[1:])} and reference {ref_desc} "
                         f"{tuple(first.shape)} differ in shape")

    kwargs: dict[str, Any] = dict(
        input1=_Images(images, rgb=rgb), input2=ref, cuda=cuda, batch_size=batch_size,
        fid="fid" in metrics, kid="kid" in metrics, prc="prc" in metrics,
        feature_extractor=extractor, rng_seed=seed, verbose=False,
        kid_subset_size=min(kid_subset_size, len(images), len(ref)), kid_subsets=kid_subsets,
        save_cpu_ram=True,  # in-memory images: DataLoader worker processes only cost start-up time
        cache=cache_dir is not None, input2_cache_name=key if cache_dir is not None else None,
    )
    if cache_dir is not None:
        kwargs["cache_root"] = str(cache_dir)
    if weights:
        kwargs["feature_extractor_weights_path"] = str(weights)
    raw = calculate_metrics(**kwargs)
    values = {_KEYS[k]: float(v) for k, v in raw.items() if k in _KEYS}
    return QualityResult(metrics=values, n=len(images), extractor=extractor, reference=ref_desc,
                         n_reference=len(ref), sampler=sampler if sampled else None,
                         steps=steps if sampled else None, seed=seed,
                         cache_key=key if cache_dir is not None else None)


def fid(unet_or_images: nn.Module | torch.Tensor, reference: str | torch.Tensor | Dataset = "digits",
        **kwargs: Any) -> QualityResult:
    """Frechet distance between Gaussian fits of extractor features (Heusel et al. 2017).

    Same arguments as :func:`evaluate` (``n``, ``sampler="ddim"``, ``steps=50``, ``seed=0``,
    ``feature_extractor="auto"``, ``cache_dir="runs/fid_cache"``, ``cuda=None``...).
    """
    return evaluate(unet_or_images, reference, metrics=("fid",), **kwargs)


def kid(unet_or_images: nn.Module | torch.Tensor, reference: str | torch.Tensor | Dataset = "digits",
        **kwargs: Any) -> QualityResult:
    """Kernel distance: unbiased MMD^2, cubic polynomial kernel, mean/std over random subsets
    (Binkowski et al. 2018).  Same arguments as :func:`evaluate`."""
    return evaluate(unet_or_images, reference, metrics=("kid",), **kwargs)
