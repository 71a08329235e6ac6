"""Ingestion: index one raw BIDS dataset into ``scans.tsv`` and ``excluded.tsv``.

``scans.tsv`` has one row per usable resting-state BOLD run, paired with a T1w of
the same subject; ``excluded.tsv`` has one row per file or subject left out, with
a short, specific reason. Nothing is dropped silently: files pybids would skip
or misread (misnamed, misplaced, labels that are not alphanumeric) are found by
walking the tree and reported. See ``docs/ingest.md`` for the rules.

The command line (``brainharmony ingest``) is :mod:`brainharmony.pipelines.ingest`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from brainharmony.bids_checks import MAX_PLAUSIBLE_TR_S, TrConflict
from brainharmony.bids_names import label_problem, natural_key, safe_text
from brainharmony.bids_tree import (
    NA,
    BidsTree,
    Exclusion,
    error_text,
    index_with_pybids,
    indexed_files,
    link_problem,
    walk_dataset,
)
from brainharmony.io import InputDataError, PathLike, provenance, write_json, write_tsv
from brainharmony.nifti_checks import check_tr_range
from brainharmony.participants import (
    PHENOTYPE_KINDS,
    Participants,
    PhenotypeKind,
    read_participants,
)
from brainharmony.scan_pairing import CheckSettings, check_subject
from brainharmony.scans_table import SCAN_COLUMNS, phenotype_name_problem
from brainharmony.scans_table import SCANS_COLUMNS as SCANS_COLUMNS  # re-exported

logger = logging.getLogger(__name__)

#: Phenotype columns read from participants.tsv when none are given.
DEFAULT_PHENOTYPES: dict[str, PhenotypeKind] = {
    "age": "number",
    "sex": "category",
    "fluid_intelligence": "number",
    "diagnosis": "category",
}

SCAN_DTYPES: dict[str, str] = {
    **dict.fromkeys(SCAN_COLUMNS, "string"),
    "tr": "float64",
    "n_volumes": "int64",
    "duration_s": "float64",
    "n_slices": "int64",
    "has_slice_timing": "bool",
}
EXCLUDED_COLUMNS: dict[str, str] = {
    "dataset": "Dataset name.",
    "subject": "Subject label as found (escaped when not printable).",
    "session": "Session label, n/a for subject-level rows or datasets without sessions.",
    "run": "Run index, n/a when absent or for subject-level rows.",
    "path": "The file or folder left out.",
    "reason": "Why it was left out.",
}
TR_POLICY = {
    "Source": "sidecar RepetitionTime after BIDS inheritance (authoritative, in seconds)",
    "HeaderCheck": (
        "NIfTI pixdim[4] converted to seconds by xyzt_units (unknown unit read as seconds); "
        "values 0 or 1, non-finite or negative values are placeholders and ignored"
    ),
    "Rejected": (
        "missing, null, non-numeric, non-finite, non-positive, over "
        f"{MAX_PLAUSIBLE_TR_S:g} s (taken for milliseconds), or outside PlausibleRange"
    ),
}
SLICE_TIMING_POLICY = (
    "SliceTiming must be a list of finite numbers, one per slice along the slice-encoding "
    "axis (SliceEncodingDirection, else the header's dim_info, else the third axis), all in "
    "[0, TR) and not all equal. A run whose SliceTiming fails keeps has_slice_timing=false "
    "and a warning; it is not excluded. A run without SliceTiming has has_slice_timing=false."
)


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_dataset` found.

    Attributes
    ----------
    scans : pandas.DataFrame
        One row per usable BOLD run (columns: :data:`SCAN_COLUMNS`, then one per
        phenotype), sorted by subject, session, run.
    excluded : pandas.DataFrame
        One row per file or subject left out (columns: :data:`EXCLUDED_COLUMNS`).
    warnings : list of str
        Problems that did not exclude data.
    dataset : str
        Dataset name.
    bids_dir : Path or None
        Absolute dataset root.
    parameters : dict
        The parameters the result depends on (recorded in the sidecar).
    """

    scans: pd.DataFrame
    excluded: pd.DataFrame
    warnings: list[str]
    dataset: str = ""
    bids_dir: Path | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


class NoUsableScansError(InputDataError):
    """A dataset without a single usable BOLD/T1w pair; ``result`` holds the exclusions."""

    def __init__(self, path: PathLike, problem: str, result: IngestResult) -> None:
        super().__init__(path, problem)
        self.result = result


