"""Figures shared by notebooks and reports: loss curves, sparsity-vs-metric curves, per-block
sparsity heatmaps and sample-grid panels (matplotlib), plus PNG/base64 export.

Every function draws into ``ax`` when given, else into a new pyplot figure (so ``%matplotlib
inline`` shows it), and returns the ``matplotlib.figure.Figure``.
"""
from __future__ import annotations

import base64
import math
import os
from typing import Any, Mapping, Sequence

# Figure helpers and the figures of recorded benchmark results live in their own modules; plots is
# the one namespace notebooks and reports import.
from .figure_base import axes as _axes
from .figure_base import close, data_uri, readable_log_axis as _readable_log_axis, to_png
from .plots_results import (JIANG_PARAMS, VARIANT_LABELS, classic_accuracy, mask_distance_curve, matching_vs_width,
                            plot_accuracy, quality_vs_sparsity, structured_study, structured_tickets)

__all__ = ["loss_curve", "loss_panels", "sparsity_curve", "sparsity_curve_interactive", "with_static", "WithStatic",
           "sparsity_heatmap", "image_panels", "to_png", "data_uri", "close", "plot_accuracy", "quality_vs_sparsity",
           "VARIANT_LABELS", "classic_accuracy", "mask_distance_curve", "structured_tickets", "matching_vs_width",
           "JIANG_PARAMS", "structured_study"]

# Frankle & Carbin plot tickets against the percentage of weights remaining on a log axis
_REMAINING = "weights remaining (%)"


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


def loss_panels(panels: Mapping[str, Mapping[str, Sequence[float]]], *, reference: tuple[str, Sequence[float]] | None = None,
                ncols: int = 3, smooth: int | None = None, title: str = "training loss", logy: bool = True):
    """Small multiples of :func:`loss_curve`: one panel per ``{panel title: {label: losses}}`` on shared
    axes, a label keeping its colour in every panel, one legend below the panels.

    ``reference``: ``(label, losses)`` drawn grey in every panel, e.g. the dense run beside each
    sparsity's ticket and controls, so ten curves never share one axis.
    """
    import matplotlib.pyplot as plt

    if not panels or not all(panels.values()):
        raise ValueError("loss_panels needs at least one panel, each with at least one loss sequence")
    ncols = min(len(panels), max(1, int(ncols)))
    nrows = math.ceil(len(panels) / ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows + 0.8), sharex=True, sharey=True,
                            squeeze=False, layout="constrained")
    labels = list(dict.fromkeys(k for p in panels.values() for k in p))
    colors = {k: f"C{i % 10}" for i, k in enumerate(labels)}
    flat: list[float] = []
    for ax in axs.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, series) in zip(axs.flat, panels.items()):
        curves = ([(reference[0], reference[1], "0.55")] if reference else []) + \
            [(k, v, colors[k]) for k, v in series.items()]
        for label, values, color in curves:
            values = [float(x) for x in values]
            if not values:
                continue
            window = smooth if smooth is not None else max(1, len(values) // 50)
            ax.plot(range(1, len(values) + 1), _smooth(values, window), color=color, label=label, linewidth=1.3)
            flat += values
        ax.set_title(str(name), fontsize=10)
        ax.grid(alpha=0.3)
    if logy and flat and min(flat) > 0:
        axs[0, 0].set_yscale("log")
        _readable_log_axis(axs[0, 0].yaxis, min(flat), max(flat))
    for ax in axs[-1]:
        ax.set_xlabel("step")
    for ax in axs[:, 0]:
        ax.set_ylabel("loss (moving average)")
    handles = {h.get_label(): h for ax in axs.flat for h in ax.get_lines()}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 5),
               fontsize=9, frameon=False)
    fig.suptitle(title)
    return fig


# how the figures name the columns of run and study tables
METRIC_LABELS = {"final_loss": "final training loss", "fid": "FID", "kid": "KID", "ssim": "SSIM", "psnr": "PSNR (dB)",
                 "perceptual": "perceptual distance", "accuracy": "test accuracy", "loss_at_init": "loss before training"}


def sparsity_curve(table: Any, metric: str, *, by: str | None = "variant", ax: Any = None,
                   title: str | None = None, remaining: bool = True, lower_is_better: bool | None = None):
    """``metric`` against sparsity, one line per ``by`` group (ticket and controls).

    ``table``: a DataFrame with a ``sparsity`` column (fraction pruned) and ``metric`` column, e.g.
    :meth:`lthdiff.lottery.runs.IMPResult.table` or :meth:`lthdiff.tracking.registry.Registry.metrics`.
    ``remaining=True`` plots the percentage of weights remaining on a reversed log axis, as
    Frankle & Carbin 2019 (Fig. 1, 3) do; False plots sparsity (%) linearly.
    """
    for col in ("sparsity", metric, *([by] if by else [])):
        if col not in table.columns:
            raise ValueError(f"table has no column {col!r}; columns: {list(table.columns)}")
    fig, ax = _axes(ax, (5.5, 3.6))
    name = METRIC_LABELS.get(metric, metric)
    dense = table[table["sparsity"] == 0].dropna(subset=[metric])
    if not dense.empty:  # the dense network is its own reference, not the first point of the ticket's line
        ax.axhline(float(dense[metric].mean()), color="gray", ls=":", lw=1.2, label="dense", zorder=1)
        table = table[table["sparsity"] > 0]
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
    ax.set_ylabel(name + ("" if lower_is_better is None else " (lower is better)" if lower_is_better
                          else " (higher is better)"))
    ax.set_title(title or f"{name} vs {'weights remaining' if remaining else 'sparsity'}")
    if (by is not None and len(groups) > 1) or not dense.empty:
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


class WithStatic:
    """A plotly figure that carries a static PNG twin, so it shows where JavaScript does not run.

    Notebooks display it: JupyterLab / VS Code render the interactive plotly figure (its mime type),
    Colab the plotly HTML; GitHub's viewer and ``nbconvert --to html`` fall back to the PNG of the
    matplotlib twin.  Saved notebooks never embed plotly.js (3.5 MB), only the figure's JSON.
    """

    def __init__(self, figure: Any, static: Any) -> None:
        static = getattr(static, "figure", static)  # an Axes -> its Figure
        self.figure = figure
        self.png = to_png(static)
        close(static)  # shown through this object, not a second time by the inline backend

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        import json
        import sys

        title = self.figure.layout.title.text or "figure"
        bundle: dict[str, Any] = {"image/png": base64.b64encode(self.png).decode("ascii"),
                                  "text/plain": f"<interactive figure: {title}>"}
        if "google.colab" in sys.modules:  # Colab renders HTML outputs, not the plotly mime type
            bundle["text/html"] = self.figure.to_html(include_plotlyjs="cdn", full_html=False)
        else:
            bundle["application/vnd.plotly.v1+json"] = json.loads(self.figure.to_json())
        return bundle


def with_static(figure: Any, static: Any) -> WithStatic:
    """``figure`` (plotly) to display together with ``static`` (a matplotlib twin), see :class:`WithStatic`."""
    return WithStatic(figure, static)


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
            from lthdiff.evaluation.sampling import image_grid

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
    which are tiled with :func:`lthdiff.evaluation.sampling.image_grid`.
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
