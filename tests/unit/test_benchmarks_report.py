"""The benchmark report: every script registered, performance.md rendered from JSON only.

No benchmark runs here: the results are fabricated with the records the scripts write
(``benchmarks/benchlib.py``), and the subprocess runner is exercised on tiny scripts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from brainharmony.io import InputDataError

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "benchmarks"


@pytest.fixture(scope="module")
def run_all() -> ModuleType:
    """``benchmarks/run_all.py`` loaded as a module (it is a script, not in the package)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCH_DIR / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _cmp(benchlib: ModuleType, key: str, ours: float, peer: float | None, **kw) -> dict:
    defaults = {
        "what": f"comparison {key}",
        "ours_label": "ours()",
        "unit": "s",
        "peer_label": "peer()",
        "peer_package": "peerpkg",
        "peer_version": "1.2.3",
        "size": "100 x 200",
        "repeats": 3,
        "threads": 1,
    }
    defaults.update(kw)
    return benchlib.comparison(key=key, ours_value=ours, peer_value=peer, **defaults)


def _fabricate(run_all: ModuleType, root: Path, ours: float = 2.0, peer: float = 10.0) -> Path:
    """A results folder: two benchmarks that ran (one without its peer) and one failure."""
    benchlib = run_all.benchlib
    env = {"loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.5, 1.2, 1.1], "threads": 1}
    alpha = benchlib.result_document(
        benchmark="alpha",
        title="Alpha stage",
        comparisons=[
            _cmp(
                benchlib,
                "speed",
                ours,
                peer,
                target=(">=", 3.0),
                target_source="issue 0",
                accuracy_criterion="max rel diff <= 1e-6",
                accuracy_ok=True,
            ),
            _cmp(
                benchlib,
                "rate",
                40.0,
                100.0,
                unit="GFLOP/s",
                higher_is_better=True,
                target=(">=", 0.5),
                accuracy_criterion="none: a floor",
                agreement=[benchlib.agreement_value("max rel diff", 3.1e-8)],
            ),
        ],
        env=env,
        facts=[benchlib.fact("peak memory", 1928.3, "MB")],
        notes=["A note on the method."],
    )
    beta = benchlib.result_document(
        benchmark="beta",
        title="Beta stage",
        comparisons=[
            _cmp(
                benchlib,
                "missing",
                1.5,
                None,
                peer_package="antspyx",
                peer_version=None,
                peer_status="no ANTsPy environment at /x",
                agreement=[benchlib.agreement_pair("error", 0.17, None, "mm")],
            )
        ],
        env=env,
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "alpha.json").write_text(json.dumps(alpha))
    (root / "beta.json").write_text(json.dumps(beta))
    entry = {
        "stage": "stage (issue 0)",
        "command": "python benchmarks/bench_x.py",
        "wall_s": 12.0,
        "loadavg_start": [2.0, 2.0, 2.0],
        "loadavg_end": [2.5, 2.0, 2.0],
        "returncode": 0,
        "status": "ok",
    }
    manifest = {
        "schema_version": benchlib.SCHEMA_VERSION,
        "mode": "full",
        "complete": True,
        "command": "python benchmarks/run_all.py",
        "results_dir": str(root),
        "started": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:10:00Z",
        "total_wall_s": 600.0,
        "loadavg_start": [3.25, 2.5, 2.0],
        "loadavg_end": [4.5, 3.0, 2.25],
        "machine": {
            "cpu_model": "Test CPU 9000",
            "logical_cpus": 2,
            "usable_cpus": 2,
            "memory_gib": 23.5,
            "platform": "Linux-test",
            "python": "3.11.7",
            "torch": "2.13.0+cpu",
            "numpy": "2.4.6",
            "brainharmony": "0.1.0",
            "git_sha": "abc123",
            "git_uncommitted_files": 2,
        },
        "benchmarks": [
            {**entry, "name": "alpha", "script": "bench_alpha.py", "result": "alpha.json"},
            {**entry, "name": "beta", "script": "bench_beta.py", "result": "beta.json"},
            {
                **entry,
                "name": "gamma",
                "script": "bench_gamma.py",
                "result": "gamma.json",
                "status": "failed",
                "returncode": 1,
                "error": "exit code 1; last lines of gamma.log:\nTraceback: boom",
            },
        ],
    }
    (root / "run.json").write_text(json.dumps(manifest))
    return root


def _table_rows(text: str) -> list[list[str]]:
    section = text.split("## Ratios", 1)[1].split("## Machine", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[1:]]


def test_every_benchmark_script_is_registered(run_all: ModuleType) -> None:
    scripts = {p.name for p in BENCH_DIR.glob("bench_*.py")}
    registered = [b.script for b in run_all.BENCHMARKS]
    assert scripts, "no benchmark scripts found"
    assert sorted(registered) == sorted(scripts), "register every bench_*.py in run_all.py"
    assert len({b.name for b in run_all.BENCHMARKS}) == len(run_all.BENCHMARKS)
    for bench in run_all.BENCHMARKS:  # full and quick runs both name the JSON output
        for quick in (False, True):
            cmd = bench.command(Path("/tmp/x.json"), quick, install_peers=False)
            assert cmd[-2:] == ["--json", "/tmp/x.json"]
            assert Path(cmd[1]).is_file()


def test_report_is_rendered_from_the_json_results(run_all: ModuleType, tmp_path: Path) -> None:
    root = _fabricate(run_all, tmp_path / "results")
    out = tmp_path / "performance.md"
    # exit status 1: gamma failed (the report is still written)
    assert run_all.main(["--render-only", "--results-dir", str(root), "--output", str(out)]) == 1
    text = out.read_text()
    rows = _table_rows(text)
    assert [r[0] for r in rows] == ["alpha", "alpha", "beta", "gamma"]
    speed, rate, missing, failed = rows
    # ours 2 s, peer 10 s: 5x, above the 3x target; the peer's package and version shown.
    assert speed[3:8] == ["2.00 s", "10.0 s", "peerpkg 1.2.3", "5.00x", ">= 3x: met"]
    # a rate: ours over the peer's, 0.4 below its 0.5 target
    assert rate[3:7] == ["40.0 GFLOP/s", "100 GFLOP/s", "peerpkg 1.2.3", "0.400x"]
    assert rate[7] == ">= 0.5x: **not met** (speed)"
    assert rate[8] == "max rel diff 3.1e-08"
    assert missing[6] == "peer not available"
    assert missing[5] == "antspyx (not installed)"
    assert missing[8] == "error: ours 0.170 mm, peer -"
    assert "**failed**" in failed
    # machine section and per-benchmark notes come from run.json and the results
    assert "Test CPU 9000" in text and "23.5 GiB" in text
    assert "3.25 / 2.50 / 2.00 at the start, 4.50 / 3.00 / 2.25 at the end" in text
    assert "torch 2.13.0+cpu, numpy 2.4.6" in text and "git abc123" in text
    assert "peer not available: no ANTsPy environment at /x" in text
    assert "peak memory: 1,928 MB" in text
    assert "Traceback: boom" in text
    # the figures follow the JSON: other measurements, other report
    root2 = _fabricate(run_all, tmp_path / "results2", ours=4.0, peer=6.0)
    out2 = tmp_path / "performance2.md"
    run_all.main(["--render-only", "--results-dir", str(root2), "--output", str(out2)])
    assert _table_rows(out2.read_text())[0][3:8] == [
        "4.00 s",
        "6.00 s",
        "peerpkg 1.2.3",
        "1.50x",
        ">= 3x: **not met** (speed)",
    ]


def test_rerendering_keeps_the_hand_written_part(run_all: ModuleType, tmp_path: Path) -> None:
    """docs/performance.md ends in hand-written measurements (the main job's runs): a new
    render replaces the generated part above the marker and keeps everything below it."""
    root = _fabricate(run_all, tmp_path / "results")
    out = tmp_path / "performance.md"
    tail = f"{run_all.HAND_WRITTEN}\n\n## The main job\n\nMeasured by hand: 1 min.\n"
    out.write_text("# stale generated part\n\n" + tail)
    run_all.main(["--render-only", "--results-dir", str(root), "--output", str(out)])
    text = out.read_text()
    assert "stale generated part" not in text and _table_rows(text)
    assert text.endswith(tail) and text.count(run_all.HAND_WRITTEN) == 1
    run_all.main(["--render-only", "--results-dir", str(root), "--output", str(out)])
    assert out.read_text() == text  # rendering twice changes nothing
    # without the marker, the file is all generated (as before)
    out.write_text("# old\n\nhand text without a marker\n")
    run_all.main(["--render-only", "--results-dir", str(root), "--output", str(out)])
    assert "hand text" not in out.read_text()


def test_inconsistent_or_incomplete_results_are_refused(
    run_all: ModuleType, tmp_path: Path
) -> None:
    root = _fabricate(run_all, tmp_path / "results")
    doc = json.loads((root / "alpha.json").read_text())
    doc["comparisons"][0]["ratio"] = 50.0  # a typed-in figure that the values do not give
    (root / "alpha.json").write_text(json.dumps(doc))
    with pytest.raises(InputDataError, match=r"alpha\.json.*ratio 50\.0 does not follow"):
        run_all.load_run(root)
    del doc["comparisons"][0]["size"]
    (root / "alpha.json").write_text(json.dumps(doc))
    with pytest.raises(InputDataError, match=r"alpha\.json.*no 'size'"):
        run_all.load_run(root)
    with pytest.raises(InputDataError, match=r"run\.json.*no benchmark run manifest"):
        run_all.load_run(tmp_path / "empty")


def test_runner_reports_failures_and_goes_on(run_all: ModuleType, tmp_path: Path) -> None:
    """A crashing or hanging benchmark is recorded; a good one writes its JSON."""
    benchlib = run_all.benchlib
    doc = benchlib.result_document(
        benchmark="good",
        title="Good",
        comparisons=[_cmp(benchlib, "k", 1.0, 2.0)],
        env={"loadavg_start": [0.0, 0.0, 0.0]},
    )
    good = tmp_path / "bench_good.py"
    good.write_text(
        textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            Path(sys.argv[sys.argv.index("--json") + 1]).write_text({json.dumps(doc)!r})
            """
        )
    )
    bad = tmp_path / "bench_bad.py"
    bad.write_text("raise SystemExit('boom: no data')\n")
    slow = tmp_path / "bench_slow.py"
    slow.write_text("import time\ntime.sleep(60)\n")
    results = tmp_path / "results"
    results.mkdir()
    entries = {}
    for name, script, timeout in (("good", good, 60), ("bad", bad, 60), ("slow", slow, 1)):
        bench = run_all.Benchmark(name, str(script), "test", "", "")
        entries[name] = run_all.run_benchmark(
            bench, results, quick=False, install_peers=False, timeout_s=timeout
        )
    assert entries["good"]["status"] == "ok" and (results / "good.json").is_file()
    assert entries["bad"]["status"] == "failed"
    assert "boom: no data" in entries["bad"]["error"]
    assert entries["slow"]["status"] == "timeout"
    assert entries["slow"]["wall_s"] < 30


def test_partial_runs_do_not_replace_the_full_report(
    run_all: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    benchlib = run_all.benchlib
    full_report = tmp_path / "docs" / "performance.md"
    monkeypatch.setattr(run_all, "DEFAULT_OUTPUT", full_report)
    monkeypatch.setattr(
        run_all,
        "machine_info",
        lambda: json.loads((_fabricate(run_all, tmp_path / "m") / "run.json").read_text())[
            "machine"
        ],
    )

    def fake_run(bench, results_dir, *, quick, install_peers, timeout_s):
        doc = benchlib.result_document(
            benchmark=bench.name,
            title=bench.name,
            comparisons=[_cmp(benchlib, "k", 1.0, 3.0)],
            env={"loadavg_start": [0.0, 0.0, 0.0]},
        )
        (results_dir / f"{bench.name}.json").write_text(json.dumps(doc))
        return {
            "name": bench.name,
            "script": bench.script,
            "stage": bench.stage,
            "command": "python x",
            "result": f"{bench.name}.json",
            "status": "ok",
            "returncode": 0,
            "wall_s": 1.0,
            "loadavg_start": [0.0, 0.0, 0.0],
            "loadavg_end": [0.0, 0.0, 0.0],
        }

    monkeypatch.setattr(run_all, "run_benchmark", fake_run)
    monkeypatch.setattr(run_all, "_uncommitted_files", lambda: 0)
    partial = tmp_path / "partial"
    assert run_all.main(["--only", "func", "--results-dir", str(partial)]) == 0
    assert (partial / "performance.md").is_file() and not full_report.exists()
    assert [r[0] for r in _table_rows((partial / "performance.md").read_text())] == ["func"]
    full = tmp_path / "full"
    assert run_all.main(["--results-dir", str(full)]) == 0
    rows = _table_rows(full_report.read_text())
    assert [r[0] for r in rows] == [b.name for b in run_all.BENCHMARKS]
    assert all(r[6] == "3.00x" for r in rows)


def test_a_target_is_met_only_when_speed_and_accuracy_hold(run_all: ModuleType) -> None:
    benchlib = run_all.benchlib
    kw = {"target": (">=", 2.0), "accuracy_criterion": "error <= 0.05 mm"}
    fast_exact = _cmp(benchlib, "a", 1.0, 10.0, accuracy_ok=True, **kw)
    fast_wrong = _cmp(benchlib, "b", 1.0, 10.0, accuracy_ok=False, **kw)
    slow_wrong = _cmp(benchlib, "c", 1.0, 1.5, accuracy_ok=False, **kw)
    assert fast_exact["meets_target"] is True
    assert benchlib.format_target(fast_exact) == ">= 2x: met"
    assert fast_wrong["speed_ok"] is True and fast_wrong["meets_target"] is False
    assert benchlib.format_target(fast_wrong) == ">= 2x: **not met** (accuracy)"
    assert benchlib.format_target(slow_wrong) == ">= 2x: **not met** (speed, accuracy)"
    assert benchlib.format_accuracy(fast_wrong) == "error <= 0.05 mm (**failed**)"
    with pytest.raises(ValueError, match="accuracy criterion"):
        _cmp(benchlib, "d", 1.0, 10.0, target=(">=", 2.0))


def test_a_met_target_with_failed_accuracy_is_refused(run_all: ModuleType, tmp_path: Path) -> None:
    root = _fabricate(run_all, tmp_path / "results")
    doc = json.loads((root / "alpha.json").read_text())
    doc["comparisons"][0]["accuracy_ok"] = False  # meets_target left True by hand
    (root / "alpha.json").write_text(json.dumps(doc))
    with pytest.raises(InputDataError, match=r"alpha\.json.*target met although"):
        run_all.load_run(root)


def test_interleaved_times_give_every_side_the_same_warmup_and_repeats(
    run_all: ModuleType,
) -> None:
    benchlib = run_all.benchlib
    calls: list[str] = []
    funcs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = benchlib.interleaved_times(funcs, repeats=3, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[:6] == ["a", "b", "c", "a", "b", "c"]  # the warm-up rounds
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotated rounds
    with pytest.raises(ValueError, match="repeats >= 1"):
        benchlib.interleaved_times(funcs, repeats=0)


def test_pin_threads_limits_every_pool(run_all: ModuleType) -> None:
    import threadpoolctl
    import torch

    benchlib = run_all.benchlib
    before = torch.get_num_threads()
    try:
        pinned = benchlib.pin_threads(1)
        assert pinned["threads"] == 1 and pinned["torch"] == 1 == torch.get_num_threads()
        assert pinned["pools"] and all(p["num_threads"] == 1 for p in pinned["pools"])
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info())
    finally:
        benchlib._PINNED.pop().restore_original_limits()
        torch.set_num_threads(before)
    assert benchlib.thread_env(2)["OMP_NUM_THREADS"] == "2"
    with pytest.raises(ValueError):
        benchlib.pin_threads(0)


def test_benchmarks_declare_existing_sources_and_threads(run_all: ModuleType) -> None:
    for bench in run_all.BENCHMARKS:
        assert bench.threads >= 1, bench.name
        assert any(s.startswith("src/") for s in bench.sources), f"{bench.name}: no sources"
        for path in bench.all_sources():
            assert (REPO / path).exists(), f"{bench.name}: {path} does not exist"


def test_a_full_run_refuses_uncommitted_changes(
    run_all: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(run_all, "_uncommitted_files", lambda: 3)
    monkeypatch.setattr(
        run_all, "run_benchmark", lambda bench, *a, **k: ran.append(bench.name) or {}
    )
    with pytest.raises(SystemExit, match=r"3 tracked file.*differ from HEAD"):
        run_all.main(["--results-dir", str(tmp_path / "full")])
    root = _fabricate(run_all, tmp_path / "results")
    with pytest.raises(SystemExit, match="differ from HEAD"):
        run_all.main(["--only", "func", "--update", "--results-dir", str(root)])
    assert ran == []  # nothing was timed


def test_the_runner_pins_the_subprocess_threads(run_all: ModuleType, tmp_path: Path) -> None:
    benchlib = run_all.benchlib
    doc = benchlib.result_document(
        benchmark="env",
        title="Env",
        comparisons=[_cmp(benchlib, "k", 1.0, 2.0)],
        env={"loadavg_start": [0.0, 0.0, 0.0]},
    )
    script = tmp_path / "bench_env.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            from pathlib import Path
            print("threads", os.environ["OMP_NUM_THREADS"], os.environ["OPENBLAS_NUM_THREADS"])
            Path(sys.argv[sys.argv.index("--json") + 1]).write_text({json.dumps(doc)!r})
            """
        )
    )
    bench = run_all.Benchmark("env", str(script), "test", "", "", threads=2, sources=("src",))
    entry = run_all.run_benchmark(bench, tmp_path, quick=False, install_peers=False, timeout_s=60)
    assert entry["status"] == "ok" and entry["threads"] == 2
    assert "threads 2 2" in (tmp_path / "env.log").read_text()
    assert entry["sources"][-1] == "src" and "benchmarks/benchlib.py" in entry["sources"]


