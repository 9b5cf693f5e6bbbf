"""Structured (channel) lottery tickets: ``python -m lthdiff.bench structured-tickets``.

For each seed: train the dense ``tiny`` UNet ``--steps`` T steps on digits 16 px from theta_0 =
``unet("tiny", seed)``; for each target MAC reduction (default 50 and 75 %, ratios from
:func:`lthdiff.pruners.channels.ratio_for_macs`, one per level) prune its EMA weights with one
``--importance`` and build the three arms of :func:`lthdiff.pruners.channels.ticket` at that
small architecture: **ticket** (theta_0 at the kept channels), **scratch** (the architecture freshly
initialised, Liu et al. 2019) and **fine-tune** (the pruned trained weights, as Diff-Pruning); train
each arm T steps (same budget, data order and lr as the dense run).  FID/KID of every network (EMA
weights, ``--n`` DDIM-``--sample-steps`` samples, sampling seed = training seed, extractor "auto")
against the digits training set.  Sampling latency of each small architecture vs dense, timed
alternately in this process (median of ``--repeats``; :func:`lthdiff.bench.structured.latency_ratio`).

Reports FID/KID mean +- std over seeds per arm and MAC level, and per level how many seeds the
ticket beats scratch and fine-tune.  Resumable: each network trains in its own checkpoint directory
under ``--run-root`` and its scores are cached beside it, so a rerun skips what finished.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

from lthdiff.runtime import is_quick
from lthdiff.evaluation.verdict import aggregate, ticket_vs_control
from lthdiff.reporting.tables import markdown_table
from .common import write_results
from .structured import latency_ratio

CONTROLS = ("scratch", "finetune")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per MAC level and arm: FID/KID mean +- std over seeds; ticket wins vs each control per seed.

    ``rows``: one per (seed, network) with ``sparsity`` (the target MAC reduction; 0 for dense),
    ``round`` (0 dense, 1 pruned), ``variant`` (arm), ``fid`` and ``kid`` (lower is better).
    """
    table = aggregate(rows, "fid")
    kid = {(r["sparsity"], r["variant"]): r for r in aggregate(rows, "kid")}
    for r in table:
        r["kid_mean"], r["kid_std"] = kid[(r["sparsity"], r["variant"])]["kid_mean"], \
            kid[(r["sparsity"], r["variant"])]["kid_std"]
    return {"table": table, "versus": {c: ticket_vs_control(rows, c, "fid") for c in CONTROLS}}


def _scored(directory: Path, settings: dict[str, Any], model: Any, args: argparse.Namespace, seed: int) -> dict:
    """FID/KID of ``model``, cached in ``directory/metrics.json`` under ``settings``."""
    from lthdiff.store.io import read_json
    from lthdiff.evaluation.metrics import evaluate
    from lthdiff.lottery.runs import write_metrics

    path = directory / "metrics.json"
    if path.exists():
        saved = read_json(path)
        if saved.get("settings") == settings:
            return {**saved["metrics"], "extractor": saved.get("extractor")}
    res = evaluate(model, "digits", metrics=("fid", "kid"), n=args.n, steps=args.sample_steps, seed=seed,
                   batch_size=args.sample_batch, progress=not args.quiet)
    write_metrics(directory, res.metrics, settings=settings, extractor=res.extractor)
    return {**res.metrics, "extractor": res.extractor}


