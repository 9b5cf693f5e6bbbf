"""Shared fixtures: tiny models and data so every test runs in seconds on 2 CPU cores."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("LTHDIFF_QUICK", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from lthdiff.data import load_dataset

    return load_dataset("digits", image_size=16)


@pytest.fixture(scope="session")
def small_digits(digits):
    from lthdiff.data import TensorImageDataset

    return TensorImageDataset(digits.tensors[:64], digits.labels[:64], name="digits")


@pytest.fixture
def micro_unet():
    """A UNet even smaller than the `tiny` preset, for tests that train."""
    from lthdiff.models import unet

    return unet("tiny", block_out_channels=(8, 16, 16), norm_num_groups=4, seed=0)
