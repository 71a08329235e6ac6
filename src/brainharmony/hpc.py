"""SLURM checks the main Snakemake process runs before it submits the first job.

snakemake-executor-plugin-slurm (2.8.0) asks ``sacct`` for the states of its jobs unless
the profile sets ``slurm-status-command: squeue``. On a cluster without job accounting
(``AccountingStorageType = accounting_storage/none``, i.e. no slurmdbd) every ``sacct``
query fails ("Slurm accounting storage is disabled"); the plugin logs the failure at
debug level only, reports no state, and Snakemake waits forever for the first job.

:func:`check_slurm_status_queries` runs the plugin's kind of ``sacct`` query once, before
anything is submitted. When it fails, the status command is switched to ``squeue`` (the
plugin reads ``executor_settings.status_command`` at every status check, so the switch
takes effect for the whole run) and the log says so. When ``squeue`` cannot be trusted
either (the plugin itself goes back to ``sacct`` when MinJobAge is below three times
``slurm-init-seconds-before-status-checks``, or unknown), the run stops with a
:class:`StatusQueryError` naming the profile lines to change. docs/hpc.md has the
background.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

#: Registry name of the SLURM executor plugin (``--executor slurm``); the jobstep plugin
#: that runs inside each job is ``slurm-jobstep``.
SLURM_PLUGIN = "slurm"
#: The plugin's default wait before the first status query, in seconds.
DEFAULT_INIT_SECONDS = 40
#: The plugin's status queries time out after this many seconds.
QUERY_TIMEOUT_S = 60

Runner = Callable[[list[str], int], subprocess.CompletedProcess]


class StatusQueryError(RuntimeError):
    """SLURM cannot report job states with any status command the plugin would use."""


@dataclass(frozen=True)
class StatusDecision:
    """What to do about the status command before submitting.

    Attributes
    ----------
    action : {"keep", "switch", "stop"}
        Keep the configured command, switch it to ``squeue``, or stop the run.
    message : str
        What was found and what was done (empty for "keep" without a finding).
    """

    action: str
    message: str = ""


def _run(cmd: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``Key = value`` lines of ``scontrol show config`` as a mapping (first one wins)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            values.setdefault(key.strip(), value.strip())
    return values


def seconds(value: str | None) -> int | None:
    """A SLURM duration such as ``600 sec``, ``300`` or ``1h`` in seconds (None if unreadable)."""
    if value is None:
        return None
    match = re.match(r"^(\d+)\s*([a-zA-Z]*)", value.strip())
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2).lower()
    if unit in ("h", "hour", "hours"):
        return number * 3600
    if unit in ("m", "min", "mins", "minute", "minutes"):
        return number * 60
    return number


def read_slurm_config(run: Runner = _run) -> dict[str, str]:
    """``scontrol show config``, parsed; empty when scontrol fails or is missing."""
    try:
        out = run(["scontrol", "show", "config"], 10)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_scontrol_config(out.stdout) if out.returncode == 0 else {}


def sacct_failure(run: Runner = _run, now: datetime | None = None) -> str | None:
    """Run a status query like the plugin's; None when it works, else why it failed.

    The query mirrors ``query_job_status_sacct`` of the plugin (same options, a job name
    that matches nothing), so it fails exactly when the plugin's queries would.
    """
    start = (now or datetime.now()) - timedelta(days=2)
    cmd = [
        "sacct", "-X", "--parsable2", "--clusters", "all", "--noheader",
        "--format=JobIdRaw,State", "--starttime", f"{start:%Y-%m-%dT%H:00}",
        "--endtime", "now", "--name", "brainharmony-accounting-probe",
    ]  # fmt: skip
    try:
        out = run(cmd, QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"`sacct` did not answer within {QUERY_TIMEOUT_S} s"
    except OSError as err:
        return f"`sacct` could not be run: {err}"
    if out.returncode == 0:
        return None
    said = (out.stderr or out.stdout or "").strip().splitlines()
    return f"`sacct` exited with status {out.returncode}" + (f": {said[-1]}" if said else "")


def decide_status_command(
    configured: str | None,
    sacct_error: str | None,
    slurm_config: Mapping[str, str],
    init_seconds: int = DEFAULT_INIT_SECONDS,
) -> StatusDecision:
    """Whether the plugin can learn job states, and what to change if it cannot.

    Parameters
    ----------
    configured : str or None
        ``slurm-status-command`` as the plugin will read it (``"sacct"``, ``"squeue"``).
    sacct_error : str or None
        Why a ``sacct`` status query failed (:func:`sacct_failure`); None if it worked.
    slurm_config : mapping
        ``scontrol show config`` (:func:`read_slurm_config`); may be empty.
    init_seconds : int
        ``slurm-init-seconds-before-status-checks``.

    Returns
    -------
    StatusDecision
        "keep" when the queries work; "switch" to ``squeue`` when only ``sacct`` fails
        and MinJobAge lets ``squeue`` see finished jobs; "stop" otherwise.
    """
    if sacct_error is None:
        return StatusDecision("keep")
    accounting = slurm_config.get("AccountingStorageType", "unknown")
    min_job_age = seconds(slurm_config.get("MinJobAge"))
    threshold = 3 * init_seconds
    why = f"{sacct_error} (AccountingStorageType = {accounting})"
    # The plugin (2.8.0, check_active_jobs) replaces squeue by sacct when MinJobAge is
    # unknown or below 3 x init-seconds-before-status-checks, whatever the profile says.
    squeue_kept = min_job_age is not None and min_job_age >= threshold
    if configured == "sacct" and squeue_kept:
        return StatusDecision(
            "switch",
            f"SLURM job accounting does not answer: {why}. With `sacct` as the status "
            f"command Snakemake would wait forever for its first job; using `squeue` "
            f"instead (MinJobAge = {min_job_age} s, finished jobs stay visible that long). "
            f"To say so in your profile: `slurm-status-command: squeue`.",
        )
    if configured == "squeue" and squeue_kept:
        return StatusDecision("keep")
    if min_job_age is None:
        age = "unknown (`scontrol show config` failed)"
        fixes = ["make `scontrol show config` work on this host"]
    else:
        age = f"{min_job_age} s"
        fixes = [
            f"lower `slurm-init-seconds-before-status-checks` to at most "
            f"{max(min_job_age // 3, 1)} (MinJobAge / 3) or have MinJobAge raised (>= 300 s)"
        ]
    if configured != "squeue":
        fixes.insert(0, "add `slurm-status-command: squeue` to your profile (slurm/config.yaml)")
    return StatusDecision(
        "stop",
        f"SLURM job accounting does not answer: {why}, so `sacct` cannot report job "
        f"states and Snakemake would wait forever for its first job. Nothing was "
        f"submitted. `squeue` sees finished jobs only for MinJobAge, here {age}, and "
        f"snakemake-executor-plugin-slurm uses `sacct` anyway when MinJobAge is unknown "
        f"or below 3 x slurm-init-seconds-before-status-checks = {threshold} s. "
        f"Fix: {'; '.join(fixes)}; or have job accounting (slurmdbd) enabled.",
    )


def is_slurm_main_process(workflow: Any) -> bool:
    """True in the main process of a run with ``--executor slurm`` (not inside a job).

    Jobs run Snakemake again with ``--mode remote`` and the jobstep executor (and with
    ``--no-hooks``, so ``onstart`` does not even run there).
    """
    plugin = getattr(workflow, "executor_plugin", None)
    return (
        getattr(workflow, "is_main_process", False)
        and getattr(plugin, "name", None) == SLURM_PLUGIN
        and getattr(workflow, "executor_settings", None) is not None
    )


def check_slurm_status_queries(
    workflow: Any,
    logger: logging.Logger | logging.LoggerAdapter = log,
    run: Runner = _run,
) -> StatusDecision | None:
    """Make sure the SLURM plugin can learn job states; call before the first submission.

    Does nothing (returns None) unless this is the main process of a SLURM run. Switches
    ``workflow.executor_settings.status_command`` to ``"squeue"`` when ``sacct`` fails and
    ``squeue`` will work; raises :class:`StatusQueryError` when neither will.
    """
    if not is_slurm_main_process(workflow):
        return None
    settings = workflow.executor_settings
    configured = getattr(settings, "status_command", None)
    init_seconds = getattr(settings, "init_seconds_before_status_checks", None)
    init_seconds = init_seconds or DEFAULT_INIT_SECONDS
    if shutil.which("sacct") is None:
        return StatusDecision("keep")  # the plugin uses squeue itself
    slurm_config = read_slurm_config(run)
    min_job_age = seconds(slurm_config.get("MinJobAge"))
    plugin_uses_sacct = configured == "sacct" or (
        configured == "squeue" and (min_job_age is None or min_job_age < 3 * init_seconds)
    )
    if not plugin_uses_sacct:
        return StatusDecision("keep")
    decision = decide_status_command(configured, sacct_failure(run), slurm_config, init_seconds)
    if decision.action == "switch":
        settings.status_command = "squeue"
        logger.warning(decision.message)
    elif decision.action == "stop":
        raise StatusQueryError(decision.message)
    return decision
