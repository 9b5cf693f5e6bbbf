import pytest
import torch

from lthdiff.models import PRESETS, from_pretrained, load_model, param_count, save_model, unet


def test_tiny_preset_size_and_forward():
    m = unet("tiny")
    assert 0.5e6 < param_count(m) < 0.9e6
    out = m(torch.randn(2, 1, 16, 16), torch.tensor([1, 500])).sample
    assert out.shape == (2, 1, 16, 16)


def test_ddpm_cifar10_matches_google_config():
    m = unet("ddpm-cifar10")
    assert m.config.block_out_channels == (128, 256, 256, 256) or list(m.config.block_out_channels) == [128, 256, 256, 256]
    assert abs(param_count(m) - 35.7e6) < 0.1e6  # google/ddpm-cifar10-32 has 35.7M parameters


def test_seed_determinism_and_overrides():
    a, b, c = unet("tiny", seed=1), unet("tiny", seed=1), unet("tiny", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert unet("tiny", in_channels=3).config.in_channels == 3


def test_unknown_preset():
    with pytest.raises(ValueError, match="tiny"):
        unet("huge")


def test_save_load_round_trip(tmp_path):
    m = unet("tiny")
    save_model(m, tmp_path / "m")
    save_model(m, tmp_path / "m")  # overwriting an existing folder is atomic, not an error
    n = load_model(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), n.state_dict().values()))
    assert isinstance(from_pretrained(tmp_path / "m"), type(m))
    with pytest.raises(OSError, match="save_pretrained"):
        from_pretrained(tmp_path / "nothing")
