"""A study killed with SIGKILL at random moments and run again records exactly what one uninterrupted run records;
the Ray backend records the same; status and aggregate report it; the registry gets a FID row a network."""
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from lthdiff import masks as M
from lthdiff.store.io import load_tensors, tensors_digest
from lthdiff.study import records as R

from tiny_study import write_config

SCIENCE = ("round", "variant", "sparsity", "fid", "kid", "fid_test", "kid_test", "final_loss", "loss_at_init", "steps",
           "loss_per_100_steps", "memorisation", "next_mask", "rewind_step", "theta_k_digest", "continued_from_step")


def _records(study_dir):
    """{seed: {file: content}}: the science fields of every row, the digest of every mask, every weights file."""
    out = {}
    for d in R.seed_dirs(study_dir):
        got = {}
        for p in sorted(d.iterdir()):
            if p.name.startswith("r") and p.suffix == ".json":
                row = json.loads(p.read_text())
                got[p.name] = {k: row.get(k) for k in SCIENCE}
            elif p.suffix == ".npz":
                got[p.name] = M.packed.load_packed(p)["conv_in.weight"].tolist()
            elif p.suffix == ".safetensors":  # the tensors (the file's byte layout may differ run to run)
                got[p.name] = tensors_digest(load_tensors(p)[0])
        out[d.name] = got
    return out


def _cli(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "lthdiff.cli", "study", *map(str, argv)], env


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_records_what_one_run_records(tmp_path):
    cfg = write_config(tmp_path / "c.toml", steps=20, rounds=2, seeds=(0, 1), arms=("ticket", "continue", "late"),
                       n=16)
    cmd, env = _cli("run", cfg, "--records", tmp_path / "once", "--run-root", tmp_path / "runs_once", "--jobs", 2)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    want = _records(tmp_path / "once" / "s")
    assert sum(len([k for k in v if k.startswith("r")]) for v in want.values()) == 22
    rng = random.Random(7)
    cmd, env = _cli("run", cfg, "--records", tmp_path / "killed", "--run-root", tmp_path / "runs_killed", "--jobs", 2)
    kills = 0
    for _ in range(6):  # killed at random moments, inside networks and between them
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(4, 12))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 3
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # and once more, to the end
    assert _records(tmp_path / "killed" / "s") == want
    # status and aggregate report it; the registry gets a FID row a network
    out = subprocess.run(_cli("status", tmp_path / "killed" / "s")[0], env=env, capture_output=True, text=True, check=True)
    assert "seed 0: 11 recorded, 0 running" in out.stdout and "0 left" in out.stdout
    reg = tmp_path / "reg.db"
    subprocess.run(_cli("aggregate", tmp_path / "killed" / "s", "--registry", reg)[0], env=env, check=True,
                   capture_output=True)
    agg = json.loads((tmp_path / "killed" / "s" / "s.json").read_text())
    assert agg["complete"] is True and agg["seeds"] == [0, 1]
    with sqlite3.connect(reg) as db:
        n = db.execute("SELECT COUNT(*) FROM evaluation_metric WHERE name = 'fid'").fetchone()[0]
    assert n == 22


@pytest.mark.slow
def test_ray_backend_records_what_the_local_queue_records(tmp_path, study_cli):
    ray = pytest.importorskip("ray")
    cfg = write_config(tmp_path / "c.toml", steps=20, rounds=1, seeds=(2,), arms=("ticket", "late"), controls=(),
                       n=8, num_cpus=1)
    assert study_cli("run", cfg, "--records", tmp_path / "local", "--run-root", tmp_path / "runs_local") == 0
    ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        assert study_cli("run", cfg, "--backend", "ray", "--records", tmp_path / "ray",
                         "--run-root", tmp_path / "runs_ray") == 0
    finally:
        ray.shutdown()
    assert _records(tmp_path / "ray" / "s") == _records(tmp_path / "local" / "s")
