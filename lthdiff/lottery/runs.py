"""The run directory: its one owner.  Everything that reads or writes a run's files goes through here.

Layout of an IMP run (written by :func:`lthdiff.lottery.imp.run_imp`, the pipeline and the report)::

    run_dir/config.json            the arguments (checked on resume: check_or_write_config)
    run_dir/rewind/                the rewind weights theta_k
    run_dir/round_XX/              one round: mask.safetensors, model/, ema/, losses.json,
                                   summary.json (written last: marks the round complete),
                                   metrics.json (FID/KID, written by the pipeline), samples.png
    run_dir/round_XX/controls/NAME/   a control trained at the round's sparsity, same files
    run_dir/branches/branch_NN/    rounds moved aside by rollback
    run_dir/<chain>/round_XX/      a network of another chain of the same seed (a study's late / continue arms)
    run_dir/round_00_<name>/       a snapshot of round 0 on the way (half: T/2, theta_k: K) or a network built on
                                   it (continued to 1.5 T, half_retrained)
    run_dir/efficiency.json, pipeline.json, report.html

Vocabulary: a *round* is one prune-rewind-retrain step (round 0 trains the dense model); a
*ticket* is the round's mask with its rewind weights; :func:`final_loss` is the one definition of a
network's final training loss.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from lthdiff import masks as M
from lthdiff.store.io import read_json, write_json
from lthdiff.models.unets import load_model, save_model
from lthdiff.runtime import process_state

__all__ = ["network_dir", "snapshot_dir", "RoundInfo", "IMPResult", "MUTABLE_ARGS", "final_loss", "run_tag", "read_losses", "read_metrics", "write_metrics",
           "write_round", "copy_network", "check_or_write_config", "rollback", "RegistryLog"]

# Arguments that may change between calls on the same run_dir: extending a run (more rounds, or
# a control added later, e.g. by notebook 04) is natural; completed networks are never retrained.
MUTABLE_ARGS = {"rounds", "controls"}


def network_dir(run_dir: str | Path, round: int, variant: str = "ticket", chain: str = "ticket") -> Path:
    """The folder of one network: ``round_XX/`` (a ticket), ``round_XX/controls/NAME/`` (a control of it), or
    ``<chain>/round_XX/`` (a network of another chain: ``late``, ``continue``)."""
    base = Path(run_dir) / (f"round_{round:02d}" if chain == "ticket" else f"{chain}/round_{round:02d}")
    return base if variant in ("ticket", chain) else base / "controls" / variant


def snapshot_dir(run_dir: str | Path, name: str) -> Path:
    """``round_00_<name>/``: a snapshot of the dense round on the way, or a network derived from it."""
    return Path(run_dir) / f"round_00_{name}"


def final_loss(losses: Sequence[float]) -> float:
    """A network's final training loss: the mean of the last 10 % of its per-step losses (at least 1, at most 50).

    The one definition used by round summaries, tables, notebooks and the report, so numbers agree.
    """
    losses = list(losses)
    if not losses:
        raise ValueError("final_loss needs at least one loss value, got an empty list")
    tail = losses[-max(1, min(50, len(losses) // 10)):]
    return sum(tail) / len(tail)


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        init = f", loss at init {self.loss_at_init:.3g}" if self.loss_at_init is not None else ""
        ctrl = f", controls: {', '.join(self.controls)}" if self.controls else ""
        return (f"RoundInfo(round {self.round} {self.variant}, sparsity {self.sparsity:.1%}, final loss "
                f"{self.final_loss:.3g}{init}, {self.seconds:.0f} s{ctrl})")

    @property
    def loss_at_init(self) -> float | None:
        """Training loss of the network's start weights before training (:func:`lthdiff.evaluation.analysis.loss_at_start`),
        None for runs written before it was recorded."""
        v = self.summary.get("loss_at_init")
        return float(v) if isinstance(v, (int, float)) else None

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


@dataclass(repr=False)
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
                             "final_loss": info.final_loss,
                             **({"loss_at_init": info.loss_at_init} if info.loss_at_init is not None else {}),
                             "seconds": info.seconds})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        t = self.table()
        head = (f"IMPResult({self.run_dir}: {len(self.rounds)} rounds, {len(t)} networks, "
                f"controls {list(self.config.get('controls') or [])})")
        if t.empty:
            return head
        return head + "\n" + t.to_string(index=False, float_format=lambda v: f"{v:.3g}")

    def _repr_html_(self) -> str:
        return (f"<p><b>IMPResult</b> <code>{self.run_dir}</code>: {len(self.rounds)} rounds</p>"
                + self.table().to_html(index=False, float_format=lambda v: f"{v:.3g}"))

    @property
    def final(self) -> RoundInfo:
        return self.rounds[-1]


def run_tag(description: Mapping[str, Any]) -> str:
    """8 hex digits naming a run by its description (sorted JSON, SHA-256): the same parameters find the same run_dir."""
    import hashlib

    return hashlib.sha256(json.dumps(dict(description), sort_keys=True).encode()).hexdigest()[:8]


def read_losses(network: "RoundInfo | str | Path") -> list[float]:
    """Per-step training losses of a network (a :class:`RoundInfo` or its folder); [] when none were saved."""
    d = network.dir if isinstance(network, RoundInfo) else Path(network)
    path = d / "losses.json"
    data = read_json(path) if path.exists() else []
    return list(data) if isinstance(data, list) else []  # a foreign file is "no losses", not a crash


def read_metrics(directory: str | os.PathLike) -> dict[str, float]:
    """Numeric metrics in ``directory/metrics.json``: either ``{metric: value}`` or
    ``{"metrics": {metric: value}, "settings": ..., "extractor": ...}`` (as the pipeline writes)."""
    path = Path(directory) / "metrics.json"
    if not path.exists():
        return {}
    data = read_json(path)
    if isinstance(data, Mapping) and isinstance(data.get("metrics"), Mapping):
        paired = data.get("paired") if isinstance(data.get("paired"), Mapping) else {}
        data = {**data["metrics"], **(paired.get("metrics") or {})}  # + SSIM/PSNR/perceptual vs the dense model
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a JSON object {{metric: value}}, got {type(data).__name__}")
    return {str(k): float(v) for k, v in data.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_metrics(directory: str | Path, metrics: Mapping[str, Any], *, settings: Mapping[str, Any] | None = None,
                  extractor: Any = None, paired: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``directory/metrics.json`` in the one format :func:`read_metrics` reads; returns what was written.

    ``paired``: the network's fidelity to the dense model (:func:`lthdiff.evaluation.metrics.paired_fidelity`), if scored.
    """
    payload = {"settings": dict(settings or {}), "metrics": dict(metrics), "extractor": extractor}
    if paired is not None:
        payload["paired"] = dict(paired)
    write_json(Path(directory) / "metrics.json", payload)
    return payload


