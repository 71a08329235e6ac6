"""Fixtures for the HPC tests: a private SLURM cluster and a tiny reference run.

The cluster (``slurm_cluster``) is started once per session by
``scripts/slurm/start_cluster.sh`` and stopped by ``scripts/slurm/stop_cluster.sh`` when
the session ends (only if this session started it). Every Snakemake call here has a hard
timeout: with a wrong status command Snakemake waits forever and ignores SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, REPO, run_snakemake, snakemake_exe

SCRIPTS = REPO / "scripts" / "slurm"
PROFILE = REPO / "slurm"  # the shipped profile: `snakemake --profile slurm`
CI_PROFILE = REPO / "tests" / "slurm" / "profile"  # overrides for the test cluster
TEST_WORKFLOW = REPO / "tests" / "slurm" / "workflow" / "Snakefile"
CLUSTER_ROOT = Path(os.environ.get("BH_SLURM_ROOT", "/tmp/brainharmony-slurm"))
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")

#: The tiny demo config shared by every HPC test (two datasets, two TRs).
TINY = {
    "demo": {"preset": "tiny", "seed": 7, "root": "resources/demo"},
    "datasets": {
        "demoA": {"bids_dir": "resources/demo/demoA", "demo": True},
        "demoB": {"bids_dir": "resources/demo/demoB", "demo": True},
    },
}
INGEST_FILES = ("scans.tsv", "excluded.tsv")


def write_tiny_config(workdir: Path) -> Path:
    path = workdir / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def normalized(path: Path, workdir: Path) -> bytes:
    """File bytes with the run's absolute working directory replaced by a placeholder.

    scans.tsv holds absolute paths; two runs in different folders agree byte for byte
    once each run's own folder is masked.
    """
    return path.read_bytes().replace(str(workdir.resolve()).encode(), b"<workdir>")


def job_stats(output: str) -> dict[str, int]:
    """The first non-empty "Job stats" table Snakemake prints: rule -> number of jobs."""
    lines = output.splitlines()
    for start, line in enumerate(lines):
        if line.strip() != "Job stats:":
            continue
        counts: dict[str, int] = {}
        for row in lines[start + 1 :]:
            parts = row.split()
            if parts[:2] == ["job", "count"] or (parts and set(parts[0]) == {"-"}):
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                break  # another "Job stats:" line (an empty table) or the table's end
            if parts[0] == "total":
                return counts
            counts[parts[0]] = int(parts[1])
    return {}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_slurm_snakemake(
    workdir: Path,
    *args: str,
    snakefile: Path = REPO / "Snakefile",
    timeout: int = 420,
    profiles: tuple[Path, ...] = (PROFILE, CI_PROFILE),
) -> subprocess.CompletedProcess:
    """Run a workflow in ``workdir`` through the shipped profile plus the test overrides.

    ``timeout -k 20`` is the hard limit (Snakemake ignores SIGTERM while it waits for
    job states); the Python-side timeout is only a backstop. ``profiles`` replaces the
    profile stack (e.g. the shipped profile alone, without ``slurm-status-command``).
    """
    cmd = [
        "timeout", "-k", "20", str(timeout),
        snakemake_exe(), "-s", str(snakefile), "--directory", str(workdir),
        *args,
        *(arg for profile in profiles for arg in ("--profile", str(profile))),
    ]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), cwd=workdir,
        timeout=timeout + 60, check=False,
    )  # fmt: skip


@dataclass(frozen=True)
class SlurmJob:
    job_id: int
    comment: str  # rule_<rule>[_wildcards_<values>] (or rule_<group>_<rule> for groups)
    state: str
    workdir: str


def slurm_jobs(workdir: Path) -> list[SlurmJob]:
    """Job records the controller keeps (MinJobAge) for jobs run in ``workdir``."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%Z"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    jobs = []
    for line in out.stdout.splitlines():
        job_id, comment, state, wd = line.strip().split("|", 3)
        if Path(wd).resolve() == workdir.resolve():
            jobs.append(SlurmJob(int(job_id), comment.strip(), state, wd))
    return jobs


def scontrol_job(job_id: int) -> str:
    return subprocess.run(
        ["scontrol", "show", "job", str(job_id)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (4 fake GPUs of type ``fake``)."""
    have_binaries = all(shutil.which(exe) for exe in SLURM_BINARIES)
    if os.geteuid() != 0:
        pytest.skip(
            "the SLURM tests start a private cluster and need root (munge runs as user "
            "munge, configs go to /etc/slurm); SLURM binaries "
            + ("present" if have_binaries else "absent: install requirements/apt.txt")
        )
    if not have_binaries:  # root: install rather than skip (CI must run these tests)
        subprocess.run(
            ["bash", str(REPO / "scripts" / "install-system-deps.sh")], check=True, timeout=900
        )
    env = {**os.environ, "BH_SLURM_ROOT": str(CLUSTER_ROOT)}
    start = subprocess.run(
        ["bash", str(SCRIPTS / "start_cluster.sh")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    if start.returncode != 0:
        pytest.fail(f"start_cluster.sh failed:\n{start.stdout}\n{start.stderr}")
    started_here = "started slurmctld" in start.stdout
    yield CLUSTER_ROOT
    if started_here:
        stop = subprocess.run(
            ["bash", str(SCRIPTS / "stop_cluster.sh")],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert stop.returncode == 0, stop.stdout + stop.stderr


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory) -> Path:
    """An uninterrupted local run of the tiny demo up to ``ingest_all`` (do not modify)."""
    workdir = tmp_path_factory.mktemp("tiny-reference")
    config = write_tiny_config(workdir)
    out = run_snakemake(
        workdir, "ingest_all", "--configfile", str(config), "--cores", "2", timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return workdir


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run, file times included (Snakemake compares mtimes)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst
