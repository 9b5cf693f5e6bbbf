"""Figures of recorded results: classic LTH accuracy curves (Frankle & Carbin 2019, Fig. 1/3), ticket
quality vs sparsity over seeds, early-bird mask distances (You et al. 2020), structured tickets per arm.
Re-exported by :mod:`lthdiff.reporting.plots`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .figure_base import axes as _axes
from .figure_base import readable_log_axis

__all__ = ["plot_accuracy", "quality_vs_sparsity", "classic_accuracy", "mask_distance_curve", "structured_tickets",
           "VARIANT_LABELS", "matching_vs_width", "JIANG_PARAMS", "structured_study"]

# Legend names of the variants (ticket, controls, study arms); anything else is shown as it is named.
VARIANT_LABELS = {"ticket": "ticket (IMP, rewound)", "random_reinit": "random reinit", "random_mask": "random mask",
                  "one_shot": "one-shot pruning", "continue": "prune and continue (no rewind)",
                  "late": "late rewind (theta_K)"}


def plot_accuracy(df, ax=None, variants: Sequence[str] | None = None, title: str | None = None):
    """Accuracy vs fraction of weights remaining (log x, decreasing), one line per variant.

    ``df`` holds :func:`imp_accuracy` rows, optionally for several seeds (a ``seed`` column):
    lines are the mean over seeds with +-1 std error bars, as Frankle & Carbin 2019, Fig. 1/3.
    Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))

    labels = VARIANT_LABELS
    if variants is None:  # ticket first, then the controls, whatever order the rows came in
        present = list(dict.fromkeys(df["variant"]))
        variants = [v for v in labels if v in present] + [v for v in present if v not in labels]
    dense = df[df["round"] == 0]
    for v in variants:
        part = df[df["variant"] == v]
        if v != "ticket":  # every control starts from the same dense network (round 0)
            part = pd.concat([dense, part])
        g = part.groupby("round").agg(remaining=("remaining", "mean"), mean=("accuracy", "mean"),
                                      std=("accuracy", "std")).fillna(0.0)
        ax.errorbar(g["remaining"] * 100, g["mean"] * 100, yerr=g["std"] * 100, marker="o", ms=3,
                    capsize=3, label=labels.get(v, v))
    if not dense.empty:
        ax.axhline(dense["accuracy"].mean() * 100, color="gray", ls="--", lw=1, label="dense")
    ax.set_xscale("log")
    # ticks at the measured levels (every other one past 9; the last always, in place of its neighbour so that two
    # labels never touch), so every round can be read
    levels = sorted({round(float(x) * 100, 6) for x in df["remaining"]}, reverse=True)
    ticks = levels if len(levels) <= 9 else levels[::2][:-1] + [levels[-1]]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # off the error bars
    if title:
        ax.set_title(title)
    return ax

