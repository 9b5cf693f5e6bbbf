"""The structured pruner: score channel groups, keep the best per level, rebuild a plain ``UNet2DModel``."""
from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .importance import IMPORTANCES, NEEDS_DATA, make_scorer, timestep_grid
from .structure import StructuredInfo, check_supported, config_macs, level_ratios, level_runs, pruned_config, time_dim, unet_config

__all__ = ["structured", "rewind_structured", "check_rewind_state"]

_ROOT_TYPES = [nn.Conv2d, nn.Linear]
_QKV = ("to_q", "to_k", "to_v")


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


def _graph(work: nn.Module, cfg: dict[str, Any]) -> tuple[Any, list[Any], dict[nn.Module, str]]:
    """torch-pruning's dependency graph of ``work``, its prunable channel groups (in a fixed order) and module names."""
    device = next(work.parameters()).device
    size = cfg["sample_size"] if isinstance(cfg["sample_size"], int) else cfg["sample_size"][0]
    example = {"sample": torch.zeros(1, cfg["in_channels"], size, size, device=device),
               "timestep": torch.ones(1, dtype=torch.long, device=device)}
    graph = tp.DependencyGraph().build_dependency(work, example_inputs=example)
    names = {m: n for n, m in work.named_modules()}
    groups = list(graph.get_all_groups(ignored_layers=[work.conv_out], root_module_types=_ROOT_TYPES))
    return graph, groups, names


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
    rewind_to: "Mapping[str, torch.Tensor] | nn.Module | None" = None,
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

    ``rewind_to`` (a state dict or a UNet of ``unet``'s architecture, e.g. its initialisation
    theta_0 or an early state theta_k): choose the channels on ``unet``'s (trained) weights as above,
    but return the small UNet holding ``rewind_to``'s weights at exactly those channels, a
    *structured lottery ticket* (see :func:`rewind_structured`).
    """
    from diffusers import UNet2DModel

    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; accepted: {list(IMPORTANCES)}")
    cfg = unet_config(unet)
    check_supported(cfg)
    boc = tuple(cfg["block_out_channels"])
    ratios = level_ratios(ratio, len(boc))
    if importance in NEEDS_DATA:
        if data is None:
            raise ValueError(f"importance={importance!r} needs data=... (training images in [-1, 1], e.g. "
                             "lthdiff.data.load_dataset('digits')); 'magnitude' needs none")
        for name, v, low in (("batches", batches, 1), ("batch_size", batch_size, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if importance == "diff_pruning" and not (isinstance(threshold, numbers.Real) and 0 < threshold <= 1):
        raise ValueError(f"threshold must be in (0, 1] (Diff-Pruning's relative loss threshold), got {threshold!r}")
    grid = timestep_grid(timesteps, num_train_timesteps)

    work = copy.deepcopy(unet).eval()
    graph, groups, names = _graph(work, cfg)

    # A level holding an ignored layer stays dense: the config cannot give it two widths.
    ignored = _ignored_modules(unet, work, ignored_layers)
    t_ratio = time_embedding_ratio
    for group in groups:
        if any(dep.target.module in ignored and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in group):
            lvl = _level(names[group[0].dep.target.module], len(boc))
            if lvl == "temb":
                t_ratio = 0.0
            else:  # with the levels tied to it by identity shortcuts
                for i in next(run for run in level_runs(boc) if lvl in run):
                    ratios[i] = 0.0
    if t_ratio is None:
        t_ratio = float(ratio) if not isinstance(ratio, Sequence) else 0.0
    target = pruned_config(cfg, ratios, time_embedding_ratio=t_ratio)

    info = StructuredInfo(importance, (boc, tuple(target["block_out_channels"])),
                          (time_dim(cfg), target["time_embedding_dim"]), (0, 0), (0, 0))
    scorer = make_scorer(work, importance, data, grid, info, batches=batches, batch_size=batch_size,
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
            info.blocks[name] = (n // head_dim, 1, head_dim)
            heads = _select(scores.view(-1, head_dim).sum(1), max(1, k // head_dim), 1)
            kept = [h * head_dim + j for h in heads for j in range(head_dim)]
        else:
            if n != (boc[lvl] if lvl != "temb" else info.time_embedding_dim[0]):
                raise ValueError(f"cannot prune {name}: its {n} channels do not match its level's width; "
                                 "this UNet2DModel layout is not supported by structured pruning")
            info.blocks[name] = (n, _gn_blocks(group, n), 1)
            kept = _select(scores, k, info.blocks[name][1])
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
    if rewind_to is not None:
        pruned = rewind_structured(unet, rewind_to, info)
    if not return_info:
        return pruned
    info.params = (sum(q.numel() for q in unet.parameters()), sum(q.numel() for q in pruned.parameters()))
    info.macs = (config_macs(cfg), config_macs(target))
    return pruned, info


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




# --------------------------------------------------------------------------- rewinding (structured tickets)


def check_rewind_state(unet: nn.Module, rewind_to: Any) -> dict[str, torch.Tensor]:
    """``rewind_to`` as a state dict with exactly ``unet``'s keys and shapes; ValueError/TypeError naming what is off."""
    if isinstance(rewind_to, nn.Module):
        state = dict(rewind_to.state_dict())
    elif isinstance(rewind_to, Mapping):
        state = dict(rewind_to)
    else:
        raise TypeError(f"rewind_to must be a state dict (name -> tensor) or a UNet of the pruned model's "
                        f"architecture (e.g. its initialisation theta_0), got {type(rewind_to).__name__}")
    ref = unet.state_dict()
    missing, extra = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    if missing or extra:
        raise ValueError(f"rewind_to does not fit this UNet: {len(missing)} missing keys {missing[:3]}, "
                         f"{len(extra)} unexpected keys {extra[:3]}; pass the state dict of a UNet with the same "
                         "config as the pruned one (its initialisation theta_0 or a checkpoint theta_k)")
    bad = [(k, tuple(v.shape) if torch.is_tensor(v) else type(v).__name__, tuple(ref[k].shape))
           for k, v in state.items() if not torch.is_tensor(v) or v.shape != ref[k].shape]
    if bad:
        k, got, want = bad[0]
        raise ValueError(f"rewind_to does not fit this UNet: {len(bad)} tensors differ in shape, e.g. {k!r} is "
                         f"{got} but the UNet has {want}; rewind_to must come from the same architecture (config)")
    return state


