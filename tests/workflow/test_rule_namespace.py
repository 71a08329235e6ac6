"""Rule files share names only through common.smk (docs/architecture.md, "Workflow").

``workflow/rules/common.smk`` validates the config, builds ``PLAN`` (one attribute per
stage, :mod:`brainharmony.planning`) and defines the input functions; every other rule
file reads only ``PLAN.<stage>``, ``rules.<x>.output`` / ``checkpoints`` and the names
common.smk defines. A name that one rule file defines at top level and another uses
ties the two files together (include order, hidden coupling): it belongs in
common.smk or in the planning package.

Snakemake syntax is not Python, so the files are read with regular expressions: the
top-level names of a file are its unindented assignments, ``def``/``class`` statements
and imports; the names it uses are its identifier tokens (comments left out).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "workflow" / "rules"
SHARED = "common.smk"

_ASSIGN = re.compile(r"^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)", re.M)
_DEF = re.compile(r"^(?:def|class)\s+([A-Za-z_]\w*)", re.M)
_FROM = re.compile(r"^from\s+\S+\s+import\s+\(?([^)\n]+(?:\n[^)]*)?)\)?", re.M)
_IMPORT = re.compile(r"^import\s+([^\n]+)", re.M)
_TOKEN = re.compile(r"[A-Za-z_]\w*")
_COMMENT = re.compile(r"#[^\n]*")


def defined_names(text: str) -> set[str]:
    """The names a Snakefile or rule file defines at top level."""
    names = set(_ASSIGN.findall(text)) | set(_DEF.findall(text))
    for group in _FROM.findall(text):
        for item in group.replace("\n", ",").split(","):
            item = item.strip()
            if item:
                names.add(item.split(" as ")[-1].strip())
    for group in _IMPORT.findall(text):
        for item in group.split(","):
            item = item.strip()
            names.add(item.split(" as ")[-1].strip().split(".")[0])
    return names


def used_names(text: str) -> set[str]:
    """Every identifier token of a file, comments left out."""
    return set(_TOKEN.findall(_COMMENT.sub("", text)))


def imports_package(text: str) -> bool:
    return bool(re.search(r"^\s*(from|import)\s+brainharmony\b", text, re.M))


def crossings(files: Mapping[str, str]) -> list[str]:
    """``file uses NAME (defined in other)`` for every rule file (not common.smk) that
    uses a name another rule file (or the Snakefile) defines at top level and common.smk
    does not."""
    shared = defined_names(files.get(SHARED, ""))
    defined = {name: defined_names(text) - shared for name, text in files.items()}
    found = []
    for name, text in sorted(files.items()):
        if name == SHARED:
            continue
        used = used_names(text) - defined[name]
        for other, names in sorted(defined.items()):
            if other == name:
                continue
            found += [f"{name} uses {n} (defined in {other})" for n in sorted(used & names)]
    return found


def _workflow_files() -> dict[str, str]:
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(RULES.glob("*.smk"))}
    files["Snakefile"] = (REPO / "Snakefile").read_text(encoding="utf-8")
    return files


def test_rule_files_share_names_only_through_common_smk():
    found = crossings(_workflow_files())
    assert not found, "move these into common.smk or brainharmony.planning:\n" + "\n".join(found)


def test_only_common_smk_imports_the_package():
    files = _workflow_files()
    importing = sorted(n for n, text in files.items() if n != SHARED and imports_package(text))
    assert not importing, f"rule files read PLAN (common.smk), not the package: {importing}"


def test_crossings_are_found():
    """The check fails on a rule file that uses another rule file's name."""
    files = {
        SHARED: "PLAN = planning.from_config(config)\n\ndef get_x(wildcards):\n    return 1\n",
        "func.smk": "FUNC = PLAN.func\n\nrule a:\n    input:\n        get_x,\n",
        "qc.smk": "rule b:\n    params:\n        space=FUNC.space,\n        x=PLAN.func.res,\n",
        "anat.smk": "from brainharmony.anat import planning as anat_planning\n",
        "geometry.smk": "rule c:\n    input:\n        anat_planning.targets(),\n",
    }
    assert crossings(files) == [
        "geometry.smk uses anat_planning (defined in anat.smk)",
        "qc.smk uses FUNC (defined in func.smk)",
    ]
    assert imports_package(files["anat.smk"]) and not imports_package(files["qc.smk"])
