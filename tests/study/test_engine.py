"""Networks a study trains from its records alone equal run_imp's, and each arm starts where its definition says.

One tiny study (seed 4, T = 40 steps, 2 rounds, the three arms, both controls) is run network by network, its run
folders wiped before every network (a fresh machine: only the records remain); each network's folder is kept
aside for the comparisons.
"""
import copy
import json
import shutil

import pytest
import torch

from lthdiff import masks as M
from lthdiff.config import load_config
from lthdiff.data import load_dataset
from lthdiff.lottery import IMPResult, RoundInfo, run_imp
from lthdiff.models import unet
from lthdiff.study import load_spec, records as R
from lthdiff.study.arms import late_rewind_step, plan
from lthdiff.study.engine import SeedContext
from lthdiff.training import loss_at_start, train

from tiny_study import write_config

SEED, STEPS, BS = 4, 40, 8
K = STEPS // 20


def _folder(r, variant):
    if variant in ("ticket",) or r == 0 and variant == "ticket":
        return f"round_{r:02d}"
    if variant in ("late", "continue"):
        return f"{variant}/round_{r:02d}"
    if variant == "dense_continued":
        return "round_00_continued"
    if variant == "dense_half":
        return "round_00_half_retrained"
    return f"round_{r:02d}/controls/{variant}"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from lthdiff.cli import main

    tmp = tmp_path_factory.mktemp("engine")
    cfg = write_config(tmp / "c.toml", steps=STEPS, rounds=2, seeds=(SEED,), arms=("ticket", "continue", "late"),
                       controls=("random_reinit", "random_mask"), threads=torch.get_num_threads())
    rec = tmp / "rec" / "s" / f"seed_{SEED}"
    kept = tmp / "kept"
    argv = ["study", "run", str(cfg), "--records", str(tmp / "rec"), "--run-root", str(tmp / "runs"),
            "--max-networks", "1"]
    settings = load_spec(cfg).settings
    for r, variant in plan(settings, ["ticket", "continue", "late"]):
        shutil.rmtree(tmp / "runs", ignore_errors=True)  # a fresh machine: only the records remain
        assert main(argv) == 0
        assert (rec / R.network_name(r, variant)).exists(), (r, variant)
        src = tmp / "runs" / f"seed_{SEED}" / _folder(r, variant)
        if src.is_dir():
            shutil.copytree(src, kept / f"r{r:02d}_{variant}")
    assert main(argv[:-2]) == 0  # nothing left: no network is trained or recorded twice
    assert len(R.read_networks(rec)) == len(plan(settings, ["ticket", "continue", "late"]))
    return {"cfg": cfg, "rec": rec, "kept": kept, "tmp": tmp, "settings": settings}


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _imp(tmp, rewind, controls=()):
    run_dir = tmp / f"imp_{rewind.replace(':', '_')}"
    if not (run_dir / "round_02" / "summary.json").exists():
        run_imp(unet("tiny", seed=SEED), load_dataset("digits", image_size=16), rounds=2, sparsity_schedule=[0.5, 0.75],
                steps_per_round=STEPS, run_dir=run_dir, controls=controls, seed=SEED, batch_size=BS, lr=1e-3,
                rewind=rewind, progress=False)
    return IMPResult.load(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("rewind, variant", [("init", "ticket"), (f"step:{K}", "late"), ("none", "continue")])
def test_each_arm_from_the_records_equals_run_imp(study, rewind, variant):
    """ticket = run_imp(rewind="init"), late = run_imp(rewind="step:K"), continue = run_imp(rewind="none"),
    network for network: weights, mask, loss at init, sparsity and steps."""
    imp = _imp(study["tmp"], rewind, ("random_reinit",) if variant == "ticket" else ())
    for r in (1, 2):
        got = RoundInfo.from_dir(study["kept"] / f"r{r:02d}_{variant}", variant=variant)
        want = imp.rounds[r]
        row = json.loads((study["rec"] / R.network_name(r, variant)).read_text())
        assert _same_weights(got.load_model(ema=False), want.load_model(ema=False)), (variant, r)
        assert all(torch.equal(got.load_mask()[k], want.load_mask()[k]) for k in want.load_mask())
        assert row["loss_at_init"] == pytest.approx(want.loss_at_init, rel=1e-6)
        assert row["sparsity"] == pytest.approx(want.sparsity) and row["steps"] == want.summary["steps"]
    if variant == "ticket":
        ctrl = RoundInfo.from_dir(study["kept"] / "r02_random_reinit")
        assert _same_weights(ctrl.load_model(ema=False), imp.rounds[2].controls["random_reinit"].load_model(ema=False))
        dense = RoundInfo.from_dir(study["kept"] / "r00_ticket")
        assert _same_weights(dense.load_model(ema=False), imp.rounds[0].load_model(ema=False))
    else:  # round 2 of the arm pruned its own round 1, not the ticket's
        own = M.load_packed(study["rec"] / f"mask_{variant}_r02.npz")
        tick = M.load_packed(study["rec"] / "mask_r02.npz")
        assert not all(torch.equal(own[k], tick[k]) for k in own)


@pytest.mark.slow
def test_dense_continued_equals_one_run_of_1_5_T(study):
    ds = load_dataset("digits", image_size=16)
    cont = RoundInfo.from_dir(study["kept"] / "r00_dense_continued").load_model(ema=False)
    once = train(unet("tiny", seed=SEED), ds, STEPS * 3 // 2, batch_size=BS, lr=1e-3, seed=SEED,
                 mask=M.ones(unet("tiny", seed=SEED)), progress=False).model
    assert _same_weights(cont, once)
    assert json.loads((study["rec"] / "r00_dense_continued.json").read_text())["steps"] == STEPS * 3 // 2


@pytest.mark.slow
def test_each_arm_starts_where_its_definition_says(study):
    """From the records alone, each arm's start weights and mask, against an independent construction:
    ticket theta_0 * m (theta_0 from the seed); late theta_K * m (the dense run stopped at K); continue the
    recorded trained weights * m (the dense network's own folder); the loss at init of each row likewise."""
    from lthdiff.study.arms import variant_class

    spec = load_spec(study["cfg"], records=study["tmp"] / "rec", run_root=study["tmp"] / "fresh")
    ctx = SeedContext(spec.config, spec.settings, SEED, study["rec"], study["tmp"] / "fresh" / f"seed_{SEED}")
    ds = load_dataset("digits", image_size=16)
    theta0 = unet("tiny", seed=SEED)
    theta_k = train(unet("tiny", seed=SEED), ds, K, batch_size=BS, lr=1e-3, seed=SEED,
                    mask=M.ones(theta0), progress=False).model
    dense = RoundInfo.from_dir(study["kept"] / "r00_ticket").load_model(ema=False)
    cont1 = RoundInfo.from_dir(study["kept"] / "r01_continue").load_model(ema=False)
    want = {("ticket", 1): (theta0, "mask_r01.npz"), ("ticket", 2): (theta0, "mask_r02.npz"),
            ("late", 1): (theta_k, "mask_r01.npz"), ("late", 2): (theta_k, "mask_late_r02.npz"),
            ("continue", 1): (dense, "mask_r01.npz"), ("continue", 2): (cont1, "mask_continue_r02.npz")}
    for (variant, r), (start, mask_file) in want.items():
        job = variant_class(variant, r).job(ctx, r)
        mask = M.load_packed(study["rec"] / mask_file)
        assert all(torch.equal(job.mask[k], mask[k]) for k in mask), (variant, r)
        if variant == "continue" and r == 2:  # the kept weights are the previous network's, pruned by its mask
            prev = M.load_packed(study["rec"] / "mask_r01.npz")
            start = copy.deepcopy(start)
            M.apply(start, prev)
        assert _same_weights(job.start, start), (variant, r)
        row = json.loads((study["rec"] / R.network_name(r, variant)).read_text())
        assert row["loss_at_init"] == pytest.approx(loss_at_start(start, ds, mask), rel=1e-6), (variant, r)
    assert K == late_rewind_step(spec.settings)


@pytest.mark.slow
def test_controls_differ_from_the_ticket_for_every_seed_and_repeat_for_the_same_seed(study):
    """random_reinit: another initialisation than theta_0 for every seed tried, the same for the same seed;
    random_mask: theta_0 with another mask of the ticket's per-layer sparsity."""
    from lthdiff.study.arms import variant_class

    spec = load_spec(study["cfg"])
    starts = {}
    for seed in (0, 1, 2, SEED):
        ctx = SeedContext(spec.config, spec.settings, seed, study["tmp"] / "ctl" / f"seed_{seed}",
                          study["tmp"] / "ctl_runs")
        ctx.mask = lambda chain, r: M.load_packed(study["rec"] / "mask_r01.npz")  # the recorded ticket mask
        job = variant_class("random_reinit", 1).job(ctx, 1)
        theta0 = unet("tiny", seed=seed)
        sd, s0 = job.start.state_dict(), theta0.state_dict()
        assert not any(torch.equal(sd[k], s0[k]) for k in s0 if k.endswith("weight") and s0[k].dim() > 1), seed
        assert torch.equal(torch.cat([m.flatten() for m in job.mask.values()]),
                           torch.cat([m.flatten() for m in ctx.mask("ticket", 1).values()]))
        again = variant_class("random_reinit", 1).job(ctx, 1)
        assert _same_weights(job.start, again.start)
        starts[seed] = job.start
        rm = variant_class("random_mask", 1).job(ctx, 1)
        tick = ctx.mask("ticket", 1)
        assert _same_weights(rm.start, theta0)
        assert not all(torch.equal(rm.mask[k], tick[k]) for k in tick)
        assert {k: int(v.sum()) for k, v in rm.mask.items()} == {k: int(v.sum()) for k, v in tick.items()}
    assert not _same_weights(starts[0], starts[1]) and not _same_weights(starts[1], starts[2])