def rewind_structured(unet: nn.Module, rewind_to: Mapping[str, torch.Tensor] | nn.Module,
                      info: StructuredInfo) -> nn.Module:
    """The small UNet of ``info`` holding ``rewind_to``'s weights at the channels ``info`` kept.

    A structured lottery ticket: Frankle & Carbin (2019) rewind the surviving *weights* of a trained
    network to their initial values theta_0 (Frankle et al. 2019, "Stabilizing the LTH", to an early
    state theta_k); here the survivors are *channels*, chosen by :func:`structured` on ``unet``'s
    trained weights and recorded in ``info.kept`` (group root -> kept channel indices).

    How: the same torch-pruning plan (same dependency graph, same groups in the same order, same
    dropped indices) is applied to a copy of ``unet`` loaded with ``rewind_to``.  Replaying the plan
    rather than indexing each tensor from ``info.kept`` by hand is the robust choice: the graph knows
    every tensor a channel touches (residual adds tie several convs to one group, up-block skip
    concatenations index a norm and conv at an offset, attention prunes q/k/v by whole heads), so
    the ticket is indexed exactly as the trained weights were, for any layout ``structured`` accepts.
    ``time_embedding.linear_1`` is the one exception: the trained path refits it by least squares to
    the shorter sinusoid; the ticket instead *restricts* it to the input columns of the kept
    frequencies (the highest ``block_out_channels'[0] / 2`` of the cos and of the sin half, which
    the config keeps exactly), so every ticket weight is a weight of ``rewind_to``.  ``unet`` is not
    modified; ``rewind_to`` must have its keys and shapes (ValueError otherwise).
    """
    from diffusers import UNet2DModel

    cfg = unet_config(unet)
    boc = tuple(cfg["block_out_channels"])
    if tuple(info.block_out_channels[0]) != boc or info.time_embedding_dim[0] != time_dim(cfg):
        raise ValueError(f"info was recorded on a UNet with block_out_channels={info.block_out_channels[0]}, "
                         f"time_embedding_dim={info.time_embedding_dim[0]}; this one has {boc}, {time_dim(cfg)}")
    state = check_rewind_state(unet, rewind_to)
    work = copy.deepcopy(unet).eval()
    work.load_state_dict(state, strict=True)
    graph, groups, names = _graph(work, cfg)
    roots = [names[g[0].dep.target.module] for g in groups]
    if set(roots) != set(info.kept):
        raise ValueError(f"info.kept names channel groups {sorted(set(info.kept) - set(roots))[:3]} this UNet does "
                         f"not have (or lacks {sorted(set(roots) - set(info.kept))[:3]}); pass the StructuredInfo "
                         "that structured(..., return_info=True) returned for this UNet")
    plans = []
    for group, name in zip(groups, roots):
        n = len(group[0].idxs)
        drop = sorted(set(range(n)) - set(info.kept[name]))
        if drop:
            plans.append((group[0].dep.target.module, group[0].dep.handler, drop))
    for root, handler, drop in plans:
        graph.get_pruning_group(root, handler, drop).prune()

    new_boc = tuple(info.block_out_channels[1])
    half, new_half = boc[0] // 2, new_boc[0] // 2
    target = dict(cfg, block_out_channels=new_boc, time_embedding_dim=info.time_embedding_dim[1],
                  freq_shift=cfg.get("freq_shift", 0) - (half - new_half))
    lin = work.time_embedding.linear_1
    if new_half != half:
        cols = torch.tensor([*range(new_half), *range(half, half + new_half)], device=lin.weight.device)
        lin.weight = nn.Parameter(lin.weight.detach().index_select(1, cols))
        lin.in_features = len(cols)
    with torch.device("meta"):
        small = UNet2DModel(**target)
    small.load_state_dict(work.state_dict(), strict=True, assign=True)
    small.train(unet.training)
    return small
