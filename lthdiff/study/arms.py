"""A study's arms: one small class a kind of network, behind one interface (open_lth's levels and branches).

Every network of a study is ``(round, variant)``.  A variant's class says which rounds it has, whether the
records of a seed hold what it starts from (:meth:`Arm.ready`), the :class:`lthdiff.lottery.network.Job` that
trains it (start weights, mask, steps, run folder), and what it records for the networks after it
(:meth:`Arm.after`: the next mask, kept weights).  The ``[study] arms`` names bring these variants:

* ``ticket`` - IMP rewinding to theta_0 (Frankle & Carbin 2018): the dense network (round 0, recorded as
  ``ticket``), its convergence checks ``dense_half`` (its EMA at T/2) and ``dense_continued`` (continued to
  1.5 T from its last checkpoint, optimizer state included), then the ticket theta_0 * m_r of every round and
  the controls (``[imp] controls``: ``random_reinit`` a fresh init * m_r, ``random_mask`` theta_0 * a random
  mask of the same per-layer sparsity; :mod:`lthdiff.lottery.controls`);
* ``late`` - IMP rewinding to theta_K, K = T / 20 (Frankle et al. 2019, "Stabilizing the Lottery Ticket
  Hypothesis", Sec. 3: 0.1-7 % of training), each network trained T - K steps; theta_K is recorded;
* ``continue`` - prune and keep training the trained weights, what the released code of Jiang et al. 2023
  (arXiv 2310.18823) does; the chain carries its trained weights in the records;
* ``structured`` - channel pruning of the recorded dense network to ``[study] structured_reductions`` fewer MACs
  with each of ``structured_importances`` (:func:`lthdiff.pruners.channels.ticket`), three networks of the same
  small architecture each: the structured ticket (theta_0 at the kept channels), scratch (a fresh init; Liu et al.
  2019, "Rethinking the value of network pruning") and fine-tune (the pruned trained weights; Fang et al. 2023,
  Diff-Pruning), every one trained T steps.  Variants are named ``structured_<kind>_<percent>_<importance>``;
  scratch, the same network for every importance, ``structured_scratch_<percent>``.

To add an arm: one class here, listed in :data:`ARMS`; the plan, the queue, the aggregate follow.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Sequence

from lthdiff import masks as M
from lthdiff.config import ConfigError
from lthdiff.lottery.network import Job
from lthdiff.lottery.runs import network_dir, snapshot_dir
from . import records as R

__all__ = ["LATE_FRACTION", "Arm", "Dense", "DenseHalf", "DenseContinued", "Ticket", "Late", "Continue", "Control",
           "Structured", "STRUCTURED_KINDS", "STRUCTURED_CHECKS", "structured_arms",
           "ARMS", "STUDY_CONTROLS", "mask_dir", "check_arms", "variant_class", "plan", "mask_name", "late_rewind_step"]

LATE_FRACTION = 20  # K = T // 20: 5 % of training, inside Frankle et al. 2019's 0.1-7 %
STUDY_CONTROLS = ("random_reinit", "random_mask")  # one_shot needs the whole IMP run folder, not records


def late_rewind_step(settings: dict[str, Any]) -> int:
    """K of the late-rewinding arm, in training steps: T // 20 (5 % of training)."""
    return int(settings["steps"]) // LATE_FRACTION


def mask_name(arm: str, r: int) -> str:
    """The recorded mask an arm's round-``r`` network trains with: round 1 is shared by every arm (dense
    round 0 pruned once, ``mask_r01.npz``); later rounds prune the arm's own previous network."""
    return f"mask_r{r:02d}.npz" if arm == "ticket" or r == 1 else f"mask_{arm}_r{r:02d}.npz"


def mask_dir(settings: dict[str, Any], record_dir: Path) -> Path:
    """Where the ticket chain's masks are read: this seed's records, or (``masks_from``) the same seed of another
    recorded study beside this one, whose masks a longer-training study reuses without writing there."""
    src = settings.get("masks_from")
    return record_dir.parent.parent / src / record_dir.name if src else record_dir


