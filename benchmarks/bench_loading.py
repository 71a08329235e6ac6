"""Loading throughput of the packed shards through a PyTorch DataLoader.

Builds synthetic shards the size of real ones (ROI series: ``--n-series`` x 490
frames x 400 ROIs float32, windows of ``--window`` frames with a random crop;
T1 volumes: ``--n-volumes`` x 160 x 192 x 160 float16), then iterates one
shuffled epoch per configuration and reports samples/s and MB/s. The shards
were just written, so this measures the page-cache (warm) case; a cold read is
bounded by the disk instead.

Side by side (same process, same shuffled order and batch size, interleaved
epochs): the datasets through ``DataLoader(num_workers=0)`` against the floor of
reading the same samples straight from the memory map with numpy (one copy and
dtype conversion per sample, stacked into a batch; no masks, no collation).

Usage::

    .venv/bin/python benchmarks/bench_loading.py --json out.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from benchlib import (
    comparison,
    environment,
    fact,
    markdown_table,
    package_version,
    pin_threads,
    result_document,
    write_result,
)


def _series_shard(root: Path, n: int, frames: int, rois: int) -> tuple[Path, Path]:
    shard, index = root / "series.npy", root / "series.tsv"
    rng = np.random.default_rng(0)
    data = np.lib.format.open_memmap(shard, mode="w+", dtype=np.float32, shape=(n * frames, rois))
    for i in range(n):
        data[i * frames : (i + 1) * frames] = rng.standard_normal((frames, rois), np.float32)
    data.flush()
    del data
    pd.DataFrame(
        {
            "subject": [f"{i:05d}" for i in range(n)],
            "session": "n/a",
            "run": "1",
            "tr": 0.735,
            "frames": frames,
            "offset": np.arange(n) * frames,
            "age": rng.uniform(40, 80, n),
        }
    ).to_csv(index, sep="\t", index=False)
    return shard, index


def _volume_shard(root: Path, n: int, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    shard, index = root / "t1.npy", root / "t1.tsv"
    rng = np.random.default_rng(1)
    data = np.lib.format.open_memmap(shard, mode="w+", dtype=np.float16, shape=(n, *shape))
    for i in range(n):
        data[i] = rng.standard_normal(shape, np.float32).astype(np.float16)
    data.flush()
    del data
    pd.DataFrame(
        {"subject": [f"{i:05d}" for i in range(n)], "session": "1", "offset": np.arange(n)}
    ).to_csv(index, sep="\t", index=False)
    return shard, index


def _epoch(dataset, batch_size: int, workers: int) -> tuple[float, int, int]:
    import torch

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
    n = 0
    nbytes = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch["x"].shape[0]
        nbytes += batch["x"].numel() * batch["x"].element_size()
    return time.perf_counter() - t0, n, nbytes


def _raw_epoch(
    shard: Path, starts: np.ndarray, length: int, batch_size: int, dtype: type
) -> tuple[float, int, int]:
    """One epoch of plain numpy reads: ``shard[start : start + length]`` as ``dtype``."""
    data = np.load(shard, mmap_mode="r")
    order = np.random.default_rng(0).permutation(starts.size)
    n = nbytes = 0
    t0 = time.perf_counter()
    for b in range(0, order.size, batch_size):
        batch = np.stack(
            [
                np.asarray(data[s : s + length], dtype=dtype)
                for s in starts[order[b : b + batch_size]]
            ]
        )
        n += batch.shape[0]
        nbytes += batch.nbytes
    return time.perf_counter() - t0, n, nbytes


def _interleaved(
    ours: Callable[[], tuple[float, int, int]],
    raw: Callable[[], tuple[float, int, int]],
    repeats: int,
) -> dict[str, Any]:
    """Median epoch times of ours and of the raw read, alternating (after one warm-up each;
    the order swaps every round)."""
    ours()
    raw()
    t_ours, t_raw = [], []
    for r in range(repeats):
        if r % 2:
            t_raw.append(raw()[0])
            t_ours.append(ours()[0])
        else:
            t_ours.append(ours()[0])
            t_raw.append(raw()[0])
    return {"ours_s": statistics.median(t_ours), "raw_s": statistics.median(t_raw)}


def comparisons(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each dataset through the DataLoader vs the raw numpy read (see :mod:`benchlib`)."""
    numpy_v = package_version("numpy")
    s = result["series_shape"]
    v = result["volume_shape"]
    sizes = {
        "series": f"{s[0]} series x {s[1]} x {s[2]} float32, windows of {result['window']}",
        "t1": f"{v[0]} volumes {v[1]}x{v[2]}x{v[3]} float16 -> float32",
        "t1 float16": f"{v[0]} volumes {v[1]}x{v[2]}x{v[3]} float16, as stored",
    }
    out = []
    for name, row in result["vs_raw"].items():
        out.append(
            comparison(
                key=f"loading_{name.replace(' ', '_')}",
                what=f"one shuffled epoch of {name} samples (batch {row['batch']}, "
                "0 workers) vs reading them with numpy",
                ours_label=f"brainharmony.packing {row['dataset']} via "
                "torch.utils.data.DataLoader(num_workers=0)",
                ours_value=row["ours_s"],
                unit="s",
                peer_label="numpy memmap slice -> array copy per sample, np.stack per batch",
                peer_package="numpy",
                peer_version=numpy_v,
                peer_value=row["raw_s"],
                size=sizes[name],
                repeats=result["repeats"],
                warmup=1,
                threads=f"{result['torch_threads']} (both: torch and the BLAS / OpenMP pools "
                "pinned; one process)",
            )
        )
    return out


