"""Partial reruns and resume after a kill, on the tiny demo (local runs, no cluster).

The same Snakemake decisions drive SLURM runs: the main process picks the jobs, the
executor only runs them (see docs/hpc.md). Targets come first on these command lines:
`--forcerun`, `--until` and `--configfile` take several values, so
`snakemake --forcerun ingest ingest_all` would read `ingest_all` as a second rule to force
and build the default target `all` instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, REPO, run_snakemake, snakemake_exe
from tests.slurm.conftest import (
    INGEST_FILES,
    TINY,
    copy_run,
    job_stats,
    normalized,
    write_tiny_config,
)

pytestmark = pytest.mark.workflow

DATASETS = ("demoA", "demoB")


def _plan(workdir: Path, *args: str) -> dict[str, int]:
    """Dry-run: the jobs Snakemake would run, by rule."""
    out = run_snakemake(workdir, *args, "--configfile", str(workdir / "tiny.yaml"), "-n")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    stats = job_stats(text)
    assert stats, text[-3000:]
    return stats


def _outputs(workdir: Path, rule: str) -> list[Path]:
    if rule == "demo":
        root = workdir / "resources" / "demo"
        return [root / d / "dataset_description.json" for d in DATASETS] + [
            root / f"{d}-truth" / "README.md" for d in DATASETS
        ]
    return [workdir / "results" / "ingest" / d / name for d in DATASETS for name in INGEST_FILES]


def _mtimes(paths: list[Path]) -> list[int]:
    return [p.stat().st_mtime_ns for p in paths]


def test_forcerun_plans_the_rule_and_its_dependents_only(tiny_reference):
    assert _plan(tiny_reference, "ingest_all") == {}
    assert _plan(tiny_reference, "ingest_all", "--forcerun", "ingest") == {
        "ingest": 2,
        "ingest_all": 1,
    }
    # Forcing the upstream rule reruns everything that depends on it.
    # One demo job per dataset.
    assert _plan(tiny_reference, "ingest_all", "--forcerun", "demo") == {
        "demo": len(DATASETS),
        "ingest": 2,
        "ingest_all": 1,
    }


def test_forcerun_executes_ingest_and_leaves_demo_untouched(tiny_reference, tmp_path):
    work = copy_run(tiny_reference, tmp_path / "run")
    demo_before = _mtimes(_outputs(work, "demo"))
    ingest_before = _mtimes(_outputs(work, "ingest"))
    out = run_snakemake(
        work, "ingest_all", "--configfile", str(work / "tiny.yaml"), "--cores", "2",
        "--forcerun", "ingest",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert job_stats(out.stdout + out.stderr) == {"ingest": 2, "ingest_all": 1}
    assert _mtimes(_outputs(work, "demo")) == demo_before  # demo did not run
    assert all(a > b for a, b in zip(_mtimes(_outputs(work, "ingest")), ingest_before, strict=True))
    for path in _outputs(work, "ingest"):
        ref = tiny_reference / path.relative_to(work)
        assert normalized(path, work) == normalized(ref, tiny_reference), path


def test_until_stops_after_the_named_rule(tiny_reference, tmp_path):
    write_tiny_config(tmp_path)
    # Fresh folder: only the demo data would be made, nothing downstream of it.
    assert _plan(tmp_path, "ingest_all", "--until", "demo") == {"demo": len(DATASETS)}
    # Finished run: regenerate the demo data without re-ingesting.
    assert _plan(tiny_reference, "ingest_all", "--forcerun", "demo", "--until", "demo") == {
        "demo": len(DATASETS)
    }


def test_rerun_triggers_mtime_ignores_changed_parameters(tiny_reference, tmp_path):
    # A changed parameter of ingest (config ingest.min_volumes) reruns ingest under the
    # default triggers and under the profile's (mtime, params, input, software-env)...
    changed = {**TINY, "ingest": {"min_volumes": 40}}
    work = copy_run(tiny_reference, tmp_path / "run")
    (work / "tiny.yaml").write_text(yaml.safe_dump(changed))
    assert _plan(work, "ingest_all") == {"ingest": 2, "ingest_all": 1}
    assert _plan(
        work, "ingest_all", "--rerun-triggers", "mtime", "params", "input", "software-env"
    ) == {"ingest": 2, "ingest_all": 1}
    # ...but not with `--rerun-triggers mtime`: only newer inputs count.
    assert _plan(work, "ingest_all", "--rerun-triggers", "mtime") == {}
    # A changed input still does (newer, and a different checksum: Snakemake ignores a
    # newer file whose content it has recorded unchanged).
    description = work / "resources" / "demo" / "demoA" / "dataset_description.json"
    description.write_text(description.read_text() + "\n")
    later = time.time() + 5
    os.utime(description, (later, later))
    assert _plan(work, "ingest_all", "--rerun-triggers", "mtime") == {
        "ingest": 1,
        "ingest_all": 1,
    }


# ---- resume after kill -9 ----------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_tree_while(
    proc: subprocess.Popen, command: str, ready=lambda: True, deadline_s: float = 300
) -> str:
    """SIGKILL Snakemake and all its processes while a job runs `brainharmony <command>`.

    Waits until the job runs and ``ready()`` holds (at most 20 s more), then, like a node
    that dies, freezes the whole tree (SIGSTOP), checks it still holds the job, and kills
    it. Returns the job's command line.
    """
    deadline = time.monotonic() + deadline_s
    seen_at = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended (rc {proc.returncode}) before `{command}` ran")
        tree = _descendants(proc.pid)
        if any(f"brainharmony -v {command} " in _cmdline(p) for p in tree):
            seen_at = seen_at or time.monotonic()
            if ready() or time.monotonic() - seen_at > 20:
                for pid in tree:
                    os.kill(pid, signal.SIGSTOP)
                tree = _descendants(proc.pid)  # nothing can fork while stopped
                victims = [_cmdline(p) for p in tree if f" {command} " in _cmdline(p)]
                for pid in tree:
                    os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=30)
                if victims:
                    return victims[0]
                pytest.fail(f"`{command}` finished while the tree was being stopped")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"`brainharmony {command}` did not start within {deadline_s} s")


def run_and_kill(
    work: Path, log_path: Path, args: list[str], command: str, ready=lambda: True
) -> str:
    """Start Snakemake on the repository's workflow in ``work`` (output to ``log_path``) and
    kill its whole process tree while a job runs ``brainharmony <command>``; returns the
    job's command line (see :func:`_kill_tree_while`)."""
    cmd = [snakemake_exe(), "-s", str(REPO / "Snakefile"), "--directory", str(work), *args]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            return _kill_tree_while(proc, command, ready)
        finally:
            if proc.poll() is None:
                proc.kill()


