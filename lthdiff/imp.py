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

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import masks as M
from . import pruners
from .io import read_json, tensors_digest, write_json
from .models import load_model, save_model
from .train import TrainResult, _mix, process_state, resolve_task, train

__all__ = ["run_imp", "IMPResult", "RoundInfo", "rollback", "sparsity_schedule", "CONTROLS"]

CONTROLS = ("random_reinit", "random_mask", "one_shot")
DEFAULT_CONTROLS = ("random_reinit", "random_mask")
# Arguments that may change between calls on the same run_dir: extending a run (more rounds, or
# a control added later, e.g. by notebook 04) is natural; completed networks are never retrained.
_MUTABLE_ARGS = {"rounds", "controls"}

Allocation = Callable[..., Mapping[str, float]]


@dataclass
class RoundInfo:
    """One trained network of an IMP run: the ticket of a round, or one of its controls."""

    round: int
    sparsity: float
    dir: Path
    final_loss: float
    seconds: float
    variant: str = "ticket"
    controls: dict[str, "RoundInfo"] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_path(self) -> Path:
        return self.dir / "mask.safetensors"

    @property
    def model_path(self) -> Path:
        return self.dir / "model"

    @property
    def ema_path(self) -> Path:
        return self.dir / "ema"

    def load_model(self, ema: bool = True) -> nn.Module:
        """The trained network of this round (EMA weights by default, if saved)."""
        return load_model(self.ema_path if ema and self.ema_path.exists() else self.model_path)

    def load_mask(self) -> dict[str, torch.Tensor]:
        return M.load(self.mask_path)[0]

    @classmethod
    def from_dir(cls, d: Path, variant: str = "ticket") -> "RoundInfo":
        s = read_json(d / "summary.json")
        info = cls(round=s["round"], sparsity=s["sparsity"], dir=d, final_loss=s["final_loss"],
                   seconds=s["seconds"], variant=variant, summary=s)
        cdir = d / "controls"
        if cdir.is_dir():
            for c in sorted(cdir.iterdir()):
                if (c / "summary.json").exists():
                    info.controls[c.name] = cls.from_dir(c, variant=c.name)
        return info


