"""Masks as bit-packed files: 1 bit a weight (``np.packbits``) in one ``.npz`` with the layer order, the shapes and
the mask's digest, checked on load.  The compact form a study records its masks in (beside :func:`lthdiff.masks.save`,
the safetensors form of a run folder): a 96.9 %-sparse tiny-UNet mask is ~20 kB.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from lthdiff.store.io import tensors_digest, write_with

__all__ = ["save_packed", "load_packed"]


def save_packed(path: str | Path, mask: Mapping[str, torch.Tensor]) -> Path:
    """A bool mask as bit-packed arrays (``np.packbits``, 1 bit a weight) in one ``.npz``, atomically,
    with the layer order, the shapes and :func:`lthdiff.store.io.tensors_digest` of the mask."""
    arrays: dict[str, np.ndarray] = {}
    meta = {"order": list(mask), "shapes": {k: list(v.shape) for k, v in mask.items()},
            "digest": tensors_digest(mask)}
    for i, (name, m) in enumerate(mask.items()):
        if m.dtype != torch.bool:
            raise ValueError(f"mask entry {name!r} has dtype {m.dtype}; masks are bool")
        arrays[f"m{i}"] = np.packbits(m.detach().cpu().numpy().reshape(-1))
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(f, **arrays)

    return write_with(path, write)


def load_packed(path: str | Path) -> dict[str, torch.Tensor]:
    """A mask written by :func:`save_packed`, checked against its recorded digest."""
    from lthdiff.store.io import CorruptFileError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no recorded mask {path}")
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            mask = {}
            for i, name in enumerate(meta["order"]):
                shape = meta["shapes"][name]
                bits = np.unpackbits(z[f"m{i}"])[: int(np.prod(shape))]
                mask[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
    except (ValueError, KeyError, OSError) as exc:
        raise CorruptFileError(f"{path} could not be read as a recorded mask ({exc})") from exc
    if tensors_digest(mask) != meta["digest"]:
        raise CorruptFileError(f"{path} fails its digest check; the recorded mask is corrupt")
    return mask
