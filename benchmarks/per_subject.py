"""What one real-sized subject costs: ``brainharmony anat`` and ``func native``, one process each.

    python benchmarks/per_subject.py --out benchmarks/results/per_subject/latest.json

What it does:

1. refuses a working tree with uncommitted changes to tracked files (``--allow-dirty``
   records them instead), like ``benchmarks/main_job.py``; the code run is this
   checkout's ``src`` (first on ``PYTHONPATH``);
2. writes the inputs once into ``--workdir`` (default ``.per_subject_work/``, kept, so a
   rerun skips this): one subject of each of two demo datasets made by the project's own
   generator (:mod:`brainharmony.demo`) at paper size, a 256^3 T1w at 1 mm with a
   64 x 64 x 40 BOLD of 2.4 x 2.4 x 3.0 mm (40 slices of 2.4 mm would cover 96 mm and cut
   the brain) of 490 volumes at TR 0.735 s (multiband 4) or of 200 volumes at TR 2.0 s;
   the template files (``brainharmony templates``), the 2 mm atlas (``brainharmony func
   atlas --source rebuild``) and each subject's anatomy (the func stage's inputs);
3. runs, each as its own process and on 1 and on 2 threads (``--threads``): ``brainharmony
   anat --resolution-mm 1`` with the default brain extraction (deepbet) and with the
   demo's ``template`` route, and ``brainharmony func native`` on each BOLD against the
   2 mm atlas; for each it records the wall time, the CPU time (user + sys) and the peak
   resident set of the process and its children (``os.wait4``), and the load average
   before and after (other work on the machine inflates the wall time: the record keeps
   the load so a reader can tell);
4. from the 1-thread runs (the workflow's ``threads: 1``) prints the ``resources:`` a
   cluster rule should ask for, ``mem_mb`` = peak x ``--mem-factor`` and ``runtime`` =
   wall x ``--time-factor`` (minutes, rounded up), next to what workflow/rules/anat.smk
   and func.smk ask for today (``brainharmony.planning``), saying where they disagree;
5. writes a JSON record and prints a Markdown summary (``--markdown`` also writes it);
   ``--update-docs`` puts the summary between the ``<!-- per-subject -->`` markers of
   docs/performance.md; ``--from-record`` renders a record without running anything.

``--quick`` runs the same steps on tiny inputs (a 64^3 T1w at 3 mm, anat at 2 mm, a
32 x 32 x 24 BOLD at 6 mm of 40 volumes (smaller grids leave motion
correction too few voxels), the 3 mm atlas) in well under a minute: it checks the
script, and its figures say nothing about a real subject.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1
BEGIN, END = "<!-- per-subject -->", "<!-- /per-subject -->"
#: Safety factors of the suggested cluster resources over the measured 1-thread run.
MEM_FACTOR = 1.5
TIME_FACTOR = 2.0
#: A rule asking for more than this many times the suggestion is called wasteful.
OVER_FACTOR = 4.0
SEED = 20251122


@dataclass(frozen=True)
class Sizes:
    """The input sizes and output resolutions of one benchmark mode."""

    name: str
    t1_shape: tuple[int, int, int]
    t1_voxel_mm: float
    anat_resolution_mm: int
    bold_shape: tuple[int, int, int]
    bold_voxel_mm: tuple[float, float, float]
    func_resolution_mm: float
    #: (label, TR s, volumes, multiband) per BOLD run.
    runs: tuple[tuple[str, float, int, int], ...]


PAPER = Sizes(
    name="paper",
    t1_shape=(256, 256, 256),
    t1_voxel_mm=1.0,
    anat_resolution_mm=1,
    bold_shape=(64, 64, 40),
    bold_voxel_mm=(2.4, 2.4, 3.0),
    func_resolution_mm=2.0,
    runs=(("tr0.735-490", 0.735, 490, 4), ("tr2.0-200", 2.0, 200, 1)),
)
QUICK = Sizes(
    name="quick",
    t1_shape=(64, 64, 64),
    t1_voxel_mm=3.0,
    anat_resolution_mm=2,
    bold_shape=(32, 32, 24),
    bold_voxel_mm=(6.0, 6.0, 6.0),
    func_resolution_mm=3.0,
    runs=(("tr0.735-40", 0.735, 40, 4), ("tr2.0-40", 2.0, 40, 1)),
)


@dataclass(frozen=True)
class Measure:
    """One process: its wall and CPU seconds, peak resident set and exit status."""

    wall_seconds: float
    cpu_seconds: float
    max_rss_mib: float
    returncode: int


#: Runs its arguments as a child and writes the child's ``wait4`` figures (JSON) to the
#: file named first. A fresh small interpreter forks the measured process, so the
#: child's peak resident set does not start from this script's: Linux carries the
#: forking process's high-water mark into the child's ``ru_maxrss`` at ``exec``.
LAUNCHER = """\
import json, os, sys, time
tic = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall": time.monotonic() - tic, "cpu": ru.ru_utime + ru.ru_stime,
               "maxrss_kib": ru.ru_maxrss, "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Measure:
    """Run ``cmd`` (output to ``log``) and measure it with ``os.wait4``.

    The peak resident set and the CPU time are those ``wait4`` reports for the process
    and every descendant it waited for (the largest single one for the peak); the
    process is started by :data:`LAUNCHER`, a fresh interpreter of about 10 MiB.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    figures = log.with_name(f".{log.name}.rusage.json")
    figures.unlink(missing_ok=True)
    with log.open("w") as out:
        rc = subprocess.run(
            [sys.executable, "-c", LAUNCHER, str(figures), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    if rc != 0 or not figures.exists():
        raise RuntimeError(f"per_subject: the launcher failed (exit {rc}); {log}")
    f = json.loads(figures.read_text())
    figures.unlink()
    return Measure(
        wall_seconds=round(f["wall"], 2),
        cpu_seconds=round(f["cpu"], 2),
        max_rss_mib=round(f["maxrss_kib"] / 1024, 1),  # Linux: KiB
        returncode=int(f["rc"]),
    )


def suggest(max_rss_mib: float, wall_seconds: float, mem_factor: float, time_factor: float):
    """``(mem_mb, runtime_min)`` for a cluster rule: the peak times ``mem_factor`` in MB
    (10^6 bytes) rounded up to 100, the wall time times ``time_factor`` in whole minutes."""
    mem_mb = math.ceil(max_rss_mib * 1.048576 * mem_factor / 100) * 100
    runtime = max(1, math.ceil(wall_seconds * time_factor / 60))
    return int(mem_mb), int(runtime)


def verdict(requested: int, suggested: int, over: float = OVER_FACTOR) -> str:
    """How a rule's request compares with the suggestion."""
    if requested < suggested:
        return "too low"
    if requested > over * suggested:
        return f"over {over:g}x"
    return "ok"


