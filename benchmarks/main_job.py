"""Time the main job (``make demo``'s Snakemake command) on a clean clone of a commit.

    python benchmarks/main_job.py --out benchmarks/results/main_job/latest.json

What it does:

1. refuses a working tree with uncommitted changes to tracked files (``--allow-dirty``
   records them instead), then clones HEAD into ``--workdir`` (a fresh temporary folder
   by default), so the run sees exactly the committed code and no earlier results;
2. runs the same Snakemake command as ``make demo`` (``--configfile config/demo.yaml
   --cores 2 --max-jobs-per-timespan 100/10s``) with this interpreter's Snakemake and
   the clone's ``src`` first on ``PYTHONPATH``, so the environment is the installed one
   and the code is the clone's;
3. measures the wall time of that command, the CPU time (user + sys) of it and every
   process it started (``getrusage(RUSAGE_CHILDREN)``), the largest resident set of any
   one of them, and the load average before and after (other work on the machine makes
   the wall time meaningless: the record keeps the load so a reader can tell);
4. reads Snakemake's log for every job's start and finish (1 s resolution) and sums the
   wall time per rule, which on a machine running at most ``--cores`` single-threaded
   jobs is close to each rule's CPU time;
5. writes a JSON record and prints a Markdown summary (``--markdown`` also writes it);
   ``--update-docs`` puts the summary between the ``<!-- main-job -->`` markers of
   docs/performance.md and a one-line statement between those of README.md, so the
   figures there always come from a record, never typed by hand.

The install (``make install``) is not timed: it is a one-off, and it depends on the
package caches more than on the code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1
#: The Snakemake options of ``make demo`` (Makefile), after the config file and cores.
MAKE_DEMO_OPTIONS = ("--rerun-incomplete", "--printshellcmds", "--max-jobs-per-timespan", "100/10s")

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_FINISH = re.compile(r"^Finished job(?:id)?:? (\d+)\.?(?: \(Rule: (\S+)\))?")


@dataclass(frozen=True)
class Job:
    """One Snakemake job as its log reports it."""

    rule: str
    jobid: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _stamp(text: str) -> float:
    return datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y").timestamp()


def parse_log(text: str) -> list[Job]:
    """Every job that started and finished in a Snakemake log (local execution).

    A job's start is the time stamp line before its ``rule <name>:`` block (its
    ``jobid:`` line names it); its end is the time stamp before ``Finished jobid: N``.
    Jobs without a finish line (failed, or the log was cut) are left out; the
    ``all``-style target rules without a shell command finish at once and are kept.
    """
    stamp: float | None = None
    pending: tuple[str, float] | None = None
    started: dict[int, tuple[str, float]] = {}
    jobs: list[Job] = []
    for line in text.splitlines():
        m = _STAMP.match(line.strip())
        if m:
            stamp = _stamp(m.group(1))
            continue
        m = _START.match(line)
        if m and stamp is not None:
            pending = (m.group(1), stamp)
            continue
        m = _JOBID.match(line)
        if m and pending is not None:
            started[int(m.group(1))] = pending
            pending = None
            continue
        m = _FINISH.match(line.strip())
        if m and stamp is not None:
            jobid = int(m.group(1))
            if jobid in started:
                rule, begin = started.pop(jobid)
                jobs.append(Job(rule, jobid, begin, stamp))
    return jobs


def per_rule(jobs: Sequence[Job]) -> dict[str, dict[str, float]]:
    """Per rule: job count, summed and largest job wall time (s), in order of the sum."""
    out: dict[str, dict[str, float]] = {}
    for job in jobs:
        row = out.setdefault(job.rule, {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0})
        row["jobs"] += 1
        row["seconds"] += job.seconds
        row["max_seconds"] = max(row["max_seconds"], job.seconds)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["seconds"]))


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def _display(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(record: dict[str, Any]) -> str:
    """The record as a short Markdown summary (totals, then the rules by time)."""
    wall = record["wall_seconds"]
    lines = [
        f"Main job at {record['commit'][:7]} ({record['date']}): "
        f"**{int(wall // 60)} min {wall % 60:.0f} s** wall, "
        f"{record['cpu_seconds']:.0f} s CPU (user + sys of every process), "
        f"{record['n_jobs']} jobs, largest process {record['max_rss_mib']:.0f} MiB; "
        f"{record['cores']} cores ({record['cpu_model']}); load average "
        f"{record['loadavg_start'][0]:.2f} before, {record['loadavg_end'][0]:.2f} after; "
        f"`{record['command']}`.",
        "",
        "| rule | jobs | wall s (sum) | wall s (largest job) |",
        "|---|---:|---:|---:|",
    ]
    for rule, row in record["rules"].items():
        lines.append(
            f"| {rule} | {int(row['jobs'])} | {row['seconds']:.0f} | {row['max_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


#: The main job's time budget on a 2-core machine (the project's target).
TARGET_SECONDS = 15 * 60

BEGIN, END = "<!-- main-job -->", "<!-- /main-job -->"


def replace_block(text: str, content: str, where: str = "") -> str:
    """``text`` with what lies between :data:`BEGIN` and :data:`END` replaced by
    ``content`` (markers kept); an error naming ``where`` when the markers are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{where}: no {BEGIN} ... {END} block to update")
    return text[: start + len(BEGIN)] + "\n" + content.rstrip("\n") + "\n" + text[end:]


