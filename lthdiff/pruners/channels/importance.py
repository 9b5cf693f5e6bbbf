"""Channel importance criteria for structured pruning, apart from the pruner that applies them.

``magnitude`` (L-p norm), ``taylor`` (first-order Taylor of the DDPM loss), ``diff_pruning``
(Taylor summed over the informative timesteps, Fang et al. 2023, "Structural Pruning for Diffusion
Models") and ``hsic`` (:class:`HSICImportance`).  :func:`make_scorer` prepares one on a model and
returns a torch-pruning ``Importance``; like Torch-Pruning, the criterion is an argument of the pruner.
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from tqdm.auto import tqdm

from .structure import StructuredInfo

__all__ = ["IMPORTANCES", "NEEDS_DATA", "HSICImportance", "make_scorer", "timestep_grid"]

IMPORTANCES = ("magnitude", "taylor", "diff_pruning", "hsic")
NEEDS_DATA = ("taylor", "diff_pruning", "hsic")


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


def timestep_grid(timesteps: Any, num_train_timesteps: int) -> list[int]:
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


def _loss(model: nn.Module, scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """DDPM epsilon-prediction loss (Ho et al. 2020, Eq. 14)."""
    return F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)


def make_scorer(work: nn.Module, importance: str, data: Any, grid: list[int], info: StructuredInfo, *, batches: int,
            batch_size: int, threshold: float, p: int, num_train_timesteps: int, seed: int,
            progress: bool) -> tp.importance.Importance:
    """Prepare the importance (gradients or activation statistics on ``work``) and return the scorer."""
    if importance == "magnitude":
        return tp.importance.MagnitudeImportance(p=p, group_reduction="mean", normalizer=None)
    from lthdiff.data.datasets import TensorImageDataset
    from lthdiff.training.tasks import DiffusionTask, make_scheduler

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


