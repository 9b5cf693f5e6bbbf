"""The study recorded network by network (lthdiff.bench.records / quality): records, aggregate, continuation."""
import copy
import os
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from lthdiff import masks as M
from lthdiff.bench import quality as Q
from lthdiff.bench import records as R
from lthdiff.data import load_dataset
from lthdiff.lottery import run_imp
from lthdiff.store import CorruptFileError
from lthdiff.models import unet
from lthdiff.lottery import IMPResult, RoundInfo
from lthdiff.training import make_scheduler
from lthdiff.training import loss_at_start, train

SETTINGS = {"dataset": "digits", "image_size": 16, "preset": "tiny", "steps": 40, "batch_size": 32, "lr": 1e-3,
            "schedule": [0.5, 0.75], "rewind": "init", "controls": ["random_reinit"], "n": 2000, "sample_steps": 10,
            "extractor": "lthdiff-digits"}


# --------------------------------------------------------------------------- masks and weights
def test_mask_round_trip_is_bit_packed_and_checked(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = {"a.weight": torch.rand(7, 5, 3, generator=g) > 0.7, "b.weight": torch.rand(13, generator=g) > 0.2}
    path = R.save_mask(tmp_path / "m.npz", mask)
    back = R.load_mask(path)
    assert list(back) == list(mask) and all(torch.equal(back[k], mask[k]) for k in mask)
    import numpy as np

    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    assert arrays["m0"].size == math.ceil(7 * 5 * 3 / 8) and arrays["m1"].size == 2  # one bit a weight
    # one flipped bit in the stored array must not load as a different ticket
    arrays["m0"][0] ^= 1
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    with pytest.raises(CorruptFileError, match="digest"):
        R.load_mask(path)
    with pytest.raises(ValueError, match="bool"):
        R.save_mask(tmp_path / "x.npz", {"a": torch.ones(3)})


def test_kept_weights_store_only_the_kept_values(tmp_path):
    model = unet("tiny", seed=3)
    mask = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) > 0.9 for k, v in
            list(model.named_parameters())[:6] if v.dim() > 1}
    state = {k: (v * mask[k] if k in mask else v) for k, v in model.state_dict().items()}
    path = R.save_kept_weights(tmp_path / "w.safetensors", state, mask)
    back = R.load_kept_weights(path, model.state_dict(), mask)
    assert all(torch.equal(back[k], state[k]) for k in state)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        k = next(iter(mask))
        assert f.get_tensor(k).numel() == int(mask[k].sum())


# --------------------------------------------------------------------------- settings and rows
def test_settings_are_written_once_and_other_settings_refused(tmp_path):
    R.write_settings(tmp_path, {**SETTINGS, "seed": 0})
    assert R.write_settings(tmp_path, {**SETTINGS, "seed": 0})["steps"] == 40
    with pytest.raises(ValueError, match=r"steps: recorded 40, now 80"):
        R.write_settings(tmp_path, {**SETTINGS, "seed": 0, "steps": 80})
    row = {"round": 0, "variant": "ticket", "fid": 1.0}
    R.write_network(tmp_path, row)
    with pytest.raises(FileExistsError):
        R.write_network(tmp_path, {**row, "fid": 2.0})
    assert R.read_networks(tmp_path)[0]["fid"] == 1.0  # the recorded row is untouched


def _row(seed, r, variant, sparsity, fid, **kw):
    base = {"seed": seed, "round": r, "variant": variant, "sparsity": sparsity, "fid": fid, "kid": fid / 10,
            "kid_test": fid / 5, "fid_test": fid * 2, "final_loss": 0.05, "loss_at_init": 1.0, "steps": 40,
            "loss_per_100_steps": [0.1] * 10}
    return {**base, **kw}


