"""``brainharmony scaling-stats``: per-ROI robust-scaling statistics over a training set.

The statistics are :mod:`brainharmony.timeseries.scaling`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainharmony.io import InputDataError, provenance
from brainharmony.series_files import read_usable_series
from brainharmony.timeseries.scaling import (
    MODES,
    RobustScalingStats,
    compute_robust_stats,
    save_stats,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony scaling-stats``."""
    parser.add_argument("--series", nargs="+", required=True, type=Path, help="ROI series files")
    parser.add_argument(
        "--subjects",
        nargs="+",
        default=None,
        help="subject of each series, same order (default: from 'sub-<label>' in the file name)",
    )
    parser.add_argument("--mode", choices=MODES, default="subject_means")
    parser.add_argument("--out", required=True, type=Path, help="statistics JSON")


def _subject_from_name(path: Path) -> str:
    for part in path.name.split("_"):
        if part.startswith("sub-"):
            return part[4:]
    raise InputDataError(path, "no 'sub-<label>' in the file name; pass --subjects")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony scaling-stats``."""

    paths = list(args.series)
    subjects = args.subjects or [_subject_from_name(p) for p in paths]
    if len(subjects) != len(paths):
        raise InputDataError(None, f"{len(subjects)} --subjects for {len(paths)} --series")
    loaded, excluded = read_usable_series(paths)  # censored rows: NaN
    if not loaded:
        raise InputDataError(None, f"every one of the {len(paths)} series was excluded by func")
    left_out = {e["path"] for e in excluded}
    subjects = [s for s, p in zip(subjects, paths, strict=True) if str(p) not in left_out]
    paths = [p for p in paths if str(p) not in left_out]
    names = loaded[0].roi_names
    for s in loaded[1:]:
        if s.roi_names is not None and names is not None and s.roi_names != names:
            raise InputDataError(s.path, "ROI names differ from the first series'")
    try:
        stats = compute_robust_stats(
            (s.data for s in loaded), subjects, roi_names=names, mode=args.mode
        )
    except ValueError as err:
        raise InputDataError(None, str(err)) from None
    stats = RobustScalingStats(
        stats.median,
        stats.iqr,
        stats.roi_names,
        stats.mode,
        stats.n_subjects,
        stats.n_series,
        stats.n_frames,
        provenance(
            step="scaling-stats",
            inputs=paths,
            parameters={"mode": args.mode, "excluded_series": excluded},
        ),
    )
    save_stats(args.out, stats)
    return 0
