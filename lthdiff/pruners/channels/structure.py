"""Target structure of a channel-pruned UNet: widths per level, their legal values, and what they cost.

Widths are uniform per resolution level and a multiple of the GroupNorm group count (and of whole
attention heads), so the pruned model is described exactly by a ``UNet2DModel`` config.
:func:`pruned_config` gives that config without pruning, :func:`config_macs` its dense MACs, and
:func:`ratio_for_macs` the ratio (uniform or per level) that reaches a MAC reduction.
"""
from __future__ import annotations

import functools
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

__all__ = ["StructuredInfo", "kept_overlap", "chance_overlap", "pruned_config", "config_macs", "ratio_for_macs", "unet_config", "check_supported",
           "level_ratios", "channel_units", "keep_channels", "time_dim", "legalize", "level_runs"]


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
    # group -> (units, GroupNorm blocks kept alike, channels a unit): a unit is a channel, or a whole attention head
    blocks: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def macs_reduction(self) -> float:
        return 1 - self.macs[1] / self.macs[0]

    @property
    def params_reduction(self) -> float:
        return 1 - self.params[1] / self.params[0]


def kept_overlap(a: StructuredInfo, b: StructuredInfo) -> float:
    """Mean Jaccard overlap of the channels two structured prunings kept, over their channel groups."""
    scores = [len(set(a.kept[g]) & set(b.kept[g])) / len(set(a.kept[g]) | set(b.kept[g])) for g in a.kept]
    return sum(scores) / len(scores)


def chance_overlap(info: StructuredInfo, draws: int = 2000, seed: int = 0) -> float:
    """The :func:`kept_overlap` two *random* prunings to the same widths would have (the baseline a criterion's
    overlap is read against): per group, the same number of channels drawn at random from each GroupNorm block
    (as the pruner keeps them), Jaccard averaged over ``draws`` pairs, then over the groups as ``kept_overlap``
    does.  Levels keep different fractions (the tiny UNet at 50 % fewer MACs: 24 of 32, 32 of 48), so one
    level's chance is not the whole network's."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    scores = []
    for g, kept in info.kept.items():
        n, blocks, unit = info.blocks[g]
        size, per = n // blocks, len(kept) // unit // blocks

        def draw() -> torch.Tensor:
            keep = torch.zeros(draws, n, dtype=torch.bool)
            for b in range(blocks):
                idx = torch.rand(draws, size, generator=gen).argsort(dim=1)[:, :per] + b * size
                keep.scatter_(1, idx, True)
            return keep

        a, b = draw(), draw()
        scores.append(((a & b).sum(1) / (a | b).sum(1)).float().mean().item())
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------- target structure


def unet_config(unet_or_config: Any) -> dict[str, Any]:
    cfg = getattr(unet_or_config, "config", unet_or_config)
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def check_supported(cfg: dict[str, Any]) -> None:
    if cfg.get("time_embedding_type", "positional") != "positional" or cfg.get("class_embed_type") is not None:
        raise ValueError(
            "structured pruning supports UNet2DModel with time_embedding_type='positional' and no class "
            f"embedding; got time_embedding_type={cfg.get('time_embedding_type')!r}, "
            f"class_embed_type={cfg.get('class_embed_type')!r}")


def level_ratios(ratio: Any, n_levels: int) -> list[float]:
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


def channel_units(cfg: dict[str, Any]) -> list[int]:
    """Per level, the multiple every kept width must be (GroupNorm groups; even at level 0 for sin/cos)."""
    groups = cfg.get("norm_num_groups") or 32
    unit = math.lcm(groups, cfg.get("attn_norm_num_groups") or groups)
    return [math.lcm(unit, 2) if i == 0 else unit for i in range(len(cfg["block_out_channels"]))]


def keep_channels(channels: int, ratio: float, unit: int) -> int:
    """Channels kept: ``channels * (1 - ratio)`` rounded to the nearest multiple of ``unit`` (>= unit)."""
    if ratio == 0:
        return channels
    k = unit * math.floor(channels * (1 - ratio) / unit + 0.5)
    return min(channels, max(unit, k))


def time_dim(cfg: dict[str, Any]) -> int:
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
    cfg = unet_config(unet_or_config)
    check_supported(cfg)
    boc = list(cfg["block_out_channels"])
    ratios = level_ratios(ratio, len(boc))
    if time_embedding_ratio is None:
        time_embedding_ratio = 0.0 if isinstance(ratio, Sequence) else ratios[0]
    t_ratio = level_ratios(time_embedding_ratio, 1)[0]
    units = channel_units(cfg)
    new_boc = legalize(boc, [keep_channels(c, r, u) for c, r, u in zip(boc, ratios, units)], units)
    # Keep the surviving sinusoid frequencies identical: exponent_i = -ln(1e4) i / (half - freq_shift).
    shift = cfg.get("freq_shift", 0) - (boc[0] // 2 - new_boc[0] // 2)
    cfg.update(block_out_channels=tuple(new_boc), freq_shift=shift,
               time_embedding_dim=keep_channels(time_dim(cfg), t_ratio, units[0]))
    return cfg


def level_runs(boc: Sequence[int]) -> list[list[int]]:
    """Consecutive levels of equal width (identity shortcuts between them)."""
    runs: list[list[int]] = []
    for i, c in enumerate(boc):
        if runs and boc[runs[-1][0]] == c:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def legalize(boc: Sequence[int], widths: list[int], units: Sequence[int]) -> list[int]:
    """Keep the pattern of equal / different adjacent widths (it decides which shortcut convs exist)."""
    runs = level_runs(boc)
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


def config_macs(unet_or_config: Any, batch_size: int = 1) -> int:
    """Dense multiply-accumulates of one forward pass at ``sample_size`` (convs, linears, attention).

    :func:`lthdiff.models.macs.macs` on an uninitialised CPU model built from the config, so a
    bare config works and the global RNG is untouched.
    """
    cfg = unet_config(unet_or_config)
    return _macs(json.dumps(cfg, sort_keys=True, default=str), batch_size)


@functools.lru_cache(maxsize=64)
def _macs(cfg_json: str, batch_size: int) -> int:
    from diffusers import UNet2DModel

    from lthdiff.models.macs import macs as count

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
    unless ``time_embedding_ratio`` is given.  Check: ``1 - config_macs(pruned_config(unet, r)) / config_macs(unet)``.
    """
    if isinstance(reduction, bool) or not isinstance(reduction, numbers.Real) or not 0 < reduction < 1:
        raise ValueError(f"reduction must be a fraction of MACs removed in (0, 1), got {reduction!r}")
    cfg = unet_config(unet_or_config)
    dense = config_macs(cfg)

    def achieved(r: Any) -> float:
        return 1 - config_macs(pruned_config(cfg, r, time_embedding_ratio=time_embedding_ratio)) / dense

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

    boc, units = list(cfg["block_out_channels"]), channel_units(cfg)
    runs = level_runs(boc)
    run_units = [math.lcm(*(units[i] for i in run)) for run in runs]
    run_options = [[*range(u, boc[run[0]], u), boc[run[0]]] for run, u in zip(runs, run_units)]

    def ratios(widths: Sequence[int]) -> list[float]:
        return [round(1 - w / c, 6) for w, c in zip(widths, boc)]

    def counted(widths: Sequence[int]) -> int:
        return config_macs(pruned_config(cfg, ratios(widths), time_embedding_ratio=t_ratio))

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


