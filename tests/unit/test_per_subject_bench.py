"""``benchmarks/per_subject.py``: measuring, the suggested resources, the summary, the docs
block, and one ``--quick`` run end to end (slow)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ps() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "per_subject", REPO / "benchmarks" / "per_subject.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["per_subject"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def _record(ps) -> dict:
    record = {
        "commit": "0123456789abcdef",
        "date": "2026-12-07T21:00Z",
        "mode": "paper",
        "command": "python benchmarks/per_subject.py --threads 1 2",
        "sizes": ps.asdict(ps.PAPER),
        "cpus": 2,
        "cpu_model": "AMD EPYC",
        "loadavg_start": [0.25, 0.2, 0.2],
        "loadavg_end": [1.5, 1.0, 0.5],
        "mem_factor": 1.5,
        "time_factor": 2.0,
        "requests": {
            "anat": {"mem_mb": 4000, "runtime": 60},
            "func_native": {"mem_mb": 6000, "runtime": 30},
        },
        "cases": [
            # 3000 MiB * 1.048576 * 1.5 = 4718.6 MB -> 4800; 100 s * 2 -> 4 min
            {"rule": "anat", "name": "1mm-deepbet", "threads": 1, "wall_seconds": 100.0,
             "cpu_seconds": 98.0, "max_rss_mib": 3000.0, "returncode": 0, "load_before": 0.3},
            {"rule": "anat", "name": "1mm-deepbet", "threads": 2, "wall_seconds": 70.0,
             "cpu_seconds": 120.0, "max_rss_mib": 3100.0, "returncode": 0},
            # 500 MiB -> 786.4 MB -> 800; 61 s * 2 = 122 s -> 3 min
            {"rule": "func_native", "name": "tr0.735-490", "threads": 1, "wall_seconds": 61.0,
             "cpu_seconds": 60.0, "max_rss_mib": 500.0, "returncode": 0},
            {"rule": "func_native", "name": "tr2.0-200", "threads": 1, "wall_seconds": 20.0,
             "cpu_seconds": 20.0, "max_rss_mib": 400.0, "returncode": 1},
        ],
    }  # fmt: skip
    return record


def test_run_measured_reports_the_child_not_this_process(ps, tmp_path):
    """The peak is the child's own: a 400 MB array shows, this interpreter does not."""
    big = ps.run_measured(
        [sys.executable, "-c", "import numpy; a = numpy.ones(50_000_000); a += 1"],
        tmp_path / "big.log",
    )
    small = ps.run_measured([sys.executable, "-c", "pass"], tmp_path / "small.log")
    assert big.returncode == 0 and small.returncode == 0
    assert 380 < big.max_rss_mib < 1000
    assert small.max_rss_mib < 100
    failed = ps.run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "f.log")
    assert failed.returncode == 3


def test_suggestion_applies_the_factors_and_rounds_up(ps):
    assert ps.suggest(3000.0, 100.0, 1.5, 2.0) == (4800, 4)
    assert ps.suggest(10.0, 1.0, 1.5, 2.0) == (100, 1)  # at least one minute
    assert ps.suggest(1000.0, 60.0, 1.0, 1.0) == (1100, 1)  # MiB -> MB: 1048.6 -> 1100


def test_the_paper_and_quick_specs_are_valid_demo_datasets(ps):
    """Each BOLD run's dataset passes the generator's own checks (slices vs multiband)."""
    for sizes in (ps.PAPER, ps.QUICK):
        for i, run in enumerate(sizes.runs):
            spec = ps._spec(sizes, run, f"bench{i}")
            assert spec.t1_shape == sizes.t1_shape and spec.n_volumes == run[2]
            assert spec.tr == run[1] and spec.bold_shape[2] % spec.multiband == 0
    assert ps.PAPER.t1_shape == (256, 256, 256) and ps.PAPER.anat_resolution_mm == 1
    assert [r[1:3] for r in ps.PAPER.runs] == [(0.735, 490), (2.0, 200)]


def test_verdict_names_too_low_and_wasteful_requests(ps):
    assert ps.verdict(4000, 4800) == "too low"
    assert ps.verdict(4800, 4800) == "ok"
    assert ps.verdict(19200, 4800) == "ok"
    assert ps.verdict(19300, 4800) == "over 4x"


def test_resources_come_from_successful_one_thread_runs(ps):
    rows = ps.resources_table(_record(ps))
    assert [(r["rule"], r["case"]) for r in rows] == [
        ("anat", "1mm-deepbet"),
        ("func_native", "tr0.735-490"),
    ]
    anat, func = rows
    assert (anat["mem_mb"], anat["runtime"], anat["mem"], anat["time"]) == (
        4800, 4, "too low", "over 4x",
    )  # fmt: skip
    assert (func["mem_mb"], func["runtime"], func["mem"], func["time"]) == (
        800, 3, "over 4x", "over 4x",
    )  # fmt: skip


