"""Sampling speed a user gets on a CPU, per runtime: ``python -m lthdiff.bench serving``.

The dense tiny UNet and channel-pruned copies of it (``--reductions``: fractions of MACs removed, per-level
ratios from :func:`lthdiff.pruners.channels.ratio_for_macs`, magnitude importance; speed does not depend on the
weights, so the networks are untrained) are timed side by side in one process, in three runtimes: torch eager,
``torch.compile`` (inductor) and ONNX Runtime (:func:`lthdiff.models.export_onnx`).  For batch 1 and
``--batch`` and for 1 and 2 threads: one UNet call and one whole DDIM-``--steps`` sample, each repeated
``--repeats`` times after a warm-up, timed alternately model by model (so load drifts hit all alike); reported as
p50 and p95 latency with the throughput at p50 (images/s), the pruned / dense ratio within each runtime, and the
fastest runtime for each model.  The batch-1 floor: the share of a batch-1 call that does not shrink with the
model, from how little the pruned models gain there against batch ``--batch``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

from lthdiff.reporting.tables import markdown_table
from .common import write_results

RUNTIMES = ("eager", "compile", "onnx")


def _p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _models(reductions: list[float]) -> dict[str, torch.nn.Module]:
    from lthdiff import pruners
    from lthdiff.models import unet
    from lthdiff.pruners.channels import ratio_for_macs

    dense = unet("tiny", seed=0).eval()
    out = {"dense": dense}
    for red in reductions:
        ratio = ratio_for_macs(dense, red, per_level=True)
        out[f"-{red:.0%} MACs"] = pruners.structured(unet("tiny", seed=0), ratio, importance="magnitude",
                                                     progress=False).eval()
    return out


def _runner(model: torch.nn.Module, runtime: str, onnx_path: str, threads: int) -> Any:
    if runtime == "eager":
        return model
    if runtime == "compile":
        return torch.compile(model)
    from lthdiff.models.export import OnnxUNet

    return OnnxUNet(onnx_path, model.config, threads=threads)


def measure(reductions: list[float], batches: list[int], threads: list[int], steps: int, repeats: int,
            runtimes: tuple[str, ...] = RUNTIMES) -> list[dict[str, Any]]:
    """Rows of (model, runtime, threads, batch, what): p50/p95 seconds and images/s; see the module doc."""
    import tempfile

    from lthdiff.evaluation.sampling import sample
    from lthdiff.models.export import export_onnx
    from lthdiff.pruners.channels import config_macs

    models = _models(reductions)
    rows: list[dict[str, Any]] = []
    before = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: str(export_onnx(m, f"{tmp}/m{i}.onnx")) for i, (n, m) in enumerate(models.items())} \
            if "onnx" in runtimes else {}
        for runtime in runtimes:
            # one compiled graph per model and shape for every thread count (inductor recompiles on a new
            # callable, not on torch.set_num_threads); an ONNX Runtime session fixes its threads when created
            once = {n: _runner(m, runtime, paths.get(n, ""), 1) for n, m in models.items()} if runtime != "onnx" else {}
            for th in threads:
                torch.set_num_threads(th)
                runs = once or {n: _runner(m, runtime, paths.get(n, ""), th) for n, m in models.items()}
                for b in batches:
                    x, t = torch.randn(b, 1, 16, 16), torch.full((b,), 500)
                    jobs = {"unet call": lambda r: r(x, t),
                            f"DDIM-{steps} sample": lambda r: sample(r, b, steps=steps, batch_size=b, progress=False)}
                    for what, job in jobs.items():
                        times: dict[str, list[float]] = {n: [] for n in runs}
                        try:
                            with torch.no_grad():
                                for r in runs.values():
                                    job(r)  # warm-up (and, for torch.compile, the compile for this shape)
                                for _ in range(repeats):  # alternately, so a load drift hits every model alike
                                    for n, r in runs.items():
                                        t0 = time.perf_counter()
                                        job(r)
                                        times[n].append(time.perf_counter() - t0)
                        except Exception as exc:  # noqa: BLE001 (e.g. no C++ compiler for inductor: a result)
                            rows.append({"runtime": runtime, "threads": th, "batch": b, "what": what,
                                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})
                            continue
                        for n, ts in times.items():
                            p50 = statistics.median(ts)
                            rows.append({"model": n, "macs": config_macs(models[n]), "runtime": runtime, "threads": th,
                                         "batch": b, "what": what, "p50_s": p50, "p95_s": _p(ts, 0.95),
                                         "images_per_s": b / p50, "repeats": len(ts)})
    torch.set_num_threads(before)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pruned / dense p50 ratios within each runtime, the fastest runtime per model, and the batch-1 floor."""
    ok = [r for r in rows if "error" not in r]
    key = lambda r: (r["runtime"], r["threads"], r["batch"], r["what"])  # noqa: E731
    dense = {key(r): r for r in ok if r["model"] == "dense"}
    ratios = [{**{k: r[k] for k in ("model", "runtime", "threads", "batch", "what")},
               "pruned_over_dense_p50": r["p50_s"] / dense[key(r)]["p50_s"], "macs_ratio": r["macs"] / dense[key(r)]["macs"]}
              for r in ok if r["model"] != "dense" and key(r) in dense]
    fastest = {}
    for r in ok:
        k = (r["model"], r["threads"], r["batch"], r["what"])
        if k not in fastest or r["p50_s"] < fastest[k]["p50_s"]:
            fastest[k] = r
    best = [{"model": k[0], "threads": k[1], "batch": k[2], "what": k[3], "fastest": v["runtime"],
             "p50_s": v["p50_s"], "images_per_s": v["images_per_s"]} for k, v in sorted(fastest.items())]
    floor = []
    for r in ratios:
        if r["batch"] == 1 and r["what"] == "unet call":
            big = next((x for x in ratios if x["batch"] != 1 and x["what"] == r["what"] and x["model"] == r["model"]
                        and x["runtime"] == r["runtime"] and x["threads"] == r["threads"]), None)
            floor.append({**r, "ratio_at_large_batch": big["pruned_over_dense_p50"] if big else None})
    return {"ratios": ratios, "fastest": best, "batch1_floor": floor}