def ingest_dataset(
    bids_dir: PathLike,
    dataset: str,
    *,
    task: str = CheckSettings.task,
    min_volumes: int = CheckSettings.min_volumes,
    tr_tolerance: float = CheckSettings.tr_tolerance,
    tr_conflict: TrConflict = CheckSettings.tr_conflict,
    tr_range: tuple[float, float] = CheckSettings.tr_range,
    phenotypes: Mapping[str, PhenotypeKind] | None = None,
    site_column: str | None = None,
    exclude_subjects: Iterable[str] = (),
    participant_label: Iterable[str] | None = None,
) -> IngestResult:
    """Index a raw BIDS dataset: usable BOLD/T1w pairs and everything left out.

    Parameters
    ----------
    bids_dir : path-like
        Root of the raw BIDS dataset.
    dataset : str
        Name of the dataset (written in every row).
    task : str
        Task label of the BOLD runs to take (``task-<task>``).
    min_volumes : int
        Runs with fewer volumes are excluded.
    tr_tolerance : float
        Relative difference between header and sidecar TR tolerated (0.01 = 1 %).
    tr_conflict : {"warn", "exclude"}
        A larger difference warns (the sidecar wins) or excludes the run.
    tr_range : (float, float)
        Plausible repetition times in seconds (inclusive); a run whose sidecar
        RepetitionTime is outside is excluded. Default 0.1-10 s.
    phenotypes : mapping of str to {"number", "category"}, optional
        participants.tsv columns to carry and their types; default
        :data:`DEFAULT_PHENOTYPES`.
    site_column : str, optional
        participants.tsv column holding the site; default: the site is the dataset.
    exclude_subjects : iterable of str
        Subject labels (with or without ``sub-``) to leave out.
    participant_label : iterable of str, optional
        Subject labels to keep (the BIDS-Apps ``--participant-label``); every other
        subject is left out with that reason. ``None`` (default): every subject.
        A label in either list that names no subject folder is an error that lists
        the closest existing labels.

    Returns
    -------
    IngestResult

    Raises
    ------
    ValueError
        For an invalid parameter (named in the message).
    InputDataError
        When the dataset folder is missing or participants.tsv is malformed.
    NoUsableScansError
        When no BOLD run is usable; the message names the dataset and summarises
        the reasons, and ``err.result`` holds the exclusions.
    """
    kinds = _check_parameters(
        dataset, task, min_volumes, tr_tolerance, tr_conflict, phenotypes, site_column
    )
    tr_range = check_tr_range(tr_range)
    skip = _normalise_subjects(exclude_subjects, "exclude_subjects")
    keep = (
        _normalise_subjects(participant_label, "participant_label")
        if participant_label  # None or empty: every subject
        else None
    )
    root = Path(os.path.abspath(os.fspath(bids_dir)))
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise InputDataError(root, f"dataset {dataset!r}: the BIDS folder {what}")
    parameters = {
        "task": task,
        "min_volumes": min_volumes,
        "tr_tolerance": tr_tolerance,
        "tr_conflict": tr_conflict,
        "tr_range": list(tr_range),
        "phenotypes": dict(kinds),
        "site_column": site_column,
        "exclude_subjects": sorted(skip, key=natural_key),
        "participant_label": None if keep is None else sorted(keep, key=natural_key),
    }
    warnings: list[str] = []
    description = root / "dataset_description.json"
    if not description.is_file():
        warnings.append("dataset_description.json is missing (required by BIDS)")

    _refuse_linked_out(root, "participants.tsv", dataset)
    participants = read_participants(
        root / "participants.tsv", phenotypes=kinds, site_column=site_column
    )
    warnings.extend(participants.warnings)
    tree = walk_dataset(root)
    warnings.extend(_check_description(tree, dataset))
    warnings.extend(tree.warnings)
    for path in tree.broken_json():
        if path == root / "dataset_description.json":
            continue  # reported by _check_description
        item = tree.json_files[path]
        verb = "not read" if item.refused else "cannot be parsed"
        shown = path.relative_to(root).as_posix()
        warnings.append(f"{shown} {verb}: {item.error}; left out of the pybids index")
    _check_labels_exist(root, dataset, tree.subjects, skip, keep)
    layout = index_with_pybids(root, tree.pybids_skip(), f"dataset {dataset!r}")
    indexed = indexed_files(layout)
    settings = CheckSettings(
        task=task,
        min_volumes=min_volumes,
        tr_tolerance=tr_tolerance,
        tr_conflict=tr_conflict,
        tr_range=tr_range,
    )

    rows: list[dict[str, Any]] = []
    excluded: list[Exclusion] = list(tree.rejected)
    for subject in sorted(tree.subjects, key=natural_key):
        if keep is not None and subject not in keep:
            reason = "subject not in participant_label"
            excluded.append(Exclusion(subject, NA, NA, tree.subjects[subject], reason))
            continue
        if subject in skip:
            reason = "subject listed in exclude_subjects"
            excluded.append(Exclusion(subject, NA, NA, tree.subjects[subject], reason))
            continue
        if subject in tree.failed:
            reason = tree.failed[subject]
            excluded.append(Exclusion(subject, NA, NA, tree.subjects[subject], reason))
            continue
        try:
            outcome = check_subject(subject, tree, layout, indexed, settings)
        except Exception as err:  # one subject's files must not stop the dataset
            logger.debug("sub-%s failed", subject, exc_info=True)
            reason = f"error while reading the subject's files: {error_text(err)}"
            excluded.append(Exclusion(subject, NA, NA, tree.subjects[subject], reason))
            continue
        rows += outcome.rows
        excluded += outcome.excluded
        warnings += outcome.warnings

    warnings += _attach_participants(rows, participants, dataset, site_column, set(tree.subjects))
    warnings = list(dict.fromkeys(warnings))

    result = IngestResult(
        scans=_scans_frame(rows, kinds),
        excluded=_excluded_frame(dataset, excluded),
        warnings=warnings,
        dataset=dataset,
        bids_dir=root,
        parameters=parameters,
    )
    for warning in warnings:
        logger.warning("%s: %s", dataset, warning)
    if result.scans.empty:
        message = _nothing_usable(dataset, len(tree.subjects), result.excluded)
        raise NoUsableScansError(root, message, result)
    logger.info(
        "%s: %d usable runs from %d subjects; %d exclusions",
        dataset,
        len(result.scans),
        result.scans["subject"].nunique(),
        len(result.excluded),
    )
    return result


