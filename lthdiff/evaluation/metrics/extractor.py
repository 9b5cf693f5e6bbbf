"""The offline feature extractor "lthdiff-digits": a small CNN digit classifier for FID/KID/PRC.

Inception-v3 (Heusel et al. 2017) needs ~100 MB of weights from the internet and sees 16x16 digits
upsampled 19x; for the embedded digits set we instead use the penultimate layer (64 dims) of a
classifier trained on the digits train split, the MNIST-FID practice of using a domain classifier's
features.  Weights (~200 KB) live in the repository (``data/``) and ship with the package.
Scores from different extractors are not comparable; every result names its extractor.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

__all__ = ["NAME", "FEATURES", "IMAGE_SIZE", "DigitsNet", "DigitsFeatureExtractor", "weights_path",
           "weights_digest", "load_net", "register", "gray_input", "NetFeatureExtractor", "register_extractor"]

NAME = "lthdiff-digits"
FEATURES = "64"  # penultimate layer: the features FID/KID/PRC use
IMAGE_SIZE = 16
_FILE = "digits_extractor.safetensors"
# One copy, inside the package, so a checkout and an installed wheel score with the same bytes
# (the same extractor tag).
PACKAGE_WEIGHTS = Path(__file__).resolve().parent / _FILE


class DigitsNet(nn.Module):
    """3 conv + 2 linear layers on 1x16x16 images in [-1, 1]; 47.5k parameters, 99% digits test accuracy."""

    def __init__(self, features: int = int(FEATURES), classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, features)
        self.fc2 = nn.Linear(features, classes)
        # Set after training so features have unit mean square on the train split: KID's cubic
        # kernel (x.y/d + 1)^3 is scale-sensitive, and this puts it in Inception's regime.
        self.register_buffer("scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, 64) of float images (N, 1, 16, 16) in [-1, 1]."""
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc1(x.flatten(1))) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x) / self.scale)


def weights_path() -> Path:
    """The committed weights, shipped inside the package."""
    if PACKAGE_WEIGHTS.exists():
        return PACKAGE_WEIGHTS
    raise FileNotFoundError(f"digits extractor weights not found at {PACKAGE_WEIGHTS}; "
                            "recreate them with `python -m lthdiff.evaluation.metrics.train_extractor`")


@lru_cache(maxsize=8)
def _digest(path: str, mtime: float) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def weights_digest(path: str | Path | None = None) -> str:
    """Short SHA-256 of a weights file, so cached reference statistics change with the weights."""
    p = Path(path) if path is not None else weights_path()
    return _digest(str(p), p.stat().st_mtime)


def load_net(path: str | Path | None = None) -> DigitsNet:
    """A :class:`DigitsNet` with the committed (or given) weights, in eval mode."""
    from lthdiff.store.io import load_tensors

    state, _ = load_tensors(path if path is not None else weights_path())
    net = DigitsNet(features=state["fc1.weight"].shape[0])
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def gray_input(x: torch.Tensor, size: int, name: str, crop_from: int | None = None) -> torch.Tensor:
    """uint8 images (N, 1 or 3, H, W) -> float (N, 1, size, size) in [-1, 1], the input of a digit CNN.

    RGB goes to luma (ITU-R BT.601, as PIL's ``convert("L")``); a ``crop_from`` x ``crop_from``
    image is center-cropped to ``size`` (undoing zero padding without resampling); any other size
    is resized bilinearly (antialiased).  ``name`` (the extractor) appears in the error message.
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} expects uint8 images (N, 1 or 3, H, W), got {x.dtype} {tuple(x.shape)}")
    x = x.float() / 127.5 - 1
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if crop_from is not None and x.shape[-2:] == (crop_from, crop_from):
        m = (crop_from - size) // 2
        x = x[..., m:m + size, m:m + size]
    elif x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 1 or 3, H, W) -> float (N, 1, 16, 16) in [-1, 1] (RGB to luma, bilinear resize)."""
    return gray_input(x, IMAGE_SIZE, NAME)


class NetFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of a digit CNN with ``features(x)``, ``fc2`` and ``scale`` (as :class:`DigitsNet`).

    Subclasses set ``FEATURES`` (the penultimate layer's name), ``IMAGE_SIZE``, and the static
    ``load_net(path)`` and ``to_input(uint8 images)`` of their network; features ``FEATURES``
    (FID/KID/PRC) and ``"logits"`` (Inception Score).
    """

    FEATURES = FEATURES
    IMAGE_SIZE = IMAGE_SIZE
    load_net = staticmethod(load_net)
    to_input = staticmethod(to_input)

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs) -> None:
        super().__init__(name, features_list)
        self.net = self.load_net(feature_extractor_weights_path)

    @classmethod
    def get_provided_features_list(cls) -> tuple[str, ...]:
        return cls.FEATURES, "logits"

    @classmethod
    def get_default_feature_layer_for_metric(cls, metric: str) -> str:
        return {"isc": "logits", "fid": cls.FEATURES, "kid": cls.FEATURES, "prc": cls.FEATURES}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @classmethod
    def get_dummy_input_for_compile(cls) -> torch.Tensor:
        return torch.zeros(1, 1, cls.IMAGE_SIZE, cls.IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.net.features(self.to_input(x))
        out = {self.FEATURES: feats, "logits": None}
        if "logits" in self.features_list:
            out["logits"] = self.net.fc2(feats / self.net.scale)
        return tuple(out[f] for f in self.features_list)


class DigitsFeatureExtractor(NetFeatureExtractor):
    """torch-fidelity wrapper of :class:`DigitsNet`: features ``"64"`` (penultimate) and ``"logits"``."""


def register_extractor(name: str, cls: type) -> str:
    """Register ``cls`` with torch-fidelity as ``name``; idempotent.

    torch-fidelity refuses a second registration of a name, which a re-run notebook cell (or an
    ``importlib.reload``) would trigger, so the registry is checked first; a stale class from a
    reloaded module is replaced, a foreign extractor of the same name is an error.
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    existing = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if existing is None:
        register_feature_extractor(name, cls)
    elif existing is not cls:
        if existing.__module__ != cls.__module__:
            raise ValueError(f"torch-fidelity already has a feature extractor {name!r} from {existing.__module__}")
        FEATURE_EXTRACTORS_REGISTRY[name] = cls
    return name


def register() -> str:
    """Register :class:`DigitsFeatureExtractor` with torch-fidelity as ``"lthdiff-digits"``; idempotent."""
    return register_extractor(NAME, DigitsFeatureExtractor)
