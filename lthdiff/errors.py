"""Errors that mean "bad input" (the CLI reports them in one line, exit status 2)."""
from __future__ import annotations

__all__ = ["DatasetUnavailableError"]


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable (no network, unwritable or wrong ``root``)."""
