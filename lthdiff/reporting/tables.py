"""Tables as text: one cell format (percentages, thousands, 4 significant digits, "–" for missing)
rendered as Markdown or HTML, for reports and benchmark summaries."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["fmt", "cells", "py_value", "md_table", "html_table", "markdown_table", "write_results"]


def fmt(value: Any, column: str = "") -> str:
    """One table cell: ``column == "sparsity"`` as a percentage, big integers with thousands separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column == "sparsity" and isinstance(value, (int, float)):
        return f"{100 * value:.1f}%"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def cells(df: Any) -> list[list[str]]:
    """Every row of a DataFrame as formatted cells."""
    return [[fmt(py_value(v), str(c)) for c, v in zip(df.columns, row)] for row in df.itertuples(index=False)]


def py_value(v: Any) -> Any:
    """A numpy scalar as the Python value (so ints format as ints)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def md_table(df: Any) -> str:
    """A DataFrame as a Markdown (GitHub) table."""
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    head = [esc(str(c)) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in cells(df)]
    return "\n".join(lines)


def html_table(df: Any, cls: str = "") -> str:
    """A DataFrame as an HTML table with CSS class ``cls``."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells(df))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


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
    """Write ``<out_dir>/<name>.json`` (``payload`` with the machine it ran on) and ``<name>.md`` atomically; return
    both paths."""
    from lthdiff.runtime import machine
    from lthdiff.store.io import atomic_path, write_json

    out_dir = Path(out_dir)
    payload = {"benchmark": name, "machine": machine(), **payload}
    j = write_json(out_dir / f"{name}.json", payload)
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text(markdown)
    return j, out_dir / f"{name}.md"