def current_requests(anat_resolution_mm: int) -> dict[str, dict[str, int]]:
    """What the workflow's anat and func_native rules ask for today."""
    from brainharmony.planning import anat, func

    return {
        "anat": {
            "mem_mb": anat.MEM_MB[anat_resolution_mm],
            "runtime": anat.RUNTIME_MIN[anat_resolution_mm],
        },
        "func_native": {"mem_mb": func.MEM_MB["native"], "runtime": func.RUNTIME_MIN["native"]},
    }


def resources_table(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage and case, the suggested resources from its 1-thread run and today's."""
    rows = []
    for case in record["cases"]:
        if case["threads"] != 1 or case["returncode"] != 0:
            continue
        mem_mb, runtime = suggest(
            case["max_rss_mib"], case["wall_seconds"], record["mem_factor"], record["time_factor"]
        )
        rule = record["requests"][case["rule"]]
        rows.append(
            {
                "case": case["name"],
                "rule": case["rule"],
                "mem_mb": mem_mb,
                "runtime": runtime,
                "rule_mem_mb": rule["mem_mb"],
                "rule_runtime": rule["runtime"],
                "mem": verdict(rule["mem_mb"], mem_mb),
                "time": verdict(rule["runtime"], runtime),
            }
        )
    return rows


def rule_resources(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per rule, the ``(mem_mb, runtime)`` covering every one of its cases."""
    out: dict[str, tuple[int, int]] = {}
    for r in rows:
        mem, run = out.get(r["rule"], (0, 0))
        out[r["rule"]] = (max(mem, r["mem_mb"]), max(run, r["runtime"]))
    return out


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.1f} s"


def markdown(record: dict[str, Any]) -> str:
    """The record as a Markdown summary: the runs, then the suggested resources."""
    s = record["sizes"]
    lines = [
        f"Per subject at {record['commit'][:7]} ({record['date']}, {record['mode']} mode): "
        f"T1w {'x'.join(map(str, s['t1_shape']))} at {s['t1_voxel_mm']:g} mm, anat at "
        f"{s['anat_resolution_mm']} mm; BOLD {'x'.join(map(str, s['bold_shape']))} at "
        f"{'x'.join(f'{v:g}' for v in s['bold_voxel_mm'])} mm, func at "
        f"{s['func_resolution_mm']:g} mm; {record['cpus']} CPUs ({record['cpu_model']}); "
        f"load average {record['loadavg_start'][0]:.2f} before, "
        f"{record['loadavg_end'][0]:.2f} after; `{record['command']}`.",
        "",
        "| stage | case | threads | wall | CPU s | peak MiB | load before | exit |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in record["cases"]:
        load = c.get("load_before")
        lines.append(
            f"| {c['rule']} | {c['name']} | {c['threads']} | {_minutes(c['wall_seconds'])} | "
            f"{c['cpu_seconds']:.1f} | {c['max_rss_mib']:.0f} | "
            f"{'n/a' if load is None else f'{load:.2f}'} | {c['returncode']} |"
        )
    rows = resources_table(record)
    lines += [
        "",
        f"Suggested `resources:` from the 1-thread runs (mem_mb = peak x "
        f"{record['mem_factor']:g}, runtime = wall x {record['time_factor']:g}, rounded up) "
        "against the rules' requests today (`brainharmony.planning.anat` / `.func`; "
        f"'over {OVER_FACTOR:g}x': more than {OVER_FACTOR:g} times the suggestion):",
        "",
        "| rule | case | mem_mb | runtime (min) | rule mem_mb | rule runtime | mem | runtime |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['case']} | {r['mem_mb']} | {r['runtime']} | "
            f"{r['rule_mem_mb']} | {r['rule_runtime']} | {r['mem']} | {r['time']} |"
        )
    per_rule = rule_resources(rows)
    if per_rule:
        lines += [""]
        for rule, (mem_mb, runtime) in per_rule.items():
            lines.append(
                f"- `{rule}`: `resources: mem_mb={mem_mb}, runtime={runtime}` (the largest "
                "over its cases)"
            )
    failed = [c["name"] for c in record["cases"] if c["returncode"] != 0]
    if failed:
        lines += ["", f"Failed (no suggestion): {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def replace_block(text: str, content: str, where: str = "") -> str:
    """``text`` with what lies between :data:`BEGIN` and :data:`END` replaced by
    ``content`` (markers kept); an error naming ``where`` when the markers are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{where}: no {BEGIN} ... {END} block to update")
    return text[: start + len(BEGIN)] + "\n" + content.rstrip("\n") + "\n" + text[end:]


def update_docs(record: dict[str, Any], repo: Path = REPO) -> None:
    """Rewrite the per-subject block of docs/performance.md."""
    path = repo / "docs" / "performance.md"
    text = replace_block(path.read_text(), markdown(record), str(path))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- inputs -------------------------------------------------------------------------------


def _spec(sizes: Sizes, run: tuple[str, float, int, int], name: str):
    from brainharmony.demo.acquisition import DatasetSpec

    _, tr, n_volumes, multiband = run
    return DatasetSpec(
        name=name,
        tr=tr,
        n_subjects=2,
        n_volumes=n_volumes,
        bold_voxel_mm=sizes.bold_voxel_mm,
        bold_shape=sizes.bold_shape,
        bold_orientation="LAS",
        multiband=multiband,
        slice_order="interleaved",
        oblique=False,
        t1_voxel_mm=(sizes.t1_voxel_mm,) * 3,
        t1_shape=sizes.t1_shape,
        t1_orientation="LAS",
    )


def _generate(work: Path, sizes: Sizes) -> dict[str, Path]:
    """One subject per BOLD run (its dataset folder), generated once; the BIDS folders."""
    from brainharmony.demo import generate as gen
    from brainharmony.demo.modelset import Models

    out = work / "inputs"
    out.mkdir(parents=True, exist_ok=True)
    folders = {}
    models = None
    for i, run in enumerate(sizes.runs):
        name = f"bench{'AB'[i]}"
        folders[run[0]] = out / name
        if (out / name / "dataset_description.json").exists():
            continue
        if models is None:
            models = Models()
            gen._warm_up()
        print(f"per_subject: generating {name} ({run[0]})", file=sys.stderr, flush=True)
        gen._generate_dataset(out, _spec(sizes, run, name), SEED, "default", models, 1, 1)
    return folders


def _bh(*args: str) -> list[str]:
    return [sys.executable, "-m", "brainharmony", "-v", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _check(cmd: list[str], log: Path, env: dict[str, str]) -> None:
    m = run_measured(cmd, log, env)
    if m.returncode != 0:
        raise RuntimeError(f"per_subject: {' '.join(cmd[3:6])} failed (exit {m.returncode}); {log}")


def _anat_cmd(t1w: Path, out: Path, sizes: Sizes, extraction: str, threads: int, tpl: Path):
    return _bh(
        "anat",
        "--t1w",
        str(t1w),
        "--out-dir",
        str(out),
        "--subject",
        "01",
        "--backend",
        "native",
        "--resolution-mm",
        str(sizes.anat_resolution_mm),
        "--brain-extraction",
        extraction,
        "--template-dir",
        str(tpl),
        "--threads",
        str(threads),
    )


def prepare(work: Path, sizes: Sizes, env: dict[str, str]) -> dict[str, Any]:
    """Inputs, template and atlas files, and each subject's anatomy (cached in ``work``)."""
    from brainharmony.anat.derivatives import anat_paths
    from brainharmony.func.atlas_resource import atlas_files
    from brainharmony.io import sidecar_path

    folders = _generate(work, sizes)
    tpl = work / "templates"
    if not (tpl / "done").exists():
        _check(
            _bh("templates", "--out-dir", str(tpl), "--resolutions", "1", "2"),
            work / "logs" / "templates.log",
            env,
        )
        (tpl / "done").write_text("")
    atlas_dir = work / f"atlas-{sizes.func_resolution_mm:g}"
    files = atlas_files(atlas_dir, sizes.func_resolution_mm, None, "rebuild")
    if not files.image.exists():
        _check(
            _bh(
                "func",
                "atlas",
                "--resolution",
                f"{sizes.func_resolution_mm:g}",
                "--out-dir",
                str(atlas_dir),
                "--source",
                "rebuild",
            ),
            work / "logs" / "atlas.log",
            env,
        )
    runs = {}
    for label, folder in folders.items():
        sub = folder / "sub-01"
        anat_dir = work / "prep" / label
        paths = anat_paths(anat_dir, "01")
        if not sidecar_path(paths.preproc).exists():
            _check(
                _anat_cmd(sub / "anat" / "sub-01_T1w.nii.gz", anat_dir, sizes, "deepbet", 2, tpl),
                work / "logs" / f"prep-{label}.log",
                env,
            )
        runs[label] = {
            "bold": sub / "func" / "sub-01_task-rest_bold.nii.gz",
            "sidecar": sub / "func" / "sub-01_task-rest_bold.json",
            "t1w": sub / "anat" / "sub-01_T1w.nii.gz",
            "xfm": paths.xfm_to_template,
            "brain": paths.native_preproc,
            "mask": paths.native_mask,
            "anat_sidecar": sidecar_path(paths.preproc),
        }
    return {"templates": tpl, "atlas": files, "runs": runs, "t1w": runs[sizes.runs[0][0]]["t1w"]}


def cases(
    sizes: Sizes, inputs: dict[str, Any], work: Path, threads: Sequence[int], template_row: bool
):
    """``(rule, name, threads, out_dir, command)`` of every measured process."""
    out = []
    routes = ["deepbet", "template"] if template_row else ["deepbet"]
    atlas = inputs["atlas"]
    for n in threads:
        for route in routes:
            name = f"{sizes.anat_resolution_mm}mm-{route}"
            d = work / "runs" / f"anat-{route}-t{n}"
            out.append(
                (
                    "anat",
                    name,
                    n,
                    d,
                    _anat_cmd(inputs["t1w"], d, sizes, route, n, inputs["templates"]),
                )
            )
        for label, tr, _, _ in sizes.runs:
            r = inputs["runs"][label]
            d = work / "runs" / f"func-{label}-t{n}"
            cmd = _bh(
                "func", "native",
                "--bold", str(r["bold"]),
                "--bold-sidecar", str(r["sidecar"]),
                "--t1w", str(r["t1w"]),
                "--t1w-to-template", str(r["xfm"]),
                "--t1w-brain", str(r["brain"]),
                "--t1w-brain-mask", str(r["mask"]),
                "--anat-sidecar", str(r["anat_sidecar"]),
                "--atlas", str(atlas.image),
                "--atlas-labels", str(atlas.labels),
                "--tissue-masks", str(atlas.tissues),
                "--out-dir", str(d),
                "--subject", "01",
                "--task", "rest",
                "--tr", f"{tr:g}",
                "--threads", str(n),
            )  # fmt: skip
            out.append(("func_native", label, n, d, cmd))
    return out


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="JSON record to write (required for a run)")
    p.add_argument("--markdown", type=Path, help="also write the Markdown summary here")
    p.add_argument(
        "--update-docs",
        action="store_true",
        help="write the result between the per-subject markers of docs/performance.md",
    )
    p.add_argument(
        "--from-record",
        type=Path,
        help="run nothing: render this JSON record (with --update-docs / --markdown)",
    )
    p.add_argument("--quick", action="store_true", help="tiny inputs (checks the script only)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="inputs and outputs (default: .per_subject_work/<mode>)",
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-template-row", action="store_true", help="skip the template route")
    p.add_argument("--mem-factor", type=float, default=MEM_FACTOR)
    p.add_argument("--time-factor", type=float, default=TIME_FACTOR)
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run although tracked files have uncommitted changes (recorded)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_record is not None:
        try:
            record = json.loads(args.from_record.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"per_subject: cannot read {args.from_record}: {err}", file=sys.stderr)
            return 2
        text = markdown(record)
        if args.markdown:
            args.markdown.write_text(text)
        if args.update_docs:
            update_docs(record)
        print(text)
        return 0
    if args.out is None:
        print("per_subject: --out is required for a run", file=sys.stderr)
        return 2
    if any(n < 1 for n in args.threads) or args.mem_factor < 1 or args.time_factor < 1:
        print("per_subject: --threads must be >= 1, the factors >= 1", file=sys.stderr)
        return 2
    dirty = _git("status", "--porcelain", "--untracked-files=no").splitlines()
    if dirty and not args.allow_dirty:
        print(
            f"per_subject: {len(dirty)} tracked file(s) differ from HEAD; commit them (the run "
            "measures HEAD) or pass --allow-dirty",
            file=sys.stderr,
        )
        return 2
    sizes = QUICK if args.quick else PAPER
    work = (args.workdir or REPO / ".per_subject_work" / sizes.name).resolve()
    env = _env()
    sys.path.insert(0, str(REPO / "src"))
    inputs = prepare(work, sizes, env)
    load_start = list(os.getloadavg())
    measured = []
    for rule, name, n, out_dir, cmd in cases(
        sizes, inputs, work, args.threads, not args.no_template_row
    ):
        shutil.rmtree(out_dir, ignore_errors=True)
        log = work / "logs" / f"{out_dir.name}.log"
        print(f"per_subject: {rule} {name} on {n} thread(s)", file=sys.stderr, flush=True)
        load = round(os.getloadavg()[0], 2)
        m = run_measured(cmd, log, env)
        if m.returncode != 0:
            print(
                f"per_subject: {rule} {name} failed (exit {m.returncode}); {log}", file=sys.stderr
            )
        measured.append(
            {
                "rule": rule,
                "name": name,
                "threads": n,
                **asdict(m),
                "load_before": load,
                "log": str(log),
            }
        )
    load_end = list(os.getloadavg())
    record = {
        "schema_version": SCHEMA_VERSION,
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_tracked_files": len(dirty),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "mode": sizes.name,
        "command": "python benchmarks/per_subject.py"
        + (" --quick" if args.quick else "")
        + " --threads "
        + " ".join(map(str, args.threads))
        + (" --no-template-row" if args.no_template_row else ""),
        "sizes": asdict(sizes),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "mem_factor": args.mem_factor,
        "time_factor": args.time_factor,
        "requests": current_requests(sizes.anat_resolution_mm),
        "cases": measured,
    }
    record["resources"] = resources_table(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, args.out)
    text = markdown(record)
    if args.markdown:
        args.markdown.write_text(text)
    ok = all(c["returncode"] == 0 for c in measured)
    if args.update_docs and ok:
        update_docs(record)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
