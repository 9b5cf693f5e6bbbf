"""What a notebook's parameter cell builds: data and model from a few plain values (config.from_params), the
dataset recorded beside a saved model (config.data_of), and run folders moved to Google Drive on Colab."""
from __future__ import annotations

import sys
import types

import pytest

from lthdiff import config, models
from lthdiff.reporting import widgets


@pytest.mark.parametrize("width, want", [(1.0, []), (0.5, [16, 24, 24]), (2.0, [64, 96, 96]), (0.25, [8, 16, 16])])
def test_width_scales_the_tiny_unet_in_whole_groups(width, want):
    cfg = config.from_params("digits", 16, "tiny", width=width)
    assert cfg.model.block_out_channels == want
    if want:  # by hand: 32, 48, 48 times the width, in groups of 8 channels
        assert want == [max(8, 8 * round(c * width / 8)) for c in (32, 48, 48)]


def test_the_built_model_has_the_widths_and_the_datasets_channels():
    cfg = config.from_params("digits", 16, "tiny", width=0.5, seed=3)
    ds, unet = config.build(cfg)
    assert tuple(unet.config.block_out_channels) == (16, 24, 24)
    assert unet.config.in_channels == ds[0].shape[0] == 1 and unet.config.sample_size == 16
    _, again = config.build(cfg)
    assert all((a == b).all() for a, b in zip(unet.parameters(), again.parameters())), "same seed, other weights"


@pytest.mark.parametrize("bad, named", [(dict(dataset="mnist6k"), "mnist6k"), (dict(width=0), "width = 0"),
                                        (dict(preset="huge"), "huge"), (dict(image_size=-3), "-3")])
def test_bad_parameters_get_one_line_naming_them(bad, named):
    with pytest.raises(config.ConfigError) as err:
        config.from_params(**bad)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_a_saved_model_remembers_its_data(tmp_path):
    cfg = config.from_params("mnist5k", 16, "tiny", width=0.5)
    _, unet = config.build(config.from_params("digits", 16, "tiny", width=0.5))
    models.save_model(unet, tmp_path / "model", data=cfg.to_dict()["data"])
    got = config.data_of(tmp_path / "model", config.from_params("digits", 32, "tiny"))
    assert (got.data.name, got.data.image_size) == ("mnist5k", 16)
    models.save_model(unet, tmp_path / "plain")  # no record: the caller's default stands
    assert config.data_of(tmp_path / "plain", config.from_params("digits", 32)).data.image_size == 32


def test_save_to_drive_moves_runs_to_drive_only_on_colab(monkeypatch):
    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert widgets.on_drive("runs/02_imp", True) == "runs/02_imp" and not mounted
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert widgets.on_drive("runs/02_imp", False) == "runs/02_imp" and not mounted
    assert widgets.on_drive("runs/02_imp", True) == "/content/drive/MyDrive/lthdiff/runs/02_imp"
    assert mounted == ["/content/drive"]
