"""Early-bird vs IMP tickets: ``python -m lthdiff.bench early-bird``.

For each seed, on ``--dataset`` (digits 16 px, tiny UNet): IMP's ticket at 87.5 % sparsity (3 rounds of
50 %, rewind to init, T steps each: 4T training steps with the dense round) and the early-bird ticket at
the same sparsity (You et al. 2020: magnitude mask every ``--every`` steps of dense training, FIFO of
``--window`` masks, stop when the largest normalised Hamming distance newest-vs-others is < ``--eps``;
then the mask on theta_0, retrained T steps: stop step + T training steps).  Both are scored by FID/KID
from ``--n`` DDIM-``--sample-steps`` samples of the EMA weights (sampling seed = training seed) against
the training set with the extractor ``feature_extractor="auto"`` resolves (offline: lthdiff-digits), the
protocol of the recorded study (``lthdiff study``).  Reported: FID mean +- std per method, EB/IMP FID ratio per seed, EB/IMP
training-compute ratio, and whether the target (EB FID within 10 % of IMP's for <= 40 % of its
training steps) is met.  Results are rewritten after every seed, so an interrupted run leaves the seeds
it finished.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any, Sequence

from lthdiff.reporting.tables import markdown_table
from .common import write_results

FID_TOLERANCE = 0.10  # EB FID within 10 % of IMP's ticket ...
COMPUTE_BUDGET = 0.40  # ... for at most 40 % of IMP's training steps


def _std(v: Sequence[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def summarize(rows: list[dict[str, Any]], fid_tolerance: float = FID_TOLERANCE,
              compute_budget: float = COMPUTE_BUDGET) -> dict[str, Any]:
    """Aggregate per-seed rows (keys ``seed``, ``fid_imp``, ``fid_eb``, ``steps_imp``, ``steps_eb``,
    optionally ``kid_imp``/``kid_eb``) into means/stds, per-seed ratios and the target verdict (pure).

    Target met when mean FID_EB <= (1 + ``fid_tolerance``) x mean FID_IMP and mean compute ratio
    steps_EB / steps_IMP <= ``compute_budget``; ``seeds_meeting`` counts seeds meeting both on their own.
    """
    if not rows:
        raise ValueError("summarize needs at least one per-seed row")
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
    for method in ("imp", "eb"):
        for metric in ("fid", "kid"):
            vals = [r[f"{metric}_{method}"] for r in rows if f"{metric}_{method}" in r]
            if vals:
                out[f"{metric}_{method}_mean"], out[f"{metric}_{method}_std"] = statistics.mean(vals), _std(vals)
    fid_ratio = {r["seed"]: r["fid_eb"] / r["fid_imp"] for r in rows}
    compute = {r["seed"]: r["steps_eb"] / r["steps_imp"] for r in rows}
    out["fid_ratio_per_seed"], out["compute_ratio_per_seed"] = fid_ratio, compute
    out["fid_ratio_of_means"] = out["fid_eb_mean"] / out["fid_imp_mean"]
    out["compute_ratio_mean"] = statistics.mean(compute.values())
    out["fid_ok"] = out["fid_ratio_of_means"] <= 1 + fid_tolerance
    out["compute_ok"] = out["compute_ratio_mean"] <= compute_budget
    out["target_met"] = bool(out["fid_ok"] and out["compute_ok"])
    out["seeds_meeting"] = sum(fid_ratio[s] <= 1 + fid_tolerance and compute[s] <= compute_budget for s in fid_ratio)
    out["fid_tolerance"], out["compute_budget"] = fid_tolerance, compute_budget
    return out


def _score(info: Any, args: argparse.Namespace, seed: int, extractor: str) -> dict[str, float]:
    """FID/KID of a trained network's EMA weights, cached in its ``metrics.json`` by settings."""
    from lthdiff.store.io import read_json
    from lthdiff.evaluation.metrics import evaluate
    from lthdiff.lottery.runs import write_metrics
    from lthdiff.evaluation.sampling import image_grid, sample

    settings = {"n": args.n, "sampler": "ddim", "steps": args.sample_steps, "feature_extractor": extractor,
                "seed": seed}
    path = info.dir / "metrics.json"
    cached = read_json(path) if path.exists() else None
    if cached is None or cached.get("settings") != settings:
        images = sample(info.load_model(ema=True), args.n, sampler="ddim", steps=args.sample_steps, seed=seed,
                        batch_size=args.sample_batch, progress=not args.quiet)
        image_grid(images[:64], scale=4).save(info.dir / "samples.png")
        res = evaluate(images, args.dataset, image_size=args.image_size, feature_extractor=extractor,
                       progress=not args.quiet)
        cached = write_metrics(info.dir, res.metrics, settings=settings, extractor=res.extractor)
    return cached["metrics"]


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """IMP ticket and early-bird ticket for one seed, trained (resumably) and scored; one result row."""
    from lthdiff.lottery import early_bird
    from lthdiff import masks as M
    from lthdiff.data.datasets import load_dataset
    from lthdiff.lottery.imp import run_imp
    from lthdiff.evaluation.metrics.fidelity import resolve_extractor
    from lthdiff.models.unets import unet

    ds = load_dataset(args.dataset, image_size=args.image_size)
    ch = ds[0].shape[0]
    root = Path(args.run_root) / f"seed_{seed}"

    def fresh():
        return unet(args.preset, seed=seed, sample_size=args.image_size, in_channels=ch, out_channels=ch)

    common = dict(seed=seed, batch_size=args.batch_size, lr=args.lr)
    eb = early_bird.find(fresh(), ds, args.sparsity, run_dir=root / "early_bird", every=args.every, eps=args.eps,
                         window=args.window, max_steps=args.search_steps, progress=not args.quiet, **common)
    eb_info = early_bird.retrain(eb, ds, args.steps, progress=not args.quiet)
    imp = run_imp(fresh(), ds, rounds=args.rounds, prune_per_round=args.prune_per_round, steps_per_round=args.steps,
                  run_dir=root / "imp", controls=(), rewind="init", progress=not args.quiet, **common)
    ticket = imp.final
    extractor = resolve_extractor("auto", ch, reference=args.dataset)
    m_imp, m_eb = _score(ticket, args, seed, extractor), _score(eb_info, args, seed, extractor)
    overlap = M.similarity(ticket.load_mask(), eb.mask, by="overall").iloc[0]
    return {"seed": seed, "fid_imp": m_imp["fid"], "fid_eb": m_eb["fid"], "kid_imp": m_imp.get("kid"),
            "kid_eb": m_eb.get("kid"), "sparsity_imp": ticket.sparsity, "sparsity_eb": eb_info.sparsity,
            "steps_imp": sum(int(r.summary["steps"]) for r in imp.rounds),
            "steps_eb": eb.steps_trained + int(eb_info.summary["steps"]), "stop_step": eb.stop_step,
            "search_steps": eb.steps_trained, "detected": eb.detected, "distances": eb.distances,
            "mask_jaccard": float(overlap["jaccard"]), "mask_hamming": float(overlap["hamming"]),
            "extractor": extractor}


