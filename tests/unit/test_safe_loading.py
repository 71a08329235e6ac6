"""Safe loading: no code path deserialises pickles or runs YAML tags from files.

An AST scan of the project's Python (package, workflow rule files, scripts, benchmarks,
tests) fails on:

* ``yaml.load(...)`` / ``yaml.load_all(...)`` without a ``Loader=`` naming a safe loader
  (``yaml.safe_load`` is fine);
* ``torch.load(...)`` without ``weights_only=True``;
* ``np.load(..., allow_pickle=True)`` and ``pd.read_pickle(...)``;
* importing ``pickle``, ``cPickle``, ``dill``, ``cloudpickle`` or ``shelve``, and
  ``joblib.load(...)``.

The scanner is itself tested on small snippets, so a check that silently stopped matching
would fail here. Snakemake rule files are not Python; their ``run:``/``shell:`` bodies hold
no loading code today, so they are scanned as text for the same call names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader"}
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call target (``yaml.load``), or '' when it is not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw(call: ast.Call, key: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def findings(source: str, filename: str = "<snippet>") -> list[str]:
    """Unsafe loading calls and imports in Python ``source`` as ``file:line: what``."""
    tree = ast.parse(source, filename=filename)
    out: list[str] = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in BANNED_MODULES:
                    out.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in BANNED_MODULES:
                out.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ("yaml.load", "yaml.load_all"):
                loader = _kw(node, "Loader")
                if loader is None and len(node.args) > 1:
                    loader = node.args[1]
                if loader is None or _name(loader).rsplit(".", 1)[-1] not in SAFE_LOADERS:
                    out.append(f"{where}: {name} without a safe Loader")
            elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
                out.append(f"{where}: torch.load without weights_only=True")
            elif last == "load" and name.split(".")[0] in ("np", "numpy"):
                if _is_true(_kw(node, "allow_pickle")):
                    out.append(f"{where}: {name} with allow_pickle=True")
            elif name in ("pd.read_pickle", "pandas.read_pickle", "joblib.load"):
                out.append(f"{where}: {name}")
    return out


def _python_files() -> list[Path]:
    files = []
    for folder in ("src", "scripts", "tests", "workflow"):
        files += sorted((REPO / folder).rglob("*.py"))
    files += sorted((REPO / "benchmarks").glob("*.py"))  # not benchmarks/results/ (a venv)
    return [p for p in files if "__pycache__" not in p.parts]


_SMK_PATTERN = re.compile(
    r"\b(yaml\.load\(|torch\.load\(|allow_pickle\s*=\s*True|read_pickle\(|import pickle)"
)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import yaml\nyaml.load(open('x'))", "yaml.load without a safe Loader"),
        ("import yaml\nyaml.load(f, Loader=yaml.Loader)", "yaml.load without a safe Loader"),
        ("import yaml\nyaml.load_all(f, yaml.FullLoader)", "yaml.load_all without a safe Loader"),
        ("import torch\ntorch.load('m.pt')", "torch.load without weights_only=True"),
        ("import torch\ntorch.load('m.pt', weights_only=False)", "without weights_only=True"),
        ("import numpy as np\nnp.load('a.npy', allow_pickle=True)", "allow_pickle=True"),
        ("import pandas as pd\npd.read_pickle('a.pkl')", "pd.read_pickle"),
        ("import pickle", "import pickle"),
        ("from dill import loads", "from dill import"),
        ("import joblib\njoblib.load('m.joblib')", "joblib.load"),
    ],
)
def test_scanner_flags_each_unsafe_pattern(snippet, expected):
    found = findings(snippet)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    "snippet",
    [
        "import yaml\nyaml.safe_load(open('x'))",
        "import yaml\nyaml.load(f, Loader=yaml.SafeLoader)",
        "import yaml\nyaml.load(f, yaml.CSafeLoader)",
        "import torch\ntorch.load('m.pt', map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=False)",
        "import numpy as np\nnp.load('a.npy', mmap_mode='r')",
    ],
)
def test_scanner_accepts_safe_calls(snippet):
    assert findings(snippet) == []


def test_project_python_loads_nothing_unsafely():
    files = _python_files()
    assert len(files) > 50  # the scan really covers the project
    problems = []
    for path in files:
        if path == Path(__file__).resolve():
            continue  # this file holds the patterns as test snippets
        problems += findings(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not problems, "unsafe loading:\n" + "\n".join(problems)


def test_rule_files_load_nothing_unsafely():
    rules = [*sorted((REPO / "workflow").rglob("*.smk")), REPO / "Snakefile"]
    assert len(rules) > 5
    problems = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in rules
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _SMK_PATTERN.search(line)
    ]
    assert not problems, "unsafe loading in rule files:\n" + "\n".join(problems)


def test_checkpoint_loader_refuses_pickled_objects(tmp_path):
    """A checkpoint holding an arbitrary pickled object is refused, never unpickled."""
    import torch

    from brainharmony.io import InputDataError
    from brainharmony.train.checkpoint import load_checkpoint

    path = tmp_path / "state.pt"
    torch.save({"format": "x", "evil": _Payload()}, path)
    _Payload.created = 0
    with pytest.raises(InputDataError, match="cannot read the training checkpoint") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert _Payload.created == 0  # the object was not rebuilt


class _Payload:
    """Any class outside torch's weights-only allow list; counts reconstructions."""

    created = 0

    def __setstate__(self, state):  # called when unpickled
        type(self).created += 1
        self.__dict__.update(state)
