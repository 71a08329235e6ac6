"""Inputs of the evaluation: labels, split files, FC features, embeddings.

Everything here is I/O plus small pure helpers; nothing imports torch.

* **Labels**: one value per subject from ingest's ``scans.tsv`` (or a BIDS
  ``participants.tsv``): a class label must be the same on all of a subject's rows;
  a continuous target is averaged over them (as :mod:`brainharmony.splits` does).
* **Splits**: the folders written by ``brainharmony splits`` (``fold-<k>.tsv`` +
  ``splits.json``), one folder per split seed.
* **FC**: the Fisher-z transformed upper triangle of the Pearson correlation of a
  parcel series, over its uncensored frames; a subject's runs and sessions are
  averaged in z (the mean of z-values, i.e. the z of a pooled estimate).
* **Embeddings**: ``results/embeddings/<model>/<dataset>.npz`` with ``subject``,
  ``session`` and ``features`` (N, D); sessions are averaged per subject.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.evaluate.settings import TaskSpec
from brainharmony.io import InputDataError, PathLike, sidecar_path
from brainharmony.packing import read_index
from brainharmony.series_files import read_series

logger = logging.getLogger(__name__)

_ENTITY = re.compile(r"(?:^|_)(sub|ses|run)-([a-zA-Z0-9]+)")
#: Largest |r| before the Fisher transform (keeps z finite for identical parcels).
R_CLIP = 1.0 - 1e-7


# --------------------------------------------------------------------------- labels


def read_label_table(path: PathLike) -> pd.DataFrame:
    """Read ``scans.tsv`` / ``participants.tsv`` as strings, ``n/a`` missing.

    A ``participant_id`` column (``sub-<label>``) gives the ``subject`` column when
    there is none.
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "label table not found")
    try:
        frame = pd.read_csv(p, sep="\t", dtype=str, na_values=["n/a", ""], keep_default_na=False)
    except (ValueError, OSError) as err:
        raise InputDataError(p, f"cannot read the table: {err}") from None
    if "subject" not in frame.columns:
        if "participant_id" not in frame.columns:
            raise InputDataError(p, "no 'subject' or 'participant_id' column")
        frame["subject"] = frame["participant_id"].str.removeprefix("sub-")
    frame["subject"] = frame["subject"].astype(str)
    return frame


