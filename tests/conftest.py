"""Shared fixtures: tiny models and data so every test runs in seconds on 2 CPU cores."""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("LTHDIFF_QUICK", "1")
# Tests never touch the network, so a machine with one computes the same numbers as one without:
# "auto" extractors resolve offline without probing a host, no Inception weights cached in the
# user's torch hub are seen, and the Hugging Face Hub is not asked.  Set at import, before any
# notebook kernel or subprocess starts, so those inherit it.
os.environ["LTHDIFF_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# Everything a test session writes outside tmp_path lives under one temp folder, removed at exit:
# TORCH_HOME, Hypothesis's database and pytest's own tmp_path base.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="lthdiff-tests-"))
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
# Child processes (torchrun's rendezvous files, kernels) write their temp files there too.
os.environ["TMPDIR"] = str(_SESSION_TMP)
tempfile.tempdir = str(_SESSION_TMP)
os.environ["TORCH_HOME"] = str(_SESSION_TMP / "torch-home")
os.environ.pop("LTHDIFF_INCEPTION_WEIGHTS", None)
# Child processes (CLI, torchrun, notebook kernels) load tests/netguard/sitecustomize.py: no network there either.
_GUARD = str(Path(__file__).resolve().parent / "netguard")
os.environ["PYTHONPATH"] = os.pathsep.join([_GUARD, *filter(None, [os.environ.get("PYTHONPATH")])])
torch.set_num_threads(min(2, torch.get_num_threads()))

from hypothesis import configuration as _hypothesis_config  # noqa: E402

_hypothesis_config.set_hypothesis_home_dir(str(_SESSION_TMP / "hypothesis"))
_REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    if config.option.basetemp is None:
        config.option.basetemp = str(_SESSION_TMP / "pytest")
    config._lthdiff_before = _untracked(_REPO)


def _untracked(repo: Path) -> set[str] | None:
    """Paths git reports as untracked or ignored (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--ignored", "--untracked-files=all"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}


# What a test session writes into the checkout: quick-mode run folders (quick never shares a folder with a
# full run, tests/test_notebook_hygiene.py), the FID reference caches and the lung-CT cache.
_SESSION_OUTPUTS = ("fid_cache", "synthetic-lung-ct", "bench_results")


def _session_output(rel: str) -> bool:
    return any(part.endswith("_quick") or part in _SESSION_OUTPUTS for part in Path(rel).parts)


def pytest_unconfigure(config):
    """Remove what the session wrote into the checkout (quick-mode notebook run folders, FID caches), never
    files that were there before, never files git does not ignore (e.g. a study's records written meanwhile),
    never a full run's folder that a notebook executing beside the tests is writing."""
    before = getattr(config, "_lthdiff_before", None)
    after = _untracked(_REPO)
    if before is None or after is None:
        return
    for rel in sorted(after - before):
        path = _REPO / rel
        ignored = subprocess.run(["git", "-C", str(_REPO), "check-ignore", "-q", rel]).returncode == 0
        if ignored and _session_output(rel) and path.is_file() and "__pycache__" not in path.parts:
            path.unlink(missing_ok=True)
    for rel in sorted({str(Path(r).parent) for r in after - before}, key=len, reverse=True):
        d = _REPO / rel
        while d != _REPO and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent


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
