"""Shared helpers for benchmarks: timing and writing JSON + Markdown results."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from lthdiff.evaluation.metrics.efficiency import median_time
from lthdiff.reporting.tables import write_results
from lthdiff.runtime import machine


# Recorded results ship inside the package, so an installed wheel finds them too.
RECORDED = Path(__file__).resolve().parent / "results"


def find_results(name: str, out_dir: str | Path = "bench_results") -> Path | None:
    """``<out_dir>/<name>.json`` from a fresh local run if there is one, else the run recorded in the
    package (``lthdiff/bench/results/``); ``None`` when neither exists."""
    for path in (Path(out_dir) / f"{name}.json", RECORDED / f"{name}.json"):
        if path.exists():
            return path
    return None
