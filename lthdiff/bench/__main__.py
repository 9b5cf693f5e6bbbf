"""``python -m lthdiff.bench NAME [options]``: run one benchmark, write JSON + Markdown.

Each benchmark lives in ``lthdiff/bench/<name>.py`` (dashes become underscores) and exposes
``main(argv: list[str]) -> int``.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    """Names of the runnable benchmarks in this package: the modules that define ``main`` (read, not imported)."""
    here = Path(__file__).parent
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([str(here)])
                  if not m.name.startswith("_") and "\ndef main(" in (here / f"{m.name}.py").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m lthdiff.bench NAME [options]\n\nbenchmarks: " + ", ".join(names))
        return 0 if argv else 2
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; accepted: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"lthdiff.bench.{name.replace('-', '_')}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
