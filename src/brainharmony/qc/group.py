"""The group QC table of one dataset: every BOLD run, and every file or subject left out.

One row per run of ingest's ``scans.tsv`` (its motion, censoring, tSNR, the anatomy QC
gate's metrics of its paired T1w, the BOLD -> T1w coregistration metrics, the atlas) and
one row per row of ``excluded.tsv`` (files and subjects the ingest left out). A row that
any stage excluded says so, which stage, and why: nothing is dropped silently.

Only what the stages wrote is read (sidecars and small tables, never an image):

=========================  ==============================================================
what                       file
=========================  ==============================================================
runs, ingest exclusions    ``results/ingest/<ds>/scans.tsv``, ``excluded.tsv``
anatomy QC gate            ``results/anat/<ds>/sub-*/[ses-*/]anat/*_desc-preproc_T1w.json``
                           (``Metrics``, ``Excluded``, ``ExclusionReason``)
frames kept, atlas,        ``results/func/<ds>/sub-*/[ses-*/]func/*_desc-denoised_timeseries.json``
func exclusion
mean FD                    the run's ``desc-confounds_timeseries.tsv``
tSNR                       the run's raw parcel series, ``desc-preproc_timeseries.tsv``
coregistration QC          the run's ``from-boldref_to-T1w_mode-image_xfm.json``
                           (``Registration``; native backend only)
figures                    ``results/anat/<ds>/figures/*_desc-reg_T1w.png`` and the run's
                           FD trace, carpet plot and FC matrix
=========================  ==============================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.anat.derivatives import anat_paths
from brainharmony.bids_names import natural_key
from brainharmony.func.naming import RunOutputs, run_outputs, template_space
from brainharmony.ingest import read_scans
from brainharmony.io import (
    InputDataError,
    PathLike,
    provenance,
    read_json,
    sidecar_path,
    write_json,
    write_tsv,
)

logger = logging.getLogger(__name__)

NA = "n/a"

#: The table's columns, in order, as its JSON sidecar describes them (BIDS style).
COLUMNS: dict[str, dict[str, Any]] = {
    "subject": {"Description": "Subject label, without 'sub-'."},
    "session": {"Description": "Session label, without 'ses-'; n/a when there is none."},
    "run": {"Description": "Run index, without 'run-'; n/a when absent."},
    "source": {
        "Description": "File name of the BOLD run; for an ingest exclusion, the name of "
        "the file or folder left out."
    },
    "t1w_session": {
        "Description": "Session of the T1w paired with the run (its anatomy metrics); "
        "n/a when the dataset has no sessions."
    },
    "tr": {"Description": "Repetition time (ingest, sidecar RepetitionTime).", "Units": "s"},
    "n_volumes": {"Description": "Volumes of the run."},
    "frames_kept": {
        "Description": "Volumes left after motion censoring (KeptVolumes of the denoised "
        "series' sidecar). An excluded run's series holds no rows whatever this says."
    },
    "frames_kept_fraction": {"Description": "frames_kept / n_volumes."},
    "mean_fd": {
        "Description": "Mean framewise displacement (Power et al. 2012) over the volumes "
        "after the first (confounds table).",
        "Units": "mm",
    },
    "tsnr": {
        "Description": "Temporal SNR: median over parcels of mean / standard deviation "
        "over time of the linearly detrended raw parcel series (desc-preproc_timeseries, "
        "scanner intensity, before denoising). Averaging voxels into parcels raises it "
        "well above voxel-wise tSNR."
    },
    "anat_ncc": {
        "Description": "Anatomy QC gate: correlation of the T1w in template space with the "
        "template inside the template brain mask (NCCWithTemplateInBrain)."
    },
    "anat_dice": {
        "Description": "Anatomy QC gate: Dice of the T1w brain mask carried into template "
        "space with the template brain mask (MaskDiceWithTemplateMask)."
    },
    "anat_brain_volume_ml": {
        "Description": "Anatomy QC gate: volume of the T1w-space brain mask (NativeBrainVolumeML).",
        "Units": "mL",
    },
    "anat_scale_min": {
        "Description": "Anatomy QC gate: smallest singular value of the T1w -> template "
        "transform's linear part (TransformScaleFactors)."
    },
    "anat_scale_max": {
        "Description": "Anatomy QC gate: largest singular value of the T1w -> template "
        "transform's linear part (TransformScaleFactors)."
    },
    "coreg_method": {
        "Description": "BOLD -> T1w coregistration method (native backend; n/a for the "
        "fMRIPrep backends, whose coregistration is fMRIPrep's)."
    },
    "coreg_dice": {
        "Description": "Coregistration QC: Dice of the BOLD brain mask mapped onto the T1w "
        "with the T1w brain mask."
    },
    "coreg_bbr_cost": {
        "Description": "Coregistration QC: boundary-based registration cost (bbr method "
        "only; lower is better)."
    },
    "coreg_nmi": {
        "Description": "Coregistration QC: normalised mutual information of the boldref "
        "and the T1w after registration."
    },
    "atlas": {"Description": "Atlas of the parcel series (sidecar key Atlas)."},
    "atlas_source": {
        "Description": "Where the atlas came from (sidecar key AtlasSource; n/a when the "
        "sidecar does not say)."
    },
    "excluded": {
        "Description": "Whether the row is left out of every later stage.",
        "Levels": {"yes": "excluded", "no": "kept"},
    },
    "exclusion_stage": {
        "Description": "The first stage that excluded the row.",
        "Levels": {
            "ingest": "ingestion (excluded.tsv)",
            "anat": "the anatomy stage (QC gate, or a T1w that could not be processed)",
            "func": "the functional stage (coregistration QC gate, censoring)",
        },
    },
    "exclusion_reason": {"Description": "Why, in the words of the stage that excluded it."},
}
#: Columns holding numbers (the others are text).
NUMERIC = (
    "tr",
    "n_volumes",
    "frames_kept",
    "frames_kept_fraction",
    "mean_fd",
    "tsnr",
    "anat_ncc",
    "anat_dice",
    "anat_brain_volume_ml",
    "anat_scale_min",
    "anat_scale_max",
    "coreg_dice",
    "coreg_bbr_cost",
    "coreg_nmi",
)
TABLE_NAME = "group_qc.tsv"
PAGES_DIR = "subjects"

_LABEL = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class Figure:
    """One QC figure of a subject: the file and what it shows."""

    path: Path
    caption: str


@dataclass
class GroupQC:
    """The group QC of one dataset.

    Attributes
    ----------
    dataset : str
    table : pandas.DataFrame
        Columns :data:`COLUMNS`, one row per run or ingest exclusion.
    figures : dict of str to list of Figure
        Subject label -> its QC figures (anatomy first, then per run), files that exist.
    missing_figures : dict of str to list of Path
        Subject label -> figures the stages should have written but that are absent.
    """

    dataset: str
    table: pd.DataFrame
    figures: dict[str, list[Figure]] = field(default_factory=dict)
    missing_figures: dict[str, list[Path]] = field(default_factory=dict)

    def subjects(self) -> list[str]:
        """Every subject of the table (natural order)."""
        return sorted(dict.fromkeys(self.table["subject"].astype(str)), key=natural_key)


# ------------------------------------------------------------------------- numerics


def temporal_snr(series: np.ndarray) -> float:
    """Median over parcels of the temporal SNR of a parcel time series.

    Parameters
    ----------
    series : ndarray of shape (n_volumes, n_parcels)
        Raw (not denoised) parcel means in scanner intensity; NaN marks a parcel
        without coverage.

    Returns
    -------
    float
        Median over parcels with finite values and non-zero variance of
        ``mean / std`` over time after removing a linear trend; NaN when no parcel
        qualifies or the run has fewer than 3 volumes.
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"series must have shape (n_volumes, n_parcels), got {x.shape}")
    n = x.shape[0]
    if n < 3 or x.shape[1] == 0:
        return float("nan")
    x = x[:, np.isfinite(x).all(axis=0)]
    if x.shape[1] == 0:
        return float("nan")
    t = np.arange(n, dtype=np.float64)
    design = np.column_stack([np.ones(n), t - t.mean()])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    residual = x - design @ coef
    std = residual.std(axis=0, ddof=2)
    mean = x.mean(axis=0)
    ok = std > 1e-12 * np.maximum(np.abs(mean), 1.0)
    if not ok.any():
        return float("nan")
    return float(np.median(mean[ok] / std[ok]))


