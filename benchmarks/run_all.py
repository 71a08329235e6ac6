"""Run every side-by-side benchmark and write ``docs/performance.md`` from their results.

The benchmarks run one after the other, each in its own subprocess (so they do not
compete for the cores and one crash does not stop the others). Each writes a JSON
result (``benchlib`` records: what was compared, our figure, the peer's, the ratio,
sizes, repeats, the peer's package and version, accuracy agreement) into the results
folder, next to its log; ``run.json`` there describes the run (machine, load average
at the start and end of the run and of each benchmark, git commit, commands, exit
codes). The report is then rendered from these JSON files only: no figure in it is
typed by hand. A benchmark whose peer is not installed reports "peer not available";
a benchmark that fails or times out is reported as such and the others still run.

Usage::

    make bench                                   # the full run -> docs/performance.md
    .venv/bin/python benchmarks/run_all.py --quick            # small sizes (smoke test)
    .venv/bin/python benchmarks/run_all.py --only func --only lbo
    .venv/bin/python benchmarks/run_all.py --render-only      # re-render from the JSON
    .venv/bin/python benchmarks/run_all.py --only anat --update  # rerun one, keep the rest

A full run keeps its results in ``benchmarks/results/report/`` and writes
``docs/performance.md``. ``--quick`` and ``--only`` runs keep theirs in
``benchmarks/results/report-quick/`` and ``report-partial/`` and write ``performance.md``
there (unless ``--results-dir`` or ``--output`` say otherwise), so a smoke or partial run
never replaces the full run's results or report.

Fairness: every benchmark declares the thread count both sides run with
(``Benchmark.threads``): its subprocess starts with the BLAS / OpenMP environment
variables at that count and the script pins its pools (threadpoolctl) and torch's
threads to it (``benchlib.pin_threads``). One thread on this shared 2-core machine,
except the encoder block (its matmul peer runs in the same process at the same two
threads). Both sides get the same warm-up and the same number of interleaved repeats
(``benchlib.interleaved_times``), and a target counts as met only when speed and the
comparison's accuracy criterion both hold.

Provenance: a full run (and ``--update``) refuses a working tree whose tracked files
differ from HEAD (``--allow-dirty`` runs anyway and records it), and ``run.json``
records the commit and, per benchmark, the source paths it exercises
(``Benchmark.sources``); ``tests/unit/test_bench_freshness.py`` fails when any of them
changed after the report's commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # benchlib sits next to this file
    sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402

from brainharmony.io import InputDataError, git_sha, write_json, write_text  # noqa: E402

DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "report"
DEFAULT_QUICK_RESULTS = REPO / "benchmarks" / "results" / "report-quick"
DEFAULT_PARTIAL_RESULTS = REPO / "benchmarks" / "results" / "report-partial"
DEFAULT_OUTPUT = REPO / "docs" / "performance.md"
MANIFEST = "run.json"
# Everything from this line on in the report was written by hand (the main job's measured
# runs, which no benchmark produces) and is kept as it is when the report is re-rendered.
HAND_WRITTEN = (
    "<!-- Hand-written from here on (not generated): benchmarks/run_all.py keeps this part "
    "when it re-renders the file. -->"
)
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script and the arguments of a full and of a quick run."""

    name: str
    script: str
    stage: str
    full_args: str
    quick_args: str
    threads: int = 1
    #: Paths (repo-relative) of the code this benchmark measures, its script included:
    #: the report is stale once any of them changes after the report's commit.
    sources: tuple[str, ...] = ()

    def command(self, json_path: Path, quick: bool, install_peers: bool) -> list[str]:
        """The subprocess command line (the script writes its JSON to ``json_path``)."""
        args = shlex.split(self.quick_args if quick else self.full_args)
        if install_peers and "--no-ants-install" in args:
            args.remove("--no-ants-install")
        return [sys.executable, str(HERE / self.script), *args, "--json", str(json_path)]

    def all_sources(self) -> tuple[str, ...]:
        """The declared sources plus the script itself and ``benchlib.py``."""
        own = (f"benchmarks/{self.script}", "benchmarks/benchlib.py")
        return tuple(dict.fromkeys((*own, *self.sources)))


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name="anat",
        script="bench_anat.py",
        stage="anatomy (issues 3, 21)",
        full_args="--no-ants-install",
        quick_args="--quick --no-ants-install",
        sources=("src/brainharmony/anat",),
    ),
    Benchmark(
        name="func",
        script="bench_func.py",
        stage="functional (issue 4)",
        full_args="--repeats 3 --threads 1",
        quick_args="--quick --repeats 2 --threads 1",
        sources=(
            "src/brainharmony/func/parcellate.py",
            "src/brainharmony/func/denoise.py",
            "src/brainharmony/func/motion.py",
            "src/brainharmony/func/register.py",
            "src/brainharmony/anat/images.py",
            "src/brainharmony/atlas.py",
        ),
    ),
    Benchmark(
        name="lbo",
        script="bench_lbo.py",
        stage="geometry (issue 5)",
        full_args="--modes 200 --repeats 3 --threads 1",
        quick_args="--modes 20 --repeats 1 --threads 1",
        sources=("src/brainharmony/geometry/lbo.py", "src/brainharmony/geometry/surfaces.py"),
    ),
    Benchmark(
        name="loading",
        script="bench_loading.py",
        stage="packed data (issue 5)",
        full_args="--repeats 3 --threads 1",
        quick_args="--n-series 64 --n-volumes 8 --workers 0 --repeats 1 --threads 1",
        sources=("src/brainharmony/packing.py",),
    ),
    Benchmark(
        name="ssm",
        script="bench_ssm.py",
        stage="SSM predictor (issue 7)",
        full_args="--threads 1",
        quick_args="--threads 1 --length 256 --repeats 3 --no-training",
        sources=("src/brainharmony/models/ssm.py", "src/brainharmony/models/ssm_scan.py"),
    ),
    Benchmark(
        name="encoder_block",
        script="bench_encoder_block.py",
        stage="training (issue 6)",
        full_args="--threads 2",
        quick_args="--batch 1 --tokens 64 --width 192 --heads 3 --square 256 --repeats 3 "
        "--threads 2",
        threads=2,
        sources=("src/brainharmony/models/blocks.py",),
    ),
)
BY_NAME = {b.name: b for b in BENCHMARKS}


