"""Shared fixtures: tiny models and data so every test runs in seconds on 2 CPU cores."""
from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("LTHDIFF_QUICK", "1")
# Tests never touch the network, so a machine with one computes the same numbers as one without:
# "auto" extractors resolve offline without probing a host, no Inception weights cached in the
# user's torch hub are seen, and the Hugging Face Hub is not asked.  Set at import, before any
# notebook kernel or subprocess starts, so those inherit it.
os.environ["LTHDIFF_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="lthdiff-tests-torch-home-")
os.environ.pop("LTHDIFF_INCEPTION_WEIGHTS", None)
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


_LOCAL = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens an internet connection (loopback, e.g. torchrun's store, is allowed)."""
    connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
            raise ConnectionRefusedError(f"tests must not open network connections (tried {address!r})")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
