"""The local work queue: readiness from the records, lock files, workers sharing a study."""
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

from tiny_study import write_config

SETTINGS = {"dataset": "digits", "image_size": 16, "preset": "tiny", "steps": 40, "batch_size": 32, "lr": 1e-3,
            "schedule": [0.5, 0.75], "rewind": "init", "controls": ["random_reinit"], "n": 2000, "sample_steps": 10,
            "extractor": "lthdiff-digits"}


# --------------------------------------------------------------------------- workers sharing one study
def ready(d, r, variant):
    return variant_class(variant, r).ready(SETTINGS, d, r)


def test_ready_follows_the_chain_from_the_records(tmp_path):
    d = tmp_path / "seed_0"
    d.mkdir()
    assert ready(d, 0, "ticket")
    assert not ready(d, 0, "dense_half") and not ready(d, 1, "ticket") and not ready(d, 1, "continue")
    R.write_network(d, {"round": 0, "variant": "ticket", "sparsity": 0.0})
    assert ready(d, 0, "dense_half") and ready(d, 0, "dense_continued")
    assert not ready(d, 1, "ticket")  # round 0 recorded, but its pruned mask not yet
    model = unet("tiny", seed=0)
    M.save_packed(d / "mask_r01.npz", M.ones(model))
    assert ready(d, 1, "ticket") and ready(d, 1, "random_reinit") and not ready(d, 2, "ticket")
    assert not ready(d, 1, "continue")  # needs the dense weights as well
    R.save_kept_weights(d / "weights_r00.safetensors", model.state_dict(), M.ones(model))
    assert ready(d, 1, "continue") and not ready(d, 2, "continue")
    R.save_kept_weights(d / "weights_continue_r01.safetensors", model.state_dict(), M.ones(model))
    assert not ready(d, 2, "continue")  # the weights without their pruned mask
    M.save_packed(d / "mask_continue_r02.npz", M.ones(model))
    assert ready(d, 2, "continue")
    assert ready(d, 1, "late") and not ready(d, 2, "late")  # round 2 needs the late chain's own mask
    M.save_packed(d / "mask_r02.npz", M.ones(model))
    assert not ready(d, 2, "late")
    M.save_packed(d / "mask_late_r02.npz", M.ones(model))
    assert ready(d, 2, "late")


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
        assert not Q.take_lock(held) and held.read_text() == str(live.pid)
        assert Q.take_lock(stale) and stale.read_text() == str(os.getpid())
        assert not Q.take_lock(stale)  # our own pid is live: a second take is refused
    finally:
        live.kill()


def test_a_worker_skips_the_network_another_process_holds(tmp_path, study_cli):
    """Two seeds, seed 5's dense network held by a live process: the worker trains seed 6's instead and
    leaves seed 5 unrecorded; once the holder is gone, the next worker takes seed 5's."""
    import subprocess
    import sys

    cfg = write_config(tmp_path / "c.toml", seeds=(5, 6))
    argv = ["run", cfg, "--records", tmp_path / "rec", "--run-root", tmp_path / "runs", "--max-networks", "1"]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = tmp_path / "runs" / "seed_5" / "lock_r00_ticket"
        lock.parent.mkdir(parents=True)
        lock.write_text(str(live.pid))
        assert study_cli(*argv) == 0
        assert not (tmp_path / "rec" / "s" / "seed_5" / "r00_ticket.json").exists()
        assert (tmp_path / "rec" / "s" / "seed_6" / "r00_ticket.json").exists()
        assert lock.read_text() == str(live.pid)  # someone else's lock is left alone
    finally:
        live.kill()
        live.wait()
    assert study_cli(*argv) == 0
    assert (tmp_path / "rec" / "s" / "seed_5" / "r00_ticket.json").exists()
    assert not list((tmp_path / "runs").glob("seed_*/lock_*"))  # a worker releases what it took