def _hand_made_study(root, fids, conts=None):
    """fids[seed] = (dense, [(ticket, reinit) per round]); conts[seed] = dense continued FID."""
    for seed, (dense, rounds) in fids.items():
        d = root / f"seed_{seed}"
        R.write_settings(d, {**SETTINGS, "seed": seed, "init_digest": f"digest{seed}"})
        R.write_network(d, _row(seed, 0, "ticket", 0.0, dense, loss_at_init=1.1))
        if conts:
            R.write_network(d, _row(seed, 0, "dense_half", 0.0, dense * 1.5, steps=20))
            R.write_network(d, _row(seed, 0, "dense_continued", 0.0, conts[seed], steps=60,
                                    loss_per_100_steps=[0.1] * 15))
        for r, ((t, c), sp) in enumerate(zip(rounds, SETTINGS["schedule"]), start=1):
            R.write_network(d, _row(seed, r, "ticket", sp, t, loss_at_init=0.3))
            R.write_network(d, _row(seed, r, "random_reinit", sp, c, loss_at_init=1.0))


def test_aggregate_from_hand_made_records(tmp_path):
    fids = {0: (1.0, [(0.9, 1.2), (1.3, 1.1)]), 1: (1.2, [(1.0, 1.5), (1.6, 1.4)]), 2: (1.1, [(1.2, 1.0), (1.5, 2.0)])}
    _hand_made_study(tmp_path, fids, conts={0: 1.02, 1: 1.5, 2: 1.1})
    agg = Q.aggregate_records(tmp_path)
    assert agg["complete"] is True and agg["seeds"] == [0, 1, 2]
    # independent arithmetic: dense mean 1.1, sample std 0.1 -> bound 1.2
    dense = [1.0, 1.2, 1.1]
    bound = sum(dense) / 3 + math.sqrt(sum((x - 1.1) ** 2 for x in dense) / 2)
    m = agg["matching"]
    assert m["bound"] == pytest.approx(bound)
    # 50 %: mean(0.9, 1.0, 1.2) = 1.033 <= 1.2 matches; 75 %: mean(1.3, 1.6, 1.5) = 1.467 misses
    assert m["sparsity"] == pytest.approx(0.5) and m["first_miss"] == pytest.approx(0.75)
    t50 = next(r for r in agg["table"] if r["variant"] == "ticket" and r["sparsity"] == 0.5)
    assert t50["ratio_to_dense_per_seed"] == pytest.approx({0: 0.9, 1: 1.0 / 1.2, 2: 1.2 / 1.1})
    wins = {v["sparsity"]: v["ticket_wins"] for v in agg["versus"]["random_reinit"]}
    assert wins == {0.5: 2, 0.75: 1}  # 50 %: seeds 0, 1; 75 %: seed 2
    conv = {c["seed"]: c for c in agg["convergence"]}
    tol = max(agg["matching"]["dense_std"], 0.05 * 1.2)  # seed 1: |1.5 - 1.2| = 0.3 > tol
    assert conv[0]["converged"] is True and conv[1]["converged"] is False
    assert conv[1]["fid_tolerance"] == pytest.approx(tol) and conv[0]["fid_half"] == pytest.approx(1.5)
    # over seeds: 1.5 T - T = 0.02, 0.3, 0.0 -> mean 0.1067 > tolerance max(std 0.1, 5 % of 1.1) = 0.1
    o = agg["convergence_overall"]
    assert o["deltas"] == pytest.approx([0.02, 0.3, 0.0]) and o["delta_mean"] == pytest.approx(0.32 / 3)
    assert o["fid_tolerance"] == pytest.approx(0.1) and o["converged"] is False and o["seeds_within"] == 2
    init = {(r["sparsity"], r["variant"]): r["loss_at_init_mean"] for r in agg["loss_at_init"]}
    assert init[(0.0, "dense")] == pytest.approx(1.1) and init[(0.5, "ticket")] == pytest.approx(0.3)
    # the dense_half / dense_continued rows never count as dense in the verdict
    assert next(r for r in agg["table"] if r["variant"] == "dense")["seeds"] == 3
    md = Q.markdown("study", agg)
    assert "**50.0%**" in md and "first miss at 75.0%" in md and "Partial" not in md
    text = Q.study_summary(agg)  # the sentence the README and notebook 04 show, every number from agg
    assert "up to **50.0%** sparsity" in text and "first sparsity that misses is 75.0%" in text
    assert "50.0%: 0.941 ± 0.13 (0.9, 0.833, 1.09)" in text  # mean and sample std of 0.9, 1/1.2, 1.2/1.1
    assert "against random_reinit: 50.0% 2/3, 75.0% 1/3" in text
    assert "Dense converged at T in 2/3 seeds" in text and "seed 1: 1.8, 1.2, 1.5" in text
    assert "mean FID moved +0.107 ± 0.17 from T to 1.5 T: not converged on average" in text
    assert "**not converged**; 2/3 seeds within" in md
    assert "theta_0 1.1, ticket theta_0 * m 0.3 at 75.0%, random_reinit 1" in text


