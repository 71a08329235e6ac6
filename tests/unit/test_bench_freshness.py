"""docs/performance.md describes the code at HEAD: no benchmarked module changed since.

``benchmarks/results/report/run.json`` records the commit the committed report measured
(and the commit of every ``--update`` rerun); each benchmark in ``benchmarks/run_all.py``
declares the source paths it exercises. This test fails when any of those paths changed
in a commit after the report's, when the report was measured with uncommitted changes,
or when a benchmark is missing from it: rerun ``make bench`` at a committed HEAD and
commit the regenerated report. It is skipped only when the git history it needs is not
there (no ``.git``, a shallow clone without the report's commit).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "benchmarks"
RUN_JSON = BENCH_DIR / "results" / "report" / "run.json"


def _run_all():
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location("bench_run_all_fresh", BENCH_DIR / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_committed_report_measured_the_current_benchmarked_code() -> None:
    run_all = _run_all()
    manifest = json.loads(RUN_JSON.read_text(encoding="utf-8"))
    assert manifest.get("mode") == "full" and manifest.get("complete"), (
        f"{RUN_JSON}: not a complete full run ({manifest.get('command')})"
    )
    try:
        problems = run_all.stale_report(manifest)
    except run_all.NoHistory as exc:
        pytest.skip(f"cannot check the report's freshness: {exc}")
    assert not problems, (
        "docs/performance.md is stale; rerun `make bench` at a committed HEAD and commit "
        "the report:\n" + "\n".join(problems)
    )
