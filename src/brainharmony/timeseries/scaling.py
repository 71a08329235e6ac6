"""Robust-scaling statistics (per-ROI median and IQR) and their application.

BrainHarmonix pretrains on ``(x - median) / iqr`` per ROI ("all_robust_scaling"),
with statistics over the pretraining set that the official release does not ship
(its users' top complaint). Here they are an artifact of their own, written once
from the pretraining set and read by training *and* evaluation, so both apply the
identical transform (:func:`apply_robust_scaling`).

Which statistic
---------------
``mode="subject_means"`` (default, the official definition)
    For each subject, the temporal mean of each ROI (averaged over the
    subject's runs, each run's mean first, so a subject with more runs does not
    weigh more); then, per ROI, the median and the interquartile range *across
    subjects* of those means. It therefore removes each ROI's population offset
    and divides by the spread of offsets between subjects, not by the size of
    the within-scan fluctuations.
``mode="all_frames"``
    Per ROI, the median and IQR over every frame of every series pooled (each
    frame counts once, so longer scans weigh more). Scales the fluctuations
    themselves.

Quantiles are numpy's default (linear interpolation, "type 7"); IQR = q75 - q25.
A zero IQR is an error that names the ROI (dividing by it is undefined).

Missing values: censored volumes (NaN rows, as the functional stage writes them)
are left out of the means and quantiles, and so is a ROI that has no data in a
run (an all-NaN column: a parcel the run's coverage missed); a ROI with no data
anywhere is an error naming it.

The artifact is one JSON file: ROI names, median, iqr, mode, counts and
provenance (floats written with full round-trip precision).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainharmony.io import InputDataError, PathLike, write_json

logger = logging.getLogger(__name__)

Mode = Literal["subject_means", "all_frames"]
MODES: tuple[str, ...] = ("subject_means", "all_frames")
FORMAT = "brainharmony-robust-scaling/1"


@dataclass(frozen=True)
class RobustScalingStats:
    """Per-ROI robust-scaling statistics.

    Attributes
    ----------
    median : ndarray of shape (n_rois,)
    iqr : ndarray of shape (n_rois,)
        Strictly positive.
    roi_names : list of str
    mode : str
    n_subjects : int
    n_series : int
    n_frames : int
    provenance : dict
    """

    median: np.ndarray
    iqr: np.ndarray
    roi_names: list[str]
    mode: str
    n_subjects: int
    n_series: int
    n_frames: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document written by :func:`save_stats`."""
        return {
            "Format": FORMAT,
            "Mode": self.mode,
            "ROINames": list(self.roi_names),
            "Median": [float(v) for v in self.median],
            "IQR": [float(v) for v in self.iqr],
            "NSubjects": self.n_subjects,
            "NSeries": self.n_series,
            "NFrames": self.n_frames,
            "Quantiles": "numpy linear interpolation; IQR = q75 - q25",
            "Provenance": self.provenance,
        }


def _check_iqr(iqr: np.ndarray, names: Sequence[str]) -> None:
    bad = np.flatnonzero(~(iqr > 0))
    if bad.size:
        listed = ", ".join(f"{names[i]} (column {i})" for i in bad[:10])
        raise ValueError(f"zero IQR for {bad.size} ROI(s): {listed}; cannot scale by it")