def write_round(d: Path, res: Any, mask: Mapping[str, torch.Tensor], r: int, extra: dict[str, Any],
                keep_checkpoint: bool = False) -> None:
    """Write a round's artefacts (``res`` is a :class:`lthdiff.training.loop.TrainResult`); summary.json goes
    last because it marks the round complete.  ``keep_checkpoint`` keeps ``d/ckpt`` (optimizer state
    included) for a network that another one continues (a study's dense network, continued to 1.5 T)."""
    M.save(d / "mask.safetensors", mask, metadata={"round": r})
    save_model(res.model, d / "model")
    if res.ema is not None:
        save_model(res.ema, d / "ema")
    write_json(d / "losses.json", res.losses)
    rep = M.report(mask, by="layer")
    summary = {"round": r, "sparsity": M.sparsity(mask), "final_loss": final_loss(res.losses),
               "steps": res.steps, "seconds": res.seconds,
               "layer_sparsity": dict(zip(rep.index if rep.index.dtype == object else rep["layer"],
                                          rep["sparsity"].tolist())),
               **extra}
    write_json(d / "summary.json", summary)
    if not keep_checkpoint:
        shutil.rmtree(d / "ckpt", ignore_errors=True)


def copy_network(src: Path, dst: Path, extra: dict[str, Any]) -> None:
    """Copy a finished network's artefacts (summary last, as it marks completion)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("mask.safetensors", "losses.json"):
        shutil.copy2(src / name, dst / name)
    for name in ("model", "ema"):
        if (src / name).exists():
            shutil.rmtree(dst / name, ignore_errors=True)
            shutil.copytree(src / name, dst / name)
    write_json(dst / "summary.json", {**read_json(src / "summary.json"), **extra})


def check_or_write_config(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Write ``config.json`` for a new run, or check that a resumed run was started with the same
    arguments (only :data:`MUTABLE_ARGS` may change); returns the config as stored."""
    path = run_dir / "config.json"
    if not path.exists():
        write_json(path, config)
        return config
    saved = read_json(path)
    fresh = json.loads(json.dumps(config, default=str))
    diff = {k for k in set(saved) | set(fresh) if saved.get(k) != fresh.get(k) and k not in MUTABLE_ARGS}
    if diff:
        detail = "; ".join(f"{k}: stored {saved.get(k)!r}, given {fresh.get(k)!r}" for k in sorted(diff))
        raise ValueError(f"{run_dir} holds an IMP run with different arguments ({detail}). "
                         "Use the same arguments to resume, or a new run_dir.")
    if any(saved.get(k) != fresh.get(k) for k in MUTABLE_ARGS):
        write_json(path, fresh)
    return fresh


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


