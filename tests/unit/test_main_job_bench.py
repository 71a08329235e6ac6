"""``benchmarks/main_job.py``: the Snakemake log parser and the summary (no run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]

LOG = """\
Job stats:
job      count
-----  -------
demo         1
anat         2
total        3

Select jobs to execute...
Execute 2 jobs...

[Mon Dec  7 16:00:24 2026]
localrule demo:
    output: resources/demo/demoB/dataset_description.json
    jobid: 4
    reason: Missing output files
Shell command: python -m brainharmony -v demo --out resources/demo

[Mon Dec  7 16:00:24 2026]
localrule anat:
    output: results/anat/demoA/sub-01/anat/x.nii.gz
    jobid: 7
    wildcards: dataset=demoA, subject=01
[Mon Dec  7 16:00:49 2026]
Finished jobid: 7 (Rule: anat)
1 of 3 steps (33%) done
[Mon Dec  7 16:00:50 2026]
localrule anat:
    jobid: 9
[Mon Dec  7 16:01:00 2026]
Finished jobid: 4 (Rule: demo)
2 of 3 steps (67%) done
[Mon Dec  7 16:01:05 2026]
Finished jobid: 9 (Rule: anat)
3 of 3 steps (100%) done
[Mon Dec  7 16:01:06 2026]
localrule report:
    jobid: 11
Error in rule report:
"""


@pytest.fixture(scope="module")
def main_job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("main_job", REPO / "benchmarks" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["main_job"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def test_jobs_and_their_durations_come_from_the_log(main_job):
    jobs = main_job.parse_log(LOG)
    assert sorted((j.rule, j.jobid, j.seconds) for j in jobs) == [
        ("anat", 7, 25.0),
        ("anat", 9, 15.0),
        ("demo", 4, 36.0),
    ]  # the failed report job has no finish line and is left out


def test_per_rule_sums_and_orders_by_time(main_job):
    rules = main_job.per_rule(main_job.parse_log(LOG))
    assert list(rules) == ["anat", "demo"]
    assert rules["anat"] == {"jobs": 2, "seconds": 40.0, "max_seconds": 25.0}


def test_markdown_summary_states_commit_time_load_and_rules(main_job):
    record = {
        "commit": "0123456789abcdef",
        "date": "2026-12-07T20:00Z",
        "wall_seconds": 905.4,
        "cpu_seconds": 1700.2,
        "n_jobs": 3,
        "max_rss_mib": 1100.0,
        "cores": 2,
        "cpu_model": "AMD EPYC",
        "loadavg_start": [0.1, 0.2, 0.3],
        "loadavg_end": [1.9, 1.8, 1.5],
        "command": "snakemake --configfile config/demo.yaml --cores 2",
        "rules": main_job.per_rule(main_job.parse_log(LOG)),
    }
    text = main_job.markdown(record)
    assert "0123456" in text and "**15 min 5 s**" in text and "1700 s CPU" in text
    assert "| anat | 2 | 40 | 25 |" in text
    assert "load average 0.10 before, 1.90 after" in text


def test_a_dirty_tree_is_refused_without_the_flag(main_job, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(main_job, "_git", lambda *a, **k: " M src/x.py" if a[0] == "status" else "")
    assert main_job.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "differ from HEAD" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def _record(main_job):
    return {
        "commit": "abcdef0123456789",
        "date": "2026-12-07T21:00Z",
        "wall_seconds": 1500.0,
        "cpu_seconds": 2900.0,
        "n_jobs": 210,
        "max_rss_mib": 1000.0,
        "cores": 2,
        "cpu_model": "AMD EPYC",
        "loadavg_start": [0.5, 0.5, 0.5],
        "loadavg_end": [2.0, 2.0, 2.0],
        "command": "snakemake --configfile config/demo.yaml --cores 2",
        "rules": main_job.per_rule(main_job.parse_log(LOG)),
    }


def test_docs_blocks_are_rewritten_from_a_record(main_job, tmp_path):
    (tmp_path / "docs").mkdir()
    perf = tmp_path / "docs" / "performance.md"
    readme = tmp_path / "README.md"
    perf.write_text("# P\n\nbefore\n<!-- main-job -->\nold table\n<!-- /main-job -->\nafter\n")
    readme.write_text("intro\n<!-- main-job -->\nMeasured: 1 min\n<!-- /main-job -->\nend\n")
    main_job.update_docs(_record(main_job), "benchmarks/results/main_job/x.json", repo=tmp_path)
    p, r = perf.read_text(), readme.read_text()
    assert "old table" not in p and "| anat | 2 | 40 | 25 |" in p
    assert p.startswith("# P\n\nbefore\n<!-- main-job -->\n") and p.endswith(
        "<!-- /main-job -->\nafter\n"
    )
    assert "**25 min 0 s** on 2 cores" in r and "abcdef0" in r and "1 min" not in r
    assert "over the 15-minute target" in r
    assert "benchmarks/results/main_job/x.json" in r


def test_missing_markers_are_an_error_naming_the_file(main_job, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "performance.md").write_text("no block here\n")
    (tmp_path / "README.md").write_text("<!-- main-job -->\n<!-- /main-job -->\n")
    with pytest.raises(ValueError, match=r"performance\.md"):
        main_job.update_docs(_record(main_job), "x.json", repo=tmp_path)


def test_the_repository_docs_hold_the_blocks(main_job):
    """README.md and docs/performance.md carry the main-job markers the script fills."""
    for path in (REPO / "README.md", REPO / "docs" / "performance.md"):
        text = path.read_text()
        assert text.count(main_job.BEGIN) == 1 and text.count(main_job.END) == 1, path
