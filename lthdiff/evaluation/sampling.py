"""Sampling from a (pruned or dense) UNet with diffusers' DDPM/DDIM schedulers.

The loop is the one diffusers' ``DDPMPipeline``/``DDIMPipeline`` run (Ho et al. 2020, Alg. 2;
Song et al. 2021, DDIM Eq. 12 with eta=0), written out so that noise comes from our own seeded
generators: the same ``seed`` gives the same images on CPU whatever ``batch_size`` is.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from lthdiff.data.datasets import to_uint8
from lthdiff.runtime import positive_int, progress_bar
from lthdiff.training.tasks import make_scheduler

__all__ = ["SAMPLERS", "scheduler", "sample", "pipeline", "image_grid", "show_grid"]

SAMPLERS = ("ddim", "ddpm")


def scheduler(sampler: str = "ddim", num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
    """A diffusers scheduler for ``sampler`` over the training noise schedule."""
    from diffusers import DDIMScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {', '.join(SAMPLERS)}")
    base = make_scheduler(num_train_timesteps, beta_schedule)
    return base if sampler == "ddpm" else DDIMScheduler.from_config(base.config)


@torch.no_grad()
def sample(
    unet: nn.Module,
    n: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 256,
    eta: float = 0.0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Generate ``n`` images as a uint8 tensor (n, C, H, W) in [0, 255].

    ``sampler="ddim"`` runs ``steps`` DDIM steps (deterministic given the initial noise when
    ``eta=0``); ``"ddpm"`` runs the ancestral sampler (``steps`` is capped at the training steps).
    ``device``: move ``unet`` there first (default: where it is).  The initial noise is drawn on the
    CPU, so the same seed starts from the same noise on any device.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    sched = scheduler(sampler)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    if device is not None:  # e.g. widgets.device(): sample on the GPU where there is one
        unet.to(device)
    device = next(unet.parameters()).device
    was_training = unet.training
    unet.eval()
    # All initial noise comes from one generator so images do not depend on batch_size.
    x_all = torch.randn((n, cfg.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
    out = []
    n_batches = math.ceil(n / batch_size)
    bar = progress_bar(total=n_batches * steps, desc=f"sample {sampler}", disable=not progress, leave=False)
    for b in range(n_batches):
        x = x_all[b * batch_size:(b + 1) * batch_size].to(device)
        # One noise generator per image (diffusers draws per-sample noise from a list), so DDPM's
        # step noise, like the initial noise, does not depend on batch_size.
        first = b * batch_size
        gen = [torch.Generator().manual_seed(seed * 1_000_003 + first + i + 1) for i in range(len(x))]
        sched.set_timesteps(min(steps, sched.config.num_train_timesteps))
        for t in sched.timesteps:
            eps = unet(x, t.to(device)).sample
            kwargs = {"eta": eta} if sampler == "ddim" else {}
            # diffusers' randn_tensor draws on the CPU generator and moves the noise to x's device.
            x = sched.step(eps, t, x, generator=gen, **kwargs).prev_sample
            bar.update(1)
        out.append(to_uint8(x.float().cpu()))
    bar.close()
    unet.train(was_training)
    return torch.cat(out)


def pipeline(unet: nn.Module, sampler: str = "ddim"):
    """A diffusers ``DDIMPipeline`` or ``DDPMPipeline`` around ``unet`` (for the HF ecosystem)."""
    from diffusers import DDIMPipeline, DDPMPipeline

    sched = scheduler(sampler)
    cls = DDIMPipeline if sampler == "ddim" else DDPMPipeline
    return cls(unet=unet, scheduler=sched)


def image_grid(images: torch.Tensor, nrow: int | None = None, *, scale: int = 1, padding: int = 1):
    """Tile uint8 images (n, C, H, W) into one PIL image; ``nrow`` images per row (default ~sqrt(n))."""
    from PIL import Image
    from torchvision.utils import make_grid

    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"image_grid expects uint8 images of shape (n, C, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(images)))))
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=255)
    img = Image.fromarray(grid[0].numpy() if images.shape[1] == 1 else grid.permute(1, 2, 0).numpy())
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def show_grid(images: torch.Tensor | Sequence[torch.Tensor], titles: Sequence[str] | None = None,
              nrow: int | None = None, figsize: tuple[float, float] | None = None, ncols: int = 4):
    """Show one grid, or several with ``titles``, in a matplotlib figure; return it.

    Several grids wrap after ``ncols`` panels (3.2 x 3.4 inches each), so six grids take two rows of a
    page instead of one 20-inch strip that a notebook shrinks to thumbnails.
    """
    import matplotlib.pyplot as plt

    groups = [images] if isinstance(images, torch.Tensor) else list(images)
    titles = list(titles or [""] * len(groups))
    if len(titles) != len(groups):
        raise ValueError(f"show_grid got {len(groups)} grids but {len(titles)} titles")
    cols = min(len(groups), positive_int(ncols, "ncols"))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=figsize or (3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, imgs, title in zip(axes.flat, groups, titles):
        ax.imshow(image_grid(imgs, nrow), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title)
    fig.tight_layout()
    return fig
