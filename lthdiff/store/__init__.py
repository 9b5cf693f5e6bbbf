"""Files that survive a crash: atomic writes, JSON, checksummed safetensors, integrity checks."""

from . import io
from .io import (CorruptFileError, atomic_path, load_tensors, read_json, save_tensors, tensors_digest,
                 write_json)
from . import integrity
from .integrity import check_safetensors, check_weights

__all__ = ["io", "CorruptFileError", "atomic_path", "load_tensors", "read_json", "save_tensors",
           "tensors_digest", "write_json", "integrity", "check_safetensors", "check_weights"]
