"""One network of a chain: the unit of work that every IMP round, control and study arm trains through.

A :class:`Job` says what to train: the start weights, the mask, the number of steps and the run folder
(``round_XX/`` or ``round_XX/controls/NAME/``, the layout :mod:`lthdiff.lottery.runs` owns), plus
optionally the steps at which to keep a snapshot of the weights on the way (theta_K for late rewinding,
Frankle et al. 2019; the dense network at T/2 for a convergence check) and a finished network whose last
checkpoint it continues (the dense network continued to 1.5 T).  :func:`train_network` trains it,
resuming inside the network from its checkpoints, and writes the round (summary last); a finished
network is returned as it is, after checking that its mask and length are the job's.  ``run_imp``,
``lthdiff run`` and ``lthdiff study`` all train through it, so a fix lands once.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from lthdiff import masks as M
from lthdiff.store.io import read_json, tensors_digest
from lthdiff.models.unets import save_model
from lthdiff.runtime import process_state
from .runs import RoundInfo, write_round

__all__ = ["Job", "train_network", "snapshot_ema_dir", "on_main"]

Mask = Mapping[str, torch.Tensor]


@dataclass
class Job:
    """What one network of a chain needs: start weights, mask, steps, run folder."""

    start: nn.Module
    mask: Mask
    steps: int
    dir: Path
    round: int
    variant: str = "ticket"
    desc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # written into summary.json
    snapshots: Mapping[int, Path] = field(default_factory=dict)  # step -> folder of the raw weights at that step
    continues: Path | None = None  # a finished network (kept checkpoint) whose run this one extends
    keep_checkpoint: bool = False  # keep this network's last checkpoint, for a network that continues it


def snapshot_ema_dir(path: Path) -> Path:
    """Where :func:`train_network` keeps the EMA weights of a snapshot whose raw weights go to ``path``."""
    return path.with_name(path.name + "_ema")


def on_main(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Under ``accelerate launch`` every process trains in step; only the main one writes a network's
    files, and the others wait so they read the finished files, not half-written ones."""
    state = process_state()
    if state.is_main_process:
        fn(*args, **kwargs)
    state.wait_for_everyone()


def _save_snapshot(res: Any, path: Path) -> None:
    if res.ema is not None:  # the EMA first: the raw folder marks the snapshot complete
        save_model(res.ema, snapshot_ema_dir(path))
    save_model(res.model, path)


def train_network(job: Job, dataset: Dataset, *, task: Any = "diffusion", loss_at_init: bool = True,
                  **train_kw: Any) -> RoundInfo:
    """Train (or resume, or reuse) one network and return its :class:`RoundInfo`; see the module doc.

    ``train_kw`` go to :func:`lthdiff.training.loop.train` (batch_size, lr, seed, ema, checkpoint_every,
    progress).  A finished folder holding another mask or length raises instead of being reused.
    """
    from lthdiff.training.loop import fork_checkpoint, load_checkpoint, loss_at_start, train

    d = Path(job.dir)
    if (d / "summary.json").exists():
        found = RoundInfo.from_dir(d, variant=job.variant)
        if tensors_digest(found.load_mask()) != tensors_digest(dict(job.mask)) or \
                read_json(d / "summary.json")["steps"] != job.steps:
            raise ValueError(f"{d} holds another network (its mask or length differs from this job's: "
                             f"{job.steps} steps); move it away or use another run folder")
        return found
    extra = {"target_sparsity": M.sparsity(job.mask), **job.extra}
    if job.variant != "ticket":
        extra["variant"] = job.variant
    if loss_at_init:
        # Before training: a ticket's theta_0 * m already denoising is the supermask effect (Zhou et al. 2019).
        extra["loss_at_init"] = loss_at_start(job.start, dataset, job.mask, task=task)
    ckpt = d / "ckpt"
    if job.continues is not None:  # recorded the same whether this call forks or resumes the fork
        extra["continued_from_step"] = int(read_json(Path(job.continues) / "summary.json")["steps"])
        if load_checkpoint(ckpt) is None:
            fork_checkpoint(Path(job.continues) / "ckpt", ckpt)
    model = copy.deepcopy(job.start)
    kw = dict(train_kw, task=task, checkpoint_dir=ckpt, mask=job.mask, desc=job.desc or f"round {job.round} "
              f"{job.variant}")
    for step, path in sorted(job.snapshots.items()):
        if 0 < step < job.steps and not Path(path).exists():
            state = load_checkpoint(ckpt)
            if state is not None and int(state["step"]) > step:
                # A run folder from before this snapshot was asked for: go on without it (whoever needs it
                # trains it again from the seed, deterministic) rather than retrain this network.
                warnings.warn(f"{ckpt} is past step {step} and holds no snapshot {path}; continuing without it",
                              stacklevel=2)
                continue
            res = train(model, dataset, step, **kw)
            on_main(_save_snapshot, res, Path(path))
    res = train(model, dataset, job.steps, **kw)
    on_main(write_round, d, res, job.mask, job.round, extra=extra, keep_checkpoint=job.keep_checkpoint)
    return RoundInfo.from_dir(d, variant=job.variant)