# ----------------------------------------------------------------------------- machine
def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def _uncommitted_files() -> int | None:
    """How many tracked files differ from HEAD (read-only: no index refresh)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return len(out.stdout.splitlines()) if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """The machine and software the run used (CPU from /proc/cpuinfo, versions, git)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu_model": _cpu_model() or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": benchlib.package_version("torch"),
        "numpy": benchlib.package_version("numpy"),
        "brainharmony": benchlib.package_version("brainharmony"),
        "git_sha": git_sha(REPO),
        "git_uncommitted_files": _uncommitted_files(),
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ running
def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_benchmark(
    bench: Benchmark,
    results_dir: Path,
    *,
    quick: bool,
    install_peers: bool,
    timeout_s: float,
) -> dict[str, Any]:
    """Run one benchmark script in a subprocess; its manifest entry."""
    json_path = results_dir / f"{bench.name}.json"
    log_path = results_dir / f"{bench.name}.log"
    json_path.unlink(missing_ok=True)  # never report a previous run's figures
    cmd = bench.command(json_path, quick, install_peers)
    entry: dict[str, Any] = {
        "name": bench.name,
        "script": bench.script,
        "stage": bench.stage,
        "command": _display_command(cmd),
        "result": json_path.name,
        "log": log_path.name,
        "threads": bench.threads,
        "sources": list(bench.all_sources()),
        "started": _now(),
        "loadavg_start": benchlib.loadavg(),
    }
    print(f"[run_all] {bench.name}: {entry['command']}", file=sys.stderr, flush=True)
    began = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **benchlib.thread_env(bench.threads))
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this call started
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, status = proc.returncode, "timeout"
    entry.update(
        {
            "returncode": rc,
            "wall_s": time.perf_counter() - began,
            "loadavg_end": benchlib.loadavg(),
            "status": status,
        }
    )
    if status == "ok" and not json_path.is_file():
        entry["status"] = "failed"
        entry["error"] = f"exited 0 but wrote no {json_path.name}"
    elif status != "ok":
        what = f"timed out after {timeout_s:.0f} s" if status == "timeout" else f"exit code {rc}"
        entry["error"] = f"{what}; last lines of {log_path.name}:\n{_tail(log_path)}"
    print(
        f"[run_all] {bench.name}: {entry['status']} in {entry['wall_s']:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return entry


def _display_command(cmd: Sequence[str]) -> str:
    """``cmd`` with the interpreter shown as ``python`` and paths relative to the repo."""
    shown = ["python"]
    for part in cmd[1:]:
        path = Path(part)
        if path.is_absolute() and path.is_relative_to(REPO):
            part = str(path.relative_to(REPO))
        shown.append(part)
    return shlex.join(shown)


# ---------------------------------------------------------------------------- results
REQUIRED_COMPARISON_KEYS = (
    "key",
    "what",
    "ours",
    "peer",
    "peer_status",
    "unit",
    "higher_is_better",
    "ratio",
    "size",
    "repeats",
    "statistic",
    "threads",
    "target",
    "meets_target",
    "speed_ok",
    "accuracy_criterion",
    "accuracy_ok",
    "agreement",
)


def validate_result(doc: Any, path: Path) -> dict[str, Any]:
    """Check a benchmark's JSON result; raise :class:`InputDataError` naming the problem."""
    if not isinstance(doc, dict):
        raise InputDataError(path, "a benchmark result must be a JSON object")
    for key in ("benchmark", "schema_version", "title", "comparisons", "facts", "notes", "env"):
        if key not in doc:
            raise InputDataError(path, f"benchmark result has no {key!r} field")
    if doc["schema_version"] != benchlib.SCHEMA_VERSION:
        raise InputDataError(
            path,
            f"schema_version {doc['schema_version']!r}; this report reads "
            f"{benchlib.SCHEMA_VERSION}",
        )
    if not isinstance(doc["comparisons"], list):
        raise InputDataError(path, "'comparisons' must be a list")
    for i, c in enumerate(doc["comparisons"]):
        missing = [k for k in REQUIRED_COMPARISON_KEYS if k not in c]
        if missing:
            raise InputDataError(path, f"comparison {i} has no {', '.join(map(repr, missing))}")
        if c["target"] is not None and not c["accuracy_criterion"]:
            raise InputDataError(
                path, f"comparison {c['key']!r}: a target without an accuracy criterion"
            )
        if c["meets_target"] and (not c["speed_ok"] or c["accuracy_ok"] is False):
            raise InputDataError(
                path, f"comparison {c['key']!r}: target met although speed or accuracy failed"
            )
        ours, peer = c["ours"]["value"], c["peer"]["value"]
        if peer is None:
            if c["ratio"] is not None or not str(c["peer_status"]).startswith("not available"):
                raise InputDataError(
                    path, f"comparison {c['key']!r}: no peer value, yet a ratio or no reason"
                )
            continue
        expected = ours / peer if c["higher_is_better"] else peer / ours
        if c["ratio"] is None or abs(c["ratio"] - expected) > 1e-9 * abs(expected):
            raise InputDataError(
                path,
                f"comparison {c['key']!r}: ratio {c['ratio']!r} does not follow from its "
                f"values (expected {expected!r})",
            )
    return doc


def load_run(results_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The run manifest and every successful benchmark's validated result."""
    manifest_path = results_dir / MANIFEST
    if not manifest_path.is_file():
        raise InputDataError(manifest_path, "no benchmark run manifest (run run_all.py first)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    results: dict[str, dict[str, Any]] = {}
    for entry in manifest.get("benchmarks", []):
        if entry.get("status") != "ok":
            continue
        path = results_dir / entry["result"]
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputDataError(path, f"cannot read the benchmark result ({exc})") from exc
        results[entry["name"]] = validate_result(doc, path)
    return manifest, results


# ---------------------------------------------------------------------------- rendering
def _load(values: Sequence[float] | None) -> str:
    if not values:
        return "?"
    return " / ".join(f"{v:.2f}" for v in values)


def _table(manifest: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| benchmark | comparison | data | ours | peer | peer package | ratio (> 1: ours "
        "better) | target | agreement | threads |",
        "|---|---|---|---:|---:|---|---:|---|---|---|",
    ]
    c = benchlib.cell
    for entry in manifest["benchmarks"]:
        name = entry["name"]
        if entry.get("status") != "ok":
            lines.append(
                f"| {name} | (all) | - | - | - | - | **{entry.get('status', 'failed')}** "
                "| - | - | - |"
            )
            continue
        for r in results[name]["comparisons"]:
            cells = [
                name,
                r["what"],
                benchlib.format_data(r),
                benchlib.format_value(r["ours"]["value"], r["unit"]),
                benchlib.format_value(r["peer"]["value"], r["unit"]),
                benchlib.format_peer(r),
                benchlib.format_ratio(r),
                benchlib.format_target(r),
                benchlib.format_agreement(r),
                r["threads"],
            ]
            lines.append("| " + " | ".join(c(x) for x in cells) + " |")
    return lines


def _machine(manifest: Mapping[str, Any]) -> list[str]:
    m = manifest["machine"]
    mem = f"{m['memory_gib']:.1f} GiB" if m.get("memory_gib") else "unknown"
    dirty = m.get("git_uncommitted_files")
    tree = (
        ""
        if not dirty
        else f" plus uncommitted changes in {dirty} tracked file{'s' if dirty != 1 else ''}"
    )
    minutes = manifest["total_wall_s"] / 60
    return [
        f"- CPU: {m['cpu_model']} (`/proc/cpuinfo`), {m['logical_cpus']} logical cores, "
        f"{m['usable_cpus']} usable by this process",
        f"- Memory: {mem}",
        f"- Load average (1 / 5 / 15 min): {_load(manifest['loadavg_start'])} at the start, "
        f"{_load(manifest['loadavg_end'])} at the end",
        f"- Software: Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, "
        f"brainharmony {m['brainharmony']}; {m['platform']}",
        f"- Source: git {m['git_sha'] or 'unknown'}{tree}",
        f"- Date: {manifest['started']} to {manifest['finished']} (UTC), {minutes:.1f} min in all",
        f"- Command: `{manifest['command']}` ({manifest['mode']} run)",
        *[
            f"- Rerun: {', '.join(u['benchmarks'])} by `{u['command']}` on {u['started']} "
            f"(git {u['git_sha'] or 'unknown'}"
            + (
                f" plus uncommitted changes in {u['git_uncommitted_files']} tracked file(s)"
                if u.get("git_uncommitted_files")
                else ""
            )
            + "); the per-benchmark figures below say which run"
            for u in manifest.get("updates", [])
        ],
    ]


def _section(entry: Mapping[str, Any], doc: Mapping[str, Any] | None) -> list[str]:
    title = doc["title"] if doc else entry["name"]
    lines = [
        f"### {entry['name']}: {title}",
        "",
        f"`benchmarks/{entry['script']}`, {entry['stage']}. Command: `{entry['command']}`; "
        f"{entry['wall_s']:.0f} s; load average {_load(entry['loadavg_start'][:1])} at its "
        f"start, {_load(entry['loadavg_end'][:1])} at its end"
        + (f"; {entry['threads']} thread(s) for both sides" if entry.get("threads") else "")
        + ".",
        "",
    ]
    if doc is None:
        error = entry.get("error", "no result")
        lines += [f"**{entry.get('status', 'failed')}**:", "", "```", error, "```", ""]
        return lines
    for r in doc["comparisons"]:
        peer = r["peer"]
        line = f"- `{r['key']}`: ours = {r['ours']['label']}; peer = {peer['label']}"
        if r["peer_status"] != "ok":
            line += f" (**peer {r['peer_status']}**)"
        if r.get("target_source"):
            line += f"; target from {r['target_source']}"
        if r.get("accuracy_criterion"):
            line += f"; accuracy criterion: {benchlib.format_accuracy(r)}"
        lines.append(line + ".")
    for f in doc["facts"]:
        unit = f" {f['unit']}" if f.get("unit") else ""
        lines.append(f"- {f['label']}: {benchlib.format_number(f['value'])}{unit}.")
    lines += [f"- {note}" for note in doc["notes"]]
    lines.append("")
    for table in doc.get("tables", []):  # Markdown the script made from its own figures
        lines += [table, ""]
    return lines


def _scope(manifest: Mapping[str, Any]) -> list[str]:
    """A warning line for a quick (smoke-test sizes) or partial (``--only``) run."""
    what = []
    if manifest["mode"] != "full":
        what.append("a quick run at smoke-test sizes: these figures are not claims")
    if not manifest["complete"]:
        what.append("a partial run (--only): not every benchmark ran")
    return [f"**This is {'; and '.join(what)}.**", ""] if what else []


def keep_hand_written(output: Path, text: str) -> str:
    """``text``, followed by the hand-written part of the existing ``output`` (from the
    ``HAND_WRITTEN`` line on) when there is one."""
    try:
        old = output.read_text(encoding="utf-8")
    except FileNotFoundError:
        return text
    at = old.find(HAND_WRITTEN)
    return text if at < 0 else text.rstrip("\n") + "\n\n" + old[at:]


def render(manifest: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> str:
    """``performance.md`` from a run manifest and its benchmark results (nothing else)."""
    m = manifest["machine"]
    cores = m["logical_cpus"]
    lines = [
        "# Performance: side-by-side benchmarks",
        "",
        "<!-- Generated by benchmarks/run_all.py (make bench) from the JSON results in "
        f"{manifest['results_dir']}; do not edit by hand: rerun the command. -->",
        "",
        "Every figure here was measured in one run of the command under [Machine](#machine), "
        "the benchmarks one after the other, each in its own process, at the commit shown "
        "there. Each comparison runs our code and the peer on the same input in the same "
        "process, with the same threads (pinned for both: BLAS / OpenMP pools and torch), "
        "the same warm-up and the same number of repeats, interleaved so background load "
        "hits both alike. A target is met only when the speed ratio reaches it and the "
        "comparison's accuracy criterion holds; a peer that failed on an input gets no "
        "ratio. Ratios are oriented so that > 1 "
        "favours brainharmony: the peer's time over ours, or for rates ours over the peer's. "
        f"The machine ({cores} cores) was shared with other work; its load average is "
        "recorded below and per benchmark. Read the ratios: the seconds move with the load.",
        "",
        *_scope(manifest),
        "## Ratios",
        "",
        *_table(manifest, results),
        "",
        "## Machine",
        "",
        *_machine(manifest),
        "",
        "## Benchmarks",
        "",
        "What each comparison runs (ours and the peer), further measured figures, and notes "
        "on the method. Re-run one with `python benchmarks/run_all.py --only NAME` (written "
        "to the results folder, not here), or its script directly (see its docstring).",
        "",
    ]
    for entry in manifest["benchmarks"]:
        lines += _section(entry, results.get(entry["name"]))
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BY_NAME),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BY_NAME)}",
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="JSON results and logs")
    parser.add_argument("--output", type=Path, default=None, help="the Markdown report")
    parser.add_argument(
        "--render-only", action="store_true", help="render the report from existing results"
    )
    parser.add_argument(
        "--install-peers",
        action="store_true",
        help="let bench_anat.py create the ANTsPy environment (a download) if missing",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: rerun those benchmarks into the full run's results, keep the "
        "others' results, and re-render docs/performance.md",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run a full report although tracked files differ from HEAD (recorded; the "
        "freshness test then fails until a clean rerun)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="s per benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser.parse_args(argv)


def require_clean_tree(allow_dirty: bool) -> None:
    """Refuse to time a working tree whose tracked files differ from HEAD.

    The report records one commit; figures measured on uncommitted code could not be
    traced to it. ``allow_dirty`` runs anyway (the count is recorded in ``run.json``).
    """
    dirty = _uncommitted_files()
    if dirty and not allow_dirty:
        raise SystemExit(
            f"run_all: {dirty} tracked file(s) differ from HEAD; commit them first (the "
            "report records the commit it measured) or pass --allow-dirty"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks (or only render), then write the report; 1 if any failed."""
    args = parse_args(argv)
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:14s} {b.script:24s} {b.stage}")
        return 0
    if args.update:
        if not args.only or args.quick or args.render_only:
            raise SystemExit("--update needs --only and no --quick or --render-only")
        return update(args)
    results_dir = args.results_dir
    if results_dir is None:  # a quick or partial run never overwrites the full run's results
        if args.quick:
            results_dir = DEFAULT_QUICK_RESULTS
        elif args.only and not args.render_only:
            results_dir = DEFAULT_PARTIAL_RESULTS
        else:
            results_dir = DEFAULT_RESULTS
    if args.render_only:
        manifest, results = load_run(results_dir)
    else:
        if not args.quick and not args.only:  # a full run: the report of a commit
            require_clean_tree(args.allow_dirty)
        selected = [BY_NAME[n] for n in dict.fromkeys(args.only)] if args.only else BENCHMARKS
        results_dir.mkdir(parents=True, exist_ok=True)
        shown_argv = list(sys.argv[1:] if argv is None else argv)
        manifest = {
            "schema_version": benchlib.SCHEMA_VERSION,
            "mode": "quick" if args.quick else "full",
            "complete": not args.only,
            "command": shlex.join(["python", "benchmarks/run_all.py", *shown_argv]),
            "results_dir": _relative(results_dir),
            "started": _now(),
            "machine": machine_info(),
            "loadavg_start": benchlib.loadavg(),
            "benchmarks": [],
        }
        began = time.perf_counter()
        for bench in selected:
            manifest["benchmarks"].append(
                run_benchmark(
                    bench,
                    results_dir,
                    quick=args.quick,
                    install_peers=args.install_peers,
                    timeout_s=args.timeout,
                )
            )
        manifest.update(
            {
                "finished": _now(),
                "total_wall_s": time.perf_counter() - began,
                "loadavg_end": benchlib.loadavg(),
            }
        )
        write_json(results_dir / MANIFEST, manifest)
        manifest, results = load_run(results_dir)
    output = args.output
    if output is None:
        full = manifest["mode"] == "full" and manifest["complete"]
        output = DEFAULT_OUTPUT if full else results_dir / "performance.md"
    write_text(output, keep_hand_written(output, render(manifest, results)))
    failed = [e["name"] for e in manifest["benchmarks"] if e["status"] != "ok"]
    print(f"[run_all] wrote {output}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def update(args: argparse.Namespace) -> int:
    """Rerun ``--only`` benchmarks into a full run's results; re-render its report.

    The other benchmarks' results and manifest entries stay as they were; the manifest
    records the rerun (command, date, git commit) and the report lists it under Machine.
    """
    results_dir = args.results_dir or DEFAULT_RESULTS
    require_clean_tree(args.allow_dirty)
    manifest, _ = load_run(results_dir)
    shown_argv = shlex.join(["python", "benchmarks/run_all.py", *sys.argv[1:]])
    record = {
        "benchmarks": list(dict.fromkeys(args.only)),
        "command": shown_argv,
        "started": _now(),
        "git_sha": git_sha(REPO),
        "git_uncommitted_files": _uncommitted_files(),
    }
    entries = {e["name"]: e for e in manifest["benchmarks"]}
    for name in record["benchmarks"]:
        entries[name] = run_benchmark(
            BY_NAME[name],
            results_dir,
            quick=False,
            install_peers=args.install_peers,
            timeout_s=args.timeout,
        )
    manifest["benchmarks"] = [entries[b.name] for b in BENCHMARKS if b.name in entries]
    record["finished"] = _now()
    # An earlier rerun's record stays only while some benchmark it ran was not rerun since.
    rerun = set(record["benchmarks"])
    earlier = [u for u in manifest.get("updates", []) if set(u["benchmarks"]) - rerun]
    manifest["updates"] = [*earlier, record]
    write_json(results_dir / MANIFEST, manifest)
    manifest, results = load_run(results_dir)
    output = args.output or DEFAULT_OUTPUT
    write_text(output, keep_hand_written(output, render(manifest, results)))
    failed = [e["name"] for e in manifest["benchmarks"] if e["status"] != "ok"]
    print(f"[run_all] wrote {output}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


# ---------------------------------------------------------------------------- freshness
class NoHistory(RuntimeError):
    """The git history needed to check a report's freshness is not available."""


def _git_out(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NoHistory(f"git cannot run ({exc})") from exc


def stale_report(
    manifest: Mapping[str, Any], repo: Path = REPO, benchmarks: Sequence[Benchmark] = BENCHMARKS
) -> list[str]:
    """Why a full report's figures no longer describe the code at HEAD (empty: fresh).

    The report is stale when it was measured with uncommitted changes, when a registered
    benchmark is missing from it or did not succeed, or when any source path a benchmark
    exercises (``Benchmark.all_sources()``, plus the paths its ``run.json`` entry
    recorded) changed in a commit after the one that measured it (the run's commit, or
    that of the ``--update`` that last reran the benchmark). Raises :class:`NoHistory`
    when the repository or that commit is not available (no ``.git``, a shallow clone).
    """
    problems = []
    machine = manifest.get("machine", {})
    runs = [("the run", machine.get("git_sha"), machine.get("git_uncommitted_files"))]
    runs += [
        (
            f"the rerun of {', '.join(u['benchmarks'])}",
            u.get("git_sha"),
            u.get("git_uncommitted_files"),
        )
        for u in manifest.get("updates", [])
    ]
    for what, sha, dirty in runs:
        if dirty:
            problems.append(
                f"{what} measured uncommitted changes ({dirty} tracked file(s) differed from "
                f"{sha}): rerun at a clean, committed HEAD"
            )
        if not sha:
            problems.append(f"{what} recorded no git commit")
    if _git_out(repo, "rev-parse", "--git-dir").returncode != 0:
        raise NoHistory(f"{repo} is not a git repository")
    commit_of = {e["name"]: machine.get("git_sha") for e in manifest.get("benchmarks", [])}
    for u in manifest.get("updates", []):
        for name in u["benchmarks"]:
            commit_of[name] = u.get("git_sha")
    entries = {e["name"]: e for e in manifest.get("benchmarks", [])}
    for bench in benchmarks:
        entry = entries.get(bench.name)
        if entry is None:
            problems.append(f"{bench.name}: not in the report")
            continue
        if entry.get("status") != "ok":
            problems.append(f"{bench.name}: {entry.get('status')} in the report")
        sha = commit_of.get(bench.name)
        if not sha:
            continue
        if _git_out(repo, "cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
            shallow = _git_out(repo, "rev-parse", "--is-shallow-repository").stdout.strip()
            if shallow == "true":
                raise NoHistory(f"commit {sha} is not in this shallow clone")
            problems.append(f"{bench.name}: the report's commit {sha} is not in this repository")
            continue
        if _git_out(repo, "merge-base", "--is-ancestor", sha, "HEAD").returncode != 0:
            problems.append(f"{bench.name}: the report's commit {sha} is not an ancestor of HEAD")
            continue
        paths = list(dict.fromkeys([*bench.all_sources(), *entry.get("sources", [])]))
        log = _git_out(repo, "log", "--format=%h %s", f"{sha}..HEAD", "--", *paths)
        if log.returncode != 0:
            raise NoHistory(f"git log failed: {log.stderr.strip()}")
        if log.stdout.strip():
            commits = log.stdout.strip().splitlines()
            problems.append(
                f"{bench.name}: {len(commits)} commit(s) after {sha[:12]} changed "
                f"{', '.join(paths)}: {'; '.join(c[:100] for c in commits[:5])}"
            )
    return problems


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    raise SystemExit(main())
