"""The answer first: at each sparsity, does the ticket beat its controls, and how close is it to dense?

Pure functions over *rows*, one dict per trained network: ``seed``, ``round``, ``variant``
(``"ticket"`` or a control such as ``"random_reinit"``), ``sparsity`` (fraction pruned) and metric
values (``fid``, ``kid``, ``final_loss``, ...).  The functions rank by one metric where lower is
better (FID, KID, loss), never by SSIM/PSNR.  Rows come from IMP
run directories (:func:`rows_from_runs`, one directory per seed) or from a benchmark.

What they compute is the protocol of Frankle & Carbin 2018 (a ticket *matches* when it reaches the
dense network's quality; it *wins* when it beats its random-reinit / random-mask control at the
same sparsity) with the spread over seeds that Jiang et al. 2023 (arXiv 2310.18823, Tab. 1) omit:
per-seed ratios, seeds won, and the matching sparsity (the highest sparsity whose mean stays within
dense mean + 1 std, there and at every lower sparsity).
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Any, Sequence

__all__ = ["sparsities", "aggregate", "ticket_vs_control", "matching_sparsity", "summarize", "rows_from_runs",
           "quality_metric", "headline", "headline_text", "METRIC_LABELS"]

# Column names a reader understands, with units; metrics not listed keep their own name.
METRIC_LABELS = {"fid": "FID", "kid": "KID", "kid_std": "KID std (subsets)", "final_loss": "final loss",
                 "loss_at_init": "loss at init (before training)",
                 "precision": "precision", "recall": "recall", "f_score": "F-score (P/R)",
                 "ssim": "SSIM to dense", "psnr": "PSNR to dense (dB)", "perceptual": "perceptual dist. to dense"}


def _std(v: Sequence[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def _by_seed(rows: list[dict[str, Any]], sparsity: float, variant: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in rows
            if r["variant"] == variant and math.isclose(r["sparsity"], sparsity, abs_tol=5e-4)}


def _dense(rows: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in rows if r["round"] == 0 and r["variant"] == "ticket"}


def sparsities(rows: list[dict[str, Any]]) -> list[float]:
    """The pruned sparsities of the ticket rows, ascending (rounded to 0.1 %)."""
    return sorted({round(r["sparsity"], 3) for r in rows if r["round"] > 0 and r["variant"] == "ticket"})


def aggregate(rows: list[dict[str, Any]], metric: str = "fid") -> list[dict[str, Any]]:
    """Mean/std over seeds per (sparsity, variant), with per-seed ratios to the dense model.

    ``rows``: one dict per (seed, round, variant) with ``sparsity`` and ``metric`` (lower is better).
    ``ratio_to_dense_*``: mean/std over seeds of metric / the same seed's dense metric.
    """
    dense = _dense(rows, metric)
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((round(r["sparsity"], 3), "dense" if r["round"] == 0 else r["variant"]), []).append(r)
    out = []
    # per sparsity: dense, then the ticket, then the controls (alphabetical)
    for (sp, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "ticket", kv[0][1])):
        vals = [r[metric] for r in rs]
        ratios = [r[metric] / dense[r["seed"]] for r in rs if r["seed"] in dense]
        row = {"sparsity": sp, "variant": variant, "seeds": len(rs),
               f"{metric}_mean": statistics.mean(vals), f"{metric}_std": _std(vals),
               "ratio_to_dense_mean": statistics.mean(ratios) if ratios else float("nan"),
               "ratio_to_dense_std": _std(ratios) if ratios else float("nan"),
               "ratio_to_dense_per_seed": {r["seed"]: r[metric] / dense[r["seed"]] for r in rs if r["seed"] in dense}}
        if "final_loss" in rs[0]:
            row["final_loss_mean"] = statistics.mean(r["final_loss"] for r in rs)
        out.append(row)
    return out


def ticket_vs_control(rows: list[dict[str, Any]], control: str, metric: str = "fid") -> list[dict[str, Any]]:
    """Per pruned sparsity: ticket/control metric ratio per seed and how many seeds the ticket wins.

    A seed is won when the ticket's metric is strictly lower than the control's of the same seed
    (FID/KID: lower is better); only seeds with both networks count (``seeds``).
    """
    out = []
    for sp in sparsities(rows):
        t, c = _by_seed(rows, sp, "ticket", metric), _by_seed(rows, sp, control, metric)
        common = sorted(set(t) & set(c))
        out.append({"sparsity": sp, "control": control, "seeds": len(common),
                    "ticket_wins": sum(t[s] < c[s] for s in common),
                    "ratio_per_seed": {s: t[s] / c[s] for s in common}})
    return out


def matching_sparsity(rows: list[dict[str, Any]], metric: str = "fid", variant: str = "ticket",
                      k_std: float = 1.0) -> dict[str, Any]:
    """The highest sparsity at which ``variant`` still matches the dense model.

    Matching at sparsity s: mean over seeds of the metric at s <= dense mean + ``k_std`` x dense std
    (sample std over seeds), at s and at every lower pruned sparsity (the IMP path must not have
    left the band on the way).  Returns ``{"sparsity": s or 0.0 when even the first round misses,
    "bound": ..., "dense_mean", "dense_std", "first_miss": the first sparsity above the bound or None}``.
    """
    dense = list(_dense(rows, metric).values())
    if not dense:
        raise ValueError("no dense (round 0) rows: the bound dense mean + k std needs them")
    mean, std = statistics.mean(dense), _std(dense)
    bound = mean + k_std * std
    best, miss = 0.0, None
    for sp in sparsities(rows):
        vals = list(_by_seed(rows, sp, variant, metric).values())
        if not vals or statistics.mean(vals) > bound:
            miss = sp
            break
        best = sp
    return {"sparsity": best, "bound": bound, "dense_mean": mean, "dense_std": std, "first_miss": miss,
            "variant": variant, "metric": metric}


def summarize(rows: list[dict[str, Any]], controls: Sequence[str]) -> dict[str, Any]:
    """Everything the report shows, from the per-network rows (pure: testable on hand-made rows)."""
    fid_table = aggregate(rows, "fid")
    kid_table = aggregate(rows, "kid") if all("kid" in r for r in rows) else []
    kid_by = {(r["sparsity"], r["variant"]): r for r in kid_table}
    for r in fid_table:
        k = kid_by.get((r["sparsity"], r["variant"]))
        if k:
            r["kid_mean"], r["kid_std"] = k["kid_mean"], k["kid_std"]
    versus = {c: ticket_vs_control(rows, c, "fid") for c in controls}
    return {"table": fid_table, "versus": versus, "matching": matching_sparsity(rows, "fid"),
            "matching_controls": {c: matching_sparsity(rows, "fid", variant=c) for c in controls}}




# --------------------------------------------------------------------------- from run directories
def rows_from_runs(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows of one or more IMP run directories (or :class:`lthdiff.lottery.runs.IMPResult`), one per network.

    Each run is one seed (its ``config.json`` says which); metrics are those in each network's
    ``metrics.json`` (written by :func:`lthdiff.pipeline.evaluate_run`), plus ``final_loss``.
    """
    from lthdiff.lottery.runs import IMPResult, read_metrics

    if isinstance(runs, (str, os.PathLike, IMPResult)):
        runs = [runs]
    rows: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for run in runs:
        result = run if isinstance(run, IMPResult) else IMPResult.load(run)
        seed = int(result.config.get("seed", 0))
        if seed in seen:
            raise ValueError(f"runs {seen[seed]} and {result.run_dir} both have seed {seed}; the headline averages "
                             "over seeds, so give one run directory per seed")
        seen[seed] = str(result.run_dir)
        for r in result.rounds:
            for info in [r, *r.controls.values()]:
                metrics = {k: v for k, v in read_metrics(info.dir).items() if isinstance(v, (int, float))}
                rows.append({"seed": seed, "round": r.round, "variant": info.variant, "sparsity": info.sparsity,
                             "final_loss": info.final_loss, **metrics,
                             **({"loss_at_init": info.loss_at_init} if info.loss_at_init is not None else {})})
    return rows


