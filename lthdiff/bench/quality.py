"""Ticket quality vs sparsity, recorded network by network: ``python -m lthdiff.bench quality``.

The study behind the project's question (do DDPM lottery tickets match the dense model at 90-97 %
sparsity?).  Per seed, one chain of IMP (Frankle & Carbin 2018, Sec. 1 steps 1-4, iterated as in
Sec. 2): dense round 0, then ``--rounds`` rounds that prune ``--prune-per-round`` of the surviving
weights by global magnitude (sparsity 1 - (1 - p)^r), rewind to theta_0 and retrain; the
``--controls`` (``random_reinit``: the ticket's mask on a fresh init) at every sparsity.  Every
network trains ``--steps`` (T) steps at a constant LR, deterministic by seed, and is scored by FID
and KID of ``--n`` DDIM-``--sample-steps`` samples of its EMA weights (sampling seed = training seed)
against the training split, and by FID/KID against the held-out test split (so memorising the
training digits shows as train FID falling while test KID does not).

**Pieces of one network.**  The unit of work is one network (train it, score it, record it).  After
each, its row goes to ``<records>/<name>/seed_<N>/r<RR>_<variant>.json`` and, for the ticket chain,
the next round's mask to ``mask_r<RR>.npz`` (:mod:`lthdiff.bench.records`).  theta_0 comes from the
seed and is checked against the recorded digest, so a machine holding only the repository continues
with the next undone network; run directories (resume *inside* a network) go to ``--run-root``,
default ``$XDG_CACHE_HOME/lthdiff/<name>`` (``~/.cache/lthdiff/<name>``).  ``--arms ticket continue``
chooses the arms; ``--max-networks K`` stops after K networks.  ``--jobs J`` starts J workers that
share the networks through the records and a lock file per network, so two cores train two
networks of *one* seed side by side wherever the chain allows it (a round's control beside the
next round's ticket); J commands started by hand share them the same way.

**Converged?**  Per seed the dense model is also scored at T/2 (``dense_half``) and continued from
its final checkpoint, optimizer state included, to 1.5 T (``dense_continued``; training is
deterministic with a constant LR, so this equals one run of 1.5 T).  Converged when
|FID(1.5 T) - FID(T)| <= max(dense FID std over seeds, 5 % of FID(T)) and the loss plateaued (mean
loss over the last 10 % of 1.5 T within 5 % of that over the last 10 % of T).  FID(T/2) is shown,
not used to decide.

**Prune and continue** (``--arms continue``): what the released code of Jiang et al. 2023 (arXiv
2310.18823) does: prune the trained weights, keep them (no rewinding, no re-initialisation) and keep
training T steps, chained over the same sparsities from the seed's dense round 0.  The chain carries
trained weights, recorded with only their kept values (``weights_r00.safetensors`` for dense, ``weights_continue_r<RR>.safetensors``).

**Late rewinding** (``--arms late``): IMP that rewinds to theta_K, the dense weights after K = T / 20
steps (5 % of training; Frankle et al. 2019, "Stabilizing the Lottery Ticket Hypothesis", arXiv
1903.01611, Sec. 3: rewind to iteration k with k 0.1-7 % of training, then train the remaining
T - K steps), chained over the same sparsities: round 1 prunes the seed's dense round 0 (the
ticket's ``mask_r01.npz``), round r > 1 prunes round r - 1 of this chain (``mask_late_r<RR>.npz``).
theta_K is trained again from the seed (K steps, deterministic; its digest is in every row), so the
arm too continues from the records.  It asks whether the ticket's first miss is an artefact of
rewinding to iteration 0.

``--aggregate DIR [--out OUT]`` builds ``<name>.md``/``<name>.json`` from the records alone (in DIR by
default): per sparsity FID/KID mean +- std, FID / dense per seed, seeds won against each control and
against prune-and-continue, the matching sparsity (:func:`lthdiff.evaluation.verdict.matching_sparsity`), the
convergence check and the loss at init (:func:`lthdiff.evaluation.analysis.loss_at_start`).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from lthdiff.evaluation.verdict import aggregate, matching_sparsity, summarize
from . import records as R
from .common import RECORDED, markdown_table, write_results

__all__ = ["loss_plateau", "converged", "plan", "ready", "run_network", "aggregate_records", "markdown", "recorded_study",
           "study_summary", "update_readme", "main"]

DATASET_DEFAULTS = {"digits": {"image_size": 16, "preset": "tiny", "extractor": "lthdiff-digits"},
                    "mnist5k": {"image_size": 32, "preset": "mnist32", "extractor": "lthdiff-mnist"}}
ARMS = ("ticket", "continue", "late")
CHAINS = ARMS[1:]  # the arms beside the ticket's IMP chain, one network per pruned round
LATE_FRACTION = 20  # K = T // 20: 5 % of training, inside Frankle et al. 2019's 0.1-7 %
CHECKPOINT_EVERY = 200  # as run_imp, so run directories of either resume each other


def loss_plateau(losses: Sequence[float], fraction: float = 0.1) -> dict[str, float]:
    """Mean training loss over the last ``fraction`` of steps vs the ``fraction`` before T/2.

    A converged run has ``ratio`` = late / mid close to 1 (a still-falling loss gives ratio < 1).
    """
    n = len(losses)
    w = max(1, int(round(n * fraction)))
    half = n // 2
    if half < w:
        raise ValueError(f"need at least {2 * w} losses for a {fraction:.0%} window before T/2, got {n}")
    mid = statistics.mean(losses[half - w:half])
    late = statistics.mean(losses[n - w:])
    return {"mid_mean": mid, "late_mean": late, "ratio": late / mid, "window": w, "steps": n}


def converged(fid_before: float, fid_after: float, loss_ratio: float, fid_tolerance: float,
              loss_tolerance: float = 0.05) -> bool:
    """Whether a dense run counts as converged: its FID moved by at most ``fid_tolerance`` between
    two lengths (the study: T and 1.5 T, tolerance max(dense FID std over seeds, 5 % of FID(T))) and its
    loss plateaued (a late/earlier mean-loss ratio within ``loss_tolerance`` of 1)."""
    return abs(fid_after - fid_before) <= fid_tolerance and abs(1 - loss_ratio) <= loss_tolerance


# --------------------------------------------------------------------------- the plan
def schedule(settings: dict[str, Any]) -> list[float]:
    """The sparsity after each round, from the recorded settings."""
    return [float(s) for s in settings["schedule"]]


def plan(settings: dict[str, Any], arm: str = "ticket") -> list[tuple[int, str]]:
    """The networks of one seed, in the order they are trained: ``(round, variant)``.

    Ticket arm: dense (round 0), dense at T/2 and continued to 1.5 T (the convergence check), then per
    round the ticket and its controls.  Continue and late arms: ``continue`` / ``late`` at every pruned round.
    """
    rounds = range(1, len(schedule(settings)) + 1)
    if arm in CHAINS:
        return [(r, arm) for r in rounds]
    if arm != "ticket":
        raise ValueError(f"unknown arm {arm!r}; accepted: {', '.join(ARMS)}")
    out = [(0, "ticket"), (0, "dense_half")] + ([] if settings.get("masks_from") else [(0, "dense_continued")])
    only, crounds = settings.get("rounds_only"), settings.get("control_rounds")
    for r in rounds:
        if only and r not in only:
            continue
        out += [(r, "ticket")] + [(r, c) for c in settings["controls"] if not crounds or r in crounds]
    return out


def mask_name(arm: str, r: int) -> str:
    """The recorded mask an arm's round-``r`` network trains with: round 1 is shared by every arm (dense
    round 0 pruned once, ``mask_r01.npz``); later rounds prune the arm's own previous network."""
    return f"mask_r{r:02d}.npz" if arm == "ticket" or r == 1 else f"mask_{arm}_r{r:02d}.npz"


