"""What a reader of the notebooks relies on without running them: one repository URL, badges that
open the right notebook, and quick runs that never resume a full run's state."""
from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _repo() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_one_repository_url(nb):
    repo = _repo()
    owner_name = repo.removeprefix("https://github.com/")
    cells = _cells(nb)
    badge = f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/{nb.name}"
    assert badge in _src(cells[0]), f"{nb.name}: the first cell's Colab badge must open {badge}"
    assert badge in (ROOT / "README.md").read_text(), f"README's badge for {nb.name} must be {badge}"
    install = _src(cells[1])
    assert f'REPO = "{repo}"' in install and 'f"git+{REPO}"' in install


def _controls(nb: Path) -> dict[str, object]:
    """The literal specs of the notebook's ``widgets.controls(...)`` call."""
    for cell in _cells(nb):
        if cell["cell_type"] != "code" or "controls(" not in _src(cell):
            continue
        tree = ast.parse(re.sub(r"^[%!].*$", "", _src(cell), flags=re.M))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "controls":
                return {k.arg: ast.literal_eval(k.value) for k in node.keywords
                        if isinstance(k.value, (ast.Constant, ast.Tuple, ast.Dict))}
    raise AssertionError(f"{nb.name} has no widgets.controls(...) cell")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_quick_and_full_runs_never_share_a_directory(nb, monkeypatch):
    from lthdiff.reporting.widgets import sized

    specs = {k: v for k, v in _controls(nb).items() if k in ("run_dir", "run_root", "dense_from")}
    assert specs, f"{nb.name}: no run directory control"
    for name, spec in specs.items():
        monkeypatch.setenv("LTHDIFF_QUICK", "0")
        full = sized(spec)
        monkeypatch.setenv("LTHDIFF_QUICK", "1")
        quick = sized(spec)
        assert full != quick, f"{nb.name}: {name} is {full!r} in both quick and full mode"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_results_visible_without_javascript(nb):
    """Opened on GitHub (no kernel, no JavaScript) a notebook shows its figures: at least one PNG output,
    every plotly figure carries a PNG twin, and the file stays small enough to load (< 2 MB)."""
    assert nb.stat().st_size < 2_000_000, f"{nb.name} is {nb.stat().st_size / 1e6:.1f} MB"
    outputs = [o for c in _cells(nb) if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], f"{nb.name} was committed with an error"
    bundles = [o.get("data", {}) for o in outputs]
    assert any("image/png" in b for b in bundles), f"{nb.name} has no image output: run it and commit the outputs"
    for b in bundles:
        if "application/vnd.plotly.v1+json" in b or "plotly" in str(b.get("text/html", ""))[:2000]:
            assert "image/png" in b, f"{nb.name}: an interactive figure without a static image (use plots.with_static)"


def _texts(nb: Path) -> list[tuple[int, str]]:
    """(cell index, text) of every committed text output: streams, text/plain, text/html and text/markdown."""
    out = []
    for i, c in enumerate(_cells(nb)):
        for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
            parts = [o.get("text", "")] + [o.get("data", {}).get(k, "") for k in ("text/plain", "text/html", "text/markdown")]
            out += [(i, "".join(p) if isinstance(p, list) else p) for p in parts if p]
    return out


# a tqdm line ("40%|####      | 200/500 [00:10<00:15, 3.1it/s]") or a part of one
_PROGRESS = re.compile(r"\d+%\|[^|\n]*\|\s*\d+/\d+|\d+/\d+ \[\d\d:\d\d|\d\?*(?:it|s)/(?:s|it)\]")
_ABSOLUTE = re.compile(r"(?<![\w.:/])(/(?:home|root|work|tmp|Users|content|kaggle|private|var/folders)/|[A-Z]:\\\\)")
_RAW_FLOAT = re.compile(r"(?<![\w.])\d+\.\d{7,}(?![\d])")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_paths_progress_remnants_raw_floats_or_errors(nb):
    """A static rendering shows what the run found: no machine's absolute path, no half-drawn progress bar,
    no 16-digit float, no traceback (the outputs come from ``.ci/execute_notebooks.py``)."""
    cells = _cells(nb)
    errors = [i for i, c in enumerate(cells) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{nb.name}: cells {errors} were committed with an error"
    for i, text in _texts(nb):
        for name, pattern in (("an absolute path", _ABSOLUTE), ("a progress-bar remnant", _PROGRESS),
                              ("an unformatted float", _RAW_FLOAT)):
            hit = pattern.search(text)
            assert hit is None, f"{nb.name} cell {i} output holds {name}: {text[max(0, hit.start() - 40):hit.end() + 40]!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_last_cell_states_what_the_notebook_found(nb):
    """Every notebook ends with "What this shows": a code cell that writes the takeaway as Markdown from the
    notebook's variables (placeholders, not typed numbers), committed with its numbers."""
    cells = _cells(nb)
    head, last = cells[-2], cells[-1]
    assert head["cell_type"] == "markdown" and _src(head).startswith("## What this shows"), \
        f"{nb.name}: the second-to-last cell must be the '## What this shows' heading"
    src = _src(last)
    assert last["cell_type"] == "code" and "Markdown(" in src, f"{nb.name}: the last cell must display Markdown"
    assert len(re.findall(r"\{[^{}\n]+\}", src)) >= 3, f"{nb.name}: the takeaway must read its numbers from variables"
    shown = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in last.get("outputs", []))
    assert len(re.findall(r"\d+(?:\.\d+)?", shown)) >= 3, f"{nb.name}: the committed takeaway shows no numbers"
    assert "seed" in shown.lower(), f"{nb.name}: the takeaway must say how many seeds it rests on"


def _resumed(text: str) -> list[str]:
    """Lines of committed output that show a run continued from an earlier one instead of run from scratch."""
    return re.findall(r"resumed (?:from|at) step [1-9]\d*|continued: steps 1-\d+", text)


def test_resumed_runs_are_recognised():
    assert _resumed("round 1 ticket (50.0%): 200 steps (80 now, resumed at step 120) in 9 s") == ["resumed at step 120"]
    assert _resumed("round 1 late (50.0%): 150 steps (143 now) in 9 s") == []  # trained on from θ_K, not resumed
    assert _resumed("1500 steps; resumed from step 1500") == ["resumed from step 1500"]
    assert _resumed("1500 steps in 17.0 min (continued: steps 1-900 ran earlier)") == ["continued: steps 1-900"]
    assert _resumed("round 0 (dense): 200 steps (200 now) in 19 s; resumed from step 0") == []


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_come_from_a_run_from_scratch(nb):
    """A committed output that trained nothing (it resumed a finished run) would quote a run time it never spent."""
    found = _resumed("\n".join(text for _, text in _texts(nb)))
    assert not found, f"{nb.name} was committed from a resumed run: {found[:3]}"