def _pruned_rounds(settings: dict[str, Any]) -> list[int]:
    only = settings.get("rounds_only")
    return [r for r in range(1, len(settings["schedule"]) + 1) if not only or r in only]


def _prune(ctx: Any, trained: Any, r: int, mask: M.Mask) -> dict:
    """The mask after round ``r``: the study's rule (global magnitude, or an allocation rule) on ``trained``."""
    from lthdiff import pruners

    target = ctx.settings["schedule"][r]
    rule = ctx.settings.get("allocation")
    if rule:
        from lthdiff.pruners.allocation import allocate

        ls = allocate(rule, trained, target, mask=mask)
        return pruners.magnitude(trained, target, scope="layer", mask=mask, layer_sparsity=ls)
    return pruners.magnitude(trained, target, scope="global", mask=mask)


class Arm:
    """One kind of network: its rounds, what it starts from, how it trains and what it leaves behind."""

    variant = ""
    chain = "ticket"  # whose masks it trains with (mask_name)

    def rounds(self, settings: dict[str, Any]) -> list[int]:
        return _pruned_rounds(settings)

    def ready(self, settings: dict[str, Any], rec: Path, r: int) -> bool:
        """Whether the seed's records ``rec`` hold what round ``r`` of this variant starts from."""
        d = mask_dir(settings, rec) if self.chain == "ticket" else rec
        return (d / mask_name(self.chain, r)).exists()

    def deps(self, settings: dict[str, Any], r: int) -> list[tuple[int, str]]:
        """The networks whose records round ``r`` starts from (the chain as task dependencies, for Ray)."""
        if self.chain == "ticket" and settings.get("masks_from"):
            return []
        return [(r - 1, self.chain if r > 1 else "ticket")]

    def job(self, ctx: Any, r: int) -> Any:
        """A :class:`Job`, or for a network that is only scored, ``(ema model, losses, steps[, its start])``."""
        raise NotImplementedError

    def after(self, ctx: Any, r: int, info: Any) -> dict[str, Any]:
        """Record what later networks need (next mask, kept weights); returns extra fields of the row."""
        return {}

    def _next_mask(self, ctx: Any, r: int, info: Any, mask: M.Mask) -> dict[str, Any]:
        if r >= len(ctx.settings["schedule"]) or ctx.settings.get("masks_from"):
            return {}
        name = mask_name(self.chain, r + 1)
        if not (ctx.record_dir / name).exists():
            M.save_packed(ctx.record_dir / name, _prune(ctx, info.load_model(ema=False), r, mask))
        return {"next_mask": name}


class Dense(Arm):
    """Round 0: theta_0 trained T steps (snapshots at T/2 and at K on the way; last checkpoint kept)."""

    variant = "ticket"

    def rounds(self, settings: dict[str, Any]) -> list[int]:
        return [0]

    def ready(self, settings: dict[str, Any], rec: Path, r: int) -> bool:
        return True

    def deps(self, settings: dict[str, Any], r: int) -> list[tuple[int, str]]:
        return []

    def job(self, ctx: Any, r: int) -> Job:
        t = ctx.settings["steps"]
        return Job(ctx.theta0, M.ones(ctx.theta0), t, network_dir(ctx.run_dir, 0), 0, desc=f"seed {ctx.seed} dense",
                   snapshots={t // 2: snapshot_dir(ctx.run_dir, "half"), late_rewind_step(ctx.settings):
                              snapshot_dir(ctx.run_dir, "theta_k")}, keep_checkpoint=True, extra={"target_sparsity": 0.0})

    def after(self, ctx: Any, r: int, info: Any) -> dict[str, Any]:
        from lthdiff.models.unets import load_model

        mask = M.ones(ctx.theta0)
        w = ctx.record_dir / "weights_r00.safetensors"
        if not w.exists():  # the prune-and-continue chain starts from the trained weights
            R.save_kept_weights(w, info.load_model(ema=False).state_dict(), mask)
        k = snapshot_dir(ctx.run_dir, "theta_k")
        if k.exists() and not (ctx.record_dir / "weights_theta_k.safetensors").exists():
            R.save_kept_weights(ctx.record_dir / "weights_theta_k.safetensors", load_model(k).state_dict(), {})
        return self._next_mask(ctx, 0, info, mask)