def mean_framewise_displacement(fd: np.ndarray) -> float:
    """Mean framewise displacement over the volumes after the first.

    Parameters
    ----------
    fd : ndarray of shape (n_volumes,)
        Framewise displacement in mm; the first value (n/a or 0 by convention) and
        non-finite values are left out.

    Returns
    -------
    float
        NaN when no value is left.
    """
    values = np.asarray(fd, dtype=np.float64).reshape(-1)[1:]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


# ------------------------------------------------------------------------- readers


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if np.isfinite(out) else float("nan")


def _text(value: Any) -> str:
    if value is None or value == "":
        return NA
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _label(value: Any) -> str | None:
    text = "" if value is None or value is pd.NA else str(value)
    return None if text in ("", NA, "<NA>", "nan", "None") else text


def _anat_prefix(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def anat_record(sidecar: Path) -> dict[str, Any]:
    """The anatomy QC gate's metrics and exclusion of one T1w, as table columns.

    Parameters
    ----------
    sidecar : Path
        The T1w's ``*_desc-preproc_T1w.json``.

    Returns
    -------
    dict
        ``anat_*`` columns and ``reason`` ("" when the T1w was kept).

    Raises
    ------
    InputDataError
        The sidecar is missing or is not a JSON object.
    """
    if not sidecar.is_file():
        raise InputDataError(sidecar, "anatomy sidecar not found (has the anat stage run?)")
    doc = read_json(sidecar)
    metrics = doc.get("Metrics") or {}
    scales = metrics.get("TransformScaleFactors")
    values = [_number(s) for s in scales] if isinstance(scales, list | tuple) and scales else []
    finite = [v for v in values if np.isfinite(v)]
    reason = ""
    if doc.get("Excluded"):
        reason = str(doc.get("ExclusionReason") or "excluded by the anatomy stage")
    return {
        "anat_ncc": _number(metrics.get("NCCWithTemplateInBrain")),
        "anat_dice": _number(metrics.get("MaskDiceWithTemplateMask")),
        "anat_brain_volume_ml": _number(metrics.get("NativeBrainVolumeML")),
        "anat_scale_min": min(finite) if finite else float("nan"),
        "anat_scale_max": max(finite) if finite else float("nan"),
        "reason": reason,
    }


def func_record(outputs: RunOutputs) -> dict[str, Any]:
    """The functional stage's QC of one run, as table columns.

    Parameters
    ----------
    outputs : RunOutputs
        The run's output paths.

    Returns
    -------
    dict
        Frame counts, ``mean_fd``, ``tsnr``, ``coreg_*``, ``atlas``, ``atlas_source`` and
        ``reason`` ("" when the run was kept).

    Raises
    ------
    InputDataError
        The denoised series' sidecar is missing (it carries the exclusion) or invalid.
    """
    side = sidecar_path(outputs.timeseries)
    if not side.is_file():
        raise InputDataError(side, "denoised series sidecar not found (has the func stage run?)")
    doc = read_json(side)
    n = _number(doc.get("NumberOfVolumes"))
    kept = _number(doc.get("KeptVolumes"))
    reason = ""
    if doc.get("Excluded"):
        reason = str(doc.get("ExclusionReason") or "excluded by the func stage")
    mean_fd = float("nan")
    for table in (outputs.confounds, outputs.motion):
        if table.is_file():
            frame = pd.read_csv(table, sep="\t", na_values=[NA])
            if "framewise_displacement" in frame.columns:
                mean_fd = mean_framewise_displacement(
                    frame["framewise_displacement"].to_numpy(dtype=np.float64)
                )
                break
    tsnr = float("nan")
    if outputs.raw_timeseries.is_file():
        raw = pd.read_csv(outputs.raw_timeseries, sep="\t", na_values=[NA])
        tsnr = temporal_snr(raw.to_numpy(dtype=np.float64))
    coreg: Mapping[str, Any] = {}
    coreg_side = sidecar_path(outputs.coreg_xfm)
    if coreg_side.is_file():
        coreg = read_json(coreg_side).get("Registration") or {}
    return {
        "n_volumes": n,
        "frames_kept": kept,
        "frames_kept_fraction": kept / n if n > 0 else float("nan"),
        "mean_fd": mean_fd,
        "tsnr": tsnr,
        "coreg_method": _text(coreg.get("Method")),
        "coreg_dice": _number(coreg.get("Dice")),
        "coreg_bbr_cost": _number(coreg.get("BBRCost")),
        "coreg_nmi": _number(coreg.get("NMI")),
        "atlas": _text(doc.get("Atlas")),
        "atlas_source": _text(doc.get("AtlasSource")),
        "reason": reason,
    }


def read_ingest_excluded(path: PathLike | None) -> pd.DataFrame:
    """Ingest's ``excluded.tsv`` as text (an absent file: no rows)."""
    columns = ["subject", "session", "run", "path", "reason"]
    if path is None or not Path(path).is_file():
        return pd.DataFrame(columns=columns)
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    for col in columns:
        if col not in frame.columns:
            frame[col] = NA
    return frame


# ------------------------------------------------------------------------- the table


def _exclusion(anat_reason: str, func_reason: str) -> tuple[str, str]:
    """``(exclusion_stage, exclusion_reason)`` of a run (``n/a`` twice when kept).

    A T1w the anatomy stage excluded excludes its runs: the stage is ``anat`` with the
    anatomy stage's reason (func's ``anatomy excluded: ...`` only repeats it).
    """
    if anat_reason:
        return "anat", anat_reason
    if func_reason:
        return ("anat" if func_reason.startswith("anatomy excluded") else "func"), func_reason
    return NA, NA


def build_group_qc(
    dataset: str,
    scans: PathLike,
    excluded: PathLike | None,
    anat_dir: PathLike,
    func_dir: PathLike,
    *,
    task: str = "rest",
    template: str | None = None,
    space: str | None = None,
) -> GroupQC:
    """The group QC of one dataset from what its stages wrote.

    Parameters
    ----------
    dataset : str
    scans : path-like
        Ingest's ``scans.tsv`` (one row per usable run).
    excluded : path-like or None
        Ingest's ``excluded.tsv``.
    anat_dir : path-like
        ``results/anat/<dataset>``.
    func_dir : path-like
        ``results/func/<dataset>``.
    task : str
        Task label of the runs (names their outputs).
    template : str, optional
        Anatomy template (``space-`` of the T1w outputs); default the stage's default.
    space : str, optional
        ``space-`` of the parcel series; default ``template``.

    Returns
    -------
    GroupQC

    Raises
    ------
    InputDataError
        ``scans.tsv`` unreadable, or a run's anatomy or denoised-series sidecar missing
        or invalid (the file is named).
    """

    template = template or template_space()
    space = space or template
    anat_root, func_root = Path(anat_dir), Path(func_dir)
    try:
        runs = read_scans(scans)
    except (OSError, ValueError, KeyError) as err:
        raise InputDataError(scans, f"cannot read scans.tsv: {err}") from None
    rows: list[dict[str, Any]] = []
    figures: dict[str, list[Figure]] = {}
    missing: dict[str, list[Path]] = {}
    anat_cache: dict[tuple[str, str | None], dict[str, Any]] = {}

    def note_figure(subject: str, path: Path, caption: str) -> None:
        if path.is_file():
            if all(f.path != path for f in figures.get(subject, [])):
                figures.setdefault(subject, []).append(Figure(path, caption))
        elif path not in missing.get(subject, []):
            missing.setdefault(subject, []).append(path)

    for rec in runs.to_dict(orient="records"):
        subject = str(rec["subject"])
        session, run = _label(rec.get("session")), _label(rec.get("run"))
        t1w_session = _label(rec.get("t1w_session"))
        paths = anat_paths(anat_root, subject, t1w_session, template)
        key = (subject, t1w_session)
        if key not in anat_cache:
            anat_cache[key] = anat_record(sidecar_path(paths.preproc))
        anat = anat_cache[key]
        outputs = run_outputs(func_root, subject, session, task, run, space=space)
        func = func_record(outputs)
        stage, reason = _exclusion(anat["reason"], func["reason"])
        rows.append(
            {
                "subject": subject,
                "session": session or NA,
                "run": run or NA,
                "source": Path(str(rec["bold"])).name,
                "t1w_session": t1w_session or NA,
                "tr": _number(rec.get("tr")),
                **{k: v for k, v in func.items() if k != "reason"},
                **{k: v for k, v in anat.items() if k != "reason"},
                "excluded": "yes" if stage != NA else "no",
                "exclusion_stage": stage,
                "exclusion_reason": reason,
            }
        )
        note_figure(
            subject,
            paths.figure,
            f"{_anat_prefix(subject, t1w_session)}: T1w in template space (anatomy QC)",
        )
        for path, what in (
            (outputs.fd_figure, "framewise displacement and censored frames"),
            (outputs.carpet_figure, "carpet plot"),
            (outputs.fc_figure, "FC matrix of the denoised series"),
        ):
            note_figure(subject, path, f"{outputs.stem}: {what}")
    rows += [
        {
            "subject": str(rec["subject"]) or NA,
            "session": str(rec["session"]) or NA,
            "run": str(rec["run"]) or NA,
            "source": Path(str(rec["path"])).name or NA,
            "excluded": "yes",
            "exclusion_stage": "ingest",
            "exclusion_reason": str(rec["reason"]) or "excluded by ingestion",
        }
        for rec in read_ingest_excluded(excluded).to_dict(orient="records")
    ]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in COLUMNS:
        if col in NUMERIC:
            table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
        else:
            table[col] = table[col].fillna(NA).astype(str)
    if not table.empty:
        order = sorted(
            range(len(table)),
            key=lambda i: (
                natural_key(table.at[i, "subject"]),
                natural_key(table.at[i, "session"]),
                natural_key(table.at[i, "run"]),
                table.at[i, "exclusion_stage"] == "ingest",
                table.at[i, "source"],
            ),
        )
        table = table.iloc[order].reset_index(drop=True)
    logger.info(
        "%s: group QC of %d runs and %d ingest exclusions (%d rows excluded)",
        dataset,
        len(runs),
        int((table["exclusion_stage"] == "ingest").sum()),
        int((table["excluded"] == "yes").sum()),
    )
    return GroupQC(dataset, table, figures, missing)


def table_sidecar(
    qc: GroupQC, inputs: Sequence[PathLike], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """The TSV's JSON sidecar: one entry per column (BIDS style), counts and provenance."""
    table = qc.table
    runs = table[table["exclusion_stage"] != "ingest"]
    return {
        **{name: dict(spec) for name, spec in COLUMNS.items()},
        "Dataset": qc.dataset,
        "Counts": {
            "rows": len(table),
            "runs": len(runs),
            "runs_excluded": int((runs["excluded"] == "yes").sum()),
            "subjects": int(table["subject"].nunique()),
            "ingest_exclusions": int(len(table) - len(runs)),
        },
        "Provenance": provenance(step="group-qc", inputs=list(inputs), parameters=dict(parameters)),
    }


def write_group_qc(
    qc: GroupQC,
    out_dir: PathLike,
    inputs: Sequence[PathLike] = (),
    parameters: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``group_qc.tsv`` and its sidecar into ``out_dir``; return both paths."""
    path = Path(out_dir) / TABLE_NAME
    write_tsv(path, qc.table, float_format="%.6g")
    side = write_json(sidecar_path(path), table_sidecar(qc, inputs, parameters or {}))
    return path, side


def read_group_qc(path: PathLike) -> pd.DataFrame:
    """Read a ``group_qc.tsv`` back (labels stay text, numbers become floats).

    Raises
    ------
    InputDataError
        A column of :data:`COLUMNS` is missing.
    """
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    absent = [c for c in COLUMNS if c not in frame.columns]
    if absent:
        raise InputDataError(path, f"not a group QC table: columns {absent} missing")
    for col in NUMERIC:
        frame[col] = pd.to_numeric(frame[col].replace({NA: None}), errors="coerce")
    return frame


def page_name(subject: str) -> str:
    """File name of a subject's QC page: ``sub-<label>.html``.

    A label that is not alphanumeric (an ingest exclusion can carry any name found on
    disk) gets ``subject-<digest>.html`` instead, so it can never leave the folder.
    """
    if _LABEL.fullmatch(subject):
        return f"sub-{subject}.html"
    digest = hashlib.sha256(subject.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"subject-{digest}.html"
