"""What is learned: the training objectives (tasks) and the DDPM noise schedule.

A :class:`Task` supplies the loss to :func:`lthdiff.training.loop.train` and checks that a model and a
dataset fit it: :class:`DiffusionTask` is the DDPM epsilon-prediction objective (Ho et al. 2020,
Eq. 14, "L_simple"); :class:`ClassificationTask` is cross-entropy on (image, label) pairs for the
classifier checks (Frankle & Carbin 2019).  Sampling and structured pruning need the schedule or a
task without the training loop, so they import this module, not :mod:`lthdiff.training.loop`.
"""
from __future__ import annotations

import numbers
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["Task", "DiffusionTask", "ClassificationTask", "make_scheduler", "resolve_task", "check_pair"]


def make_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
    """The DDPM noise schedule used for training and (by default) sampling (Ho et al. 2020)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)


class Task(Protocol):
    """What a training objective supplies to :func:`train`."""

    name: str
    default_lr: float

    def check(self, model: nn.Module, dataset: Dataset) -> None: ...
    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor: ...
    def config(self) -> dict[str, Any]: ...


class DiffusionTask:
    """DDPM epsilon-prediction: ``|| eps - eps_theta(sqrt(a_t) x0 + sqrt(1-a_t) eps, t) ||^2``.

    Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Eq. 14 (L_simple), with ``t``
    uniform over the ``num_train_timesteps`` steps of a DDPMScheduler.
    """

    name = "diffusion"
    default_lr = 1e-3

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear") -> None:
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.scheduler = make_scheduler(num_train_timesteps, beta_schedule)

    def check(self, model: nn.Module, dataset: Dataset) -> None:
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "sample_size"):
            raise ValueError("the diffusion task trains a diffusers UNet2DModel; got "
                             f"{type(model).__name__} (use task='classification' for classifiers)")
        x = _images(dataset[0])
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        if tuple(x.shape[-2:]) != (size, size) or x.shape[0] != cfg.in_channels:
            raise ValueError(
                f"dataset images have shape {tuple(x.shape)} but the UNet expects "
                f"({cfg.in_channels}, {size}, {size}) (sample_size={size}); load the dataset with "
                f"image_size={size} or build the UNet with sample_size={x.shape[-1]}, in_channels={x.shape[0]}")

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        x0 = _images(batch)
        # Draw on CPU from the stateless generator so CPU and GPU runs see the same noise.
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        return F.mse_loss(model(noisy, t).sample, noise)

    def config(self) -> dict[str, Any]:
        return {"task": self.name, "num_train_timesteps": self.num_train_timesteps,
                "beta_schedule": self.beta_schedule}


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def resolve_task(task: "str | Task") -> "Task":
    """Turn ``"diffusion"`` / ``"classification"`` into a task object; pass objects through."""
    if not isinstance(task, str):
        return task
    if task == "diffusion":
        return DiffusionTask()
    if task == "classification":
        return ClassificationTask()
    raise ValueError(f"unknown task {task!r}; accepted: 'diffusion', 'classification' or a Task object")


def _split_item(item: Any, where: str) -> tuple[torch.Tensor, Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"{where} must yield (image, label) pairs, got {type(item).__name__}"
                         + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                         + "; load it with lthdiff.data.load_dataset(..., labels=True)")
    image, label = item
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ValueError(f"{where} images must be (C, H, W) tensors, got "
                         f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    is_int = isinstance(label, numbers.Integral) or (
        isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point())
    if not is_int or isinstance(label, bool):
        raise ValueError(f"{where} labels must be integer class indices, got {label!r}")
    return image, label


def check_pair(model: nn.Module, dataset: Dataset, where: str = "the dataset") -> None:
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
    """Cross-entropy on ``(image, label)`` batches, for :func:`lthdiff.training.loop.train` and ``run_imp``.

    ``default_lr`` = 1.2e-3 with Adam, Frankle & Carbin's setting for LeNet-300-100 (Fig. 2).
    """

    name = "classification"

    def __init__(self, default_lr: float = 1.2e-3) -> None:
        self.default_lr = float(default_lr)

    def check(self, model: nn.Module, dataset: Dataset) -> None:
        """Raise ValueError unless ``dataset`` yields (image, label) and ``model`` returns logits for it."""
        check_pair(model, dataset)

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images), labels)

    def config(self) -> dict[str, Any]:
        return {"task": self.name}
