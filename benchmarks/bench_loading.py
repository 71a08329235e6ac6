"""Loading throughput of the packed shards through a PyTorch DataLoader.

Builds synthetic shards the size of real ones (ROI series: ``--n-series`` x 490
frames x 400 ROIs float32, windows of ``--window`` frames with a random crop;
T1 volumes: ``--n-volumes`` x 160 x 192 x 160 float16), then iterates one
shuffled epoch per configuration and reports samples/s and MB/s. The shards
were just written, so this measures the page-cache (warm) case; a cold read is
bounded by the disk instead.

Usage::

    .venv/bin/python benchmarks/bench_loading.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


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


def main(argv: list[str] | None = None) -> int:
    from brainharmony.packing import PackedSeriesDataset, PackedVolumeDataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-series", type=int, default=512)
    parser.add_argument("--frames", type=int, default=490)
    parser.add_argument("--rois", type=int, default=400)
    parser.add_argument("--window", type=int, default=480)
    parser.add_argument("--n-volumes", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    rows = []
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
    result = {
        "series_shape": [args.n_series, args.frames, args.rois],
        "window": args.window,
        "volume_shape": [args.n_volumes, 160, 192, 160],
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "results": rows,
    }
    print("| data | workers | batch | samples/s | MB/s delivered |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['data']} | {r['workers']} | {r['batch']} | {r['samples_per_s']:.0f} | "
            f"{r['MB_per_s']:.0f} |"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