def test_aggregate_refuses_mixed_settings_and_says_partial(tmp_path):
    _hand_made_study(tmp_path, {0: (1.0, [(0.9, 1.2)]), 1: (1.1, [(1.0, 1.3)])})
    s = json.loads((tmp_path / "seed_1" / "settings.json").read_text())
    (tmp_path / "seed_1" / "settings.json").write_text(json.dumps({**s, "lr": 2e-3}))
    with pytest.raises(ValueError, match=r"lr: 0.001 \(seed 0\) vs 0.002 \(seed 1\)"):
        Q.aggregate_records(tmp_path)
    (tmp_path / "seed_1" / "settings.json").write_text(json.dumps(s))
    agg = Q.aggregate_records(tmp_path)
    assert agg["complete"] is False and agg["networks_recorded"] == {0: 3, 1: 3}
    assert "Partial" in Q.markdown("study", agg)


def test_aggregate_cli_writes_next_to_the_records(tmp_path):
    _hand_made_study(tmp_path / "mystudy", {0: (1.0, [(0.9, 1.2), (1.0, 1.1)])})
    assert Q.main(["--aggregate", str(tmp_path / "mystudy")]) == 0
    payload = json.loads((tmp_path / "mystudy" / "mystudy.json").read_text())
    assert payload["matching"]["sparsity"] == pytest.approx(0.75)
    with pytest.raises(SystemExit):
        Q.main(["--aggregate", str(tmp_path / "nothing_here")])
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- study -->\nold answer\n<!-- /study -->\n\nrest\n")
    assert Q.main(["--aggregate", str(tmp_path / "mystudy"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n<!-- study -->\n**digits") and text.endswith("\n<!-- /study -->\n\nrest\n")
    assert "old answer" not in text and "up to **75.0%** sparsity" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="<!-- study -->"):
        Q.update_readme(readme, "x")
    assert readme.read_text() == "no markers\n"  # untouched


# --------------------------------------------------------------------------- loss at init
def test_loss_at_start_against_the_ddpm_formula():
    ds = load_dataset("digits", image_size=16)
    model = unet("tiny", seed=5)
    before = copy.deepcopy(model.state_dict())
    mask = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(2)) > 0.5
            for k, v in model.named_parameters() if v.dim() > 1}
    got = loss_at_start(model, ds, mask, n=64, seed=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    # independent: the same 64 images, eps and t; x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. Eq. 4)
    g = torch.Generator().manual_seed(7)
    x0 = torch.stack([ds[int(i)] for i in torch.randperm(len(ds), generator=g)[:64]])
    g = torch.Generator().manual_seed(7)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    abar = make_scheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        for k, p in net.named_parameters():
            if k in mask:
                p.mul_(mask[k])
        want = F.mse_loss(net(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t).sample, eps).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert got != pytest.approx(loss_at_start(model, ds, n=64, seed=7), rel=1e-3)  # the mask is applied
    with pytest.raises(ValueError, match="n must be a positive int"):
        loss_at_start(model, ds, n=0)


# --------------------------------------------------------------------------- continuing from the records
@pytest.mark.slow
def test_chain_continued_from_records_on_fresh_state_equals_run_imp(tmp_path):
    """Each network trained by a new process from the records alone (run directories wiped in between)
    equals the same network of one uninterrupted run_imp; dense continued to 1.5 T equals one 1.5 T run."""
    steps, seed, bs = 20, 4, 8
    argv = ["--name", "s", "--steps", str(steps), "--rounds", "2", "--n", "8", "--sample-steps", "2",
            "--batch-size", str(bs), "--seeds", str(seed), "--records", str(tmp_path / "rec"),
            "--run-root", str(tmp_path / "runs"), "--max-networks", "1",
            "--threads", str(torch.get_num_threads())]  # bit-identical needs the same thread count
    ds = load_dataset("digits", image_size=16)
    ref = tmp_path / "imp"
    run_imp(unet("tiny", seed=seed), ds, rounds=2, sparsity_schedule=[0.5, 0.75], steps_per_round=steps,
            run_dir=ref, controls=("random_reinit",), seed=seed, batch_size=bs, lr=1e-3, progress=False)
    imp = IMPResult.load(ref)
    expected = {(0, "ticket"): imp.rounds[0], (1, "ticket"): imp.rounds[1], (2, "ticket"): imp.rounds[2],
                (1, "random_reinit"): imp.rounds[1].controls["random_reinit"],
                (2, "random_reinit"): imp.rounds[2].controls["random_reinit"]}
    plan = Q.plan({**SETTINGS, "schedule": [0.5, 0.75]})
    for r, variant in plan:
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)  # a fresh machine: only the records remain
        assert Q.main(argv) == 0
        row = json.loads((tmp_path / "rec" / "s" / f"seed_{seed}" / R.network_name(r, variant)).read_text())
        run = tmp_path / "runs" / f"seed_{seed}"
        if (r, variant) in expected:
            want = expected[(r, variant)]
            got = RoundInfo.from_dir(run / f"round_{r:02d}" / ("controls/" + variant if variant != "ticket" else ""))
            assert all(torch.equal(a, b) for a, b in zip(got.load_model(ema=False).state_dict().values(),
                                                         want.load_model(ema=False).state_dict().values())), (r, variant)
            assert all(torch.equal(got.load_mask()[k], want.load_mask()[k]) for k in want.load_mask())
            assert row["loss_at_init"] == pytest.approx(want.loss_at_init, rel=1e-6)
            assert row["sparsity"] == pytest.approx(want.sparsity)
        if variant == "dense_continued":
            info = RoundInfo.from_dir(run / "round_00" / "continued")
            assert info.summary["resumed_from"] == steps  # continued from T, not retrained from scratch
            cont = info.load_model(ema=False)
            once = train(unet("tiny", seed=seed), ds, steps * 3 // 2, batch_size=bs, lr=1e-3, seed=seed,
                         mask=M.ones(unet("tiny", seed=seed)), progress=False).model
            assert all(torch.equal(a, b) for a, b in zip(cont.state_dict().values(), once.state_dict().values()))
            assert row["steps"] == steps * 3 // 2
    rec = R.read_networks(tmp_path / "rec" / "s" / f"seed_{seed}")
    assert [(x["round"], x["variant"]) for x in rec] == sorted(plan)
    assert Q.main(argv) == 0  # nothing left: no network is trained or recorded twice
    assert len(R.read_networks(tmp_path / "rec" / "s" / f"seed_{seed}")) == len(plan)


