"""Networks trained from the records alone equal run_imp's; each arm starts where its definition says."""
import copy
import os
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from lthdiff import masks as M
from lthdiff.study import aggregate as A
from lthdiff.study import records as R
from lthdiff.study import queue as Q
from lthdiff.study.arms import plan, variant_class, late_rewind_step
from lthdiff.reporting import study as RS
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
    late2 = torch.cat([t.flatten() for t in M.load_packed(rec / "mask_late_r02.npz").values()])
    want2 = torch.cat([t.flatten() for t in imp.rounds[2].load_mask().values()])
    tick2 = torch.cat([t.flatten() for t in M.load_packed(rec / "mask_r02.npz").values()])
    assert torch.equal(late2, want2) and not torch.equal(late2, tick2)


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


