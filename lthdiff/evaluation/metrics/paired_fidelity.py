"""Paired fidelity of a (pruned) model to its dense reference: SSIM, PSNR and a perceptual distance.

DDIM with ``eta=0`` (Song et al. 2021) is deterministic given the initial noise, so the dense model
and a pruned one sampled from the *same* noise give image pairs that should match when pruning
preserved the function.  Diff-Pruning (Fang et al. 2023, "Structural Pruning for Diffusion Models",
Table 1) scores pruned DDPMs this way and reports SSIM 0.932 for its pruned CIFAR-10 model.

Per pair we compute SSIM (Wang et al. 2004, 11x11 Gaussian window, torchmetrics) and PSNR (dB, data
range 1, capped at :data:`PSNR_CAP` for identical images), then average over pairs.  The perceptual
distance is LPIPS (Zhang et al. 2018, torchmetrics, AlexNet backbone) when its backbone weights are
available (e.g. Colab), else an offline LPIPS-style distance over the layers of the domain extractor
``lthdiff-digits``: channel-normalised activations, squared differences averaged over space and
over layers, unweighted (LPIPS before its learned linear heads).  ``perceptual_kind`` names the
measure used; values of different kinds are not comparable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["paired", "paired_images", "feature_distance", "lpips_available", "dense_reference", "paired_for",
           "PERCEPTUAL_KINDS", "PSNR_CAP"]

PERCEPTUAL_KINDS = ("auto", "lpips-alex", "lthdiff-digits-layers")
PSNR_CAP = 100.0  # dB; PSNR of identical images is infinite, which JSON and SQL cannot store
_EPS = 1e-10


def _as_unit(x: torch.Tensor, what: str) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images (N, C, H, W) -> float32 in [0, 1]."""
    if x.ndim != 4:
        raise ValueError(f"{what} must be images of shape (N, C, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float().cpu() / 255.0
    if x.is_floating_point():
        return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    raise ValueError(f"{what} must be uint8 in [0, 255] or float in [-1, 1], got dtype {x.dtype}")


def lpips_available() -> bool:
    """Whether LPIPS can run without hanging: torchmetrics importable and the AlexNet backbone weights in
    the torch hub cache, or downloadable (a 2 s connection test, skipped when ``LTHDIFF_OFFLINE`` is set)."""
    try:
        import torchmetrics.image.lpip  # noqa: F401
        from torchvision.models import AlexNet_Weights
    except Exception:
        return False
    url = AlexNet_Weights.IMAGENET1K_V1.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).exists():
        return True
    if os.environ.get("LTHDIFF_OFFLINE", "").lower() not in ("", "0", "false", "no"):
        return False
    from .fidelity import online

    return online()


def _lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair LPIPS (AlexNet) of images in [0, 1]; grayscale repeated to RGB, images below 64 px upsampled
    (bilinear) so that AlexNet's strided layers keep a spatial extent."""
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity as lpips

    if a.shape[1] == 1:
        a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    if a.shape[-1] < 64:
        a, b = (F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) for x in (a, b))
    return lpips(a.contiguous(), b.contiguous(), net_type="alex", normalize=True, reduction="none").flatten()


def feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Offline LPIPS-style distance per pair (N,) over ``lthdiff-digits``' three conv layers.

    ``a``, ``b``: images in [0, 1] (N, 1 or 3, H, W), resized to the extractor's 16x16 grayscale input.
    Each layer's activations are unit-normalised over channels at every position (as LPIPS does),
    squared differences are summed over channels, averaged over space, then averaged over layers
    (no learned weights).  0 for identical images.
    """
    from .extractor import to_input

    net = _net()
    to_u8 = lambda x: (x * 255).round().clamp(0, 255).to(torch.uint8)  # noqa: E731
    xa, xb = to_input(to_u8(a)), to_input(to_u8(b))
    total = torch.zeros(len(a))
    n_layers = 0
    with torch.no_grad():
        for fa, fb in zip(_layers(net, xa), _layers(net, xb)):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + _EPS)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + _EPS)
            total += (na - nb).pow(2).sum(1).mean((1, 2))
            n_layers += 1
    return total / n_layers


_NET: list[nn.Module] = []


def _net() -> nn.Module:
    from .extractor import load_net

    if not _NET:
        _NET.append(load_net())
    return _NET[0]


def _layers(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Activations after each conv + ReLU of :class:`~lthdiff.evaluation.metrics.extractor.DigitsNet`."""
    h1 = F.relu(net.conv1(x))
    h2 = F.relu(net.conv2(h1))
    h3 = F.relu(net.conv3(F.max_pool2d(h2, 2)))
    return [h1, h2, h3]