def compute_robust_stats(
    series: Iterable[np.ndarray],
    subjects: Sequence[str] | None = None,
    *,
    roi_names: Sequence[str] | None = None,
    mode: Mode = "subject_means",
) -> RobustScalingStats:
    """Per-ROI median and IQR over a set of series.

    Parameters
    ----------
    series : iterable of ndarray of shape (n_volumes, n_rois)
        All runs of the pretraining set (finite values).
    subjects : sequence of str, optional
        Subject of each series (same order). Default: each series is its own subject.
    roi_names : sequence of str, optional
        Default ``ROI_1`` ...
    mode : {"subject_means", "all_frames"}
        See the module notes.

    Returns
    -------
    RobustScalingStats

    Raises
    ------
    ValueError
        No series, inconsistent ROI counts, non-finite values, a zero IQR (naming the ROI).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    run_means: list[np.ndarray] = []
    frames: list[np.ndarray] = []
    n_rois: int | None = None
    n_frames = 0
    for i, x in enumerate(series):
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1:
            raise ValueError(f"series {i} must be (n_volumes, n_rois); got shape {a.shape}")
        if n_rois is None:
            n_rois = a.shape[1]
        elif a.shape[1] != n_rois:
            raise ValueError(f"series {i} has {a.shape[1]} ROIs; the first had {n_rois}")
        if np.isinf(a).any():
            raise ValueError(f"series {i} contains infinite values")
        n_frames += a.shape[0]
        if mode == "subject_means":
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN ROI of a run
                run_means.append(np.nanmean(a, axis=0))
        else:
            frames.append(a)
    n_series = len(run_means) if mode == "subject_means" else len(frames)
    if n_series == 0 or n_rois is None:
        raise ValueError("no series given")
    if subjects is None:
        subjects = [str(i) for i in range(n_series)]
    if len(subjects) != n_series:
        raise ValueError(f"{len(subjects)} subject labels for {n_series} series")
    names = list(roi_names) if roi_names is not None else [f"ROI_{i + 1}" for i in range(n_rois)]
    if len(names) != n_rois:
        raise ValueError(f"{len(names)} ROI names for {n_rois} ROIs")
    n_subjects = len(set(subjects))
    if mode == "subject_means":
        order = sorted(set(subjects))
        pos = {s: k for k, s in enumerate(order)}
        sums = np.zeros((len(order), n_rois))
        counts = np.zeros((len(order), n_rois))
        for s, m in zip(subjects, run_means, strict=True):
            ok = np.isfinite(m)
            sums[pos[s], ok] += m[ok]
            counts[pos[s], ok] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            sample = sums / counts  # NaN where a subject has no data for a ROI
    else:
        sample = np.concatenate(frames, axis=0)
    empty = ~np.isfinite(sample).any(axis=0)
    if empty.any():
        listed = ", ".join(f"{names[i]} (column {i})" for i in np.flatnonzero(empty)[:10])
        raise ValueError(f"no data for {int(empty.sum())} ROI(s): {listed}")
    q25, med, q75 = np.nanpercentile(sample, [25.0, 50.0, 75.0], axis=0)
    iqr = q75 - q25
    _check_iqr(iqr, names)
    logger.info("robust stats (%s) over %d subjects, %d series", mode, n_subjects, n_series)
    return RobustScalingStats(med, iqr, names, mode, n_subjects, n_series, n_frames)


def apply_robust_scaling(
    x: np.ndarray, stats: RobustScalingStats, roi_names: Sequence[str] | None = None
) -> np.ndarray:
    """``(x - median) / iqr`` per ROI.

    Parameters
    ----------
    x : ndarray of shape (..., n_rois)
        Any leading shape (volumes, or batch and volumes).
    stats : RobustScalingStats
    roi_names : sequence of str, optional
        When given, must equal ``stats.roi_names`` (guards against a re-ordered atlas).

    Returns
    -------
    ndarray of the same shape, float32 if ``x`` is float32 else float64.
    """
    a = np.asarray(x)
    if a.shape[-1] != stats.median.shape[0]:
        raise ValueError(
            f"x has {a.shape[-1]} ROIs; the scaling statistics have {stats.median.shape[0]}"
        )
    if roi_names is not None and list(roi_names) != list(stats.roi_names):
        diff = next(
            (i for i, (p, q) in enumerate(zip(roi_names, stats.roi_names, strict=False)) if p != q),
            min(len(roi_names), len(stats.roi_names)),
        )
        raise ValueError(f"ROI names differ from the scaling statistics' at column {diff}")
    dtype = np.float32 if a.dtype == np.float32 else np.float64
    return ((a - stats.median.astype(dtype)) / stats.iqr.astype(dtype)).astype(dtype, copy=False)


def save_stats(path: PathLike, stats: RobustScalingStats) -> Path:
    """Write the statistics as JSON (atomically)."""
    return write_json(path, stats.to_json_dict())


def load_stats(path: PathLike) -> RobustScalingStats:
    """Read statistics written by :func:`save_stats`.

    Raises
    ------
    InputDataError
        Missing file, wrong format, inconsistent lengths, non-positive IQR.
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "robust-scaling statistics not found")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputDataError(p, f"not valid JSON: {err}") from None
    if doc.get("Format") != FORMAT:
        raise InputDataError(p, f"not a robust-scaling file (Format {doc.get('Format')!r})")
    med = np.asarray(doc["Median"], dtype=np.float64)
    iqr = np.asarray(doc["IQR"], dtype=np.float64)
    names = [str(n) for n in doc["ROINames"]]
    if not (med.shape == iqr.shape == (len(names),)):
        raise InputDataError(p, "Median, IQR and ROINames differ in length")
    try:
        _check_iqr(iqr, names)
    except ValueError as err:
        raise InputDataError(p, str(err)) from None
    return RobustScalingStats(
        med,
        iqr,
        names,
        str(doc["Mode"]),
        int(doc["NSubjects"]),
        int(doc["NSeries"]),
        int(doc["NFrames"]),
        dict(doc.get("Provenance", {})),
    )