def _done(seed_dir: Path) -> set[tuple[int, str]]:
    return {(int(row["round"]), row["variant"]) for row in R.read_networks(seed_dir)}


# --------------------------------------------------------------------------- one network
class _Seed:
    """What every network of one seed needs: settings, dataset, theta_0, folders."""

    def __init__(self, settings: dict[str, Any], seed: int, record_dir: Path, run_dir: Path) -> None:
        from lthdiff.data.datasets import load_dataset
        from lthdiff.store.io import tensors_digest
        from lthdiff.models.unets import unet

        self.settings, self.seed, self.record_dir, self.run_dir = settings, seed, record_dir, run_dir
        self.ds = load_dataset(settings["dataset"], image_size=settings["image_size"])
        ch = self.ds[0].shape[0]
        self.theta0 = unet(settings["preset"], seed=seed, sample_size=settings["image_size"], in_channels=ch,
                           out_channels=ch, **_model_overrides(settings))
        digest = tensors_digest(self.theta0.state_dict())
        # refuses a seed folder recorded with other settings or another theta_0 (its digest is a setting)
        R.write_settings(record_dir, {**settings, "seed": seed, "init_digest": digest})
        self.train_kw = dict(batch_size=settings["batch_size"], lr=settings["lr"], seed=seed, ema=True,
                             checkpoint_every=CHECKPOINT_EVERY)

    def mask(self, r: int, arm: str = "ticket"):
        from lthdiff import masks as M

        if r == 0:
            return M.ones(self.theta0)
        path = _mask_dir(self.settings, self.record_dir) / mask_name(arm, r)
        if not path.exists():
            raise FileNotFoundError(f"{path} is not recorded yet: the previous round of seed {self.seed} comes first")
        return R.load_mask(path)


def _model_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """The recorded ``[model]`` overrides of the preset (width: ``block_out_channels``), as unet() takes them."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (settings.get("model") or {}).items()}


def _mask_dir(settings: dict[str, Any], record_dir: Path) -> Path:
    """Where the ticket chain's masks are read: this seed's records, or (``masks_from``) the same seed of another
    recorded study, whose masks a longer-training study reuses without ever writing there."""
    src = settings.get("masks_from")
    return record_dir.parent.parent / src / record_dir.name if src else record_dir


def late_rewind_step(settings: dict[str, Any]) -> int:
    """K of the late-rewinding arm, in training steps: T // 20 (5 % of training)."""
    return int(settings["steps"]) // LATE_FRACTION


def _theta_k(s: "_Seed") -> Any:
    """The dense weights after K steps (the late-rewind point), trained from the seed once per run
    directory: the first K steps of round 0, as training is deterministic by seed."""
    from lthdiff import masks as M
    from lthdiff.models.unets import load_model, save_model
    from lthdiff.training.loop import train

    k, path = late_rewind_step(s.settings), s.run_dir / "late" / "theta_k"
    if not path.is_dir():  # save_model renames a finished folder into place
        res = train(copy.deepcopy(s.theta0), s.ds, k, checkpoint_dir=s.run_dir / "late" / "ckpt_k", mask=M.ones(s.theta0),
                    progress=False, **s.train_kw)
        save_model(res.model, path)
    return load_model(path)


def _ema_from_checkpoint(template: Any, state: dict[str, Any]) -> Any:
    """The EMA weights held by a training checkpoint of :func:`lthdiff.training.loop.train`."""
    from diffusers.training_utils import EMAModel

    model = copy.deepcopy(template)
    model.load_state_dict(state["model"])
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    ema.load_state_dict(state["ema"])
    ema.copy_to(model.parameters())
    return model


def _keep_checkpoint(src: Path, kept: Path) -> None:
    """Copy the latest checkpoint of ``src`` into ``kept`` (as a resumable checkpoint folder), keeping
    the ones already there: round 0's checkpoints at T/2 and T outlive the round's own ``ckpt/``."""
    from lthdiff.store.io import read_json, write_json

    info = read_json(src / "latest.json")
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / info["file"], kept / (info["file"] + ".tmp"))
    os.replace(kept / (info["file"] + ".tmp"), kept / info["file"])
    write_json(kept / f"{info['file']}.json", {k: info[k] for k in ("step", "file", "sha256")})


def _kept(kept: Path, step: int | None = None) -> Path | None:
    """The kept checkpoint at ``step`` (or the latest), None when there is none."""
    files = sorted(kept.glob("ckpt-*.pt")) if kept.is_dir() else []
    if step is not None:
        files = [f for f in files if int(f.stem.split("-")[1]) == step]
    return files[-1] if files else None


def _resume_folder(ckpt: Path, dst: Path) -> None:
    """A training checkpoint folder (``latest.json`` + file) that :func:`lthdiff.training.loop.train` resumes."""
    import hashlib

    from lthdiff.store.io import write_json

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ckpt, dst / ckpt.name)
    digest = hashlib.sha256((dst / ckpt.name).read_bytes()).hexdigest()
    step = int(ckpt.stem.split("-")[1])
    entry = {"step": step, "file": ckpt.name, "sha256": digest}
    write_json(dst / "latest.json", {**entry, "history": [entry]})


