"""Training loop shared by dense baselines, ticket retraining and classifiers.

One loop, built on ``accelerate`` (CPU, one GPU, or several with ``accelerate launch``), with a
pluggable :class:`lthdiff.training.tasks.Task` that supplies the loss (:mod:`lthdiff.training.tasks`: DDPM
epsilon-prediction, Ho et al. 2020, Eq. 14, or cross-entropy for the classifiers).  A mask, if given, is re-applied after every optimizer step (and to the
EMA copy) so pruned weights stay exactly zero, as in Frankle & Carbin 2018, Sec. 2.

Randomness is *stateless*: the data order of epoch ``e`` and the noise of step ``s`` are derived
from ``(seed, e)`` and ``(seed, s)``.  A run interrupted at any checkpoint and resumed therefore
gives the same weights as an uninterrupted run with the same seed.
"""
from __future__ import annotations

import copy
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from lthdiff.store.io import CorruptFileError, atomic_path, read_json, tensors_digest, write_json
from lthdiff.runtime import log_line, mix_seed, process_state, progress_bar
from .tasks import DiffusionTask, Task, make_scheduler, resolve_task

__all__ = ["train", "TrainResult", "MaskEnforcer", "load_checkpoint", "fork_checkpoint", "ema_from_checkpoint",
           "loss_at_start"]


class MaskEnforcer:
    """Multiplies masked parameters by their 0/1 mask in one fused ``_foreach_mul_`` call."""

    def __init__(self, model: nn.Module, mask: Mapping[str, torch.Tensor] | None) -> None:
        self.index: list[int] = []
        self.masks: list[torch.Tensor] = []
        if not mask:
            return
        _validate_mask(model, mask)
        params = dict(model.named_parameters())
        names = list(params)
        for name, m in mask.items():
            self.index.append(names.index(name))
            self.masks.append(m.to(device=params[name].device, dtype=params[name].dtype))

    @torch.no_grad()
    def __call__(self, tensors: list[torch.Tensor]) -> None:
        if self.index:
            torch._foreach_mul_([tensors[i] for i in self.index], self.masks)


def _validate_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    from lthdiff.masks.core import validate

    validate(model, mask)


@dataclass
class TrainResult:
    """What :func:`train` returns: raw trained weights, the EMA copy, and the loss per step."""

    model: nn.Module
    ema: nn.Module | None
    losses: list[float]
    steps: int
    seconds: float
    checkpoint_dir: Path | None = None
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sampling_model(self) -> nn.Module:
        """The EMA weights when EMA was on (what DDPM samples from), else the raw weights."""
        return self.ema if self.ema is not None else self.model


def _epoch_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int) -> DataLoader:
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(mix_seed(seed, epoch, 0xDA7A)))
    return DataLoader(Subset(dataset, perm.tolist()), batch_size=batch_size, shuffle=False,
                      drop_last=len(dataset) >= batch_size)


_CKPT_POINTER = "latest.json"
# Which process wrote a checkpoint: a run that continues a checkpoint written earlier in the same process (a
# network trained in pieces, e.g. to a rewind snapshot and on) is not resuming an interrupted run.
_PROCESS = f"{os.getpid()}-{time.time_ns()}"


def _save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    path = ckpt_dir / f"ckpt-{step:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    pointer = ckpt_dir / _CKPT_POINTER
    history = read_json(pointer)["history"] if pointer.exists() else []
    history = [h for h in history if h["file"] != path.name] + [{"step": step, "file": path.name, "sha256": digest}]
    for old in history[:-keep]:
        (ckpt_dir / old["file"]).unlink(missing_ok=True)
    history = history[-keep:]
    write_json(pointer, {"step": step, "file": path.name, "sha256": digest, "history": history, "process": _PROCESS})
    return path