def write_outputs(result: IngestResult, out_dir: PathLike) -> dict[str, Path]:
    """Write ``scans.tsv``, ``excluded.tsv`` and the ``scans.json`` sidecar atomically.

    Parameters
    ----------
    result : IngestResult
        From :func:`ingest_dataset`.
    out_dir : path-like
        Destination folder (created).

    Returns
    -------
    dict of str to Path
        ``{"scans": ..., "excluded": ..., "sidecar": ...}``.
    """
    out = Path(out_dir)
    paths = {
        "excluded": write_excluded(result, out),
        "sidecar": write_json(out / "scans.json", scans_sidecar(result)),
        "scans": write_tsv(out / "scans.tsv", result.scans),
    }
    return paths


def write_excluded(result: IngestResult, out_dir: PathLike) -> Path:
    """Write ``excluded.tsv`` alone (also done when nothing was usable)."""
    return write_tsv(Path(out_dir) / "excluded.tsv", result.excluded)


def scans_sidecar(result: IngestResult) -> dict[str, Any]:
    """The content of ``scans.json``: columns, policies, counts, warnings, provenance."""
    kinds = dict(result.parameters.get("phenotypes", {}))
    columns = {name: {"Description": text} for name, text in SCAN_COLUMNS.items()}
    for name in ("tr", "duration_s"):
        columns[name]["Units"] = "s"
    for name, kind in kinds.items():
        columns[name] = {
            "Description": f"participants.tsv column {name!r} ({kind})",
            "DataType": kind,
        }
    scans, excluded = result.scans, result.excluded
    return {
        "Dataset": result.dataset,
        "BIDSDirectory": str(result.bids_dir) if result.bids_dir is not None else None,
        "Columns": columns,
        "Phenotypes": kinds,
        "RepetitionTimePolicy": {
            **TR_POLICY,
            "RelativeTolerance": result.parameters.get("tr_tolerance"),
            "OnConflict": result.parameters.get("tr_conflict"),
            "PlausibleRange": result.parameters.get("tr_range"),
        },
        "SliceTimingPolicy": SLICE_TIMING_POLICY,
        "Counts": {
            "scans": len(scans),
            "subjects": int(scans["subject"].nunique()),
            "sessions": int(scans[["subject", "session"]].drop_duplicates().shape[0]),
            "excluded_rows": len(excluded),
            "excluded_subjects_without_scans": len(
                set(excluded["subject"]) - set(scans["subject"])
            ),
            "warnings": len(result.warnings),
        },
        "ExcludedColumns": {name: {"Description": t} for name, t in EXCLUDED_COLUMNS.items()},
        "Warnings": list(result.warnings),
        "Provenance": provenance(
            step="ingest",
            inputs=[result.bids_dir] if result.bids_dir is not None else [],
            parameters={"dataset": result.dataset, **result.parameters},
        ),
    }


