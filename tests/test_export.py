"""A UNet exported to ONNX runs in ONNX Runtime with torch's outputs (within 1e-4), pruned ones included, and samples
through lthdiff's sampler unchanged."""
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from lthdiff import masks as M  # noqa: E402
from lthdiff import pruners  # noqa: E402
from lthdiff.cli import main  # noqa: E402
from lthdiff.evaluation.sampling import sample  # noqa: E402
from lthdiff.models import OnnxUNet, export_onnx, save_model, unet  # noqa: E402

TOL = 1e-4  # float32 kernels differ in summation order; measured ~1e-6 on the tiny UNet


def _check(model, path, batch=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 16, 16, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    with torch.no_grad():
        want = model.eval()(x, t).sample
    got = OnnxUNet(export_onnx(model, path), model.config, threads=1)(x, t).sample
    assert got.shape == want.shape and (got - want).abs().max() < TOL


def test_dense_unstructured_and_channel_pruned_unets_export(tmp_path):
    dense = unet("tiny", seed=0)
    _check(dense, tmp_path / "dense.onnx")
    ticket = unet("tiny", seed=0)
    M.apply(ticket, pruners.magnitude(ticket, 0.9))
    _check(ticket, tmp_path / "ticket.onnx", batch=1)
    small = pruners.structured(unet("tiny", seed=0), 0.5, importance="magnitude")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    _check(small, tmp_path / "small.onnx", batch=5)


def test_onnx_unet_samples_the_same_images_as_torch(tmp_path):
    model = unet("tiny", seed=2)
    onnx = OnnxUNet(export_onnx(model, tmp_path / "u.onnx"), model.config, threads=1)
    a = sample(model, 4, steps=3, seed=0, progress=False).int()
    b = sample(onnx, 4, steps=3, seed=0, progress=False).int()
    assert (a - b).abs().max() <= 1  # uint8 images: at most one grey level apart


def test_export_command_writes_and_checks(tmp_path, capsys):
    save_model(unet("tiny", seed=0), tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max |difference|" in out and (tmp_path / "m.onnx").stat().st_size > 100_000
    diff = float(out.split("max |difference| ")[1].split()[0])
    assert diff < TOL
    assert main(["export", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()
