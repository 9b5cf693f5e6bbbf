"""TensorBoard event files of an IMP run, under ``run_dir/tb`` (``tensorboard --logdir runs/``).

:func:`log_round` (called by :func:`lthdiff.lottery.imp.run_imp` when a round is complete) writes each
network's training-loss curve (``loss/round_XX/<variant>``, x = training step), the round's
sparsity (``sparsity/<variant>``) and per-block sparsity (``block_sparsity/<block>``), x = round.
:func:`log_eval` (called by :func:`lthdiff.pipeline.evaluate_run`) writes FID/KID and the paired
metrics (``eval/<metric>/<variant>``, x = round) and the sample grid (``samples/<variant>``).
Only the main process writes (under ``accelerate launch`` the others return at once); a resumed
run appends to the same folder.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

__all__ = ["log_dir", "log_round", "log_eval", "block_of"]

_WRITERS: dict[str, Any] = {}


def log_dir(run_dir: str | Path) -> Path:
    """Where a run's event files go: ``run_dir/tb``."""
    return Path(run_dir) / "tb"


def _writer(run_dir: str | Path):
    """A cached ``SummaryWriter`` on the main process, else None."""
    from lthdiff.runtime import process_state

    if not process_state().is_main_process:
        return None
    key = str(log_dir(run_dir).resolve())
    if key not in _WRITERS:
        from torch.utils.tensorboard import SummaryWriter

        _WRITERS[key] = SummaryWriter(key)
    return _WRITERS[key]


def block_of(param: str) -> str:
    """The UNet block a parameter belongs to: ``down_blocks.1.resnets.0.conv1.weight`` -> ``down_blocks.1``."""
    m = re.match(r"((?:down|up)_blocks\.\d+|mid_block|[^.]+)", param)
    return m.group(1) if m else param


def _block_sparsity(layer_sparsity: Mapping[str, float], layer_sizes: Mapping[str, int] | None) -> dict[str, float]:
    """Mean sparsity per block (weighted by layer size when known)."""
    tot: dict[str, float] = {}
    cnt: dict[str, float] = {}
    for name, s in layer_sparsity.items():
        w = float((layer_sizes or {}).get(name, 1))
        b = block_of(name)
        tot[b] = tot.get(b, 0.0) + w * float(s)
        cnt[b] = cnt.get(b, 0.0) + w
    return {b: tot[b] / cnt[b] for b in tot}


def log_round(run_dir: str | Path, info: Any) -> None:
    """Loss curves and sparsities of a completed round (a :class:`lthdiff.lottery.runs.RoundInfo`) and its controls."""
    from lthdiff.store.io import read_json

    w = _writer(run_dir)
    if w is None:
        return
    r = int(info.round)
    for net in [info, *info.controls.values()]:
        losses_path = Path(net.dir) / "losses.json"
        if losses_path.exists():
            for step, value in enumerate(read_json(losses_path), 1):
                w.add_scalar(f"loss/round_{r:02d}/{net.variant}", float(value), step)
        w.add_scalar(f"sparsity/{net.variant}", float(net.sparsity), r)
        w.add_scalar(f"final_loss/{net.variant}", float(net.final_loss), r)
    sizes = None
    try:
        mask = info.load_mask()
        sizes = {k: int(v.numel()) for k, v in mask.items()}
    except Exception:  # a missing mask only loses the size weighting
        pass
    for block, s in _block_sparsity(info.summary.get("layer_sparsity", {}), sizes).items():
        w.add_scalar(f"block_sparsity/{block}", s, r)
    w.flush()


def log_eval(run_dir: str | Path, round: int, variant: str, metrics: Mapping[str, Any],
             samples_png: str | Path | None = None) -> None:
    """Numeric evaluation metrics (FID, KID, paired SSIM/PSNR/perceptual...) and the sample grid of one network."""
    w = _writer(run_dir)
    if w is None:
        return
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            w.add_scalar(f"eval/{name}/{variant}", float(value), int(round))
    if samples_png is not None and Path(samples_png).exists():
        import numpy as np
        from PIL import Image

        img = np.asarray(Image.open(samples_png).convert("RGB"))
        w.add_image(f"samples/{variant}", img, int(round), dataformats="HWC")
    w.flush()