def read_scans(path: PathLike) -> pd.DataFrame:
    """Read a ``scans.tsv`` back with its types (labels stay strings: ``01`` not ``1``).

    Phenotype types come from the ``scans.json`` sidecar beside it when present.
    """
    path = Path(path)
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    sidecar = path.with_name(path.name.removesuffix(".tsv") + ".json")
    kinds: dict[str, str] = {}
    if sidecar.is_file():
        kinds = dict(json.loads(sidecar.read_text(encoding="utf-8")).get("Phenotypes", {}))
    for name in frame.columns:
        values = frame[name].replace({NA: None, "": None})
        dtype = SCAN_DTYPES.get(name) or ("float64" if kinds.get(name) == "number" else "string")
        if name in ("session", "run", "t1w_session"):
            frame[name] = frame[name].astype("string")
        elif dtype == "bool":
            frame[name] = frame[name].map({"True": True, "False": False}).astype("bool")
        elif dtype in ("float64", "int64"):
            frame[name] = pd.to_numeric(values).astype(dtype)
        else:
            frame[name] = values.astype("string")
    return frame


# ---------------------------------------------------------------------- internals


def _check_parameters(
    dataset: str,
    task: str,
    min_volumes: int,
    tr_tolerance: float,
    tr_conflict: str,
    phenotypes: Mapping[str, PhenotypeKind] | None,
    site_column: str | None,
) -> dict[str, PhenotypeKind]:
    if not isinstance(dataset, str) or not dataset.strip():
        raise ValueError(f"dataset must be a non-empty string; got {dataset!r}")
    if not isinstance(task, str) or label_problem("task", task) is not None:
        raise ValueError(f"task must be an alphanumeric BIDS label; got {task!r}")
    if isinstance(min_volumes, bool) or not isinstance(min_volumes, int) or min_volumes < 1:
        raise ValueError(f"min_volumes must be an integer >= 1; got {min_volumes!r}")
    if (
        isinstance(tr_tolerance, bool)
        or not isinstance(tr_tolerance, int | float)
        or not math.isfinite(tr_tolerance)
        or tr_tolerance < 0
    ):
        raise ValueError(f"tr_tolerance must be a finite number >= 0; got {tr_tolerance!r}")
    if tr_conflict not in ("warn", "exclude"):
        raise ValueError(f"tr_conflict must be 'warn' or 'exclude'; got {tr_conflict!r}")
    kinds = dict(DEFAULT_PHENOTYPES if phenotypes is None else phenotypes)
    for name, kind in kinds.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"phenotypes: a column name must be a non-empty string; got {name!r}")
        problem = phenotype_name_problem(name)
        if problem is not None:
            raise ValueError(f"phenotypes: {problem}")
        if kind not in PHENOTYPE_KINDS:
            raise ValueError(
                f"phenotypes: type of {name!r} must be one of {PHENOTYPE_KINDS}; got {kind!r}"
            )
    if site_column is not None and (not isinstance(site_column, str) or not site_column):
        raise ValueError(f"site_column must be a non-empty string or None; got {site_column!r}")
    return kinds


def _normalise_subjects(labels: Iterable[str], name: str) -> set[str]:
    if isinstance(labels, str):
        raise ValueError(f"{name} must be a collection of labels, not one string")
    found = set()
    for raw in labels:
        label = str(raw).strip().removeprefix("sub-")
        problem = label_problem("sub", label)
        if problem is not None:
            raise ValueError(f"{name}: {problem}")
        found.add(label)
    return found


def _refuse_linked_out(root: Path, name: str, dataset: str) -> None:
    """A dataset-level file behind a link out of the dataset (or broken, or a loop)
    stops the dataset, naming the file."""
    path = root / name
    problem = link_problem(path, Path(os.path.realpath(root)))
    if problem is not None:
        raise InputDataError(path, f"dataset {dataset!r}: {problem}")


#: Parse errors of dataset_description.json that pybids tolerates (it reads the file
#: itself, whatever ingest's index leaves out); anything else stops the dataset.
_DESCRIPTION_TOLERATED = ("JSONDecodeError", "UnicodeDecodeError", "top level is")


def _check_description(tree: BidsTree, dataset: str) -> list[str]:
    """Warnings about dataset_description.json; :class:`InputDataError` when pybids
    could not read it safely (special file, link out of the dataset, oversized,
    too deep, huge integers)."""
    path = tree.root / "dataset_description.json"
    item = tree.json_files.get(path)
    if item is None or item.error is None:
        return []
    if item.refused or not item.error.startswith(_DESCRIPTION_TOLERATED):
        raise InputDataError(path, f"dataset {dataset!r}: {item.error}")
    return [f"dataset_description.json cannot be parsed: {item.error}"]


