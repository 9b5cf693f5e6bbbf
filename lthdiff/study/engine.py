"""One network of a study, from the records to its recorded row.

:class:`SeedContext` holds what every network of a seed needs (settings, dataset, theta_0 from the seed and
checked against the recorded digest, the masks and weights the records hold); :func:`run_network` builds the
network's :class:`lthdiff.lottery.network.Job` from its arm (:mod:`lthdiff.study.arms`), trains it through
:func:`lthdiff.lottery.network.train_network` (the one engine), scores it (:func:`score`), records what the
next networks need, and writes its row last (the row marks the network done).  :func:`train_remote` and
:func:`record` split that in two for a backend whose workers share no filesystem with the records (Ray).
"""
from __future__ import annotations

import copy
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from lthdiff import masks as M
from lthdiff.config import Config, build_dataset, build_model
from . import records as R
from lthdiff.lottery.runs import final_loss, snapshot_dir
from .arms import late_rewind_step, mask_dir, mask_name, variant_class

__all__ = ["SeedContext", "score", "run_network", "loss_means"]


class SeedContext:
    """What every network of one seed needs: settings, dataset, theta_0, the seed's records and run folder."""

    def __init__(self, cfg: Config, settings: dict[str, Any], seed: int, record_dir: Path, run_dir: Path) -> None:
        from lthdiff.store.io import tensors_digest

        self.cfg, self.settings, self.seed = cfg, settings, seed
        self.record_dir, self.run_dir = Path(record_dir), Path(run_dir)
        self.ds = build_dataset(cfg)
        ch = self.ds[0].shape[0]
        self.theta0 = build_model(cfg, ch, seed=seed)
        digest = tensors_digest(self.theta0.state_dict())
        # refuses a seed folder recorded with other settings or another theta_0 (its digest is a setting)
        R.write_settings(self.record_dir, {**settings, "seed": seed, "init_digest": digest})
        self.train_kw = dict(batch_size=settings["batch_size"], lr=settings["lr"], seed=seed, ema=True,
                             checkpoint_every=cfg.train.checkpoint_every)

    def mask(self, chain: str, r: int) -> M.Mask:
        """The recorded mask round ``r`` of ``chain`` trains with."""
        if r == 0:
            return M.ones(self.theta0)
        d = mask_dir(self.settings, self.record_dir) if chain == "ticket" else self.record_dir
        path = d / mask_name(chain, r)
        if not path.exists():
            raise FileNotFoundError(f"{path} is not recorded yet: the previous round of seed {self.seed} comes first")
        return M.load_packed(path)

    def theta_k(self) -> Any:
        """theta_K of the late arm: from the records (``weights_theta_k.safetensors``); where a study recorded
        before theta_K was recorded lacks it, trained again from the seed (K steps, deterministic) and recorded."""
        from lthdiff.lottery.network import Job, train_network

        path = self.record_dir / "weights_theta_k.safetensors"
        if not path.exists():
            k = late_rewind_step(self.settings)
            info = train_network(Job(self.theta0, M.ones(self.theta0), k, snapshot_dir(self.run_dir, "theta_k_retrained"), 0,
                                     variant="theta_k", desc=f"seed {self.seed} theta_K"), self.ds,
                                 loss_at_init=False, progress=False, **self.train_kw)
            R.save_kept_weights(path, info.load_model(ema=False).state_dict(), {})
        model = copy.deepcopy(self.theta0)
        model.load_state_dict(R.load_kept_weights(path, self.theta0.state_dict(), {}))
        return model


def score(ctx: SeedContext, ema: Any) -> dict[str, Any]:
    """FID/KID of the network's EMA samples against the train split and the held-out test split, and the
    memorisation numbers (:func:`lthdiff.evaluation.memorisation.memorisation`, pixels and features)."""
    from lthdiff.data.datasets import as_tensor
    from lthdiff.evaluation.memorisation import memorisation
    from lthdiff.evaluation.metrics import evaluate
    from lthdiff.evaluation.sampling import sample

    st = ctx.settings
    images = sample(ema, st["n"], sampler="ddim", steps=st["sample_steps"], seed=ctx.seed, batch_size=500,
                    progress=False)
    out: dict[str, Any] = {}
    for split, suffix in (("train", ""), ("test", "_test")):
        res = evaluate(images, st["dataset"], image_size=st["image_size"], feature_extractor=st["extractor"],
                       split=split, metrics=("fid", "kid"), seed=ctx.seed, progress=False,
                       data_root=ctx.cfg.data.root, data_path=ctx.cfg.data.path or None)
        out.update({f"fid{suffix}": res.metrics["fid"], f"kid{suffix}": res.metrics["kid"]})
    uint8 = lambda ds: ((as_tensor(ds) + 1) * 127.5).round().clamp(0, 255).to(images.dtype)  # noqa: E731
    test = build_dataset(ctx.cfg, split="test")
    out["memorisation"] = memorisation(images, uint8(ctx.ds), uint8(test), extractor=st["extractor"])
    return out


def loss_means(losses: Sequence[float], every: int = 100) -> list[float]:
    """Per-step losses as means over blocks of ``every`` steps (what a row keeps)."""
    return [statistics.mean(losses[i:i + every]) for i in range(0, len(losses), every)]


def run_network(ctx: SeedContext, r: int, variant: str) -> dict[str, Any]:
    """Train (or reuse), score and record one network of one seed; returns its row."""
    import torch

    from lthdiff.lottery.network import Job, train_network
    from lthdiff.lottery.runs import read_losses
    from lthdiff.training.loop import loss_at_start

    arm = variant_class(variant, r)
    t0 = time.perf_counter()
    job = arm.job(ctx, r)
    if isinstance(job, Job):
        info = train_network(job, ctx.ds, progress=True, **ctx.train_kw)
        ema, losses, steps, seconds = info.load_model(ema=True), read_losses(info), info.summary["steps"], info.seconds
        at_init = info.loss_at_init
        extra = {**{k: info.summary[k] for k in ("continued_from_step",) if k in info.summary}, **job.extra}
        extra.pop("target_sparsity", None)
        mask = job.mask
        extra.update(arm.after(ctx, r, info))
    else:  # a snapshot of another network, only scored: (ema, losses, steps[, the network's start])
        ema, losses, steps, *start = job
        start = start[0] if start else ctx.theta0
        seconds, mask, extra = float("nan"), M.ones(start), {"from_snapshot": True}
        at_init = loss_at_start(start, ctx.ds, mask, seed=0)
    trained_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = score(ctx, ema)
    row = {"seed": ctx.seed, "round": r, "variant": variant, "sparsity": M.sparsity(mask), **scores,
           "final_loss": final_loss(losses), "loss_at_init": at_init, "steps": int(steps),
           "loss_per_100_steps": loss_means(losses), "train_seconds": seconds,
           "eval_seconds": time.perf_counter() - t1, "wall_seconds_this_piece": trained_s + time.perf_counter() - t1,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.machine()})",
           "cpu": _cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "commit": R.code_commit(), **extra}
    R.write_network(ctx.record_dir, row)
    return row


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), so a network trained on another machine can be told apart."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
