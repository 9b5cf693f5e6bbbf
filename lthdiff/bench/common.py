"""Shared helpers for benchmarks: timing and writing JSON + Markdown results."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from lthdiff.store.io import write_json
from lthdiff.store.io import atomic_path
from lthdiff.evaluation.metrics.efficiency import median_time


def machine() -> dict[str, Any]:
    """Describe where a benchmark ran (CPU/GPU name, torch version, threads)."""
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render ``rows`` as a GitHub Markdown table (floats to 4 significant digits)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``<name>.md`` atomically; return both paths."""
    out_dir = Path(out_dir)
    payload = {"benchmark": name, "machine": machine(), **payload}
    j = write_json(out_dir / f"{name}.json", payload)
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text(markdown)
    return j, out_dir / f"{name}.md"


# Recorded results ship inside the package, so an installed wheel finds them too.
RECORDED = Path(__file__).resolve().parent / "results"


def find_results(name: str, out_dir: str | Path = "bench_results") -> Path | None:
    """``<out_dir>/<name>.json`` from a fresh local run if there is one, else the run recorded in the
    package (``lthdiff/bench/results/``); ``None`` when neither exists."""
    for path in (Path(out_dir) / f"{name}.json", RECORDED / f"{name}.json"):
        if path.exists():
            return path
    return None
