"""Bad input ends in one line `lthdiff CMD: error: ...` and exit status 2, never a traceback."""
import os
import subprocess
import sys

import pytest

from lthdiff.cli import main
from lthdiff.store import CorruptFileError


@pytest.fixture
def saved_model(tmp_path):
    from lthdiff.models import save_model, unet

    return save_model(unet("tiny", block_out_channels=(8, 16, 16), norm_num_groups=4), tmp_path / "m")


def _weights(folder):
    return folder / "diffusion_pytorch_model.safetensors"


def test_truncated_weights_name_the_file(saved_model, tmp_path, capsys):
    f = _weights(saved_model)
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    assert main(["sample", str(saved_model), "-n", "2", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lthdiff sample: error: ") and "\n" not in err
    assert str(f) in err and "truncated or corrupt" in err
    assert main(["prune", str(saved_model), "--out", str(tmp_path / "p")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_corrupt_header_is_reported_by_the_library(saved_model):
    from lthdiff.models import load_model

    f = _weights(saved_model)
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff" * 32  # garble the JSON header
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"diffusion_pytorch_model\.safetensors is truncated or corrupt"):
        load_model(saved_model)


def test_undownloadable_dataset(tmp_path, capsys):
    root = tmp_path / "not_a_dir"
    root.write_text("a file where the dataset folder should be: no download can succeed, network or not")
    assert main(["train", "--dataset", "mnist", "--data-root", str(root), "--steps", "1",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lthdiff train: error: dataset 'mnist' is not in ") and "\n" not in err
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[data]\nname = 'cifar10'\nroot = '{root}'\n[output]\nrun_dir = '{tmp_path / 'run'}'\n"
                   "registry = ''\n")
    assert main(["run", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith("lthdiff run: error: dataset 'cifar10' is not in ")


def test_console_script_prints_no_traceback(saved_model, tmp_path):
    f = _weights(saved_model)
    f.write_bytes(f.read_bytes()[:100])
    proc = subprocess.run([sys.executable, "-m", "lthdiff.cli", "sample", str(saved_model), "-n", "1"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "LTHDIFF_OFFLINE": "1"},
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("lthdiff sample: error: ")
