"""A run killed for real (SIGKILL, as a Colab disconnect or an out-of-memory kill does) resumes and
ends with exactly the tensors and scores of an uninterrupted run.

A child process runs IMP with late rewinding (``step:K``), a random-reinit control and the FID
stage, checkpointing every step.  The parent watches the run directory and kills the child at
five points: in round 0 before K and after K, inside a ticket's retraining, inside a control's
training, and during evaluation; after each kill it checks the point was the intended one and
starts the child again.  Every saved tensor (not file bytes: safetensors headers may order keys
differently between processes), every loss curve and every FID/KID is then compared with a
run that was never interrupted.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

STEPS, K = 16, 6

DRIVER = textwrap.dedent(f"""
    import sys
    import torch
    torch.set_num_threads(1)
    from lthdiff.config import Config
    from lthdiff.data import TensorImageDataset, load_dataset
    from lthdiff.lottery import run_imp
    from lthdiff.models import unet
    from lthdiff.pipeline import evaluate_run

    run_dir = sys.argv[1]
    full = load_dataset("digits", image_size=16)
    ds = TensorImageDataset(full.tensors[:64], full.labels[:64], name="digits")
    model = unet("tiny", seed=0, block_out_channels=(8, 16, 16), norm_num_groups=4)
    run_imp(model, ds, rounds=2, steps_per_round={STEPS}, prune_per_round=0.5, rewind="step:{K}",
            controls=("random_reinit",), batch_size=16, run_dir=run_dir, checkpoint_every=1, progress=False)
    cfg = Config()
    cfg.eval.n, cfg.eval.steps, cfg.eval.batch_size, cfg.eval.grid = 200, 4, 100, 16
    cfg.eval.feature_extractor = "lthdiff-digits"
    evaluate_run(run_dir, cfg, progress=False)
    print("DONE")
""")


def _ckpt_step(d: Path) -> int:
    try:
        return json.loads((d / "ckpt" / "latest.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def _start(script: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(run_dir)], cwd=run_dir.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point: {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("the kill point was not reached in time")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _snapshot(run_dir: Path) -> dict:
    """Every tensor, loss curve and score a finished run holds, keyed by relative path."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = str(p.relative_to(run_dir))
        if p.suffix == ".safetensors":
            out[rel] = load_file(p)
        elif p.name == "losses.json":
            out[rel] = json.loads(p.read_text())
        elif p.name == "metrics.json":
            out[rel] = json.loads(p.read_text())["metrics"]
    return out


def test_sigkill_at_five_points_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    straight = tmp_path / "straight" / "run"
    straight.parent.mkdir()
    killed = tmp_path / "killed" / "run"
    killed.parent.mkdir()
    done = subprocess.run([sys.executable, str(script), str(straight)], cwd=straight.parent,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "DONE" in done.stdout, done.stderr[-3000:]

    r0, r1 = killed / "round_00", killed / "round_01"
    control = r1 / "controls" / "random_reinit"
    points = [  # (what, kill when, then check the kill landed there)
        ("round 0 before K", lambda: 1 <= _ckpt_step(r0) < K - 2,
         lambda: not (killed / "rewind").exists()),
        ("round 0 after K", lambda: (killed / "rewind").exists() and _ckpt_step(r0) >= K + 2,
         lambda: not (r0 / "summary.json").exists()),
        ("ticket retraining", lambda: _ckpt_step(r1) >= 2, lambda: not (r1 / "summary.json").exists()),
        ("control training", lambda: _ckpt_step(control) >= 2, lambda: not (control / "summary.json").exists()),
        ("evaluation", lambda: (r0 / "metrics.json").exists(),
         lambda: not (killed / "round_02" / "controls" / "random_reinit" / "metrics.json").exists()),
    ]
    for what, ready, landed in points:
        _kill_when(_start(script, killed), ready)
        assert landed(), f"the kill meant for '{what}' landed later"
    proc = _start(script, killed)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0 and "DONE" in out, err[-3000:]

    a, b = _snapshot(straight), _snapshot(killed)
    assert sorted(a) == sorted(b)
    assert sum(p.endswith(".safetensors") for p in a) >= 10 and sum(p.endswith("metrics.json") for p in a) == 5
    for rel in a:
        if isinstance(a[rel], dict) and a[rel] and isinstance(next(iter(a[rel].values())), torch.Tensor):
            assert a[rel].keys() == b[rel].keys(), rel
            for k in a[rel]:
                assert torch.equal(a[rel][k], b[rel][k]), f"{rel}:{k}"
        else:
            assert a[rel] == b[rel], rel
    leftovers = [p for p in killed.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers, leftovers