def quality_metric(rows: list[dict[str, Any]]) -> str:
    """``"fid"`` when every network has a finite FID, else ``"final_loss"`` (a run not yet evaluated)."""
    def finite(r: dict[str, Any], k: str) -> bool:
        return isinstance(r.get(k), (int, float)) and math.isfinite(r[k])

    if rows and all(finite(r, "fid") for r in rows):
        return "fid"
    if rows and all(finite(r, "final_loss") for r in rows):
        return "final_loss"
    raise ValueError("the rows have neither an FID nor a final loss for every network; evaluate the run first "
                     "(lthdiff.pipeline.evaluate_run) or pass rows with 'fid' or 'final_loss'")


def _pm(values: Sequence[float], digits: int = 3) -> str:
    if not values:
        return "–"
    m = statistics.mean(values)
    return f"{m:.{digits}g}" if len(values) < 2 else f"{m:.{digits}g} ± {_std(values):.2g}"


def headline(rows: list[dict[str, Any]], metric: str | None = None):
    """The headline table: one row per sparsity (dense first), as text cells ready to print.

    Columns: ``sparsity``, ``weights left``, ``ticket <METRIC>`` (mean ± std over seeds),
    ``ticket / dense`` (per-seed ratio, mean ± std; below 1 is better than dense), for each control
    ``ticket / <control>`` (per-seed ratio) and ``won vs <control>`` (seeds where the ticket's metric
    is lower), and ``matches dense`` (mean within dense mean + 1 std at this sparsity).
    ``metric``: default :func:`quality_metric` (FID when evaluated, else the final training loss).
    """
    import pandas as pd

    metric = metric or quality_metric(rows)
    label = METRIC_LABELS.get(metric, metric)
    controls = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "ticket"))
    dense = _dense(rows, metric)
    if not dense:
        raise ValueError("no dense (round 0) network among the rows; the headline compares tickets with it")
    bound = statistics.mean(dense.values()) + _std(list(dense.values()))
    n_seeds = len(dense)
    out = [{"sparsity": "0 % (dense)", "weights left": "100 %", f"ticket {label}": _pm(list(dense.values())),
            "ticket / dense": "1", **{k: "–" for c in controls for k in (f"ticket / {c}", f"won vs {c}")},
            "matches dense": "–"}]
    for sp in sparsities(rows):
        t = _by_seed(rows, sp, "ticket", metric)
        line = {"sparsity": f"{100 * sp:.1f} %", "weights left": f"{100 * (1 - sp):.3g} %",
                f"ticket {label}": _pm(list(t.values())),
                "ticket / dense": _pm([t[s] / dense[s] for s in t if s in dense and dense[s]])}
        for c in controls:
            v = next(x for x in ticket_vs_control(rows, c, metric) if math.isclose(x["sparsity"], sp, abs_tol=5e-4))
            line[f"ticket / {c}"] = _pm(list(v["ratio_per_seed"].values()))
            line[f"won vs {c}"] = f"{v['ticket_wins']}/{v['seeds']}" if v["seeds"] else "–"
        line["matches dense"] = ("yes" if statistics.mean(t.values()) <= bound else "no") if t else "–"
        out.append(line)
    df = pd.DataFrame(out)
    df.attrs.update(metric=metric, seeds=n_seeds, bound=bound)
    return df


