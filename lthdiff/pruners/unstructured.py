"""Unstructured pruners: magnitude pruning (the lottery-ticket pruner) and its random-mask control.

Each pruner maps ``(model, target sparsity, current mask)`` to the next mask and knows nothing
about training, as open_lth's pruning strategies.  ``sparsity`` is always the TOTAL fraction of
eligible weights pruned after the call (IMP at 20 % per round asks for 0.2, 0.36, 0.488, ...);
already-pruned weights count toward it and stay pruned, so successive masks are nested.

Counting is exact: ``round(sparsity * N)`` weights are pruned, over all eligible weights
(``scope="global"``, the ranking of Frankle & Carbin 2019 for deep nets) or within each layer
(``scope="layer"``).  Ties are broken by flat index in model order, so results never depend on
sort internals.  Selection uses ``torch.kthvalue`` on one concatenated score vector (O(N)).
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from lthdiff import masks as M

__all__ = ["magnitude", "random", "random_like"]

_SCOPES = ("global", "layer")


def _check_fraction(value: Any, what: str, closed: bool = False) -> float:
    top_ok = closed and value == 1
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) \
            or not (0 <= float(value) < 1 or top_ok):
        raise ValueError(f"{what} must be a fraction of weights pruned in [0, 1{']' if closed else ')'}, "
                         f"got {value!r}")
    return float(value)


def _check_scope(scope: str) -> None:
    if scope not in _SCOPES:
        raise ValueError(f"unknown scope {scope!r}; accepted: {list(_SCOPES)}")


def _eligible(model: nn.Module, mask: Mapping[str, torch.Tensor] | None, include: Any, exclude: Any) -> list[str]:
    """Names to prune in model order: the mask's keys if a mask is given, else :func:`masks.prunable`."""
    if mask is None:
        names = M.prunable(model, include, exclude)
    else:
        M.validate(model, mask)
        if include is not None or exclude is not None:
            wanted = set(M.prunable(model, include, exclude))
            if wanted != set(mask):
                raise ValueError(f"include/exclude select {len(wanted)} parameters but the given mask covers "
                                 f"{len(mask)} different ones; with a mask, the eligible set is the mask's keys "
                                 "(leave include/exclude unset)")
        names = [n for n, _ in model.named_parameters() if n in mask]
    if not names:
        raise ValueError(f"{type(model).__name__} has no parameters eligible for pruning "
                         f"(include={include!r}, exclude={exclude!r}); accepted: a model with at least one "
                         "conv/linear weight or an include pattern that matches parameters")
    return names


def _layer_targets(layer_sparsity: Any, names: Sequence[str]) -> dict[str, float]:
    """Normalise ``layer_sparsity`` (mapping, Series, or a :func:`masks.report` DataFrame)."""
    if layer_sparsity is None:
        return {}
    if hasattr(layer_sparsity, "columns"):  # masks.report(ticket, by="layer")
        if not {"layer", "sparsity"} <= set(layer_sparsity.columns):
            raise ValueError("a layer_sparsity DataFrame needs 'layer' and 'sparsity' columns "
                             "(as returned by lthdiff.masks.report(mask, by='layer'))")
        layer_sparsity = dict(zip(layer_sparsity["layer"], layer_sparsity["sparsity"]))
    targets = dict(layer_sparsity)
    unknown = [n for n in targets if n not in set(names)]
    if unknown:
        raise ValueError(f"layer_sparsity names {unknown[:5]} that are not eligible for pruning; "
                         f"accepted: names from {list(names)[:3]}... ({len(names)} eligible)")
    # 1.0 is allowed per layer: a global ticket can prune a whole layer (layer collapse)
    return {n: _check_fraction(v, f"layer_sparsity[{n!r}]", closed=True) for n, v in targets.items()}


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool vector marking the ``k`` smallest ``scores``, ties broken by lower index."""
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    thr = torch.kthvalue(scores, k).values
    chosen = scores < thr
    need = k - int(chosen.sum())
    # among the weights equal to the threshold take the first `need` in flat order
    chosen[torch.nonzero(scores == thr).flatten()[:need]] = True
    return chosen


def _prune(names: Sequence[str], shapes: Sequence[torch.Size], scores: list[torch.Tensor],
           prior: Mapping[str, torch.Tensor] | None, sparsity: float, scope: str,
           layer_sparsity: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Shared counting rules of both pruners: ``scores`` (flat, one per layer) low = pruned first."""
    sizes = [math.prod(s) for s in shapes]
    pruned0 = []
    for i, n in enumerate(names):
        if prior is not None:
            gone = ~prior[n].reshape(-1).to(scores[i].device)
            scores[i] = scores[i].masked_fill(gone, float("-inf"))  # already pruned: selected first
            pruned0.append(int(gone.sum()))
        else:
            pruned0.append(0)
        if torch.isnan(scores[i]).any():
            raise ValueError(f"parameter {n!r} has NaN weights among its surviving entries; cannot rank them")

    def too_many(where: str, have: int, total: int, want: float, k: int) -> ValueError:
        return ValueError(f"the mask already prunes {have} of {total} weights in {where} "
                          f"(sparsity {have / total:.6f}), more than the requested sparsity {want!r} "
                          f"({k} weights); sparsity is the TOTAL fraction pruned, accepted: values >= "
                          "the current sparsity and < 1")

    result: dict[int, torch.Tensor] = {}
    fixed = [i for i, n in enumerate(names) if scope == "layer" or n in layer_sparsity]
    for i in fixed:
        s = layer_sparsity.get(names[i], sparsity)
        k = round(s * sizes[i])
        if pruned0[i] > k:
            raise too_many(f"layer {names[i]!r}", pruned0[i], sizes[i], s, k)
        result[i] = _smallest(scores[i], k)
    rest = [i for i in range(len(names)) if i not in result]
    if rest:
        total = sum(sizes)
        k_rest = round(sparsity * total) - sum(round(layer_sparsity[names[i]] * sizes[i]) for i in fixed)
        n_rest, p_rest = sum(sizes[i] for i in rest), sum(pruned0[i] for i in rest)
        if p_rest > k_rest:
            where = "the eligible weights" if not fixed else "the layers not in layer_sparsity"
            raise too_many(where, p_rest, n_rest, sparsity, max(k_rest, 0))
        if k_rest > n_rest:
            raise ValueError(f"sparsity {sparsity!r} needs {k_rest} more pruned weights in the layers not in "
                             f"layer_sparsity, which hold only {n_rest}; lower layer_sparsity's values or "
                             "raise sparsity")
        device = scores[rest[0]].device
        chosen = _smallest(torch.cat([scores[i].to(device) for i in rest]), k_rest)
        for i, part in zip(rest, torch.split(chosen, [sizes[i] for i in rest])):
            result[i] = part
    return {n: ~result[i].reshape(shapes[i]).cpu() for i, n in enumerate(names)}