def _fresh(reference: Path, work: Path) -> Path:
    """Kill during demo: an empty folder; kill once the generator has written something."""
    work.mkdir()
    write_tiny_config(work)
    return work


def _demo_done(reference: Path, work: Path) -> Path:
    """Kill during ingest: the reference's demo data (saves its generation), no results."""
    copy_run(reference, work)
    for folder in ("results", "logs/ingest"):
        shutil.rmtree(work / folder)
    return work


SETUPS = {"demo": _fresh, "ingest": _demo_done}


@pytest.mark.slow
@pytest.mark.parametrize("kill_during", ["demo", "ingest"])
def test_resume_after_kill_matches_uninterrupted_run(tiny_reference, tmp_path, kill_during):
    work = SETUPS[kill_during](tiny_reference, tmp_path / "run")
    config = work / "tiny.yaml"
    demo_root = work / "resources" / "demo"

    def ready() -> bool:  # demo: some files written already; ingest: at once
        return kill_during != "demo" or any(p.is_file() for p in demo_root.rglob("*"))

    victim = run_and_kill(
        work, tmp_path / "killed-run.log",
        ["ingest_all", "--configfile", str(config), "--cores", "2"], kill_during, ready,
    )  # fmt: skip
    assert kill_during in victim

    # A killed Snakemake leaves its lock and its incomplete-output markers: the next plain
    # run refuses to start, naming --unlock or, when it meets the markers first (it did
    # once under load), --rerun-incomplete.
    locked = run_snakemake(work, "ingest_all", "--configfile", str(config), "--cores", "2")
    said = locked.stdout + locked.stderr
    assert locked.returncode != 0 and ("--unlock" in said or "--rerun-incomplete" in said), said
    unlock = run_snakemake(work, "ingest_all", "--configfile", str(config), "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]

    out = run_snakemake(
        work, "ingest_all", "--configfile", str(config), "--cores", "2", "--rerun-incomplete",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert job_stats(out.stdout + out.stderr).get(kill_during), out.stdout[-3000:]

    for path in _outputs(work, "ingest"):
        ref = tiny_reference / path.relative_to(work)
        assert normalized(path, work) == normalized(ref, tiny_reference), path
    # The generated BIDS data: same files (no leftovers of the killed job), same bytes.
    got_root, ref_root = work / "resources", tiny_reference / "resources"
    got = sorted(p.relative_to(got_root) for p in got_root.rglob("*") if p.is_file())
    ref = sorted(p.relative_to(ref_root) for p in ref_root.rglob("*") if p.is_file())
    assert got == ref
    differ = [p for p in got if (got_root / p).read_bytes() != (ref_root / p).read_bytes()]
    assert not differ, f"files differ from the uninterrupted run: {differ[:10]}"