def run_seed(args: argparse.Namespace, seed: int, ds: Any, ratios: dict[float, Any]) -> tuple[list[dict], dict]:
    """Dense + three arms per MAC level for one seed: rows, and the seed's models for latency."""
    from lthdiff.models.unets import unet
    from lthdiff.pruners.channels import ARMS, ticket
    from lthdiff.training.loop import train

    root = Path(args.run_root) / f"seed_{seed}"
    settings = {"n": args.n, "sample_steps": args.sample_steps, "seed": seed, "steps": args.steps}
    kw = dict(batch_size=args.batch_size, lr=args.lr, seed=seed, progress=not args.quiet,
              checkpoint_every=max(50, args.steps // 3))

    def fit(model: Any, name: str) -> tuple[Any, list[float]]:
        res = train(model, ds, args.steps, checkpoint_dir=root / name / "ckpt", desc=f"seed {seed} {name}", **kw)
        return res.sampling_model.eval(), res.losses

    def row(name: str, model: Any, losses: list[float], **extra: Any) -> dict[str, Any]:
        tail = losses[-max(1, len(losses) // 10):]
        return {"seed": seed, "network": name, **extra, **_scored(root / name, settings, model, args, seed),
                "final_loss": statistics.mean(tail)}

    init = unet("tiny", seed=seed)
    dense, losses = fit(copy.deepcopy(init), "dense")
    rows = [row("dense", dense, losses, sparsity=0.0, round=0, variant="dense", macs_reduction=0.0,
                block_out_channels=str(tuple(dense.config.block_out_channels)))]
    small = {}
    for reduction, ratio in ratios.items():
        arms = ticket(dense, init, ratio, importance=args.importance, data=ds, seed=seed,
                      batch_size=args.batch_size, timesteps=args.scan_timesteps, progress=not args.quiet)
        small[reduction] = arms.ticket
        for arm in ARMS:
            name = f"r{round(100 * reduction)}_{arm}"
            model, losses = fit(copy.deepcopy(getattr(arms, arm)), name)
            rows.append(row(name, model, losses, sparsity=reduction, round=1, variant=arm,
                            macs_reduction=arms.info.macs_reduction,
                            block_out_channels=str(arms.info.block_out_channels[1])))
    return rows, {"dense": dense, **small}


def _markdown(args: argparse.Namespace, rows: list[dict[str, Any]], s: dict[str, Any],
              latency: list[dict[str, Any]]) -> str:
    reached = {r["sparsity"]: r for r in rows}
    table = []
    for r in s["table"]:
        line = {"MAC target": f"{r['sparsity']:.0%}", "reached": f"{reached[r['sparsity']]['macs_reduction']:.1%}",
                "widths": reached[r["sparsity"]]["block_out_channels"], "arm": r["variant"],
                "FID": f"{r['fid_mean']:.3g} ± {r['fid_std']:.2g}", "KID": f"{r['kid_mean']:.3g} ± {r['kid_std']:.2g}",
                "FID per seed": ", ".join(f"{x['fid']:.3g}" for x in sorted(rows, key=lambda x: x["seed"])
                                          if x["sparsity"] == r["sparsity"] and x["variant"] == r["variant"])}
        if r["variant"] == "ticket":
            for c, vs in s["versus"].items():
                v = next(x for x in vs if abs(x["sparsity"] - r["sparsity"]) < 5e-4)
                line[f"ticket wins vs {c}"] = f"{v['ticket_wins']}/{v['seeds']}"
        table.append(line)
    return (f"# Structured lottery tickets (digits 16px, tiny UNet, importance `{args.importance}`)\n\n"
            f"Seeds {args.seeds}; dense and every arm trained {args.steps} steps (batch {args.batch_size}, lr "
            f"{args.lr}, constant; same data order). ticket = theta_0 at the channels kept on the trained EMA "
            "weights; scratch = the small architecture freshly initialised (Liu et al. 2019); finetune = the pruned "
            f"trained weights (Diff-Pruning). FID/KID from {args.n} DDIM-{args.sample_steps} samples (EMA, sampling "
            f"seed = training seed) vs the digits training set, extractor `{rows[0].get('extractor')}`. Mean ± std "
            "over seeds; a seed is won when the ticket's FID is lower.\n\n"
            + markdown_table(table, list(dict.fromkeys(k for line in table for k in line)))
            + f"\n## Sampling latency (CPU, DDIM-{args.latency_steps}, median of {args.repeats}, small and dense "
            "timed alternately in this run)\n\n" + markdown_table(latency))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench structured-tickets", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reductions", type=float, nargs="+", default=[0.5, 0.75], help="target MAC reductions")
    ap.add_argument("--importance", default="magnitude", choices=["magnitude", "taylor", "diff_pruning", "hsic"],
                    help="magnitude (default) needs no data and no gradients: the cheapest on a CPU")
    ap.add_argument("--scan-timesteps", type=int, default=50, help="timestep grid of the data-driven importances")
    ap.add_argument("--steps", type=int, default=300, help="training steps of the dense model and of every arm (T)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=2000, help="samples per network for FID/KID")
    ap.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--sample-batch", type=int, default=500)
    ap.add_argument("--latency-steps", type=int, default=10)
    ap.add_argument("--latency-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--run-root", default="runs/bench_structured_tickets")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--name", default="structured_tickets")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (also LTHDIFF_QUICK=1)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared 2-core machine two threads oversubscribe)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    if args.quick or is_quick():
        args.steps, args.n, args.sample_steps, args.seeds = 20, 64, 2, args.seeds[:2]
        args.latency_steps, args.repeats, args.scan_timesteps = 2, 2, 4
    if args.steps < 1 or args.n < 2 or not all(0 < r < 1 for r in args.reductions):
        ap.error(f"--steps >= 1, --n >= 2 and --reductions in (0, 1) needed; got {args.steps}, {args.n}, "
                 f"{args.reductions}")

    from lthdiff.data.datasets import load_dataset
    from lthdiff.models.unets import unet
    from lthdiff.pruners.channels import ratio_for_macs

    t0 = time.perf_counter()
    ds = load_dataset("digits", image_size=16)
    ratios = {r: ratio_for_macs(unet("tiny", seed=None), r, per_level=True) for r in args.reductions}
    rows, models = [], {}
    for seed in args.seeds:
        seed_rows, seed_models = run_seed(args, seed, ds, ratios)
        rows += seed_rows
        models = models or seed_models  # latency depends on the architecture only: the first seed's
    latency = []
    for reduction in args.reductions:
        lat = {f"b{b}": latency_ratio(models["dense"], models[reduction], batch_size=b, steps=args.latency_steps,
                                      repeats=args.repeats) for b in (1, args.latency_batch)}
        small = next(r for r in rows if r["sparsity"] == reduction)
        latency.append({"MAC target": f"{reduction:.0%}", "macs_reduction": small["macs_reduction"],
                        "widths": small["block_out_channels"],
                        **{f"{k} dense s": v["dense_s"] for k, v in lat.items()},
                        **{f"{k} small s": v["pruned_s"] for k, v in lat.items()},
                        **{f"{k} small/dense": v["ratio"] for k, v in lat.items()}})
    s = summarize(rows)
    md = _markdown(args, rows, s, latency)
    write_results(args.out, args.name, {"args": vars(args), "ratios": {str(k): v for k, v in ratios.items()},
                                        "rows": rows, **s, "latency": latency,
                                        "seconds": time.perf_counter() - t0}, md)
    print(md)
    return 0
