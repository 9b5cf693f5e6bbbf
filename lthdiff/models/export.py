"""A UNet for serving: exported to ONNX (``torch.onnx``) and run by ONNX Runtime, a drop-in for sampling.

:func:`export_onnx` writes ``(sample, timestep) -> noise`` with a dynamic batch (opset 17, the TorchScript-based
exporter, which handles diffusers' UNet2DModel).  :class:`OnnxUNet` wraps an ONNX Runtime session so that
:func:`lthdiff.evaluation.sampling.sample` runs it unchanged (it has the UNet's ``config`` and returns
``.sample``).  A pruned UNet exports the same way: channel-pruned (structured) networks are smaller graphs; an
unstructured ticket's zeros are dense zeros to ONNX Runtime.  ``onnxruntime`` is the optional extra
``lthdiff[onnx]``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

__all__ = ["export_onnx", "OnnxUNet", "OPSET"]

OPSET = 17


class _Eps(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep).sample


def export_onnx(unet: nn.Module, path: str | Path, *, opset: int = OPSET) -> Path:
    """Export a diffusers ``UNet2DModel`` to ONNX at ``path`` (written to a temporary file, then renamed):
    inputs ``sample`` (B, C, H, W) float32 and ``timestep`` (B,) int64, output ``noise``; B is dynamic."""
    import warnings

    from lthdiff.store.io import atomic_path

    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    model = _Eps(copy.deepcopy(unet).float().cpu().eval())
    x = torch.zeros(2, cfg.in_channels, size, size)
    t = torch.tensor([1, 500], dtype=torch.int64)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings on diffusers' shape checks
        torch.onnx.export(model, (x, t), str(tmp), input_names=["sample", "timestep"], output_names=["noise"],
                          dynamic_axes={"sample": {0: "batch"}, "timestep": {0: "batch"}, "noise": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return path


class OnnxUNet(nn.Module):
    """An ONNX-exported UNet run by ONNX Runtime (CPU), callable as ``unet(x, t).sample`` like the original."""

    def __init__(self, path: str | Path, config: Any, *, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("OnnxUNet needs ONNX Runtime: pip install 'lthdiff[onnx]'") from exc
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = opts.inter_op_num_threads = int(threads)
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.config = config
        self._device = nn.Parameter(torch.zeros(1), requires_grad=False)  # where sample() draws noise: the CPU

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int) -> SimpleNamespace:
        t = torch.as_tensor(timestep, dtype=torch.int64).reshape(-1).expand(sample.shape[0]).contiguous()
        out = self.session.run(None, {"sample": sample.detach().float().cpu().numpy(), "timestep": t.numpy()})[0]
        return SimpleNamespace(sample=torch.from_numpy(out))