def _nm_keep(scores: torch.Tensor, alive: torch.Tensor, shape: torch.Size, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-score alive entries of every group of ``m`` input weights (ties: lower index)."""
    g = M.nm_groups(scores.reshape(shape), m)
    a = M.nm_groups(alive.reshape(shape), m)
    g = g.masked_fill(~a, float("-inf"))
    # a stable descending sort keeps equal scores in index order, so ties keep the lower index
    order = torch.sort(g, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros_like(a).scatter_(1, order, True) & a
    return M.nm_ungroup(keep, shape).reshape(-1)


def _magnitude_nm(names: Sequence[str], shapes: Sequence[torch.Size], scores: list[torch.Tensor],
                  prior: Mapping[str, torch.Tensor] | None, sparsity: float, pattern: str) -> dict[str, torch.Tensor]:
    n, m = M.parse_nm(pattern)
    fit = [i for i, s in enumerate(shapes) if M.nm_eligible(s, m)]
    skipped = [names[i] for i in range(len(names)) if i not in set(fit)]
    if not fit:
        raise ValueError(f"no eligible parameter can carry the {pattern} pattern (each needs shape[1], the input "
                         f"features/channels, a multiple of {m}); got shapes {[tuple(s) for s in shapes][:5]}")
    if skipped:
        warnings.warn(f"{len(skipped)} layer(s) cannot carry the {pattern} pattern (input dimension not a multiple "
                      f"of {m}) and keep their current mask: {skipped}", UserWarning, stacklevel=4)
    for i in fit:
        if torch.isnan(scores[i]).any():
            raise ValueError(f"parameter {names[i]!r} has NaN weights; cannot rank them")
    alive = [prior[names[i]].reshape(-1).to(scores[i].device) if prior is not None
             else torch.ones_like(scores[i], dtype=torch.bool) for i in fit]
    patterned = {names[i]: _nm_keep(scores[i], a, shapes[i], n, m).reshape(shapes[i])
                 for i, a in zip(fit, alive)}
    total = sum(math.prod(shapes[i]) for i in fit)
    pruned = sum(int((~k).sum()) for k in patterned.values())
    k = round(sparsity * total)
    if k < pruned:
        raise ValueError(f"sparsity {sparsity!r} ({k} of {total} pattern-eligible weights) is below what the "
                         f"{pattern} pattern{' and the current mask' if prior is not None else ''} already prune "
                         f"({pruned}, sparsity {pruned / total:.6f}); accepted: sparsity >= {pruned / total:.6f} "
                         f"(at least 1 - {n}/{m} = {1 - n / m:g})")
    fit_names = [names[i] for i in fit]
    out = _prune(fit_names, [shapes[i] for i in fit], [scores[i] for i in fit], patterned, sparsity, "global", {})
    keep = {name: (prior[name].clone() if prior is not None else torch.ones(shape, dtype=torch.bool))
            for name, shape in zip(names, shapes)}
    keep.update(out)
    return keep


@torch.no_grad()
def magnitude(model: nn.Module, sparsity: float, *, scope: str = "global",
              mask: Mapping[str, torch.Tensor] | None = None, layer_sparsity: Any = None,
              include: Any = None, exclude: Any = None, pattern: str | None = None) -> M.Mask:
    """Magnitude pruning: prune the smallest-|w| surviving weights until ``sparsity`` is reached.

    The pruner of the lottery ticket hypothesis (Frankle & Carbin 2019; Han et al. 2015).
    ``sparsity``: TOTAL fraction of eligible weights pruned after this call, in [0, 1); exactly
    ``round(sparsity * N)`` are pruned, N = all eligible weights (``scope="global"``, the same
    selection as ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``) or each
    layer's size (``scope="layer"``).  ``mask``: the current mask; only its surviving weights are
    candidates, the result is a subset of it, and the eligible set is its keys.
    ``layer_sparsity``: ``{name: sparsity in [0, 1]}`` (or a :func:`lthdiff.masks.report` DataFrame)
    fixing those layers at exactly ``round(s * N_layer)``; with ``scope="global"`` the other layers share
    what is left of the global budget, so the overall count stays exact.  ``include``/``exclude``:
    as :func:`lthdiff.masks.prunable` (when no mask is given).  Returns a new mask on CPU.

    ``pattern="N:M"`` (e.g. ``"2:4"``, the semi-structured sparsity of NVIDIA sparse tensor cores; Mishra
    et al. 2021, arXiv 2104.08378): in every group of M consecutive input weights of a row
    (:func:`lthdiff.masks.nm_groups`: along ``in`` for linear layers, along the input channels at fixed
    ``(out, kh, kw)`` for convs, as NVIDIA ASP) the N largest-|w| surviving weights are kept, ties to the
    lower index.  ``sparsity`` then counts over the pattern-eligible weights only and must be at least
    what the pattern prunes (``1 - N/M`` from a dense mask; smaller raises ``ValueError``); beyond it,
    further weights are pruned by global magnitude among the survivors, which keeps the pattern.  Layers
    whose input dimension is not a multiple of M (e.g. a 1-channel ``conv_in``) are skipped with a
    ``UserWarning`` naming them and keep their current mask (dense from a fresh one).  Masks stay nested, so
    IMP rounds keep the pattern.  Only ``scope="global"`` without ``layer_sparsity`` supports a pattern.
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    _check_scope(scope)
    if pattern is not None:
        M.parse_nm(pattern)
        if scope != "global" or layer_sparsity is not None:
            raise ValueError(f"pattern={pattern!r} supports scope='global' without layer_sparsity only; got "
                             f"scope={scope!r}, layer_sparsity={'set' if layer_sparsity is not None else None}")
    names = _eligible(model, mask, include, exclude)
    targets = _layer_targets(layer_sparsity, names)
    params = dict(model.named_parameters())
    scores = [params[n].detach().reshape(-1).abs().float() for n in names]
    if pattern is not None:
        return _magnitude_nm(names, [params[n].shape for n in names], scores, mask, sparsity, pattern)
    return _prune(names, [params[n].shape for n in names], scores, mask, sparsity, scope, targets)


def _uniform(sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """One uniform score per weight from a CPU generator, so masks match across devices."""
    g = torch.Generator().manual_seed(int(seed))
    return list(torch.split(torch.rand(sum(sizes), generator=g), list(sizes)))


def random(model: nn.Module, sparsity: float, *, mask: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
           scope: str = "layer", layer_sparsity: Any = None, include: Any = None, exclude: Any = None) -> M.Mask:
    """Random pruning, the random-mask control of lottery-ticket experiments (Frankle & Carbin 2019).

    Same counting rules and arguments as :func:`magnitude`, with uniformly random scores from
    ``torch.Generator().manual_seed(seed)`` (same seed -> same mask, on any device).  The default
    ``scope="layer"`` prunes every layer to ``sparsity``; the standard control keeps a ticket's
    per-layer sparsities: pass ``layer_sparsity=masks.report(ticket)`` or use :func:`random_like`.
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    _check_scope(scope)
    names = _eligible(model, mask, include, exclude)
    targets = _layer_targets(layer_sparsity, names)
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    return _prune(names, shapes, _uniform([math.prod(s) for s in shapes], seed), mask, sparsity, scope, targets)


def random_like(mask: Mapping[str, torch.Tensor], seed: int = 0) -> M.Mask:
    """A random mask with exactly as many weights pruned in each layer as ``mask``.

    The random-mask control of Frankle & Carbin (2019): same layer-wise sparsity as the ticket,
    random positions (drawn from ``torch.Generator().manual_seed(seed)``), independent of it.
    """
    names = list(mask)
    shapes = [mask[n].shape for n in names]
    scores = _uniform([mask[n].numel() for n in names], seed)
    return {n: ~_smallest(s, int((~mask[n]).sum())).reshape(shape)
            for n, s, shape in zip(names, scores, shapes)}