def _git(repo: Path, *args: str) -> str:
    import subprocess

    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
        "PATH": "/usr/bin:/bin",
        "HOME": str(repo),
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def test_stale_report_names_the_benchmarks_whose_sources_changed(
    run_all: ModuleType, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "benchmarks").mkdir()
    for name in ("a.py", "b.py"):
        (repo / "src" / name).write_text("x = 1\n")
    for name in ("bench_a.py", "bench_b.py", "benchlib.py"):
        (repo / "benchmarks" / name).write_text("")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    sha = _git(repo, "rev-parse", "HEAD")
    benches = (
        run_all.Benchmark("a", "bench_a.py", "s", "", "", sources=("src/a.py",)),
        run_all.Benchmark("b", "bench_b.py", "s", "", "", sources=("src/b.py",)),
    )
    manifest = {
        "machine": {"git_sha": sha, "git_uncommitted_files": 0},
        "benchmarks": [{"name": "a", "status": "ok"}, {"name": "b", "status": "ok"}],
    }
    assert run_all.stale_report(manifest, repo, benches) == []
    (repo / "src" / "b.py").write_text("x = 2\n")
    _git(repo, "commit", "-q", "-am", "change b")
    problems = run_all.stale_report(manifest, repo, benches)
    assert len(problems) == 1 and problems[0].startswith("b: 1 commit(s)")
    assert "change b" in problems[0]
    # a rerun of b (--update) at the new commit makes it fresh again
    manifest["updates"] = [{"benchmarks": ["b"], "git_sha": _git(repo, "rev-parse", "HEAD")}]
    assert run_all.stale_report(manifest, repo, benches) == []
    # uncommitted changes at measurement time, or a missing benchmark, are stale as such
    manifest["machine"]["git_uncommitted_files"] = 7
    manifest["benchmarks"].pop(0)
    problems = run_all.stale_report(manifest, repo, benches)
    assert any("uncommitted changes (7 tracked" in p for p in problems)
    assert "a: not in the report" in problems
    with pytest.raises(run_all.NoHistory):
        run_all.stale_report(manifest, tmp_path / "not-a-repo", benches)