# --------------------------------------------------------------------------- workers sharing one study
def test_ready_follows_the_chain_from_the_records(tmp_path):
    d = tmp_path / "seed_0"
    d.mkdir()
    assert Q.ready(d, 0, "ticket")
    assert not Q.ready(d, 0, "dense_half") and not Q.ready(d, 1, "ticket") and not Q.ready(d, 1, "continue")
    R.write_network(d, {"round": 0, "variant": "ticket", "sparsity": 0.0})
    assert Q.ready(d, 0, "dense_half") and Q.ready(d, 0, "dense_continued")
    assert not Q.ready(d, 1, "ticket")  # round 0 recorded, but its pruned mask not yet
    model = unet("tiny", seed=0)
    R.save_mask(d / "mask_r01.npz", M.ones(model))
    assert Q.ready(d, 1, "ticket") and Q.ready(d, 1, "random_reinit") and not Q.ready(d, 2, "ticket")
    assert not Q.ready(d, 1, "continue")  # needs the dense weights as well
    R.save_kept_weights(d / "weights_r00.safetensors", model.state_dict(), M.ones(model))
    assert Q.ready(d, 1, "continue") and not Q.ready(d, 2, "continue")
    R.save_kept_weights(d / "weights_continue_r01.safetensors", model.state_dict(), M.ones(model))
    assert not Q.ready(d, 2, "continue")  # the weights without their pruned mask
    R.save_mask(d / "mask_continue_r02.npz", M.ones(model))
    assert Q.ready(d, 2, "continue")
    assert Q.ready(d, 1, "late") and not Q.ready(d, 2, "late")  # round 2 needs the late chain's own mask
    R.save_mask(d / "mask_r02.npz", M.ones(model))
    assert not Q.ready(d, 2, "late")
    R.save_mask(d / "mask_late_r02.npz", M.ones(model))
    assert Q.ready(d, 2, "late")