def _md(rows: list[dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace) -> str:
    def f(x: Any) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    table = [{"model": r.get("model", "—"), "runtime": r["runtime"], "threads": r["threads"], "batch": r["batch"],
              "what": r["what"], "p50 (ms)": f(1e3 * r["p50_s"]) if "p50_s" in r else r.get("error", ""),
              "p95 (ms)": f(1e3 * r["p95_s"]) if "p95_s" in r else "", "images/s": f(r.get("images_per_s", ""))}
             for r in rows]
    ratio = [{"model": r["model"], "runtime": r["runtime"], "threads": r["threads"], "batch": r["batch"], "what": r["what"],
              "MACs / dense": f(r["macs_ratio"]), "time / dense (p50)": f(r["pruned_over_dense_p50"])}
             for r in summary["ratios"]]
    best = [{k: f(v) if isinstance(v, float) else v for k, v in r.items()} for r in summary["fastest"]]
    return ("# Sampling speed on a CPU: dense vs channel-pruned tiny UNets, three runtimes\n\n"
            f"Untrained tiny UNets (speed does not depend on the weights), 1x16x16, DDIM-{args.steps}; {args.repeats} "
            "timed repeats after a warm-up, models alternated; p50 and p95 latency, throughput at p50.\n\n"
            + markdown_table(table) + "\n## Pruned / dense, within each runtime\n\n" + markdown_table(ratio)
            + "\n## Fastest runtime per model\n\n" + markdown_table(best))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench serving", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reductions", type=float, nargs="+", default=[0.5, 0.75], help="fractions of MACs removed")
    ap.add_argument("--batch", type=int, default=64, help="the large batch (batch 1 is always measured)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of a whole sample")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    ap.add_argument("--out", default="bench_results")
    args = ap.parse_args(argv)
    rows = measure(args.reductions, [1, args.batch], args.threads, args.steps, args.repeats, tuple(args.runtimes))
    summary = summarize(rows)
    md = _md(rows, summary, args)
    write_results(args.out, "serving", {"rows": rows, **summary, "args": vars(args)}, md)
    print(md)
    return 0
