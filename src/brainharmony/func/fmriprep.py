"""fMRIPrep as the front end: run it (Docker or Apptainer/Singularity), or read its outputs.

* :func:`fmriprep_command` builds the command line for one participant:
  ``fmriprep-docker`` (the official Docker wrapper) or ``apptainer run`` /
  ``singularity run`` of an image, with the BIDS folder, output folder, work folder
  and FreeSurfer licence bound into the container.
* :func:`run_fmriprep` runs it (logging the command; a non-zero exit raises).
* :func:`find_run_files` locates a run's preprocessed BOLD, confounds and brain mask
  in an fMRIPrep output folder; :func:`read_confounds` reads and checks its confounds
  table; :func:`process_derivatives` denoises and parcellates them with the same code
  as the native backend (:mod:`.denoise`, :mod:`.parcellate`), censoring the volumes
  fMRIPrep flags as non-steady-state (``non_steady_state_outlierNN``).

fMRIPrep writes MNI152NLin2009cAsym outputs, and the atlas applied to them is in that
space too (:mod:`.atlas_lookup`: TemplateFlow's official volume, else the offline rebuild
on TemplateFlow's 2009cAsym grey matter; an atlas in another space is refused by
``brainharmony func derivatives``). Only when the atlas grid differs from the BOLD's
(another resolution of the same space) is it resampled, by nearest neighbour.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.func.confounds import NON_STEADY_STATE_PREFIX, outlier_frames
from brainharmony.func.denoise import (
    STRATEGIES,
    DenoiseSettings,
    butterworth_sos,
    confound_matrix,
    denoise_run,
    filter_min_volumes,
)
from brainharmony.func.naming import run_stem
from brainharmony.func.parcellate import parcel_means, resample_labels
from brainharmony.func.pipeline import resolve_repetition_time
from brainharmony.io import InputDataError, PathLike, read_json
from brainharmony.nifti_checks import DEFAULT_TR_RANGE, implausible_mask, load_checked

logger = logging.getLogger(__name__)

RUNNERS: tuple[str, ...] = ("docker", "apptainer", "singularity")
DEFAULT_IMAGE = "nipreps/fmriprep:24.1.1"
DEFAULT_SPACE = "MNI152NLin2009cAsym"


@dataclass(frozen=True)
class FmriprepSettings:
    """How to run fMRIPrep (the ``func.fmriprep`` config block).

    Attributes
    ----------
    runner : {"docker", "apptainer", "singularity"}
        ``docker`` uses the ``fmriprep-docker`` wrapper; the others ``<runner> run``
        on a local image file (``.sif``) or a ``docker://`` URI.
    image : str
        Docker image (``nipreps/fmriprep:<version>``) or Apptainer image path/URI.
    license : str or None
        FreeSurfer licence file (required by fMRIPrep even without recon-all).
    output_spaces : tuple of str
        ``--output-spaces`` values.
    nthreads : int
    omp_nthreads : int or None
    mem_mb : int or None
    fs_no_reconall : bool
        Pass ``--fs-no-reconall`` (much faster; fMRIPrep then uses FSL/ANTs only).
    skip_bids_validation : bool
    extra_args : tuple of str
        Appended verbatim (e.g. ``("--dummy-scans", "0")``).
    executable : str or None
        Override the program (default ``fmriprep-docker`` / ``apptainer`` /
        ``singularity``).
    """

    runner: str = "docker"
    image: str = DEFAULT_IMAGE
    license: str | None = None
    output_spaces: tuple[str, ...] = (f"{DEFAULT_SPACE}:res-2",)
    nthreads: int = 4
    omp_nthreads: int | None = None
    mem_mb: int | None = None
    fs_no_reconall: bool = True
    skip_bids_validation: bool = True
    extra_args: tuple[str, ...] = ()
    executable: str | None = None

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS}, got {self.runner!r}")
        if not self.image:
            raise ValueError("image must name a Docker image or an Apptainer image")
        if self.nthreads < 1:
            raise ValueError(f"nthreads must be >= 1, got {self.nthreads!r}")
        if not self.output_spaces:
            raise ValueError("output_spaces must name at least one space")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmriprep_command(
    bids_dir: PathLike,
    out_dir: PathLike,
    work_dir: PathLike,
    participant: str,
    settings: FmriprepSettings,
) -> list[str]:
    """The command line that runs fMRIPrep on one participant.

    Parameters
    ----------
    bids_dir, out_dir, work_dir : path-like
        Raw BIDS folder, fMRIPrep output folder (the derivatives root), work folder.
    participant : str
        Label without ``sub-``.
    settings : FmriprepSettings

    Returns
    -------
    list of str
    """
    if not participant or participant.startswith("sub-"):
        raise ValueError(f"participant must be a label without 'sub-', got {participant!r}")
    bids, out, work = (Path(p).absolute() for p in (bids_dir, out_dir, work_dir))
    lic = Path(settings.license).absolute() if settings.license else None
    common = ["participant", "--participant-label", participant]
    options = [
        "--output-spaces",
        *settings.output_spaces,
        "--nthreads",
        str(settings.nthreads),
        "--omp-nthreads",
        str(settings.omp_nthreads or settings.nthreads),
        "--notrack",
    ]
    if settings.mem_mb:
        options += ["--mem-mb", str(settings.mem_mb)]
    if settings.fs_no_reconall:
        options.append("--fs-no-reconall")
    if settings.skip_bids_validation:
        options.append("--skip-bids-validation")
    if settings.runner == "docker":
        exe = settings.executable or "fmriprep-docker"
        cmd = [exe, str(bids), str(out), *common, "-i", settings.image, "-w", str(work)]
        if lic is not None:
            cmd += ["--fs-license-file", str(lic)]
        return cmd + options + list(settings.extra_args)
    exe = settings.executable or settings.runner
    binds = ["-B", f"{bids}:/data:ro", "-B", f"{out}:/out", "-B", f"{work}:/work"]
    inner = ["/data", "/out", *common, "-w", "/work"]
    if lic is not None:
        binds += ["-B", f"{lic}:/opt/freesurfer/license.txt:ro"]
        inner += ["--fs-license-file", "/opt/freesurfer/license.txt"]
    return [
        exe,
        "run",
        "--cleanenv",
        *binds,
        settings.image,
        *inner,
        *options,
        *settings.extra_args,
    ]


def check_runner(settings: FmriprepSettings) -> str:
    """The runner's executable path; a clear error when it is not installed."""
    exe = settings.executable or (
        "fmriprep-docker" if settings.runner == "docker" else settings.runner
    )
    found = shutil.which(exe)
    if found is None:
        hint = (
            "pip install fmriprep-docker (and a Docker engine)"
            if settings.runner == "docker"
            else f"install {settings.runner} or set func.fmriprep.runner"
        )
        raise FileNotFoundError(f"fMRIPrep runner {exe!r} not found on PATH ({hint})")
    if settings.license and not Path(settings.license).exists():
        raise FileNotFoundError(f"FreeSurfer licence file {settings.license} not found")
    return found