NOTES = [
    "Warm page cache: the shards were just written. The raw numpy read is a floor, not a "
    "competing loader: a ratio below 1 is the dataset and DataLoader overhead (masks, "
    "NaN handling, collation).",
    "The facts list every configuration once (one timed epoch after a warm-up epoch).",
]


def main(argv: list[str] | None = None) -> int:
    from brainharmony.packing import PackedSeriesDataset, PackedVolumeDataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-series", type=int, default=512)
    parser.add_argument("--frames", type=int, default=490)
    parser.add_argument("--rois", type=int, default=400)
    parser.add_argument("--window", type=int, default=480)
    parser.add_argument("--n-volumes", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="epochs in the side by side")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of the main process; 0: default"
    )
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        pin_threads(args.threads)  # torch and the BLAS / OpenMP pools alike
    torch_threads = torch.get_num_threads()
    env = environment(torch_threads=torch_threads)
    rows = []
    vs_raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        root = Path(tmp)
        s_shard, s_index = _series_shard(root, args.n_series, args.frames, args.rois)
        v_shard, v_index = _volume_shard(root, args.n_volumes, (160, 192, 160))
        series = PackedSeriesDataset(s_shard, s_index, window=args.window, targets=["age"])
        volumes = PackedVolumeDataset(v_shard, v_index)
        volumes16 = PackedVolumeDataset(v_shard, v_index, as_stored=True)
        configs = (("series", series, 32), ("t1", volumes, 4), ("t1 float16", volumes16, 4))
        for name, ds, batch in configs:
            for workers in args.workers:
                _epoch(ds, batch, workers)  # warm-up (page cache, worker start)
                secs, n, nbytes = _epoch(ds, batch, workers)
                rows.append(
                    {
                        "data": name,
                        "workers": workers,
                        "batch": batch,
                        "samples": n,
                        "seconds": secs,
                        "samples_per_s": n / secs,
                        "MB_per_s": nbytes / secs / 1e6,
                    }
                )
        # Side by side: DataLoader with 0 workers vs the raw read of the same samples.
        # Series windows start at the series' offset plus a random crop; for the raw read
        # the crops are drawn once (the cost does not depend on where a window starts).
        s_index_df = pd.read_csv(s_index, sep="\t")
        crop = np.random.default_rng(2).integers(0, args.frames - args.window + 1, args.n_series)
        s_starts = s_index_df["offset"].to_numpy() + crop
        v_starts = np.arange(args.n_volumes)
        raw_cases = (
            ("series", series, 32, s_shard, s_starts, args.window, np.float32),
            ("t1", volumes, 4, v_shard, v_starts, 1, np.float32),
            ("t1 float16", volumes16, 4, v_shard, v_starts, 1, np.float16),
        )
        for name, ds, batch, shard, starts, length, dtype in raw_cases:
            times = _interleaved(
                lambda ds=ds, batch=batch: _epoch(ds, batch, 0),
                lambda shard=shard, starts=starts, length=length, batch=batch, dtype=dtype: (
                    _raw_epoch(shard, starts, length, batch, dtype)
                ),
                args.repeats,
            )
            vs_raw[name] = {"dataset": type(ds).__name__, "batch": batch, **times}
    result = {
        "series_shape": [args.n_series, args.frames, args.rois],
        "window": args.window,
        "volume_shape": [args.n_volumes, 160, 192, 160],
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "results": rows,
        "repeats": args.repeats,
        "vs_raw": vs_raw,
        "torch_threads": torch_threads,
    }
    print("| data | workers | batch | samples/s | MB/s delivered |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['data']} | {r['workers']} | {r['batch']} | {r['samples_per_s']:.0f} | "
            f"{r['MB_per_s']:.0f} |"
        )
    records = comparisons(result)
    print()
    print(markdown_table(records))
    facts = []
    for r in rows:
        what = f"{r['data']}, batch {r['batch']}, {r['workers']} workers"
        facts.append(fact(what, r["samples_per_s"], "samples/s"))
        facts.append(fact(f"{what}, delivered", r["MB_per_s"], "MB/s"))
    write_result(
        args.json,
        result_document(
            benchmark="loading",
            title="Packed training data: loading throughput",
            comparisons=records,
            env=env,
            facts=facts,
            notes=NOTES,
            details=result,
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
