"""Dense vs 2:4 semi-structured linear layers of the ``ddpm-cifar10`` UNet: ``python -m lthdiff.bench sparse24``.

Needs a CUDA GPU with compute capability >= 8.0 (sm80+); on any other machine it prints why and exits
with status 2.  The ``ddpm-cifar10`` preset (the configuration of google/ddpm-cifar10-32, built offline
with random weights: speed does not depend on the values) gets its ``nn.Linear`` weights pruned to 2:4
by magnitude (:func:`lthdiff.pruners.magnitude`, ``pattern="2:4"``), then, in half precision:
(1) every distinct linear shape is timed as ``F.linear`` on its real input rows (attention layers: batch x
tokens at their resolution; time-embedding layers: batch rows), dense vs semi-structured; (2) the whole
UNet forward pass, dense vs with the linear layers converted (:func:`lthdiff.pruners.semi_structured.to_semi_structured`).
Median of ``--repeats`` CUDA-synchronised timings.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from lthdiff.reporting.tables import markdown_table
from .common import median_time, write_results


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench sparse24", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--name", default="sparse24")
    args = ap.parse_args(argv)
    from lthdiff.pruners.semi_structured import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        print(f"sparse24: cannot run here: {reason}", file=sys.stderr)
        return 2
    import torch
    import torch.nn.functional as F
    from torch.sparse import to_sparse_semi_structured

    from lthdiff import masks as M
    from lthdiff import pruners
    from lthdiff.models.unets import unet
    from lthdiff.pruners.semi_structured import to_semi_structured

    model = unet("ddpm-cifar10", seed=0).eval()
    linear = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    mask = pruners.magnitude(model, 0.5, mask={n: torch.ones_like(m.weight, dtype=torch.bool)
                                               for n, m in linear.items()}, pattern="2:4")
    M.apply(model, mask)
    model.to("cuda", torch.float16)
    # input rows each linear layer sees: record them with forward hooks on one pass
    rows_of: dict[str, int] = {}
    def hook(name: str):
        return lambda mod, inp, out: rows_of.setdefault(name, inp[0].numel() // inp[0].shape[-1])

    hooks = [m.register_forward_hook(hook(n)) for n, m in linear.items()]
    x = torch.randn(args.batch, 3, 32, 32, device="cuda", dtype=torch.float16)
    t = torch.randint(0, 1000, (args.batch,), device="cuda")
    with torch.no_grad():
        model(x, t)
    for h in hooks:
        h.remove()
    layers: dict[tuple[int, int, int], list[str]] = {}
    for n, m in linear.items():
        if n in rows_of:  # a layer the forward pass never calls has nothing to time
            layers.setdefault((rows_of[n], m.out_features, m.in_features), []).append(n)
    table: list[dict[str, Any]] = []
    with torch.no_grad():
        for (rows, out_f, in_f), names in sorted(layers.items()):
            w = linear[names[0]].weight.detach()
            inp = torch.randn(rows, in_f, device="cuda", dtype=torch.float16)
            dense = median_time(lambda: F.linear(inp, w), repeats=args.repeats, cuda=True)
            try:
                sw = to_sparse_semi_structured(w)
                sparse = median_time(lambda: F.linear(inp, sw), repeats=args.repeats, cuda=True)
                note = ""
            except (RuntimeError, ValueError) as exc:
                sparse, note = float("nan"), str(exc)[:80]
            table.append({"input rows": rows, "out x in": f"{out_f} x {in_f}", "layers": len(names),
                          "dense ms": dense * 1e3, "2:4 ms": sparse * 1e3, "speed-up": dense / sparse, "note": note})
        full_dense = median_time(lambda: model(x, t), repeats=args.repeats, cuda=True)
        conv = to_semi_structured(model)
        full_sparse = median_time(lambda: model(x, t), repeats=args.repeats, cuda=True)
    whole = {"batch": args.batch, "dense ms": full_dense * 1e3, "2:4 linear ms": full_sparse * 1e3,
             "speed-up": full_dense / full_sparse, "converted": len(conv["converted"]), "skipped": len(conv["skipped"])}
    md = (f"# 2:4 semi-structured linear layers, ddpm-cifar10 UNet ({torch.cuda.get_device_name()})\n\n"
          f"fp16, batch {args.batch}, median of {args.repeats} timings.\n\n" + markdown_table(table)
          + "\n## Whole UNet forward (convolutions stay dense)\n\n" + markdown_table([whole]))
    write_results(args.out, args.name, {"args": vars(args), "layers": table, "whole": whole,
                                        "skipped": conv["skipped"]}, md)
    print(md)
    return 0
