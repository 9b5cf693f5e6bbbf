"""What a sparse ticket saves: parameters, MACs, sampling speed, memory and file size.

Unstructured sparsity only saves compute on kernels that skip zeros, so MACs are reported twice:
``dense`` (what PyTorch actually executes, from ``torch.utils.flop_counter.FlopCounterMode``) and
``effective`` (each Conv/Linear scaled by its fraction of non-zero weights, i.e. what a
sparse kernel would execute; attention matmuls, which have no weights, stay dense).  Wall-clock
speed is measured on dense kernels and so does not shrink with sparsity: that gap is the point.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.nn as nn

from lthdiff.models.macs import macs

__all__ = ["ParamCounts", "param_counts", "median_time", "sampling_speed", "peak_memory",
           "checkpoint_sizes", "summary"]


class ParamCounts(NamedTuple):
    """``total`` parameters and how many are ``nonzero``."""

    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.total if self.total else 0.0


def param_counts(model: nn.Module) -> ParamCounts:
    """Total and non-zero parameter counts (all parameters: pruned weights count as zeros)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return ParamCounts(total, nonzero)


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, cuda: bool = False) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int, cuda: bool) -> float:
    return median_time(fn, repeats=repeats, warmup=warmup, cuda=cuda)


def sampling_speed(unet: nn.Module, *, batch_size: int = 16, steps: int = 10, sampler: str = "ddim",
                   repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Sampling latency (seconds for one image, batch 1) and throughput (images/s at ``batch_size``).

    Medians of ``repeats`` timed runs after ``warmup`` runs of ``steps``-step sampling on the
    model's device; per-step figures divide by ``steps``.
    """
    from lthdiff.evaluation.sampling import sample

    cuda = next(unet.parameters()).is_cuda
    t1 = _median_time(lambda: sample(unet, 1, sampler=sampler, steps=steps, progress=False), repeats, warmup, cuda)
    tb = _median_time(lambda: sample(unet, batch_size, sampler=sampler, steps=steps, batch_size=batch_size,
                                     progress=False), repeats, warmup, cuda)
    return {"latency_s": t1, "latency_s_per_step": t1 / steps, "throughput_img_per_s": batch_size / tb,
            "batch_size": batch_size, "steps": steps}


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_peak_bytes() -> int | None:
    return _proc_status_bytes("VmHWM")


def _reset_rss_peak() -> bool:
    try:  # Linux >= 4.0: writing 5 resets the peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    # Some kernels (and VMs) accept the write but keep the old peak: then the peak is the process's.
    hwm, rss = _proc_status_bytes("VmHWM"), _proc_status_bytes("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + (16 << 20)


def peak_memory(fn: Callable[[], Any], *, cuda: bool | None = None) -> dict[str, Any]:
    """Peak memory while running ``fn()``: CPU resident set (bytes) and CUDA max allocated (bytes).

    The CPU peak is the process's VmHWM, reset before ``fn`` where Linux allows it
    (``cpu_peak_is_process_lifetime`` says when it could not be, e.g. macOS: then it is ru_maxrss).
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    reset = _reset_rss_peak()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    fn()
    out: dict[str, Any] = {"cuda_max_allocated_bytes": None}
    if cuda:
        torch.cuda.synchronize()
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    rss = _rss_peak_bytes()
    if rss is None:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        reset = False
    out.update(cpu_peak_rss_bytes=rss, cpu_peak_is_process_lifetime=not reset)
    return out


def checkpoint_sizes(model: nn.Module, mask: Mapping[str, torch.Tensor], *, fp16: bool = False) -> dict[str, Any]:
    """Bytes of the dense fp32 safetensors of ``model`` vs its compressed ticket, and their ratio."""
    from safetensors.torch import save_file

    from .compress import save_compressed

    with tempfile.TemporaryDirectory() as d:
        dense = Path(d) / "dense.safetensors"
        save_file({k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu()
                   for k, v in model.state_dict().items()}, str(dense))
        ticket = save_compressed(Path(d) / "ticket.safetensors", model, mask, fp16=fp16)
        dense_b, ticket_b = dense.stat().st_size, ticket.stat().st_size
    return {"dense_fp32_bytes": dense_b, "compressed_bytes": ticket_b, "compression_ratio": dense_b / ticket_b,
            "fp16": fp16}


def summary(model: nn.Module, input_shape: tuple[int, ...], mask: Mapping[str, torch.Tensor] | None = None, *,
            speed: bool = False) -> dict[str, Any]:
    """Flat dict of parameters, MACs and checkpoint sizes (and sampling speed with ``speed=True``).

    ``mask`` defaults to all prunable weights kept (:func:`lthdiff.masks.ones`).
    """
    from lthdiff import masks as M

    mask = M.ones(model) if mask is None else mask
    pc, mc = param_counts(model), macs(model, input_shape)
    out: dict[str, Any] = {"params_total": pc.total, "params_nonzero": pc.nonzero, "macs_dense": mc.dense,
                           "macs_effective": mc.effective, "macs_reduction": mc.reduction}
    out.update({k: v for k, v in checkpoint_sizes(model, mask).items() if k != "fp16"})
    if speed:
        out.update(sampling_speed(model))
    return out
