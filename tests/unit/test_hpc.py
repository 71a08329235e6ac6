"""SLURM status-command check (brainharmony.hpc) with stand-ins for scontrol and sacct.

The real cluster case (no accounting daemon) is tests/slurm/test_slurm.py
::test_shipped_profile_without_accounting_does_not_hang.
"""

from __future__ import annotations

import logging
import subprocess
from types import SimpleNamespace

import pytest

from brainharmony import hpc

SCONTROL = """Configuration data as of 2026-12-07T06:40:00
AccountingStorageHost   = localhost
AccountingStorageType   = accounting_storage/none
MinJobAge               = 600 sec
SlurmctldParameters     = enable_configless,idle_on_node_suspend
"""
DISABLED = "Slurm accounting storage is disabled"


def _runner(scontrol: str = SCONTROL, sacct_rc: int = 1, sacct_err: str = DISABLED):
    calls: list[list[str]] = []

    def run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
        calls.append(cmd)
        if cmd[0] == "scontrol":
            return subprocess.CompletedProcess(cmd, 0, scontrol, "")
        assert cmd[0] == "sacct" and timeout == hpc.QUERY_TIMEOUT_S
        return subprocess.CompletedProcess(cmd, sacct_rc, "", sacct_err)

    run.calls = calls
    return run


def _workflow(status_command="sacct", init_seconds=40, plugin="slurm", main=True):
    settings = SimpleNamespace(
        status_command=status_command, init_seconds_before_status_checks=init_seconds
    )
    return SimpleNamespace(
        is_main_process=main,
        executor_plugin=SimpleNamespace(name=plugin),
        executor_settings=settings,
    )


@pytest.fixture(autouse=True)
def _sacct_on_path(monkeypatch):
    monkeypatch.setattr(hpc.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_parse_scontrol_config_and_durations():
    config = hpc.parse_scontrol_config(SCONTROL)
    assert config["AccountingStorageType"] == "accounting_storage/none"
    assert config["SlurmctldParameters"] == "enable_configless,idle_on_node_suspend"
    assert "Configuration data as of 2026-12-07T06:40:00" not in config
    assert [hpc.seconds(v) for v in ("600 sec", "300", "1h", "5 min", "n/a", None)] == [
        600, 300, 3600, 300, None, None,
    ]  # fmt: skip


def test_sacct_failure_reports_slurms_own_words():
    assert hpc.sacct_failure(_runner(sacct_rc=0, sacct_err="")) is None
    said = hpc.sacct_failure(_runner())
    assert said == f"`sacct` exited with status 1: {DISABLED}"

    def timed_out(cmd, timeout):
        raise subprocess.TimeoutExpired(cmd, timeout)

    assert "did not answer within 60 s" in hpc.sacct_failure(timed_out)


def test_without_accounting_sacct_is_switched_to_squeue_and_logged(caplog):
    workflow, run = _workflow(), _runner()
    with caplog.at_level(logging.WARNING):
        decision = hpc.check_slurm_status_queries(workflow, logging.getLogger("t"), run)
    assert decision.action == "switch"
    assert workflow.executor_settings.status_command == "squeue"
    assert DISABLED in caplog.text and "accounting_storage/none" in caplog.text
    assert "`slurm-status-command: squeue`" in caplog.text


def test_working_accounting_keeps_sacct():
    workflow = _workflow()
    decision = hpc.check_slurm_status_queries(workflow, run=_runner(sacct_rc=0, sacct_err=""))
    assert decision.action == "keep"
    assert workflow.executor_settings.status_command == "sacct"


def test_stops_when_the_plugin_would_go_back_to_sacct():
    # MinJobAge 600 s < 3 x 300 s: the plugin replaces squeue by sacct, which fails.
    workflow = _workflow(init_seconds=300)
    with pytest.raises(hpc.StatusQueryError, match=r"slurm-status-command: squeue") as err:
        hpc.check_slurm_status_queries(workflow, run=_runner())
    assert "Nothing was submitted" in str(err.value)
    assert "slurm-init-seconds-before-status-checks` to at most 200" in str(err.value)
    assert workflow.executor_settings.status_command == "sacct"

    # Same with squeue already in the profile: the fix named is the init time only.
    with pytest.raises(hpc.StatusQueryError, match=r"at most 200") as err:
        hpc.check_slurm_status_queries(_workflow("squeue", 300), run=_runner())
    assert "add `slurm-status-command" not in str(err.value)


def test_stops_when_min_job_age_is_unknown():
    with pytest.raises(hpc.StatusQueryError, match=r"scontrol show config.*failed"):
        hpc.check_slurm_status_queries(_workflow(), run=_runner(scontrol=""))


@pytest.mark.parametrize(
    "workflow",
    [
        _workflow(plugin="local"),
        _workflow(plugin="slurm-jobstep", main=False),
        _workflow(main=False),
        SimpleNamespace(is_main_process=True, executor_plugin=None, executor_settings=None),
    ],
    ids=["local", "inside-a-job", "remote-mode", "no-executor-yet"],
)
def test_does_nothing_outside_the_main_slurm_process(workflow):
    run = _runner()
    assert hpc.check_slurm_status_queries(workflow, run=run) is None
    assert run.calls == []


def test_squeue_in_the_profile_needs_no_probe():
    run = _runner()
    decision = hpc.check_slurm_status_queries(_workflow("squeue", init_seconds=2), run=run)
    assert decision.action == "keep"
    assert [cmd[0] for cmd in run.calls] == ["scontrol"]


def test_no_sacct_on_path_is_left_to_the_plugin(monkeypatch):
    monkeypatch.setattr(hpc.shutil, "which", lambda name: None)
    run = _runner()
    assert hpc.check_slurm_status_queries(_workflow(), run=run).action == "keep"
    assert run.calls == []
