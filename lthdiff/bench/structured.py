"""Structured pruning of a trained UNet: ``python -m lthdiff.bench structured``.

Trains a dense ``tiny`` UNet on digits (or loads ``--dense``), then for each target MAC reduction
(default 30 / 50 / 70 %) finds the channel ratios (:func:`lthdiff.pruners.channels.ratio_for_macs`,
one per level by default: widths move in GroupNorm steps of 8, so one uniform ratio overshoots),
prunes the EMA weights with each importance, fine-tunes ``--finetune-steps`` and reports:

* exact MACs and parameters, and the reduction actually reached (widths come in GroupNorm steps);
* sampling latency pruned / dense, measured in this process with dense and pruned timed alternately
  (DDIM, ``--latency-steps`` steps, batch 1 and ``--latency-batch``), on the GPU when there is one;
* FID of ``--n`` DDIM samples against the digits training set (:func:`lthdiff.evaluation.metrics.fid`; the
  offline digits extractor unless Inception weights are available), before and after fine-tuning.

Baselines: the dense model fine-tuned for the same extra steps, and (``--controls scratch``) the
pruned architecture re-initialised and trained for the same steps (Diff-Pruning's "reinit").
``--quick`` (or ``LTHDIFF_QUICK=1``) shrinks everything to a smoke test.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
import torch.nn as nn

from lthdiff.reporting.widgets import is_quick
from lthdiff.reporting.tables import markdown_table
from .common import write_results


def latency_ratio(dense: nn.Module, pruned: nn.Module, *, batch_size: int, steps: int,
                  repeats: int) -> dict[str, float]:
    """Median DDIM sampling time of ``pruned`` and ``dense``, timed alternately; and their ratio."""
    from lthdiff.evaluation.sampling import sample

    cuda = next(dense.parameters()).is_cuda
    times: dict[str, list[float]] = {"dense": [], "pruned": []}

    def run(model: nn.Module) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sample(model, batch_size, steps=steps, batch_size=batch_size, progress=False)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(dense), run(pruned)  # warm-up: allocator, kernels
    for _ in range(repeats):
        for name, model in (("dense", dense), ("pruned", pruned)):
            times[name].append(run(model))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"dense_s": med["dense"], "pruned_s": med["pruned"], "ratio": med["pruned"] / med["dense"]}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench structured")
    ap.add_argument("--reductions", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="target MAC reductions")
    ap.add_argument("--importances", nargs="+", default=["magnitude", "taylor", "diff_pruning", "hsic"])
    ap.add_argument("--allocation", choices=["per-level", "uniform"], default="per-level",
                    help="one ratio per level (lands closer to the MAC target) or one ratio everywhere")
    ap.add_argument("--dense", default=None, help="save_pretrained folder of a trained UNet (else train one)")
    ap.add_argument("--steps", type=int, default=3000, help="dense training steps (without --dense)")
    ap.add_argument("--finetune-steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the trainer's)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--importance-batches", type=int, default=2)
    ap.add_argument("--scan-timesteps", type=int, default=1000,
                    help="evenly spaced timesteps the criteria use (Diff-Pruning scans them from t=0)")
    ap.add_argument("--controls", nargs="*", default=["scratch"], choices=["scratch"])
    ap.add_argument("--n", type=int, default=1000, help="samples per model for FID")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for FID samples")
    ap.add_argument("--latency-steps", type=int, default=10)
    ap.add_argument("--latency-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per model and batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes (also LTHDIFF_QUICK=1)")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--name", default="structured")
    args = ap.parse_args(argv)
    if args.quick or is_quick():
        args.steps, args.finetune_steps, args.n, args.sample_steps, args.batch_size = 30, 10, 64, 5, 16
        args.scan_timesteps = 8
        args.latency_steps, args.latency_batch, args.repeats, args.importance_batches = 2, 8, 2, 1

    from lthdiff.data.datasets import load_dataset
    from lthdiff.evaluation.metrics import fid
    from lthdiff.models.unets import from_pretrained, unet
    from lthdiff.pruners.channels import config_macs, pruned_config, ratio_for_macs, structured
    from lthdiff.training.loop import train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = load_dataset("digits", image_size=16)
    if args.dense:
        dense = from_pretrained(args.dense).to(device)
    else:
        dense = train(unet("tiny", seed=args.seed), ds, args.steps, batch_size=args.batch_size, seed=args.seed,
                      desc="dense").sampling_model
    dense = dense.to(device).eval()

    def quality(model: nn.Module) -> float:
        return float(fid(model, "digits", n=args.n, steps=args.sample_steps, seed=args.seed, progress=False))

    def finetune(model: nn.Module, desc: str) -> tuple[nn.Module, float]:
        res = train(copy.deepcopy(model), ds, args.finetune_steps, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed + 1, desc=desc)
        tail = res.losses[-max(1, len(res.losses) // 10):]
        return res.sampling_model.to(device).eval(), statistics.mean(tail)

    dense_macs, dense_params = config_macs(dense), sum(p.numel() for p in dense.parameters())
    base = {"target_macs_reduction": 0.0, "ratio": 0.0,
            "block_out_channels": str(tuple(dense.config.block_out_channels)), "macs": dense_macs,
            "macs_reduction": 0.0, "params": dense_params, "latency_ratio_b1": 1.0,
            f"latency_ratio_b{args.latency_batch}": 1.0}
    rows: list[dict[str, Any]] = [{"variant": "dense", **base, "fid_before_ft": quality(dense)}]
    dense_ft, loss = finetune(dense, "dense +ft")
    rows.append({"variant": "dense +ft", **base, "fid_after_ft": quality(dense_ft), "final_loss": loss})

    for reduction in args.reductions:
        ratio = ratio_for_macs(dense, reduction, per_level=args.allocation == "per-level")
        for imp in args.importances:
            t0 = time.perf_counter()
            pruned, info = structured(dense, ratio, importance=imp, data=ds, batches=args.importance_batches,
                                      batch_size=args.batch_size, timesteps=args.scan_timesteps, seed=args.seed,
                                      return_info=True)
            prune_s = time.perf_counter() - t0
            pruned = pruned.to(device).eval()
            lat1 = latency_ratio(dense, pruned, batch_size=1, steps=args.latency_steps, repeats=args.repeats)
            latb = latency_ratio(dense, pruned, batch_size=args.latency_batch, steps=args.latency_steps,
                                 repeats=args.repeats)
            row = {"variant": imp, "target_macs_reduction": reduction, "ratio": ratio,
                   "block_out_channels": str(info.block_out_channels[1]), "macs": info.macs[1],
                   "macs_reduction": info.macs_reduction, "params": info.params[1],
                   "latency_ratio_b1": lat1["ratio"], f"latency_ratio_b{args.latency_batch}": latb["ratio"],
                   "latency_dense_b1_s": lat1["dense_s"], "latency_pruned_b1_s": lat1["pruned_s"],
                   "prune_seconds": prune_s, "pruned_timesteps": len(set(info.timesteps)),
                   "time_embedding_error": info.time_embedding_error, "fid_before_ft": quality(pruned)}
            tuned, loss = finetune(pruned, f"{imp} {reduction:.0%} +ft")
            rows.append({**row, "fid_after_ft": quality(tuned), "final_loss": loss})
        if "scratch" in args.controls:
            cfg = pruned_config(dense, ratio)
            fresh = unet("tiny", seed=args.seed, **cfg)  # every preset key is overridden by the pruned config
            tuned, loss = finetune(fresh, f"scratch {reduction:.0%}")
            rows.append({"variant": "scratch", "target_macs_reduction": reduction, "ratio": ratio,
                         "block_out_channels": str(tuple(cfg["block_out_channels"])), "macs": config_macs(cfg),
                         "macs_reduction": 1 - config_macs(cfg) / dense_macs,
                         "params": sum(p.numel() for p in fresh.parameters()),
                         "fid_after_ft": quality(tuned), "final_loss": loss})

    for r in rows:
        r["ratio"] = str(r["ratio"])
    cols = ["variant", "target_macs_reduction", "ratio", "block_out_channels", "macs_reduction", "params",
            "latency_ratio_b1", f"latency_ratio_b{args.latency_batch}", "fid_before_ft", "fid_after_ft", "final_loss"]
    md = (f"# Structured pruning of a trained tiny UNet (digits, {device})\n\n"
          f"Dense: {args.dense or f'{args.steps} steps'}; fine-tune {args.finetune_steps} steps (batch "
          f"{args.batch_size}); FID from {args.n} DDIM-{args.sample_steps} samples vs the digits training set. "
          f"Latency ratio = pruned / dense median DDIM-{args.latency_steps} sampling time, timed alternately in "
          "this run. `ratio` is the channel pruning ratio; `macs_reduction` the reduction reached.\n\n"
          + markdown_table(rows, cols))
    write_results(args.out, args.name, {"args": vars(args), "device": device, "rows": rows}, md)
    print(md)
    return 0