class DenseHalf(Arm):
    """The dense network's EMA at T/2 (a snapshot of round 0; trained again from the seed when missing)."""

    variant = "dense_half"

    def rounds(self, settings: dict[str, Any]) -> list[int]:
        return [0]

    def ready(self, settings: dict[str, Any], rec: Path, r: int) -> bool:
        return (rec / R.network_name(0, "ticket")).exists()

    def deps(self, settings: dict[str, Any], r: int) -> list[tuple[int, str]]:
        return [(0, "ticket")]

    def job(self, ctx: Any, r: int) -> Any:
        from lthdiff.lottery.network import snapshot_ema_dir
        from lthdiff.lottery.runs import read_losses
        from lthdiff.models.unets import load_model

        half, snap = ctx.settings["steps"] // 2, snapshot_dir(ctx.run_dir, "half")
        if snap.exists() and (network_dir(ctx.run_dir, 0) / "summary.json").exists():
            return load_model(snapshot_ema_dir(snap)), read_losses(network_dir(ctx.run_dir, 0))[:half], half
        kept = ctx.run_dir / "round00_ckpt_kept" / f"ckpt-{half:07d}.pt"  # run folders of the 2026-12 benchmark
        if kept.exists():
            import torch

            from lthdiff.training.loop import ema_from_checkpoint

            state = torch.load(kept, map_location="cpu", weights_only=False)
            return ema_from_checkpoint(ctx.theta0, state), list(state["losses"]), int(state["step"])
        return Job(ctx.theta0, M.ones(ctx.theta0), half, snapshot_dir(ctx.run_dir, "half_retrained"), 0,
                   variant=self.variant, desc=f"seed {ctx.seed} dense to T/2")


class DenseContinued(Arm):
    """The dense network continued from its last checkpoint to 1.5 T (from the seed when that is missing:
    training is deterministic with a constant LR, so both give the same network)."""

    variant = "dense_continued"

    def rounds(self, settings: dict[str, Any]) -> list[int]:
        return [] if settings.get("masks_from") else [0]

    def ready(self, settings: dict[str, Any], rec: Path, r: int) -> bool:
        return (rec / R.network_name(0, "ticket")).exists()

    def deps(self, settings: dict[str, Any], r: int) -> list[tuple[int, str]]:
        return [(0, "ticket")]

    def job(self, ctx: Any, r: int) -> Job:
        dense = network_dir(ctx.run_dir, 0)
        cont = dense if (dense / "ckpt" / "latest.json").exists() else None
        return Job(ctx.theta0, M.ones(ctx.theta0), ctx.settings["steps"] * 3 // 2, snapshot_dir(ctx.run_dir, "continued"),
                   0, variant=self.variant, desc=f"seed {ctx.seed} dense continued to 1.5 T", continues=cont)


class Ticket(Arm):
    """theta_0 * m_r, trained T steps (Frankle & Carbin 2018)."""

    variant = "ticket"

    def job(self, ctx: Any, r: int) -> Job:
        return Job(ctx.theta0, ctx.mask(self.chain, r), ctx.settings["steps"], network_dir(ctx.run_dir, r), r,
                   desc=f"seed {ctx.seed} round {r} ticket")

    def after(self, ctx: Any, r: int, info: Any) -> dict[str, Any]:
        return self._next_mask(ctx, r, info, info.load_mask())


