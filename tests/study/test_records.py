"""A study's records: bit-packed masks, kept weights, settings written once, rows never overwritten."""
import copy
import os
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from lthdiff import masks as M
from lthdiff.study import aggregate as A
from lthdiff.study import records as R
from lthdiff.study import queue as Q
from lthdiff.study.arms import plan, variant_class, late_rewind_step
from lthdiff.reporting import study as RS
from lthdiff.data import load_dataset
from lthdiff.lottery import run_imp
from lthdiff.store import CorruptFileError
from lthdiff.models import unet
from lthdiff.lottery import IMPResult, RoundInfo
from lthdiff.training import make_scheduler
from lthdiff.training import loss_at_start, train

SETTINGS = {"dataset": "digits", "image_size": 16, "preset": "tiny", "steps": 40, "batch_size": 32, "lr": 1e-3,
            "schedule": [0.5, 0.75], "rewind": "init", "controls": ["random_reinit"], "n": 2000, "sample_steps": 10,
            "extractor": "lthdiff-digits"}


# --------------------------------------------------------------------------- masks and weights
def test_mask_round_trip_is_bit_packed_and_checked(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = {"a.weight": torch.rand(7, 5, 3, generator=g) > 0.7, "b.weight": torch.rand(13, generator=g) > 0.2}
    path = M.save_packed(tmp_path / "m.npz", mask)
    back = M.load_packed(path)
    assert list(back) == list(mask) and all(torch.equal(back[k], mask[k]) for k in mask)
    import numpy as np

    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    assert arrays["m0"].size == math.ceil(7 * 5 * 3 / 8) and arrays["m1"].size == 2  # one bit a weight
    # one flipped bit in the stored array must not load as a different ticket
    arrays["m0"][0] ^= 1
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    with pytest.raises(CorruptFileError, match="digest"):
        M.load_packed(path)
    with pytest.raises(ValueError, match="bool"):
        M.save_packed(tmp_path / "x.npz", {"a": torch.ones(3)})


def test_kept_weights_store_only_the_kept_values(tmp_path):
    model = unet("tiny", seed=3)
    mask = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) > 0.9 for k, v in
            list(model.named_parameters())[:6] if v.dim() > 1}
    state = {k: (v * mask[k] if k in mask else v) for k, v in model.state_dict().items()}
    path = R.save_kept_weights(tmp_path / "w.safetensors", state, mask)
    back = R.load_kept_weights(path, model.state_dict(), mask)
    assert all(torch.equal(back[k], state[k]) for k in state)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        k = next(iter(mask))
        assert f.get_tensor(k).numel() == int(mask[k].sum())


# --------------------------------------------------------------------------- settings and rows
def test_settings_are_written_once_and_other_settings_refused(tmp_path):
    R.write_settings(tmp_path, {**SETTINGS, "seed": 0})
    assert R.write_settings(tmp_path, {**SETTINGS, "seed": 0})["steps"] == 40
    with pytest.raises(ValueError, match=r"steps: recorded 40, now 80"):
        R.write_settings(tmp_path, {**SETTINGS, "seed": 0, "steps": 80})
    row = {"round": 0, "variant": "ticket", "fid": 1.0}
    R.write_network(tmp_path, row)
    with pytest.raises(FileExistsError):
        R.write_network(tmp_path, {**row, "fid": 2.0})
    assert R.read_networks(tmp_path)[0]["fid"] == 1.0  # the recorded row is untouched
