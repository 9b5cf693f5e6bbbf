"""Re-execute notebooks for their committed outputs: ``python .ci/execute_notebooks.py [NB ...] [--quick]``.

Runs each notebook top to bottom in ``notebooks/`` with ``LTHDIFF_PROGRESS=0``, so long steps print one
``[lthdiff]`` line each instead of progress bars whose half-drawn text ("40% 200/500") a static
rendering would keep.  Widget views are dropped (GitHub and nbconvert cannot draw them; the parameter
cell prints its values as text), and the file is replaced only once the whole run succeeded.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
WIDGET = "application/vnd.jupyter.widget-view+json"


def strip_widgets(nb: nbformat.NotebookNode) -> None:
    """Drop widget views (and their ``VBox(children=...)`` text) and the saved widget state."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if WIDGET not in o.get("data", {})]


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    strip_widgets(nb)
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="default: every notebooks/*.ipynb")
    ap.add_argument("--quick", action="store_true", help="LTHDIFF_QUICK=1 (CI sizes); committed outputs use full sizes")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds a cell may run")
    args = ap.parse_args(argv)
    os.environ["LTHDIFF_PROGRESS"] = "0"
    os.environ["LTHDIFF_QUICK"] = "1" if args.quick else "0"
    os.environ.pop("MPLBACKEND", None)  # %matplotlib inline
    paths = [Path(p).resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for p in paths:
        print(f"{p.name}: {execute(p, args.timeout):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