class Late(Arm):
    """theta_K * m_r, trained T - K steps (Frankle et al. 2019); theta_K from the records."""

    variant = chain = "late"

    def deps(self, settings: dict[str, Any], r: int) -> list[tuple[int, str]]:
        return list(dict.fromkeys(super().deps(settings, r) + [(0, "ticket")]))  # theta_K is recorded with dense

    def job(self, ctx: Any, r: int) -> Job:
        from lthdiff.store.io import tensors_digest

        k = late_rewind_step(ctx.settings)
        start = ctx.theta_k()
        digest = tensors_digest(start.state_dict())
        before = {x.get("theta_k_digest") for x in R.read_networks(ctx.record_dir) if x["variant"] == "late"} - {None}
        if before and digest not in before:
            # Another device or thread count rounds differently: the chain goes on, but from another start.
            warnings.warn(f"seed {ctx.seed}: theta_K here (digest {digest[:12]}) differs from the recorded late "
                          f"networks' ({', '.join(sorted(d[:12] for d in before))}); the record keeps both digests",
                          stacklevel=2)
        return Job(start, ctx.mask(self.chain, r), ctx.settings["steps"] - k, network_dir(ctx.run_dir, r, "late", "late"),
                   r, variant=self.variant, desc=f"seed {ctx.seed} round {r} late",
                   extra={"rewind_step": k, "theta_k_digest": digest})

    def after(self, ctx: Any, r: int, info: Any) -> dict[str, Any]:
        return self._next_mask(ctx, r, info, info.load_mask())


class Continue(Arm):
    """The previous network's trained weights * m_r, trained T more steps (no rewinding)."""

    variant = chain = "continue"

    def _prev(self, r: int) -> str:
        return "weights_r00.safetensors" if r == 1 else f"weights_continue_r{r - 1:02d}.safetensors"

    def ready(self, settings: dict[str, Any], rec: Path, r: int) -> bool:
        return (rec / self._prev(r)).exists() and super().ready(settings, rec, r)

    def job(self, ctx: Any, r: int) -> Job:
        prev_mask = ctx.mask(self.chain, r - 1) if r > 1 else M.ones(ctx.theta0)
        start = copy.deepcopy(ctx.theta0)
        start.load_state_dict(R.load_kept_weights(ctx.record_dir / self._prev(r), ctx.theta0.state_dict(), prev_mask))
        return Job(start, ctx.mask(self.chain, r), ctx.settings["steps"], network_dir(ctx.run_dir, r, "continue", "continue"),
                   r, variant=self.variant, desc=f"seed {ctx.seed} round {r} continue")

    def after(self, ctx: Any, r: int, info: Any) -> dict[str, Any]:
        if r >= len(ctx.settings["schedule"]):
            return {}
        mask = info.load_mask()
        w = ctx.record_dir / f"weights_continue_r{r:02d}.safetensors"
        if not w.exists():
            R.save_kept_weights(w, info.load_model(ema=False).state_dict(), mask)
        return self._next_mask(ctx, r, info, mask)


class Control(Arm):
    """A control of the ticket at round r (:mod:`lthdiff.lottery.controls`), on the ticket's recorded mask."""

    def __init__(self, name: str) -> None:
        self.variant = name

    def rounds(self, settings: dict[str, Any]) -> list[int]:
        only = settings.get("control_rounds")
        return [r for r in _pruned_rounds(settings) if not only or r in only]

    def job(self, ctx: Any, r: int) -> Job:
        from lthdiff.lottery.controls import CONTROLS, RoundContext

        mask = ctx.mask("ticket", r)
        rc = RoundContext(round=r, target=M.sparsity(mask), mask=mask, trained=ctx.theta0, template=ctx.theta0,
                          seed=ctx.seed, run_dir=ctx.run_dir, rewind_dir=ctx.run_dir, rewind_step=None)
        start, cmask = CONTROLS[self.variant].start_and_mask(rc)
        return Job(start, cmask, ctx.settings["steps"], network_dir(ctx.run_dir, r, self.variant), r,
                   variant=self.variant, desc=f"seed {ctx.seed} round {r} {self.variant}")