def _markdown(args: argparse.Namespace, rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    per_seed = [{"seed": r["seed"], "FID IMP": r["fid_imp"], "FID EB": r["fid_eb"],
                 "EB / IMP FID": r["fid_eb"] / r["fid_imp"], "EB stop step": r["stop_step"] if r["detected"]
                 else f"none (mask at {r['search_steps']})", "steps IMP": r["steps_imp"], "steps EB": r["steps_eb"],
                 "EB / IMP steps": r["steps_eb"] / r["steps_imp"], "mask Jaccard EB vs IMP": r["mask_jaccard"]}
                for r in rows]
    means = [{"method": name, "FID": f"{s[f'fid_{k}_mean']:.3g} ± {s[f'fid_{k}_std']:.2g}",
              "KID": (f"{s[f'kid_{k}_mean']:.3g} ± {s[f'kid_{k}_std']:.2g}" if f"kid_{k}_mean" in s else "n/a"),
              "training steps": statistics.mean(r[f"steps_{k}"] for r in rows)}
             for k, name in (("imp", f"IMP ticket ({args.rounds} rounds of {args.prune_per_round:.0%})"),
                             ("eb", "early-bird ticket"))]
    verdict = "MET" if s["target_met"] else "NOT met"
    return (f"# Early-bird vs IMP tickets ({args.dataset} {args.image_size}px, {args.preset} UNet, "
            f"{args.sparsity:.1%} sparsity)\n\n"
            f"Seeds {s['seeds']}; batch {args.batch_size}, lr {args.lr} (constant), T = {args.steps} steps per "
            f"training. IMP: dense + {args.rounds} rounds, rewind to init. Early bird (You et al. 2020): mask every "
            f"{args.every} steps, FIFO {args.window}, eps {args.eps} (normalised Hamming), search capped at "
            f"{args.search_steps} steps, then the mask on theta_0 retrained T steps. FID/KID: {args.n} "
            f"DDIM-{args.sample_steps} samples, EMA weights, extractor `{rows[0]['extractor']}`.\n\n"
            + markdown_table(means) + "\n" + markdown_table(per_seed)
            + f"\n**Target** (EB mean FID within {s['fid_tolerance']:.0%} of IMP's for <= "
            f"{s['compute_budget']:.0%} of its training steps): **{verdict}**: FID ratio of means "
            f"{s['fid_ratio_of_means']:.3g} ({'ok' if s['fid_ok'] else 'too high'}), compute ratio "
            f"{s['compute_ratio_mean']:.3g} ({'ok' if s['compute_ok'] else 'too high'}); "
            f"{s['seeds_meeting']}/{len(rows)} seeds meet both on their own.\n")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench early-bird", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="T: steps of every IMP round and of the EB retraining")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prune-per-round", type=float, default=0.5)
    ap.add_argument("--every", type=int, default=20, help="steps between two early-bird masks")
    ap.add_argument("--window", type=int, default=5, help="FIFO length (You et al. 2020: 5)")
    ap.add_argument("--eps", type=float, default=0.1, help="mask-distance threshold (You et al. 2020: 0.1)")
    ap.add_argument("--search-steps", type=int, default=None, help="cap of the early-bird search (default T)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=2000, help="samples per network for FID/KID")
    ap.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--sample-batch", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--run-root", default="runs/bench_early_bird")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--name", default="early_bird")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not 0 < args.prune_per_round < 1 or args.rounds < 1:
        ap.error(f"--prune-per-round in (0, 1) and --rounds >= 1 needed; got {args.prune_per_round}, {args.rounds}")
    args.search_steps = args.search_steps or args.steps
    args.sparsity = 1 - (1 - args.prune_per_round) ** args.rounds
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rows.append(run_seed(args, seed))
        s = summarize(rows)
        md = _markdown(args, rows, s)
        if len(rows) < len(args.seeds):
            md += f"\n(partial: {len(rows)} of {len(args.seeds)} seeds done)\n"
        write_results(args.out, args.name, {"args": vars(args), "rows": rows, **s}, md)
        print(md, flush=True)
    return 0
