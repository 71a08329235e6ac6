"""The package's layers (docs/architecture.md): imports point down only, with no cycles.

Three checks:

- no import cycle among the package's modules, counting imports inside functions and
  under ``TYPE_CHECKING`` (an AST walk of ``src/brainharmony``, no dependency);
- every module and subpackage directly under ``brainharmony`` sits in a layer of the
  import-linter contract in ``pyproject.toml`` (a new one must be placed there);
- the import-linter contracts hold (``lint-imports``, also run by ``make lint``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import brainharmony

PACKAGE_DIR = Path(brainharmony.__file__).resolve().parent
SRC = PACKAGE_DIR.parent
REPO = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imported(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every package module that ``module`` imports, wherever the import statement is."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            # `from a.b import c`: module a.b.c when it is one, else a name of a.b
            names = [
                f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` -> a.b.c, else its package
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at the top or inside functions)."""
    modules = _modules()
    known = set(modules)
    return {m: set(_imported(m, p, known)) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_function_level_imports() -> None:
    graph = import_graph()
    # pipelines.embed imports the model registry inside load_frozen only
    assert "brainharmony.models.registry" in graph["brainharmony.pipelines.embed"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles among brainharmony modules:\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "importlinter"
    ]["contracts"]


def test_every_top_level_module_is_in_a_layer() -> None:
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    placed = {
        name.strip()
        for layer in layers["layers"]
        for name in layer.replace(":", "|").split("|")
        if name.strip()
    }
    top_level = {m.split(".")[1] for m in _modules() if m.count(".") >= 1 and m != "brainharmony"}
    assert top_level - placed == set(), "place these in a layer of pyproject.toml"
    assert placed - top_level == set(), "layers name modules that do not exist"


def test_import_linter_contracts_hold() -> None:
    pytest.importorskip("importlinter")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_unit_tests_mirror_the_package():
    """``tests/unit/<subpackage>/test_*.py`` tests ``brainharmony.<subpackage>``; a test
    of a subpackage's module does not sit at the top as ``test_<subpackage>_*.py``."""
    unit = REPO / "tests" / "unit"
    subpackages = {p.parent.name for p in PACKAGE_DIR.glob("*/__init__.py")}
    folders = {p.parent.name for p in unit.glob("*/test_*.py")}
    assert folders <= subpackages, f"test folders naming no subpackage: {folders - subpackages}"
    prefixes = {"eval": "evaluate", **{name: name for name in subpackages}}
    misplaced = [
        p.name
        for p in unit.glob("test_*.py")
        if p.stem.split("_")[1] in prefixes and p.stem.count("_") > 1
    ]
    assert not misplaced, f"move to tests/unit/<subpackage>/: {misplaced}"
