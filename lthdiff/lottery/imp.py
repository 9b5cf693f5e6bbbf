"""Iterative magnitude pruning (IMP) with rewinding: finding lottery tickets.

Frankle & Carbin 2018 ("The Lottery Ticket Hypothesis", Sec. 1, steps 1-4, iterated as in
Sec. 2): train theta_0 for j steps to theta_j, prune p% of the surviving weights by magnitude
(mask m), reset the survivors to theta_0 (ticket f(x; m * theta_0)), retrain, repeat; after r
rounds the sparsity is 1 - (1 - p)^r.  Frankle et al. 2019 ("Stabilizing the Lottery Ticket
Hypothesis", arXiv 1903.01611, Sec. 3 "late resetting"): reset instead to theta_k, the weights
after k training steps, and retrain for the remaining T - k steps (as open_lth does).

Vocabulary: round 0 trains the dense model; round r >= 1 prunes the weights trained in round
r - 1, rewinds and retrains.  Controls ("branches" in open_lth) train at the same sparsity:
``random_reinit`` keeps the ticket's mask with a fresh random initialisation, ``random_mask``
keeps the rewind weights with a random mask of the same per-layer sparsity, ``one_shot`` prunes
the dense (round 0) weights straight to the round's sparsity, rewinds and retrains: the one-shot
pruning that Frankle & Carbin 2018 (Sec. 2, Fig. 4) compare with iterative pruning.

Every round is written to ``run_dir/round_XX/`` (mask, model, EMA model, losses, summary); a
round is complete when its ``summary.json`` exists.  Training inside a round checkpoints, so a
killed process resumes where it stopped, and the result equals an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from lthdiff import masks as M
from lthdiff import pruners
from .controls import CONTROLS, RoundContext
from lthdiff.store.io import tensors_digest
from lthdiff.models.unets import load_model, save_model, with_state
from .network import Job, on_main, train_network
from .runs import IMPResult, RegistryLog, RoundInfo, check_or_write_config, copy_network, network_dir
from lthdiff.runtime import progress_bar
from lthdiff.training.tasks import resolve_task

__all__ = ["run_imp", "sparsity_schedule", "geometric_schedule", "imp_allocation"]

DEFAULT_CONTROLS = ("random_reinit", "random_mask")
Allocation = Callable[..., Mapping[str, float]]


def sparsity_schedule(rounds: int, prune_per_round: float) -> list[float]:
    """Overall sparsity after each pruning round: ``1 - (1 - p)^r`` (Frankle & Carbin 2018, Sec. 2)."""
    if not 0 < prune_per_round < 1:
        raise ValueError(f"prune_per_round must be in (0, 1), got {prune_per_round!r}")
    return [1 - (1 - prune_per_round) ** r for r in range(1, rounds + 1)]


def geometric_schedule(target: float, rounds: int) -> list[float]:
    """Overall sparsity after each of ``rounds`` rounds reaching ``target``: ``1 - (1 - target)^(r / rounds)``,
    the same pruning ratio every round (the ``sparsity_schedule`` of :func:`run_imp`)."""
    if not 0 <= target < 1:
        raise ValueError(f"target must be in [0, 1), got {target!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    return [1 - (1 - target) ** (r / rounds) for r in range(1, rounds + 1)]


def imp_allocation(rule: Any) -> Any:
    """The ``allocation`` argument of :func:`run_imp` for a rule: ``"global"`` is the plain global ranking (None)."""
    return None if rule == "global" else rule


def _parse_rewind(rewind: str, steps_per_round: int) -> int | None:
    """``"init"`` -> 0, ``"step:K"`` -> K, ``"none"`` -> None (fine-tune the trained weights)."""
    if rewind == "init":
        return 0
    if rewind == "none":
        return None
    if isinstance(rewind, str) and rewind.startswith("step:") and rewind[5:].isdigit():
        k = int(rewind[5:])
        if not 0 <= k < steps_per_round:
            raise ValueError(f"rewind step {k} must be in [0, steps_per_round={steps_per_round})")
        return k
    raise ValueError(f"unknown rewind {rewind!r}; accepted: 'init', 'step:K' (K an int) or 'none'")


def _resolve_allocation(allocation: Any, r: int) -> Any:
    if isinstance(allocation, (list, tuple)):
        return allocation[min(r - 1, len(allocation) - 1)]
    return allocation


def _layer_sparsity(allocation: Any, model: nn.Module, target: float, mask: Mapping[str, torch.Tensor],
                    include: Any, exclude: Any) -> dict[str, float] | None:
    if allocation is None or allocation == "global":
        return None
    if isinstance(allocation, Mapping):
        return dict(allocation)
    if isinstance(allocation, str):
        from lthdiff.pruners.allocation import allocate

        return allocate(allocation, model, target, mask=mask, include=include, exclude=exclude)
    return dict(allocation(model, target, mask=mask))


def run_imp(
    unet: nn.Module,
    dataset: Dataset,
    *,
    rounds: int,
    steps_per_round: int,
    run_dir: str | Path,
    prune_per_round: float = 0.2,
    sparsity_schedule_: Sequence[float] | None = None,
    rewind: str = "init",
    scope: str = "global",
    allocation: Any = None,
    seed: int = 0,
    controls: Sequence[str] = DEFAULT_CONTROLS,
    batch_size: int = 64,
    lr: float | None = None,
    ema: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    task: Any = "diffusion",
    checkpoint_every: int = 200,
    registry: Any = None,
    progress: bool = True,
    on_round: Callable[[RoundInfo], None] | None = None,
    pattern: str | None = None,
    **kwargs: Any,
) -> IMPResult:
    """Run (or resume) IMP for ``rounds`` pruning rounds after dense round 0; see the module doc.

    ``prune_per_round`` (fraction of surviving weights pruned per round) or an explicit
    ``sparsity_schedule`` (overall sparsity after each round, increasing, each in [0, 1)).
    ``rewind``: ``"init"`` (Frankle & Carbin 2018), ``"step:K"`` (Frankle et al. 2019), or ``"none"``.
    ``allocation``: None/"global" (global magnitude ranking), a rule name of
    :mod:`lthdiff.pruners.allocation` (``"uniform"``, ``"erk"``, ``"jiang2023"``), a dict of
    per-layer sparsities, a callable, or a list of those, one per round.
    ``registry``: an :class:`lthdiff.tracking.registry.Registry` or a database path; each round is logged.
    ``pattern``: an N:M pattern (``"2:4"``) for :func:`lthdiff.pruners.magnitude`; every round's ticket
    (and the ``one_shot`` control) keeps it, the targets then count over the pattern-eligible weights and
    must be >= 1 - N/M.  ``random_mask`` keeps only the per-layer sparsity (random positions, no pattern);
    ``random_reinit`` keeps the ticket's mask.  A pattern requires ``allocation=None``.
    """
    schedule = kwargs.pop("sparsity_schedule", sparsity_schedule_)
    if kwargs:
        raise TypeError(f"run_imp got unexpected arguments: {sorted(kwargs)}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an int >= 0, got {rounds!r}")
    if isinstance(steps_per_round, bool) or not isinstance(steps_per_round, int) or steps_per_round <= 0:
        raise ValueError(f"steps_per_round must be a positive int, got {steps_per_round!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"unknown scope {scope!r}; accepted: 'global', 'layer'")
    bad = [c for c in controls if c not in CONTROLS]
    if bad:
        raise ValueError(f"unknown controls {bad}; accepted: {list(CONTROLS)}")
    if schedule is not None:
        schedule = [float(s) for s in schedule]
        if len(schedule) < rounds:
            raise ValueError(f"sparsity_schedule has {len(schedule)} entries but rounds={rounds}")
        if any(not 0 <= s < 1 for s in schedule) or any(b < a for a, b in zip(schedule, schedule[1:])):
            raise ValueError(f"sparsity_schedule must be non-decreasing values in [0, 1), got {schedule}")
        targets = schedule[:rounds]
    else:
        targets = sparsity_schedule(rounds, prune_per_round)
    rewind_step = _parse_rewind(rewind, steps_per_round)
    if pattern is not None:
        M.parse_nm(pattern)
        if allocation not in (None, "global"):
            raise ValueError(f"pattern={pattern!r} works with the global ranking only; got allocation={allocation!r} "
                             "(accepted with a pattern: None or 'global')")
    task_obj = resolve_task(task)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    init_state = {k: v.detach().cpu().clone() for k, v in unet.state_dict().items()}
    config = {
        "method": "imp", "rounds": rounds, "steps_per_round": steps_per_round,
        "prune_per_round": None if schedule is not None else prune_per_round,
        "sparsity_schedule": schedule, "rewind": rewind, "scope": scope,
        "allocation": _describe(allocation),
        "seed": seed, "controls": list(controls), "batch_size": batch_size, "lr": lr, "ema": ema,
        "include": list(include) if include else None, "exclude": list(exclude) if exclude else None,
        "task": task_obj.config(), "model_class": type(unet).__name__,
        # diffusers' private keys (e.g. _use_default_values) change order between processes
        "model_config": {k: v for k, v in dict(getattr(unet, "config", None) or getattr(unet, "lthdiff_spec", {})
                                               or {}).items() if not k.startswith("_")},
        "dataset": getattr(dataset, "name", type(dataset).__name__), "dataset_size": len(dataset),
        "init_digest": tensors_digest(init_state),
    }
    if pattern is not None:  # only then, so runs without one keep the config (and hash) they always had
        config["pattern"] = pattern
    config = check_or_write_config(run_dir, config)
    log = RegistryLog(registry, run_dir, config)

    rewind_dir = run_dir / "rewind"
    train_kw = dict(batch_size=batch_size, lr=lr, seed=seed, ema=ema, task=task_obj,
                    checkpoint_every=checkpoint_every, progress=progress)

    def prune(model: nn.Module, target: float, base: Mapping[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
        # One rule for the ticket (from the previous round's mask) and the one-shot control (from a full mask).
        ls = _layer_sparsity(_resolve_allocation(allocation, r), model, target, base, include, exclude)
        return pruners.magnitude(model, target, scope="layer" if ls is not None else scope, mask=base,
                                 layer_sparsity=ls, pattern=pattern)

    bar = progress_bar(total=rounds + 1, desc="IMP rounds", disable=not progress)
    for r in range(rounds + 1):
        rdir = network_dir(run_dir, r)
        if (rdir / "summary.json").exists() and _controls_done(rdir, r, controls):
            bar.update(1)
            continue
        target = 0.0 if r == 0 else targets[r - 1]
        if r == 0:
            mask = M.ones(unet, include=include, exclude=exclude)
            # Late rewinding keeps theta_K on the way (saved before training goes past K, so a run killed
            # at any later step resumes without K again).
            job = Job(with_state(unet, init_state), mask, steps_per_round, rdir, 0, desc="round 0 (dense)",
                      extra={"target_sparsity": 0.0}, snapshots={rewind_step: rewind_dir} if rewind_step else {})
            train_network(job, dataset, **train_kw)
            if rewind_step == 0 and not rewind_dir.exists():
                on_main(save_model, with_state(unet, init_state), rewind_dir)
        else:
            prev = RoundInfo.from_dir(run_dir / f"round_{r - 1:02d}")
            trained = prev.load_model(ema=False)
            prev_mask = prev.load_mask()
            mask = prune(trained, target, prev_mask, r)
            steps = steps_per_round - (rewind_step or 0)
            if not (rdir / "summary.json").exists():
                start = trained if rewind_step is None else load_model(rewind_dir)
                train_network(Job(start, mask, steps, rdir, r, desc=f"round {r} ticket ({target:.1%})",
                                  extra={"target_sparsity": target, "rewind": rewind}), dataset, **train_kw)
            ctx = RoundContext(round=r, target=target, mask=mask, trained=trained, template=unet, seed=seed,
                               run_dir=run_dir, rewind_dir=rewind_dir, rewind_step=rewind_step, prune=prune,
                               include=include, exclude=exclude)
            for name in controls:
                cdir = network_dir(run_dir, r, name)
                if (cdir / "summary.json").exists():
                    continue
                plan = CONTROLS[name].start_and_mask(ctx)
                if plan is None:  # the control is this round's ticket (one-shot in round 1): copy it
                    on_main(copy_network, rdir, cdir, {"variant": name, "same_as": "ticket"})
                    continue
                start, cmask = plan
                train_network(Job(start, cmask, steps, cdir, r, variant=name, desc=f"round {r} {name}",
                                  extra={"target_sparsity": target}), dataset, **train_kw)
        info = RoundInfo.from_dir(rdir)
        from lthdiff.tracking.tb import log_round as log_tb_round

        log_tb_round(run_dir, info)  # loss curves, sparsity, per-block sparsity (main process only)
        log(info)
        if on_round is not None:
            on_round(info)
        bar.update(1)
    bar.close()
    log.completed()
    return IMPResult.load(run_dir)


def _describe(allocation: Any) -> Any:
    """A JSON-stable description of an allocation (callables by qualified name, not repr)."""
    if isinstance(allocation, (list, tuple)):
        return [_describe(a) for a in allocation]
    if callable(allocation):
        fn = getattr(allocation, "func", allocation)
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    return allocation


def _controls_done(rdir: Path, r: int, controls: Sequence[str]) -> bool:
    return r == 0 or all((network_dir(rdir.parent, r, c) / "summary.json").exists() for c in controls)


