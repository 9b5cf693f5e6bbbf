"""2:4 semi-structured sparse ``nn.Linear`` layers on NVIDIA sparse tensor cores.

A 2:4 ticket (:func:`lthdiff.pruners.magnitude` with ``pattern="2:4"``) keeps 2 of every 4 consecutive
input weights, the pattern Ampere and later GPUs (sm80+) multiply about twice as fast as dense
(Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks", arXiv 2104.08378).  PyTorch exposes
it as ``torch.sparse.to_sparse_semi_structured`` (half precision, CUDA, linear layers); this module
converts the eligible ``nn.Linear`` layers of a model and says plainly why it cannot where it cannot
(no CUDA GPU, an older GPU, weights not 2:4, a shape the kernels refuse).  Convolutions stay dense.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lthdiff import masks as M

__all__ = ["unavailable_reason", "is_24", "to_semi_structured"]

MIN_CAPABILITY = (8, 0)


def unavailable_reason() -> str | None:
    """None when 2:4 acceleration can run here, else a sentence saying what is missing.

    Needs a CUDA GPU of compute capability >= 8.0 (sm80+: A100, H100, RTX 30xx/40xx) and a torch with
    ``torch.sparse.to_sparse_semi_structured`` (>= 2.1).
    """
    try:
        from torch.sparse import to_sparse_semi_structured  # noqa: F401
    except ImportError:
        return (f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured; 2:4 acceleration "
                "needs torch >= 2.1 and a CUDA GPU with compute capability >= 8.0 (sm80+)")
    if not torch.cuda.is_available():
        return ("2:4 semi-structured acceleration needs a CUDA GPU with compute capability >= 8.0 (sm80+, e.g. "
                "A100/H100); no CUDA device is available here (torch.cuda.is_available() is False)")
    cap = torch.cuda.get_device_capability()
    if cap < MIN_CAPABILITY:
        return (f"2:4 semi-structured acceleration needs compute capability >= 8.0 (sm80+); "
                f"{torch.cuda.get_device_name()} is sm{cap[0]}{cap[1]}")
    return None


def is_24(weight: torch.Tensor) -> bool:
    """Whether ``weight`` (out, in) keeps at most 2 nonzeros in every group of 4 consecutive input entries."""
    return M.nm_eligible(weight.shape, 4) and bool((M.nm_groups(weight != 0, 4).sum(dim=1) <= 2).all())


def to_semi_structured(model: nn.Module, *, dtype: torch.dtype = torch.float16) -> dict[str, Any]:
    """Move ``model`` to CUDA in ``dtype`` and replace each 2:4-sparse ``nn.Linear`` weight by a
    ``SparseSemiStructuredTensor`` (in place; inference only: the weights no longer train).

    Returns ``{"converted": [module names], "skipped": {module name: reason}}``.  Raises ``RuntimeError``
    with :func:`unavailable_reason` on a machine without an sm80+ CUDA GPU (a CPU cannot run it).
    ``dtype``: ``torch.float16`` or ``torch.bfloat16`` (the types the sparse kernels take).
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16 for 2:4 kernels, got {dtype}")
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    from torch.sparse import to_sparse_semi_structured

    model.to("cuda", dtype)
    converted, skipped = [], {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        w = mod.weight.detach()
        if not is_24(w):
            skipped[name] = "weights are not 2:4 sparse (prune with pruners.magnitude(..., pattern='2:4') first)"
            continue
        try:
            mod.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
        except (RuntimeError, ValueError) as exc:  # shapes the kernels refuse (e.g. too few rows/columns)
            skipped[name] = f"to_sparse_semi_structured refused shape {tuple(w.shape)}: {exc}"
            continue
        converted.append(name)
    return {"converted": converted, "skipped": skipped}
