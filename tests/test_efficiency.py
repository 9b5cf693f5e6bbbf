"""Efficiency: parameter/MAC counts, memory, compressed tickets."""
import json
import sys

import pytest
import torch
import torch.nn as nn

from lthdiff import masks as M
from lthdiff.store import CorruptFileError
from lthdiff.evaluation import efficiency as E
from lthdiff.evaluation import load_compressed, save_compressed
from lthdiff.models import unet
from lthdiff.models.macs import macs
from lthdiff.pruners import magnitude, random

SHAPE = (1, 1, 16, 16)


@pytest.fixture(scope="module")
def tiny():
    return unet("tiny", seed=0)


def _pruned(sparsity, how="magnitude"):
    model = unet("tiny", seed=0)
    mask = magnitude(model, sparsity) if how == "magnitude" else random(model, sparsity, seed=0)
    M.apply(model, mask)
    return model, mask


def test_param_counts_drop_by_the_pruned_weights(tiny):
    total, nonzero = E.param_counts(tiny)
    assert total == sum(p.numel() for p in tiny.parameters()) and nonzero <= total
    model, mask = _pruned(0.9)
    kept, covered = M.count(mask)
    counts = E.param_counts(model)
    assert counts.total == total
    assert counts.nonzero == nonzero - (covered - kept)  # magnitude removes only non-zero init weights


def test_macs_of_single_layers_follow_the_formula():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    m = macs(conv, (2, 4, 10, 10))
    assert m.dense == m.layers_dense == 2 * 8 * 10 * 10 * (4 // 2 * 3 * 3)
    with torch.no_grad():
        conv.weight.view(-1)[: conv.weight.numel() // 4] = 0
    m = macs(conv, (2, 4, 10, 10))
    assert m.effective == pytest.approx(0.75 * m.dense, abs=1)
    lin = nn.Linear(10, 5)
    assert macs(lin, (3, 10)).dense == 3 * 5 * 10


def test_attention_is_counted_dense_and_matches_the_math_kernel(tiny):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    m = macs(tiny, SHAPE)
    assert m.dense > m.layers_dense  # attention matmuls (no weights) are in the total
    with sdpa_kernel(SDPBackend.MATH):  # explicit bmm ops that FlopCounterMode counts natively
        assert macs(tiny, SHAPE).dense == m.dense
    assert macs(tiny, (4, *SHAPE[1:])).dense == 4 * m.dense


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_effective_macs_scale_with_density(sparsity):
    model, mask = _pruned(sparsity, how="random")  # random pruning: every layer at `sparsity`
    m = macs(model, SHAPE)
    expected = (m.dense - m.layers_dense) + (1 - sparsity) * m.layers_dense
    assert m.effective == pytest.approx(expected, rel=1e-3)
    assert m.effective < m.dense and m.reduction > 1


def test_compressed_ticket_round_trips_exactly(tmp_path):
    model, mask = _pruned(0.9)
    path = save_compressed(tmp_path / "t.safetensors", model, mask, metadata={"round": 3})
    back, back_mask = load_compressed(path, return_mask=True)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back_mask.keys() == mask.keys() and all(torch.equal(back_mask[k], mask[k]) for k in mask)
    assert json.dumps(dict(back.config), sort_keys=True) == json.dumps(dict(model.config), sort_keys=True)
    x, t = torch.randn(2, *SHAPE[1:]), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t).sample, back(x, t).sample)
    into = load_compressed(path, model=unet("tiny", seed=1))
    assert all(torch.equal(a[k], v) for k, v in into.state_dict().items())


def test_fp16_ticket_is_smaller_and_close(tmp_path):
    model, mask = _pruned(0.9)
    p32 = save_compressed(tmp_path / "a.safetensors", model, mask)
    p16 = save_compressed(tmp_path / "b.safetensors", model, mask, fp16=True)
    assert p16.stat().st_size < 0.75 * p32.stat().st_size
    back = load_compressed(p16)
    for k, v in model.state_dict().items():
        assert back.state_dict()[k].dtype == v.dtype
        assert torch.allclose(back.state_dict()[k], v, rtol=1e-3, atol=1e-4), k


def test_compressed_ticket_refuses_unpruned_weights_and_detects_corruption(tmp_path):
    model = unet("tiny", seed=0)
    mask = magnitude(model, 0.5)  # not applied: pruned positions still hold weights
    with pytest.raises(ValueError, match=r"masks\.apply"):
        save_compressed(tmp_path / "t.safetensors", model, mask)
    M.apply(model, mask)
    path = save_compressed(tmp_path / "t.safetensors", model, mask)
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        load_compressed(path)


@pytest.mark.parametrize("how", ["magnitude", "random"])
def test_ticket_at_90_percent_is_8x_smaller_than_dense_fp32(how):
    model, mask = _pruned(0.9, how)
    sizes = E.checkpoint_sizes(model, mask)
    assert sizes["compression_ratio"] >= 8, sizes
    assert sizes["dense_fp32_bytes"] >= 4 * sum(p.numel() for p in model.parameters())


def test_dense_ticket_is_no_bigger_than_dense(tiny):
    # one mask bit per weight, deflated to almost nothing when all are kept; values byte-shuffled
    sizes = E.checkpoint_sizes(tiny, M.ones(tiny))
    assert sizes["compression_ratio"] > 1


def _rss_now() -> int:
    """Resident set size of this process right now (bytes), from /proc."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_memory_is_the_calls_peak_not_the_process_lifetime():
    big = 200_000_000
    torch.ones(2 * big, dtype=torch.uint8).max()  # raise the lifetime peak well above what follows
    before = _rss_now()
    out = E.peak_memory(lambda: torch.ones(big, dtype=torch.uint8).max(), cuda=False)  # max: no int64 copy, as sum makes
    if out["cpu_peak_is_process_lifetime"]:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert out["cpu_peak_rss_bytes"] - before >= 0.9 * big  # the allocation shows above the baseline
    assert out["cpu_peak_rss_bytes"] - before < 1.5 * big  # ... and the earlier 2x peak does not
    before = _rss_now()
    idle = E.peak_memory(lambda: None, cuda=False)
    assert idle["cpu_peak_rss_bytes"] - before < 0.1 * big  # nothing allocated, (almost) nothing seen
    assert out["cuda_max_allocated_bytes"] is None


def test_summary_and_speed_report_consistent_numbers(micro_unet):
    mask = random(micro_unet, 0.8, seed=0)
    M.apply(micro_unet, mask)
    s = E.summary(micro_unet, SHAPE, mask)
    assert s["params_nonzero"] < s["params_total"] and s["macs_effective"] < s["macs_dense"]
    assert s["compression_ratio"] > 1
    speed = E.sampling_speed(micro_unet, batch_size=2, steps=1, repeats=1, warmup=0)
    assert speed["latency_s"] > 0 and speed["throughput_img_per_s"] > 0
