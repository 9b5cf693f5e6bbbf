"""Process-wide helpers every layer may use: stateless seeds, the accelerate process, quick mode.

Kept apart so that low layers (training, pruning, IMP) and high ones (pipeline, notebooks) share
one definition without importing each other.
"""
from __future__ import annotations

import hashlib
import numbers
import os
import sys
from typing import Any

__all__ = ["mix_seed", "process_state", "is_quick", "positive_int", "interactive", "progress_bar", "log_line",
           "machine"]


def mix_seed(*ints: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    h = hashlib.blake2b(repr(ints).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def process_state():
    """accelerate's ``PartialState`` for this process, honouring ``ACCELERATE_USE_CPU`` as ``Accelerator`` does.

    Under ``torchrun``/``accelerate launch`` it says which process is the main one; in a plain
    Python process it is the single, main process.  ``PartialState()`` alone ignores the variable,
    and whichever is created first fixes the state, so multi-process CPU runs need this one.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_quick() -> bool:
    """True when ``LTHDIFF_QUICK=1``: tiny sizes and few steps, for CI and smoke tests."""
    return os.environ.get("LTHDIFF_QUICK", "0") not in ("", "0", "false", "False")


def positive_int(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` as an int, or ValueError naming ``what`` unless it is an integer >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def interactive() -> bool:
    """True where a live progress bar is readable: a terminal (stderr is a TTY) or a Jupyter kernel.

    ``LTHDIFF_PROGRESS=1`` forces bars on, ``=0`` off.  In a log file (``lthdiff run > log.txt``),
    nohup, or CI, bars are off: each carriage-return refresh would become a line of the log.
    """
    forced = os.environ.get("LTHDIFF_PROGRESS")
    if forced is not None and forced != "":
        return forced not in ("0", "false", "False")
    if "IPython" in sys.modules:  # a Jupyter/Colab kernel (not a terminal IPython) draws widget bars
        from IPython import get_ipython

        if hasattr(get_ipython(), "kernel"):
            return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(*args: Any, disable: bool = False, **kwargs: Any):
    """``tqdm.auto.tqdm`` that stays silent outside a terminal or notebook (see :func:`interactive`).

    Callers that run long report one line when they finish (:func:`log_line`), so a log file gets
    one line per trained network instead of thousands of bar refreshes.
    """
    from tqdm.auto import tqdm

    return tqdm(*args, disable=disable or not interactive(), **kwargs)


def log_line(message: str, *, enabled: bool = True) -> None:
    """Print ``message`` (prefixed ``[lthdiff]``) when progress is wanted but no bar is shown."""
    if enabled and not interactive():
        print(f"[lthdiff] {message}", flush=True)


def machine() -> dict[str, Any]:
    """Where a result was computed: Python and torch versions, CPU (or GPU) name, torch threads."""
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
