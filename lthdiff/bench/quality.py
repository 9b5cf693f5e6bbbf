"""Ticket quality vs sparsity: ``python -m lthdiff.bench quality``.

For each seed: IMP on the embedded default with an explicit sparsity schedule (default 50/80/90/95%),
the random-reinit control at every sparsity, every network trained for the same number of steps;
then FID/KID of each (EMA weights, ``--n`` DDIM samples) against the digits training set.
Reports mean and spread over seeds, and the per-seed ratios ticket/dense and reinit/dense.
``--jobs N`` runs seeds in parallel processes (useful on a GPU, where the tiny UNet is launch-bound).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import markdown_table, write_results


def _config(args: argparse.Namespace, seed: int):
    from ..config import Config

    cfg = Config()
    cfg.train.steps, cfg.train.seed, cfg.train.batch_size = args.steps, seed, args.batch_size
    cfg.eval.n, cfg.eval.steps, cfg.eval.batch_size = args.n, args.sample_steps, args.sample_batch
    cfg.output.run_dir = str(Path(args.run_root) / f"seed_{seed}")
    return cfg


def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """IMP + controls + evaluation for one seed; returns rows (round, variant, sparsity, metrics)."""
    from ..data import load_dataset
    from ..imp import run_imp
    from ..models import unet
    from ..pipeline import evaluate_run

    cfg = _config(args, seed)
    ds = load_dataset("digits", image_size=16)
    run_imp(unet(args.preset, seed=seed), ds, rounds=len(args.sparsities), sparsity_schedule=args.sparsities,
            steps_per_round=args.steps, run_dir=cfg.output.run_dir, seed=seed, controls=tuple(args.controls),
            batch_size=args.batch_size, lr=args.lr, rewind=args.rewind, progress=not args.quiet)
    return evaluate_run(cfg.output.run_dir, cfg, progress=not args.quiet)


def aggregate(rows: list[dict[str, Any]], metric: str = "fid") -> list[dict[str, Any]]:
    """Mean/std over seeds per (sparsity, variant), with per-seed ratios to the dense model."""
    dense = {r["seed"]: r[metric] for r in rows if r["round"] == 0}
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((round(r["sparsity"], 3), r["variant"]), []).append(r)
    out = []
    for (sp, variant), rs in sorted(groups.items()):
        vals = [r[metric] for r in rs]
        ratios = [r[metric] / dense[r["seed"]] for r in rs if r["seed"] in dense]
        out.append({"sparsity": sp, "variant": "dense" if sp == 0 else variant, "seeds": len(rs),
                    f"{metric}_mean": statistics.mean(vals), f"{metric}_std": _std(vals),
                    "ratio_to_dense_mean": statistics.mean(ratios), "ratio_to_dense_std": _std(ratios),
                    "final_loss_mean": statistics.mean(r["final_loss"] for r in rs)})
    return out


def _std(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    # Defaults sized for 2 CPU cores (~70 min): the quickstart's training. On a GPU: --steps 2000 --sample-steps 50.
    ap.add_argument("--steps", type=int, default=300, help="training steps of every network")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rewind", default="init")
    ap.add_argument("--controls", nargs="*", default=["random_reinit"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--n", type=int, default=2000, help="samples per network for FID")
    ap.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--sample-batch", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    ap.add_argument("--run-root", default="runs/bench_quality")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--name", default="quality")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    if args.jobs > 1 and len(args.seeds) > 1:
        procs = []
        for seed in args.seeds:
            cmd = [sys.executable, "-m", "lthdiff.bench", "quality", *_without(argv, "--seeds", "--jobs"),
                   "--seeds", str(seed), "--jobs", "1", "--quiet", "--name", f"{args.name}_seed{seed}"]
            procs.append(subprocess.Popen(cmd))
        if any(p.wait() for p in procs):
            print("a seed process failed", file=sys.stderr)
            return 1
    rows = []
    for seed in args.seeds:
        rows += [{**r, "seed": seed} for r in run_seed(args, seed)]  # cached metrics make this cheap after --jobs
    table = aggregate(rows, "fid")
    md = (f"# Ticket quality vs sparsity (digits, {args.preset} UNet)\n\n"
          f"{len(args.seeds)} seeds; every network trained {args.steps} steps (batch {args.batch_size}, lr {args.lr}); "
          f"FID from {args.n} DDIM-{args.sample_steps} samples (EMA weights) vs the digits training set, "
          f"extractor `{rows[0].get('extractor', '?')}`. Mean ± std over seeds; ratios computed per seed.\n\n"
          + markdown_table([{"sparsity": r["sparsity"], "variant": r["variant"],
                             "FID": f"{r['fid_mean']:.3g} ± {r['fid_std']:.2g}",
                             "FID / dense": f"{r['ratio_to_dense_mean']:.3g} ± {r['ratio_to_dense_std']:.2g}",
                             "final loss": r["final_loss_mean"]} for r in table]))
    write_results(args.out, args.name, {"args": vars(args), "rows": rows, "table": table}, md)
    print(md)
    return 0


def _without(argv: list[str], *flags: str) -> list[str]:
    """``argv`` without the given flags and their values."""
    out, skip = [], False
    for a in argv:
        if a in flags:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out
