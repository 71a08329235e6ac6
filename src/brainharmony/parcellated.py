"""Ingestion of released parcel series (dataset kind ``parcellated``).

Some archives release ROI time series instead of (or beside) images, e.g. UK Biobank's
Schaefer-400 tables. Such a dataset is described by a **run table** (TSV, or CSV by its
``.csv`` suffix): one row per run with the columns

``subject``
    Subject label, letters and digits (a ``sub-`` prefix is removed).
``session`` (optional)
    Session label, letters and digits; ``n/a`` or empty when the dataset has none.
``run``
    Run index (non-negative integer) or ``n/a``.
``path``
    The run's series file; a relative path is relative to the run table's folder and
    may not leave it (``..``); absolute paths are taken as given.
``tr``
    Repetition time in seconds.
``site`` (optional, or the column named by ``site_column``)
    Acquisition site; default the dataset name.

and one column per phenotype of the dataset's ``phenotypes`` block (typed as in
``participants.tsv``: a number that is not one becomes n/a with a warning; values of
one subject must agree across its rows).

Series files (:func:`read_parcel_file`): ``.npy`` (a 2-D float array) or delimited text
(``.tsv``/``.txt`` tab-separated, ``.csv`` comma-separated), with or without one header
row of ROI names (present when its first line is not all numbers, as in nilearn's and
XCP-D's ``*_timeseries.tsv``). The layout is ``(n_volumes, n_rois)``; a file without a
header whose *rows* number ``n_rois`` and whose columns do not is taken as
``(n_rois, n_volumes)`` and transposed (recorded in the sidecar).

Every row is checked (:func:`ingest_parcellated`): labels, TR within ``tr_range``, the
file (a regular file within the size cap: no pipe, device or folder), numeric and
finite values, ``n_rois`` ROIs, at least ``min_volumes`` frames. A bad row is left out
with its reason in ``excluded.tsv``, like the BIDS ingest's exclusions; only a
malformed run table stops the dataset. The usable rows go to ``scans.tsv`` with the
same columns as the BIDS ingest's (``bold`` is the series file, ``t1w`` is ``n/a``),
and :func:`convert_series` writes each run in the func stage's series format (TSV of
``ROI_<i>`` columns, JSON sidecar with ``RepetitionTime``), which the multi-TR,
geometry, embedding and evaluation steps read unchanged.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.bids_names import label_problem, natural_key, safe_text, show
from brainharmony.bids_tree import MAX_TABLE_BYTES, NA, Exclusion
from brainharmony.ingest import (
    IngestResult,
    NoUsableScansError,
    _check_parameters,
    _excluded_frame,
    _normalise_subjects,
    _scans_frame,
)
from brainharmony.io import (
    InputDataError,
    PathLike,
    ReadRefused,
    provenance,
    read_capped,
    special_kind,
    write_json,
)
from brainharmony.nifti_checks import check_tr_range, tr_range_problem
from brainharmony.participants import MISSING_VALUES, PhenotypeKind
from brainharmony.scan_pairing import CheckSettings
from brainharmony.series_files import write_series

logger = logging.getLogger(__name__)

#: Columns every run table must have (``session`` and ``site`` are optional).
REQUIRED_COLUMNS: tuple[str, ...] = ("subject", "run", "path", "tr")
#: The parcel count of the workflow's atlas (Schaefer-400); a dataset claiming another
#: is refused.
N_ROIS = 400
#: Largest series file read (bytes).
MAX_SERIES_BYTES = 1024**3
#: Suffixes of the series files read.
SERIES_SUFFIXES: tuple[str, ...] = (".npy", ".tsv", ".csv", ".txt")


@dataclass(frozen=True)
class ParcelSeries:
    """One released series file, read and checked.

    Attributes
    ----------
    data : ndarray of shape (n_volumes, n_rois), float64
    roi_names : list of str or None
        From the file's header, when it has one.
    transposed : bool
        The file held ``(n_rois, n_volumes)``.
    """

    data: np.ndarray
    roi_names: list[str] | None
    transposed: bool


def read_parcel_file(path: PathLike, n_rois: int = N_ROIS) -> ParcelSeries:
    """Read one released series file (module docstring for the formats).

    Raises
    ------
    InputDataError
        Naming the file: not a regular file, over :data:`MAX_SERIES_BYTES`, unknown
        suffix, unreadable, not 2-D, not numbers, NaN or infinite values, or no axis of
        ``n_rois``.
    """
    p = Path(path)
    try:
        kind = special_kind(os.stat(p).st_mode)
    except FileNotFoundError:
        raise InputDataError(p, "series file not found") from None
    except OSError as err:
        raise InputDataError(p, f"cannot read: {err.strerror or err}") from None
    if kind is not None:
        raise InputDataError(p, f"is {kind}, not a series file")
    suffix = p.suffix.lower()
    if suffix not in SERIES_SUFFIXES:
        raise InputDataError(p, f"unknown series format {show(p.suffix)}; use {SERIES_SUFFIXES}")
    try:
        raw = read_capped(p, MAX_SERIES_BYTES)
    except ReadRefused as err:
        raise InputDataError(p, err.reason) from None
    except OSError as err:
        raise InputDataError(p, f"cannot read: {err.strerror or err}") from None
    names: list[str] | None = None
    if suffix == ".npy":
        try:
            data = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputDataError(p, f"not a readable .npy array: {err}") from None
        if not isinstance(data, np.ndarray) or data.dtype.kind not in "iuf":
            raise InputDataError(p, f"holds {getattr(data, 'dtype', type(data))}, not numbers")
    else:
        data, names = _parse_text(p, raw, "," if suffix == ".csv" else "\t")
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.size == 0:
        raise InputDataError(p, f"expected a 2-D (n_volumes, n_rois) array; got shape {data.shape}")
    transposed = False
    if data.shape[1] != n_rois:
        if names is None and data.shape[0] == n_rois:
            data, transposed = data.T, True
        else:
            raise InputDataError(
                p,
                f"{data.shape[1]} columns x {data.shape[0]} rows; expected {n_rois} ROIs "
                f"(Schaefer-{n_rois}) along one axis",
            )
    bad = ~np.isfinite(data)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        cols = np.flatnonzero(bad.any(axis=0))
        raise InputDataError(
            p,
            f"{int(bad.sum())} NaN or infinite values in {rows.size} volumes and "
            f"{cols.size} ROIs (first ROI columns: {(cols[:5] + 1).tolist()})",
        )
    return ParcelSeries(np.ascontiguousarray(data), names, transposed)


def _parse_text(p: Path, raw: bytes, sep: str) -> tuple[np.ndarray, list[str] | None]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputDataError(p, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputDataError(p, "is empty")
    first = [cell.strip() for cell in lines[0].split(sep)]
    header = not all(_is_number(cell) for cell in first)
    kind = "comma" if sep == "," else "tab"
    read = {"sep": sep, "header": 0 if header else None, "skip_blank_lines": True}
    try:  # fast path: every cell a number or missing
        frame = pd.read_csv(
            io.StringIO(text), na_values=list(MISSING_VALUES), keep_default_na=False, **read
        )
    except (ValueError, pd.errors.ParserError) as err:
        raise InputDataError(p, f"not a {kind}-separated table: {err}") from None
    if all(dtype.kind in "iuf" for dtype in frame.dtypes):
        values = frame.to_numpy(dtype=np.float64)
    else:  # find the first cell that is not a number (spelled nan/inf pass, then fail later)
        cells = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, **read)
        cells = cells.apply(lambda col: col.str.strip())
        missing = cells.isin(list(MISSING_VALUES))
        numbers = cells.apply(lambda col: pd.to_numeric(col, errors="coerce")).astype(np.float64)
        spelled = cells.apply(lambda col: col.str.lower().isin(["nan", "inf", "-inf", "+inf"]))
        bad = numbers.isna() & ~missing & ~spelled
        if bad.to_numpy().any():
            i, j = (int(k[0]) for k in np.nonzero(bad.to_numpy()))
            raise InputDataError(
                p, f"line {i + 1 + header}, column {j + 1}: {show(cells.iat[i, j])} is not a number"
            )
        values = numbers.to_numpy()
    names = [str(c) for c in frame.columns] if header else None
    return values, names


def _is_number(cell: str) -> bool:
    if "_" in cell:
        return False
    try:
        float(cell)
    except ValueError:
        return cell.lower() in ("nan", "inf", "-inf")
    return True


def read_run_table(path: PathLike) -> pd.DataFrame:
    """Read a run table as strings (cells stripped; ``line``: its line number).

    Raises
    ------
    InputDataError
        Naming the table: unreadable, empty, repeated or missing required columns.
    """
    p = Path(path)
    try:
        raw = read_capped(p, MAX_TABLE_BYTES)
    except ReadRefused as err:
        raise InputDataError(p, err.reason) from None
    except OSError as err:
        raise InputDataError(p, f"cannot read the run table: {err.strerror or err}") from None
    sep = "," if p.suffix.lower() == ".csv" else "\t"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputDataError(p, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputDataError(p, f"is empty; expected a header with {', '.join(REQUIRED_COLUMNS)}")
    header = [name.strip() for name in lines[0].split(sep)]
    if len(set(header)) != len(header):
        raise InputDataError(p, "repeated column names in the header")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        kind = "comma" if sep == "," else "tab"
        raise InputDataError(
            p,
            f"the run table has no column {', '.join(map(show, missing))} "
            f"(columns: {', '.join(header)}; {kind}-separated by its suffix)",
        )
    rows, numbers = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split(sep)
        if len(cells) != len(header):
            raise InputDataError(
                p, f"line {number} has {len(cells)} fields but the header has {len(header)}"
            )
        rows.append([cell.strip() for cell in cells])
        numbers.append(number)
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    frame["line"] = numbers
    return frame


def resolve_series_path(text: str, table_dir: Path) -> tuple[Path | None, str | None]:
    """The series file a run table names, or ``(None, reason)``.

    A relative path is taken from the table's folder and may not leave it (``..``
    past the folder); an absolute path is taken as given. Empty paths and NUL
    characters are refused.
    """
    if text in MISSING_VALUES:
        return None, "no series path"
    if "\0" in text:
        return None, f"series path {show(text)} holds a NUL character"
    given = Path(text)
    if given.is_absolute():
        return Path(os.path.normpath(given)), None
    joined = Path(os.path.normpath(table_dir / given))
    if os.path.commonpath([joined, table_dir]) != str(table_dir):
        return None, (
            f"series path {show(text)} leaves the run table's folder; give an absolute path "
            "to read a file elsewhere"
        )
    return joined, None


def ingest_parcellated(
    run_table: PathLike,
    dataset: str,
    *,
    task: str = CheckSettings.task,
    min_volumes: int = CheckSettings.min_volumes,
    tr_range: tuple[float, float] = CheckSettings.tr_range,
    phenotypes: Mapping[str, PhenotypeKind] | None = None,
    site_column: str | None = None,
    n_rois: int = N_ROIS,
    exclude_subjects: Iterable[str] = (),
    participant_label: Iterable[str] | None = None,
) -> IngestResult:
    """Index a run table of released parcel series into ``scans.tsv`` rows.

    Parameters
    ----------
    run_table : path-like
        The run table (module docstring).
    dataset : str
    task : str
        Task label of the series file names the workflow writes.
    min_volumes : int
        Runs with fewer frames are excluded.
    tr_range : (float, float)
        Plausible repetition times in seconds; a run outside is excluded.
    phenotypes : mapping of str to {"number", "category"}, optional
        Run-table columns to carry and their types; default
        :data:`brainharmony.ingest.DEFAULT_PHENOTYPES`.
    site_column : str, optional
        Run-table column holding the site (default ``site`` when the table has one,
        else the dataset name).
    n_rois : int
        The ROI count the series must have; only the workflow's atlas (400) is allowed.
    exclude_subjects, participant_label
        As in :func:`brainharmony.ingest.ingest_dataset`.

    Returns
    -------
    IngestResult
        ``bids_dir`` is the run table's folder.

    Raises
    ------
    ValueError
        An invalid parameter, or ``n_rois`` other than :data:`N_ROIS`.
    InputDataError
        A malformed run table (named).
    NoUsableScansError
        No usable row; ``err.result`` holds the exclusions.
    """
    kinds = _check_parameters(dataset, task, min_volumes, 0.01, "warn", phenotypes, site_column)
    tr_range = check_tr_range(tr_range)
    if n_rois != N_ROIS:
        raise ValueError(
            f"dataset {dataset!r}: the series have {n_rois} parcels, but the workflow's atlas "
            f"is Schaefer-{N_ROIS} (its models, harmonics and gradients are per parcel); "
            f"only {N_ROIS}-parcel Schaefer series can join it"
        )
    skip = _normalise_subjects(exclude_subjects, "exclude_subjects")
    keep = (
        _normalise_subjects(participant_label, "participant_label") if participant_label else None
    )
    table_path = Path(os.path.abspath(os.fspath(run_table)))
    table = read_run_table(table_path)
    table_dir = table_path.parent
    site_name = site_column or ("site" if "site" in table.columns else None)
    if site_column is not None and site_column not in table.columns:
        raise InputDataError(table_path, f"site_column {show(site_column)} is not a column")
    warnings: list[str] = []
    for name in kinds:
        if name not in table.columns:
            warnings.append(f"the run table has no column {show(name)}; it is n/a for every run")
    rows: list[dict[str, Any]] = []
    excluded: list[Exclusion] = []
    seen: dict[tuple[str, str, str], int] = {}
    for rec in table.to_dict(orient="records"):
        outcome = _check_row(rec, table_dir, kinds, site_name, dataset, tr_range, min_volumes)
        subject, session, run = outcome["labels"]
        where = outcome.get("path") or Path(str(rec.get("path", NA)))
        reason = outcome.get("reason")
        if reason is None and keep is not None and subject not in keep:
            reason = "subject not in participant_label"
        if reason is None and subject in skip:
            reason = "subject listed in exclude_subjects"
        key = (subject, session, run)
        if reason is None and key in seen:
            reason = f"a second row for this run (first: line {seen[key]})"
        if reason is not None:
            excluded.append(
                Exclusion(subject, session, run, where, f"line {rec['line']}: {reason}")
            )
            continue
        seen[key] = rec["line"]
        warnings += outcome["warnings"]
        rows.append(outcome["row"])
    rows, conflicts = _phenotype_conflicts(rows, kinds)
    excluded += conflicts
    for row in rows:
        row.pop("_line")
    result = IngestResult(
        scans=_scans_frame(rows, kinds),
        excluded=_excluded_frame(dataset, excluded),
        warnings=list(dict.fromkeys(warnings)),
        dataset=dataset,
        bids_dir=table_dir,
        parameters={
            "kind": "parcellated",
            "run_table": str(table_path),
            "task": task,
            "min_volumes": min_volumes,
            "tr_range": list(tr_range),
            "n_rois": n_rois,
            "phenotypes": dict(kinds),
            "site_column": site_column,
            "exclude_subjects": sorted(skip, key=natural_key),
            "participant_label": None if keep is None else sorted(keep, key=natural_key),
        },
    )
    for warning in result.warnings:
        logger.warning("%s: %s", dataset, warning)
    if result.scans.empty:
        reasons = "; ".join(dict.fromkeys(result.excluded["reason"].tolist()[:5]))
        raise NoUsableScansError(
            table_path,
            f"dataset {dataset!r} has nothing usable: {len(table)} row(s), "
            f"{len(result.excluded)} exclusion(s): {reasons}",
            result,
        )
    logger.info(
        "%s: %d usable runs from %d subjects; %d exclusions",
        dataset,
        len(result.scans),
        result.scans["subject"].nunique(),
        len(result.excluded),
    )
    return result


def _check_row(
    rec: Mapping[str, Any],
    table_dir: Path,
    kinds: Mapping[str, PhenotypeKind],
    site_name: str | None,
    dataset: str,
    tr_range: tuple[float, float],
    min_volumes: int,
) -> dict[str, Any]:
    """One run-table row: ``labels`` always; ``reason`` or ``row`` + ``warnings``."""
    subject = str(rec["subject"]).removeprefix("sub-")
    session = str(rec.get("session", NA)).removeprefix("ses-")
    session = NA if session in MISSING_VALUES else session
    run = str(rec["run"]).removeprefix("run-")
    run = NA if run in MISSING_VALUES else run
    out: dict[str, Any] = {"labels": (safe_text(subject), safe_text(session), safe_text(run))}
    for key, value in (("sub", subject), ("ses", session), ("run", run)):
        if key != "sub" and value == NA:
            continue
        problem = label_problem(key, value)
        if problem is not None:
            out["reason"] = problem
            return out
    path, problem = resolve_series_path(str(rec["path"]), table_dir)
    if path is None:
        out["reason"] = problem
        return out
    out["path"] = path
    try:
        tr = float(rec["tr"]) if "_" not in str(rec["tr"]) else math.nan
    except ValueError:
        tr = math.nan
    if not math.isfinite(tr) or tr <= 0:
        out["reason"] = f"tr {show(str(rec['tr']))} is not a positive number of seconds"
        return out
    problem = tr_range_problem(tr, tr_range)
    if problem is not None:
        out["reason"] = f"tr {tr:g} s {problem}"
        return out
    try:
        series = read_parcel_file(path)
    except InputDataError as err:
        out["reason"] = err.problem
        return out
    n_volumes = series.data.shape[0]
    if n_volumes < min_volumes:
        out["reason"] = f"{n_volumes} volumes < min_volumes {min_volumes}"
        return out
    warnings = []
    if series.transposed:
        warnings.append(f"{path}: read as (ROI, time) and transposed ({N_ROIS} rows)")
    site = str(rec[site_name]) if site_name else dataset
    row: dict[str, Any] = {
        "dataset": dataset,
        "subject": subject,
        "session": session,
        "run": run,
        "t1w": NA,
        "t1w_session": NA,
        "bold": str(path),
        "bold_sidecar": NA,
        "tr": tr,
        "n_volumes": n_volumes,
        "duration_s": tr * n_volumes,
        "n_slices": 0,
        "has_slice_timing": False,
        "site": None if site in MISSING_VALUES else site,
        "_line": rec["line"],
    }
    for name, kind in kinds.items():
        cell = str(rec.get(name, NA))
        if cell in MISSING_VALUES:
            row[name] = None
        elif kind == "number":
            if _is_number(cell) and math.isfinite(float(cell)):
                row[name] = float(cell)
            else:
                row[name] = None
                warnings.append(
                    f"line {rec['line']}: sub-{subject} column {show(name)} value {show(cell)} "
                    "is not a number; set to n/a"
                )
        else:
            row[name] = cell
    out.update(row=row, warnings=warnings)
    return out


def _phenotype_conflicts(
    rows: list[dict[str, Any]], kinds: Mapping[str, str]
) -> tuple[list[dict[str, Any]], list[Exclusion]]:
    """Leave out every run of a subject whose rows disagree on a phenotype or site."""
    values: dict[str, dict[str, set[str]]] = {}
    for row in rows:
        for name in (*kinds, "site"):
            cell = row[name]
            if cell is not None:
                values.setdefault(row["subject"], {}).setdefault(name, set()).add(str(cell))
    bad = {
        subject: sorted(name for name, seen in cols.items() if len(seen) > 1)
        for subject, cols in values.items()
    }
    bad = {s: names for s, names in bad.items() if names}
    keep = [r for r in rows if r["subject"] not in bad]
    excluded = [
        Exclusion(
            r["subject"],
            r["session"],
            r["run"],
            Path(r["bold"]),
            f"line {r['_line']}: the subject's rows disagree on {', '.join(bad[r['subject']])}",
        )
        for r in rows
        if r["subject"] in bad
    ]
    return keep, excluded


def convert_series(source: PathLike, out: PathLike, *, tr: float, n_rois: int = N_ROIS) -> Path:
    """Write one released series in the func stage's format (TSV + JSON sidecar).

    Parameters
    ----------
    source : path-like
        The released file (:func:`read_parcel_file`).
    out : path-like
        The ``.tsv`` to write; its sidecar ``.json`` gets ``RepetitionTime`` (s), the
        source, whether it was transposed, and provenance.
    tr : float
        Repetition time in seconds (from ``scans.tsv``).

    Returns
    -------
    Path
        ``out``.
    """
    if not (isinstance(tr, int | float) and math.isfinite(tr) and tr > 0):
        raise ValueError(f"tr must be a positive number of seconds; got {tr!r}")
    series = read_parcel_file(source, n_rois)
    names = [f"ROI_{i + 1}" for i in range(n_rois)]
    path = write_series(out, series.data, names)
    write_json(
        path.with_suffix(".json"),
        {
            "RepetitionTime": float(tr),
            "Atlas": f"Schaefer{n_rois}",
            "Source": str(source),
            "SourceROINames": series.roi_names,
            "Transposed": series.transposed,
            "Description": "Released parcel series (dataset kind parcellated), as given",
            "Provenance": provenance(
                step="parcel-series", inputs=[source], parameters={"tr": float(tr)}
            ),
        },
    )
    return path


__all__ = [
    "N_ROIS",
    "NoUsableScansError",
    "ParcelSeries",
    "convert_series",
    "ingest_parcellated",
    "read_parcel_file",
    "read_run_table",
]
