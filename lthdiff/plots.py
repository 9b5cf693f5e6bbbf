"""Figures shared by notebooks and reports: loss curves, sparsity-vs-metric curves, per-block
sparsity heatmaps and sample-grid panels (matplotlib), plus PNG/base64 export.

Every function draws into ``ax`` when given, else into a new pyplot figure (so ``%matplotlib
inline`` shows it), and returns the ``matplotlib.figure.Figure``.
"""
from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["loss_curve", "sparsity_curve", "sparsity_curve_interactive", "sparsity_heatmap", "image_panels", "to_png", "data_uri", "close",
           "plot_accuracy", "quality_vs_sparsity", "classic_accuracy"]

# Frankle & Carbin plot tickets against the percentage of weights remaining on a log axis
_REMAINING = "weights remaining (%)"


def _axes(ax: Any, figsize: tuple[float, float]):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _readable_log_axis(axis: Any, lo: float, hi: float) -> None:
    """Plain numbers (0.2, 0.5, 1 rather than 2x10^-1) on a log axis, 1-2-5 ticks per decade."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if hi / lo > 3 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(NullFormatter())


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (window clipped at the start), so curve and raw losses align by step."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def loss_curve(losses: Mapping[str, Sequence[float]] | Sequence[float], *, smooth: int | None = None,
               ax: Any = None, title: str = "training loss", logy: bool = True):
    """Training loss per step for one run or ``{label: losses}``: raw (faint) and moving average.

    ``smooth``: moving-average window in steps (default: 1/50 of the longest run, at least 1).
    """
    if not isinstance(losses, Mapping):
        losses = {"loss": losses}
    series = {str(k): [float(x) for x in v] for k, v in losses.items()}
    if not series or not any(series.values()):
        raise ValueError("loss_curve needs at least one non-empty loss sequence")
    longest = max(len(v) for v in series.values())
    window = smooth if smooth is not None else max(1, longest // 50)
    if window < 1:
        raise ValueError(f"smooth must be a window of >= 1 steps, got {smooth!r}")
    fig, ax = _axes(ax, (6.5, 3.6))
    for i, (label, values) in enumerate(series.items()):
        if not values:
            continue
        color = f"C{i % 10}"
        steps = range(1, len(values) + 1)
        if window > 1:
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, _smooth(values, window), color=color, label=label, linewidth=1.5)
    flat = [v for vs in series.values() for v in vs]
    if logy and min(flat) > 0:
        ax.set_yscale("log")
        _readable_log_axis(ax.yaxis, min(flat), max(flat))
    ax.set_xlabel("step")
    ax.set_ylabel("loss" + (f" (moving average over {window} steps)" if window > 1 else ""))
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def sparsity_curve(table: Any, metric: str, *, by: str | None = "variant", ax: Any = None,
                   title: str | None = None, remaining: bool = True, lower_is_better: bool | None = None):
    """``metric`` against sparsity, one line per ``by`` group (ticket and controls).

    ``table``: a DataFrame with a ``sparsity`` column (fraction pruned) and ``metric`` column, e.g.
    :meth:`lthdiff.imp.IMPResult.table` or :meth:`lthdiff.registry.Registry.metrics`.
    ``remaining=True`` plots the percentage of weights remaining on a reversed log axis, as
    Frankle & Carbin 2019 (Fig. 1, 3) do; False plots sparsity (%) linearly.
    """
    for col in ("sparsity", metric, *([by] if by else [])):
        if col not in table.columns:
            raise ValueError(f"table has no column {col!r}; columns: {list(table.columns)}")
    fig, ax = _axes(ax, (5.5, 3.6))
    groups = [(None, table)] if by is None else list(table.groupby(by, sort=False))
    groups.sort(key=lambda g: g[0] not in (None, "ticket"))  # ticket first: colour C0 in every figure
    # the ticket gets a bold line, controls thinner dashed ones
    for i, (label, g) in enumerate(groups):
        g = g.dropna(subset=[metric, "sparsity"]).sort_values("sparsity")
        if g.empty:
            continue
        x = 100 * (1 - g["sparsity"]) if remaining else 100 * g["sparsity"]
        ticket = label in (None, "ticket")
        ax.plot(x, g[metric], marker="o", markersize=4, color=f"C{i % 10}", label=label,
                linewidth=2 if ticket else 1.2, linestyle="-" if ticket else "--")
    if remaining:
        from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

        ax.set_xscale("log")
        ax.invert_xaxis()
        # ticks at the measured densities: IMP's geometric schedule spaces them evenly on a log axis
        ticks: list[float] = []
        for v in sorted((v for v in 100 * (1 - table["sparsity"].dropna()) if v > 0), reverse=True):
            if not ticks or v < ticks[-1] / 1.05:  # near-equal densities (controls) would overprint
                ticks.append(v)
        if len(ticks) > 12:
            ticks = ticks[:: math.ceil(len(ticks) / 12)]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(_REMAINING)
    else:
        ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(metric + ("" if lower_is_better is None else " (lower is better)" if lower_is_better
                            else " (higher is better)"))
    ax.set_title(title or f"{metric} vs sparsity")
    if by is not None and len(groups) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def sparsity_curve_interactive(table: Any, metric: str, *, by: str = "variant", error: str | None = None,
                               hover: Sequence[str] = (), title: str | None = None):
    """Plotly version of :func:`sparsity_curve`: hover shows every value, the legend toggles lines.

    x is the percentage of weights remaining on a reversed log axis (Frankle & Carbin 2019, Fig. 1).
    ``error``: a column of error-bar half-widths (e.g. the std over seeds); ``hover``: extra columns
    shown on hover (e.g. ``kid``, ``final_loss``).  Returns a ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    for col in ("sparsity", metric, by, *([error] if error else []), *hover):
        if col not in table.columns:
            raise ValueError(f"table has no column {col!r}; columns: {list(table.columns)}")
    fig = go.Figure()
    groups = sorted(table.groupby(by, sort=False), key=lambda g: g[0] != "ticket")
    for label, g in groups:
        g = g.dropna(subset=[metric, "sparsity"]).sort_values("sparsity")
        ticket = label == "ticket"
        extra = "".join(f"<br>{c}=%{{customdata[{i}]:.4g}}" for i, c in enumerate(hover))
        fig.add_trace(go.Scatter(
            x=100 * (1 - g["sparsity"]), y=g[metric], name=str(label), mode="lines+markers",
            line=dict(width=3 if ticket else 1.5, dash="solid" if ticket else "dash"),
            error_y=dict(type="data", array=g[error].tolist()) if error else None,
            customdata=g[list(hover)].to_numpy() if hover else None,
            hovertemplate=f"{label}<br>%{{x:.3g}}% remaining<br>{metric}=%{{y:.4g}}{extra}<extra></extra>"))
    fig.update_xaxes(type="log", autorange="reversed", title=_REMAINING)
    fig.update_yaxes(title=metric)
    fig.update_layout(title=title or f"{metric} vs sparsity", template="plotly_white", height=420,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def sparsity_heatmap(matrix: Any, *, ax: Any = None, title: str = "sparsity per block", cmap: str = "viridis",
                     vmin: float | None = 0.0, vmax: float | None = 1.0, annotate: bool | None = None,
                     label: str = "sparsity"):
    """Heatmap of a DataFrame: rows (e.g. UNet blocks, input side on top) x columns (e.g. rounds).

    Cells are annotated with their value when the matrix is small (<= 300 cells) or ``annotate``.
    """
    import numpy as np

    values = np.asarray(matrix.values, dtype=float)
    if values.size == 0:
        raise ValueError("sparsity_heatmap got an empty matrix")
    rows, cols = [str(i) for i in matrix.index], [str(c) for c in matrix.columns]
    fig, ax = _axes(ax, (2.8 + 0.75 * len(cols) + 0.06 * max(map(len, rows)), 1.2 + 0.3 * len(rows)))
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=45 if max(map(len, cols)) > 4 else 0,
                  ha="right" if max(map(len, cols)) > 4 else "center")
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    if annotate if annotate is not None else values.size <= 300:
        lo = np.nanmin(values) if vmin is None else vmin
        hi = np.nanmax(values) if vmax is None else vmax
        mid = (lo + hi) / 2
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                if not math.isnan(v):
                    # viridis is dark at the low end: white text there, black on the bright end
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < mid else "black")
    return fig


