"""``brainharmony resample``: resample one ROI series to another TR, with its sidecar.

The resampling is :mod:`brainharmony.timeseries.resample`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from brainharmony.io import InputDataError, provenance, sidecar_path, write_json
from brainharmony.series_files import read_series, write_series
from brainharmony.timeseries.resample import METHODS, censored_volumes, resample_to_tr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony resample``."""
    parser.add_argument("--input", required=True, type=Path, help="ROI series (.npy or .tsv)")
    parser.add_argument("--output", required=True, type=Path, help="resampled series (.npy/.tsv)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--tr-out", type=float, help="target TR in seconds")
    target.add_argument("--tr-out-ms", type=int, help="target TR in integer milliseconds")
    parser.add_argument(
        "--tr-in", type=float, default=None, help="source TR (default: sidecar RepetitionTime)"
    )
    parser.add_argument("--method", choices=METHODS, default="polyphase")
    parser.add_argument("--seed", type=int, default=None, help="decimate: random start offset")
    parser.add_argument("--passband", type=float, default=0.8)
    parser.add_argument("--attenuation-db", type=float, default=60.0)


_PROVENANCE_KEYS = ("Step", "Software", "Version", "GitSHA", "Python", "Inputs", "Parameters",
                    "ConfigDigest", "Created")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony resample``: one input series to one target TR, with sidecar."""

    series = read_series(args.input, require_finite=False)
    if series.excluded:
        raise InputDataError(args.input, f"the func stage excluded this run: {series.excluded}")
    tr_in = args.tr_in if args.tr_in is not None else series.tr
    if tr_in is None:
        raise InputDataError(args.input, "no RepetitionTime in the sidecar; pass --tr-in")
    tr_out = args.tr_out if args.tr_out is not None else args.tr_out_ms / 1000.0
    try:
        cens = censored_volumes(series.data, series.sidecar)
        out = resample_to_tr(
            series.data,
            tr_in,
            tr_out,
            args.method,
            rng=args.seed,
            censored=cens,
            passband=args.passband,
            attenuation_db=args.attenuation_db,
        )
    except ValueError as err:
        raise InputDataError(args.input, str(err)) from None
    source = dict(series.sidecar)
    source_prov = {k: source.pop(k) for k in _PROVENANCE_KEYS if k in source}
    out_cens = out.censored if out.censored is not None else np.zeros(len(out.times), bool)
    sidecar = {
        **source,
        "RepetitionTime": out.tr,
        "SourceRepetitionTime": float(tr_in),
        "ResamplingMethod": out.method,
        "ResamplingDetails": out.details,
        "StartTime": float(source.get("StartTime", 0.0)) + float(out.times[0]),
        "NumberOfVolumes": int(out.data.shape[0]),
        "KeptVolumes": int((~out_cens).sum()),
        "CensoredVolumes": np.flatnonzero(out_cens).tolist(),
        "CensoredVolumesNote": "0-based row indices; those rows are n/a. An output frame is "
        "censored when a censored input volume lies within half an output TR of it.",
        "SourceProvenance": source_prov,
        **provenance(
            step="resample",
            inputs=[args.input],
            parameters={"tr_out": out.tr, "method": args.method, "seed": args.seed},
        ),
    }
    write_series(args.output, out.data.astype(np.float32), series.roi_names)
    write_json(sidecar_path(args.output), sidecar)
    return 0
