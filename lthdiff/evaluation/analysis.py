"""Ticket analysis across IMP runs: where do tickets from different runs agree, and how sparse is each block?

Jiang et al. 2023 ("Successfully Applying Lottery Ticket Hypothesis to Diffusion Model", arXiv
2310.18823, Sec. 3, Fig. 1) compare two winning tickets of one U-Net layer by layer and find the
upstream (input-side) modules more alike than the downstream ones; that motivates pruning
upstream modules less (:mod:`lthdiff.pruners.allocation`, rule ``jiang2023``).  This module
measures that for IMP run directories of the same model (different seeds = data orders):

* :func:`similarity_table` - mask overlap (Jaccard / Hamming, :func:`lthdiff.masks.similarity`)
  per layer or block, per round, for every pair of runs, next to the overlap two independent
  random masks of the same densities would have (:func:`chance_jaccard`);
* :func:`cka_table` - the paper's own measure: CKA (Kornblith et al. 2019) between the sparsified
  weights of the same layer in two tickets;
* :func:`sparsity_table` - the sparsity each block ends up with (:func:`lthdiff.masks.report`);
* :func:`heatmap` - any of these as a unit x round heatmap (matplotlib or plotly).
"""
from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from lthdiff import masks as M
from lthdiff.lottery.runs import IMPResult
from lthdiff.runtime import positive_int
from lthdiff.training.tasks import check_pair

__all__ = ["supermask_losses", "evaluate_accuracy", "imp_accuracy", "allocation_block_sparsity", "with_dense_rows", "load_runs", "chance_jaccard", "mask_similarity", "similarity_table", "sparsity_table", "cka",
           "weight_cka", "cka_table", "pivot", "heatmap"]

Mask = Mapping[str, torch.Tensor]


def load_runs(runs: Sequence[Any]) -> list[IMPResult]:
    """Load IMP run directories (or pass :class:`IMPResult` objects through); all must share one model."""
    out = [r if isinstance(r, IMPResult) else IMPResult.load(r) for r in runs]
    if not out:
        raise ValueError("no runs given; pass one or more IMP run directories")
    ref = out[0].config.get("model_config")
    for r in out[1:]:
        if r.config.get("model_config") != ref:
            raise ValueError(f"{r.run_dir} holds a different model than {out[0].run_dir}; tickets of different "
                             "architectures cannot be compared layer by layer")
    return out


@torch.no_grad()
def supermask_losses(theta0: nn.Module, mask: Mask, dataset: Dataset, *, fresh_seed: int = 1, n: int = 256,
                     seed: int = 0) -> dict[str, float]:
    """Loss at start (:func:`lthdiff.training.loop.loss_at_start`, one fixed batch) of theta_0, theta_0 * m, a fresh init * m,
    and of predicting zero noise (loss = E[eps^2], about 1): how much a mask knows before training.

    Zhou et al. 2019 ("Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask", Sec. 5) find
    masks found from trained magnitudes that perform well with no training at all; here the
    comparison is theta_0 * m against theta_0 and against the same mask on a fresh initialisation
    (``fresh_seed``, the random-reinit control's start).
    """
    from lthdiff.lottery.controls import reinit
    from lthdiff.training.loop import loss_at_start

    zero = copy.deepcopy(theta0)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    return {"theta0": loss_at_start(theta0, dataset, n=n, seed=seed),
            "theta0_masked": loss_at_start(theta0, dataset, mask, n=n, seed=seed),
            "fresh_masked": loss_at_start(reinit(theta0, fresh_seed), dataset, mask, n=n, seed=seed),
            "zero": loss_at_start(zero, dataset, n=n, seed=seed)}


