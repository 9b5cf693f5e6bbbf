"""Layer-wise sparsity allocation: how a target overall sparsity is split across layers.

:func:`allocate` turns a rule name and a target overall sparsity (fraction of eligible weights
pruned) into ``{parameter name: sparsity}`` for ``pruners.magnitude(..., scope="layer",
layer_sparsity=...)`` and ``run_imp(allocation=...)``.  Rules:

``uniform``   every layer at the same sparsity (what layer-wise IMP does).
``global``    the per-layer sparsities one global magnitude ranking yields (Frankle & Carbin 2018).
``erk``       Erdos-Renyi-Kernel (Evci et al. 2020, "Rigging the Lottery", Sec. 3): density of a
              layer proportional to ``(n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)``,
              layers that would exceed their cap are kept at it and the rest rescaled.
``jiang2023`` Jiang et al. 2023, "Successfully Applying Lottery Ticket Hypothesis to Diffusion
              Model" (arXiv 2310.18823), Sec. 3, Algorithm 1: in each pruning round module ``j``
              (a U-Net block, counted from the input side) loses ``p + j*q`` of its surviving
              weights, so upstream modules, whose tickets agree more across runs (their Fig. 1),
              stay denser.  The paper fixes ``p = 20%`` and ``q = 1%`` (App. A); here ``q`` is
              kept and ``p`` is solved so the round hits the requested overall sparsity.  Use
              :func:`jiang2023_schedule` as IMP's ``sparsity_schedule`` to recover ``p = 20%``.

Every rule hits ``round(target * n_eligible)`` pruned weights exactly, never drops a layer
below what ``mask`` already prunes (IMP masks are nested), and keeps at least one weight per
layer (sparsity in ``[0, 1)``).  ``overrides={"*attentions*": 0.5}`` pins matching layers
(``fnmatch`` on parameter names) and the rule spreads the rest.  A rule may also be given as a
string with keyword arguments, e.g. ``"jiang2023(q=0.02)"``: such strings stay JSON-serialisable
and stable in an IMP ``config.json``, unlike a ``functools.partial``.
"""
from __future__ import annotations

import ast
import fnmatch
import math
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["RULES", "allocate", "parse_rule", "jiang2023_schedule", "unit_order", "forward_order"]

RULES = ("uniform", "global", "erk", "jiang2023")
_RULE_KW = {
    "uniform": set(),
    "global": set(),
    "erk": {"power"},
    "jiang2023": {"q", "unit", "order", "similarity", "reference_masks"},
}

Mask = Mapping[str, torch.Tensor]