def load_checkpoint(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """Load the latest checkpoint in ``ckpt_dir`` after verifying its SHA-256; None if there is none.

    A missing, truncated or corrupt file raises :class:`CorruptFileError` naming the file and the
    latest good checkpoint, never a silently wrong model.
    """
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / _CKPT_POINTER
    if not pointer.exists():
        return None
    info = read_json(pointer)
    good = [h for h in info["history"] if _sha_ok(ckpt_dir / h["file"], h["sha256"])]
    path = ckpt_dir / info["file"]
    if not _sha_ok(path, info["sha256"]):
        fallback = good[-1]["file"] if good else "none"
        raise CorruptFileError(
            f"checkpoint {path} is missing, truncated or fails its SHA-256 checksum; latest good checkpoint: "
            f"{fallback}. Remove {path.name} and its entry in {pointer} (or the folder) to resume from there.")
    return torch.load(path, map_location="cpu", weights_only=False)


def _sha_ok(path: Path, digest: str) -> bool:
    return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _check_args(steps: Any, dataset: Dataset, batch_size: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the dataset is empty (0 items); pass a dataset with at least one image")


def train(
    model: nn.Module,
    dataset: Dataset,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    ema: bool = True,
    ema_max_decay: float = 0.9999,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    mask: Mapping[str, torch.Tensor] | None = None,
    log_dir: str | Path | None = None,
    task: "str | Task" = "diffusion",
    grad_clip: float | None = 1.0,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place for ``steps`` optimizer steps and return a :class:`TrainResult`.

    AdamW at constant ``lr`` (the task's default when None), gradient clipping at ``grad_clip``,
    and an EMA copy (diffusers ``EMAModel`` with warm-up, decay capped at ``ema_max_decay``).
    With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every`` steps and at the end;
    calling ``train`` again with the same directory resumes from the last one (and returns at once
    if it already reached ``steps``).  ``mask`` ({name: bool tensor}) keeps pruned weights at zero.
    """
    from accelerate import Accelerator

    _check_args(steps, dataset, batch_size)
    task_obj = resolve_task(task)
    task_obj.check(model, dataset)
    lr = task_obj.default_lr if lr is None else float(lr)
    # The mask is part of what a checkpoint trained, so resuming under another mask is refused.
    run_config = {"seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                  "ema": ema, "grad_clip": grad_clip, **task_obj.config(),
                  "mask_digest": tensors_digest(mask)[:16] if mask is not None else None}

    accelerator = Accelerator()
    enforce = MaskEnforcer(model, mask)
    enforce(list(model.parameters()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema_model = _ema(model, ema_max_decay) if ema else None
    losses: list[float] = []
    start, resumed = 0, False
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        state = load_checkpoint(ckpt_dir)
        if state is not None:
            _check_resume(state["config"], run_config, ckpt_dir)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema_model is not None:
                ema_model.load_state_dict(state["ema"])
            losses = list(state["losses"])
            start = int(state["step"])
            written = read_json(ckpt_dir / _CKPT_POINTER)
            resumed = written.get("forked_from") != start and written.get("process") != _PROCESS
            if start > steps:
                raise ValueError(f"{ckpt_dir} already holds a run trained for {start} steps, more than steps={steps}; "
                                 "use a new checkpoint_dir or steps >= that")
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    # prepare() may have moved the model to a GPU: rebuild the 0/1 masks on its device.
    enforce = MaskEnforcer(raw, mask)
    if ema_model is not None:
        ema_model.to(accelerator.device)
    writer = None
    if log_dir is not None and accelerator.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))

    def checkpoint(step: int) -> None:
        if ckpt_dir is None:
            return
        if accelerator.is_main_process:
            _save_checkpoint(ckpt_dir, step, {
                "step": step, "config": run_config, "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(), "losses": losses,
                "ema": ema_model.state_dict() if ema_model is not None else None})
        accelerator.wait_for_everyone()

    t0 = time.perf_counter()
    step = start
    show = progress and accelerator.is_main_process
    bar = progress_bar(total=steps, initial=start, desc=desc, disable=not show, leave=False)
    n_batches = len(accelerator.prepare(_epoch_loader(dataset, batch_size, seed, 0)))
    params = list(raw.parameters())
    while step < steps:
        epoch, offset = divmod(step, n_batches)
        loader = accelerator.prepare(_epoch_loader(dataset, batch_size, seed, epoch))
        if offset:
            loader = accelerator.skip_first_batches(loader, offset)
        for batch in loader:
            gen = torch.Generator().manual_seed(mix_seed(seed, step, accelerator.process_index))
            torch.manual_seed(mix_seed(seed, step, accelerator.process_index, 1))  # dropout
            model.train()
            loss = task_obj.loss(model, batch, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {step} (lr={lr}); "
                                         "lower the learning rate or check the data for NaNs")
            accelerator.backward(loss)
            if grad_clip is not None:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            enforce(params)
            if ema_model is not None:
                ema_model.step(params)
                enforce(ema_model.shadow_params)
            step += 1
            value = float(loss.detach())
            losses.append(value)
            bar.update(1)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{value:.4f}")
            if writer is not None:
                writer.add_scalar("train/loss", value, step)
            if step % checkpoint_every == 0 and step < steps:
                checkpoint(step)
            if step >= steps:
                break
    bar.close()
    if step > start:
        tail = losses[-max(1, len(losses) // 10):]
        log_line(f"{desc}: {step} steps ({step - start} now{f', resumed at step {start}' if resumed else ''}) in "
                 f"{time.perf_counter() - t0:.0f} s, mean loss of the last 10 % {sum(tail) / len(tail):.4f}", enabled=show)
    if step > start or (ckpt_dir is not None and load_checkpoint(ckpt_dir) is None):
        checkpoint(step)
    if writer is not None:
        writer.close()
    ema_copy = None
    if ema_model is not None:
        ema_copy = copy.deepcopy(raw)
        ema_model.copy_to(ema_copy.parameters())
    return TrainResult(model=raw, ema=ema_copy, losses=losses, steps=step,
                       seconds=time.perf_counter() - t0, checkpoint_dir=ckpt_dir, resumed_from=start)


def _ema(model: nn.Module, max_decay: float = 0.9999) -> Any:
    """The one EMA of training (diffusers ``EMAModel``, warm-up 1 - (1 + step)^(-2/3), decay capped at ``max_decay``)."""
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=max_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)


def ema_from_checkpoint(template: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """The EMA weights a checkpoint of :func:`train` holds (``load_checkpoint(dir)``), as a copy of ``template``."""
    if state.get("ema") is None:
        raise ValueError("this checkpoint was trained with ema=False: it holds no EMA weights")
    model = copy.deepcopy(template)
    model.load_state_dict(state["model"])
    ema = _ema(model)
    ema.load_state_dict(state["ema"])
    ema.copy_to(model.parameters())
    return model


def fork_checkpoint(src: str | Path, dst: str | Path) -> int:
    """Copy the latest checkpoint of ``src`` (a ``checkpoint_dir`` of :func:`train`) into ``dst`` as the start of
    a new checkpoint folder, so ``train(..., checkpoint_dir=dst, steps=more)`` continues that run (optimizer state
    included) without touching ``src``.  Returns the step copied; the checksum is verified first."""
    import shutil

    src, dst = Path(src), Path(dst)
    if load_checkpoint(src) is None:
        raise FileNotFoundError(f"{src} holds no checkpoint to continue from")
    info = read_json(src / _CKPT_POINTER)
    dst.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst / info["file"]) as tmp:
        shutil.copy2(src / info["file"], tmp)
    entry = {k: info[k] for k in ("step", "file", "sha256")}
    # marked, so the run that trains on from it is not reported as resuming an interrupted run of its own
    write_json(dst / _CKPT_POINTER, {**entry, "history": [entry], "forked_from": entry["step"]})
    return int(info["step"])


def _check_resume(saved: dict[str, Any], now: dict[str, Any], ckpt_dir: Path) -> None:
    # Checkpoints written before the mask was recorded carry no mask_digest: nothing to compare.
    keys = (set(saved) | set(now)) - ({"mask_digest"} if "mask_digest" not in saved else set())
    diff = {k: (saved.get(k), now.get(k)) for k in keys if saved.get(k) != now.get(k)}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        if "mask_digest" in diff:
            detail += "; the mask is not the one this checkpoint was trained with"
        raise ValueError(f"cannot resume from {ckpt_dir}: training arguments differ ({detail}); "
                         "use the same arguments or a new checkpoint_dir")


def loss_at_start(model: nn.Module, dataset: Dataset, mask: Mapping[str, torch.Tensor] | None = None, *, n: int = 256, seed: int = 0,
                  task: Any = "diffusion") -> float:
    """The training loss of ``model`` (times ``mask``, if given) before any training, on a fixed batch.

    The batch is ``n`` training images drawn by ``seed`` (without replacement), with the noise and
    timesteps of :meth:`lthdiff.training.tasks.DiffusionTask.loss` drawn from ``torch.Generator().manual_seed(seed)``,
    so every network of a study is scored on the very same noised batch (Ho et al. 2020, Eq. 14,
    L_simple; unitless MSE on the noise).  A ticket's start is theta_0 * m: when it scores far
    below theta_0 alone, the mask by itself carries information (the "supermask" effect of Zhou et
    al. 2019, "Deconstructing Lottery Tickets", Sec. 5).  ``model`` is not modified.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    task_obj = resolve_task(task)
    net = copy.deepcopy(model).cpu().eval()
    if mask is not None:
        MaskEnforcer(net, mask)(list(net.parameters()))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=gen)[: min(n, len(dataset))]
    batch = default_collate([dataset[int(i)] for i in idx])  # images, or (image, label) pairs for a classifier
    with torch.no_grad():
        return float(task_obj.loss(net, batch, torch.Generator().manual_seed(seed)))