def test_lock_refuses_a_live_holder_and_takes_a_stale_one(tmp_path):
    import subprocess
    import sys

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        held, stale = tmp_path / "lock_a", tmp_path / "lock_b"
        held.write_text(str(live.pid))
        stale.write_text(str(gone.pid))
        assert not Q._lock(held) and held.read_text() == str(live.pid)
        assert Q._lock(stale) and stale.read_text() == str(os.getpid())
        assert not Q._lock(stale)  # our own pid is live: a second take is refused
    finally:
        live.kill()


def test_a_worker_skips_the_network_another_process_holds(tmp_path):
    """Two seeds, seed 5's dense network held by a live process: the worker trains seed 6's instead and
    leaves seed 5 unrecorded; once the holder is gone, the next worker takes seed 5's."""
    import subprocess
    import sys

    argv = ["--name", "s", "--steps", "20", "--rounds", "1", "--n", "8", "--sample-steps", "2", "--batch-size", "8",
            "--seeds", "5", "6", "--records", str(tmp_path / "rec"), "--run-root", str(tmp_path / "runs"),
            "--max-networks", "1"]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = tmp_path / "runs" / "seed_5" / "lock_r00_ticket"
        lock.parent.mkdir(parents=True)
        lock.write_text(str(live.pid))
        assert Q.main(argv) == 0
        assert not (tmp_path / "rec" / "s" / "seed_5" / "r00_ticket.json").exists()
        assert (tmp_path / "rec" / "s" / "seed_6" / "r00_ticket.json").exists()
        assert lock.read_text() == str(live.pid)  # someone else's lock is left alone
    finally:
        live.kill()
        live.wait()
    assert Q.main(argv) == 0
    assert (tmp_path / "rec" / "s" / "seed_5" / "r00_ticket.json").exists()
    assert not list((tmp_path / "runs").glob("seed_*/lock_*"))  # a worker releases what it took


def test_two_workers_share_one_seed_and_record_each_network_once(tmp_path):
    """--jobs 2 on one seed: every planned network recorded exactly once, the same rows (and the same
    masks) as one worker doing them all in order."""
    base = ["--name", "s", "--steps", "20", "--rounds", "1", "--n", "8", "--sample-steps", "2", "--batch-size", "8",
            "--seeds", "3", "--threads", "1"]
    one = base + ["--records", str(tmp_path / "one"), "--run-root", str(tmp_path / "runs_one")]
    two = base + ["--records", str(tmp_path / "two"), "--run-root", str(tmp_path / "runs_two"), "--jobs", "2"]
    assert Q.main(one) == 0
    assert Q.main(two) == 0
    a, b = tmp_path / "one" / "s" / "seed_3", tmp_path / "two" / "s" / "seed_3"
    plan = Q.plan({**SETTINGS, "schedule": [0.5]})
    assert sorted(p.name for p in b.glob("r*.json")) == sorted(R.network_name(r, v) for r, v in plan)
    for r, v in plan:
        ra, rb = (json.loads((d / R.network_name(r, v)).read_text()) for d in (a, b))
        for key in ("fid", "kid", "fid_test", "loss_at_init", "final_loss", "sparsity"):
            assert ra[key] == rb[key], (r, v, key)
    assert torch.equal(torch.cat([t.flatten() for t in R.load_mask(a / "mask_r01.npz").values()]),
                       torch.cat([t.flatten() for t in R.load_mask(b / "mask_r01.npz").values()]))
    assert not list((tmp_path / "runs_two").glob("seed_*/lock_*"))


