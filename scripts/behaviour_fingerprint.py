"""Fingerprint the workflow's behaviour: run it, then hash the paper table and weights.

A restructure that must not change behaviour (issue 24) is checked by running this at
the commit before and the commit after and comparing the two outputs line by line:

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/src .venv/bin/python scripts/behaviour_fingerprint.py \
        --repo /tmp/before --workdir /tmp/fp-before > before.txt
    .venv/bin/python scripts/behaviour_fingerprint.py --workdir /tmp/fp-after > after.txt
    diff before.txt after.txt

Two runs, each from an empty work folder:
- ``main``: the main job (``config/demo.yaml``, what ``make demo`` runs);
- ``tiny``: the tiny run of the workflow tests (``tests/workflow/test_workflow.py::TINY``).

Printed: ``<sha256>  <run>/<path>`` for the main job's ``results/tables/paper_table.md``
and, for both runs, every table under ``results/tables`` and every
``results/models/*/model.safetensors``. Snakemake runs with the interpreter running this
script, so PYTHONPATH picks which checkout's package the jobs import.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _tiny_config(repo: Path) -> dict:
    sys.path.insert(0, str(repo))
    try:
        from tests.workflow.test_workflow import TINY
    finally:
        sys.path.remove(str(repo))
    return TINY


def _run(repo: Path, workdir: Path, configfile: Path, cores: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(configfile),
        "--cores", str(cores), "--max-jobs-per-timespan", "100/10s", "all",
    ]  # fmt: skip
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(workdir / "snakemake.log", "w") as log:
        done = subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir}: see {workdir / 'snakemake.log'}")


def _hashes(label: str, workdir: Path) -> list[str]:
    results = workdir / "results"
    files = sorted((results / "tables").glob("*")) + sorted(
        (results / "models").glob("*/model.safetensors")
    )
    lines = []
    for path in files:
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{digest}  {label}/{path.relative_to(workdir)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose Snakefile runs")
    parser.add_argument("--workdir", type=Path, required=True, help="empty scratch folder")
    parser.add_argument("--runs", nargs="+", choices=["main", "tiny"], default=["main", "tiny"])
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    lines = []
    for label in args.runs:
        workdir = args.workdir.resolve() / label
        if label == "main":
            configfile = repo / "config" / "demo.yaml"
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            configfile = workdir / "config.yaml"
            configfile.write_text(yaml.safe_dump(_tiny_config(repo)))
        _run(repo, workdir, configfile, args.cores)
        lines += _hashes(label, workdir)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
