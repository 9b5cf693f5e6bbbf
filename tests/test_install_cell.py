"""The first cell of every notebook installs lthdiff from LTHDIFF_SOURCE or says why it could not: run here
against a wheel built from this checkout (into a fresh environment) and against sources pip cannot reach."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _install_cell(nb: Path) -> str:
    return "".join(json.loads(nb.read_text())["cells"][1]["source"])


def _run(python: str, source: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LTHDIFF_INSTALL": "1", "LTHDIFF_SOURCE": source, "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([python, "-c", _install_cell(NOTEBOOKS[0])], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_every_notebook_has_the_same_install_cell():
    cells = {nb.name: _install_cell(nb) for nb in NOTEBOOKS}
    assert len(set(cells.values())) == 1, f"install cells differ: {sorted(cells)}"
    assert "LTHDIFF_SOURCE" in cells[NOTEBOOKS[0].name]


@pytest.mark.parametrize("source", ["/nonexistent/lthdiff.zip", "git+http://127.0.0.1:9/lthdiff/lthdiff"])
def test_an_unreachable_source_says_why_and_what_to_do(tmp_path, source):
    out = _run(sys.executable, source, tmp_path)
    assert out.returncode != 0
    assert "ERROR" in out.stdout, f"pip's own reason is not shown:\n{out.stdout}"
    assert f"lthdiff could not be installed from {source!r}" in out.stderr
    assert "Upload a wheel or a zip of the repository" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert len((out.stdout + out.stderr).splitlines()) < 20, "a wall of text instead of a reason"


@pytest.mark.slow
def test_a_local_wheel_installs_into_a_fresh_environment(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("lthdiff-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # pip and the dependencies come from this environment (appended after the fresh one's own site-packages,
    # whose lthdiff therefore wins): pip installs the wheel offline, as on Colab where torch is already there.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = _run(python, str(wheel), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"installed lthdiff from {wheel}" in out.stdout
    where = subprocess.run([python, "-c", "import lthdiff, lthdiff.study; print(lthdiff.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), f"lthdiff imported from {where}, not from the installed wheel"