def _as_image(img: Any):
    """PIL image from a path, a PIL image, an (H,W[,C]) array or a uint8 (N,C,H,W)/(C,H,W) tensor."""
    from PIL import Image

    if isinstance(img, Image.Image):
        return img
    if isinstance(img, (str, os.PathLike)):
        with Image.open(img) as im:
            return im.copy()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(img, torch.Tensor):
        if img.dim() == 4:
            from .sampling import image_grid

            return image_grid(img)
        if img.dim() == 3:
            img = img.permute(1, 2, 0)
        img = img.detach().cpu().numpy()
    import numpy as np

    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0..255), got dtype {arr.dtype}")
    return Image.fromarray(arr)


def image_panels(images: Mapping[str, Any], *, ncols: int | None = None, title: str | None = None,
                 panel_size: float = 3.0):
    """Several images (sample grids) side by side with titles: ``{title: image}``.

    Images may be PIL images, paths to PNGs, uint8 arrays, or uint8 sample tensors (N,C,H,W),
    which are tiled with :func:`lthdiff.sampling.image_grid`.
    """
    import matplotlib.pyplot as plt

    if not images:
        raise ValueError("image_panels needs at least one image")
    n = len(images)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows + 0.4 * bool(title)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, img) in zip(axes.flat, images.items()):
        pil = _as_image(img)
        ax.imshow(pil, cmap="gray" if pil.mode in ("L", "1") else None, interpolation="nearest")
        ax.set_title(str(name), fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def to_png(fig: Any, *, dpi: int = 100) -> bytes:
    """The PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    # no bbox_inches="tight": our figures use constrained layout, and tight bbox doubles render time
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def data_uri(png: bytes | str | os.PathLike | Any) -> str:
    """A ``data:image/png;base64,...`` URI from PNG bytes, a PNG file, or a matplotlib figure."""
    if isinstance(png, (str, os.PathLike)):
        png = Path(png).read_bytes()
    elif not isinstance(png, (bytes, bytearray)):
        png = to_png(png)
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def close(fig: Any) -> None:
    """Release a pyplot figure (reports draw many; pyplot keeps them alive otherwise)."""
    import matplotlib.pyplot as plt

    plt.close(fig)


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

    labels = {"ticket": "winning ticket (rewind)", "random_reinit": "random reinit", "random_mask": "random mask"}
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
    lo = df["remaining"].min() * 100
    ax.xaxis.set_major_locator(FixedLocator([t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1) if t >= lo * 0.9]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax

def quality_vs_sparsity(table: Any, *, metric: str = "fid", ax: Any = None, matching: float | None = None,
                        title: str | None = None):
    """Mean metric (FID) vs sparsity (%) with +-1 std error bars over seeds, one line per variant,
    and the dense model as a band (mean +- 1 std): the matching-sparsity bound of ``lthdiff.bench quality``.

    ``table``: rows of ``lthdiff.bench.quality.aggregate`` (a DataFrame or list of dicts with
    ``sparsity``, ``variant``, ``<metric>_mean``, ``<metric>_std``; the dense row has variant "dense").
    ``matching``: the matching sparsity (fraction), drawn as a vertical line.
    """
    import pandas as pd

    df = pd.DataFrame(table)
    mean, std = f"{metric}_mean", f"{metric}_std"
    for col in ("sparsity", "variant", mean, std):
        if col not in df.columns:
            raise ValueError(f"table has no column {col!r}; columns: {list(df.columns)}")
    fig, ax = _axes(ax, (5.5, 3.6))
    dense = df[df["variant"] == "dense"]
    if not dense.empty:
        m, s = float(dense[mean].iloc[0]), float(dense[std].iloc[0])
        ax.axhspan(m - s, m + s, color="gray", alpha=0.2, label="dense ± 1 std")
        ax.axhline(m, color="gray", lw=1)
    variants = [v for v in dict.fromkeys(df["variant"]) if v != "dense"]
    variants.sort(key=lambda v: v != "ticket")  # ticket first: colour C0
    for i, v in enumerate(variants):
        g = pd.concat([dense, df[df["variant"] == v]]).sort_values("sparsity")  # every line starts at dense
        ax.errorbar(100 * g["sparsity"], g[mean], yerr=g[std], marker="o", ms=4, capsize=3, color=f"C{i % 10}",
                    lw=2 if v == "ticket" else 1.2, ls="-" if v == "ticket" else "--", label=v)
    if matching is not None:
        ax.axvline(100 * matching, color="C0", ls=":", lw=1, label=f"matching sparsity {matching:.1%}")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(f"{metric.upper()} (lower is better)")
    ax.set_title(title or f"{metric.upper()} vs sparsity (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def classic_accuracy(results: str | os.PathLike | Mapping[str, Any], *, ax: Any = None, title: str | None = None):
    """Test accuracy vs weights remaining from a recorded ``python -m lthdiff.bench classic`` result
    (its JSON file or the loaded dict): ticket and controls, mean +- std over seeds, as Frankle &
    Carbin 2019, Fig. 1/3 (:func:`lthdiff.classify.plot_accuracy`)."""
    import json

    import pandas as pd


    payload = json.loads(Path(results).read_text()) if isinstance(results, (str, os.PathLike)) else results
    cfg = payload["config"]
    fig, ax = _axes(ax, (6.5, 4.2))
    plot_accuracy(pd.DataFrame(payload["rows"]), ax=ax,
                  title=title or f"{cfg['preset']} on {cfg['dataset']}: IMP, rewind to init ({cfg['seeds']} seeds)")
    return fig


def structured_tickets(results: str | os.PathLike | Mapping[str, Any], *, metric: str = "fid", ax: Any = None,
                       title: str | None = None):
    """FID (or KID, ``metric="kid"``) per arm and MAC level from a recorded ``python -m lthdiff.bench
    structured-tickets`` result (its JSON file or the loaded dict): bars = mean over seeds, error bars
    = sample std, the dense model as a grey band (mean +- 1 std).  Arms: ticket (theta_0 at the kept
    channels, Frankle & Carbin 2019), scratch (Liu et al. 2019), finetune (Diff-Pruning, Fang et al. 2023).
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
    ax.set_xticks(range(len(levels)), [f"{lv:.0%} fewer MACs" for lv in levels])
    ax.set_ylabel(f"{metric.upper()} (lower is better)")
    ax.set_title(title or f"Structured tickets: {metric.upper()} per arm (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig
