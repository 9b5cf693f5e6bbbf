"""Structured (channel) pruning of diffusers UNets: a physically smaller ``UNet2DModel``.

torch-pruning's dependency graph (Fang et al. 2023, "DepGraph") finds which convolutions, linears
and norms share a channel axis; an importance criterion scores the channels of each such group;
the lowest-scoring channels are removed.  The result is rebuilt as a *plain* ``UNet2DModel`` whose
config describes it exactly, so ``save_pretrained`` / ``from_pretrained``, DDPM/DDIM pipelines,
:func:`lthdiff.train.train` and unstructured IMP all work on it unchanged.

To stay expressible by the config, widths are uniform per resolution level: every group at level
``i`` keeps ``block_out_channels'[i]`` channels, a multiple of the GroupNorm group count (each
GroupNorm group keeps the same number of its own channels, so groups keep their members), and
attention keeps whole heads of ``attention_head_dim``.  Which channels survive is chosen per group
by the importance.  GroupNorms over an up-block skip concatenation see their group boundaries move
a little (as in torch-pruning and the official Diff-Pruning code); fine-tuning absorbs it.

The sinusoidal time embedding has ``block_out_channels[0]`` features.  Pruning level 0 shrinks it;
``freq_shift`` is lowered so the kept features are *exactly* the original highest frequencies, and
``time_embedding.linear_1`` is refitted by least squares over the training timesteps.

MACs: a conv between two pruned levels costs ``(1-r)^2`` of its dense MACs, so MACs fall by about
``1 - (1-r)^2`` (r=0.3 -> ~51 %, r=0.5 -> ~75 %), less where rounding to the GroupNorm multiple
keeps channels.  :func:`ratio_for_macs` finds a uniform ratio, or one ratio per level, for a target
reduction; :func:`pruned_config` and :func:`macs` give the structure and its cost without pruning.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import numbers
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

__all__ = ["IMPORTANCES", "HSICImportance", "StructuredInfo", "structured", "pruned_config", "macs",
           "ratio_for_macs"]

IMPORTANCES = ("magnitude", "taylor", "diff_pruning", "hsic")
_NEEDS_DATA = ("taylor", "diff_pruning", "hsic")
_ROOT_TYPES = [nn.Conv2d, nn.Linear]
_QKV = ("to_q", "to_k", "to_v")


@dataclass
class StructuredInfo:
    """What :func:`structured` did (``return_info=True``)."""

    importance: str
    block_out_channels: tuple[tuple[int, ...], tuple[int, ...]]  # before, after
    time_embedding_dim: tuple[int, int]
    params: tuple[int, int]
    macs: tuple[int, int]  # per image, sample_size x sample_size
    kept: dict[str, list[int]] = field(default_factory=dict)  # group root module -> kept channel indices
    timesteps: list[int] = field(default_factory=list)  # timesteps whose loss entered the importance
    losses: list[float] = field(default_factory=list)  # diff_pruning: L_t along the scan
    time_embedding_error: float = 0.0  # relative error of the refitted time_embedding.linear_1

    @property
    def macs_reduction(self) -> float:
        return 1 - self.macs[1] / self.macs[0]

    @property
    def params_reduction(self) -> float:
        return 1 - self.params[1] / self.params[0]


# --------------------------------------------------------------------------- target structure


def _config(unet_or_config: Any) -> dict[str, Any]:
    cfg = getattr(unet_or_config, "config", unet_or_config)
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def _check_supported(cfg: dict[str, Any]) -> None:
    if cfg.get("time_embedding_type", "positional") != "positional" or cfg.get("class_embed_type") is not None:
        raise ValueError(
            "structured pruning supports UNet2DModel with time_embedding_type='positional' and no class "
            f"embedding; got time_embedding_type={cfg.get('time_embedding_type')!r}, "
            f"class_embed_type={cfg.get('class_embed_type')!r}")


def _ratios(ratio: Any, n_levels: int) -> list[float]:
    """One pruning ratio per level from a float or a per-level sequence; ValueError otherwise."""
    def ok(r: Any) -> bool:
        return not isinstance(r, bool) and isinstance(r, numbers.Real) and 0 <= float(r) < 1
    if isinstance(ratio, Sequence) and not isinstance(ratio, str):
        if len(ratio) != n_levels or not all(ok(r) for r in ratio):
            raise ValueError(f"ratio must be a channel pruning fraction in [0, 1) or a sequence of {n_levels} "
                             f"such fractions (one per block_out_channels level), got {ratio!r}")
        return [float(r) for r in ratio]
    if not ok(ratio):
        raise ValueError(f"ratio must be a channel pruning fraction in [0, 1) (or one per level), got {ratio!r}")
    return [float(ratio)] * n_levels


def _units(cfg: dict[str, Any]) -> list[int]:
    """Per level, the multiple every kept width must be (GroupNorm groups; even at level 0 for sin/cos)."""
    groups = cfg.get("norm_num_groups") or 32
    unit = math.lcm(groups, cfg.get("attn_norm_num_groups") or groups)
    return [math.lcm(unit, 2) if i == 0 else unit for i in range(len(cfg["block_out_channels"]))]


def _keep(channels: int, ratio: float, unit: int) -> int:
    """Channels kept: ``channels * (1 - ratio)`` rounded to the nearest multiple of ``unit`` (>= unit)."""
    if ratio == 0:
        return channels
    k = unit * math.floor(channels * (1 - ratio) / unit + 0.5)
    return min(channels, max(unit, k))


def _time_dim(cfg: dict[str, Any]) -> int:
    return cfg.get("time_embedding_dim") or cfg["block_out_channels"][0] * 4


def pruned_config(unet_or_config: Any, ratio: float | Sequence[float], *,
                  time_embedding_ratio: float | None = None) -> dict[str, Any]:
    """The ``UNet2DModel`` config after pruning channels by ``ratio`` (the structure, no weights).

    ``ratio`` is torch-pruning's ``pruning_ratio``: the fraction of channels removed at every level
    (or one fraction per ``block_out_channels`` entry).  Kept widths are rounded to the nearest
    multiple of the GroupNorm group count.  A down block's first ResNet has a 1x1 shortcut conv
    exactly when its level is wider or narrower than the previous one, so adjacent levels of equal
    width must keep equal widths (else ValueError), and adjacent levels of different widths that
    round to the same width are moved one GroupNorm step apart (up if there is room).
    ``time_embedding_ratio`` prunes the time-embedding MLP (default: ``ratio`` when it is a single
    float, else 0).
    """
    cfg = _config(unet_or_config)
    _check_supported(cfg)
    boc = list(cfg["block_out_channels"])
    ratios = _ratios(ratio, len(boc))
    if time_embedding_ratio is None:
        time_embedding_ratio = 0.0 if isinstance(ratio, Sequence) else ratios[0]
    t_ratio = _ratios(time_embedding_ratio, 1)[0]
    units = _units(cfg)
    new_boc = _legalize(boc, [_keep(c, r, u) for c, r, u in zip(boc, ratios, units)], units)
    # Keep the surviving sinusoid frequencies identical: exponent_i = -ln(1e4) i / (half - freq_shift).
    shift = cfg.get("freq_shift", 0) - (boc[0] // 2 - new_boc[0] // 2)
    cfg.update(block_out_channels=tuple(new_boc), freq_shift=shift,
               time_embedding_dim=_keep(_time_dim(cfg), t_ratio, units[0]))
    return cfg


def _runs(boc: Sequence[int]) -> list[list[int]]:
    """Consecutive levels of equal width (identity shortcuts between them)."""
    runs: list[list[int]] = []
    for i, c in enumerate(boc):
        if runs and boc[runs[-1][0]] == c:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _legalize(boc: Sequence[int], widths: list[int], units: Sequence[int]) -> list[int]:
    """Keep the pattern of equal / different adjacent widths (it decides which shortcut convs exist)."""
    runs = _runs(boc)
    for run in runs:
        if len({widths[i] for i in run}) > 1:
            raise ValueError(f"levels {run} share the width {boc[run[0]]} (identity shortcuts between them), so "
                             f"they must keep equal widths; got {[widths[i] for i in run]} from the ratios given")
    for prev, run in zip(runs, runs[1:]):
        w, c = widths[run[0]], boc[run[0]]
        if w == widths[prev[0]]:
            unit = math.lcm(*(units[i] for i in run))
            w = w + unit if w + unit <= c else w - unit
            if w < unit:
                raise ValueError(f"levels {prev} and {run} would both keep {widths[prev[0]]} channels, which "
                                 "removes a shortcut conv; use a smaller ratio")
            for i in run:
                widths[i] = w
    return widths


def macs(unet_or_config: Any, batch_size: int = 1) -> int:
    """Dense multiply-accumulates of one forward pass at ``sample_size`` (convs, linears, attention).

    :func:`lthdiff.metrics.efficiency.macs` on an uninitialised CPU model built from the config, so a
    bare config works and the global RNG is untouched.
    """
    cfg = _config(unet_or_config)
    return _macs(json.dumps(cfg, sort_keys=True, default=str), batch_size)


@functools.lru_cache(maxsize=64)
def _macs(cfg_json: str, batch_size: int) -> int:
    from diffusers import UNet2DModel

    from ..metrics.efficiency import macs as count

    cfg = json.loads(cfg_json)
    size = cfg["sample_size"] if isinstance(cfg["sample_size"], int) else cfg["sample_size"][0]
    with torch.device("meta"):
        model = UNet2DModel(**cfg)
    model = model.to_empty(device="cpu")  # meta kernels are ~100x slower than running the small model
    return count(model, (batch_size, cfg["in_channels"], size, size)).dense


def ratio_for_macs(unet_or_config: Any, reduction: float, *, per_level: bool = False,
                   time_embedding_ratio: float | None = None, tol: float = 1e-3,
                   slack: float = 0.02) -> float | list[float]:
    """The pruning ratio whose structure removes ``reduction`` of the MACs (a fraction in (0, 1)).

    Uniform (default): the smallest single ``ratio`` reaching at least ``reduction``, by bisection.
    Widths move in GroupNorm steps, so on small UNets it can overshoot a lot (tiny: 36 / 64 / 74 %
    for 30 / 50 / 70 %).  ``per_level=True``: one ratio per level, searched over every combination
    of widths (MACs are a quadratic polynomial of the widths, fitted exactly from a few counts);
    among the structures whose reduction is within ``slack`` of the closest one reachable it
    returns the most uniform (smallest spread of per-level ratios).  The time-embedding MLP keeps its width
    unless ``time_embedding_ratio`` is given.  Check: ``1 - macs(pruned_config(unet, r)) / macs(unet)``.
    """
    if isinstance(reduction, bool) or not isinstance(reduction, numbers.Real) or not 0 < reduction < 1:
        raise ValueError(f"reduction must be a fraction of MACs removed in (0, 1), got {reduction!r}")
    cfg = _config(unet_or_config)
    dense = macs(cfg)

    def achieved(r: Any) -> float:
        return 1 - macs(pruned_config(cfg, r, time_embedding_ratio=time_embedding_ratio)) / dense

    if per_level:
        return _per_level_ratios(cfg, reduction, time_embedding_ratio or 0.0, slack)
    lo, hi = 0.0, 0.999
    if achieved(hi) < reduction:
        raise ValueError(f"a {reduction:.0%} MAC reduction is out of reach: the most this UNet's GroupNorm "
                         f"rounding allows is {achieved(hi):.1%}")
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if achieved(mid) >= reduction else (mid, hi)
    return math.ceil(hi * 1e4) / 1e4  # rounded up: never below the jump it found


def _per_level_ratios(cfg: dict[str, Any], reduction: float, t_ratio: float, slack: float) -> list[float]:
    import itertools

    boc, units = list(cfg["block_out_channels"]), _units(cfg)
    runs = _runs(boc)
    run_units = [math.lcm(*(units[i] for i in run)) for run in runs]
    run_options = [[*range(u, boc[run[0]], u), boc[run[0]]] for run, u in zip(runs, run_units)]

    def ratios(widths: Sequence[int]) -> list[float]:
        return [round(1 - w / c, 6) for w, c in zip(widths, boc)]

    def counted(widths: Sequence[int]) -> int:
        return macs(pruned_config(cfg, ratios(widths), time_embedding_ratio=t_ratio))

    def features(widths: Sequence[int]) -> list[float]:
        w = [float(x) for x in widths]
        return [1.0, *w, *(w[i] * w[j] for i in range(len(w)) for j in range(i, len(w)))]

    combos = [tuple(w for run, rw in zip(runs, choice) for w in [rw] * len(run))
              for choice in itertools.product(*run_options)
              if all(x != y for x, y in zip(choice, choice[1:]))]  # a collision would drop a shortcut conv
    gen = torch.Generator().manual_seed(0)
    n_fit = min(len(combos), 2 * len(features(boc)) + 2)
    sample = [combos[int(i)] for i in torch.randperm(len(combos), generator=gen)[:n_fit]]
    if len(combos) <= n_fit:  # small enough to count every structure
        table = {c: counted(c) for c in combos}
    else:
        a = torch.tensor([features(c) for c in sample], dtype=torch.float64)
        y = torch.tensor([counted(c) for c in sample], dtype=torch.float64)
        coef = torch.linalg.lstsq(a, y[:, None], driver="gelsd").solution[:, 0]
        check = [combos[0], combos[-1], tuple(boc)]
        if any(abs(float(torch.tensor(features(c), dtype=torch.float64) @ coef) - counted(c)) > 0.5 for c in check):
            raise ValueError("MACs of this UNet are not a quadratic function of its widths (attention heads "
                             "not aligned with the GroupNorm multiple); use per_level=False")
        pred = torch.tensor([features(c) for c in combos], dtype=torch.float64) @ coef
        table = {c: int(round(float(v))) for c, v in zip(combos, pred)}
    dense = counted(tuple(boc))
    gaps = {c: abs(1 - m / dense - reduction) for c, m in table.items()}
    closest = min(gaps.values())
    near = [c for c, gap in gaps.items() if gap <= closest + slack]
    return ratios(min(near, key=lambda c: (max(ratios(c)) - min(ratios(c)), gaps[c])))


# --------------------------------------------------------------------------- importances


class HSICImportance(tp.importance.Importance):
    """Channel importance = normalised HSIC between a channel's activations and the noise target.

    For each conv/linear output channel ``c`` and a batch of ``n`` noisy inputs, ``X_c`` is the
    channel's activation per sample (flattened over space/tokens) and ``Y`` the epsilon target.
    Gaussian kernels ``K_ij = exp(-|x_i-x_j|^2 / (2 s^2))`` with the median heuristic for ``s^2``
    and the biased estimator ``HSIC_b = tr(KHLH) / (n-1)^2``, ``H = I - 11^T/n`` (Gretton et al.
    2005, "Measuring statistical dependence with Hilbert-Schmidt norms"), normalised as
    ``HSIC(X,Y) / sqrt(HSIC(X,X) HSIC(Y,Y))`` (the nHSIC of Ma, Lewis & Kleijn 2020, "The HSIC
    bottleneck").  Scores are averaged over batches, then over the layers of a pruning group, as
    channel selection by HSIC to the target does in Guo et al. 2023 (ICCV, "Automatic network
    pruning via HSIC Lasso under the information bottleneck principle"), here marginally per channel.
    """

    def __init__(self, target_types: Sequence[type] = (nn.Conv2d, nn.Linear)) -> None:
        self.target_types = tuple(target_types)
        self.sums: dict[nn.Module, torch.Tensor] = {}
        self.counts: dict[nn.Module, int] = {}

    @staticmethod
    def _centered_gram(x: torch.Tensor) -> torch.Tensor:
        """(..., n, m) features -> (..., n, n) centred Gaussian Gram matrices HKH."""
        d2 = torch.cdist(x, x).pow(2)
        n = d2.shape[-1]
        off = d2[..., ~torch.eye(n, dtype=torch.bool, device=d2.device)].reshape(*d2.shape[:-2], -1)
        s2 = off.median(dim=-1).values.clamp_min(torch.finfo(d2.dtype).tiny)[..., None, None]
        k = torch.exp(-d2 / (2 * s2))
        return k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-2, -1), keepdim=True)

    @torch.no_grad()
    def accumulate(self, model: nn.Module, noisy: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> None:
        """Run ``model(noisy, t)`` once and add every channel's nHSIC with ``target`` to the running sums."""
        lc = self._centered_gram(target.flatten(1).float())
        lnorm = (lc * lc).sum().sqrt()
        outputs: dict[nn.Module, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda mod, _, out: outputs.__setitem__(mod, out))
                 for m in model.modules() if isinstance(m, self.target_types)]
        try:
            model(noisy, t)
        finally:
            for h in hooks:
                h.remove()
        for mod, out in outputs.items():
            # Conv: (B, C, H, W); Linear: (B, ..., C).  -> (C, B, features)
            feats = out.flatten(2).transpose(0, 1) if isinstance(mod, nn.Conv2d) else \
                out.reshape(out.shape[0], -1, out.shape[-1]).permute(2, 0, 1)
            kc = self._centered_gram(feats.float())
            hsic_xy = (kc * lc).sum((-2, -1))
            knorm = (kc * kc).sum((-2, -1)).sqrt()
            score = torch.where(knorm > 0, hsic_xy / (knorm * lnorm).clamp_min(1e-30), torch.zeros_like(knorm))
            self.sums[mod] = self.sums.get(mod, 0) + score.cpu()
            self.counts[mod] = self.counts.get(mod, 0) + 1

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, seen = None, None
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.target.module, dep.handler
            if layer not in self.sums or fn not in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                continue
            root_idxs = group[i].root_idxs
            local = (self.sums[layer] / self.counts[layer])[idxs]
            if total is None:
                n = len(group[0].idxs)
                total, seen = torch.zeros(n), torch.zeros(n)
            total.index_add_(0, torch.tensor(root_idxs), local)
            seen.index_add_(0, torch.tensor(root_idxs), torch.ones(len(idxs)))
        return None if total is None else total / seen.clamp_min(1)


def _images(data: Any, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images drawn without replacement (cycling if fewer) from a tensor or Dataset."""
    if isinstance(data, torch.Tensor):
        pool = data
    elif hasattr(data, "tensors") and isinstance(data.tensors, torch.Tensor):
        pool = data.tensors
    else:
        pool = None
    size = len(pool) if pool is not None else len(data)
    if size == 0:
        raise ValueError("data is empty (0 images); pass a dataset such as lthdiff.data.load_dataset('digits')")
    idx = torch.cat([torch.randperm(size, generator=generator) for _ in range(-(-n // size))])[:n]
    if pool is not None:
        return pool[idx].float()
    items = [data[int(i)] for i in idx]
    return torch.stack([x[0] if isinstance(x, (tuple, list)) else x for x in items]).float()


def _timestep_grid(timesteps: Any, num_train_timesteps: int) -> list[int]:
    if timesteps is None:
        return list(range(num_train_timesteps))
    if isinstance(timesteps, numbers.Integral) and not isinstance(timesteps, bool):
        if timesteps < 1:
            raise ValueError(f"timesteps must be a positive count or a sequence of timesteps, got {timesteps!r}")
        return sorted({int(v) for v in torch.linspace(0, num_train_timesteps - 1, int(timesteps)).round()})
    grid = [int(t) for t in timesteps]
    if not grid or not all(0 <= t < num_train_timesteps for t in grid):
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}), got {timesteps!r}")
    return grid


# --------------------------------------------------------------------------- the pruner


def _level(name: str, n_levels: int) -> int | str:
    head = name.split(".")
    if head[0] == "conv_in":
        return 0
    if head[0] == "down_blocks":
        return int(head[1])
    if head[0] == "mid_block":
        return n_levels - 1
    if head[0] == "up_blocks":
        return n_levels - 1 - int(head[1])
    if head[0] == "time_embedding":
        return "temb"
    raise ValueError(f"structured pruning does not know which level {name!r} belongs to")


def _select(scores: torch.Tensor, keep: int, blocks: int) -> list[int]:
    """Top-``keep`` indices, ``keep/blocks`` from each of ``blocks`` equal blocks; ties to the lower index."""
    size, per = len(scores) // blocks, keep // blocks
    kept = []
    for b in range(blocks):
        order = torch.argsort(-scores[b * size:(b + 1) * size], stable=True)[:per]
        kept += (order + b * size).tolist()
    return sorted(kept)


def _gn_blocks(group, n: int) -> int:
    """lcm of the group counts of GroupNorms normalising exactly this group's channels (not a concat)."""
    blocks = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.GroupNorm) and m.num_channels == n:
            blocks = math.lcm(blocks, m.num_groups)
    return blocks


def _ignored_modules(unet: nn.Module, work: nn.Module, ignored_layers: Iterable[Any] | None) -> set[nn.Module]:
    if not ignored_layers:
        return set()
    by_id = {id(m): n for n, m in unet.named_modules()}
    named = dict(work.named_modules())
    out: set[nn.Module] = set()
    for item in ignored_layers:
        name = item if isinstance(item, str) else by_id.get(id(item))
        if name not in named:
            raise ValueError(f"ignored layer {item!r} is not a module of this UNet; accepted: module names such "
                             f"as 'down_blocks.0' or 'time_embedding', or modules of the UNet passed in")
        out.update(named[name].modules())
    return out


def _loss(model: nn.Module, scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """DDPM epsilon-prediction loss (Ho et al. 2020, Eq. 14)."""
    return F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)


def structured(
    unet: nn.Module,
    ratio: float | Sequence[float],
    *,
    importance: str = "magnitude",
    data: Any = None,
    timesteps: int | Sequence[int] | None = None,
    batches: int = 1,
    batch_size: int = 64,
    threshold: float = 0.05,
    p: int = 2,
    time_embedding_ratio: float | None = None,
    ignored_layers: Iterable[Any] | None = None,
    num_train_timesteps: int = 1000,
    seed: int = 0,
    progress: bool = True,
    return_info: bool = False,
):
    """Remove a fraction ``ratio`` of the channels of a diffusers ``UNet2DModel``; return a NEW, smaller one.

    ``ratio`` is the channel pruning ratio (torch-pruning's ``pruning_ratio``) at every level, or one
    per ``block_out_channels`` level; MACs fall by about ``1-(1-ratio)^2`` (see :func:`ratio_for_macs`).
    The input is not modified.  ``importance`` picks which channels go:

    - ``"magnitude"``: ``||w_c||_p`` of each channel's weights, averaged over the layers of the group
      (``tp.importance.MagnitudeImportance``; Li et al. 2017 for p=1).
    - ``"taylor"``: first-order Taylor estimate of the loss change when a channel is removed,
      ``|sum_k w_k dL/dw_k|`` over the channel's weights (Molchanov et al. 2019; torch-pruning's
      ``TaylorImportance(multivariable=True)``, the "taylor" baseline of Diff-Pruning), with ``L`` the
      DDPM loss on ``batches`` batches of ``data`` at timesteps drawn uniformly from ``timesteps``.
    - ``"diff_pruning"``: Diff-Pruning (Fang, Ma & Wang 2023, NeurIPS, arXiv:2305.10924, Sec. 3,
      "Taylor expansion at pruned timesteps"): ``I(w) = sum_k |w_k * sum_{t in T'} dL_t/dw_k|`` where
      ``L_t = ||eps - eps_theta(sqrt(a_t) x0 + sqrt(1-a_t) eps, t)||^2`` on one noise draw per batch,
      and the pruned timestep set ``T' = {0, 1, ..., t*}`` is scanned from t=0 (the ``timesteps``
      grid in order) and stops at the first ``t*`` whose loss falls below ``threshold`` times the
      largest loss so far (``L_t / L_max > thr``, thr = 0.05, as in the authors' ``ddpm_prune.py``):
      late, nearly noise-only steps carry little information and are skipped.  Element-wise |.| then
      sum, torch-pruning's ``TaylorImportance(multivariable=False)`` as in the official code.
    - ``"hsic"``: :class:`HSICImportance`, normalised HSIC between channel activations and the
      noise target on ``batches`` batches.

    ``data``: training images in [-1, 1] (tensor (N,C,H,W) or Dataset) for the data-driven criteria.
    ``ignored_layers`` (names or modules): their channels are kept; since the config has one width
    per level, that keeps their whole level (or the time embedding) dense.  ``time_embedding_ratio``
    prunes the time MLP (default: ``ratio`` if it is one float, else 0).  ``timesteps``: the grid the
    data-driven criteria use, a sequence, an int ``n`` (n evenly spaced steps) or None (all
    ``num_train_timesteps``); ``batches`` x ``batch_size`` images enter the estimate.  The DDPM
    forward process is ``DDPMScheduler(num_train_timesteps).add_noise``.  Same seed -> same weights.
    With ``return_info=True`` returns ``(model, StructuredInfo)``.
    """
    from diffusers import UNet2DModel

    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; accepted: {list(IMPORTANCES)}")
    cfg = _config(unet)
    _check_supported(cfg)
    boc = tuple(cfg["block_out_channels"])
    ratios = _ratios(ratio, len(boc))
    if importance in _NEEDS_DATA:
        if data is None:
            raise ValueError(f"importance={importance!r} needs data=... (training images in [-1, 1], e.g. "
                             "lthdiff.data.load_dataset('digits')); 'magnitude' needs none")
        for name, v, low in (("batches", batches, 1), ("batch_size", batch_size, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if importance == "diff_pruning" and not (isinstance(threshold, numbers.Real) and 0 < threshold <= 1):
        raise ValueError(f"threshold must be in (0, 1] (Diff-Pruning's relative loss threshold), got {threshold!r}")
    grid = _timestep_grid(timesteps, num_train_timesteps)

    device = next(unet.parameters()).device
    work = copy.deepcopy(unet).eval()
    size = cfg["sample_size"] if isinstance(cfg["sample_size"], int) else cfg["sample_size"][0]
    example = {"sample": torch.zeros(1, cfg["in_channels"], size, size, device=device),
               "timestep": torch.ones(1, dtype=torch.long, device=device)}
    graph = tp.DependencyGraph().build_dependency(work, example_inputs=example)
    names = {m: n for n, m in work.named_modules()}
    groups = list(graph.get_all_groups(ignored_layers=[work.conv_out], root_module_types=_ROOT_TYPES))

    # A level holding an ignored layer stays dense: the config cannot give it two widths.
    ignored = _ignored_modules(unet, work, ignored_layers)
    t_ratio = time_embedding_ratio
    for group in groups:
        if any(dep.target.module in ignored and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in group):
            lvl = _level(names[group[0].dep.target.module], len(boc))
            if lvl == "temb":
                t_ratio = 0.0
            else:  # with the levels tied to it by identity shortcuts
                for i in next(run for run in _runs(boc) if lvl in run):
                    ratios[i] = 0.0
    if t_ratio is None:
        t_ratio = float(ratio) if not isinstance(ratio, Sequence) else 0.0
    target = pruned_config(cfg, ratios, time_embedding_ratio=t_ratio)

    info = StructuredInfo(importance, (boc, tuple(target["block_out_channels"])),
                          (_time_dim(cfg), target["time_embedding_dim"]), (0, 0), (0, 0))
    scorer = _scorer(work, importance, data, grid, info, batches=batches, batch_size=batch_size,
                     threshold=threshold, p=p, num_train_timesteps=num_train_timesteps, seed=seed, progress=progress)

    plans = []
    head_dim = cfg.get("attention_head_dim")
    for group in groups:
        dep = group[0].dep
        root, name, n = dep.target.module, names[dep.target.module], len(group[0].idxs)
        lvl = _level(name, len(boc))
        k = target["time_embedding_dim"] if lvl == "temb" else target["block_out_channels"][lvl]
        scores = scorer(group)
        scores = torch.zeros(n) if scores is None else scores.detach().float().cpu().nan_to_num(0.0)
        if name.rsplit(".", 1)[-1] in _QKV and head_dim:
            # whole heads go: the config fixes attention_head_dim, heads = width // head_dim
            heads = _select(scores.view(-1, head_dim).sum(1), max(1, k // head_dim), 1)
            kept = [h * head_dim + j for h in heads for j in range(head_dim)]
        else:
            if n != (boc[lvl] if lvl != "temb" else info.time_embedding_dim[0]):
                raise ValueError(f"cannot prune {name}: its {n} channels do not match its level's width; "
                                 "this UNet2DModel layout is not supported by structured pruning")
            kept = _select(scores, k, _gn_blocks(group, n))
        info.kept[name] = kept
        drop = sorted(set(range(n)) - set(kept))
        if drop:
            plans.append((root, dep.handler, drop))
    for root, handler, drop in plans:
        graph.get_pruning_group(root, handler, drop).prune()
    info.time_embedding_error = _refit_time_embedding(work, cfg, target, num_train_timesteps)

    with torch.device("meta"):
        pruned = UNet2DModel(**target)
    try:
        pruned.load_state_dict(work.state_dict(), strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"the pruned weights do not fit UNet2DModel(block_out_channels="
                         f"{target['block_out_channels']}); this layout is not supported ({exc})") from exc
    pruned.train(unet.training)
    if not return_info:
        return pruned
    info.params = (sum(q.numel() for q in unet.parameters()), sum(q.numel() for q in pruned.parameters()))
    info.macs = (macs(cfg), macs(target))
    return pruned, info


def _scorer(work: nn.Module, importance: str, data: Any, grid: list[int], info: StructuredInfo, *, batches: int,
            batch_size: int, threshold: float, p: int, num_train_timesteps: int, seed: int,
            progress: bool) -> tp.importance.Importance:
    """Prepare the importance (gradients or activation statistics on ``work``) and return the scorer."""
    if importance == "magnitude":
        return tp.importance.MagnitudeImportance(p=p, group_reduction="mean", normalizer=None)
    from ..data import TensorImageDataset
    from ..tasks import DiffusionTask, make_scheduler

    DiffusionTask().check(work, data if not isinstance(data, torch.Tensor) else TensorImageDataset(data[:1]))
    device = next(work.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    scheduler = make_scheduler(num_train_timesteps)
    x_all = _images(data, batches * batch_size, gen).to(device)
    grid_t = torch.tensor(grid)
    hsic = HSICImportance() if importance == "hsic" else None
    work.requires_grad_(hsic is None)
    work.zero_grad(set_to_none=True)
    for b in tqdm(range(batches), desc=f"{importance} importance", disable=not progress):
        x0 = x_all[b * batch_size:(b + 1) * batch_size]
        noise = torch.randn(x0.shape, generator=gen).to(device)
        if importance == "diff_pruning":
            loss_max = 0.0
            for t in grid:
                loss = _loss(work, scheduler, x0, noise, torch.full((len(x0),), t, device=device, dtype=torch.long))
                loss.backward()
                info.timesteps.append(t)
                info.losses.append(loss.item())
                loss_max = max(loss_max, loss.item())
                if loss.item() < loss_max * threshold:  # T' ends: L_t / L_max <= thr
                    break
            continue
        t = grid_t[torch.randint(len(grid), (len(x0),), generator=gen)].to(device)
        info.timesteps += t.tolist()
        if hsic is not None:
            hsic.accumulate(work, scheduler.add_noise(x0, noise, t), t, noise)
        else:
            _loss(work, scheduler, x0, noise, t).backward()
    if hsic is not None:
        return hsic
    return tp.importance.TaylorImportance(group_reduction="mean", normalizer=None,
                                          multivariable=importance == "taylor")


@torch.no_grad()
def _refit_time_embedding(work: nn.Module, cfg: dict[str, Any], target: dict[str, Any],
                          num_train_timesteps: int) -> float:
    """Refit ``time_embedding.linear_1`` to the smaller sinusoid by least squares over t = 0..T-1.

    Returns the relative error of its output on that grid (0 when level 0 keeps its width).
    """
    from diffusers.models.embeddings import Timesteps

    lin = work.time_embedding.linear_1
    if target["block_out_channels"][0] == cfg["block_out_channels"][0]:
        return 0.0
    t = torch.arange(num_train_timesteps, device=lin.weight.device)
    old = Timesteps(cfg["block_out_channels"][0], cfg.get("flip_sin_to_cos", True), cfg.get("freq_shift", 0))
    new = Timesteps(target["block_out_channels"][0], target.get("flip_sin_to_cos", True), target["freq_shift"])
    want = F.linear(old(t).double(), lin.weight.double(), lin.bias.double())
    x = torch.cat([new(t).double(), torch.ones(len(t), 1, dtype=torch.float64, device=t.device)], 1)
    sol = torch.linalg.lstsq(x.cpu(), want.cpu(), driver="gelsd").solution.to(t.device)
    weight, bias = sol[:-1].T.contiguous(), sol[-1]
    lin.weight = nn.Parameter(weight.to(lin.weight.dtype))
    lin.bias = nn.Parameter(bias.to(lin.bias.dtype))
    lin.in_features = weight.shape[1]
    err = (x @ sol - want).norm() / want.norm().clamp_min(1e-30)
    return float(err)


class _CallableModule(types.ModuleType):
    # ``lthdiff.pruners.structured`` is both this module and its main function: once the module is
    # imported, Python binds the package attribute to the module, so make calling it call the function.
    def __call__(self, *args: Any, **kwargs: Any):
        return structured(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