def task_labels(
    tables: Sequence[PathLike], spec: TaskSpec
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """One label per subject for a task, from one table per pooled dataset.

    Parameters
    ----------
    tables : sequence of path-like
        Ingest ``scans.tsv`` files (or ``participants.tsv``, or a label table written
        by ``brainharmony eval-labels``: the map is idempotent).
    spec : TaskSpec
        ``target``, ``type`` and the optional ``map``.

    Returns
    -------
    frame : pandas.DataFrame
        Columns ``subject, dataset, site, <target>`` (then ``<partial_out>`` when the
        task names a covariate: numeric, NaN where a subject has no value), one row
        per labelled subject, sorted by subject. ``site`` is the table's ``site``
        column (ingest: the participants.tsv site, else the dataset name), else the
        dataset.
    excluded : dict of str to list of str
        Reason -> subjects left out (no value; value not in the map).

    Raises
    ------
    InputDataError
        Column missing, a class label that differs between a subject's rows, a
        non-numeric regression value, or a subject found in two pooled tables.
    """
    target = spec.target
    rows: list[dict[str, Any]] = []
    owner: dict[str, Path] = {}
    excluded: dict[str, set[str]] = {"no value": set(), "value not in the task's map": set()}
    for path in tables:
        p = Path(path)
        frame = read_label_table(p)
        for column in (target, spec.partial_out):
            if column is not None and column not in frame.columns:
                raise InputDataError(p, f"no column {column!r}; columns: {list(frame.columns)}")
        default_ds = p.parent.name
        for subject, group in frame.groupby("subject", sort=True):
            subject = str(subject)
            if subject in owner and owner[subject] != p:
                raise InputDataError(
                    p,
                    f"subject {subject!r} is also in {owner[subject]}; pooled datasets "
                    "need distinct subject labels",
                )
            owner[subject] = p
            dataset = (
                str(group["dataset"].dropna().iloc[0])
                if "dataset" in group and group["dataset"].notna().any()
                else default_ds
            )
            site = (
                str(group["site"].dropna().iloc[0])
                if "site" in group and group["site"].notna().any()
                else dataset
            )
            col = group[target].dropna()
            if col.empty:
                excluded["no value"].add(subject)
                continue
            if spec.type == "classification":
                mapped = [spec.map_label(str(v)) for v in col]
                if any(m is None for m in mapped):
                    excluded["value not in the task's map"].add(subject)
                    continue
                distinct = sorted(set(mapped))  # type: ignore[arg-type]
                if len(distinct) > 1:
                    raise InputDataError(
                        p, f"subject {subject!r} has different {target!r} labels: {distinct}"
                    )
                value: Any = distinct[0]
            else:
                numbers = pd.to_numeric(col, errors="coerce")
                if numbers.isna().any():
                    raise InputDataError(
                        p, f"subject {subject!r}: {target!r} is not numeric: {col.tolist()}"
                    )
                value = float(numbers.mean())
            row = {"subject": subject, "dataset": dataset, "site": site, target: value}
            if spec.partial_out is not None:
                row[spec.partial_out] = _covariate_value(p, subject, group[spec.partial_out])
            rows.append(row)
    labelled = {r["subject"] for r in rows}
    columns = ["subject", "dataset", "site", target]
    if spec.partial_out is not None:
        columns.append(spec.partial_out)
    out = pd.DataFrame(rows, columns=columns)
    out = out.sort_values("subject", kind="stable").reset_index(drop=True)
    return out, {k: sorted(v - labelled) for k, v in excluded.items() if v - labelled}


def _covariate_value(path: Path, subject: str, values: pd.Series) -> float:
    """A subject's covariate: the mean of its numeric values (NaN when it has none)."""
    col = values.dropna()
    numbers = pd.to_numeric(col, errors="coerce")
    if numbers.isna().any():
        raise InputDataError(
            path, f"subject {subject!r}: {values.name!r} is not numeric: {col.tolist()}"
        )
    return float(numbers.mean()) if len(numbers) else float("nan")


def covariate_series(frame: pd.DataFrame, spec: TaskSpec) -> pd.Series | None:
    """The ``partial_out`` column of a :func:`task_labels` frame by subject (None: none)."""
    if spec.partial_out is None:
        return None
    if spec.partial_out not in frame.columns:
        raise InputDataError(None, f"the label table has no {spec.partial_out!r} column")
    values = pd.to_numeric(frame[spec.partial_out], errors="coerce").to_numpy(float)
    return pd.Series(values, index=frame["subject"].astype(str).to_numpy(), dtype=float)


def subject_labels(
    tables: Sequence[PathLike], target: str, task_type: str
) -> tuple[pd.Series, list[str]]:
    """Subject -> label (no map) and the subjects without a value; see :func:`task_labels`."""
    spec = TaskSpec("labels", "labels", target, task_type, positive=None)  # type: ignore[arg-type]
    frame, excluded = task_labels(tables, spec)
    return labels_series(frame, spec), sorted(s for v in excluded.values() for s in v)


def labels_series(frame: pd.DataFrame, spec: TaskSpec) -> pd.Series:
    """The label column of a :func:`task_labels` frame, indexed by subject."""
    values = frame[spec.target].to_numpy()
    dtype = object if spec.type == "classification" else float
    return pd.Series(values, index=frame["subject"].astype(str).to_numpy(), dtype=dtype)


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitSet:
    """The folds of one split seed.

    Attributes
    ----------
    seed : int
    folds : dict of int to pandas.DataFrame
        ``fold -> columns subject, split``.
    path : Path
        The folder.
    """

    seed: int
    folds: dict[int, pd.DataFrame]
    path: Path

    def subjects(self) -> set[str]:
        return {s for f in self.folds.values() for s in f["subject"]}


def read_splits(folder: PathLike) -> SplitSet:
    """Read one folder written by ``brainharmony splits``.

    The seed comes from ``splits.json`` (``Parameters.seed``), else from a folder
    name ``seed-<n>``.
    """
    root = Path(folder)
    files = sorted(root.glob("fold-*.tsv"), key=lambda p: int(p.stem.split("-")[1]))
    if not files:
        raise InputDataError(root, "no fold-<k>.tsv files (run `brainharmony splits`)")
    seed: int | None = None
    meta = root / "splits.json"
    if meta.is_file():
        try:
            seed = json.loads(meta.read_text(encoding="utf-8")).get("Parameters", {}).get("seed")
        except json.JSONDecodeError as err:
            raise InputDataError(meta, f"not valid JSON: {err}") from None
    if seed is None:
        match = re.fullmatch(r"seed-(\d+)", root.name)
        if match is None:
            raise InputDataError(root, "no splits.json with Parameters.seed and no seed-<n> name")
        seed = int(match.group(1))
    folds: dict[int, pd.DataFrame] = {}
    for f in files:
        frame = pd.read_csv(f, sep="\t", dtype={"subject": str, "split": str})
        for col in ("subject", "fold", "split"):
            if col not in frame.columns:
                raise InputDataError(f, f"no {col!r} column")
        bad = sorted(set(frame["split"]) - {"train", "val", "test"})
        if bad:
            raise InputDataError(f, f"unknown split names {bad}")
        if frame["subject"].duplicated().any():
            raise InputDataError(f, "a subject appears twice in one fold")
        k = int(f.stem.split("-")[1])
        folds[k] = frame[["subject", "split"]].reset_index(drop=True)
    everyone = set().union(*(set(f["subject"]) for f in folds.values()))
    tested = pd.concat([f.loc[f["split"] == "test", "subject"] for f in folds.values()])
    if set(tested) != everyone or tested.duplicated().any():
        raise InputDataError(root, "not every subject is in the test partition of exactly one fold")
    return SplitSet(int(seed), folds, root)


# --------------------------------------------------------------------------- FC


def fisher_z_fc(series: np.ndarray) -> np.ndarray:
    """Fisher-z transformed upper triangle of the ROI correlation matrix.

    Parameters
    ----------
    series : ndarray of shape (n_volumes, n_rois)
        Rows with any NaN (censored frames) are left out. A ROI that is entirely
        NaN or constant (no coverage) gets correlation 0 with every other ROI.

    Returns
    -------
    ndarray of shape (n_rois * (n_rois - 1) / 2,)
        ``arctanh(r)`` in ``np.triu_indices(n_rois, 1)`` order (float64).
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"series must be (n_volumes, n_rois); got shape {x.shape}")
    n_rois = x.shape[1]
    dead = np.isnan(x).all(axis=0)
    keep = ~np.isnan(x[:, ~dead]).any(axis=1)
    x = np.where(np.isnan(x), 0.0, x)[keep]
    if x.shape[0] < 3:
        raise ValueError(f"{x.shape[0]} uncensored frames; need at least 3 for a correlation")
    x = x - x.mean(axis=0)
    norm = np.sqrt((x * x).sum(axis=0))
    ok = (norm > 0) & ~dead
    x[:, ok] /= norm[ok]
    x[:, ~ok] = 0.0
    corr = x.T @ x
    iu = np.triu_indices(n_rois, 1)
    return np.arctanh(np.clip(corr[iu], -R_CLIP, R_CLIP))


def parse_entities(path: PathLike) -> dict[str, str]:
    """``sub``/``ses``/``run`` entities of a BIDS-style file name."""
    return {k: v for k, v in _ENTITY.findall(Path(path).name)}


@dataclass(frozen=True)
class FeatureTable:
    """Subject-level features.

    Attributes
    ----------
    subjects : ndarray of str, shape (n,)
        Sorted, unique.
    values : ndarray of shape (n, d)
    source : str
        What they are (for sidecars).
    """

    subjects: np.ndarray
    values: np.ndarray
    source: str

    def take(self, subjects: Sequence[str]) -> np.ndarray:
        """Rows for ``subjects`` in that order (each must be present)."""
        pos = {s: i for i, s in enumerate(self.subjects)}
        missing = [s for s in subjects if s not in pos]
        if missing:
            raise KeyError(f"{self.source}: no features for subjects {missing[:10]}")
        return self.values[[pos[s] for s in subjects]]


def average_by_subject(subjects: Sequence[str], rows: np.ndarray, source: str) -> FeatureTable:
    """Rows (one per run or session) averaged per subject, subjects sorted."""
    frame = pd.DataFrame({"subject": [str(s) for s in subjects]})
    order = sorted(set(frame["subject"]))
    codes = pd.Categorical(frame["subject"], categories=order).codes
    sums = np.zeros((len(order), rows.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, rows)
    counts = np.bincount(codes, minlength=len(order)).astype(float)
    return FeatureTable(np.asarray(order, dtype=object), sums / counts[:, None], source)


def fc_from_series_files(paths: Iterable[PathLike]) -> FeatureTable:
    """Subject-level FC from parcel-series files (``.tsv``/``.npy`` with ``sub-`` names).

    Runs the func stage excluded and runs whose FC cannot be computed (fewer than 3
    uncensored frames) are skipped with a warning; a subject with no usable run has
    no row.
    """

    subjects: list[str] = []
    rows: list[np.ndarray] = []
    n_rois: int | None = None
    for path in paths:
        p = Path(path)
        ent = parse_entities(p)
        if "sub" not in ent:
            raise InputDataError(p, "file name has no sub-<label> entity")
        series = read_series(p, require_finite=False)
        if series.excluded:
            logger.warning("%s: skipped for FC (excluded by func: %s)", p, series.excluded)
            continue
        data = series.data
        if n_rois is None:
            n_rois = data.shape[1]
        elif data.shape[1] != n_rois:
            raise InputDataError(p, f"{data.shape[1]} ROIs; earlier files have {n_rois}")
        try:
            rows.append(fisher_z_fc(data))
        except ValueError as err:
            logger.warning("%s: skipped for FC: %s", p, err)
            continue
        subjects.append(ent["sub"])
    if not rows:
        raise InputDataError(None, "no series file gave an FC matrix")
    return average_by_subject(subjects, np.vstack(rows), "fc:series")


def subject_exclusions(
    series: Iterable[PathLike] = (), shards: Iterable[tuple[PathLike, PathLike]] = ()
) -> dict[str, str]:
    """Subjects none of whose runs is usable, with the reasons the earlier stages gave.

    Only the JSON sidecars are read. A run is unusable when its sidecar says
    ``Excluded: true`` (the func stage; a subject whose T1w the anatomy stage excluded
    has every run excluded with reason ``anatomy excluded: <why>``). A packed shard
    contributes the subjects of its index (usable) and the runs its sidecar lists in
    ``ExcludedSources``.

    Parameters
    ----------
    series : iterable of path-like
        Parcel-series files (``sub-<label>`` in the name).
    shards : iterable of (shard, index)
        Packed series shards and their indexes.

    Returns
    -------
    dict of str to str
        Subject -> reasons (distinct, ``"; "``-joined), for subjects with at least one
        excluded run and no usable one.
    """

    usable: set[str] = set()
    reasons: dict[str, set[str]] = {}

    def note(path: PathLike, doc: Mapping[str, Any]) -> None:
        subject = parse_entities(path).get("sub")
        if subject is None:
            return
        if doc.get("Excluded"):
            why = str(doc.get("ExclusionReason") or doc.get("reason") or "excluded by func")
            reasons.setdefault(subject, set()).add(why)
        else:
            usable.add(subject)

    for path in series:
        side = sidecar_path(path)
        doc: dict[str, Any] = {}
        if side.is_file():
            try:
                doc = json.loads(side.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise InputDataError(side, f"not valid JSON: {err}") from None
        note(path, doc)
    for shard, index in shards:
        usable.update(read_index(index)["subject"].astype(str))
        side = sidecar_path(shard)
        if side.is_file():
            for entry in json.loads(side.read_text(encoding="utf-8")).get("ExcludedSources", []):
                note(entry.get("path", ""), {"Excluded": True, "reason": entry.get("reason")})
    return {s: "; ".join(sorted(r)) for s, r in sorted(reasons.items()) if s not in usable}


def fc_from_shard(shard: PathLike, index: PathLike) -> FeatureTable:
    """Subject-level FC from a packed series shard and its index (NaN rows = censored)."""

    data = np.load(Path(shard), mmap_mode="r", allow_pickle=False)
    idx = read_index(index)
    for col in ("subject", "offset", "frames"):
        if col not in idx.columns:
            raise InputDataError(index, f"no {col!r} column")
    subjects, rows = [], []
    for subject, off, n in zip(idx["subject"], idx["offset"], idx["frames"], strict=True):
        block = np.asarray(data[int(off) : int(off) + int(n)], dtype=np.float64)
        try:
            rows.append(fisher_z_fc(block))
        except ValueError as err:
            logger.warning("%s: subject %s skipped for FC: %s", shard, subject, err)
            continue
        subjects.append(str(subject))
    if not rows:
        raise InputDataError(shard, "no series in the shard gave an FC matrix")
    return average_by_subject(subjects, np.vstack(rows), "fc:shard")


def merge_tables(tables: Sequence[FeatureTable]) -> FeatureTable:
    """Concatenate subject-level tables of disjoint subjects (pooled datasets)."""
    if len(tables) == 1:
        return tables[0]
    subjects = np.concatenate([t.subjects for t in tables])
    if len(set(subjects)) != subjects.size:
        raise InputDataError(None, "the same subject label appears in two pooled datasets")
    dims = {t.values.shape[1] for t in tables}
    if len(dims) != 1:
        raise InputDataError(None, f"pooled feature tables differ in width: {sorted(dims)}")
    values = np.vstack([t.values for t in tables])
    order = np.argsort(subjects.astype(str), kind="stable")
    return FeatureTable(subjects[order], values[order], tables[0].source)


# --------------------------------------------------------------------------- embeddings


def read_embeddings(path: PathLike) -> FeatureTable:
    """Pooled embeddings ``.npz`` (``subject``, ``session``, ``features``) per subject."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "embedding file not found")
    try:
        with np.load(p, allow_pickle=False) as npz:
            if "subject" not in npz or "features" not in npz:
                raise InputDataError(p, f"needs arrays 'subject' and 'features'; has {npz.files}")
            subjects = [str(s) for s in npz["subject"]]
            features = np.asarray(npz["features"], dtype=np.float64)
    except (ValueError, OSError) as err:
        raise InputDataError(p, f"cannot read: {err}") from None
    if features.ndim != 2 or features.shape[0] != len(subjects):
        raise InputDataError(
            p, f"features must be (n_subjects, D) with n = {len(subjects)}; got {features.shape}"
        )
    if not np.isfinite(features).all():
        raise InputDataError(p, "features contain NaN or infinite values")
    return average_by_subject(subjects, features, f"embedding:{p}")


def parse_named(items: Sequence[str] | None, what: str) -> dict[str, list[Path]]:
    """``NAME=PATH`` command-line items (repeatable per name) -> ``{name: [paths]}``."""
    out: dict[str, list[Path]] = {}
    for item in items or ():
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise InputDataError(None, f"{what} {item!r}: expected NAME=PATH")
        out.setdefault(name, []).append(Path(path))
    return out


def json_dump_safe(value: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON of a parameter mapping (for the selection table)."""
    return json.dumps(dict(value), sort_keys=True, default=float)
