"""Cheap integrity checks of weight files before a library (diffusers) reads them.

diffusers reports a truncated ``diffusion_pytorch_model.safetensors`` as a bare ``OSError``
("Unable to load weights from checkpoint file") that does not say the file is damaged.  The
safetensors layout is an 8-byte little-endian header length, a JSON header whose
``data_offsets`` give each tensor's byte range, then the data; checking the header parses and the
file is as long as the largest offset finds truncation and most corruption without reading tensors.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .io import CorruptFileError

__all__ = ["check_safetensors", "check_weights"]

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header size


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise :class:`~lthdiff.store.io.CorruptFileError` naming ``path`` if it is not a complete safetensors file."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            problem = f"{size} bytes, shorter than the 8-byte header length"
        else:
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                problem = f"header of {n} bytes does not fit in the {size}-byte file"
            else:
                try:
                    header = json.loads(fh.read(n))
                    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
                except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                    problem = f"unreadable header ({type(exc).__name__}: {exc})"
                else:
                    need = 8 + n + max(ends, default=0)
                    if size < need:
                        problem = f"{size} bytes, but its header describes {need} bytes"
    if problem is not None:
        raise CorruptFileError(f"{path} is truncated or corrupt ({problem}); re-save or re-download it")


def check_weights(folder: str | os.PathLike) -> None:
    """:func:`check_safetensors` on every ``*.safetensors`` file directly in ``folder``."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        check_safetensors(f)
