"""Atomic, checksummed file I/O for everything lthdiff writes.

Every artefact (checkpoint, mask, JSON summary, database export) is written to a temporary
file in the destination folder and then renamed over the target, so an interrupted process
never leaves a half-written file behind.  Safetensors files carry a SHA-256 of their tensor
payload in their metadata, verified on load, so a truncated or corrupted file raises
:class:`CorruptFileError` instead of silently producing a wrong model.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

__all__ = [
    "CorruptFileError",
    "atomic_path",
    "write_json",
    "read_json",
    "save_tensors",
    "load_tensors",
    "tensors_digest",
]


class CorruptFileError(RuntimeError):
    """A file on disk is truncated, corrupt, or fails its checksum."""


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic on
    POSIX and Windows.  On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON from ``path``; a malformed file raises :class:`CorruptFileError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); it may be truncated") from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (order independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        # view as bytes so bool/bf16 tensors hash without a numpy detour
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``tensors`` as safetensors atomically, with JSON ``metadata`` and a checksum.

    Metadata values that are not strings are JSON-encoded (safetensors only stores strings);
    :func:`load_tensors` decodes them again.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v, default=_json_default)
            for k, v in (metadata or {}).items()}
    meta["lthdiff_sha256"] = tensors_digest(tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_tensors(
    path: str | os.PathLike, *, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors`; return (tensors, metadata).

    Raises :class:`CorruptFileError` naming the file if it cannot be parsed or its checksum
    does not match, and ``FileNotFoundError`` if it does not exist.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for truncation
        raise CorruptFileError(f"{path} could not be read as safetensors ({exc}); "
                               "the file is truncated or corrupt") from exc
    expected = raw_meta.pop("lthdiff_sha256", None)
    if verify and expected is not None and tensors_digest(tensors) != expected:
        raise CorruptFileError(f"{path} fails its SHA-256 checksum; the file is corrupt")
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return tensors, meta


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically rename the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)
