"""Data-parallel IMP on two CPU processes (torchrun + gloo), the code path `accelerate launch` takes on GPUs."""
import os
import socket
import subprocess
import sys
import textwrap

import torch

from lthdiff.lottery import IMPResult
from lthdiff.tracking import Registry

SCRIPT = textwrap.dedent("""
    import sys, torch
    from lthdiff.data import TensorImageDataset, load_dataset
    from lthdiff.lottery import run_imp
    from lthdiff.models import unet
    from lthdiff.runtime import process_state

    out = sys.argv[1]
    d = load_dataset("digits", image_size=16)
    ds = TensorImageDataset(d.tensors[:64], d.labels[:64], name="digits")
    res = run_imp(unet("tiny", seed=0, block_out_channels=(8, 16, 16), norm_num_groups=4), ds, rounds=1,
                  steps_per_round=3, prune_per_round=0.5, batch_size=8, run_dir=out + "/run", controls=("random_reinit",),
                  registry=out + "/lthdiff.db", progress=False, checkpoint_every=2)
    state = process_state()
    # One file per rank, not a line on stdout: two processes share torchrun's pipe, and a line can arrive glued
    # to the other's output.
    with open(f"{out}/rank{state.process_index}.txt", "w") as f:
        f.write(f"{state.process_index} {state.num_processes} {state.distributed_type}")
""")


def _free_port() -> int:
    with socket.socket() as s:  # a fixed port fails when another job on the machine holds it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_imp_writes_once_and_completes(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted(p.read_text().split() for p in tmp_path.glob("rank*.txt"))
    # really two processes of one data-parallel group
    assert [r[:2] for r in reports] == [["0", "2"], ["1", "2"]], (reports, proc.stdout[-2000:], proc.stderr[-2000:])
    assert all("MULTI_CPU" in r[2] for r in reports)
    res = IMPResult.load(tmp_path / "run")
    assert [r.round for r in res.rounds] == [0, 1] and set(res.rounds[1].controls) == {"random_reinit"}
    mask = res.rounds[1].load_mask()
    n = sum(m.numel() for m in mask.values())
    assert sum(int((~m).sum()) for m in mask.values()) == round(0.5 * n)
    p = dict(res.rounds[1].load_model(ema=False).named_parameters())
    assert all(torch.all(p[k][~mask[k]] == 0) for k in mask)
    ex = Registry(tmp_path / "lthdiff.db").experiments()
    assert len(ex) == 1 and ex.loc[0, "status"] == "completed" and ex.loc[0, "rounds"] == 2  # one row, not one per process
    assert not list(tmp_path.rglob("*.tmp*"))  # no half-written files left behind
