"""End to end: `lthdiff run --quick` in a temporary directory, then the other subcommands."""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lthdiff.cli import main
from lthdiff.config import ConfigError, from_dict, load_config


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("quick")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "lthdiff.cli", "run", "--quick", "--run-dir", str(d / "run"),
                           "--registry", str(d / "runs.db")], cwd=d, env=env, capture_output=True, text=True,
                          timeout=1800)  # ~2 min on an idle 2-core machine; generous under load
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stdout/stderr are pipes here, as in `lthdiff run --quick > log.txt 2>&1`: no bar refreshes, one
    # line per trained network; a carriage return counts as a line break (it is one in most log viewers)
    log = (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
    assert len(log) <= 200, "\n".join(log[:50])
    return d, proc.stdout


def test_quick_run_artefacts_are_consistent(quick_run):
    from lthdiff import masks as M
    from lthdiff.lottery import IMPResult

    d, out = quick_run
    run = d / "run"
    assert "report:" in out and str(run) in out and "tensorboard --logdir" in out
    # the answer is printed, not only written: the headline table and the matching sparsity
    assert "ticket / dense" in out and "won vs random_reinit" in out and "Matching sparsity:" in out
    res = IMPResult.load(run)
    assert [r.round for r in res.rounds] == [0, 1, 2]
    html = next(run.glob("**/report.html"))
    assert "<img" in html.read_text() and html.stat().st_size > 10_000
    for r in res.rounds:
        mask, meta = M.load(r.mask_path)
        assert abs(M.sparsity(mask) - r.sparsity) < 1e-9
        model = r.load_model()
        params = dict(model.named_parameters())
        assert all(torch.all(params[k][~m] == 0) for k, m in mask.items())
        metrics = json.loads((r.dir / "metrics.json").read_text())
        assert metrics["metrics"]["fid"] >= 0 and (r.dir / "samples.png").exists()
        if r.round > 0:  # paired fidelity to the dense model, from the same DDIM noise
            assert 0 < metrics["paired"]["metrics"]["ssim"] < 1 and metrics["paired"]["metrics"]["perceptual"] > 0
    assert list((run / "tb").glob("events.out.tfevents.*"))  # `tensorboard --logdir` shows the run
    assert "SSIM to dense (ticket)" in html.read_text() and "perceptual = " in html.read_text()
    with sqlite3.connect(d / "runs.db") as db:
        (n_exp,) = db.execute("select count(*) from experiment").fetchone()
        rounds = {row[0] for row in db.execute("select distinct round from pruning_log")}
        (n_fid,) = db.execute("select count(*) from evaluation_metric where name = 'fid'").fetchone()
        (status,) = db.execute("select status from experiment").fetchone()
        (n_reports,) = db.execute("select count(*) from report_experiment").fetchone()
    assert n_exp == 1 and rounds >= {1, 2} and status == "completed" and n_reports == 1
    assert n_fid == 3 + 2  # three tickets (dense included) + the random-reinit control of rounds 1 and 2


def test_rerun_resumes_without_retraining(quick_run):
    d, _ = quick_run
    run = d / "run"
    stamp = (run / "round_01" / "summary.json").stat().st_mtime
    proc = subprocess.run([sys.executable, "-m", "lthdiff.cli", "run", "--quick", "--run-dir", str(run),
                           "--registry", str(d / "runs.db")], cwd=d, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "round_01" / "summary.json").stat().st_mtime == stamp


def test_sample_and_prune_subcommands(quick_run, tmp_path):
    d, _ = quick_run
    model = d / "run" / "round_00" / "ema"
    assert main(["sample", str(model), "-n", "4", "--steps", "3", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").exists() and torch.load(tmp_path / "g.pt").shape == (4, 1, 16, 16)
    assert main(["prune", str(model), "--sparsity", "0.8", "--out", str(tmp_path / "p")]) == 0
    from lthdiff import masks as M

    mask, _ = M.load(tmp_path / "p" / "mask.safetensors")
    assert abs(M.sparsity(mask) - 0.8) < 1e-4


def test_config_errors_name_key_and_accepted(tmp_path):
    with pytest.raises(ConfigError, match=r"\[imp\] scope.*global, layer"):
        from_dict({"imp": {"scope": "local"}})
    with pytest.raises(ConfigError, match=r"unknown key \[train\] stepz.*steps"):
        from_dict({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match=r"unknown config section \[optim\]"):
        from_dict({"optim": {}})
    with pytest.raises(ConfigError, match="integer"):
        from_dict({"train": {"steps": "many"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nname = 'imagenet'\n")
    assert main(["run", str(bad)]) == 2


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10", "flowers102"])
def test_repo_configs_load(name):
    cfg = load_config(Path(__file__).parents[1] / "configs" / f"{name}.toml")
    assert cfg.data.name == name


def test_help_and_unknown_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0 and "--quick" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["run", "--fast"])
    assert e.value.code == 2 and "--fast" in capsys.readouterr().err


def test_child_processes_are_under_the_network_guard(tmp_path):
    """tests/netguard/sitecustomize.py is on every child's PYTHONPATH: a child that opens a non-loopback
    connection fails as a test would (loopback, used by torchrun and notebook kernels, still works)."""
    code = ("import socket\ns = socket.socket()\ns.settimeout(1)\n"
            "try:\n    s.connect(('203.0.113.1', 80))\nexcept ConnectionRefusedError as e:\n    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "refused: tests must not open network connections" in proc.stdout, proc.stdout + proc.stderr
