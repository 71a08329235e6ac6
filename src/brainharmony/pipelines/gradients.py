"""``brainharmony gradients``: diffusion-map gradients of a group FC.

The gradients are :mod:`brainharmony.geometry.gradients`; this command reads the series
or the FC matrix and writes the table and its sidecar.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from brainharmony.geometry.gradients import compute_gradients, mean_connectivity, procrustes
from brainharmony.io import (
    InputDataError,
    provenance,
    sidecar_path,
    write_json,
    write_npy,
    write_tsv,
)
from brainharmony.series_files import read_usable_series


def _read_matrix(path: Path) -> tuple[np.ndarray, list[str] | None]:
    if not path.is_file():
        raise InputDataError(path, "file not found")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index_col=0)
    return frame.to_numpy(dtype=np.float64), [str(c) for c in frame.index]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony gradients``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--series", nargs="+", type=Path, help="ROI time series (.npy/.tsv)")
    src.add_argument("--fc", type=Path, help="group FC matrix (.npy, or .tsv/.csv with index)")
    parser.add_argument("--out", required=True, type=Path, help="ROI x G table (.tsv)")
    parser.add_argument("--n-components", type=int, default=30)
    parser.add_argument(
        "--kernel", choices=("normalized_angle", "cosine"), default="normalized_angle"
    )
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction zeroed per row")
    parser.add_argument("--n-keep", type=int, default=None, help="entries kept per row")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--diffusion-time", type=float, default=0.0)
    parser.add_argument("--reference", type=Path, help="ROI x G table to Procrustes-align to")
    parser.add_argument("--out-fc", type=Path, help="also write the group FC (.npy)")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony gradients``."""

    names: list[str] | None = None
    excluded: list[dict[str, str]] = []
    if args.series:
        loaded, excluded = read_usable_series(args.series)
        if not loaded:
            raise InputDataError(None, "every --series file was excluded by func")
        names = loaded[0].roi_names
        fc = mean_connectivity(s.data for s in loaded)
        left_out = {e["path"] for e in excluded}
        inputs = [p for p in args.series if str(p) not in left_out]
        n_series: int | None = len(loaded)
    else:
        fc, names = _read_matrix(args.fc)
        inputs = [args.fc]
        n_series = None
    result = compute_gradients(
        fc,
        args.n_components,
        kernel=args.kernel,
        sparsity=args.sparsity,
        n_keep=args.n_keep,
        alpha=args.alpha,
        diffusion_time=args.diffusion_time,
    )
    grads = result.gradients
    rotation = None
    if args.reference is not None:
        ref, _ = _read_matrix(args.reference)
        if ref.shape != grads.shape:
            raise InputDataError(args.reference, f"shape {ref.shape}; gradients are {grads.shape}")
        grads, rotation = procrustes(grads, ref)
        inputs = [*inputs, args.reference]
    names = names or [f"ROI_{i}" for i in range(1, grads.shape[0] + 1)]
    cols = [f"gradient_{i}" for i in range(1, grads.shape[1] + 1)]
    table = pd.DataFrame(grads, columns=cols)
    table.insert(0, "roi", names)
    write_tsv(args.out, table, float_format="%.12g")
    if args.out_fc is not None:
        write_npy(args.out_fc, fc)
    params = {
        k: getattr(args, k)
        for k in ("n_components", "kernel", "sparsity", "n_keep", "alpha", "diffusion_time")
    }
    write_json(
        sidecar_path(args.out),
        {
            "Description": "Diffusion-map gradients of the group FC (BrainSpace recipe)",
            "Lambdas": result.lambdas.tolist(),
            "Eigenvalues": result.eigenvalues.tolist(),
            "NSeries": n_series,
            "ExcludedSeries": excluded,
            "ProcrustesRotation": None if rotation is None else rotation.tolist(),
            **provenance(step="gradients", inputs=inputs, parameters=params),
        },
    )
    return 0
