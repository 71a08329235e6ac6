"""Split a ``pip freeze`` of the full development environment into the three lock files.

``make lock`` pipes the freeze of ``.venv`` (everything ``make install`` put there) into
this script, which sorts each pin by what needs it, read from pyproject.toml and the
installed packages' own metadata:

- ``requirements/lock-cpu.txt``: the runtime set, the dependencies of the package and of
  its ``workflow`` and ``preproc`` extras (what the workflow runs with);
- ``requirements/lock-dev.txt``: what the tests and ``make lint`` add (extra ``dev``);
- ``requirements/lock-bench.txt``: what ``make bench`` adds (extra ``bench``).

A pin needed by the runtime set goes only to ``lock-cpu.txt``; one needed by both ``dev``
and ``bench`` goes to both (each file installs on top of the runtime lock on its own).
Packages installed with ``--no-deps`` (``requirements/lock-nodeps.txt``) stay out. A pin
that no set needs is an error: remove it from the environment or declare it.

Usage: ``pip freeze --exclude-editable | python scripts/split_lock.py``
"""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
RUNTIME_EXTRAS = ("workflow", "preproc")
NEVER_PINNED = {"pip", "setuptools", "wheel"}

HEADERS = {
    "lock-cpu.txt": """\
# Exact, tested runtime set for CPU machines: the package's dependencies and its
# `workflow` and `preproc` extras (no test, lint or benchmark tool; those are
# lock-dev.txt and lock-bench.txt). `make install` installs all three.
# Regenerate: make lock   (after changing pyproject.toml's ranges).
# torch==2.13.0 resolves to the CPU build where one is provided locally; on a GPU
# cluster the same pin gives the CUDA build.
""",
    "lock-dev.txt": """\
# What the tests and `make lint` add to the runtime set (lock-cpu.txt): pyproject extra
# `dev`. Installed by `make install` on top of lock-cpu.txt. Regenerate: make lock.
""",
    "lock-bench.txt": """\
# What `make bench` adds to the runtime set (lock-cpu.txt): pyproject extra `bench`, the
# peer tools the benchmarks compare against (ANTsPy has its own environment:
# benchmarks/requirements-ants.txt). Installed by `make install`. Regenerate: make lock.
""",
}


def _distributions() -> dict[str, importlib.metadata.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()}


def closure(requirements: list[str], dists: dict[str, importlib.metadata.Distribution]) -> set:
    """Names of ``requirements`` and everything they need, as installed here."""
    seen: set[str] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        if name in seen or name not in dists:
            continue
        seen.add(name)
        for line in dists[name].requires or []:
            sub = Requirement(line)
            extras = req.extras or {""}
            if sub.marker and not any(sub.marker.evaluate({"extra": e}) for e in extras):
                continue
            stack.append(sub)
    return seen


def split(freeze: list[str]) -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    dists = _distributions()
    runtime = closure(
        [*project["dependencies"], *(r for e in RUNTIME_EXTRAS for r in extras[e])], dists
    )
    dev = closure(extras["dev"], dists) - runtime
    bench = closure(extras["bench"], dists) - runtime
    nodeps = {
        canonicalize_name(Requirement(line).name)
        for line in (REPO / "requirements" / "lock-nodeps.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    }
    out: dict[str, list[str]] = {name: [] for name in HEADERS}
    unclaimed = []
    for line in freeze:
        line = line.strip()
        if not line or line.startswith("#") or "==" not in line:
            continue
        name = canonicalize_name(Requirement(line).name)
        if name in NEVER_PINNED or name in nodeps or name == "brainharmony":
            continue
        homes = [
            f
            for f, members in (
                ("lock-cpu.txt", runtime),
                ("lock-dev.txt", dev),
                ("lock-bench.txt", bench),
            )
            if name in members
        ]
        if not homes:
            unclaimed.append(line)
        for f in homes:
            out[f].append(line)
    if unclaimed:
        raise SystemExit(
            "split_lock: installed but needed by no set (declare it or uninstall it): "
            + ", ".join(unclaimed)
        )
    return out


def main() -> int:
    files = split(sys.stdin.read().splitlines())
    for name, lines in files.items():
        path = REPO / "requirements" / name
        path.write_text(HEADERS[name] + "".join(f"{x}\n" for x in lines), encoding="utf-8")
        print(f"split_lock: {path.relative_to(REPO)}: {len(lines)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
