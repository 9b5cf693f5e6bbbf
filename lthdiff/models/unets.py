"""UNet presets for lthdiff: small diffusers ``UNet2DModel`` configurations and loading.

Every model lthdiff prunes is a plain ``diffusers.UNet2DModel`` so diffusers pipelines,
``save_pretrained`` and ``from_pretrained`` keep working on tickets.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from diffusers import UNet2DModel

__all__ = ["save_model", "load_model", "PRESETS", "unet", "from_pretrained", "param_count", "with_state"]

PRESETS: dict[str, dict[str, Any]] = {
    # 0.70M parameters, 16x16 grayscale: trains on 2 CPU cores at ~0.13 s/step (batch 64).
    "tiny": dict(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 48, 48),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ),
    # 32x32 grayscale (mnist5k / MNIST zero-padded to 32): sized for a GPU, still trainable on a CPU;
    # parameter count and CPU step time are measured in the README (three 2x downsamplings: 32->4).
    "mnist32": dict(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ),
    # 32x32 RGB, a few million parameters: MNIST/CIFAR on one GPU in minutes.
    "small": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
    ),
    # The configuration of google/ddpm-cifar10-32 (Ho et al. 2020), 35.7M parameters.
    "ddpm-cifar10": dict(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        dropout=0.1,
    ),
}


def unet(preset: str = "tiny", *, seed: int | None = 0, **overrides: Any) -> UNet2DModel:
    """Build a randomly initialised ``UNet2DModel`` from a named preset.

    ``overrides`` replace preset keys (e.g. ``in_channels=3, sample_size=32``).  With ``seed``
    set, the initial weights are deterministic (the rewind point of a lottery ticket).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; accepted: {sorted(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[preset])
    cfg.update(overrides)
    if seed is None:
        return UNet2DModel(**cfg)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**cfg)


def from_pretrained(repo_or_path: str | Path, subfolder: str | None = None, **kwargs: Any) -> UNet2DModel:
    """Load a diffusers ``UNet2DModel`` from a local folder or a Hub repo id.

    A pipeline repo such as ``google/ddpm-cifar10-32`` keeps the UNet in a ``unet`` subfolder;
    it is found automatically when the top level holds no model config.
    """
    path = Path(repo_or_path).expanduser()
    text = str(repo_or_path)
    # A path-like argument that does not exist is a typo, not a Hub id: say so without a network call.
    if not path.exists() and (path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1):
        raise FileNotFoundError(f"no model folder at {str(repo_or_path)!r}: pass a folder written by "
                                "save_pretrained (config.json + diffusion_pytorch_model.safetensors) or a "
                                "Hub repo id such as 'google/ddpm-cifar10-32'")
    if subfolder is None and path.is_dir() and not (path / "config.json").exists() and (path / "unet").is_dir():
        subfolder = "unet"
    if path.is_dir():  # a damaged local weights file: say so, naming it (diffusers gives a bare OSError)
        from lthdiff.store.integrity import check_weights

        check_weights(path / subfolder if subfolder else path)
    try:
        return UNet2DModel.from_pretrained(str(repo_or_path), subfolder=subfolder, **kwargs)
    except OSError as exc:
        raise OSError(
            f"could not load a UNet2DModel from {repo_or_path!r}: pass a folder written by "
            "save_pretrained (config.json + diffusion_pytorch_model.safetensors) or a Hub repo id "
            f"when the network is reachable ({exc})"
        ) from exc


def with_state(template: Any, state: Any):
    """A deep copy of ``template`` holding ``state`` (a state dict): the same network restarted from, e.g.,
    its initial weights theta_0, leaving ``template`` untouched."""
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model


def param_count(model) -> int:
    """Total number of parameters (dense count, pruned or not)."""
    return sum(p.numel() for p in model.parameters())


def save_model(model, folder: str | Path, data: dict | None = None) -> Path:
    """Save any lthdiff model to ``folder`` atomically (diffusers ``save_pretrained`` when available).
    ``data`` (the ``[data]`` section it was trained on) goes to ``lthdiff_data.json`` beside it, so a notebook that
    loads the model prunes, fine-tunes and scores it on the same data (:func:`lthdiff.config.data_of`).

    Non-diffusers models (the classifier presets) carry ``lthdiff_spec`` (how to rebuild them) and
    are written as ``model.safetensors`` + ``lthdiff_model.json``.  The folder is written under a
    temporary name and renamed, so a reader never sees half a model.
    """
    import shutil
    import tempfile

    from lthdiff.store.io import save_tensors, write_json

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(str(tmp))
        else:
            spec = getattr(model, "lthdiff_spec", None)
            if spec is None:
                raise ValueError(f"cannot save {type(model).__name__}: it is neither a diffusers model nor an "
                                 "lthdiff preset with `lthdiff_spec`")
            save_tensors(tmp / "model.safetensors", model.state_dict())
            write_json(tmp / "lthdiff_model.json", spec)
        if data is not None:
            write_json(tmp / "lthdiff_data.json", data)
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_model(folder: str | Path):
    """Load a model written by :func:`save_model` (a diffusers UNet or an lthdiff classifier preset)."""
    from lthdiff.store.io import load_tensors, read_json

    folder = Path(folder)
    if (folder / "lthdiff_model.json").exists():
        from .classifiers import build

        model = build(**read_json(folder / "lthdiff_model.json"))
        state, _ = load_tensors(folder / "model.safetensors")
        model.load_state_dict(state)
        return model
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no saved model (no config.json or lthdiff_model.json)")
    return from_pretrained(folder)
