"""Ticket quality vs sparsity: ``python -m lthdiff.bench quality``.

For each seed: IMP (rewind to init by default) on ``--dataset`` (digits 16 px or mnist5k 32 px)
with a prune schedule (``--prune-per-round`` p for ``--rounds`` R: sparsity 1 - (1 - p)^r, e.g.
p = 0.2 as Jiang et al. 2023, or explicit ``--sparsities``), the ``--controls`` at every sparsity,
every network trained ``--steps`` steps (constant LR, deterministic by seed); then FID and KID of
each (EMA weights, ``--n`` DDIM-``--sample-steps`` samples, sampling seed = training seed) against
the training set, with the extractor ``feature_extractor="auto"`` picks for the dataset.

Reports per sparsity: FID/KID mean +- std over seeds, FID/dense and ticket/random-reinit per seed,
how many seeds the ticket beats each control, and the matching sparsity (the highest sparsity at
which the ticket's mean FID stays within dense mean + 1 std, there and at every lower sparsity).
Convergence check: a second dense run of T/2 steps with the same seed (training is deterministic
and the LR constant, so it is round 0's state at step T/2; its losses are checked to be identical)
is scored with the same protocol, FID(T/2) vs FID(T); and the loss plateau: mean loss over the last
10 % of steps vs the 10 % before T/2.  ``--jobs N`` runs seeds in parallel processes.
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from ..verdict import aggregate, matching_sparsity, sparsities, summarize, ticket_vs_control
from .common import markdown_table, write_results

# aggregate, matching_sparsity, ... live in lthdiff.verdict (the report uses them too); re-exported here
__all__ = ["aggregate", "matching_sparsity", "sparsities", "summarize", "ticket_vs_control", "loss_plateau",
           "converged", "run_seed", "main"]

DATASET_DEFAULTS = {"digits": {"image_size": 16, "preset": "tiny"},
                    "mnist5k": {"image_size": 32, "preset": "mnist32"}}


def loss_plateau(losses: Sequence[float], fraction: float = 0.1) -> dict[str, float]:
    """Mean training loss over the last ``fraction`` of steps vs the ``fraction`` before T/2.

    A converged run has ``ratio`` = late / mid close to 1 (a still-falling loss gives ratio < 1).
    """
    n = len(losses)
    w = max(1, int(round(n * fraction)))
    half = n // 2
    if half < w:
        raise ValueError(f"need at least {2 * w} losses for a {fraction:.0%} window before T/2, got {n}")
    mid = statistics.mean(losses[half - w:half])
    late = statistics.mean(losses[n - w:])
    return {"mid_mean": mid, "late_mean": late, "ratio": late / mid, "window": w, "steps": n}


def converged(fid_half: float, fid_full: float, loss_ratio: float, fid_tolerance: float,
              loss_tolerance: float = 0.05) -> bool:
    """Whether a dense run counts as converged at T: its FID moved by at most ``fid_tolerance``
    between T/2 and T (the benchmark uses max(dense FID std over seeds, 5 % of FID(T))) and its
    loss plateaued (late/mid loss ratio of :func:`loss_plateau` within ``loss_tolerance`` of 1)."""
    return abs(fid_full - fid_half) <= fid_tolerance and abs(1 - loss_ratio) <= loss_tolerance


# --------------------------------------------------------------------------- running
def _config(args: argparse.Namespace, seed: int, run_dir: str):
    from ..config import Config

    cfg = Config()
    cfg.data.name, cfg.data.image_size = args.dataset, args.image_size
    cfg.model.preset = args.preset
    cfg.train.steps, cfg.train.seed, cfg.train.batch_size = args.steps, seed, args.batch_size
    cfg.eval.n, cfg.eval.steps, cfg.eval.batch_size = args.n, args.sample_steps, args.sample_batch
    cfg.eval.feature_extractor = "auto"
    cfg.output.run_dir = run_dir
    return cfg


def _schedule(args: argparse.Namespace) -> list[float]:
    from ..imp import sparsity_schedule

    return list(args.sparsities) if args.sparsities else sparsity_schedule(args.rounds, args.prune_per_round)


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """IMP + controls + evaluation for one seed, and the T/2 convergence run; rows and convergence."""
    from ..data import load_dataset
    from ..imp import IMPResult, run_imp
    from ..io import read_json
    from ..models import unet
    from ..pipeline import evaluate_run

    sched = _schedule(args)
    run_dir = str(Path(args.run_root) / f"seed_{seed}")
    half_dir = str(Path(args.run_root) / f"seed_{seed}_half")
    cfg = _config(args, seed, run_dir)
    ds = load_dataset(args.dataset, image_size=args.image_size)
    channels = ds[0].shape[0]
    common = dict(seed=seed, batch_size=args.batch_size, lr=args.lr, progress=not args.quiet)
    run_imp(unet(args.preset, seed=seed, sample_size=args.image_size, in_channels=channels, out_channels=channels),
            ds, rounds=len(sched), sparsity_schedule=sched, steps_per_round=args.steps, run_dir=run_dir,
            controls=tuple(args.controls), rewind=args.rewind, **common)
    rows = [{**r, "seed": seed} for r in evaluate_run(run_dir, cfg, progress=not args.quiet)]
    # Convergence: the same dense training stopped at T/2 (same seed, constant LR: round 0's state at T/2).
    half = args.steps // 2
    run_imp(unet(args.preset, seed=seed, sample_size=args.image_size, in_channels=channels, out_channels=channels),
            ds, rounds=0, steps_per_round=half, run_dir=half_dir, controls=(), rewind=args.rewind, **common)
    half_row = evaluate_run(half_dir, _config(args, seed, half_dir), progress=not args.quiet)[0]
    full_losses = read_json(IMPResult.load(run_dir).rounds[0].dir / "losses.json")
    half_losses = read_json(IMPResult.load(half_dir).rounds[0].dir / "losses.json")
    dense_row = next(r for r in rows if r["round"] == 0)
    conv = {"seed": seed, "half_steps": half, "steps": args.steps, "fid_half": half_row["fid"],
            "fid_full": dense_row["fid"], "kid_half": half_row.get("kid"), "kid_full": dense_row.get("kid"),
            "half_run_matches_first_half": half_losses == full_losses[:half],
            **{f"loss_{k}": v for k, v in loss_plateau(full_losses).items()}}
    return {"rows": rows, "convergence": conv}


def _markdown(args: argparse.Namespace, rows: list[dict[str, Any]], s: dict[str, Any],
              conv: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    table = []
    for r in s["table"]:
        line = {"sparsity": f"{r['sparsity']:.1%}", "variant": r["variant"],
                "FID": f"{r['fid_mean']:.3g} ± {r['fid_std']:.2g}",
                "KID": f"{r.get('kid_mean', float('nan')):.3g} ± {r.get('kid_std', float('nan')):.2g}",
                "FID / dense": f"{r['ratio_to_dense_mean']:.3g} ± {r['ratio_to_dense_std']:.2g}"}
        if r["variant"] == "ticket":
            line["FID / dense per seed"] = ", ".join(f"{x:.3g}" for x in r["ratio_to_dense_per_seed"].values())
            for c, vs in s["versus"].items():
                v = next(x for x in vs if math.isclose(x["sparsity"], r["sparsity"], abs_tol=5e-4))
                line[f"wins vs {c}"] = f"{v['ticket_wins']}/{v['seeds']}"
                if c == "random_reinit":
                    line["ticket / reinit per seed"] = ", ".join(f"{x:.3g}" for x in v["ratio_per_seed"].values())
        table.append(line)
    m = s["matching"]
    ctrl = "; ".join(f"{c}: {v['sparsity']:.1%}" for c, v in s["matching_controls"].items())
    conv_rows = [{"seed": c["seed"], f"FID @ {c['half_steps']}": c["fid_half"], f"FID @ {c['steps']}": c["fid_full"],
                  "loss mid 10%": c["loss_mid_mean"], "loss last 10%": c["loss_late_mean"],
                  "late / mid": c["loss_ratio"], "T/2 run = first half": c["half_run_matches_first_half"],
                  "converged": c.get("converged")}
                 for c in conv]
    sched = ", ".join(f"{x:.1%}" for x in _schedule(args))
    return (f"# Ticket quality vs sparsity ({args.dataset} {args.image_size}px, {args.preset} UNet)\n\n"
            f"Seeds {seeds}; sparsities {sched}; every network trained {args.steps} steps (batch "
            f"{args.batch_size}, lr {args.lr}, constant), rewind `{args.rewind}`; FID/KID from {args.n} "
            f"DDIM-{args.sample_steps} samples (EMA weights, sampling seed = training seed) vs the "
            f"{args.dataset} training set, extractor `{rows[0].get('extractor', '?')}`. Mean ± std over "
            "seeds; ratios per seed; a seed is won when the ticket's FID is lower than the control's.\n\n"
            + markdown_table(table, list(dict.fromkeys(k for line in table for k in line)))  # ticket rows add columns
            + f"\n**Matching sparsity** (ticket mean FID <= dense {m['dense_mean']:.3g} + 1 std "
            f"{m['dense_std']:.2g} = {m['bound']:.3g} there and at every lower sparsity): "
            f"**{m['sparsity']:.1%}**" + (f" (first miss at {m['first_miss']:.1%})" if m["first_miss"] else
                                           " (every sparsity run matches)")
            + f". Controls: {ctrl or 'none'}.\n\n## Converged?\n\nDense FID at T/2 (a separate run of "
            "T/2 steps, same seed; deterministic, constant LR, so it is round 0's state at T/2) vs T, and "
            "the loss plateau (mean loss over the last 10 % of steps vs the 10 % before T/2). Converged: |FID(T) - "
            "FID(T/2)| <= max(dense FID std over seeds, 5 % of FID(T)) and late/mid loss within 5 % of 1.\n\n"
            + markdown_table(conv_rows))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", choices=sorted(DATASET_DEFAULTS))
    ap.add_argument("--image-size", type=int, default=None, help="default: 16 for digits, 32 for mnist5k")
    ap.add_argument("--preset", default=None, help="UNet preset; default: tiny for digits, mnist32 for mnist5k")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prune-per-round", type=float, default=0.5, help="fraction of surviving weights per round")
    ap.add_argument("--rounds", type=int, default=4, help="pruning rounds (with --prune-per-round)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=None,
                    help="explicit sparsity after each round (instead of --prune-per-round/--rounds)")
    # Defaults sized for 2 CPU cores: the quickstart's training. On a GPU: --steps 2000 --sample-steps 50.
    ap.add_argument("--steps", type=int, default=300, help="training steps of every network (T)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rewind", default="init")
    ap.add_argument("--controls", nargs="*", default=["random_reinit"])
    ap.add_argument("--n", type=int, default=2000, help="samples per network for FID/KID")
    ap.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--sample-batch", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    ap.add_argument("--run-root", default=None, help="IMP runs (default runs/bench_quality_<dataset>)")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--name", default="quality")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    d = DATASET_DEFAULTS[args.dataset]
    args.image_size = args.image_size or d["image_size"]
    args.preset = args.preset or d["preset"]
    args.run_root = args.run_root or f"runs/bench_quality_{args.dataset}"
    if not 0 < args.prune_per_round < 1:
        ap.error(f"--prune-per-round must be in (0, 1), got {args.prune_per_round}")
    if args.rounds < 1 or args.steps < 20 or args.n < 2:
        ap.error(f"--rounds >= 1, --steps >= 20 (10 % windows before T/2) and --n >= 2 needed; "
                 f"got {args.rounds}, {args.steps}, {args.n}")

    if args.jobs > 1 and len(args.seeds) > 1:
        procs = []
        for seed in args.seeds:
            cmd = [sys.executable, "-m", "lthdiff.bench", "quality", *_without(argv, "--seeds", "--jobs"),
                   "--seeds", str(seed), "--jobs", "1", "--quiet", "--name", f"{args.name}_seed{seed}"]
            procs.append(subprocess.Popen(cmd))
        if any(p.wait() for p in procs):
            print("a seed process failed", file=sys.stderr)
            return 1
    rows, conv = [], []
    for seed in args.seeds:  # cached runs and metrics make this cheap after --jobs
        res = run_seed(args, seed)
        rows += res["rows"]
        conv.append(res["convergence"])
    s = summarize(rows, args.controls)
    for c in conv:
        c["fid_tolerance"] = max(s["matching"]["dense_std"], 0.05 * c["fid_full"])
        c["converged"] = converged(c["fid_half"], c["fid_full"], c["loss_ratio"], c["fid_tolerance"])
    md = _markdown(args, rows, s, conv)
    write_results(args.out, args.name, {"args": vars(args), "rows": rows, **s, "convergence": conv}, md)
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
