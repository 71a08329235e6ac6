"""Reading and writing ROI time-series files (``.npy`` or ``.tsv``) with their sidecars.

Layout: ``(n_volumes, n_rois)``. A ``.tsv`` has one header row of ROI names and
one row per volume; a ``.npy`` holds the bare 2-D array (ROI names, if any, in
the sidecar's ``ROINames``). The JSON sidecar (``x.json`` next to ``x.npy``)
supplies ``RepetitionTime`` in seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.io import InputDataError, PathLike, sidecar_path, write_npy, write_tsv

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Series:
    """One ROI time series.

    Attributes
    ----------
    data : ndarray of shape (n_volumes, n_rois), float64
    roi_names : list of str or None
    tr : float or None
        ``RepetitionTime`` from the sidecar.
    sidecar : dict
    path : Path
    """

    data: np.ndarray
    roi_names: list[str] | None
    tr: float | None
    sidecar: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def excluded(self) -> str:
        """Why the func stage left this run out ("" when the series is usable).

        An excluded run (e.g. too few frames left after censoring) has a file with
        the header only and ``Excluded: true`` plus ``ExclusionReason`` in its sidecar.
        """
        if not self.sidecar.get("Excluded"):
            return ""
        return str(self.sidecar.get("ExclusionReason") or "excluded by the func stage")


def read_series(path: PathLike, *, require_finite: bool = True) -> Series:
    """Read a series file and its sidecar (if present).

    Raises
    ------
    InputDataError
        Missing file, unknown extension, not 2-D, non-numeric or non-finite values.
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "time-series file not found")
    side: dict[str, Any] = {}
    sc = sidecar_path(p)
    if sc.is_file():
        try:
            side = json.loads(sc.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputDataError(sc, f"not valid JSON: {err}") from None
    names: list[str] | None = None
    try:
        if p.suffix == ".npy":
            data = np.load(p, allow_pickle=False)
            raw = side.get("ROINames")
            names = [str(n) for n in raw] if isinstance(raw, list) else None
        elif p.suffix in (".tsv", ".csv") or p.name.endswith(".tsv.gz"):
            frame = pd.read_csv(p, sep="," if p.suffix == ".csv" else "\t", na_values=["n/a"])
            names = [str(c) for c in frame.columns]
            data = frame.to_numpy(dtype=np.float64)
        else:
            raise InputDataError(p, "unknown time-series format; use .npy or .tsv")
    except InputDataError:
        raise
    except (ValueError, OSError) as err:
        raise InputDataError(p, f"cannot read time series: {err}") from None
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise InputDataError(p, f"expected (n_volumes, n_rois); got shape {data.shape}")
    if names is not None and len(names) != data.shape[1]:
        raise InputDataError(p, f"{len(names)} ROI names for {data.shape[1]} columns")
    if require_finite and not np.isfinite(data).all():
        rows = np.flatnonzero(~np.isfinite(data).all(axis=1))
        raise InputDataError(
            p, f"{rows.size} volumes contain NaN or infinite values (first: {rows[:5].tolist()})"
        )
    tr = side.get("RepetitionTime")
    return Series(data, names, None if tr is None else float(tr), side, p)


def read_usable_series(paths: Sequence[PathLike]) -> tuple[list[Series], list[dict[str, str]]]:
    """Read series files, setting aside the runs the func stage excluded.

    Censored rows stay NaN (``require_finite=False``).

    Returns
    -------
    usable : list of Series
        In the order given.
    excluded : list of dict
        ``{"path": ..., "reason": ...}`` of each excluded run (each also logged).
    """
    usable: list[Series] = []
    excluded: list[dict[str, str]] = []
    for path in paths:
        series = read_series(path, require_finite=False)
        if not set_aside(series, path, excluded):
            usable.append(series)
    return usable, excluded


def set_aside(series: Series, path: PathLike, excluded: list[dict[str, str]]) -> bool:
    """If the func stage excluded ``series``, log it, append ``{"path", "reason"}`` to
    ``excluded`` and return True (the caller leaves it out); else return False."""
    if not series.excluded:
        return False
    logger.warning("%s: left out (excluded by func: %s)", path, series.excluded)
    excluded.append({"path": str(path), "reason": series.excluded})
    return True


def write_series(path: PathLike, data: np.ndarray, roi_names: Sequence[str] | None = None) -> Path:
    """Write a series atomically: ``.npy`` (array only) or ``.tsv`` (header of ROI names)."""
    p = Path(path)
    a = np.asarray(data)
    if a.ndim != 2:
        raise ValueError(f"data must be (n_volumes, n_rois); got {a.shape}")
    if p.suffix == ".npy":
        return write_npy(p, a)
    if p.suffix == ".tsv":
        cols = (
            list(roi_names)
            if roi_names is not None
            else [f"ROI_{i + 1}" for i in range(a.shape[1])]
        )
        if len(cols) != a.shape[1]:
            raise ValueError(f"{len(cols)} ROI names for {a.shape[1]} columns")
        return write_tsv(p, pd.DataFrame(a, columns=cols), float_format="%.8g")
    raise ValueError(f"unknown time-series format for {p}; use .npy or .tsv")