def _train_dense(s: _Seed, rdir: Path) -> None:
    """Round 0, stopping at T/2 to keep that checkpoint (resuming equals an uninterrupted run)."""
    from lthdiff import masks as M
    from lthdiff.lottery.runs import write_round
    from lthdiff.training.loop import train

    steps, kept = s.settings["steps"], s.run_dir / "round00_ckpt_kept"
    mask = M.ones(s.theta0)
    model = copy.deepcopy(s.theta0)
    if _kept(kept, steps // 2) is None:
        train(model, s.ds, steps // 2, checkpoint_dir=rdir / "ckpt", mask=mask, progress=False, **s.train_kw)
        _keep_checkpoint(rdir / "ckpt", kept)
    res = train(model, s.ds, steps, checkpoint_dir=rdir / "ckpt", mask=mask, desc="round 0 (dense)", **s.train_kw)
    _keep_checkpoint(rdir / "ckpt", kept)
    write_round(rdir, res, mask, 0, extra={"target_sparsity": 0.0})


def _network(s: _Seed, r: int, variant: str) -> dict[str, Any]:
    """Train (or reuse) one network; returns what its record needs besides the scores."""
    from lthdiff import masks as M
    from lthdiff import pruners
    from lthdiff.training.loop import loss_at_start
    from lthdiff.lottery.controls import CONTROLS, RoundContext
    from lthdiff.store.io import read_json, tensors_digest
    from lthdiff.models.unets import load_model
    from lthdiff.lottery.runs import RoundInfo, write_round
    from lthdiff.training.loop import load_checkpoint, train

    steps = s.settings["steps"]
    extra: dict[str, Any] = {}
    if variant in ("dense_half", "dense_continued"):
        kept = s.run_dir / "round00_ckpt_kept"
        if _kept(kept, steps // 2) is None or _kept(kept) is None:
            # Only the records survive (another machine): retrain dense from the seed (deterministic), keeping T/2, T.
            _train_dense(s, s.run_dir / "round_00_retrained")
        if variant == "dense_half":
            ck = _kept(kept, steps // 2)
            import torch

            state = torch.load(ck, map_location="cpu", weights_only=False)
            ema = _ema_from_checkpoint(s.theta0, state)
            return {"ema": ema, "mask": M.ones(s.theta0), "losses": state["losses"], "steps": state["step"],
                    "seconds": float("nan"), "start": s.theta0, "extra": {"from_checkpoint": ck.name}}
        cdir = s.run_dir / "round_00" / "continued"
        if not (cdir / "summary.json").exists():
            if load_checkpoint(cdir / "ckpt") is None:
                _resume_folder(_kept(kept), cdir / "ckpt")
            res = train(copy.deepcopy(s.theta0), s.ds, steps * 3 // 2, checkpoint_dir=cdir / "ckpt",
                        mask=M.ones(s.theta0), desc="dense continued to 1.5 T", **s.train_kw)
            write_round(cdir, res, M.ones(s.theta0), 0, extra={"target_sparsity": 0.0, "variant": variant,
                                                                "resumed_from": res.resumed_from})
        info = RoundInfo.from_dir(cdir, variant=variant)
        out = _from_dir(info, s.theta0, M.ones(s.theta0))
        out["extra"]["resumed_from"] = info.summary.get("resumed_from")
        return out
    mask = s.mask(r, variant if variant in CHAINS else "ticket")
    rdir = s.run_dir / f"round_{r:02d}"
    if variant == "ticket":
        ndir, start = rdir, s.theta0
    elif variant == "continue":
        ndir = s.run_dir / "continue" / f"round_{r:02d}"
        prev = s.record_dir / (f"weights_continue_r{r - 1:02d}.safetensors" if r > 1 else "weights_r00.safetensors")
        prev_mask = s.mask(r - 1, "continue") if r > 1 else M.ones(s.theta0)
        start = copy.deepcopy(s.theta0)
        start.load_state_dict(R.load_kept_weights(prev, s.theta0.state_dict(), prev_mask))
    elif variant == "late":
        ndir, start = s.run_dir / "late" / f"round_{r:02d}", _theta_k(s)
        steps = steps - late_rewind_step(s.settings)
        extra.update({"rewind_step": late_rewind_step(s.settings), "theta_k_digest": tensors_digest(start.state_dict())})
        before = {x.get("theta_k_digest") for x in R.read_networks(s.record_dir) if x["variant"] == "late"} - {None}
        if before and extra["theta_k_digest"] not in before:
            import warnings

            # Another device or thread count rounds differently: the chain goes on, but from another start.
            warnings.warn(f"seed {s.seed}: theta_K retrained here (digest {extra['theta_k_digest'][:12]}) differs from "
                          f"the recorded late networks' ({', '.join(sorted(d[:12] for d in before))}); the record "
                          "keeps both digests", stacklevel=2)
    else:
        ndir = rdir / "controls" / variant
        ctx = RoundContext(round=r, target=M.sparsity(mask), mask=mask, trained=s.theta0, template=s.theta0,
                           seed=s.seed, run_dir=s.run_dir, rewind_dir=s.run_dir / "rewind", rewind_step=0,
                           prune=None)  # type: ignore[arg-type]  # random_reinit needs neither
        start, cmask = CONTROLS[variant].start_and_mask(ctx)
        if tensors_digest(cmask) != tensors_digest(mask):
            raise ValueError(f"control {variant!r} trains another mask than the ticket's; only mask-keeping "
                             "controls (random_reinit) are recorded by this benchmark")
    if (ndir / "summary.json").exists():
        found = RoundInfo.from_dir(ndir).load_mask()
        if tensors_digest(found) != tensors_digest(mask) or read_json(ndir / "summary.json")["steps"] != steps:
            raise ValueError(f"{ndir} holds another network (mask or steps differ from the records); move it away")
    elif r == 0:
        _train_dense(s, ndir)
    else:
        res = train(copy.deepcopy(start), s.ds, steps, checkpoint_dir=ndir / "ckpt", mask=mask,
                    desc=f"seed {s.seed} round {r} {variant}", **s.train_kw)
        write_round(ndir, res, mask, r, extra={"target_sparsity": M.sparsity(mask), "variant": variant})
    info = RoundInfo.from_dir(ndir, variant=variant)
    out = _from_dir(info, start, mask)
    out["extra"].update(extra)
    out["loss_at_init"] = loss_at_start(start, s.ds, mask, seed=0)
    trained = None
    if variant in ("ticket", "late") and r < len(schedule(s.settings)) and not s.settings.get("masks_from"):  # the next round's mask of this chain
        trained = info.load_model(ema=False)
        nxt = pruners.magnitude(trained, schedule(s.settings)[r], scope="global", mask=mask)
        name = mask_name(variant, r + 1)
        R.save_mask(s.record_dir / name, nxt)
        out["extra"]["next_mask"] = name
    last = r == len(schedule(s.settings))
    if (variant == "continue" and not last) or (variant == "ticket" and r == 0):
        # The prune-and-continue chain starts from trained weights, so they are recorded (kept values only).
        trained = trained or info.load_model(ema=False)
        wpath = s.record_dir / (f"weights_continue_r{r:02d}.safetensors" if r else "weights_r00.safetensors")
        if not wpath.exists():
            R.save_kept_weights(wpath, trained.state_dict(), mask)
        if variant == "continue":
            nxt = pruners.magnitude(trained, schedule(s.settings)[r], scope="global", mask=mask)
            R.save_mask(s.record_dir / mask_name("continue", r + 1), nxt)
    return out


def _from_dir(info: Any, start: Any, mask: Any) -> dict[str, Any]:
    from lthdiff.lottery.runs import read_losses

    return {"ema": info.load_model(ema=True), "mask": mask, "losses": read_losses(info), "steps": info.summary["steps"],
            "seconds": info.seconds, "start": start, "extra": {}}


def _score(s: _Seed, ema: Any) -> dict[str, float]:
    """FID/KID of the network's EMA samples against the train split and against the test split."""
    from lthdiff.evaluation.metrics import evaluate
    from lthdiff.evaluation.sampling import sample

    st = s.settings
    images = sample(ema, st["n"], sampler="ddim", steps=st["sample_steps"], seed=s.seed, batch_size=500,
                    progress=False)
    out = {}
    for split, suffix in (("train", ""), ("test", "_test")):
        res = evaluate(images, st["dataset"], image_size=st["image_size"], feature_extractor=st["extractor"],
                       split=split, metrics=("fid", "kid"), seed=s.seed, progress=False)
        out.update({f"fid{suffix}": res.metrics["fid"], f"kid{suffix}": res.metrics["kid"]})
    return out


def _loss_means(losses: Sequence[float], every: int = 100) -> list[float]:
    return [statistics.mean(losses[i:i + every]) for i in range(0, len(losses), every)]


def run_network(s: _Seed, r: int, variant: str) -> dict[str, Any]:
    """Train (or reuse), score and record one network of one seed; returns its row."""
    import torch

    from lthdiff import masks as M
    from lthdiff.training.loop import loss_at_start
    from lthdiff.lottery.runs import final_loss

    t0 = time.perf_counter()
    net = _network(s, r, variant)
    trained_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = _score(s, net["ema"])
    losses = list(net["losses"])
    row = {"seed": s.seed, "round": r, "variant": variant, "sparsity": M.sparsity(net["mask"]), **scores,
           "final_loss": final_loss(losses),
           "loss_at_init": net.get("loss_at_init", loss_at_start(net["start"], s.ds, net["mask"], seed=0)),
           "steps": int(net["steps"]), "loss_per_100_steps": _loss_means(losses),
           "train_seconds": net["seconds"], "eval_seconds": time.perf_counter() - t1,
           "wall_seconds_this_piece": trained_s + time.perf_counter() - t1,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.machine()})",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": R.code_commit(),
           **net["extra"]}
    R.write_network(s.record_dir, row)
    return row


# --------------------------------------------------------------------------- aggregate
def aggregate_records(study_dir: str | Path) -> dict[str, Any]:
    """The study's summary from its records alone (see the module doc); refuses mixed settings."""
    study_dir = Path(study_dir)
    dirs = R.seed_dirs(study_dir)
    settings = [R.read_settings(d) for d in dirs]
    common = R.check_same_settings(settings)
    rows = [row for d in dirs for row in R.read_networks(d)]
    chain = [x for x in rows if x["variant"] in ("ticket", *common["controls"])]
    if not any(x["round"] == 0 and x["variant"] == "ticket" for x in chain):
        raise ValueError(f"{study_dir} holds no dense (round 0) record yet; nothing to compare with")
    # the other arms are compared with the ticket the way a control is (seeds won, matching sparsity)
    controls = list(common["controls"]) + [a for a in CHAINS if any(x["variant"] == a for x in rows)]
    s = summarize([x for x in rows if x["variant"] in ("ticket", *controls)], controls)
    s["matching_test_kid"] = matching_sparsity([x for x in chain if "kid_test" in x], "kid_test")
    dense_std = s["matching"]["dense_std"]
    conv = []
    for d, st in zip(dirs, settings):
        by = {(x["round"], x["variant"]): x for x in R.read_networks(d)}
        dense, half, cont = by.get((0, "ticket")), by.get((0, "dense_half")), by.get((0, "dense_continued"))
        if dense is None:
            continue
        c = {"seed": st["seed"], "steps": dense["steps"], "fid_T": dense["fid"], "kid_test_T": dense.get("kid_test"),
             "fid_half": half["fid"] if half else None, "fid_1.5T": cont["fid"] if cont else None,
             "kid_test_1.5T": cont.get("kid_test") if cont else None}
        if cont:
            w = max(1, len(cont["loss_per_100_steps"]) // 10)  # 100-step means: a 10 % window of 1.5 T ...
            wt = max(1, len(dense["loss_per_100_steps"]) // 10)  # ... and of T
            late = statistics.mean(cont["loss_per_100_steps"][-w:])
            at_t = statistics.mean(dense["loss_per_100_steps"][-wt:])
            c.update({"loss_last10_T": at_t, "loss_last10_1.5T": late, "loss_ratio": late / at_t,
                      "fid_tolerance": max(dense_std, 0.05 * dense["fid"])})
            c["converged"] = converged(dense["fid"], cont["fid"], c["loss_ratio"], c["fid_tolerance"])
        conv.append(c)
    both = [c for c in conv if c.get("fid_1.5T") is not None]
    overall = None
    if both:
        # Per seed, FID of one network at two nearby checkpoints moves by about the seed-to-seed std (in
        # both directions), so the study-level question is whether training longer helps *on average*.
        deltas = [c["fid_1.5T"] - c["fid_T"] for c in both]
        fid_t = statistics.mean(c["fid_T"] for c in both)
        ratio = max((c["loss_ratio"] for c in both), key=lambda r: abs(1 - r))
        overall = {"seeds": len(both), "fid_T_mean": fid_t, "fid_1.5T_mean": statistics.mean(c["fid_1.5T"] for c in both),
                   "delta_mean": statistics.mean(deltas), "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
                   "deltas": deltas, "fid_tolerance": max(dense_std, 0.05 * fid_t), "worst_loss_ratio": ratio,
                   "seeds_within": sum(bool(c["converged"]) for c in both)}
        overall["converged"] = converged(fid_t, overall["fid_1.5T_mean"], ratio, overall["fid_tolerance"])
    init = {}
    for x in (x for x in rows if x["variant"] in ("ticket", *controls)):
        key = (round(x["sparsity"], 3), "dense" if x["round"] == 0 else x["variant"])
        init.setdefault(key, []).append(x["loss_at_init"])
    init_rows = [{"sparsity": k[0], "variant": k[1], "loss_at_init_mean": statistics.mean(v),
                  "loss_at_init_std": statistics.stdev(v) if len(v) > 1 else 0.0, "seeds": len(v)}
                 for k, v in sorted(init.items())]
    test = aggregate([x for x in rows if x["variant"] in ("ticket", *controls) and "kid_test" in x], "kid_test")
    expected = {st["seed"]: len(plan(st)) for st in settings}
    progress = {st["seed"]: sum(1 for x in R.read_networks(d) if x["variant"] not in CHAINS)
                for d, st in zip(dirs, settings)}
    return {"settings": common, "seeds": [st["seed"] for d, st in zip(dirs, settings) if R.read_networks(d)],
            "rows": rows, **s, "convergence": conv, "convergence_overall": overall,
            "loss_at_init": init_rows, "kid_test_table": test, "mask_overlap": mask_overlap(study_dir),
            "networks_recorded": progress,
            "networks_planned": expected, "complete": all(progress[k] >= expected[k] for k in expected)}


def mask_overlap(study_dir: str | Path) -> list[dict[str, Any]]:
    """Do the arms find the same weights?  Per round r >= 2 and pair of arms whose masks are recorded
    for a seed: the Jaccard overlap (IoU) of the kept weights (:func:`lthdiff.masks.similarity`,
    overall), mean +- std over seeds, and the overlap of two independent random masks of the same
    densities (:func:`lthdiff.masks.chance_jaccard`).  Read from the recorded masks alone."""
    import itertools

    from lthdiff import masks as M

    found: dict[tuple[int, str, str], list[tuple[float, float, float]]] = {}
    for d in R.seed_dirs(study_dir):
        r = 2
        while paths := {arm: d / mask_name(arm, r) for arm in ARMS if (d / mask_name(arm, r)).exists()}:
            got = {arm: R.load_mask(path) for arm, path in paths.items()}
            for a, b in itertools.combinations(got, 2):
                row = M.similarity(got[a], got[b], by="overall").iloc[0]
                da, db = row["kept_a"] / row["total"], row["kept_b"] / row["total"]
                found.setdefault((r, a, b), []).append((float(row["jaccard"]), float(M.chance_jaccard(da, db)),
                                                        float(1 - da)))
            r += 1
    out = []
    for (r, a, b), v in sorted(found.items()):
        j = [x[0] for x in v]
        out.append({"round": r, "sparsity": statistics.mean(x[2] for x in v), "pair": f"{a} / {b}",
                    "jaccard_mean": statistics.mean(j), "jaccard_std": statistics.stdev(j) if len(j) > 1 else 0.0,
                    "seeds": len(j), "chance_jaccard": statistics.mean(x[1] for x in v)})
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def markdown(name: str, agg: dict[str, Any]) -> str:
    """The aggregate as the Markdown page ``<name>.md``."""
    st = agg["settings"]
    sched = ", ".join(f"{x:.1%}" for x in st["schedule"])
    lines = []
    kid_by = {(r["sparsity"], r["variant"]): r for r in agg["kid_test_table"]}
    for r in agg["table"]:
        k = kid_by.get((r["sparsity"], r["variant"]), {})
        line = {"sparsity": f"{r['sparsity']:.1%}", "weights left": f"{1 - r['sparsity']:.1%}", "variant": r["variant"],
                "seeds": r["seeds"], "FID (train)": f"{_fmt(r['fid_mean'])} ± {_fmt(r['fid_std'], 2)}",
                "FID / dense": f"{_fmt(r['ratio_to_dense_mean'])} ± {_fmt(r['ratio_to_dense_std'], 2)}",
                "per seed": ", ".join(_fmt(v) for v in r["ratio_to_dense_per_seed"].values()),
                "KID (test)": f"{_fmt(k.get('kid_test_mean'))} ± {_fmt(k.get('kid_test_std'), 2)}"}
        if r["variant"] == "ticket" and r["sparsity"] > 0:
            for c, vs in agg["versus"].items():
                v = next((x for x in vs if math.isclose(x["sparsity"], r["sparsity"], abs_tol=5e-4)), None)
                line[f"won vs {c}"] = f"{v['ticket_wins']}/{v['seeds']}" if v and v["seeds"] else "—"
        lines.append(line)
    m = agg["matching"]
    miss = f" (first miss at {m['first_miss']:.1%})" if m["first_miss"] is not None else " (every recorded sparsity matches)"
    conv_rows = [{"seed": c["seed"], "FID @ T/2": _fmt(c["fid_half"]), f"FID @ T={c['steps']}": _fmt(c["fid_T"]),
                  "FID @ 1.5T": _fmt(c["fid_1.5T"]), "tolerance": _fmt(c.get("fid_tolerance")),
                  "loss last 10 % (T)": _fmt(c.get("loss_last10_T"), 4),
                  "loss last 10 % (1.5T)": _fmt(c.get("loss_last10_1.5T"), 4),
                  "KID test @ T": _fmt(c["kid_test_T"]), "KID test @ 1.5T": _fmt(c.get("kid_test_1.5T")),
                  "converged": c.get("converged", "not yet run")} for c in agg["convergence"]]
    init_rows = [{"sparsity": f"{r['sparsity']:.1%}", "variant": r["variant"],
                  "loss at init": f"{_fmt(r['loss_at_init_mean'])} ± {_fmt(r['loss_at_init_std'], 2)}",
                  "seeds": r["seeds"]} for r in agg["loss_at_init"]]
    rec = ", ".join(f"seed {k}: {agg['networks_recorded'][k]}/{v}" for k, v in agg["networks_planned"].items())
    return (f"# {name}: ticket quality vs sparsity ({st['dataset']} {st['image_size']} px, {st['preset']} UNet)\n\n"
            + ("" if agg["complete"] else f"**Partial: networks recorded {rec}** (the study continues; numbers "
               "below are over the seeds recorded so far).\n\n")
            + f"Seeds {agg['seeds']}; sparsities {sched}; every network trained {st['steps']} steps (batch "
            f"{st['batch_size']}, lr {st['lr']}, constant), rewind `{st['rewind']}`; FID/KID from {st['n']} "
            f"DDIM-{st['sample_steps']} samples (EMA weights, sampling seed = training seed), extractor "
            f"`{st['extractor']}`, FID against the training split, KID also against the held-out test split. "
            "Mean ± std over seeds; FID / dense is per seed; a seed is won when the ticket's FID is lower.\n\n"
            + markdown_table(lines, list(dict.fromkeys(k for line in lines for k in line)))
            + f"\n**Matching sparsity** (ticket mean FID <= dense {_fmt(m['dense_mean'])} + 1 std "
            f"{_fmt(m['dense_std'], 2)} = {_fmt(m['bound'])} there and at every lower sparsity): "
            f"**{m['sparsity']:.1%}**{miss}. "
            + "The same bound for the other variants: " + "; ".join(
                f"{v} {_matching_text(mc, agg['table'])}" for v, mc in agg["matching_controls"].items()) + ".\n\n"
            "## Converged?\n\nDense at T/2 and T, and continued from its final checkpoint (optimizer state "
            "included) to 1.5 T. Converged: |FID(1.5T) - FID(T)| <= max(dense FID std over seeds, 5 % of "
            "FID(T)) and the mean loss over the last 10 % of 1.5 T within 5 % of that over the last 10 % of T.\n\n"
            + markdown_table(conv_rows) + _overall_text(agg.get("convergence_overall"))
            + "\n## Loss at init\n\nThe diffusion loss of each network's starting weights (theta_0 * m for a "
            "ticket, the fresh init * m for random reinit, the previous network's trained weights * m for prune and "
            "continue, theta_K * m for late rewinding) on one fixed batch of 256 training images, noise and "
            "timesteps, before any training (predicting zero noise scores about 1).\n\n" + markdown_table(init_rows)
            + _overlap_section(agg.get("mask_overlap") or []))


def _overlap_section(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    table = [{"round": r["round"], "sparsity": f"{r['sparsity']:.1%}", "masks": r["pair"], "seeds": r["seeds"],
              "Jaccard (IoU of kept weights)": f"{_fmt(r['jaccard_mean'])} ± {_fmt(r['jaccard_std'], 2)}",
              "random masks": _fmt(r["chance_jaccard"])} for r in rows]
    return ("\n## Do the arms find the same weights?\n\nJaccard overlap of the masks two arms train at the same "
            "round (round 1 is shared: dense round 0 pruned once), against two independent random masks of the same "
            "densities.\n\n" + markdown_table(table))


def _arm_names(settings: dict[str, Any]) -> dict[str, str]:
    """How the summary names the arms other than the ticket's IMP chain."""
    return {"continue": "Prune and continue (Jiang et al.'s released code: no rewinding, so the network at round r "
                        "has trained (r + 1) T steps in all)",
            "late": f"Late rewinding to theta_K (K = T / {LATE_FRACTION} = {late_rewind_step(settings)} steps, Frankle "
                    "et al. 2019; each network then trains T - K steps)"}


def _matching_text(m: dict[str, Any], table: Sequence[dict[str, Any]]) -> str:
    """A variant's matching sparsity in words; a sparsity it has no network at yet is not called a miss."""
    if m["first_miss"] is None:
        return f"{m['sparsity']:.1%} (no recorded sparsity misses)"
    there = any(r["variant"] == m["variant"] and math.isclose(r["sparsity"], m["first_miss"], abs_tol=5e-4) for r in table)
    if not there:
        return f"{m['sparsity']:.1%} so far (not yet recorded at {m['first_miss']:.1%})"
    return f"{m['sparsity']:.1%} (first miss {m['first_miss']:.1%})"


def _overall_text(o: dict[str, Any] | None) -> str:
    """The convergence check over seeds: does training 50 % longer lower the mean dense FID?"""
    if not o:
        return ""
    return (f"\n**Over the {o['seeds']} seeds**: mean dense FID {_fmt(o['fid_T_mean'])} at T and "
            f"{_fmt(o['fid_1.5T_mean'])} at 1.5 T, a change of {o['delta_mean']:+.3f} ± {_fmt(o['delta_std'], 2)} "
            f"(per seed {', '.join(f'{d:+.3f}' for d in o['deltas'])}; tolerance {_fmt(o['fid_tolerance'])}): "
            + ("**converged**" if o["converged"] else "**not converged**")
            + f"; {o['seeds_within']}/{o['seeds']} seeds within the tolerance on their own.\n")


def recorded_study(name: str = "quality_digits_converged", records: str | Path = RECORDED) -> dict[str, Any] | None:
    """:func:`aggregate_records` of a study recorded in the package (``lthdiff/bench/results/<name>/``);
    None when nothing of it is recorded yet (no dense network)."""
    d = Path(records) / name
    if not R.seed_dirs(d):
        return None
    try:
        return aggregate_records(d)
    except ValueError as exc:
        if "no dense" in str(exc):
            return None
        raise


def study_summary(agg: dict[str, Any]) -> str:
    """The study's answer in a few Markdown sentences, every number read from ``agg``
    (:func:`aggregate_records`): matching sparsity, ticket / dense per sparsity (mean ± std and per
    seed), seeds won against each control, the convergence check and the loss at init."""
    st, m = agg["settings"], agg["matching"]
    seeds = agg["seeds"]
    head = (f"{st['dataset']} {st['image_size']} px, {st['preset']} UNet, T = {st['steps']} steps a network, "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}), FID of {st['n']} "
            f"DDIM-{st['sample_steps']} samples")
    partial = "" if agg["complete"] else (" **Partial**: " + ", ".join(
        f"seed {k} {agg['networks_recorded'][k]}/{v} networks" for k, v in agg["networks_planned"].items())
        + " recorded so far; the study continues.")
    pruned = [r for r in agg["table"] if r["variant"] == "ticket" and r["sparsity"] > 0]
    if pruned:
        miss = (f"; the first sparsity that misses is {m['first_miss']:.1%}" if m["first_miss"] is not None
                else "; every recorded sparsity matches")
        match = (f"Tickets match the dense model (mean FID within dense {_fmt(m['dense_mean'])} + 1 std "
                 f"{_fmt(m['dense_std'], 2)}) up to **{m['sparsity']:.1%}** sparsity{miss}.")
        ratios = "; ".join(f"{r['sparsity']:.1%}: {_fmt(r['ratio_to_dense_mean'])} ± {_fmt(r['ratio_to_dense_std'], 2)} "
                           f"({', '.join(_fmt(v) for v in r['ratio_to_dense_per_seed'].values())})" for r in pruned)
        wins = []
        for c, vs in agg["versus"].items():
            got = [f"{v['sparsity']:.1%} {v['ticket_wins']}/{v['seeds']}" for v in vs if v["seeds"]]
            if got:
                wins.append(f"against {c}: " + ", ".join(got))
        body = (f"{match} Ticket FID / dense FID per sparsity, mean ± std (per seed): {ratios}. "
                + (f"Seeds the ticket wins {'; '.join(wins)}." if wins else ""))
        for arm, what in _arm_names(st).items():
            got = [r for r in agg["table"] if r["variant"] == arm]
            if got:
                body += (f" {what}, FID / dense: " + "; ".join(
                    f"{r['sparsity']:.1%}: {_fmt(r['ratio_to_dense_mean'])} ± {_fmt(r['ratio_to_dense_std'], 2)} "
                    f"({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})" for r in got)
                    + f"; it matches up to {_matching_text(agg['matching_controls'][arm], agg['table'])}.")
    else:
        body = "No pruned network is recorded yet."
    conv = [c for c in agg["convergence"] if c.get("converged") is not None]
    conv_text = ""
    if conv:
        ok = sum(bool(c["converged"]) for c in conv)
        o = agg.get("convergence_overall")
        conv_text = (f" Dense converged at T in {ok}/{len(conv)} seeds: FID at T/2, T, 1.5 T = "
                     + "; ".join(f"seed {c['seed']}: {_fmt(c['fid_half'])}, {_fmt(c['fid_T'])}, {_fmt(c['fid_1.5T'])}"
                                 for c in conv) + f" (tolerance max(dense std, 5 %) = {_fmt(conv[0]['fid_tolerance'])})"
                     + (f"; over the seeds the mean FID moved {o['delta_mean']:+.3f} ± {_fmt(o['delta_std'], 2)} from T "
                        f"to 1.5 T: {'converged' if o['converged'] else 'not converged'} on average." if o else "."))
    init = {r["variant"]: r for r in agg["loss_at_init"] if r["sparsity"] == max(
        (x["sparsity"] for x in agg["loss_at_init"] if x["variant"] == "ticket"), default=-1)}
    dense_init = next((r for r in agg["loss_at_init"] if r["variant"] == "dense"), None)
    init_text = ""
    if "ticket" in init and dense_init:
        others = ", ".join(f"{v} {_fmt(r['loss_at_init_mean'])}" for v, r in init.items() if v != "ticket")
        init_text = (f" Loss at init (before training, one fixed batch): theta_0 {_fmt(dense_init['loss_at_init_mean'])}, "
                     f"ticket theta_0 * m {_fmt(init['ticket']['loss_at_init_mean'])} at "
                     f"{init['ticket']['sparsity']:.1%}" + (f", {others}" if others else "")
                     + ": the mask alone already denoises (the supermask effect, Zhou et al. 2019).")
    return f"**{head}.**{partial} {body}{conv_text}{init_text}"


def update_readme(path: str | Path, summary: str, tag: str = "study") -> Path:
    """Replace the text between ``<!-- tag -->`` and ``<!-- /tag -->`` in ``path`` with ``summary``
    (atomically; everything else is kept byte for byte)."""
    from lthdiff.store.io import atomic_path

    path = Path(path)
    text = path.read_text()
    start, end = f"<!-- {tag} -->\n", f"\n<!-- /{tag} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{path} needs exactly one '<!-- {tag} -->' line and one '<!-- /{tag} -->' line after it")
    a, b = text.index(start) + len(start), text.index(end)
    with atomic_path(path) as tmp:
        tmp.write_text(text[:a] + summary.strip() + text[b:])
    return path


# --------------------------------------------------------------------------- CLI
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from lthdiff.lottery.imp import sparsity_schedule

    sched = list(args.sparsities) if args.sparsities else sparsity_schedule(args.rounds, args.prune_per_round)
    return {"dataset": args.dataset, "image_size": args.image_size, "preset": args.preset, "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "schedule": sched, "rewind": "init",
            "controls": list(args.controls), "n": args.n, "sample_steps": args.sample_steps,
            "extractor": args.extractor,
            # only when given, so the settings of studies recorded before these options stay equal
            **({"model": {"block_out_channels": list(args.block_out_channels)}} if args.block_out_channels else {}),
            **({"rounds_only": list(args.rounds_only)} if args.rounds_only else {}),
            **({"control_rounds": list(args.control_rounds)} if args.control_rounds else {}),
            **({"masks_from": args.masks_from} if args.masks_from else {})}


def _default_run_root(name: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lthdiff" / name


def ready(record_dir: str | Path, r: int, variant: str) -> bool:
    """Whether the records of a seed hold what network ``(r, variant)`` starts from.

    Dense round 0 needs nothing; its T/2 and 1.5 T scores need round 0 recorded; a round-``r`` ticket
    or control needs ``mask_r<RR>.npz`` (pruned from round ``r - 1``'s ticket); a prune-and-continue
    network needs the previous network's kept weights and its pruned mask; a late-rewinding network
    needs ``mask_r01.npz`` (round 1) or the mask pruned from the previous late network.
    """
    d = Path(record_dir)
    if r == 0:
        return variant == "ticket" or (0, "ticket") in _done(d)
    if variant == "continue":
        weights = "weights_r00.safetensors" if r == 1 else f"weights_continue_r{r - 1:02d}.safetensors"
        return (d / weights).exists() and (d / mask_name(variant, r)).exists()
    if variant not in CHAINS:
        return (_mask_dir(R.read_settings(d), d) / mask_name("ticket", r)).exists() if (d / "settings.json").exists() \
            else False
    return (d / mask_name(variant, r)).exists()


def _live(pid: str) -> bool:
    """Whether process ``pid`` runs; without ``/proc`` every pid counts as live, so no lock is ever stolen."""
    if not pid.isdigit():
        return False
    return Path(f"/proc/{pid}").exists() if Path("/proc").is_dir() else True


def _lock(path: Path) -> bool:
    """Take the lock file ``path`` for this process; False when a live process holds it (a stale one is taken)."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = path.read_text().strip()
            except FileNotFoundError:
                continue
            if _live(pid) or not pid:  # an empty file: its writer is between open and write
                return False
            path.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def _held(run_dir: Path) -> list[str]:
    """The networks of one seed that live processes are working on (their lock files)."""
    out = []
    for p in sorted(run_dir.glob("lock_r*")) if run_dir.is_dir() else []:
        try:
            if _live(p.read_text().strip()):
                out.append(p.name[len("lock_"):])
        except FileNotFoundError:
            pass
    return out


def _work(args: argparse.Namespace, budget: list[int], poll_s: float = 30.0) -> int:
    """One worker: train, score and record networks until none is left; returns how many it did.

    Workers share the work through the records and one lock file per network, so ``--jobs J`` (or
    J commands on one machine) train J networks side by side, also of one seed: each takes, from the
    seed with the most networks left (ties: the order of ``--seeds``) and in the order of :func:`plan`,
    the first unrecorded network whose inputs are recorded (:func:`ready`) and that no live process
    holds; it waits while the rest wait on held networks.
    """
    import torch

    settings = _settings(args)
    seeds: dict[int, _Seed] = {}
    done_now, said = 0, []
    threads = torch.get_num_threads()
    # one thread a process: two networks side by side on two cores (the result is bit-identical only
    # for the same thread count, so it is recorded with each network)
    torch.set_num_threads(args.threads)
    dirs = {seed: (Path(args.records) / args.name / f"seed_{seed}", Path(args.run_root) / f"seed_{seed}")
            for seed in args.seeds}
    try:
        while budget[0] != 0:
            picked, waiting, left = None, [], {}
            for seed, (record_dir, _) in dirs.items():
                done = _done(record_dir)
                left[seed] = [(r, v) for arm in args.arms for r, v in plan(settings, arm) if (r, v) not in done]
            # The seed with the most networks left first (ties: --seeds order): its chain is the longest
            # sequential path, so starting it early keeps every worker busy to the end.
            for seed in sorted(args.seeds, key=lambda x: -len(left[x])):
                record_dir, run_dir = dirs[seed]
                run_dir.mkdir(parents=True, exist_ok=True)
                for r, variant in left[seed]:
                    lock = run_dir / f"lock_{R.network_name(r, variant)[:-5]}"
                    if ready(record_dir, r, variant) and _lock(lock):
                        picked = (seed, r, variant, lock, record_dir, run_dir)
                        break
                if picked:
                    break
                held = _held(run_dir) if left[seed] else []
                if held:
                    waiting.append(f"seed {seed}: {', '.join(held)}")
            if picked is None:
                if not waiting:
                    return done_now
                if waiting != said:  # one line when what it waits for changes, not one every poll
                    print(f"waiting for {'; '.join(waiting)}", flush=True)
                    said = waiting
                time.sleep(poll_s)
                continue
            seed, r, variant, lock, record_dir, run_dir = picked
            try:
                if (r, variant) in _done(record_dir):  # recorded by another worker since the scan
                    continue
                if seed not in seeds:
                    seeds[seed] = _Seed(settings, seed, record_dir, run_dir)
                t0 = time.perf_counter()
                row = run_network(seeds[seed], r, variant)
            finally:
                lock.unlink(missing_ok=True)
            budget[0] -= 1
            done_now += 1
            print(f"seed {seed} round {r} {variant} ({row['sparsity']:.1%}): FID {row['fid']:.4g}, KID(test) "
                  f"{row['kid_test']:.4g}, loss at init {row['loss_at_init']:.3f}, {time.perf_counter() - t0:.0f} s "
                  f"-> {record_dir}", flush=True)
        return done_now
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="quality_digits_converged", help="the study: records go to RECORDS/NAME/")
    ap.add_argument("--dataset", default="digits", choices=sorted(DATASET_DEFAULTS))
    ap.add_argument("--image-size", type=int, default=None, help="default: 16 for digits, 32 for mnist5k")
    ap.add_argument("--preset", default=None, help="UNet preset; default: tiny for digits, mnist32 for mnist5k")
    ap.add_argument("--extractor", default=None, help="FID features; default: the dataset's offline extractor")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prune-per-round", type=float, default=0.5, help="fraction of surviving weights per round")
    ap.add_argument("--rounds", type=int, default=5, help="pruning rounds (with --prune-per-round)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=None,
                    help="explicit sparsity after each round (instead of --prune-per-round/--rounds)")
    # 6000: at 4000 the dense FID still fell 16-19 % by 1.5 T (recorded in results/quality_digits_T4000/).
    ap.add_argument("--steps", type=int, default=6000, help="training steps of every network (T)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--controls", nargs="*", default=["random_reinit"], choices=["random_reinit"])
    ap.add_argument("--arms", nargs="+", default=["ticket"], choices=ARMS,
                    help="ticket: IMP with rewinding and the controls; continue: prune and keep training "
                         "(Jiang et al.'s released code), from the seed's recorded dense weights")
    ap.add_argument("--block-out-channels", type=int, nargs="+", default=None,
                    help="the UNet's widths per level (the preset's by default; tiny: 32 48 48)")
    ap.add_argument("--rounds-only", type=int, nargs="+", default=None, help="train only these pruned rounds")
    ap.add_argument("--control-rounds", type=int, nargs="+", default=None, help="controls only at these rounds")
    ap.add_argument("--masks-from", default=None, metavar="NAME",
                    help="read the ticket masks from study NAME's records (same seed) instead of pruning here")
    ap.add_argument("--n", type=int, default=2000, help="samples per network for FID/KID")
    ap.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--max-networks", type=int, default=-1, help="stop after this many networks (-1: all)")
    ap.add_argument("--jobs", type=int, default=1, help="workers side by side; they share the networks, also of one seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--records", default=str(RECORDED), help="where studies are recorded (default: the package's "
                    "lthdiff/bench/results)")
    ap.add_argument("--run-root", default=None, help="run directories (default: $XDG_CACHE_HOME/lthdiff/NAME)")
    ap.add_argument("--aggregate", metavar="DIR", default=None, help="build NAME.md/.json from the records in DIR")
    ap.add_argument("--out", default=None, help="with --aggregate: where to write (default: DIR)")
    ap.add_argument("--readme", default=None, metavar="FILE",
                    help="with --aggregate: put the study's summary between <!-- study --> and <!-- /study --> in FILE")
    args = ap.parse_args(argv)
    if args.aggregate is not None:
        d = Path(args.aggregate)
        if not d.is_dir():
            ap.error(f"--aggregate {d}: no such folder (a study folder holds seed_<N>/ records)")
        agg = aggregate_records(d)
        md = markdown(d.name, agg)
        write_results(args.out or d, d.name, agg, md)
        print(md)
        if args.readme:
            update_readme(args.readme, study_summary(agg))
        return 0
    defaults = DATASET_DEFAULTS[args.dataset]
    args.image_size = args.image_size or defaults["image_size"]
    args.preset = args.preset or defaults["preset"]
    args.extractor = args.extractor or defaults["extractor"]
    args.run_root = args.run_root or str(_default_run_root(args.name))
    if not 0 < args.prune_per_round < 1:
        ap.error(f"--prune-per-round must be in (0, 1), got {args.prune_per_round}")
    if args.rounds < 1 or args.steps < 20 or args.n < 2 or args.jobs < 1 or args.threads < 1:
        ap.error(f"--rounds >= 1, --steps >= 20, --n >= 2, --jobs >= 1 and --threads >= 1 needed; got {args.rounds}, "
                 f"{args.steps}, {args.n}, {args.jobs}, {args.threads}")
    if args.jobs > 1:
        procs = [subprocess.Popen([sys.executable, "-m", "lthdiff.bench", "quality", *_without(argv, "--jobs"),
                                   "--jobs", "1"]) for _ in range(args.jobs)]
        return 1 if any(p.wait() for p in procs) else 0
    _work(args, [args.max_networks])
    return 0


def _without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` without the given flags and their values."""
    out, skip = [], False
    for a in argv:
        if a in flags:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out
