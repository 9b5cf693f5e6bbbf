"""Masked vs dense training speed: ``python -m lthdiff.bench masked-training``.

Times :func:`lthdiff.training.loop.train` on the same model and data with and without a 90%-sparse
mask, alternating the two so machine noise hits both, and reports the ratio of median time per
step (target <= 1.05: enforcing the mask must cost almost nothing).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from lthdiff.data.datasets import TensorImageDataset, load_dataset
from lthdiff.models.unets import unet
from lthdiff.reporting.tables import markdown_table
from .common import write_results


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench masked-training")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per variant (alternating)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)

    from lthdiff import pruners
    from lthdiff.training.loop import train

    model = unet(args.preset, seed=0)
    size, ch = model.config.sample_size, model.config.in_channels
    if args.preset == "tiny":
        ds = load_dataset("digits", image_size=size)
    else:  # synthetic images of the preset's shape: speed does not depend on content
        ds = TensorImageDataset(torch.rand(1024, ch, size, size) * 2 - 1)
    mask = pruners.magnitude(model, args.sparsity)
    per_step: dict[str, list[float]] = {"dense": [], "masked": []}
    train(model, ds, 5, batch_size=args.batch_size, progress=False)  # warm-up (allocator, kernels)
    for _ in range(args.repeats):
        for name, m in (("dense", None), ("masked", mask)):
            fresh = unet(args.preset, seed=0)
            res = train(fresh, ds, args.steps, batch_size=args.batch_size, mask=m, progress=False)
            per_step[name].append(res.seconds / args.steps)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    ratio = med["masked"] / med["dense"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = [{"device": device, "preset": args.preset, "sparsity": args.sparsity,
             "dense_s_per_step": med["dense"], "masked_s_per_step": med["masked"], "ratio_masked_over_dense": ratio}]
    md = (f"# Masked vs dense training ({device}, {args.preset}, batch {args.batch_size})\n\n"
          + markdown_table(rows) + f"\nTarget: ratio <= 1.05. Median of {args.repeats} alternating runs of "
          f"{args.steps} steps.\n")
    write_results(args.out, f"masked_training_{device}", {"rows": rows, "raw": per_step}, md)
    print(md)
    return 0