def test_two_workers_share_one_seed_and_record_each_network_once(tmp_path, study_cli):
    """--jobs 2 on one seed: every planned network recorded exactly once, the same rows (and the same
    masks) as one worker doing them all in order."""
    cfg = write_config(tmp_path / "c.toml", seeds=(3,))
    assert study_cli("run", cfg, "--records", tmp_path / "one", "--run-root", tmp_path / "runs_one") == 0
    assert study_cli("run", cfg, "--records", tmp_path / "two", "--run-root", tmp_path / "runs_two", "--jobs", 2) == 0
    a, b = tmp_path / "one" / "s" / "seed_3", tmp_path / "two" / "s" / "seed_3"
    pl = plan({**SETTINGS, "schedule": [0.5]})
    assert sorted(p.name for p in b.glob("r*.json")) == sorted(R.network_name(r, v) for r, v in pl)
    for r, v in pl:
        ra, rb = (json.loads((d / R.network_name(r, v)).read_text()) for d in (a, b))
        for key in ("fid", "kid", "fid_test", "loss_at_init", "final_loss", "sparsity"):
            assert ra[key] == rb[key], (r, v, key)
    assert torch.equal(torch.cat([t.flatten() for t in M.load_packed(a / "mask_r01.npz").values()]),
                       torch.cat([t.flatten() for t in M.load_packed(b / "mask_r01.npz").values()]))
    assert not list((tmp_path / "runs_two").glob("seed_*/lock_*"))


def test_a_worker_starts_the_seed_with_the_most_networks_left(tmp_path, study_cli):
    """Seed 5 has its dense network recorded, seed 6 nothing: with seeds 5 6 the next network is seed 6's
    (its chain is the longer sequential path), not seed 5's next one."""
    cfg = write_config(tmp_path / "c.toml", seeds=(5,))
    base = ["--records", tmp_path / "rec", "--run-root", tmp_path / "runs", "--max-networks", "1"]
    assert study_cli("run", cfg, *base) == 0
    assert study_cli("run", cfg, *base, "--seeds", 5, 6) == 0
    names = lambda seed: sorted(p.name for p in (tmp_path / "rec" / "s" / f"seed_{seed}").glob("r*.json"))  # noqa: E731
    assert names(5) == ["r00_ticket.json"] and names(6) == ["r00_ticket.json"]
    assert study_cli("run", cfg, *base, "--seeds", 6, 5) == 0  # a tie: the seeds' order decides
    assert len(names(6)) == 2 and len(names(5)) == 1


def test_status_counts_and_names_networks_trained_elsewhere(tmp_path):
    d = tmp_path / "seed_0"
    R.write_settings(d, {**SETTINGS, "seed": 0, "init_digest": "x"})
    base = {"seed": 0, "sparsity": 0.0, "fid": 1.0, "device": "cpu (x86_64)", "threads": 1, "train_seconds": 10.0,
            "wall_seconds_this_piece": 100.0}
    R.write_network(d, {**base, "round": 0, "variant": "ticket", "cpu": "A"})
    R.write_network(d, {**base, "round": 0, "variant": "dense_half", "cpu": "A", "wall_seconds_this_piece": 300.0})
    R.write_network(d, {**base, "round": 0, "variant": "dense_continued"})  # written before the CPU was recorded
    R.write_network(d, {**base, "round": 1, "variant": "ticket", "cpu": "B", "threads": 1})
    R.write_network(d, {**base, "round": 1, "variant": "random_reinit", "cpu": "A", "threads": 2})
    (s,) = Q.status(tmp_path)
    assert (s["recorded"], s["left"]) == (5, len(plan(SETTINGS)) - 5)
    assert s["seconds_per_network"] == 100.0  # the median of 100, 300, 100, 100, 100
    assert s["hours_left_one_worker"] == pytest.approx(100.0 * s["left"] / 3600)
    assert sorted(o.split(" ")[0] for o in s["other_machine"]) == ["r01_random_reinit", "r01_ticket"]
