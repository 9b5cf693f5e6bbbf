"""Multiply-accumulates of one forward pass, dense and with zero weights skipped.

Low in the package (beside :mod:`lthdiff.models`) because both the structured pruner's MAC budget
and :mod:`lthdiff.evaluation.metrics.efficiency` count them.  ``dense`` comes from
``torch.utils.flop_counter.FlopCounterMode`` (what PyTorch executes); ``effective`` scales each
Conv/Linear by its fraction of non-zero weights (what a zero-skipping kernel would execute).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ["MACCount", "macs"]


@dataclass
class MACCount:
    """Multiply-accumulates of one forward pass.

    ``dense``: everything executed (FlopCounterMode FLOPs / 2); ``effective``: with zero weights of
    Conv/Linear layers skipped; ``layers_dense``/``layers_effective``: the Conv/Linear part of each;
    ``by_layer``: {module name: (dense, effective)}.
    """

    dense: int
    effective: int
    layers_dense: int
    layers_effective: int
    by_layer: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    @property
    def reduction(self) -> float:
        """dense / effective (how many times fewer MACs a zero-skipping kernel would need)."""
        return self.dense / self.effective if self.effective else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _default_inputs(model: nn.Module, x: torch.Tensor) -> tuple:
    # diffusers UNets take (sample, timestep); a mid-schedule timestep is as costly as any other
    if hasattr(model, "config") and "sample_size" in getattr(model, "config", {}):
        return (x, torch.tensor([500], device=x.device))
    return (x,)


def _sdpa_flops(q: torch.Size, k: torch.Size, v: torch.Size, *args: Any, out_shape: Any = None,
                **kwargs: Any) -> int:
    """FLOPs of softmax(QK^T)V: the two batched matmuls, as FlopCounterMode counts CUDA attention."""
    *batch, s_q, d = q
    s_k, d_v = k[-2], v[-1]
    b = 1
    for x in batch:
        b *= x
    return 2 * b * s_q * s_k * (d + d_v)


@torch.no_grad()
def macs(model: nn.Module, input_shape: tuple[int, ...], *, inputs: tuple | None = None) -> MACCount:
    """Dense and effective MACs of ``model`` on one input of ``input_shape`` (batch included).

    Conv/Linear MACs = output elements x (in_channels / groups x kernel area) [x in_features];
    effective = that x the layer's fraction of non-zero weights.  Other ops (attention matmuls)
    count dense in both.  ``inputs``: explicit forward arguments (default: a zero tensor of
    ``input_shape``, plus a timestep for diffusers UNets).
    """
    from torch.utils.flop_counter import FlopCounterMode

    # FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel that
    # F.scaled_dot_product_attention dispatches to on CPU, which it would silently count as 0
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    custom = {cpu_sdpa: _sdpa_flops} if cpu_sdpa is not None else {}
    p = next(model.parameters())
    args = inputs if inputs is not None else _default_inputs(model, torch.zeros(input_shape, device=p.device,
                                                                                dtype=p.dtype))
    per_layer: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            w = mod.weight
            fan_in = w[0].numel()  # in/groups x kernel area for convs, in_features for Linear
            dense = out.numel() * fan_in
            eff = dense * int(torch.count_nonzero(w)) / w.numel()
            d0, e0 = per_layer.get(name, (0, 0.0))
            per_layer[name] = (d0 + dense, e0 + eff)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=custom) as counter:
            model(*args)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    dense = counter.get_total_flops() // 2
    layers_dense = sum(d for d, _ in per_layer.values())
    layers_eff = sum(e for _, e in per_layer.values())
    return MACCount(dense=int(dense), effective=int(round(dense - layers_dense + layers_eff)),
                    layers_dense=int(layers_dense), layers_effective=int(round(layers_eff)),
                    by_layer={k: (int(d), int(round(e))) for k, (d, e) in per_layer.items()})