def readme_line(record: dict[str, Any], source: str) -> str:
    """The README's statement of the measured main-job time."""
    wall = record["wall_seconds"]
    return (
        f"Measured: **{int(wall // 60)} min {wall % 60:.0f} s** on {record['cores']} cores "
        f"({record['cpu_model']}) at {record['commit'][:7]} on {record['date'][:10]}, "
        f"load average {record['loadavg_start'][0]:.2f} at the start "
        f"(`python benchmarks/main_job.py`; record: `{source}`): "
        + ("within" if wall <= TARGET_SECONDS else "over")
        + f" the {TARGET_SECONDS // 60}-minute target."
    )


def update_docs(record: dict[str, Any], source: str, repo: Path = REPO) -> None:
    """Rewrite the main-job blocks of docs/performance.md and README.md."""
    for path, content in (
        (repo / "docs" / "performance.md", markdown(record)),
        (repo / "README.md", readme_line(record, source)),
    ):
        text = replace_block(path.read_text(), content, str(path))
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="JSON record to write (required for a run)")
    p.add_argument("--markdown", type=Path, help="also write the Markdown summary here")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="write the result into docs/performance.md and README.md (their main-job blocks)",
    )
    p.add_argument(
        "--from-record",
        type=Path,
        help="run nothing: render this JSON record (with --update-docs / --markdown)",
    )
    p.add_argument("--workdir", type=Path, help="clone here (must not exist; default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the clone and its results")
    p.add_argument("--config", default="config/demo.yaml", help="config file, clone-relative")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--target", nargs="*", default=[], help="Snakemake targets (default: all)")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="time HEAD although tracked files have uncommitted changes (recorded)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_record is not None:
        record = json.loads(args.from_record.read_text())
        if args.markdown:
            args.markdown.write_text(markdown(record))
        if args.update_docs:
            update_docs(record, _display(args.from_record))
        print(markdown(record))
        return 0
    if args.out is None:
        print("main_job: --out is required for a run", file=sys.stderr)
        return 2
    dirty = [line for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
    if dirty and not args.allow_dirty:
        print(
            f"main_job: {len(dirty)} tracked file(s) differ from HEAD; commit them (the run "
            "times HEAD) or pass --allow-dirty",
            file=sys.stderr,
        )
        return 2
    commit = _git("rev-parse", "HEAD")
    temp = None
    if args.workdir is None:
        temp = Path(tempfile.mkdtemp(prefix="main-job-"))
        workdir = temp / "repo"
    else:
        workdir = args.workdir
        if workdir.exists():
            print(f"main_job: {workdir} exists; give a new folder", file=sys.stderr)
            return 2
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(workdir)], check=True)
    subprocess.run(["git", "-C", str(workdir), "checkout", "-q", commit], check=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--configfile",
        args.config,
        "--cores",
        str(args.cores),
        *MAKE_DEMO_OPTIONS,
        *args.target,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(workdir / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    log_path = workdir / "main_job.log"
    load_start = list(os.getloadavg())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.monotonic()
    with log_path.open("w") as log:
        rc = subprocess.run(
            cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        ).returncode
    wall = time.monotonic() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_end = list(os.getloadavg())
    jobs = parse_log(log_path.read_text(errors="replace"))
    record = {
        "schema_version": SCHEMA_VERSION,
        "commit": commit,
        "uncommitted_tracked_files": len(dirty),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "command": "snakemake " + " ".join(cmd[3:]),
        "returncode": rc,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
        ),
        "max_rss_mib": round(after.ru_maxrss / 1024, 1),
        "n_jobs": len(jobs),
        "cores": args.cores,
        "cpu_model": _cpu_model(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "python": platform.python_version(),
        "rules": {
            k: {kk: round(v, 1) for kk, v in row.items()} for k, row in per_rule(jobs).items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, args.out)
    text = markdown(record)
    if args.markdown:
        args.markdown.write_text(text)
    if args.update_docs and rc == 0:
        update_docs(record, _display(args.out))
    print(text)
    if rc != 0:
        print(f"main_job: snakemake failed (exit {rc}); log: {log_path}", file=sys.stderr)
    if temp is not None and not args.keep and rc == 0:
        shutil.rmtree(temp, ignore_errors=True)
    elif rc != 0 or args.keep:
        print(f"main_job: the clone is kept at {workdir}", file=sys.stderr)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
