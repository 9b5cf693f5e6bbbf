"""The wheel ships every file of the recorded studies (masks and kept weights too) and the study configs, so an
installed copy can read them and continue one into a folder of the user's."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_holds_every_recorded_file_and_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("lthdiff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recorded = ROOT / "lthdiff" / "study" / "recorded"
    want = {p.relative_to(ROOT).as_posix() for p in recorded.rglob("*") if p.is_file()}
    assert want and not want - names, sorted(want - names)[:5]
    assert any(n.endswith(".npz") for n in want) and any(n.endswith(".safetensors") for n in want)
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lthdiff" / "configs").glob("quality_*.toml")}
    assert configs and configs <= names