def run_fmriprep(
    bids_dir: PathLike,
    out_dir: PathLike,
    work_dir: PathLike,
    participant: str,
    settings: FmriprepSettings,
    *,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run fMRIPrep for one participant; returns the command that was run.

    Raises
    ------
    FileNotFoundError
        The runner or licence is missing.
    subprocess.CalledProcessError
        fMRIPrep failed.
    """
    check_runner(settings)
    cmd = fmriprep_command(bids_dir, out_dir, work_dir, participant, settings)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    logger.info("running: %s", shlex.join(cmd))
    run_env = dict(os.environ)
    if env:
        run_env.update(env)
    subprocess.run(cmd, check=True, env=run_env)
    return cmd


# --------------------------------------------------------------------------------------
# Reading fMRIPrep outputs
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FmriprepRun:
    """One run's files in an fMRIPrep output folder."""

    bold: Path
    confounds: Path
    mask: Path | None
    bold_sidecar: Path | None


def _entities(subject: str, session: str | None, task: str, run: str | None) -> str:

    return run_stem(subject, session, task, run)


def find_run_files(
    fmriprep_dir: PathLike,
    subject: str,
    session: str | None,
    task: str,
    run: str | None,
    *,
    space: str = DEFAULT_SPACE,
    res: str | None = None,
) -> FmriprepRun:
    """Locate a run's space-``space`` preprocessed BOLD, confounds and mask.

    A ``res-`` entity is matched when given, otherwise any (or none) is accepted
    provided exactly one file matches. Run indices match with or without zero
    padding (fMRIPrep writes them as pybids parsed them).
    """
    root = Path(fmriprep_dir)
    folder = root / f"sub-{subject}"
    if session not in (None, "", "n/a"):
        folder = folder / f"ses-{session}"
    folder = folder / "func"
    if not folder.is_dir():
        raise InputDataError(folder, "fMRIPrep output folder for this run not found")
    if run in (None, "", "n/a"):
        runs: list[str | None] = [None]
    elif str(run).isdigit():
        runs = sorted({str(run), str(int(str(run)))})
    else:
        runs = [str(run)]
    for run_label in runs:
        stem = _entities(subject, session, task, run_label)
        res_part = f"_res-{res}" if res else "*"
        pattern = f"{stem}_space-{space}{res_part}_desc-preproc_bold.nii*"
        bolds = sorted(p for p in folder.glob(pattern) if "_desc-preproc_bold" in p.name)
        if res is None:
            bolds = [p for p in bolds if p.name.startswith(f"{stem}_space-{space}_")]
        if not bolds:
            continue
        if len(bolds) > 1:
            raise InputDataError(
                folder,
                f"several preprocessed BOLD files match {pattern}: "
                f"{[p.name for p in bolds]}; set func.fmriprep.res",
            )
        bold = bolds[0]
        confounds = folder / f"{stem}_desc-confounds_timeseries.tsv"
        if not confounds.exists():
            raise InputDataError(confounds, "fMRIPrep confounds file not found")
        mask_name = bold.name.replace("_desc-preproc_bold", "_desc-brain_mask")
        mask = folder / mask_name
        sidecar = bold.with_name(bold.name.split(".nii")[0] + ".json")
        return FmriprepRun(
            bold, confounds, mask if mask.exists() else None, sidecar if sidecar.exists() else None
        )
    raise InputDataError(
        folder,
        f"no {_entities(subject, session, task, run)}_space-{space}"
        f"{'_res-' + res if res else ''}_desc-preproc_bold.nii.gz",
    )


#: fMRIPrep 1.0/1.1 (camel-case) confound names and their fMRIPrep >= 1.2 names.
OLD_CONFOUND_NAMES: dict[str, str] = {
    "X": "trans_x",
    "Y": "trans_y",
    "Z": "trans_z",
    "RotX": "rot_x",
    "RotY": "rot_y",
    "RotZ": "rot_z",
    "FramewiseDisplacement": "framewise_displacement",
    "GlobalSignal": "global_signal",
    "WhiteMatter": "white_matter",
    "CSF": "csf",
    "stdDVARS": "std_dvars",
    "non-stdDVARS": "dvars",
}


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def read_confounds(path: PathLike, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read an fMRIPrep confounds table and check that it has the columns needed.

    fMRIPrep >= 1.2 column names are read: ``desc-confounds_timeseries.tsv``
    (fMRIPrep >= 20.2) and ``desc-confounds_regressors.tsv`` (1.2 to 20.1) hold the
    same columns; ``n/a`` is read as NaN.

    Parameters
    ----------
    path : path-like
        The confounds TSV.
    required : sequence of str
        Columns needed besides ``framewise_displacement`` (a strategy's columns).

    Returns
    -------
    pandas.DataFrame of shape (n_volumes, n_columns)

    Raises
    ------
    InputDataError
        The file is empty, has no header row, or lacks ``framewise_displacement`` or a
        ``required`` column. The message names the file and the missing columns, and
        says when the columns are fMRIPrep 1.0/1.1's camel-case names (``X``, ``RotX``,
        ``FramewiseDisplacement``...), which are not read.
    """
    with open(path, encoding="utf-8") as handle:
        first = handle.readline().split()
    if not first:
        raise InputDataError(path, "confounds file is empty")
    if all(_is_number(t) or t == "n/a" for t in first) and any(map(_is_number, first)):
        raise InputDataError(
            path,
            "confounds file has no header row (numbers on its first line); fMRIPrep "
            "confounds need their column names (fMRIPrep >= 1.2)",
        )
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    needed = ["framewise_displacement", *(c for c in required if c != "framewise_displacement")]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        problem = f"confounds file lacks columns {missing}"
        old = [c for c in table.columns if c in OLD_CONFOUND_NAMES]
        if old:
            problem += (
                f"; its columns {old} are fMRIPrep 1.0/1.1's camel-case names (for "
                f"{[OLD_CONFOUND_NAMES[c] for c in old]}), which are not read: use the "
                "confounds of fMRIPrep >= 1.2"
            )
        raise InputDataError(path, problem)
    return table


@dataclass
class DerivativeResult:
    """Denoised parcel series from fMRIPrep outputs (arrays; no files)."""

    t_r: float
    start_time: float
    confounds: pd.DataFrame
    raw_series: np.ndarray
    denoised: np.ndarray
    keep: np.ndarray
    parcel_counts: np.ndarray
    atlas_counts: np.ndarray
    small_parcels: list[int]
    carpet: np.ndarray
    carpet_labels: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    excluded: str = ""
    """Why the run is left out of the later stages ("" when it is not)."""
    non_steady: np.ndarray | None = None
    """Frames fMRIPrep flagged as non-steady-state (bool, n_volumes); censored."""


def process_derivatives(
    files: FmriprepRun,
    atlas_image: Any,
    *,
    t_r: float | None = None,
    tr_range: tuple[float, float] | None = None,
    denoise_settings: Any = None,
    min_parcel_voxels: int = 3,
    scale: str = "psc",
) -> DerivativeResult:
    """Denoise and parcellate one fMRIPrep run.

    Parameters
    ----------
    files : FmriprepRun
    atlas_image : nibabel.Nifti1Image
        Schaefer-400 labels in the BOLD's template space (resampled to the BOLD grid
        by nearest neighbour when the grids differ).
    t_r : float, optional
        Repetition time in seconds; default the BOLD sidecar's ``RepetitionTime``.
    tr_range : (float, float), optional
        Plausible repetition times (s); a TR outside is refused. Default 0.1-10 s.
    denoise_settings : DenoiseSettings, optional
    min_parcel_voxels : int
    scale : {"psc", "none"}

    Returns
    -------
    DerivativeResult

    Notes
    -----
    Volumes flagged by ``non_steady_state_outlierNN`` columns (fMRIPrep's dummy scans)
    are censored like high-motion frames: their rows of the denoised series are n/a,
    nothing of them reaches a kept frame, and ``report["NonSteadyStateVolumes"]``
    records them. fMRIPrep's ``motion_outlierNN`` columns are not read: censoring
    follows ``denoise_settings``.
    """
    d = denoise_settings or DenoiseSettings()
    meta: dict[str, Any] = {}
    if files.bold_sidecar is not None:
        try:
            meta = read_json(files.bold_sidecar, context="cannot read JSON sidecar")
        except OSError as err:
            raise InputDataError(files.bold_sidecar, f"cannot read JSON sidecar: {err}") from err
    t_r = resolve_repetition_time(
        files.bold, t_r, meta, files.bold_sidecar, tr_range or DEFAULT_TR_RANGE
    )
    try:
        sos = butterworth_sos(t_r, d.high_pass, d.low_pass, d.filter_order)
    except ValueError as err:
        raise InputDataError(files.bold, str(err)) from err
    img = load_checked(files.bold, "preprocessed BOLD")
    if img.ndim != 4:
        raise InputDataError(files.bold, f"preprocessed BOLD must be 4-D, got {img.shape}")
    n_vol = img.shape[3]
    need = filter_min_volumes(sos)
    if n_vol < max(need, d.min_kept):
        raise InputDataError(
            files.bold,
            f"{n_vol} volumes are too few: the Butterworth filter needs at least {need} "
            f"and min_kept is {d.min_kept}",
        )
    table = read_confounds(files.confounds, required=STRATEGIES[d.strategy])
    if len(table) != n_vol:
        raise InputDataError(
            files.confounds, f"{len(table)} confound rows but the BOLD has {n_vol} volumes"
        )
    try:
        non_steady = outlier_frames(table, NON_STEADY_STATE_PREFIX)
    except ValueError as err:
        raise InputDataError(files.confounds, str(err)) from err
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: corrupt
        data = np.asarray(img.dataobj, dtype=np.float32)
    same_grid = tuple(atlas_image.shape[:3]) == tuple(img.shape[:3]) and np.allclose(
        atlas_image.affine, img.affine, atol=1e-4
    )
    labels = resample_labels(
        np.asarray(atlas_image.dataobj), atlas_image.affine, img.affine, img.shape[:3]
    )
    corrupt = implausible_mask(data)  # NaN, Inf or beyond MAX_ABS_VOXEL
    usable = ~corrupt.any(axis=3)
    n_nonfinite = int((~usable).sum())
    if n_nonfinite:
        data[corrupt] = 0.0
    del corrupt
    sd = data.std(axis=3)
    usable &= sd > 0
    if files.mask is not None:
        usable &= np.asarray(load_checked(files.mask, "brain mask").dataobj) > 0
    parcels = parcel_means(
        data, labels, label_values=np.arange(1, 401), usable=usable, min_voxels=min_parcel_voxels
    )
    keep = d.keep(table["framewise_displacement"].to_numpy(dtype=float), exclude=non_steady)
    try:
        design, names = confound_matrix(table, d.strategy)
    except ValueError as err:
        raise InputDataError(files.confounds, str(err)) from err
    try:
        denoised, info, excluded = denoise_run(
            parcels.series, t_r, confounds=design, keep=keep, settings=d, scale=scale
        )
    except ValueError as err:
        raise InputDataError(files.bold, str(err)) from err
    if excluded:
        logger.warning("%s: excluded from the later stages: %s", files.bold, excluded)
    gm = usable & (labels > 0)
    carpet = data[gm] if gm.any() else data[usable]
    carpet_labels = labels[gm] if gm.any() else labels[usable]
    start = float(meta.get("StartTime", 0.0) or 0.0)
    report = {
        "Source": {
            "Bold": str(files.bold),
            "Confounds": str(files.confounds),
            "Mask": None if files.mask is None else str(files.mask),
        },
        "NonFiniteVoxels": n_nonfinite,
        "NonSteadyStateVolumes": {
            "Count": int(non_steady.sum()),
            "Volumes": np.flatnonzero(non_steady).tolist(),
            "Source": "fMRIPrep's non_steady_state_outlier* columns",
            "Handling": (
                "censored: n/a rows of the denoised series (in its CensoredVolumes), "
                "left in the raw parcel series"
            ),
        },
        "AtlasResampling": (
            "none (the atlas is on the fMRIPrep BOLD grid)"
            if same_grid
            else "nearest neighbour onto the fMRIPrep BOLD grid (same template space)"
        ),
        "Denoising": {**info, "Confounds": names},
    }
    return DerivativeResult(
        t_r=t_r,
        start_time=start,
        confounds=table,
        raw_series=parcels.series,
        denoised=denoised,
        keep=keep,
        parcel_counts=parcels.counts,
        atlas_counts=parcels.atlas_counts,
        small_parcels=parcels.small,
        carpet=carpet,
        carpet_labels=carpet_labels,
        report=report,
        excluded=excluded,
        non_steady=non_steady,
    )