# ----------------------------------------------------------------------------------- public API
def allocate(
    rule: str,
    model: nn.Module,
    target: float,
    *,
    mask: Mask | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    overrides: Mapping[str, float] | None = None,
    **kw: Any,
) -> dict[str, float]:
    """Per-layer sparsities (fraction pruned, each in ``[0, 1)``) reaching overall ``target``.

    ``rule`` is one of :data:`RULES`, optionally with keyword arguments in call syntax
    (``"erk(power=0.5)"``).  Eligible layers are ``mask``'s keys, or ``masks.prunable(model,
    include, exclude)`` without a mask.  Rule options: ``erk``: ``power`` (ERK scores raised to
    this power, 1.0 = Evci et al.); ``jiang2023``: ``q`` (per-module increment, default 0.01),
    ``unit`` (``"block"`` = modules are :func:`lthdiff.masks.block_of` groups, the paper's
    "blocks in U-Net"; ``"layer"`` = each weight tensor), ``order`` (``"forward"``: modules in
    the order the forward pass reaches them, the paper's; ``"similarity"``: an lthdiff
    extension ranking modules by decreasing ``similarity`` (``{unit: value}``) or by mean
    pairwise Jaccard of ``reference_masks`` (tickets of other runs), most similar = least pruned).
    Raises ``ValueError`` (naming rule and target) when no allocation can reach ``target``.
    """
    name, spec_kw = parse_rule(rule)
    kw = {**spec_kw, **kw}
    bad = set(kw) - _RULE_KW[name]
    if bad:
        raise ValueError(f"rule {name!r} got unknown options {sorted(bad)}; accepted: {sorted(_RULE_KW[name])}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= float(target) < 1:
        raise ValueError(f"rule {name!r}: target sparsity must be a number in [0, 1), got {target!r}")
    target = float(target)
    params = dict(model.named_parameters())
    names = _eligible(model, mask, include, exclude, params)
    L = _Layers(names, params, mask)
    K = _target_count(name, target, L)

    fixed = _apply_overrides(name, target, L, overrides)
    free = np.array([i not in fixed for i in range(len(names))])
    k_free = K - sum(fixed.values())
    lo, hi = int(L.floor[free].sum()), int(L.cap[free].sum())
    if not lo <= k_free <= hi:
        raise ValueError(
            f"rule {name!r} cannot reach target sparsity {target:g}: after overrides {dict(overrides or {})} the "
            f"other {int(free.sum())} layers would need {k_free} pruned weights, but can take between {lo} "
            f"(what the mask already prunes) and {hi} (one weight kept per layer)")
    counts = np.zeros(len(names), dtype=np.int64)
    for i, c in fixed.items():
        counts[i] = c
    idx = np.flatnonzero(free)
    if len(idx):
        sub = L.subset(idx)
        counts[idx] = _RULE_FN[name](sub, k_free, model=model, **kw)
    assert counts.sum() == K and (counts >= L.floor).all() and (counts <= L.cap).all()
    return {n: float(c) / int(m) for n, c, m in zip(names, counts, L.numel)}


def parse_rule(rule: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name"`` or ``"name(key=literal, ...)"`` into the rule name and its options."""
    if not isinstance(rule, str):
        raise ValueError(f"allocation rule must be a string, got {type(rule).__name__}; accepted: {list(RULES)}")
    text = rule.strip()
    if text in RULES:
        return text, {}
    try:
        node = ast.parse(text, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
            raise ValueError
        kw = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        name = node.func.id
    except (SyntaxError, ValueError):
        raise ValueError(f"cannot parse allocation rule {rule!r}; write a rule name {list(RULES)} or "
                         "name(key=value, ...) with literal values, e.g. 'jiang2023(q=0.02)'") from None
    if name not in RULES:
        raise ValueError(f"unknown allocation rule {name!r}; accepted: {list(RULES)}")
    return name, kw


def jiang2023_schedule(model: nn.Module, rounds: int, *, p: float = 0.2, q: float = 0.01, unit: str = "block",
                       include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> list[float]:
    """Overall sparsity after each round of Jiang et al. 2023, Alg. 1 with fixed ``p`` and ``q``.

    Module ``j`` keeps ``(1 - p - j*q)^r`` of its weights after ``r`` rounds (capped to keep one
    weight).  Passing this list as ``run_imp(sparsity_schedule=...)`` with
    ``allocation="jiang2023(q=...)"`` reproduces the paper's per-round ratios (p = 20%, q = 1%,
    25 rounds in App. A) up to integer rounding.
    """
    if not 0 <= p < 1 or q < 0:
        raise ValueError(f"jiang2023_schedule needs p in [0, 1) and q >= 0, got p={p!r}, q={q!r}")
    params = dict(model.named_parameters())
    names = _eligible(model, None, include, exclude, params)
    groups = _groups(model, names, unit, "forward", None, None)
    sizes = np.array([sum(params[names[i]].numel() for i in g) for g in groups], dtype=np.float64)
    caps = np.array([sum(params[names[i]].numel() - 1 for i in g) for g in groups], dtype=np.float64)
    ratios = np.clip(p + q * np.arange(len(groups)), 0.0, 1.0)
    out = []
    for r in range(1, rounds + 1):
        pruned = np.minimum(sizes * (1 - (1 - ratios) ** r), caps)
        out.append(float(pruned.sum() / sizes.sum()))
    return out


# ------------------------------------------------------------------------------------ internals
class _Layers:
    """Eligible layers as arrays: numel, already-pruned count (floor), most prunable (cap)."""

    def __init__(self, names: list[str], params: Mapping[str, torch.Tensor], mask: Mask | None) -> None:
        self.names = names
        self.params = params
        self.mask = mask
        self.numel = np.array([params[n].numel() for n in names], dtype=np.int64)
        self.floor = np.array([0 if mask is None else int((~mask[n].bool()).sum()) for n in names], dtype=np.int64)
        self.cap = self.numel - 1  # one weight kept: a layer's sparsity stays below 1
        empty = [n for n, f, c in zip(names, self.floor, self.numel) if f == c]
        if empty:
            raise ValueError(f"the mask already prunes every weight of {empty[:3]}; a layer sparsity of 1 is outside "
                             "what pruners.magnitude accepts ([0, 1)). Prune with an allocation rule from the start "
                             "(rules keep one weight per layer) or exclude those layers")

    def subset(self, idx: np.ndarray) -> "_Layers":
        sub = object.__new__(_Layers)
        sub.names = [self.names[i] for i in idx]
        sub.params, sub.mask = self.params, self.mask
        sub.numel, sub.floor, sub.cap = self.numel[idx], self.floor[idx], self.cap[idx]
        return sub

    def scores(self, i: int) -> torch.Tensor:
        """|w| of the weights layer ``i`` still has, ascending (the order magnitude pruning takes them)."""
        w = self.params[self.names[i]].detach().abs().flatten().float().cpu()
        if self.mask is not None:
            w = w[self.mask[self.names[i]].flatten().bool().cpu()]
        return w.sort().values


def _eligible(model: nn.Module, mask: Mask | None, include: Any, exclude: Any,
              params: Mapping[str, torch.Tensor]) -> list[str]:
    if mask is not None:
        names = [n for n in params if n in mask]  # parameter order, whatever order the mask file had
        missing = sorted(set(mask) - set(names))
        if missing:
            raise ValueError(f"mask keys {missing[:3]} are not parameters of the model")
        for n in names:
            if tuple(mask[n].shape) != tuple(params[n].shape):
                raise ValueError(f"mask for {n!r} has shape {tuple(mask[n].shape)}, parameter has "
                                 f"{tuple(params[n].shape)}")
        return names
    from lthdiff.masks.core import prunable

    return list(prunable(model, include=include, exclude=exclude))


def _target_count(rule: str, target: float, L: _Layers) -> int:
    total = int(L.numel.sum())
    if total == 0:
        raise ValueError(f"rule {rule!r}: no eligible layers to prune")
    K = int(round(target * total))
    already, most = int(L.floor.sum()), int(L.cap.sum())
    if K < already:
        # Up to one weight per layer of slack: the previous round's mask may have rounded up.
        if already - K <= len(L.names):
            K = already
        else:
            raise ValueError(f"rule {rule!r}: target sparsity {target:g} is below the sparsity the mask already "
                             f"has ({already / total:.6f}); IMP masks only grow, ask for at least that")
    if K > most:
        raise ValueError(f"rule {rule!r}: target sparsity {target:g} is infeasible for {len(L.names)} layers with "
                         f"{total} weights: keeping one weight per layer allows at most {most / total:.6f}")
    return K


def _apply_overrides(rule: str, target: float, L: _Layers, overrides: Mapping[str, float] | None) -> dict[int, int]:
    fixed: dict[int, int] = {}
    if not overrides:
        return fixed
    for pat, s in overrides.items():
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= float(s) < 1:
            raise ValueError(f"rule {rule!r}: override {pat!r} must be a sparsity in [0, 1), got {s!r}")
    hits = {pat: 0 for pat in overrides}
    for i, n in enumerate(L.names):
        for pat, s in overrides.items():  # first matching pattern wins
            if fnmatch.fnmatchcase(n, pat):
                c = int(round(float(s) * int(L.numel[i])))
                if c < L.floor[i]:
                    warnings.warn(f"override {pat!r}={s} is below what the mask already prunes in {n} "
                                  f"({L.floor[i] / L.numel[i]:.4f}); keeping the mask's pruned weights", stacklevel=3)
                fixed[i] = int(min(max(c, L.floor[i]), L.cap[i]))
                hits[pat] += 1
                break
    unused = [p for p, h in hits.items() if h == 0]
    if unused:
        raise ValueError(f"rule {rule!r}: override patterns {unused} match no eligible layer "
                         f"(fnmatch on names such as {L.names[0]!r})")
    return fixed


def _waterfill(desired: Callable[[float], np.ndarray], lo: float, hi: float, floor: np.ndarray, cap: np.ndarray,
               k: int) -> np.ndarray:
    """Integer counts ``clip(desired(t), floor, cap)`` summing to ``k``, ``t`` found by bisection.

    ``desired`` must be nondecreasing in ``t`` with the clipped sum <= k at ``lo`` and >= k at ``hi``.
    Clipping then re-solving ``t`` is the "cap and redistribute" step of ERK (Evci et al. 2020).
    """
    def total(t: float) -> float:
        return float(np.clip(desired(t), floor, cap).sum())

    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if total(mid) < k:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, abs(hi)):
            break
    x = np.clip(desired(hi), floor, cap)
    return _round_to_total(x, floor, cap, k)


def _round_to_total(x: np.ndarray, floor: np.ndarray, cap: np.ndarray, k: int) -> np.ndarray:
    """Round ``x`` to integers in ``[floor, cap]`` with sum ``k``, moving each entry by less than 1 where possible."""
    base = np.clip(np.floor(x + 1e-9).astype(np.int64), floor, cap)
    rest = k - int(base.sum())
    frac = x - base
    order = np.argsort(-frac, kind="stable") if rest > 0 else np.argsort(frac, kind="stable")
    step = 1 if rest > 0 else -1
    while rest != 0:
        moved = False
        for i in order:
            if rest == 0:
                break
            if (step > 0 and base[i] < cap[i]) or (step < 0 and base[i] > floor[i]):
                base[i] += step
                rest -= step
                moved = True
        if not moved:  # unreachable when floor.sum() <= k <= cap.sum()
            raise AssertionError("allocation rounding could not reach the target count")
    return base


def _uniform(L: _Layers, k: int, **_: Any) -> np.ndarray:
    n = L.numel.astype(np.float64)
    return _waterfill(lambda t: t * n, 0.0, 1.0, L.floor, L.cap, k)


def _erk(L: _Layers, k: int, *, power: float = 1.0, **_: Any) -> np.ndarray:
    n = L.numel.astype(np.float64)
    # Evci et al. 2020: density_l = eps * (sum of the kernel's dims / product of its dims)^power.
    raw = np.array([(sum(L.params[m].shape) / L.params[m].numel()) ** power for m in L.names])
    eps_max = float((1.0 / raw).max())  # at eps_max every layer is dense
    return _waterfill(lambda t: n - (1.0 - t) * eps_max * raw * n, 0.0, 1.0, L.floor, L.cap, k)


def _global(L: _Layers, k: int, **_: Any) -> np.ndarray:
    return L.floor + _smallest_per_layer(L, range(len(L.names)), k - int(L.floor.sum()))


def _smallest_per_layer(L: _Layers, idx: Sequence[int], k: int) -> np.ndarray:
    """How many of the ``k`` globally smallest surviving |w| among layers ``idx`` fall in each layer.

    Each layer offers at most ``cap - floor`` weights, so no layer is emptied.
    """
    out = np.zeros(len(L.names), dtype=np.int64)
    if k <= 0:
        return out
    vals, owner = [], []
    for i in idx:
        room = int(L.cap[i] - L.floor[i])
        if room > 0:
            s = L.scores(i)[:room]
            vals.append(s)
            owner.append(torch.full((len(s),), i, dtype=torch.long))
    v, o = torch.cat(vals), torch.cat(owner)
    # A stable sort keeps ties in parameter order, so the allocation is deterministic.
    chosen = o[torch.sort(v, stable=True).indices[:k]]
    out += np.bincount(chosen.numpy(), minlength=len(L.names))
    return out


def _jiang2023(L: _Layers, k: int, *, model: nn.Module, q: float = 0.01, unit: str = "block",
               order: str = "forward", similarity: Mapping[str, float] | None = None,
               reference_masks: Sequence[Mask] | None = None, **_: Any) -> np.ndarray:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or q < 0:
        raise ValueError(f"rule 'jiang2023': q must be a number >= 0, got {q!r}")
    groups = _groups(model, L.names, unit, order, similarity, reference_masks)
    j = np.arange(len(groups), dtype=np.float64)
    gfloor = np.array([L.floor[g].sum() for g in groups], dtype=np.int64)
    gcap = np.array([L.cap[g].sum() for g in groups], dtype=np.int64)
    alive = np.array([(L.numel[g] - L.floor[g]).sum() for g in groups], dtype=np.float64)
    # Alg. 1, line 5: module j loses (p + j*q) of what survives in it; p is the unknown.
    lo, hi = -1.0 - q * len(groups), 1.0
    gcounts = _waterfill(lambda p: gfloor + (p + j * q) * alive, lo, hi, gfloor, gcap, k)
    counts = L.floor.copy()
    for g, c in zip(groups, gcounts):
        # Within a module the lowest magnitudes go first, across its layers (Alg. 1 ranks per module).
        counts += _smallest_per_layer(L, g, int(c - L.floor[g].sum()))
    return counts


_RULE_FN = {"uniform": _uniform, "global": _global, "erk": _erk, "jiang2023": _jiang2023}


# ------------------------------------------------------------------------------ module ordering
def forward_order(model: nn.Module, names: Sequence[str]) -> list[str]:
    """``names`` sorted by when the forward pass first uses their module (input side first).

    Diffusers registers ``mid_block`` after ``up_blocks``, so parameter order is not data-flow
    order; one forward pass on a zero input of the UNet's size records the true order.  Models
    without a ``config.sample_size`` (or whose forward fails) keep parameter order.
    """
    owner = {n: n.rsplit(".", 1)[0] if "." in n else "" for n in names}
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "sample_size", None)
    if size is None:
        return list(names)
    size = size if isinstance(size, int) else size[0]
    seen: dict[str, int] = {}
    modules = dict(model.named_modules())
    hooks = []
    def hook(name: str):
        def record(_module: nn.Module, _args: Any) -> None:  # a pre-hook returning a value would replace the input
            seen.setdefault(name, len(seen))
        return record

    for mname in sorted(set(owner.values())):
        if mname in modules:
            hooks.append(modules[mname].register_forward_pre_hook(hook(mname)))
    was_training = model.training
    try:
        p = next(model.parameters())
        x = torch.zeros(1, cfg.in_channels, size, size, device=p.device, dtype=p.dtype)
        model.eval()
        with torch.no_grad():
            model(x, torch.zeros(1, device=p.device, dtype=torch.long))
    except Exception:  # noqa: BLE001 - any model we cannot call keeps parameter order
        seen = {}
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    rank = {n: i for i, n in enumerate(names)}
    return sorted(names, key=lambda n: (seen.get(owner[n], len(seen) + rank[n]), rank[n]))


def unit_order(model: nn.Module, names: Sequence[str], unit: str = "block") -> list[list[str]]:
    """Group ``names`` into modules (``unit="block"``: :func:`lthdiff.masks.block_of`; ``"layer"``:
    one tensor each), ordered input side first (:func:`forward_order`)."""
    if unit not in ("block", "layer"):
        raise ValueError(f"unknown unit {unit!r}; accepted: 'block', 'layer'")
    ordered = forward_order(model, names)
    if unit == "layer":
        return [[n] for n in ordered]
    from lthdiff.masks.core import block_of

    groups: dict[str, list[str]] = {}
    for n in ordered:
        groups.setdefault(block_of(n), []).append(n)
    return list(groups.values())


def _groups(model: nn.Module, names: Sequence[str], unit: str, order: str, similarity: Mapping[str, float] | None,
            reference_masks: Sequence[Mask] | None) -> list[list[int]]:
    if order not in ("forward", "similarity"):
        raise ValueError(f"rule 'jiang2023': unknown order {order!r}; accepted: 'forward', 'similarity'")
    groups = unit_order(model, names, unit)
    if order == "similarity":
        sim = _unit_similarity(groups, unit, similarity, reference_masks)
        # Most similar first = smallest pruning ratio; stable sort keeps forward order on ties.
        groups = sorted(groups, key=lambda g: -sim[_unit_name(g, unit)])
    index = {n: i for i, n in enumerate(names)}
    return [[index[n] for n in g] for g in groups]


def _unit_name(group: Sequence[str], unit: str) -> str:
    if unit == "layer":
        return group[0]
    from lthdiff.masks.core import block_of

    return block_of(group[0])


def _unit_similarity(groups: list[list[str]], unit: str, similarity: Mapping[str, float] | None,
                     reference_masks: Sequence[Mask] | None) -> dict[str, float]:
    keys = [_unit_name(g, unit) for g in groups]
    if similarity is None:
        if reference_masks is None or len(reference_masks) < 2:
            raise ValueError("rule 'jiang2023' with order='similarity' needs similarity={unit: value} or "
                             "reference_masks=[mask, mask, ...] (at least two tickets from different runs)")
        from lthdiff.masks.core import mask_similarity

        similarity = mask_similarity(reference_masks, by=unit)["jaccard"].to_dict()
    missing = [k for k in keys if k not in similarity or not math.isfinite(float(similarity[k]))]
    if missing:
        raise ValueError(f"rule 'jiang2023': similarity has no finite value for {missing[:3]} "
                         f"(unit={unit!r}; keys look like {keys[:2]})")
    return {k: float(similarity[k]) for k in keys}