def _check_labels_exist(
    root: Path,
    dataset: str,
    subjects: Mapping[str, Any],
    skip: set[str],
    keep: set[str] | None,
) -> None:
    """A participant_label or exclude_subjects entry that names no subject folder is
    an error (a typo would otherwise silently process everyone, or no one)."""
    import difflib

    existing = sorted(subjects, key=natural_key)
    problems = []
    for name, labels in (("participant_label", keep or set()), ("exclude_subjects", skip)):
        for label in sorted(labels - set(existing), key=natural_key):
            close = difflib.get_close_matches(label, existing, n=3, cutoff=0.5)
            hint = (
                "closest: " + ", ".join(f"sub-{c}" for c in close)
                if close
                else f"{len(existing)} subjects, e.g. "
                + ", ".join(f"sub-{c}" for c in existing[:3])
            )
            problems.append(f"{name} names sub-{label}, which has no folder ({hint})")
    if problems:
        raise InputDataError(root, f"dataset {dataset!r}: " + "; ".join(problems))


def _attach_participants(
    rows: list[dict[str, Any]],
    participants: Participants,
    dataset: str,
    site_column: str | None,
    subjects: set[str],
) -> list[str]:
    """Add dataset, site and phenotype values to the rows; return the warnings."""
    warnings = []
    table = participants.table
    if participants.path is not None:
        for label in sorted(subjects - set(table.index), key=natural_key):
            warnings.append(f"sub-{label} has data but no row in participants.tsv")
        for label in sorted(set(table.index) - subjects, key=natural_key):
            warnings.append(f"participants.tsv lists sub-{label}, which has no folder")
    for row in rows:
        subject = row["subject"]
        known = subject in table.index
        row["dataset"] = dataset
        for name in table.columns:
            row[name] = table.at[subject, name] if known else None
        if site_column is None:
            row["site"] = dataset
        elif row["site"] is None or pd.isna(row["site"]):
            row["site"] = None
            warnings.append(f"sub-{subject}: site column {site_column!r} is n/a")
    return warnings


def _scans_frame(rows: list[dict[str, Any]], kinds: Mapping[str, str]) -> pd.DataFrame:
    columns = [*SCAN_COLUMNS, *kinds]
    rows = sorted(
        rows,
        key=lambda r: (
            natural_key(r["subject"]),
            natural_key(r["session"]),
            natural_key(r["run"]),
            r["bold"],
        ),
    )
    frame = pd.DataFrame(rows, columns=columns)
    dtypes = {
        **SCAN_DTYPES,
        **{n: "float64" if k == "number" else "string" for n, k in kinds.items()},
    }
    for name in columns:
        values = frame[name]
        if dtypes[name] == "string":
            values = values.astype("object").where(values.notna(), None)
        frame[name] = values.astype(dtypes[name])
    return frame.reset_index(drop=True)


def _excluded_frame(dataset: str, exclusions: list[Exclusion]) -> pd.DataFrame:
    rows = [
        {
            "dataset": dataset,
            "subject": safe_text(e.subject),
            "session": safe_text(e.session),
            "run": safe_text(e.run),
            "path": safe_text(str(e.path)),
            "reason": safe_text(e.reason),
        }
        for e in exclusions
    ]
    rows = sorted(
        rows,
        key=lambda r: (
            natural_key(r["subject"]),
            natural_key(r["session"]),
            natural_key(r["run"]),
            r["path"],
            r["reason"],
        ),
    )
    frame = pd.DataFrame(rows, columns=list(EXCLUDED_COLUMNS))
    return frame.astype("string").reset_index(drop=True)


def _nothing_usable(dataset: str, n_subjects: int, excluded: pd.DataFrame) -> str:
    if n_subjects == 0 and excluded.empty:
        return f"dataset {dataset!r} has nothing usable: no sub-* folders"
    counts = Counter(excluded["reason"])
    shown = [f"{reason} (x{n})" if n > 1 else reason for reason, n in counts.most_common(5)]
    more = len(counts) - len(shown)
    summary = "; ".join(shown) + (f"; and {more} other reasons" if more > 0 else "")
    return (
        f"dataset {dataset!r} has nothing usable: no BOLD run with a T1w among "
        f"{n_subjects} subject folder(s); {len(excluded)} exclusion(s): {summary}"
    )
