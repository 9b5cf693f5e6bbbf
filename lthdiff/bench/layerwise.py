"""Layer-wise sparsity allocation rules at equal overall sparsity: ``python -m lthdiff.bench layerwise``.

For each target sparsity (default 90 % and 95 %), allocation rule (``uniform``, ``global``,
``jiang2023``, ``erk``; :mod:`lthdiff.pruners.allocation`) and seed, runs IMP on ``digits`` with
the same geometric schedule ``1 - (1 - target)^(r/R)`` over ``--rounds`` rounds, rewinding to
5 % of training as Jiang et al. 2023 (Sec. 3) do, and reports for the final ticket: the mean
training loss of its last steps, a held-out loss (same noise for every ticket), effective MACs
(:func:`lthdiff.models.macs.macs`: each conv/linear counted at its weight density) and,
with ``--n-fid``, FID (:func:`lthdiff.evaluation.metrics.fid`, offline digits extractor).  The dense round 0 is trained once per seed and shared by all rules.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lthdiff.reporting.tables import markdown_table
from .common import write_results

RULES = ("uniform", "global", "jiang2023", "erk")


@torch.no_grad()
def heldout_loss(model: nn.Module, dataset, batches: int = 4, batch_size: int = 128, seed: int = 1234) -> float:
    """DDPM L_simple (Ho et al. 2020, Eq. 14) on ``dataset`` with fixed noise and timesteps."""
    from lthdiff.training.tasks import DiffusionTask

    task = DiffusionTask()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x = dataset.tensors
    losses = []
    for b in range(batches):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        losses.append(float(task.loss(model, x[idx].to(device), g)))
    model.train(was_training)
    return statistics.mean(losses)


def _fid(model: nn.Module, n: int, seed: int) -> float:
    """FID of ``n`` DDIM samples against the digits training set (:func:`lthdiff.evaluation.metrics.fid`)."""
    from lthdiff.evaluation.metrics import fid

    return float(fid(model, "digits", n=n, seed=seed, progress=False))


def _schedule(target: float, rounds: int) -> list[float]:
    return [1 - (1 - target) ** (r / rounds) for r in range(1, rounds + 1)]


def run_one(args: argparse.Namespace, target: float, rule: str, seed: int, ds, test) -> dict[str, Any]:
    from lthdiff.lottery.imp import run_imp
    from lthdiff.models.macs import macs
    from lthdiff.models.unets import unet

    root = Path(args.out) / "runs" / "layerwise"
    run_dir = root / f"{args.preset}{args.width or ''}_t{target:g}_{rule}_r{args.rounds}_s{args.steps}_seed{seed}"
    shared = root / f"dense_{args.preset}{args.width or ''}_s{args.steps}_seed{seed}{args.tag}"
    model = unet(args.preset, seed=0, **args.overrides)
    rewind = f"step:{args.steps // 20}" if args.steps >= 20 else "init"  # Jiang et al.: tau = 5 % of training
    kw = dict(rounds=args.rounds, steps_per_round=args.steps, sparsity_schedule=_schedule(target, args.rounds),
              rewind=rewind, allocation=None if rule == "global" else rule, seed=seed, controls=(),
              batch_size=args.batch_size, progress=not args.quiet, checkpoint_every=max(50, args.steps))
    if not (run_dir / "round_00" / "summary.json").exists() and (shared / "round_00" / "summary.json").exists():
        # round 0 (dense training, rewind point) does not depend on the rule: reuse it
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared / "round_00", run_dir / "round_00")
        if (shared / "rewind").exists():
            shutil.copytree(shared / "rewind", run_dir / "rewind")
    res = run_imp(model, ds, run_dir=run_dir, **kw)
    if not (shared / "round_00" / "summary.json").exists():
        shutil.copytree(run_dir / "round_00", shared / "round_00", dirs_exist_ok=True)
        if (run_dir / "rewind").exists():
            shutil.copytree(run_dir / "rewind", shared / "rewind", dirs_exist_ok=True)
    final = res.final
    trained = final.load_model(ema=False).to(args.device)
    cfg = trained.config
    count = macs(trained, (1, cfg.in_channels, cfg.sample_size, cfg.sample_size))
    dense_macs, eff_macs = count.dense, count.effective
    row = {"target": target, "rule": rule, "seed": seed, "sparsity": final.sparsity,
           "final_loss": final.final_loss, "test_loss": heldout_loss(trained, test),
           "dense_macs": dense_macs, "macs": eff_macs, "macs_frac": eff_macs / dense_macs}
    if args.n_fid > 0:
        row["fid"] = _fid(final.load_model(ema=True).to(args.device), args.n_fid, seed)
    return row


def _mean_std(values: list[float]) -> str:
    if not values or any(v is None for v in values):
        return "n/a"
    m = statistics.mean(values)
    return f"{m:.4g}" if len(values) == 1 else f"{m:.4g} ± {statistics.stdev(values):.2g}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench layerwise", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=400, help="training steps per IMP round")
    ap.add_argument("--rounds", type=int, default=5, help="pruning rounds to reach each target")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (data order)")
    ap.add_argument("--n-fid", type=int, default=0, help="samples for FID (0 = skip)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95])
    ap.add_argument("--rules", nargs="+", default=list(RULES), help=f"allocation rules, from {RULES}")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--width", default=None, help="block_out_channels override, e.g. 8,16,16 (CPU smoke runs)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--tag", default="", help="suffix for result files (parallel jobs on one machine)")
    args = ap.parse_args(argv)
    bad = [r for r in args.rules if r not in RULES]
    if bad:
        ap.error(f"unknown rules {bad}; accepted: {list(RULES)}")
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # train() builds an Accelerator, which would pick a GPU
    elif not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    args.overrides = {}
    if args.width:
        chans = tuple(int(c) for c in args.width.split(","))
        args.overrides = {"block_out_channels": chans, "norm_num_groups": min(8, chans[0] // 2)}

    from lthdiff.data.datasets import load_dataset

    ds = load_dataset("digits", image_size=16)
    test = load_dataset("digits", image_size=16, split="test")
    rows: list[dict[str, Any]] = []
    name = f"layerwise_{args.device}{args.tag}"
    for t in args.targets:
        for rule in args.rules:
            for seed in args.seeds:
                rows.append(run_one(args, t, rule, seed, ds, test))
                write_results(args.out, name, {"rows": rows, "partial": True}, "(partial)\n")  # survives a kill
    table = []
    for t in args.targets:
        for rule in args.rules:
            rs = [r for r in rows if r["target"] == t and r["rule"] == rule]
            table.append({"target": t, "rule": rule, "sparsity": _mean_std([r["sparsity"] for r in rs]),
                          "final train loss": _mean_std([r["final_loss"] for r in rs]),
                          "held-out loss": _mean_std([r["test_loss"] for r in rs]),
                          "effective MACs": _mean_std([r["macs"] for r in rs]),
                          "MACs vs dense": _mean_std([r["macs_frac"] for r in rs]),
                          **({"FID": _mean_std([r.get("fid") for r in rs])} if args.n_fid > 0 else {})})
    width = f", width {args.width}" if args.width else ""
    md = (f"# Layer-wise allocation at equal sparsity ({args.device}, {args.preset}{width}, digits)\n\n"
          f"IMP: {args.rounds} rounds x {args.steps} steps, geometric schedule to each target, rewind to 5 % "
          f"of training, seeds {args.seeds}, batch {args.batch_size}. Mean ± std over seeds. Dense MACs per "
          f"image: {rows[0]['dense_macs']:.4g}.\n\n" + markdown_table(table))
    write_results(args.out, name, {"rows": rows, "table": table, "args": {
        k: v for k, v in vars(args).items() if k != "overrides"}}, md)
    print(md)
    return 0
