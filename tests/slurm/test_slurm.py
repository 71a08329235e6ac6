"""The workflow on a real (private, single-node) SLURM cluster, through `--profile slurm`.

What is proven here:
- the shipped profile (slurm/config.yaml) resolves as `--profile slurm` from the repo root;
- the tiny demo runs through sbatch (the ingest checkpoint per dataset, on demo data made
  once per session; with BH_SLURM_FROM_SCRATCH=1 the `demo` rule too) and gives the same
  scans.tsv/excluded.tsv as a local run;
- GPU resources map to SLURM's GPU requests and reach the job: `gpu=N` -> --gpus=N,
  `gpu_model` -> --gpus=<model>:N, `cpus_per_gpu` -> --cpus-per-gpu, and torchrun starts
  one worker per allocated GPU;
- `group:` + `--group-components` puts several rule jobs into one SLURM job;
- a failing job is reported as failed (no hang);
- the shipped profile alone, on this cluster without job accounting, switches the status
  command to squeue before submitting (or stops at once when squeue cannot help either)
  instead of waiting forever on sacct.

Growing with the workflow:
- New stages: point `test_tiny_demo_runs_through_sbatch` at their targets (`all` once
  every stage exists) and extend `expected` with their rule jobs; the job-record and
  SLURM-log checks apply unchanged.
- GPU: no brainharmony rule requests a GPU yet, so the GPU checks run
  tests/slurm/workflow/Snakefile, whose rules use the resource names the training rules
  must use (`gpu`, `gpu_model`, `cpus_per_gpu`) and the same launch
  (`torchrun --standalone --nnodes=1 --nproc-per-node={resources.gpu}`). When the
  training rules exist, run the tiny config up to `train_all` through
  `run_slurm_snakemake`, find their jobs with `slurm_jobs(workdir)` (comment
  `rule_<train rule>...`), and check `scontrol_job(id)` has `TresPerJob=gres:gpu:<N>`
  and that the training log reports world size N with one distinct device per rank (have
  rank 0 log rank/world size/device as tests/slurm/workflow/ddp_probe.py does). Keep the
  stand-in workflow for the grouping and failure checks.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from snakemake.cli import get_profile_dir

from tests.conftest import run_snakemake
from tests.slurm.conftest import (
    INGEST_FILES,
    PROFILE,
    TEST_WORKFLOW,
    copy_run,
    job_stats,
    normalized,
    run_slurm_snakemake,
    scontrol_job,
    slurm_jobs,
    write_tiny_config,
)


def _tail(out) -> str:
    return f"\n--- stdout ---\n{out.stdout[-4000:]}\n--- stderr ---\n{out.stderr[-6000:]}"


def test_profile_resolves_as_bare_name_from_repo_root(repo, monkeypatch):
    # `snakemake --profile slurm` at the repository root: $PWD/slurm is searched first.
    monkeypatch.chdir(repo)
    found = get_profile_dir("slurm")
    assert found is not None, "no slurm/config.yaml at the repository root"
    assert Path(found[1]).resolve() == (PROFILE / "config.yaml").resolve()


@pytest.mark.workflow
def test_shipped_profile_plans_the_tiny_run(tmp_path):
    # What a user types at the repository root, in a scratch folder that sees the same
    # profile as ./slurm. A dry run needs no cluster; it checks every key is valid.
    (tmp_path / "slurm").symlink_to(PROFILE, target_is_directory=True)
    config = write_tiny_config(tmp_path)
    out = run_snakemake(
        tmp_path, "ingest_all", "--configfile", str(config), "--profile", "slurm", "-n"
    )
    assert out.returncode == 0, _tail(out)
    text = out.stdout + out.stderr
    assert "Using profile slurm" in text
    # One demo job per dataset (demoA, demoB).
    assert job_stats(text) == {"demo": 2, "ingest": 2, "ingest_all": 1}


@pytest.mark.slurm
@pytest.mark.workflow
def test_tiny_demo_runs_through_sbatch(slurm_cluster, tiny_reference, tmp_path):
    # The demo data are generated once per session (tiny_reference, locally): generating
    # them again under SLURM costs about a minute and proves nothing more about the
    # cluster. BH_SLURM_FROM_SCRATCH=1 submits the `demo` rule too.
    from_scratch = os.environ.get("BH_SLURM_FROM_SCRATCH") == "1"
    if from_scratch:
        workdir = tmp_path / "run"
        workdir.mkdir()
        config = write_tiny_config(workdir)
    else:
        workdir = copy_run(tiny_reference, tmp_path / "run")
        for folder in ("results", "logs/ingest"):
            shutil.rmtree(workdir / folder)
        config = workdir / "tiny.yaml"
    out = run_slurm_snakemake(workdir, "ingest_all", "--configfile", str(config))
    assert out.returncode == 0, _tail(out)
    log = out.stdout + out.stderr
    assert "Using profiles" in log and str(PROFILE) in log

    # Every rule job went through sbatch: the controller has a completed record for it,
    # and the plugin wrote that job's SLURM log.
    jobs = slurm_jobs(workdir)
    expected = ["rule_ingest_wildcards_demoA", "rule_ingest_wildcards_demoB"]
    assert sorted(job.comment for job in jobs) == (["rule_demo"] if from_scratch else []) + expected
    assert {job.state for job in jobs} == {"COMPLETED"}, jobs
    logs = workdir / ".snakemake" / "slurm_logs"
    for job in jobs:
        found = list(logs.glob(f"rule_*/**/{job.job_id}.log"))
        assert found, f"no SLURM log for job {job.job_id} under {logs}"
        assert f"SLURM jobid {job.job_id}" in log

    # Same results as the local run.
    for dataset in ("demoA", "demoB"):
        for name in INGEST_FILES:
            got = workdir / "results" / "ingest" / dataset / name
            want = tiny_reference / "results" / "ingest" / dataset / name
            assert normalized(got, workdir) == normalized(want, tiny_reference), got


#: What brainharmony.hpc logs when it switches the status command, or stops.
NO_ACCOUNTING = "SLURM job accounting does not answer: `sacct` exited with status 1"


def _shipped_profile_only(tmp_path: Path, init_seconds: int = 2) -> tuple[Path, ...]:
    """The shipped profile plus an override of timings only (no status command)."""
    override = tmp_path / "override"
    override.mkdir()
    settings = {"latency-wait": 5, "slurm-init-seconds-before-status-checks": init_seconds}
    (override / "config.yaml").write_text(yaml.safe_dump(settings))
    return (PROFILE, override)


@pytest.mark.slurm
@pytest.mark.workflow
def test_shipped_profile_without_accounting_does_not_hang(slurm_cluster, tiny_reference, tmp_path):
    # The test cluster has no slurmdbd: sacct, the plugin's default status command,
    # fails, and this run (shipped profile, no `slurm-status-command`) used to wait
    # forever after its first submission. The workflow's onstart check now switches to
    # squeue before submitting. 240 s: two ingest jobs take 35-70 s here, and the plugin
    # learns their end only at its next poll (2, 14, 36, 68 s after submission).
    workdir = copy_run(tiny_reference, tmp_path / "run")
    start = time.monotonic()
    out = run_slurm_snakemake(
        workdir, "ingest_all", "--forcerun", "ingest", "--configfile", str(workdir / "tiny.yaml"),
        timeout=240, profiles=_shipped_profile_only(tmp_path),
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert out.returncode not in (124, 137), f"hung ({elapsed:.0f} s)" + _tail(out)
    assert out.returncode == 0, _tail(out)
    log = out.stdout + out.stderr
    said = log.find(NO_ACCOUNTING)
    assert said >= 0, _tail(out)
    assert "Slurm accounting storage is disabled" in log[said:]
    assert "using `squeue` instead" in log[said:]
    assert "`slurm-status-command: squeue`" in log[said:]
    assert said < log.find("has been submitted with SLURM jobid"), "switched after submitting"
    jobs = slurm_jobs(workdir)
    assert sorted(job.comment for job in jobs) == [
        "rule_ingest_wildcards_demoA",
        "rule_ingest_wildcards_demoB",
    ]
    assert {job.state for job in jobs} == {"COMPLETED"}, jobs


@pytest.mark.slurm
@pytest.mark.workflow
def test_shipped_profile_stops_before_submitting_when_squeue_cannot_help(
    slurm_cluster, tiny_reference, tmp_path
):
    # With 300 s before the first status query, MinJobAge (600 s) is below the plugin's
    # 3 x 300 s threshold and the plugin would use sacct even if told squeue: no status
    # command works, so the run must stop at once, submit nothing and say what to set.
    workdir = copy_run(tiny_reference, tmp_path / "run")
    start = time.monotonic()
    out = run_slurm_snakemake(
        workdir, "ingest_all", "--forcerun", "ingest", "--configfile", str(workdir / "tiny.yaml"),
        timeout=60, profiles=_shipped_profile_only(tmp_path, init_seconds=300),
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert out.returncode not in (124, 137), f"hung ({elapsed:.0f} s)" + _tail(out)
    assert out.returncode != 0, _tail(out)
    log = out.stdout + out.stderr
    assert NO_ACCOUNTING in log, _tail(out)
    assert "Nothing was submitted" in log
    assert "add `slurm-status-command: squeue` to your profile" in log
    assert "`slurm-init-seconds-before-status-checks` to at most 200" in log
    assert "has been submitted" not in log
    assert slurm_jobs(workdir) == []
    assert elapsed < 60


def _field(record: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S*)", record)
    return match.group(1) if match else ""


def _recorded(path: Path) -> dict[str, str]:
    """The key=value lines a GPU rule wrote about itself (then scontrol's record)."""
    text = path.read_text()
    values = dict(re.findall(r"^(job|job_gpus|step_gpus|cuda_visible_devices)=(.*)$", text, re.M))
    values["scontrol"] = text
    return values


def _assert_gpu_allocation(record: str, seen: dict[str, str], gpus: int, tres: str) -> None:
    assert _field(record, "TresPerJob") == tres, record
    devices = [d for d in seen["cuda_visible_devices"].split(",") if d]
    assert len(devices) == gpus, seen
    assert seen["step_gpus"] == seen["cuda_visible_devices"], seen


@pytest.fixture(scope="module")
def stand_in_run(slurm_cluster, tmp_path_factory):
    """One run of the stand-in workflow: GPU rules, a 4-job group, and a failing job.

    `--keep-going` lets the other jobs finish after `fail` fails; one run instead of two
    saves the ~20 s Snakemake spends shutting down after a failure.
    """
    workdir = tmp_path_factory.mktemp("stand-in")
    out = run_slurm_snakemake(
        workdir, "all", "fail", "--keep-going", "--group-components", "subjects=4",
        snakefile=TEST_WORKFLOW, timeout=300,
    )  # fmt: skip
    assert out.returncode not in (124, 137), "timed out" + _tail(out)
    return workdir, out, {job.comment: job for job in slurm_jobs(workdir)}


@pytest.mark.slurm
@pytest.mark.workflow
def test_gpu_requests_reach_the_job(stand_in_run):
    workdir, out, by_comment = stand_in_run
    for name in ("one", "model", "torchrun"):
        assert (workdir / "gpu" / f"{name}.txt").exists(), _tail(out)

    # gpu=1 -> --gpus=1
    one = _recorded(workdir / "gpu" / "one.txt")
    assert int(one["job"]) == by_comment["rule_gpu_one"].job_id
    _assert_gpu_allocation(one["scontrol"], one, 1, "gres:gpu:1")

    # gpu=1, gpu_model="fake", cpus_per_gpu=1 -> --gpus=fake:1 --cpus-per-gpu=1
    model = _recorded(workdir / "gpu" / "model.txt")
    _assert_gpu_allocation(model["scontrol"], model, 1, "gres:gpu:fake:1")
    assert _field(model["scontrol"], "CpusPerTres") == "gres:gpu:1"
    # The controller's record, read from outside the job, says the same.
    after = scontrol_job(by_comment["rule_gpu_model"].job_id)
    assert _field(after, "TresPerJob") == "gres:gpu:fake:1"
    assert _field(after, "JobState") == "COMPLETED"

    # gpu=2, cpus_per_gpu=1 -> --gpus=2 --cpus-per-gpu=1; torchrun: one worker per GPU,
    # each on its own device.
    multi = _recorded(workdir / "gpu" / "torchrun.txt")
    _assert_gpu_allocation(multi["scontrol"], multi, 2, "gres:gpu:2")
    assert _field(multi["scontrol"], "CpusPerTres") == "gres:gpu:1"
    assert _field(multi["scontrol"], "NumCPUs") == "2"
    ranks = re.findall(r"^rank=(\d+) world_size=(\d+) local_rank=(\d+) device=(\S+)$",
                       multi["scontrol"], re.M)  # fmt: skip
    assert sorted(r[0] for r in ranks) == ["0", "1"] and {r[1] for r in ranks} == {"2"}
    assert sorted(r[3] for r in ranks) == sorted(multi["cuda_visible_devices"].split(","))
    assert "all_reduce=2" in multi["scontrol"]


@pytest.mark.slurm
@pytest.mark.workflow
def test_group_components_share_one_sbatch(stand_in_run):
    # group: "subjects" + --group-components subjects=4 -> one SLURM job for 4 rule jobs.
    workdir, out, by_comment = stand_in_run
    outputs = sorted((workdir / "subjects").glob("*.txt"))
    assert len(outputs) == 4, _tail(out)
    group_jobs = [c for c in by_comment if "subject" in c]
    assert len(group_jobs) == 1, by_comment
    ran_in = {re.search(r"job=(\S+)", p.read_text()).group(1) for p in outputs}
    assert ran_in == {str(by_comment[group_jobs[0]].job_id)}
    assert by_comment[group_jobs[0]].state == "COMPLETED"


@pytest.mark.slurm
@pytest.mark.workflow
def test_failed_job_is_reported_not_waited_on(stand_in_run):
    workdir, out, by_comment = stand_in_run
    assert out.returncode != 0, _tail(out)  # failed, and not by timeout (fixture)
    assert "Error in rule fail" in out.stdout + out.stderr, _tail(out)
    job = by_comment["rule_fail"]
    assert job.state == "FAILED"
    assert list((workdir / ".snakemake" / "slurm_logs").glob(f"**/{job.job_id}.log"))
    assert not (workdir / "failed.txt").exists()