def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` ((image, label) pairs), a float in [0, 1].

    Runs in eval mode (BatchNorm running statistics) on ``device`` (default: the model's) and
    restores the model's mode afterwards.
    """
    batch_size = positive_int(batch_size, "batch_size")
    check_pair(model, dataset, "the evaluation dataset")
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    moved = param is not None and param.device != device
    if moved:
        model = model.to(device)  # nn.Module.to is in place; undone below
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            pred = model(images.to(device)).argmax(1)
            correct += int((pred.cpu() == torch.as_tensor(labels)).sum())
    finally:
        model.train(was_training)
        if moved:
            model.to(param.device if param is not None else "cpu")
    return correct / len(dataset)  # type: ignore[arg-type]


def imp_accuracy(result: Any, test_set: Dataset, *, ema: bool = False, batch_size: int = 512,
                 device: str | torch.device | None = None, progress: bool = False):
    """Test accuracy of every network of an IMP run, as a pandas DataFrame.

    ``result`` is an :class:`lthdiff.lottery.runs.IMPResult` or its run directory.  One row per (round,
    variant): ``variant`` is ``"ticket"`` or a control name; ``sparsity`` is the fraction of
    prunable weights removed and ``remaining`` = 1 - sparsity (the x-axis of Frankle & Carbin
    2019, Fig. 1/3).  Models are the raw trained weights (``ema=False``), which is what classifiers
    are trained and judged on.  ``device`` defaults to CUDA when available.
    """
    import pandas as pd
    from lthdiff.runtime import progress_bar

    if isinstance(result, (str, Path)):
        result = IMPResult.load(result)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    infos = [(r.round, info) for r in result.rounds for info in [r, *r.controls.values()]]
    rows = []
    for rnd, info in progress_bar(infos, desc="evaluate", disable=not progress, leave=False):
        acc = evaluate_accuracy(info.load_model(ema=ema), test_set, batch_size=batch_size, device=device)
        rows.append({"round": rnd, "variant": info.variant, "sparsity": info.sparsity,
                     "remaining": 1 - info.sparsity, "accuracy": acc})
    return pd.DataFrame(rows, columns=["round", "variant", "sparsity", "remaining", "accuracy"])


def allocation_block_sparsity(rules: Sequence[str], model: torch.nn.Module, target: float):
    """Sparsity each block gets from each allocation rule at overall ``target`` (one shot, no training).

    DataFrame: one row per block (input side first), one column per rule; a block's value is its
    pruned weights over its prunable weights.
    """
    import pandas as pd

    from lthdiff.pruners.allocation import allocate, unit_order

    names = M.prunable(model)
    numel = {n: p.numel() for n, p in model.named_parameters() if n in names}
    blocks = pd.Series({n: M.block_of(n) for n in names})
    cols = {}
    for rule in rules:
        alloc = allocate(rule, model, target)
        pruned = pd.Series({n: alloc[n] * numel[n] for n in names})
        cols[rule] = pruned.groupby(blocks, sort=False).sum() / pd.Series(numel).groupby(blocks, sort=False).sum()
    out = pd.DataFrame(cols)
    return out.loc[[M.block_of(g[0]) for g in unit_order(model, names, "block")]]


def with_dense_rows(table):
    """``table`` (one row per round and variant) with round 0's row repeated for every variant.

    Every control starts from the same dense network, so each variant's curve should start there too.
    """
    import pandas as pd

    dense = table[table["round"] == 0].assign(variant="ticket")
    return pd.concat([dense.assign(variant=v) for v in table["variant"].unique()] + [table[table["round"] > 0]])


# chance_jaccard and mask_similarity live in masks, next to masks.similarity.
chance_jaccard = M.chance_jaccard
mask_similarity = M.mask_similarity


def _rounds(results: Sequence[IMPResult], variant: str) -> dict[int, list[Any]]:
    """Round -> one RoundInfo per run, for the rounds every run completed (``variant``: ticket or a control)."""
    per_run = []
    for res in results:
        infos = {}
        for r in res.rounds:
            info = r if variant == "ticket" else r.controls.get(variant)
            if info is not None:
                infos[r.round] = info
        per_run.append(infos)
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    return {k: [p[k] for p in per_run] for k in common}


def _ordered_units(results: Sequence[IMPResult], names: Sequence[str], by: str) -> list[str]:
    """Units (layers or blocks) input side first, from one forward pass of the run's round-0 model."""
    from lthdiff.pruners.allocation import unit_order

    try:
        model = results[0].rounds[0].load_model(ema=False)
        groups = unit_order(model, names, "layer" if by == "layer" else "block")
    except Exception:  # noqa: BLE001 - a run without a loadable model keeps mask order
        groups = [[n] for n in names] if by == "layer" else None
    if groups is None:
        return list(dict.fromkeys(M.block_of(n) for n in names))
    return [g[0] if by == "layer" else M.block_of(g[0]) for g in groups]


def _label(res: IMPResult) -> str:
    return f"{Path(res.run_dir).name} (seed {res.config.get('seed')})"


def similarity_table(runs: Sequence[Any], by: str = "block", variant: str = "ticket"):
    """Mask overlap per ``by`` unit (``"layer"`` or ``"block"``), per round, per pair of runs.

    Long DataFrame: ``round``, ``sparsity`` (mean over the pair), ``unit``, ``run_a``, ``run_b``,
    ``jaccard``, ``hamming``, ``chance_jaccard``, ``ratio`` (jaccard / chance: 1 = no more alike
    than random masks).  Units are ordered input side first.  ``variant`` compares a control
    (e.g. ``"random_mask"``) instead of the tickets.
    """
    import pandas as pd

    _check_by(by)
    results = load_runs(runs)
    if len(results) < 2:
        raise ValueError(f"similarity_table needs at least two runs, got {len(results)}")
    rounds = _rounds(results, variant)
    rows = []
    order = None
    for rnd, infos in rounds.items():
        masks = [info.load_mask() for info in infos]
        if order is None:
            order = _ordered_units(results, list(masks[0]), by)
        for (ia, a), (ib, b) in itertools.combinations(enumerate(masks), 2):
            df = M.similarity(a, b, by=by).set_index(by)
            for unit in order:
                row = df.loc[unit]
                t = row["total"]
                chance = chance_jaccard(row["kept_a"] / t, row["kept_b"] / t) if t else 1.0
                rows.append({"round": rnd, "sparsity": (infos[ia].sparsity + infos[ib].sparsity) / 2, "unit": unit,
                             "run_a": _label(results[ia]), "run_b": _label(results[ib]),
                             "jaccard": float(row["jaccard"]), "hamming": float(row["hamming"]),
                             "chance_jaccard": chance, "ratio": float(row["jaccard"]) / chance if chance else math.nan})
    return pd.DataFrame(rows)


def sparsity_table(runs: Sequence[Any], by: str = "block", variant: str = "ticket"):
    """Sparsity of every ``by`` unit per round and run (:func:`lthdiff.masks.report`).

    Long DataFrame: ``run``, ``round``, ``overall`` (the round's overall sparsity), ``unit``,
    ``total``, ``pruned``, ``sparsity``.  Units are ordered input side first.
    """
    import pandas as pd

    _check_by(by)
    results = load_runs(runs)
    rows = []
    order = None
    for rnd, infos in _rounds(results, variant).items():
        for res, info in zip(results, infos):
            mask = info.load_mask()
            if order is None:
                order = _ordered_units(results, list(mask), by)
            rep = M.report(mask, by=by).set_index(by)
            for unit in order:
                r = rep.loc[unit]
                rows.append({"run": _label(res), "round": rnd, "overall": info.sparsity, "unit": unit,
                             "total": int(r["total"]), "pruned": int(r["pruned"]), "sparsity": float(r["sparsity"])})
    return pd.DataFrame(rows)


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "rbf", sigma: float = 0.8) -> float:
    """Centered kernel alignment of two sets of ``n`` examples (rows), in [0, 1].

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with ``HSIC(K, L) = tr(K H L H) / (n - 1)^2``
    (Gretton et al. 2005; Kornblith et al. 2019, Eq. 3-4).  ``kernel="rbf"`` (Jiang et al. 2023,
    Sec. 3) uses ``exp(-|a - b|^2 / (2 s^2))`` with ``s = sigma`` x the median pairwise distance
    (Kornblith et al. 2019, Sec. 3); ``"linear"`` uses ``K = X X^T``.  NaN when a kernel is constant.
    """
    if kernel not in ("rbf", "linear"):
        raise ValueError(f"unknown kernel {kernel!r}; accepted: 'rbf', 'linear'")
    x = x.detach().double().reshape(x.shape[0], -1).cpu()
    y = y.detach().double().reshape(y.shape[0], -1).cpu()
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"cka needs the same number (>= 2) of rows in both inputs, got {x.shape[0]} and {y.shape[0]}")

    def gram(z: torch.Tensor) -> torch.Tensor:
        if kernel == "linear":
            return z @ z.T
        d2 = torch.cdist(z, z).pow(2)
        off = d2[~torch.eye(len(z), dtype=torch.bool)]
        med = off.sqrt().median()
        if med == 0:
            return torch.ones_like(d2)  # all rows identical: constant kernel, no information
        return torch.exp(-d2 / (2 * (sigma * med) ** 2))

    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = h @ gram(x) @ h, h @ gram(y) @ h
    kl, kk, ll = (k * l).sum(), (k * k).sum(), (l * l).sum()  # tr(KHLH) = <HKH, HLH>; (n-1)^2 cancels
    if kk <= 1e-300 or ll <= 1e-300:
        return math.nan
    return float((kl / (kk.sqrt() * ll.sqrt())).clamp(0.0, 1.0))


def weight_cka(model_a: torch.nn.Module, model_b: torch.nn.Module, names: Sequence[str] | None = None,
               kernel: str = "rbf", sigma: float = 0.8) -> dict[str, float]:
    """CKA between the sparsified weights of the same layers in two tickets (Jiang et al. 2023, Sec. 3).

    Each output unit is one example: a weight ``(out, in, kh, kw)`` becomes ``out`` rows of
    ``in*kh*kw`` values.  ``names`` defaults to :func:`lthdiff.masks.prunable` of ``model_a``.
    """
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    names = list(names) if names is not None else M.prunable(model_a)
    return {n: cka(pa[n], pb[n], kernel=kernel, sigma=sigma) for n in names if pa[n].shape[0] >= 2}


def cka_table(runs: Sequence[Any], by: str = "layer", kernel: str = "rbf", sigma: float = 0.8, ema: bool = False):
    """:func:`weight_cka` per round and pair of runs; ``by="block"`` averages the layers of a block.

    Long DataFrame: ``round``, ``sparsity``, ``unit``, ``run_a``, ``run_b``, ``cka``.  Loads the
    trained (``ema=False``: raw) weights saved in each round.
    """
    import pandas as pd

    _check_by(by)
    results = load_runs(runs)
    if len(results) < 2:
        raise ValueError(f"cka_table needs at least two runs, got {len(results)}")
    rows = []
    order = None
    for rnd, infos in _rounds(results, "ticket").items():
        models = [info.load_model(ema=ema) for info in infos]
        names = list(infos[0].load_mask())
        if order is None:
            order = _ordered_units(results, names, "layer")
        for (ia, a), (ib, b) in itertools.combinations(enumerate(models), 2):
            values = weight_cka(a, b, order, kernel=kernel, sigma=sigma)
            for n in order:
                if n in values:
                    rows.append({"round": rnd, "sparsity": (infos[ia].sparsity + infos[ib].sparsity) / 2,
                                 "unit": n if by == "layer" else M.block_of(n), "run_a": _label(results[ia]),
                                 "run_b": _label(results[ib]), "cka": values[n]})
    df = pd.DataFrame(rows)
    if by == "block" and not df.empty:
        df = df.groupby(["round", "unit", "run_a", "run_b"], sort=False, as_index=False).agg(
            sparsity=("sparsity", "first"), cka=("cka", "mean"))
    return df


def pivot(table, value: str):
    """Unit x round matrix of ``value`` (mean over run pairs / runs), units and rounds in table order."""
    if value not in table.columns:
        raise ValueError(f"unknown value {value!r}; accepted: {[c for c in table.columns if c not in ('unit', 'round')]}")
    units = list(dict.fromkeys(table["unit"]))
    rounds = sorted(set(table["round"]))
    mat = table.groupby(["unit", "round"], sort=False)[value].mean().unstack("round")
    return mat.reindex(index=units, columns=rounds)


def heatmap(table, value: str = "jaccard", *, backend: str = "matplotlib", title: str | None = None,
            ax: Any = None, annotate: bool | None = None, cmap: str = "viridis", vmin: float | None = None,
            vmax: float | None = None):
    """Heatmap of ``value`` by unit (rows, input side on top) and round (columns).

    ``table`` is one of :func:`similarity_table`, :func:`sparsity_table`, :func:`cka_table`.
    Column labels show the round and its overall sparsity.  ``backend="matplotlib"`` returns a
    Figure (drawn into ``ax`` if given); ``"plotly"`` returns a ``plotly.graph_objects.Figure``.
    """
    if backend not in ("matplotlib", "plotly"):
        raise ValueError(f"unknown backend {backend!r}; accepted: 'matplotlib', 'plotly'")
    mat = pivot(table, value)
    sp_col = "overall" if "overall" in table.columns else "sparsity" if "sparsity" in table.columns else None
    if sp_col is not None and sp_col != value:
        sp = table.groupby("round")[sp_col].mean()
        cols = [f"r{r} ({sp[r]:.0%})" for r in mat.columns]
    else:
        cols = [f"r{r}" for r in mat.columns]
    title = title or value
    if backend == "plotly":
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=mat.values, x=cols, y=list(mat.index), colorscale=cmap.capitalize()
                                   if cmap == "viridis" else cmap, zmin=vmin, zmax=vmax,
                                   colorbar={"title": value}, hovertemplate="%{y}<br>%{x}<br>" + value + "=%{z:.3f}"))
        fig.update_layout(title=title, yaxis={"autorange": "reversed"}, height=max(300, 22 * len(mat) + 120))
        return fig
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(cols), 1.0 + 0.32 * len(mat)), layout="constrained")
    else:
        fig = ax.figure
    im = ax.imshow(mat.values.astype(float), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(mat)), list(mat.index))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=value)
    if annotate if annotate is not None else mat.size <= 200:
        for (i, j), v in _cells(mat.values):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < (mat.values[~_isnan(mat.values)].mean()) else "black")
    return fig


def _cells(values):
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            yield (i, j), float(values[i, j])


def _isnan(values):
    import numpy as np

    return np.isnan(values.astype(float))


def _check_by(by: str) -> None:
    M.check_by(by, ("layer", "block"))