@dataclass
class IMPResult:
    """The completed rounds of an IMP run directory."""

    run_dir: Path
    config: dict[str, Any]
    rounds: list[RoundInfo]

    @classmethod
    def load(cls, run_dir: str | Path) -> "IMPResult":
        """Read a run directory written by :func:`run_imp` (complete rounds only)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(f"{run_dir} is not an IMP run directory (no config.json)")
        rounds = [RoundInfo.from_dir(d) for d in sorted(run_dir.glob("round_[0-9][0-9]"))
                  if (d / "summary.json").exists()]
        return cls(run_dir=run_dir, config=read_json(run_dir / "config.json"), rounds=rounds)

    def table(self):
        """A pandas DataFrame: one row per (round, variant) with sparsity and final loss."""
        import pandas as pd

        rows = []
        for r in self.rounds:
            for info in [r, *r.controls.values()]:
                rows.append({"round": r.round, "variant": info.variant, "sparsity": info.sparsity,
                             "final_loss": info.final_loss, "seconds": info.seconds})
        return pd.DataFrame(rows)

    @property
    def final(self) -> RoundInfo:
        return self.rounds[-1]


def sparsity_schedule(rounds: int, prune_per_round: float) -> list[float]:
    """Overall sparsity after each pruning round: ``1 - (1 - p)^r`` (Frankle & Carbin 2018, Sec. 2)."""
    if not 0 < prune_per_round < 1:
        raise ValueError(f"prune_per_round must be in (0, 1), got {prune_per_round!r}")
    return [1 - (1 - prune_per_round) ** r for r in range(1, rounds + 1)]


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
        from .pruners.allocation import allocate

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
    **kwargs: Any,
) -> IMPResult:
    """Run (or resume) IMP for ``rounds`` pruning rounds after dense round 0; see the module doc.

    ``prune_per_round`` (fraction of surviving weights pruned per round) or an explicit
    ``sparsity_schedule`` (overall sparsity after each round, increasing, each in [0, 1)).
    ``rewind``: ``"init"`` (Frankle & Carbin 2018), ``"step:K"`` (Frankle et al. 2019), or ``"none"``.
    ``allocation``: None/"global" (global magnitude ranking), a rule name of
    :mod:`lthdiff.pruners.allocation` (``"uniform"``, ``"erk"``, ``"jiang2023"``), a dict of
    per-layer sparsities, a callable, or a list of those, one per round.
    ``registry``: an :class:`lthdiff.registry.Registry` or a database path; each round is logged.
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
    config = _check_or_write_config(run_dir, config)
    exp_id, reg = _registry_experiment(registry, run_dir, config)

    rewind_dir = run_dir / "rewind"
    train_kw = dict(batch_size=batch_size, lr=lr, seed=seed, ema=ema, task=task_obj,
                    checkpoint_every=checkpoint_every, progress=progress)

    def prune(model: nn.Module, target: float, base: Mapping[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
        # One rule for the ticket (from the previous round's mask) and the one-shot control (from a full mask).
        ls = _layer_sparsity(_resolve_allocation(allocation, r), model, target, base, include, exclude)
        return pruners.magnitude(model, target, scope="layer" if ls is not None else scope, mask=base,
                                 layer_sparsity=ls)

    bar = tqdm(total=rounds + 1, desc="IMP rounds", disable=not progress)
    for r in range(rounds + 1):
        rdir = run_dir / f"round_{r:02d}"
        if (rdir / "summary.json").exists() and _controls_done(rdir, r, controls):
            bar.update(1)
            continue
        target = 0.0 if r == 0 else targets[r - 1]
        if r == 0:
            mask = M.ones(unet, include=include, exclude=exclude)
            if not (rdir / "summary.json").exists():
                model = _fresh(unet, init_state)
                if rewind_step:  # late rewinding: stop at step K, keep theta_K, continue the same run
                    res = train(model, dataset, rewind_step, checkpoint_dir=rdir / "ckpt", mask=mask,
                                desc="round 0 (to rewind step)", **train_kw)
                    if not rewind_dir.exists():
                        _on_main(save_model, res.model, rewind_dir)
                res = train(model, dataset, steps_per_round, checkpoint_dir=rdir / "ckpt", mask=mask,
                            desc="round 0 (dense)", **train_kw)
                if rewind_step == 0 and not rewind_dir.exists():
                    _on_main(save_model, _fresh(unet, init_state), rewind_dir)
                _on_main(_finish, rdir, res, mask, r, extra={"target_sparsity": 0.0})
        else:
            prev = RoundInfo.from_dir(run_dir / f"round_{r - 1:02d}")
            trained = prev.load_model(ema=False)
            prev_mask = prev.load_mask()
            mask = prune(trained, target, prev_mask, r)
            steps = steps_per_round - (rewind_step or 0)
            if not (rdir / "summary.json").exists():
                start = trained if rewind_step is None else load_model(rewind_dir)
                res = train(start, dataset, steps, checkpoint_dir=rdir / "ckpt", mask=mask,
                            desc=f"round {r} ticket ({target:.1%})", **train_kw)
                _on_main(_finish, rdir, res, mask, r, extra={"target_sparsity": target, "rewind": rewind})
            for name in controls:
                cdir = rdir / "controls" / name
                if (cdir / "summary.json").exists():
                    continue
                if name == "one_shot" and r == 1:
                    # Round 1 prunes the dense weights from a full mask: one-shot *is* the ticket.
                    _on_main(_copy_network, rdir, cdir, {"variant": name, "same_as": "ticket"})
                    continue
                if name == "random_reinit":
                    cmask, start = mask, _reinit(unet, _mix(seed, r, 0x5EED))
                elif name == "one_shot":
                    dense = RoundInfo.from_dir(run_dir / "round_00").load_model(ema=False)
                    cmask = prune(dense, target, M.ones(dense, include=include, exclude=exclude), r)
                    start = dense if rewind_step is None else load_model(rewind_dir)
                else:
                    cmask = pruners.random_like(mask, seed=_mix(seed, r, 0x3A5C))
                    start = trained if rewind_step is None else load_model(rewind_dir)
                res = train(start, dataset, steps, checkpoint_dir=cdir / "ckpt", mask=cmask,
                            desc=f"round {r} {name}", **train_kw)
                _on_main(_finish, cdir, res, cmask, r, extra={"target_sparsity": target, "variant": name})
        info = RoundInfo.from_dir(rdir)
        from .tb import log_round as _tb_log_round

        _tb_log_round(run_dir, info)  # loss curves, sparsity, per-block sparsity (main process only)
        if reg is not None:
            _log_round(reg, exp_id, info)
        if on_round is not None:
            on_round(info)
        bar.update(1)
    bar.close()
    if reg is not None:
        reg.set_status(exp_id, "completed")
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
    return r == 0 or all((rdir / "controls" / c / "summary.json").exists() for c in controls)


def _fresh(template: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    import copy

    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model


def _reinit(template: nn.Module, seed: int) -> nn.Module:
    """The same architecture with a new random initialisation (the random-reinit control)."""
    import copy

    model = copy.deepcopy(template)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return model


def _on_main(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Under ``accelerate launch`` every process runs IMP in step; only the main one writes a
    round's files, and the others wait so they read the finished round, not a half-written one."""
    state = process_state()
    if state.is_main_process:
        fn(*args, **kwargs)
    state.wait_for_everyone()


def _finish(d: Path, res: TrainResult, mask: Mapping[str, torch.Tensor], r: int, extra: dict[str, Any]) -> None:
    """Write a round's artefacts; summary.json goes last because it marks the round complete."""
    M.save(d / "mask.safetensors", mask, metadata={"round": r})
    save_model(res.model, d / "model")
    if res.ema is not None:
        save_model(res.ema, d / "ema")
    write_json(d / "losses.json", res.losses)
    tail = res.losses[-max(1, min(50, len(res.losses) // 10)):]
    rep = M.report(mask, by="layer")
    summary = {"round": r, "sparsity": M.sparsity(mask), "final_loss": sum(tail) / len(tail),
               "steps": res.steps, "seconds": res.seconds,
               "layer_sparsity": dict(zip(rep.index if rep.index.dtype == object else rep["layer"],
                                          rep["sparsity"].tolist())),
               **extra}
    write_json(d / "summary.json", summary)
    shutil.rmtree(d / "ckpt", ignore_errors=True)


def _copy_network(src: Path, dst: Path, extra: dict[str, Any]) -> None:
    """Copy a finished network's artefacts (summary last, as it marks completion)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("mask.safetensors", "losses.json"):
        shutil.copy2(src / name, dst / name)
    for name in ("model", "ema"):
        if (src / name).exists():
            shutil.rmtree(dst / name, ignore_errors=True)
            shutil.copytree(src / name, dst / name)
    write_json(dst / "summary.json", {**read_json(src / "summary.json"), **extra})


def _check_or_write_config(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.exists():
        write_json(path, config)
        return config
    import json

    saved = read_json(path)
    fresh = json.loads(json.dumps(config, default=str))
    diff = {k for k in set(saved) | set(fresh) if saved.get(k) != fresh.get(k) and k not in _MUTABLE_ARGS}
    if diff:
        detail = "; ".join(f"{k}: stored {saved.get(k)!r}, given {fresh.get(k)!r}" for k in sorted(diff))
        raise ValueError(f"{run_dir} holds an IMP run with different arguments ({detail}). "
                         "Use the same arguments to resume, or a new run_dir.")
    if any(saved.get(k) != fresh.get(k) for k in _MUTABLE_ARGS):
        write_json(path, fresh)
    return fresh


def _registry_experiment(registry: Any, run_dir: Path, config: dict[str, Any]):
    if registry is None or not process_state().is_main_process:  # one row per experiment, not per process
        return None, None
    from .registry import Registry

    reg = registry if isinstance(registry, Registry) else Registry(registry)
    exp = reg.find_experiment(run_dir)
    if exp is None:
        model_id = reg.get_or_create_model(config["model_class"], config["model_config"])
        ds_id = reg.get_or_create_dataset(config["dataset"], image_size=config["model_config"].get("sample_size"))
        exp = reg.start_experiment(model_id=model_id, dataset_id=ds_id, method="imp", config=config,
                                   seed=config["seed"], run_dir=run_dir)
    else:  # a resumed (or extended) run is running again until its last round is written
        reg.set_status(exp, "running")
    return exp, reg


def _log_round(reg: Any, exp_id: int, info: RoundInfo) -> None:
    metrics = {"final_loss": info.final_loss, "sparsity": info.sparsity}
    reg.log_round(exp_id, info.round, info.summary.get("layer_sparsity", {}), metrics)
    for name, c in info.controls.items():
        reg.log_metrics(exp_id, info.round, {"final_loss": c.final_loss}, variant=name)


def rollback(run_dir: str | Path, round: int) -> Path:
    """Make ``round`` the last completed round of ``run_dir``, keeping later rounds in a branch.

    Rounds after ``round`` move to ``run_dir/branches/branch_NN/`` (nothing is deleted); calling
    :func:`run_imp` again with the same arguments continues from ``round``'s model and mask.
    Returns the branch folder.
    """
    run_dir = Path(run_dir)
    done = IMPResult.load(run_dir).rounds
    if not any(r.round == round for r in done):
        raise ValueError(f"round {round} is not a completed round of {run_dir}; completed: "
                         f"{[r.round for r in done]}")
    later = sorted(d for d in run_dir.glob("round_[0-9][0-9]") if int(d.name[6:]) > round)
    n = len(list((run_dir / "branches").glob("branch_*"))) if (run_dir / "branches").exists() else 0
    branch = run_dir / "branches" / f"branch_{n:02d}"
    branch.mkdir(parents=True)
    for d in later:
        d.rename(branch / d.name)
    write_json(branch / "info.json", {"rolled_back_to": round, "moved": [d.name for d in later],
                                      "time": time.time()})
    return branch