STRUCTURED_KINDS = ("ticket", "scratch", "finetune")
# the structured ticket's convergence check, as dense's: its EMA at T/2 (a snapshot of its run) and the ticket
# continued from its last checkpoint to 1.5 T
STRUCTURED_CHECKS = ("half", "continued")


class Structured(Arm):
    """One network of a structured ticket study: ``kind`` (ticket, scratch, finetune) of the recorded dense network
    pruned to ``reduction`` fewer MACs with ``importance`` (per-level ratios, :func:`ratio_for_macs`), or one of
    the ticket's convergence checks (``half``: its EMA at T/2; ``continued``: trained on to 1.5 T).

    The per-level ratios fix the small architecture whatever the importance, so scratch (a fresh init of it) is one
    network per reduction, ``importance`` None, named ``structured_scratch_<percent>``; the tickets of every
    importance are compared with it."""

    chain = "structured"

    def __init__(self, kind: str, reduction: float, importance: str | None) -> None:
        if kind not in STRUCTURED_KINDS + STRUCTURED_CHECKS:
            raise ValueError(f"unknown structured kind {kind!r}; accepted: "
                             f"{', '.join(STRUCTURED_KINDS + STRUCTURED_CHECKS)}")
        if (kind == "scratch") != (importance is None):
            raise ValueError(f"structured {kind} with importance {importance!r}: scratch takes none, "
                             "the other kinds take one")
        self.kind, self.reduction, self.importance = kind, float(reduction), importance
        self.variant = self._name(kind)

    def _name(self, kind: str) -> str:
        return f"structured_{kind}_{round(100 * self.reduction)}" + (f"_{self.importance}" if self.importance else "")

    def _dir(self, ctx: Any, kind: str) -> Path:
        return network_dir(ctx.run_dir, 0, self._name(kind), self.chain)

    def rounds(self, settings: dict[str, Any]) -> list[int]:
        return [0]

    def ready(self, settings: dict[str, Any], rec: Path, r: int) -> bool:
        if self.kind in STRUCTURED_CHECKS:
            return (rec / R.network_name(0, self._name("ticket"))).exists()
        return (rec / "weights_r00.safetensors").exists()

    def deps(self, settings: dict[str, Any], r: int) -> list[tuple[int, str]]:
        return [(0, self._name("ticket") if self.kind in STRUCTURED_CHECKS else "ticket")]

    def job(self, ctx: Any, r: int) -> Any:
        from lthdiff.pruners.channels import config_macs, ratio_for_macs, ticket

        dense = copy.deepcopy(ctx.theta0)  # the recorded trained dense weights (raw), not retrained here
        dense.load_state_dict(R.load_kept_weights(ctx.record_dir / "weights_r00.safetensors",
                                                  ctx.theta0.state_dict(), M.ones(ctx.theta0)))
        ratio = ratio_for_macs(dense, self.reduction, per_level=True)
        # scratch needs only the architecture, which magnitude (data-free) gives as any importance would
        arms = ticket(dense, ctx.theta0, ratio, importance=self.importance or "magnitude", data=ctx.ds, seed=ctx.seed,
                      progress=False)
        start = getattr(arms, "ticket" if self.kind in STRUCTURED_CHECKS else self.kind)
        t, tdir, half = ctx.settings["steps"], self._dir(ctx, "ticket"), snapshot_dir(ctx.run_dir, self._name("half"))
        kw: dict[str, Any] = {}
        steps = t
        if self.kind == "ticket":
            kw = {"snapshots": {t // 2: half}, "keep_checkpoint": True}
        elif self.kind == "half":
            from lthdiff.lottery.network import snapshot_ema_dir
            from lthdiff.lottery.runs import read_losses
            from lthdiff.models.unets import load_model

            if half.exists() and (tdir / "summary.json").exists():
                return load_model(snapshot_ema_dir(half)), read_losses(tdir)[:t // 2], t // 2, start
            steps = t // 2  # deterministic: the same network as the ticket's run at T/2
        elif self.kind == "continued":
            steps = t * 3 // 2
            kw = {"continues": tdir if (tdir / "ckpt" / "latest.json").exists() else None}
        return Job(start, M.ones(start), steps, self._dir(ctx, self.kind), 0, variant=self.variant,
                   desc=f"seed {ctx.seed} {self.variant}", **kw,
                   extra={"macs_ratio": config_macs(start) / config_macs(ctx.theta0),
                          "block_out_channels": list(start.config.block_out_channels),
                          "params": sum(p.numel() for p in start.parameters())})


def structured_arms(reductions: Sequence[float], importances: Sequence[str]) -> list[Structured]:
    """The structured networks of a study: per reduction, the ticket and fine-tune of every importance and one
    scratch network (after the first importance's ticket); then every ticket's convergence check (T/2, 1.5 T)."""
    out, checks = [], []
    for red in reductions:
        for i, imp in enumerate(importances):
            out.append(Structured("ticket", red, imp))
            if i == 0:
                out.append(Structured("scratch", red, None))
            out.append(Structured("finetune", red, imp))
            checks += [Structured(k, red, imp) for k in STRUCTURED_CHECKS]
    return out + checks


def _parse_structured(variant: str) -> Structured | None:
    parts = variant.split("_")
    if len(parts) >= 3 and parts[0] == "structured" and parts[1] in STRUCTURED_KINDS + STRUCTURED_CHECKS \
            and parts[2].isdigit():
        return Structured(parts[1], int(parts[2]) / 100, "_".join(parts[3:]) or None)
    return None


# [study] arms name -> the variants it brings, in the order a seed trains them
ARMS: dict[str, tuple[Arm, ...]] = {"ticket": (Dense(), DenseHalf(), DenseContinued(), Ticket()),
                                    "continue": (Continue(),), "late": (Late(),), "structured": ()}


def check_arms(arms: Sequence[str], controls: Sequence[str]) -> None:
    """One line naming an unknown arm or control, or a study without the ticket arm everything starts from."""
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"[study] arms has unknown {bad[0]!r}; accepted: {', '.join(ARMS)}")
    if "ticket" not in arms:
        raise ConfigError(f"[study] arms = {list(arms)!r} lacks 'ticket': the dense network and the first mask "
                          "every arm starts from come from it")
    bad = [c for c in controls if c not in STUDY_CONTROLS]
    if bad:
        raise ConfigError(f"[imp] controls has {bad[0]!r}, not accepted in a study; accepted: {', '.join(STUDY_CONTROLS)}")


def variant_class(variant: str, r: int) -> Arm:
    """The arm class of network ``(r, variant)``."""
    if variant in STUDY_CONTROLS and r > 0:
        return Control(variant)
    if r == 0 and _parse_structured(variant) is not None:
        return _parse_structured(variant)
    found = [a for group in ARMS.values() for a in group if a.variant == variant and (0 in a.rounds(_ANY)) == (r == 0)]
    if not found:
        raise ValueError(f"unknown network (round {r}, {variant!r}); accepted variants: "
                         f"{', '.join(dict.fromkeys(a.variant for g in ARMS.values() for a in g))}, "
                         f"{', '.join(STUDY_CONTROLS)}")
    return found[0]


_ANY = {"schedule": [0.5]}  # a one-round study: round 0 arms answer [0], the others [1]


def plan(settings: dict[str, Any], arms: Sequence[str] = ("ticket",),
         structured: Sequence[Structured] = ()) -> list[tuple[int, str]]:
    """The networks of one seed, in the order they are trained: ``(round, variant)``; the ticket arm's pruned
    rounds each followed by their controls; ``structured`` (:func:`structured_arms`) with the structured arm."""
    out: list[tuple[int, str]] = []
    for name in arms:
        for arm in (tuple(structured) if name == "structured" else ARMS[name]):
            for r in arm.rounds(settings):
                out.append((r, arm.variant))
                if isinstance(arm, Ticket):
                    out += [(r, c) for c in settings["controls"] if r in Control(c).rounds(settings)]
    return out