def test_rule_resources_cover_every_case(ps):
    rows = [
        {"rule": "func_native", "mem_mb": 800, "runtime": 5},
        {"rule": "func_native", "mem_mb": 1200, "runtime": 2},
        {"rule": "anat", "mem_mb": 4800, "runtime": 4},
    ]
    assert ps.rule_resources(rows) == {"func_native": (1200, 5), "anat": (4800, 4)}


def test_markdown_states_sizes_load_runs_and_requests(ps):
    text = ps.markdown(_record(ps))
    assert "0123456" in text and "paper mode" in text
    assert "T1w 256x256x256 at 1 mm, anat at 1 mm" in text
    assert "BOLD 64x64x40 at 2.4x2.4x3 mm, func at 2 mm" in text
    assert "load average 0.25 before, 1.50 after" in text
    assert "| anat | 1mm-deepbet | 1 | 1 min 40 s | 98.0 | 3000 | 0.30 | 0 |" in text
    assert "| func_native | tr0.735-490 | 1 | 1 min 1 s | 60.0 | 500 | n/a | 0 |" in text
    assert "| anat | 1mm-deepbet | 4800 | 4 | 4000 | 60 | too low | over 4x |" in text
    assert "- `anat`: `resources: mem_mb=4800, runtime=4`" in text
    assert "- `func_native`: `resources: mem_mb=800, runtime=3`" in text
    assert "Failed (no suggestion): tr2.0-200." in text


def test_docs_block_is_rewritten_and_missing_markers_named(ps, tmp_path):
    (tmp_path / "docs").mkdir()
    perf = tmp_path / "docs" / "performance.md"
    perf.write_text("# P\n<!-- per-subject -->\nold\n<!-- /per-subject -->\nafter\n")
    ps.update_docs(_record(ps), repo=tmp_path)
    text = perf.read_text()
    assert "old" not in text and "| anat | 1mm-deepbet | 4800 |" in text
    assert text.startswith("# P\n<!-- per-subject -->\n") and text.endswith(
        "<!-- /per-subject -->\nafter\n"
    )
    perf.write_text("no block\n")
    with pytest.raises(ValueError, match=r"performance\.md"):
        ps.update_docs(_record(ps), repo=tmp_path)


def test_from_record_renders_without_running(ps, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_record(ps)))
    md = tmp_path / "r.md"
    assert ps.main(["--from-record", str(path), "--markdown", str(md)]) == 0
    assert "| anat | 1mm-deepbet | 4800 |" in md.read_text()
    path.write_text("{not json")
    assert ps.main(["--from-record", str(path)]) == 2
    assert "r.json" in capsys.readouterr().err


def test_a_dirty_tree_is_refused_without_the_flag(ps, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ps, "_git", lambda *a, **k: " M src/x.py" if a[0] == "status" else "")
    assert ps.main(["--quick", "--out", str(tmp_path / "r.json")]) == 2
    assert "differ from HEAD" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_the_workflow_requests_are_read_from_the_plans(ps):
    from brainharmony.planning import anat, func

    req = ps.current_requests(1)
    assert req["anat"] == {"mem_mb": anat.MEM_MB[1], "runtime": anat.RUNTIME_MIN[1]}
    assert req["func_native"]["mem_mb"] == func.MEM_MB["native"]


def test_performance_doc_carries_the_markers(ps):
    text = (REPO / "docs" / "performance.md").read_text()
    assert text.count(ps.BEGIN) == 1 and text.count(ps.END) == 1
    assert text.index(ps.BEGIN) < text.index(ps.END)
    assert "benchmarks/per_subject.py" in text


@pytest.mark.slow
def test_quick_run_end_to_end(ps, tmp_path):
    """The whole script on tiny inputs: every process succeeds and is measured."""
    out = tmp_path / "r.json"
    rc = ps.main(
        ["--quick", "--allow-dirty", "--threads", "1", "--no-template-row",
         "--workdir", str(tmp_path / "work"), "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    record = json.loads(out.read_text())
    assert [(c["rule"], c["name"]) for c in record["cases"]] == [
        ("anat", "2mm-deepbet"),
        ("func_native", "tr0.735-40"),
        ("func_native", "tr2.0-40"),
    ]
    for case in record["cases"]:
        assert case["returncode"] == 0 and case["wall_seconds"] > 0
        assert case["load_before"] >= 0
        assert 50 < case["max_rss_mib"] < 8000  # a python process with numpy, not the parent's
    assert len(record["resources"]) == 3
    bold = tmp_path / "work" / "inputs" / "benchA" / "sub-01" / "func"
    assert (bold / "sub-01_task-rest_bold.nii.gz").exists()
