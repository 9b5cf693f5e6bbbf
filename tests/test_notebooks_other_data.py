"""Notebooks 01-05 take their dataset from the parameter cell: each runs top to bottom in quick mode with a second
offline dataset (mnist5k, real MNIST digits at 28 px) set there, in a folder of its own, and says so in its output."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_baseline", "02_imp", "03_layerwise_sparsity", "04_fid_comparison", "05_structured_pruning"]


def _with_params(name: str, values: dict[str, object]):
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    (at,) = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "widgets.controls(" in c.source]
    # what a user does: change the values in the form (the Controls set their widgets)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"params.{k} = {v!r}" for k, v in values.items())))
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_mnist5k(name, tmp_path):
    from nbclient import NotebookClient

    nb = _with_params(name, {"dataset": "mnist5k", "image_size": 28})
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = json.dumps([o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])])
    assert "mnist5k" in text, f"{name}: no output names the dataset it ran on"
    assert '"output_type": "error"' not in text
    assert (tmp_path / "runs").is_dir(), "the run folders went elsewhere than the notebook's folder"
