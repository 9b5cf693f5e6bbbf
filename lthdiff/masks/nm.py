"""N:M (semi-structured) sparsity: at most N of every M consecutive input weights kept.

The pattern NVIDIA's sparse tensor cores accelerate at 2:4 (Mishra et al. 2021, "Accelerating Sparse
Deep Neural Networks"; torch ``to_sparse_semi_structured``).  Groups run along the input dimension
(``shape[1]``: in_features of a Linear, input channels of a conv at fixed (out, kh, kw)).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

__all__ = ["parse_nm", "nm_eligible", "nm_groups", "nm_ungroup", "nm_violations", "check_nm"]


def parse_nm(pattern: Any) -> tuple[int, int]:
    """``"N:M"`` -> ``(N, M)``: at most N of every M consecutive input weights kept (``"2:4"``: 2:4 sparsity).

    Accepted: a string of two integers ``0 < N < M`` joined by a colon; anything else raises ``ValueError``.
    """
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"pattern must be a string 'N:M' of two integers with 0 < N < M (e.g. '2:4', the "
                         f"pattern sparse tensor cores accelerate), got {pattern!r}")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern!r} is not a valid N:M: it needs 0 < N < M (N kept out of every M); "
                         "accepted e.g. '2:4', '1:4', '4:8'")
    return n, m


def nm_eligible(shape: Sequence[int], m: int) -> bool:
    """Whether a weight of ``shape`` can carry an N:M pattern: at least 2 dims and ``shape[1]`` (input
    features / input channels) a multiple of ``m``."""
    return len(shape) >= 2 and shape[1] > 0 and shape[1] % m == 0


def nm_groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """View ``t`` (a weight or its mask) as ``(groups, m)``: M consecutive *input* entries per row.

    Linear ``(out, in)``: groups along ``in``, the contiguous last dimension, as
    ``torch.sparse.to_sparse_semi_structured`` and NVIDIA ASP.  Conv ``(out, in, kh, kw)``: groups along
    the input channels at fixed ``(out, kh, kw)``, the layout of NVIDIA ASP (``m4n2_1d`` permutes convs to
    ``(kh, kw, out, in)``), because channels-last implicit-GEMM convolutions, which sparse tensor cores
    accelerate, reduce over ``in`` contiguously.  Requires :func:`nm_eligible`.  Inverse: :func:`nm_ungroup`.
    """
    if not nm_eligible(t.shape, m):
        raise ValueError(f"a tensor of shape {tuple(t.shape)} cannot be split into groups of {m} input entries; "
                         f"accepted: >= 2 dims with shape[1] a multiple of {m}")
    return t.movedim(1, -1).reshape(-1, m)


def nm_ungroup(groups: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`nm_groups`: ``(groups, m)`` back to a tensor of ``shape``."""
    moved = (shape[0], *shape[2:], shape[1])
    return groups.reshape(moved).movedim(-1, 1)


def nm_violations(mask: Mapping[str, torch.Tensor], n: int, m: int) -> dict[str, int]:
    """Per eligible layer of ``mask``, the number of M-groups (:func:`nm_groups`) keeping more than N weights.

    Layers that cannot carry the pattern (:func:`nm_eligible` false: the pruner leaves them out) are not
    listed.  An empty dict of zeros means the mask satisfies N:M everywhere it can.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"need integers 0 < n < m, got n={n!r}, m={m!r}")
    return {name: int((nm_groups(t, m).sum(dim=1) > n).sum()) for name, t in mask.items() if nm_eligible(t.shape, m)}


def check_nm(mask: Mapping[str, torch.Tensor], n: int, m: int) -> None:
    """Raise ``ValueError`` naming the layers where some group of M input weights keeps more than N.

    See :func:`nm_violations` for the grouping and which layers are checked.
    """
    bad = {k: v for k, v in nm_violations(mask, n, m).items() if v}
    if bad:
        raise ValueError(f"mask violates {n}:{m} sparsity in {len(bad)} layer(s): "
                         + ", ".join(f"{k} ({v} groups keep > {n})" for k, v in list(bad.items())[:5]))