class RegistryLog:
    """The one writer of the experiment registry (:class:`lthdiff.tracking.registry.Registry`) for a run directory.

    Every registry row a run produces goes through here: the experiment (created on first use from
    ``run_dir/config.json``), each round (call it with a :class:`RoundInfo`: it is an ``on_round``
    callback for :func:`lthdiff.lottery.imp.run_imp`), evaluation metrics (:meth:`metrics`, the payload
    :func:`write_metrics` wrote), reports (:meth:`report`) and the status.  A no-op without a
    registry, and on every process but the main one, so a run is recorded once.  Writes are upserts,
    so logging a resumed run again changes nothing.  The experiment is "running" from its first write
    until :meth:`completed` (called after the last round: by ``run_imp`` or the pipeline).
    """

    def __init__(self, registry: Any, run_dir: str | Path | None = None, config: dict[str, Any] | None = None) -> None:
        self._registry = registry if registry not in ("", None) and process_state().is_main_process else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._config = config
        self.reg: Any = None
        self.exp_id: int | None = None

    def _experiment(self, run_dir: Path | None = None) -> int | None:
        if self._registry is None:
            return None
        if self.exp_id is None:
            self.run_dir = self.run_dir or run_dir
            if self.run_dir is None:
                raise ValueError("RegistryLog needs the run directory (pass run_dir=...) before it can record")
            config = self._config or read_json(self.run_dir / "config.json")
            self.exp_id = _registry_experiment(self._db(), self.run_dir, config)
        return self.exp_id

    def _db(self) -> Any:
        """The open registry (opened once, from a path or the Registry given)."""
        if self.reg is None:
            from lthdiff.tracking.registry import Registry

            self.reg = self._registry if isinstance(self._registry, Registry) else Registry(self._registry)
        return self.reg

    def __call__(self, info: RoundInfo) -> None:
        """Record one finished round (the ticket's per-layer sparsities and final loss, the controls' losses)."""
        exp = self._experiment(info.dir.parent)
        if exp is not None:
            _log_round(self.reg, exp, info)

    def metrics(self, round: int, variant: str, payload: Mapping[str, Any]) -> None:
        """Record a network's evaluation: ``payload`` as :func:`write_metrics` returns it (quality metrics
        under their feature extractor, paired SSIM/PSNR/perceptual under the perceptual measure)."""
        exp = self._experiment()
        if exp is None:
            return
        settings = payload.get("settings") or {}
        self.reg.log_metrics(exp, round, payload["metrics"], extractor=payload.get("extractor"), settings=settings,
                             variant=variant)
        pair = payload.get("paired")
        if pair:
            self.reg.log_metrics(exp, round, pair["metrics"], extractor=pair.get("perceptual_kind"),
                                 settings=settings, variant=variant)

    def report(self, title: str, path: str | Path) -> None:
        """Record a report file and link it to this run's experiment (if the run is registered)."""
        if self._registry is None:
            return
        exp = self.exp_id if self.exp_id is not None else self._db().find_experiment(self.run_dir)
        self._db().add_report(title, path, [exp] if exp is not None else [])

    def completed(self) -> None:
        """Mark the experiment completed (after its last round)."""
        if self._experiment() is not None:
            self.reg.set_status(self.exp_id, "completed")


def _registry_experiment(reg: Any, run_dir: Path, config: dict[str, Any]) -> int:
    """The experiment id of ``run_dir`` in the open registry ``reg``: created from ``config``, or marked running again."""
    exp = reg.find_experiment(run_dir)
    if exp is None:
        model_id = reg.get_or_create_model(config["model_class"], config["model_config"])
        ds_id = reg.get_or_create_dataset(config["dataset"], image_size=config["model_config"].get("sample_size"))
        exp = reg.start_experiment(model_id=model_id, dataset_id=ds_id, method="imp", config=config,
                                   seed=config["seed"], run_dir=run_dir)
    else:  # a resumed (or extended) run is running again until its last round is written
        reg.set_status(exp, "running")
    return exp


def _log_round(reg: Any, exp_id: int, info: RoundInfo) -> None:
    metrics = {"final_loss": info.final_loss, "sparsity": info.sparsity}
    reg.log_round(exp_id, info.round, info.summary.get("layer_sparsity", {}), metrics)
    for name, c in info.controls.items():
        reg.log_metrics(exp_id, info.round, {"final_loss": c.final_loss}, variant=name)