def quality_vs_sparsity(table: Any, *, metric: str = "fid", ax: Any = None, matching: float | None = None,
                        title: str | None = None):
    """Mean metric (FID) vs weights remaining (%, log axis, sparser to the right, as Frankle & Carbin
    2019, Fig. 1) with +-1 std error bars over seeds, one line per variant, and the dense model as a
    band (mean +- 1 std): the matching-sparsity bound of a study (``lthdiff study``).

    ``table``: rows of :func:`lthdiff.evaluation.verdict.aggregate` (a DataFrame or list of dicts with
    ``sparsity``, ``variant``, ``<metric>_mean``, ``<metric>_std``; the dense row has variant "dense").
    ``matching``: the matching sparsity (fraction), drawn as a vertical line.
    """
    import pandas as pd

    df = pd.DataFrame(table)
    mean, std = f"{metric}_mean", f"{metric}_std"
    for col in ("sparsity", "variant", mean, std):
        if col not in df.columns:
            raise ValueError(f"table has no column {col!r}; columns: {list(df.columns)}")
    fig, ax = _axes(ax, (6.4, 3.8))
    dense = df[df["variant"] == "dense"]
    if not dense.empty:
        m, s = float(dense[mean].iloc[0]), float(dense[std].iloc[0])
        ax.axhspan(m - s, m + s, color="gray", alpha=0.2, label="dense ± 1 std")
        ax.axhline(m, color="gray", lw=1)
    variants = [v for v in dict.fromkeys(df["variant"]) if v != "dense"]
    variants.sort(key=lambda v: v != "ticket")  # ticket first: colour C0
    for i, v in enumerate(variants):
        g = pd.concat([dense, df[df["variant"] == v]]).sort_values("sparsity")  # every line starts at dense
        ax.errorbar(100 * (1 - g["sparsity"]), g[mean], yerr=g[std], marker="o", ms=4, capsize=3,
                    color=f"C{i % 10}", lw=2 if v == "ticket" else 1.2, ls="-" if v == "ticket" else "--",
                    label=VARIANT_LABELS.get(v, v))
    if matching is not None:
        ax.axvline(100 * (1 - matching), color="C0", ls=":", lw=1, label=f"matching sparsity {matching:.1%}")
    ax.set_xscale("log")
    ax.invert_xaxis()  # sparser to the right
    ticks = sorted({float(x) for x in 100 * (1 - df["sparsity"])}, reverse=True)
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.set_ylabel(f"{metric.upper()} (lower is better)")
    ax.set_title(title or f"{metric.upper()} vs weights remaining (mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # off the data
    ax.grid(alpha=0.3)
    return fig


def classic_accuracy(results: str | os.PathLike | Mapping[str, Any], *, ax: Any = None, title: str | None = None):
    """Test accuracy vs weights remaining from a recorded ``python -m lthdiff.bench classic`` result
    (its JSON file or the loaded dict): ticket and controls, mean +- std over seeds, as Frankle &
    Carbin 2019, Fig. 1/3 (:func:`lthdiff.reporting.plots.plot_accuracy`)."""
    import json

    import pandas as pd


    payload = json.loads(Path(results).read_text()) if isinstance(results, (str, os.PathLike)) else results
    cfg = payload["config"]
    fig, ax = _axes(ax, (6.5, 4.2))
    plot_accuracy(pd.DataFrame(payload["rows"]), ax=ax,
                  title=title or f"{cfg['preset']} on {cfg['dataset']}: IMP, rewind to init ({cfg['seeds']} seeds)")
    return fig


def mask_distance_curve(result: Any, *, eps: float | None = None, ax: Any = None, title: str | None = None):
    """The early-bird mask-distance curve (You et al. 2020, Fig. 3 / Sec. 3.3): at every check, the largest
    normalised Hamming distance (fraction of weights) between the newest mask and the others in the FIFO.

    ``result``: an :class:`lthdiff.lottery.early_bird.EarlyBirdResult`, the ``early_bird.json`` it writes (path or
    loaded dict), or a list of ``(step, distance)``.  ``eps`` (default: the result's) is drawn as a
    horizontal line and the stop step, when there is one, as a vertical line.
    """
    import json

    stop, cfg_eps = None, None
    if isinstance(result, (str, os.PathLike)):
        path = Path(result)
        result = json.loads((path / "early_bird.json" if path.is_dir() else path).read_text())
    if isinstance(result, Mapping):
        points, stop = result.get("distances"), result.get("stop_step")
        cfg_eps = result.get("eps")
    elif hasattr(result, "distances"):
        points, stop = result.distances, result.stop_step
        cfg_eps = getattr(result, "config", {}).get("eps")
    else:
        points = result
    try:
        pts = [(int(s), float(d)) for s, d in points]
    except (TypeError, ValueError) as exc:
        raise ValueError("result must be an EarlyBirdResult, an early_bird.json (path or dict) or a list of "
                         f"(step, distance) pairs; got {type(result).__name__}") from exc
    eps = cfg_eps if eps is None else eps
    fig, ax = _axes(ax, (5.5, 3.4))
    if pts:
        ax.plot([s for s, _ in pts], [d for _, d in pts], marker="o", ms=3, lw=1.5, color="C0",
                label="max distance, newest vs FIFO")
    if eps is not None:
        ax.axhline(eps, color="C3", ls="--", lw=1, label=f"eps = {eps:g}")
    if stop is not None:
        ax.axvline(stop, color="C2", ls=":", lw=1.2, label=f"early-bird stop at step {stop}")
    ax.set_xlabel("training step")
    ax.set_ylabel("mask distance (fraction of weights)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "Early-bird mask distance")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def structured_tickets(results: str | os.PathLike | Mapping[str, Any], *, metric: str = "fid", ax: Any = None,
                       title: str | None = None, logy: bool | None = None):
    """FID (or KID, ``metric="kid"``) per arm and MAC level from a recorded ``python -m lthdiff.bench
    structured-tickets`` result (its JSON file or the loaded dict): bars = mean over seeds, error bars
    = sample std, the dense model as a grey band (mean +- 1 std).  Arms: ticket (theta_0 at the kept
    channels, Frankle & Carbin 2019), scratch (Liu et al. 2019), finetune (Diff-Pruning, Fang et al. 2023).

    ``logy``: a log y-axis; by default when the bars span more than 3x (FID ~25 at 75 % fewer MACs
    would otherwise flatten the arms' differences at 50 %).
    """
    import json

    payload = json.loads(Path(results).read_text()) if isinstance(results, (str, os.PathLike)) else results
    if metric not in ("fid", "kid"):
        raise ValueError(f"metric must be 'fid' or 'kid', got {metric!r}")
    if not isinstance(payload, Mapping) or not isinstance(payload.get("table"), list):
        raise ValueError("results must be a structured-tickets benchmark result with a 'table' list "
                         f"(lthdiff/bench/results/structured_tickets.json), got keys {list(payload)[:5] if isinstance(payload, Mapping) else type(payload).__name__}")
    table = payload["table"]
    fig, ax = _axes(ax, (6.0, 3.8))
    dense = [r for r in table if r["variant"] == "dense"]
    if dense:
        m, s = dense[0][f"{metric}_mean"], dense[0][f"{metric}_std"]
        ax.axhspan(m - s, m + s, color="gray", alpha=0.2, label="dense ± 1 std")
        ax.axhline(m, color="gray", lw=1)
    levels = sorted({r["sparsity"] for r in table if r["variant"] != "dense"})
    arms = [a for a in ("ticket", "scratch", "finetune") if any(r["variant"] == a for r in table)]
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        rows = {r["sparsity"]: r for r in table if r["variant"] == arm}
        xs = [j + (i - (len(arms) - 1) / 2) * width for j, lv in enumerate(levels) if lv in rows]
        ax.bar(xs, [rows[lv][f"{metric}_mean"] for lv in levels if lv in rows], width, color=f"C{i}", label=arm,
               yerr=[rows[lv][f"{metric}_std"] for lv in levels if lv in rows], capsize=4)
    # the MAC reduction the rounded widths reached (74 % for the 75 % target on the tiny UNet), where recorded
    reached = {float(str(r.get("MAC target", "")).rstrip("%") or "nan") / 100: r["macs_reduction"]
               for r in payload.get("latency", []) if "macs_reduction" in r}
    ax.set_xticks(range(len(levels)), [f"{reached.get(lv, lv):.0%} fewer MACs" for lv in levels])
    means = [r[f"{metric}_mean"] for r in table if r[f"{metric}_mean"] > 0]
    if logy or (logy is None and means and max(means) > 3 * min(means)):
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis, min(means), max(means))
    ax.set_ylabel(f"{metric.upper()} (lower is better{', log scale' if ax.get_yscale() == 'log' else ''})")
    seeds = max((int(r.get("seeds", 0)) for r in table), default=0)
    ax.set_title(title or f"Structured tickets: {metric.upper()} (mean ± std over {seeds} seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # off the bars
    ax.grid(alpha=0.3, axis="y")
    return fig


JIANG_PARAMS = 35.7e6  # Jiang et al. 2023's CIFAR-10 DDPM UNet (google/ddpm-cifar10-32)


def matching_vs_width(studies: Sequence[Mapping[str, Any]], *, title: str | None = None):
    """Does the matching sparsity grow with width?  Left: the matching sparsity of each width's study against its
    parameter count (log x), the first miss as the top of an error bar (the limit lies between the two), and Jiang
    et al. 2023's claim (tickets to 99 % at 35.7M parameters) marked; right: ticket FID / dense per sparsity, one
    curve a width.  ``studies``: ``{"params": int, "label": str, "agg": aggregate_records(...)}`` per width."""
    import matplotlib.pyplot as plt

    if not studies:
        raise ValueError("matching_vs_width needs at least one study (params, label, agg)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for i, st in enumerate(sorted(studies, key=lambda s: s["params"])):
        m, p = st["agg"]["matching"], st["params"]
        top = m["first_miss"] if m["first_miss"] is not None else m["sparsity"]
        left.errorbar([p], [100 * m["sparsity"]], yerr=[[0], [100 * (top - m["sparsity"])]], marker="o", ms=7,
                      capsize=4, color=f"C{i}", label=f"{st['label']} ({p / 1e6:.2g}M)")
        t = [r for r in st["agg"]["table"] if r["variant"] == "ticket" and r["sparsity"] > 0]
        right.errorbar([100 * (1 - r["sparsity"]) for r in t], [r["ratio_to_dense_mean"] for r in t],
                       yerr=[r["ratio_to_dense_std"] for r in t], marker="o", ms=4, capsize=3, color=f"C{i}",
                       label=f"{st['label']} ({len(st['agg']['seeds'])} seeds)")
    left.scatter([JIANG_PARAMS], [99.0], marker="*", s=160, color="black", zorder=3,
                 label="Jiang et al. 2023 claim (99 %, not a rewound ticket)")
    left.set_xscale("log")
    left.set_xlabel("UNet parameters (log scale)")
    left.set_ylabel("matching sparsity (%) \u2192 first miss")
    left.set_ylim(min(80.0, left.get_ylim()[0]), 100)
    left.legend(fontsize=7, loc="lower right")
    left.grid(alpha=0.3)
    right.axhline(1.0, color="gray", lw=1)
    ys = [r["ratio_to_dense_mean"] for st in studies for r in st["agg"]["table"]
          if r["variant"] == "ticket" and r["sparsity"] > 0 and r["ratio_to_dense_mean"]]
    if ys and max(ys) > 5 * min(ys):  # a narrow network's 10x at 98 % would flatten the curves near 1 (matching)
        right.set_yscale("log")
        readable_log_axis(right.yaxis, min(ys), max(ys))
    right.set_xscale("log")
    right.invert_xaxis()
    levels = sorted({100 * (1 - r["sparsity"]) for st in studies for r in st["agg"]["table"] if r["sparsity"] > 0},
                    reverse=True)
    right.set_xticks(levels, [f"{v:.3g}" for v in levels])  # the measured levels, not log-axis defaults
    right.minorticks_off()
    right.set_xlabel("weights remaining (%, log scale)")
    right.set_ylabel("ticket / dense FID (mean ± std" + (", log)" if right.get_yscale() == "log" else ")"))
    right.legend(fontsize=7, loc="upper left")
    right.grid(alpha=0.3)
    fig.suptitle(title or "Matching sparsity vs width (digits 16 px; FID in lthdiff-digits features)", fontsize=10)
    fig.tight_layout()
    return fig


_ARM_STYLE = {"ticket": ("C0", "o"), "scratch": ("C1", "^"), "finetune": ("C2", "s")}


def structured_study(agg: Mapping[str, Any], *, title: str | None = None):
    """The structured arms of a study (``agg``: :func:`lthdiff.study.aggregate_records` with a ``structured``
    table): each arm's mean FID over seeds / dense's mean FID (error bars: its std / dense's mean) against the MAC
    reduction reached, one marker an arm (ticket, Frankle & Carbin 2019; scratch, Liu et al. 2019; fine-tune,
    Diff-Pruning, Fang et al. 2023), filled for magnitude importance and open for Taylor.  The grey band is dense
    mean ± 1 std in the same units, so a marker at or below its top matches dense (the study's rule)."""
    rows = agg.get("structured") or []
    if not rows:
        raise ValueError("structured_study needs a study aggregate with structured networks recorded (its "
                         "'structured' table is empty or missing)")
    dense = next(r for r in agg["table"] if r["variant"] == "dense")
    fig, ax = _axes(None, (6.4, 3.8))
    band, mean = dense["fid_std"] / dense["fid_mean"], dense["fid_mean"]
    ax.axhspan(1 - band, 1 + band, color="gray", alpha=0.2, label=f"dense ± 1 std ({dense['seeds']} seeds)")
    ax.axhline(1, color="gray", lw=1)
    kinds = sorted({(r["kind"], r["importance"]) for r in rows}, key=lambda k: (list(_ARM_STYLE).index(k[0]), k[1] or ""))
    reached = sorted({round(100 * (1 - r["macs_ratio"])) for r in rows if r.get("macs_ratio")})
    for i, (kind, imp) in enumerate(kinds):
        color, marker = _ARM_STYLE[kind]
        pts = [r for r in rows if (r["kind"], r["importance"]) == (kind, imp)]
        off = (i - (len(kinds) - 1) / 2) * 1.2  # side by side at each level, not on top of each other
        seeds = max(r["seeds"] for r in pts)
        ax.errorbar([100 * (1 - r["macs_ratio"]) + off for r in pts], [r["fid_mean"] / mean for r in pts],
                    yerr=[r["fid_std"] / mean for r in pts], ls="none", marker=marker, ms=7, capsize=3, color=color,
                    mfc=color if imp in (None, "magnitude") else "white",
                    label=f"{kind}" + (f" ({imp})" if imp else "") + f", {seeds} seed{'s' * (seeds != 1)}")
    ax.set_xticks(reached, [f"{v}%" for v in reached])
    ax.set_xlim(min(reached) - 8, max(reached) + 8)
    ax.set_xlabel("MACs removed (reached)")
    ax.set_ylabel("mean FID / dense mean FID")
    ax.set_title(title or "Structured tickets vs scratch vs fine-tune, each trained T steps")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return fig
