"""Time ``read_participants`` on large synthetic ``participants.tsv`` files.

Writes a table of N subjects (``participant_id``, ``age``, ``sex``, ``site``) to a
temporary folder and reads it with :func:`brainharmony.participants.read_participants`
(the numbers, the category and the site column typed, the duplicate-id check), the
way ingest does. Prints one line per size: rows, file size, best and median wall
time of ``--repeats`` reads, and the load average, since a busy machine slows it.

The figure in ``docs/ingest.md`` ("participants.tsv at scale") comes from::

    .venv/bin/python benchmarks/participants_tsv_scaling.py --rows 10000 100000

Not one of the ``bench_*.py`` scripts of ``run_all.py``: a standalone check.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from brainharmony.participants import read_participants


def write_table(path: Path, rows: int) -> Path:
    """A valid participants.tsv with ``rows`` distinct subjects."""
    lines = ["participant_id\tage\tsex\tsite"]
    lines += [f"sub-{i:07d}\t{20 + i % 60}.5\t{'FM'[i % 2]}\tsite{i % 7}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def time_read(path: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        table = read_participants(
            path, phenotypes={"age": "number", "sex": "category"}, site_column="site"
        ).table
        times.append(time.perf_counter() - start)
    assert not table.empty
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = write_table(Path(tmp) / f"participants_{rows}.tsv", rows)
            times = time_read(path, args.repeats)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(
                f"rows={rows} size={path.stat().st_size / 1e6:.1f} MB "
                f"best={min(times):.2f} s median={statistics.median(times):.2f} s "
                f"repeats={args.repeats} load1={load:.1f}"
            )


if __name__ == "__main__":
    main()