def headline_text(rows: list[dict[str, Any]], metric: str | None = None, *, table: Any = None) -> str:
    """:func:`headline` as plain text for a terminal or log, with the matching sparsity in one sentence.

    ``table``: the :func:`headline` of these rows when the caller already has it (not recomputed).
    """
    table = headline(rows, metric) if table is None else table
    metric = table.attrs["metric"]
    label = METRIC_LABELS.get(metric, metric)
    m = matching_sparsity(rows, metric)
    seeds = table.attrs["seeds"]
    spread = (f"mean ± std over {seeds} seeds" if seeds > 1 else
              "1 seed, so no spread: run other seeds into other run directories and pass them all to "
              "`lthdiff report` for error bars")
    verdict = (f"Matching sparsity: {m['sparsity']:.1%} (the ticket's mean {label} stays within the dense "
               f"mean + 1 std = {m['bound']:.3g} up to there"
               + (f"; first miss at {m['first_miss']:.1%})" if m["first_miss"] is not None else
                  "; it matches at every sparsity run)"))
    note = "" if metric == "fid" else " (not evaluated yet: final training loss instead of FID)"
    return (f"Ticket vs dense and controls, by {label}{note}, lower is better; {spread}.\n"
            + table.to_string(index=False) + "\n" + verdict + ".")
