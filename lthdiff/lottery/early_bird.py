"""Early-bird tickets: draw the ticket's mask early in dense training (You et al. 2020, ICLR).

You et al. 2020 ("Drawing Early-Bird Tickets", arXiv 1909.11957, Sec. 3.3 and Algorithm 1)
observe that the mask a pruner would draw stops changing long before dense training converges.
While the dense model trains, every ``every`` steps the magnitude mask at the target sparsity is
drawn (:func:`lthdiff.pruners.magnitude`, the pruner of IMP, global scope) and pushed into a FIFO
of the last ``window`` masks (paper: 5).  The *mask distance* of two masks is their normalised
Hamming distance, the fraction of eligible weights on which they differ (paper, Sec. 3.3).  The
search stops at the first step where the FIFO is full and the largest distance between the newest
mask and the others in it is below ``eps`` (paper: 0.1).  That mask, with the weights rewound to
theta_0 (or theta_k, as :func:`lthdiff.lottery.imp.run_imp`), is the early-bird ticket; :func:`retrain`
trains it.

Vocabulary as in :mod:`lthdiff.lottery.imp`: a *ticket* is a mask plus rewind weights.  The dense
training is :func:`lthdiff.training.loop.train` called again with the same checkpoint directory and a
larger ``steps`` at every check (resume is exact), so the search is resumable: a killed process
continues from its last check and gives the same result as an uninterrupted one.  Layout of
``run_dir``: ``config.json``, ``dense/ckpt`` (training checkpoints), ``masks/step_XXXXXXX``
(the FIFO), ``early_bird.json`` (the distance curve and the stop step, rewritten atomically after
every check), ``rewind/`` (the rewind weights) and, after :func:`retrain`, ``ticket/`` (a
network folder like an IMP round: mask, model, EMA, losses, summary).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from lthdiff import masks as M
from lthdiff import pruners
from lthdiff.store.io import read_json, tensors_digest, write_json
from lthdiff.models.unets import load_model, save_model, with_state
from lthdiff.runtime import positive_int, progress_bar
from .runs import RoundInfo, check_or_write_config, write_round
from lthdiff.training.tasks import resolve_task
from lthdiff.training.loop import train

__all__ = ["EarlyBirdResult", "mask_distance", "find", "retrain", "PAPER_WINDOW", "PAPER_EPS"]

PAPER_WINDOW = 5  # FIFO length l of You et al. 2020
PAPER_EPS = 0.1  # mask-distance threshold epsilon of You et al. 2020
_STATE = "early_bird.json"


def mask_distance(mask_a: Mapping[str, torch.Tensor], mask_b: Mapping[str, torch.Tensor]) -> float:
    """Normalised Hamming distance of two masks, in [0, 1]: differing positions / all positions.

    The mask distance of You et al. 2020 (Sec. 3.3), over every weight the masks cover (the same
    parameters and shapes are required; ``ValueError`` names the first mismatch).  0 for two empty masks.
    """
    for what, m in (("mask_a", mask_a), ("mask_b", mask_b)):
        if not isinstance(m, Mapping):
            raise ValueError(f"{what} must be a mapping {{parameter name: bool tensor}}, got {type(m).__name__}")
        bad = [n for n, t in m.items() if not isinstance(t, torch.Tensor) or t.dtype != torch.bool]
        if bad:
            raise ValueError(f"{what} entries must be bool tensors (True = kept); not bool: {bad[:5]}")
    if set(mask_a) != set(mask_b):
        only_a, only_b = sorted(set(mask_a) - set(mask_b)), sorted(set(mask_b) - set(mask_a))
        raise ValueError(f"masks cover different parameters: only in mask_a {only_a[:5]}, only in mask_b {only_b[:5]}")
    differ = total = 0
    for name, a in mask_a.items():
        b = mask_b[name]
        if a.shape != b.shape:
            raise ValueError(f"masks for {name!r} have shapes {tuple(a.shape)} and {tuple(b.shape)}")
        differ += int((a ^ b.to(a.device)).sum())
        total += a.numel()
    return 0.0 if total == 0 else differ / total


@dataclass
class EarlyBirdResult:
    """The outcome of :func:`find`.

    ``mask``: the early-bird mask (drawn at ``stop_step``, or at the last check when none stopped);
    ``stop_step``: the training step at which the search stopped, None when ``max_steps`` was reached
    first; ``steps_trained``: dense training steps spent (the search's compute); ``distances``:
    ``[(step, max distance newest vs the others in the FIFO)]`` at every check with >= 2 masks;
    ``rewind_dir``: the rewind weights (theta_0 or theta_k) the ticket starts from.
    """

    mask: dict[str, torch.Tensor]
    stop_step: int | None
    steps_trained: int
    distances: list[tuple[int, float]]
    run_dir: Path
    rewind_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    task: Any = "diffusion"  # the Task object the dense model trained with (retrain uses it too)

    @property
    def detected(self) -> bool:
        """Whether the distance fell below ``eps`` before ``max_steps``."""
        return self.stop_step is not None


def _check(sparsity: Any, every: Any, eps: Any, window: Any, max_steps: Any, rewind: Any) -> int | None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise ValueError(f"sparsity must be the fraction of eligible weights pruned, in (0, 1), got {sparsity!r}")
    positive_int(every, "every")
    positive_int(max_steps, "max_steps")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window (the FIFO length, paper: {PAPER_WINDOW}) must be an int >= 2, got {window!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1 or math.isnan(eps):
        raise ValueError(f"eps (the mask-distance threshold, paper: {PAPER_EPS}) must be in (0, 1], got {eps!r}")
    if max_steps < every:
        raise ValueError(f"max_steps={max_steps} is smaller than every={every}: no mask would ever be drawn")
    if rewind == "init":
        return 0
    if isinstance(rewind, str) and rewind.startswith("step:") and rewind[5:].isdigit():
        k = int(rewind[5:])
        if k > max_steps:
            raise ValueError(f"rewind step {k} is past max_steps={max_steps}")
        return k
    raise ValueError(f"unknown rewind {rewind!r}; accepted: 'init' or 'step:K' (K an int)")


def _mask_path(run_dir: Path, step: int) -> Path:
    return run_dir / "masks" / f"step_{step:07d}.safetensors"


def find(
    unet: nn.Module,
    dataset: Dataset,
    sparsity: float,
    *,
    run_dir: str | Path,
    every: int = 20,
    eps: float = PAPER_EPS,
    window: int = PAPER_WINDOW,
    max_steps: int = 300,
    rewind: str = "init",
    pattern: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    lr: float | None = None,
    ema: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    task: Any = "diffusion",
    checkpoint_every: int | None = None,
    progress: bool = True,
) -> EarlyBirdResult:
    """Search (or resume searching) for an early-bird ticket of ``unet`` at ``sparsity``; see the module doc.

    ``sparsity``: fraction of eligible weights pruned by the mask, in (0, 1).  ``every``: training steps
    between two masks (the paper draws one per epoch).  ``window``: FIFO length l (>= 2, paper 5);
    ``eps``: stop when max mask distance (normalised Hamming, :func:`mask_distance`) between the newest mask
    and the other ``window - 1`` is < ``eps`` (paper 0.1).  ``max_steps``: give up after this many dense
    steps (the result then holds the last mask, ``stop_step=None``; calling again with a larger ``max_steps``
    continues the search).  ``rewind``: ``"init"`` (theta_0) or ``"step:K"`` (theta_K, the dense trajectory
    at step K, recomputed apart: not in ``steps_trained``).  ``pattern``: an N:M pattern (``"2:4"``) passed
    to :func:`lthdiff.pruners.magnitude`, so the early-bird mask is N:M too.
    The other arguments are those of :func:`lthdiff.training.loop.train`.  Deterministic by ``seed``; resumable.
    """
    rewind_step = _check(sparsity, every, eps, window, max_steps, rewind)
    task_obj = resolve_task(task)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    init_state = {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()}
    config = {
        "method": "early_bird", "sparsity": float(sparsity), "every": every, "eps": float(eps), "window": window,
        "rewind": rewind, "pattern": pattern, "seed": seed, "batch_size": batch_size,
        "lr": lr, "ema": ema, "include": list(include) if include else None,
        "exclude": list(exclude) if exclude else None, "task": task_obj.config(),
        "model_class": type(unet).__name__,
        "model_config": {k: v for k, v in dict(getattr(unet, "config", None) or {}).items() if not k.startswith("_")},
        "dataset": getattr(dataset, "name", type(dataset).__name__), "dataset_size": len(dataset),
        "init_digest": tensors_digest(init_state),
    }
    # max_steps is left out: a search that gave up may be resumed with a larger budget (like IMP's rounds)
    config = {**check_or_write_config(run_dir, config), "max_steps": max_steps}
    train_kw = dict(batch_size=batch_size, lr=lr, seed=seed, ema=ema, task=task_obj, progress=False,
                    checkpoint_every=checkpoint_every or every)
    ckpt = run_dir / "dense" / "ckpt"
    rewind_dir = run_dir / "rewind"
    state_path = run_dir / _STATE
    state = read_json(state_path) if state_path.exists() else {
        "checks": [], "distances": [], "stop_step": None, "sparsity": float(sparsity), "every": every,
        "eps": float(eps), "window": window}
    state["max_steps"] = max_steps
    last_check = state["checks"][-1] if state["checks"] else 0
    state["done"] = state["stop_step"] is not None or last_check + every > max_steps
    template = M.ones(unet, include=include, exclude=exclude)

    def dense(steps: int, checkpoint_dir: Path | None = ckpt) -> nn.Module:
        return train(with_state(unet, init_state), dataset, steps, checkpoint_dir=checkpoint_dir, **train_kw).model

    if not rewind_dir.exists():
        # theta_K is the dense trajectory at step K (training is deterministic by seed); trained apart, without
        # checkpoints, so the search's checkpoint directory never holds a step past its next check
        save_model(dense(rewind_step, None) if rewind_step else with_state(unet, init_state), rewind_dir)

    fifo: list[tuple[int, dict[str, torch.Tensor]]] = [(s, M.load(_mask_path(run_dir, s))[0])
                                                        for s in state["checks"][-window:]]
    bar = progress_bar(total=max_steps, initial=state["checks"][-1] if state["checks"] else 0,
               desc=f"early-bird search ({sparsity:.1%})", disable=not progress)
    while not state["done"]:
        step = (state["checks"][-1] if state["checks"] else 0) + every
        model = dense(step)
        mask = pruners.magnitude(model, sparsity, mask=template, pattern=pattern)
        M.save(_mask_path(run_dir, step), mask, metadata={"step": step})
        fifo = (fifo + [(step, mask)])[-window:]
        if len(fifo) >= 2:
            dist = max(mask_distance(mask, m) for _, m in fifo[:-1])
            state["distances"].append([step, dist])
            bar.set_postfix(distance=f"{dist:.4f}")
            if len(fifo) == window and dist < eps:
                state["stop_step"], state["done"] = step, True
        state["checks"].append(step)
        if step + every > max_steps:
            state["done"] = True
        write_json(state_path, state)  # the check is complete once this is written
        for old in state["checks"][:-window]:  # masks that left the FIFO
            _mask_path(run_dir, old).unlink(missing_ok=True)
        bar.update(step - bar.n)
    bar.close()
    if not state["checks"]:
        raise RuntimeError(f"no mask was drawn in {run_dir}; the search state is inconsistent: remove {state_path}")
    write_json(state_path, state)
    last = state["checks"][-1]
    mask = fifo[-1][1] if fifo and fifo[-1][0] == last else M.load(_mask_path(run_dir, last))[0]
    return EarlyBirdResult(mask=mask, stop_step=state["stop_step"], steps_trained=last,
                           distances=[(int(s), float(d)) for s, d in state["distances"]], run_dir=run_dir,
                           rewind_dir=rewind_dir, config=config, task=task_obj)


def retrain(result: EarlyBirdResult, dataset: Dataset, steps: int, *, progress: bool = True,
            checkpoint_every: int = 200) -> RoundInfo:
    """Train the early-bird ticket (``result.mask`` on the rewind weights) for ``steps`` steps.

    Written to ``result.run_dir / "ticket"`` like an IMP round (mask, model, EMA, losses, summary with
    ``stop_step`` and ``search_steps``) with the search's training arguments; resumable, and a finished
    ticket is returned without training.  Returns its :class:`lthdiff.lottery.runs.RoundInfo`.
    """
    positive_int(steps, "steps")
    d = result.run_dir / "ticket"
    if (d / "summary.json").exists():
        done = read_json(d / "summary.json")
        if done.get("search_steps") != result.steps_trained or done.get("steps") != steps:
            raise ValueError(f"{d} holds a ticket from the mask at step {done.get('search_steps')} trained "
                             f"{done.get('steps')} steps, not the mask at step {result.steps_trained} for {steps} "
                             "steps (the search was continued since?); remove that folder to retrain")
    else:
        cfg = result.config
        model = load_model(result.rewind_dir)
        res = train(model, dataset, steps, checkpoint_dir=d / "ckpt", mask=result.mask, batch_size=cfg["batch_size"],
                    lr=cfg["lr"], seed=cfg["seed"], ema=cfg["ema"], task=result.task,
                    checkpoint_every=checkpoint_every, progress=progress, desc="early-bird ticket")
        write_round(d, res, result.mask, 1, extra={"variant": "early_bird", "stop_step": result.stop_step,
                                                   "search_steps": result.steps_trained,
                                                   "target_sparsity": cfg["sparsity"], "rewind": cfg["rewind"]})
    return RoundInfo.from_dir(d, variant="early_bird")