def test_summary_reports_the_prune_and_continue_arm(tmp_path):
    fids = {0: (1.0, [(0.9, 1.2), (1.3, 1.1)]), 1: (1.2, [(1.0, 1.5), (1.6, 1.4)])}
    _hand_made_study(tmp_path, fids, conts={0: 1.0, 1: 1.2})
    for seed, fid in ((0, 0.8), (1, 1.2)):  # per seed FID / dense: 0.8 / 1.0 and 1.2 / 1.2
        R.write_network(tmp_path / f"seed_{seed}", _row(seed, 1, "continue", 0.5, fid, loss_at_init=0.05))
    agg = Q.aggregate_records(tmp_path)
    assert agg["complete"] is True  # the continue arm never makes the ticket arm partial
    text = Q.study_summary(agg)
    # mean(0.8, 1.0) = 0.9, sample std sqrt(0.02) = 0.141; the ticket (0.9, 1.0) wins seed 1 only
    assert "Prune and continue" in text and "50.0%: 0.9 ± 0.14 (2 seeds)" in text
    # dense 1.0, 1.2: bound 1.1 + 0.141; continue's mean FID 1.0 at 50 % matches, 75 % is not recorded yet
    assert "it matches up to 50.0% so far (not yet recorded at 75.0%)" in text
    for seed, fid in ((0, 1.5), (1, 1.4)):
        R.write_network(tmp_path / f"seed_{seed}", _row(seed, 2, "continue", 0.75, fid, loss_at_init=0.05))
    assert "it matches up to 50.0% (first miss 75.0%)" in Q.study_summary(Q.aggregate_records(tmp_path))
    assert "against continue: 50.0% 1/2" in text
    for seed, fid in ((0, 1.3), (1, 1.3)):  # late rewinding: mean 1.3 > the bound 1.241 at 50 %
        R.write_network(tmp_path / f"seed_{seed}", _row(seed, 1, "late", 0.5, fid, rewind_step=2))
    agg = Q.aggregate_records(tmp_path)
    text = Q.study_summary(agg)
    assert agg["complete"] is True and "Late rewinding to theta_K (K = T / 20 = 2 steps" in text
    assert "it matches up to 0.0% (first miss 50.0%)" in text and "against late: 50.0% 2/2" in text


def test_late_rewinding_arm_from_records_equals_run_imp_with_rewind_step(tmp_path):
    """The late arm (theta_K, K = T // 20, trained again from the seed; masks from the records), one
    network per fresh process state, equals run_imp(rewind="step:K") network for network."""
    steps, seed, bs = 40, 4, 8
    k = Q.late_rewind_step({"steps": steps})
    assert k == 2
    argv = ["--name", "s", "--steps", str(steps), "--rounds", "2", "--n", "8", "--sample-steps", "2",
            "--batch-size", str(bs), "--seeds", str(seed), "--records", str(tmp_path / "rec"),
            "--run-root", str(tmp_path / "runs"), "--max-networks", "1", "--arms", "late", "ticket",
            "--controls", "--threads", str(torch.get_num_threads())]
    ref = tmp_path / "imp"
    run_imp(unet("tiny", seed=seed), load_dataset("digits", image_size=16), rounds=2, sparsity_schedule=[0.5, 0.75],
            steps_per_round=steps, run_dir=ref, controls=(), seed=seed, batch_size=bs, lr=1e-3, rewind=f"step:{k}",
            progress=False)
    imp = IMPResult.load(ref)
    rec = tmp_path / "rec" / "s" / f"seed_{seed}"
    while not (rec / "r02_late.json").exists() or not (rec / "mask_r02.npz").exists():
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)  # a fresh machine: only the records remain
        assert Q.main(argv) == 0
        late2 = tmp_path / "runs" / f"seed_{seed}" / "late" / "round_02"
        if late2.is_dir() and not (tmp_path / "late2").exists():  # the next pass wipes it
            shutil.copytree(late2, tmp_path / "late2")
    for r in (1, 2):
        got = RoundInfo.from_dir(tmp_path / "late2") if r == 2 else None
        row = json.loads((rec / R.network_name(r, "late")).read_text())
        assert row["steps"] == steps - k and row["rewind_step"] == k
        assert row["sparsity"] == pytest.approx(imp.rounds[r].sparsity)
        assert row["loss_at_init"] == pytest.approx(imp.rounds[r].loss_at_init, rel=1e-6)
        if got is not None:
            want = imp.rounds[r]
            assert all(torch.equal(a, b) for a, b in zip(got.load_model(ema=False).state_dict().values(),
                                                         want.load_model(ema=False).state_dict().values()))
    # round 2's mask was pruned from the late round 1, not from the ticket's round 1
    late2 = torch.cat([t.flatten() for t in R.load_mask(rec / "mask_late_r02.npz").values()])
    want2 = torch.cat([t.flatten() for t in imp.rounds[2].load_mask().values()])
    tick2 = torch.cat([t.flatten() for t in R.load_mask(rec / "mask_r02.npz").values()])
    assert torch.equal(late2, want2) and not torch.equal(late2, tick2)