def paired_images(reference: torch.Tensor, images: torch.Tensor, *, perceptual: str = "auto") -> dict[str, Any]:
    """SSIM, PSNR (dB) and perceptual distance between image pairs ``reference[i]`` / ``images[i]``.

    Images: uint8 [0, 255] or float [-1, 1], (N, C, H, W), same shape.  ``perceptual``: one of
    :data:`PERCEPTUAL_KINDS` (``"auto"``: LPIPS when :func:`lpips_available`, else the offline distance).
    Returns ``{ssim, psnr, perceptual, perceptual_kind, n}``, each value the mean over pairs.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    if perceptual not in PERCEPTUAL_KINDS:
        raise ValueError(f"unknown perceptual {perceptual!r}; accepted: {', '.join(PERCEPTUAL_KINDS)}")
    a, b = _as_unit(reference, "reference"), _as_unit(images, "images")
    if a.shape != b.shape:
        raise ValueError(f"reference {tuple(a.shape)} and images {tuple(b.shape)} differ in shape")
    if len(a) < 1:
        raise ValueError("need at least one image pair")
    kernel = min(11, a.shape[-1] - (1 - a.shape[-1] % 2))  # odd window no larger than the image
    ssim = ssim_fn(b, a, data_range=1.0, kernel_size=kernel, reduction="none")
    mse = (a - b).pow(2).mean((1, 2, 3))
    psnr = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(_EPS)), torch.full_like(mse, PSNR_CAP))
    kind = perceptual
    if kind == "auto":
        kind = "lpips-alex" if lpips_available() else "lthdiff-digits-layers"
    dist = _lpips(a, b) if kind == "lpips-alex" else feature_distance(a, b)
    return {"ssim": float(ssim.mean()), "psnr": float(psnr.clamp_max(PSNR_CAP).mean()),
            "perceptual": float(dist.mean()), "perceptual_kind": kind, "n": len(a)}


def paired(reference: nn.Module | torch.Tensor, model: nn.Module, *, n: int = 64, steps: int = 50, seed: int = 0,
           batch_size: int = 256, perceptual: str = "auto", progress: bool = False) -> dict[str, Any]:
    """Paired fidelity of ``model`` to ``reference`` (the dense model): both sampled with DDIM (eta=0)
    from the same ``n`` initial noises (``seed``) for ``steps`` steps, then compared pair by pair.

    ``reference`` may also be its images already sampled with the same ``n``/``steps``/``seed``
    (to sample the dense model once for many pruned ones).  Returns ``{ssim, psnr, perceptual,
    perceptual_kind, n, steps, seed}``: SSIM in [-1, 1] (1 = identical), PSNR in dB (capped at 100),
    perceptual distance >= 0 (0 = identical) of the kind named.  Identical models give SSIM 1 and
    perceptual 0.  Protocol of Diff-Pruning (Fang et al. 2023).
    """
    from lthdiff.evaluation.sampling import sample

    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    kw = dict(sampler="ddim", steps=steps, seed=seed, batch_size=batch_size, progress=progress)
    ref = reference if isinstance(reference, torch.Tensor) else sample(reference, n, **kw)
    if len(ref) != n:
        raise ValueError(f"reference holds {len(ref)} images but n={n}")
    out = paired_images(ref, sample(model, n, **kw), perceptual=perceptual)
    return {**out, "steps": steps, "seed": seed}


class _DenseReference:
    """The dense (round 0) network of an IMP run and its DDIM samples, sampled on first use only."""

    def __init__(self, result: Any, n: int, steps: int, seed: int) -> None:
        self.result, self.n, self.steps, self.seed = result, n, steps, seed
        self._images: torch.Tensor | None = None

    @property
    def images(self) -> torch.Tensor:
        if self._images is None:
            from lthdiff.evaluation.sampling import sample

            dense = self.result.rounds[0].load_model(ema=True)
            self._images = sample(dense, self.n, sampler="ddim", steps=self.steps, seed=self.seed, progress=False)
        return self._images


def dense_reference(result: Any, *, n: int, steps: int, seed: int) -> _DenseReference:
    """A lazily sampled reference for :func:`paired_for`: round 0 (EMA) of an :class:`lthdiff.lottery.runs.IMPResult`."""
    if not result.rounds or result.rounds[0].round != 0:
        raise ValueError(f"{result.run_dir} has no dense round 0 to compare with")
    return _DenseReference(result, n, steps, seed)


def paired_for(dense: _DenseReference, model: nn.Module) -> dict[str, Any]:
    """Paired fidelity of ``model`` to a run's dense model, as stored in ``metrics.json``:
    ``{"metrics": {ssim, psnr, perceptual}, "perceptual_kind", "n", "steps", "seed", "reference"}``."""
    out = paired(dense.images, model, n=dense.n, steps=dense.steps, seed=dense.seed)
    return {"metrics": {k: out[k] for k in ("ssim", "psnr", "perceptual")}, "perceptual_kind": out["perceptual_kind"],
            "n": out["n"], "steps": dense.steps, "seed": dense.seed, "reference": "round_00 (dense, EMA)"}


def run_note(result: Any) -> str | None:
    """One sentence for a run's report saying what the ``ssim``/``psnr``/``perceptual`` columns are, or
    None when no network of the :class:`lthdiff.lottery.runs.IMPResult` has paired metrics."""
    from lthdiff.store.io import read_json

    for rnd in result.rounds:
        for info in [rnd, *rnd.controls.values()]:
            path = Path(info.dir) / "metrics.json"
            pair = read_json(path).get("paired") if path.exists() else None
            if isinstance(pair, dict):
                return (f"ssim, psnr (dB) and perceptual compare each pruned network's samples with the dense "
                        f"model's from the same DDIM noise ({pair.get('n')} pairs, {pair.get('steps')} steps); "
                        f"perceptual = {pair.get('perceptual_kind')} (0 = identical), SSIM 1 = identical.")
    return None
