"""Classifier networks for validating the pruning code against the original lottery-ticket results.

Before trusting tickets in diffusion models, check that masks, pruners and IMP reproduce Frankle &
Carbin 2019 ("The Lottery Ticket Hypothesis", ICLR; arXiv:1803.03635) on classifiers: LeNet-300-100
and LeNet-5 on digits / MNIST, ResNet-18 on CIFAR-10.  This module holds the presets (:func:`build`)
and the per-round output-layer rate; the task is :class:`lthdiff.training.tasks.ClassificationTask`, the
accuracy table :func:`lthdiff.evaluation.analysis.imp_accuracy`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lthdiff.runtime import positive_int

__all__ = ["PRESETS", "build", "LeNet300100", "LeNet5", "output_layer", "output_rate_allocation"]

PRESETS = ("lenet-300-100", "lenet-5", "resnet-18")


class LeNet300100(nn.Module):
    """Fully connected 300-100-10 with ReLU (LeCun et al. 1998; Frankle & Carbin 2019, Fig. 2)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998): conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> 120 -> 84 -> classes.

    conv1 is padded to keep the input size (the usual 28x28 MNIST variant); conv2 is unpadded from
    16x16 up and padded below, so 8x8 digits still leave a 2x2 map.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        pad2 = 0 if image_size >= 16 else 2
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        side = (image_size // 2 - 4 + 2 * pad2) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


def _resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem: 3x3 stride-1 conv, no max-pool (He et al. 2016)."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


_MIN_SIZE = {"lenet-300-100": 1, "lenet-5": 8, "resnet-18": 8}


def build(preset: str, in_channels: int = 1, image_size: int = 16, num_classes: int = 10,
          seed: int | None = 0) -> nn.Module:
    """A randomly initialised classifier preset (``"lenet-300-100"``, ``"lenet-5"`` or ``"resnet-18"``).

    Input images are ``(in_channels, image_size, image_size)``; the output is ``num_classes``
    logits.  Every module is initialised by its own ``reset_parameters`` (PyTorch's defaults) under
    ``torch.manual_seed(seed)``: the random-reinit control of :func:`lthdiff.lottery.imp.run_imp` re-runs
    exactly that, so ticket and control draw from the same distribution (torchvision's Kaiming
    init of ResNet convs is therefore replaced).  ``model.lthdiff_spec`` records the arguments so
    :func:`lthdiff.models.save_model` / ``load_model`` round-trip the model.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown classifier preset {preset!r}; accepted: {list(PRESETS)}")
    in_channels = positive_int(in_channels, "in_channels")
    image_size = positive_int(image_size, f"image_size for {preset!r}", _MIN_SIZE[preset])
    num_classes = positive_int(num_classes, "num_classes", 2)
    if seed is not None:
        seed = positive_int(seed, "seed", 0)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if preset == "lenet-300-100":
            model: nn.Module = LeNet300100(in_channels * image_size * image_size, num_classes)
        elif preset == "lenet-5":
            model = LeNet5(in_channels, image_size, num_classes)
        else:
            model = _resnet18(in_channels, num_classes)
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    model.lthdiff_spec = {"preset": preset, "in_channels": in_channels, "image_size": image_size,
                          "num_classes": num_classes, "seed": seed}
    return model


def output_layer(model: nn.Module) -> str:
    """Name of the output layer's weight: the last prunable parameter (``fc3.weight``, ``fc.weight``)."""
    from lthdiff.masks.core import prunable

    names = prunable(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no conv/linear weights")
    return names[-1]


def output_rate_allocation(model: nn.Module, prune_per_round: float = 0.2, factor: float = 0.5,
                           rounds: int = 30) -> list[dict[str, float]]:
    """Per-round ``allocation`` for :func:`run_imp` pruning the output layer at ``factor`` x the rate.

    Frankle & Carbin 2019 (Sec. 2, Fig. 2) prune LeNet's hidden layers at p = 20 % per round and
    the output layer at 10 %, because it is small and every one of its weights matters.  Returns
    one ``{output weight: 1 - (1 - factor * p)^r}`` per round r = 1..``rounds``; with
    ``scope="layer"`` every other layer is pruned at ``1 - (1 - p)^r``.  A list longer than the
    run is fine (run_imp takes entry r - 1), and keeping ``rounds`` fixed lets a run be extended.
    """
    if not 0 < prune_per_round < 1:
        raise ValueError(f"prune_per_round must be in (0, 1), got {prune_per_round!r}")
    if not 0 <= factor * prune_per_round < 1:
        raise ValueError(f"factor must be in [0, 1/prune_per_round) = [0, {1 / prune_per_round:g}), got {factor!r}")
    rounds = positive_int(rounds, "rounds")
    name, rate = output_layer(model), factor * prune_per_round
    return [{name: 1 - (1 - rate) ** r} for r in range(1, rounds + 1)]