def test_mask_overlap_of_the_arms_from_recorded_masks(tmp_path):
    d = tmp_path / "seed_0"
    d.mkdir()
    keep = lambda *idx: {"w": torch.tensor([i in idx for i in range(8)])}
    R.save_mask(d / "mask_r02.npz", keep(0, 1))
    R.save_mask(d / "mask_continue_r02.npz", keep(1, 2))
    R.save_mask(d / "mask_late_r03.npz", keep(5))  # round 3 of one arm only: no pair
    rows = Q.mask_overlap(tmp_path)
    assert len(rows) == 1
    (row,) = rows
    # kept {0, 1} and {1, 2}: intersection 1, union 3; two independent masks at density 1/4: 1/16 / (7/16)
    assert row["pair"] == "ticket / continue" and row["round"] == 2 and row["sparsity"] == pytest.approx(0.75)
    assert row["jaccard_mean"] == pytest.approx(1 / 3) and row["chance_jaccard"] == pytest.approx(1 / 7)
    assert "## Do the arms find the same weights?" in Q._overlap_section(rows)


def test_late_arm_warns_when_theta_k_differs_from_the_recorded_one(tmp_path):
    argv = ["--name", "s", "--steps", "20", "--rounds", "2", "--n", "8", "--sample-steps", "2", "--batch-size", "8",
            "--seeds", "2", "--records", str(tmp_path / "rec"), "--run-root", str(tmp_path / "runs"),
            "--arms", "ticket", "late", "--controls"]
    rec = tmp_path / "rec" / "s" / "seed_2"
    while not (rec / "mask_late_r02.npz").exists():
        assert Q.main(argv + ["--max-networks", "1"]) == 0
    row = json.loads((rec / "r01_late.json").read_text())
    # as if recorded on another device (write_network refuses to overwrite a record, rightly)
    (rec / "r01_late.json").write_text(json.dumps({**row, "theta_k_digest": "0" * 64}))
    with pytest.warns(UserWarning, match="differs from the recorded late networks' \\(000000000000\\)"):
        assert Q.main(argv) == 0
    assert json.loads((rec / "r02_late.json").read_text())["theta_k_digest"] == row["theta_k_digest"]


def test_a_worker_starts_the_seed_with_the_most_networks_left(tmp_path):
    """Seed 5 has its dense network recorded, seed 6 nothing: with --seeds 5 6 the next network is seed 6's
    (its chain is the longer sequential path), not seed 5's next one."""
    base = ["--name", "s", "--steps", "20", "--rounds", "1", "--n", "8", "--sample-steps", "2", "--batch-size", "8",
            "--records", str(tmp_path / "rec"), "--run-root", str(tmp_path / "runs"), "--max-networks", "1"]
    assert Q.main(base + ["--seeds", "5"]) == 0
    assert Q.main(base + ["--seeds", "5", "6"]) == 0
    names = lambda seed: sorted(p.name for p in (tmp_path / "rec" / "s" / f"seed_{seed}").glob("r*.json"))
    assert names(5) == ["r00_ticket.json"] and names(6) == ["r00_ticket.json"]
    assert Q.main(base + ["--seeds", "6", "5"]) == 0  # a tie: the --seeds order decides
    assert len(names(6)) == 2 and len(names(5)) == 1
