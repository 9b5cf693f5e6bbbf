"""The package's layering, checked by reading its imports with ast (module- and function-level alike,
nothing is run): no import cycle, no library module importing the benchmarks, no private name
(leading underscore) imported from another module."""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lthdiff"


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """``({module: modules it imports}, ["a imports b._name", ...])`` for the package at ``root``."""
    mods = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = f
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = m.split(".")
                if node.level:
                    base = base[: len(base) - node.level + (1 if f.name == "__init__.py" else 0)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                pairs = [(f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                pairs = [(a.name, None) for a in node.names]
            else:
                continue
            for tgt, name in pairs:
                while tgt and tgt not in mods and "." in tgt:
                    tgt = tgt.rsplit(".", 1)[0]
                if tgt in mods and tgt != m:
                    edges[m].add(tgt)
                    if name and name.startswith("_") and not name.startswith("__"):
                        private.append(f"{m} imports {tgt}.{name}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return []


def _bench_users(edges: dict[str, set[str]], pkg: str) -> list[str]:
    bench = f"{pkg}.bench"
    inside = lambda m: m == bench or m.startswith(bench + ".")  # noqa: E731
    return sorted(f"{m} -> {t}" for m, ts in edges.items() for t in ts if inside(t) and not inside(m))


# Folders (and root modules) bottom to top, in the order a run flows: each imports only from its own
# level or below.  The package root (lthdiff/__init__, the version) is below everything.
ORDER = ["runtime", "errors", "store", "data", "masks", "models", "training", "pruners", "tracking", "lottery",
         "evaluation", "config", "study", "reporting", "pipeline", "cli", "bench"]


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def upward(edges: dict[str, set[str]], order: list[str]) -> list[str]:
    """Edges from a unit to one above it in ``order`` (units not in it are reported too)."""
    rank = {u: i for i, u in enumerate(order)}
    out = []
    for m, ts in edges.items():
        for t in ts:
            a, b = _unit(m), _unit(t)
            if "." not in t or a == b:
                continue  # the package root, or within one folder
            if a not in rank or b not in rank or rank[b] > rank[a]:
                out.append(f"{m} -> {t}")
    return sorted(out)


def test_folders_import_only_from_their_level_or_below_and_the_root_stays_small():
    edges, _ = import_graph(PACKAGE)
    assert upward(edges, ORDER) == []
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(root) <= 8, root
    for d in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((d / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"{d.name}/__init__.py says what the folder is for"


def test_the_layer_check_fails_on_a_planted_upward_import():
    edges, _ = import_graph(PACKAGE)
    planted = {**edges, "lthdiff.masks.core": edges["lthdiff.masks.core"] | {"lthdiff.lottery.imp"}}
    assert upward(planted, ORDER) == ["lthdiff.masks.core -> lthdiff.lottery.imp"]


def test_the_package_has_no_cycle_no_library_to_bench_import_and_no_private_crossing():
    edges, private = import_graph(PACKAGE)
    assert len(edges) > 30  # the whole package was read
    assert _cycles(edges) == []
    assert _bench_users(edges, "lthdiff") == []
    assert private == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("files, problem", [
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, "cycle"),
    ({"core.py": "def f():\n    from .bench import tool\n", "bench/__init__.py": "", "bench/tool.py": ""}, "bench"),
    ({"a.py": "from .b import _helper\n", "b.py": "_helper = 1\n"}, "private"),
])
def test_the_check_fails_on_a_planted_upward_import(tmp_path, files, problem):
    root = _write(tmp_path / "pkg", {"__init__.py": "", **files})
    edges, private = import_graph(root)
    found = {"cycle": bool(_cycles(edges)), "bench": bool(_bench_users(edges, "pkg")), "private": bool(private)}
    assert found == {k: k == problem for k in found}
