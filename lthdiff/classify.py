"""Classifiers for validating the pruning code against the original lottery-ticket results.

Before trusting tickets in diffusion models, check that masks, pruners and IMP reproduce Frankle &
Carbin 2019 ("The Lottery Ticket Hypothesis", ICLR; arXiv:1803.03635) on classifiers: LeNet-300-100
and LeNet-5 on digits / MNIST, ResNet-18 on CIFAR-10.  The models train with the same loop
(:func:`lthdiff.train.train`) and the same IMP driver (:func:`lthdiff.imp.run_imp` with
``task="classification"``) as the UNets; this module only adds the presets, the cross-entropy
:class:`ClassificationTask`, :func:`evaluate` and the per-round accuracy table :func:`imp_accuracy`.
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["PRESETS", "build", "ClassificationTask", "evaluate", "imp_accuracy", "output_layer",
           "output_rate_allocation", "load_labelled", "plot_accuracy"]

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


def _positive_int(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def build(preset: str, in_channels: int = 1, image_size: int = 16, num_classes: int = 10,
          seed: int | None = 0) -> nn.Module:
    """A randomly initialised classifier preset (``"lenet-300-100"``, ``"lenet-5"`` or ``"resnet-18"``).

    Input images are ``(in_channels, image_size, image_size)``; the output is ``num_classes``
    logits.  Every module is initialised by its own ``reset_parameters`` (PyTorch's defaults) under
    ``torch.manual_seed(seed)``: the random-reinit control of :func:`lthdiff.imp.run_imp` re-runs
    exactly that, so ticket and control draw from the same distribution (torchvision's Kaiming
    init of ResNet convs is therefore replaced).  ``model.lthdiff_spec`` records the arguments so
    :func:`lthdiff.models.save_model` / ``load_model`` round-trip the model.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown classifier preset {preset!r}; accepted: {list(PRESETS)}")
    in_channels = _positive_int(in_channels, "in_channels")
    image_size = _positive_int(image_size, f"image_size for {preset!r}", _MIN_SIZE[preset])
    num_classes = _positive_int(num_classes, "num_classes", 2)
    if seed is not None:
        seed = _positive_int(seed, "seed", 0)
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
    from .masks import prunable

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
    rounds = _positive_int(rounds, "rounds")
    name, rate = output_layer(model), factor * prune_per_round
    return [{name: 1 - (1 - rate) ** r} for r in range(1, rounds + 1)]


def _split_item(item: Any, where: str) -> tuple[torch.Tensor, Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"{where} must yield (image, label) pairs, got {type(item).__name__}"
                         + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                         + "; load it with lthdiff.data.load_dataset(..., labels=True) or classify.load_labelled")
    image, label = item
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ValueError(f"{where} images must be (C, H, W) tensors, got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    is_int = isinstance(label, numbers.Integral) or (
        isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point())
    if not is_int or isinstance(label, bool):
        raise ValueError(f"{where} labels must be integer class indices, got {label!r}")
    return image, label


def _check_pair(model: nn.Module, dataset: Dataset, where: str = "the dataset") -> None:
    """Check that ``dataset`` yields (image, label) and that ``model`` maps the image to logits."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError(f"{where} is empty (0 items)")
    image, label = _split_item(dataset[0], where)
    if hasattr(getattr(model, "config", None), "sample_size"):
        raise ValueError(f"the classification task needs a classifier returning (batch, classes) logits, "
                         f"got a diffusers {type(model).__name__} (use task='diffusion' for UNets)")
    spec = getattr(model, "lthdiff_spec", None)
    if spec is not None:
        want = (spec["in_channels"], spec["image_size"], spec["image_size"])
        if tuple(image.shape) != want:
            raise ValueError(f"{where} has images of shape {tuple(image.shape)} but the {spec['preset']} "
                             f"expects {want}; build it with in_channels={image.shape[0]}, "
                             f"image_size={image.shape[-1]} or load the data at image_size={want[-1]}")
    param = next(model.parameters(), None)
    was_training = model.training
    model.eval()  # no BatchNorm statistics update from this probe
    try:
        with torch.no_grad():
            out = model(image[None].to(param.device if param is not None else "cpu"))
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{type(model).__name__} cannot take {where}'s images of shape {tuple(image.shape)} "
                         f"(the classification task needs a model mapping images to logits): {exc}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError(f"the classification task needs a model returning (batch, classes) logits; "
                         f"{type(model).__name__} returned {type(out).__name__}"
                         + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else "")
                         + " (use task='diffusion' for UNets)")
    if not 0 <= int(label) < out.shape[1]:
        raise ValueError(f"label {int(label)} of {where} is outside the model's {out.shape[1]} classes")


class ClassificationTask:
    """Cross-entropy on ``(image, label)`` batches, for :func:`lthdiff.train.train` and ``run_imp``.

    ``default_lr`` = 1.2e-3 with Adam, Frankle & Carbin's setting for LeNet-300-100 (Fig. 2).
    """

    name = "classification"

    def __init__(self, default_lr: float = 1.2e-3) -> None:
        self.default_lr = float(default_lr)

    def check(self, model: nn.Module, dataset: Dataset) -> None:
        """Raise ValueError unless ``dataset`` yields (image, label) and ``model`` returns logits for it."""
        _check_pair(model, dataset)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    def config(self) -> dict[str, Any]:
        return {"task": self.name}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` ((image, label) pairs), a float in [0, 1].

    Runs in eval mode (BatchNorm running statistics) on ``device`` (default: the model's) and
    restores the model's mode afterwards.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    _check_pair(model, dataset, "the evaluation dataset")
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    moved = param is not None and param.device != device
    if moved:
        model = model.to(device)  # nn.Module.to is in place; undone below
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            pred = model(images.to(device)).argmax(1)
            correct += int((pred.cpu() == torch.as_tensor(labels)).sum())
    finally:
        model.train(was_training)
        if moved:
            model.to(param.device if param is not None else "cpu")
    return correct / len(dataset)  # type: ignore[arg-type]


def imp_accuracy(result: Any, test_set: Dataset, *, ema: bool = False, batch_size: int = 512,
                 device: str | torch.device | None = None, progress: bool = False):
    """Test accuracy of every network of an IMP run, as a pandas DataFrame.

    ``result`` is an :class:`lthdiff.imp.IMPResult` or its run directory.  One row per (round,
    variant): ``variant`` is ``"ticket"`` or a control name; ``sparsity`` is the fraction of
    prunable weights removed and ``remaining`` = 1 - sparsity (the x-axis of Frankle & Carbin
    2019, Fig. 1/3).  Models are the raw trained weights (``ema=False``), which is what classifiers
    are trained and judged on.  ``device`` defaults to CUDA when available.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .imp import IMPResult

    if isinstance(result, (str, Path)):
        result = IMPResult.load(result)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    infos = [(r.round, info) for r in result.rounds for info in [r, *r.controls.values()]]
    rows = []
    for rnd, info in tqdm(infos, desc="evaluate", disable=not progress, leave=False):
        acc = evaluate(info.load_model(ema=ema), test_set, batch_size=batch_size, device=device)
        rows.append({"round": rnd, "variant": info.variant, "sparsity": info.sparsity,
                     "remaining": 1 - info.sparsity, "accuracy": acc})
    return pd.DataFrame(rows, columns=["round", "variant", "sparsity", "remaining", "accuracy"])


def load_labelled(name: str = "digits", image_size: int = 16, split: str = "train", root: str | Path = "data") -> Dataset:
    """A dataset of ``(image in [-1, 1], label)`` pairs for the classifier experiments.

    ``digits`` and ``mnist5k`` are in memory (offline); ``mnist``, ``fashion-mnist`` and ``cifar10`` come from
    torchvision (downloaded where there is network), with the same transforms as
    :func:`lthdiff.data.load_dataset`.
    """
    from .data import load_dataset

    if name in ("digits", "mnist5k"):
        return load_dataset(name, image_size=image_size, split=split, root=root, labels=True)
    if name not in ("mnist", "fashion-mnist", "cifar10"):
        raise ValueError(f"unknown labelled dataset {name!r}; accepted: 'digits', 'mnist5k', 'mnist', 'fashion-mnist', 'cifar10'")
    images_only = load_dataset(name, image_size=image_size, split=split, root=root)
    # load_dataset(labels=True) refuses torchvision sets; its wrapper drops the label of `.base`.
    return images_only.base


def plot_accuracy(df, ax=None, variants: Sequence[str] | None = None, title: str | None = None):
    """Accuracy vs fraction of weights remaining (log x, decreasing), one line per variant.

    ``df`` holds :func:`imp_accuracy` rows, optionally for several seeds (a ``seed`` column):
    lines are the mean over seeds with +-1 std error bars, as Frankle & Carbin 2019, Fig. 1/3.
    Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))

    labels = {"ticket": "winning ticket (rewind)", "random_reinit": "random reinit", "random_mask": "random mask"}
    if variants is None:  # ticket first, then the controls, whatever order the rows came in
        present = list(dict.fromkeys(df["variant"]))
        variants = [v for v in labels if v in present] + [v for v in present if v not in labels]
    dense = df[df["round"] == 0]
    for v in variants:
        part = df[df["variant"] == v]
        if v != "ticket":  # every control starts from the same dense network (round 0)
            part = pd.concat([dense, part])
        g = part.groupby("round").agg(remaining=("remaining", "mean"), mean=("accuracy", "mean"),
                                      std=("accuracy", "std")).fillna(0.0)
        ax.errorbar(g["remaining"] * 100, g["mean"] * 100, yerr=g["std"] * 100, marker="o", ms=3,
                    capsize=3, label=labels.get(v, v))
    if not dense.empty:
        ax.axhline(dense["accuracy"].mean() * 100, color="gray", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    lo = df["remaining"].min() * 100
    ax.xaxis.set_major_locator(FixedLocator([t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= lo * 0.9]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax
