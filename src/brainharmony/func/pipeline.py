"""Native functional preprocessing of one BOLD run, end to end.

Order (fMRIPrep's, adapted; see ``docs/func.md``):

1. read and check the BOLD (non-finite and constant voxels, volumes the filter needs);
2. estimate head motion on the raw volumes (:mod:`.motion`), as fMRIPrep does before
   slice-timing correction;
3. slice-timing correction (:mod:`.slicetime`) to the middle of the acquisition range;
4. register the BOLD reference to the T1w (:mod:`.register`), compose with the anatomy
   stage's T1w -> template affine, and resample every slice-time-corrected volume once,
   native -> template grid (the atlas grid);
5. confounds (:mod:`.confounds`), parcel means (:mod:`.parcellate`), denoising of the
   parcel series (:mod:`.denoise`; linear, so it equals the parcel means of denoised
   voxels), QC figures (:mod:`.qc`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.bids_checks import slice_axis, slice_timing_problem
from brainharmony.bids_names import BadName, applicable_sidecars, parse_name
from brainharmony.func import confounds as conf
from brainharmony.func.defaults import (
    COREG_MAX_BBR_COST,
    COREG_MIN_DICE,
    COREG_MIN_NMI,
    DEFAULT_COREG,
    canonical_coreg,
)
from brainharmony.func.denoise import (
    DenoiseSettings,
    butterworth_sos,
    confound_matrix,
    denoise_run,
    filter_min_volumes,
)
from brainharmony.func.motion import MotionSettings, estimate_motion
from brainharmony.func.parcellate import parcel_means
from brainharmony.func.register import (
    CoregSettings,
    register_bold_to_t1w,
    resample_to_template,
)
from brainharmony.func.register import (
    native_to_template_maps as compose_maps,
)
from brainharmony.func.slicetime import reference_time, slice_timing_correct
from brainharmony.io import InputDataError, PathLike, read_json
from brainharmony.nifti_checks import (
    DEFAULT_TR_RANGE,
    MAX_ABS_VOXEL,
    as_number,
    implausible_mask,
    load_checked,
    tr_range_problem,
    value_text,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NativeSettings:
    """Settings of the native backend (the ``func:`` config block).

    Attributes
    ----------
    slice_timing : bool
        Correct slice timing when the sidecar has a usable ``SliceTiming``.
    stc_method : {"fourier", "cubic"}
    stc_ref : float
        Reference time as a fraction of the slice acquisition range (0.5: middle).
    coreg : {"bbr", "mi", "header"}
        BOLD -> T1w: a rigid registration of the BOLD reference to the T1w brain from
        the images (:func:`~.register.register_bold_to_t1w`), refined on the
        white-matter boundary (``bbr``, default) or by mutual information only
        (``mi``; ``rigid`` is accepted for it), or the scanner headers taken as exact
        (``header``: identity). See docs/func.md.
    coreg_min_dice, coreg_max_bbr_cost, coreg_min_nmi : float
        The registration's QC gate (:class:`~.register.CoregSettings`); a run that
        fails it is written excluded, with the reason.
    min_parcel_voxels : int
        Parcels with fewer usable voxels in the run get a NaN column (reported).
    max_nonfinite_fraction : float
        Largest share of signal voxels holding NaN/Inf that is tolerated (they are
        excluded); above it the run is refused.
    scale : {"psc", "none"}
        Express the denoised parcel series in percent of each parcel's mean signal.
    motion : MotionSettings
    denoise : DenoiseSettings
    device : str
        Device of motion estimation and resampling: ``cpu`` runs their numpy backends
        (no torch import), any other (``cuda``) their torch backends.
    """

    slice_timing: bool = True
    stc_method: str = "fourier"
    stc_ref: float = 0.5
    coreg: str = DEFAULT_COREG
    coreg_min_dice: float = COREG_MIN_DICE
    coreg_max_bbr_cost: float = COREG_MAX_BBR_COST
    coreg_min_nmi: float = COREG_MIN_NMI
    min_parcel_voxels: int = 3
    max_nonfinite_fraction: float = 0.1
    scale: str = "psc"
    motion: MotionSettings = field(default_factory=MotionSettings)
    denoise: DenoiseSettings = field(default_factory=DenoiseSettings)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.stc_method not in ("fourier", "cubic"):
            raise ValueError(f"stc_method must be 'fourier' or 'cubic', got {self.stc_method!r}")
        if not 0.0 <= self.stc_ref <= 1.0:
            raise ValueError(f"stc_ref must be in [0, 1], got {self.stc_ref!r}")
        object.__setattr__(self, "coreg", canonical_coreg(self.coreg))
        self.coreg_settings()  # validates the thresholds
        if self.min_parcel_voxels < 1:
            raise ValueError(f"min_parcel_voxels must be >= 1, got {self.min_parcel_voxels!r}")
        if not 0.0 <= self.max_nonfinite_fraction < 1.0:
            raise ValueError(
                f"max_nonfinite_fraction must be in [0, 1), got {self.max_nonfinite_fraction!r}"
            )
        if self.scale not in ("psc", "none"):
            raise ValueError(f"scale must be 'psc' or 'none', got {self.scale!r}")

    def coreg_settings(self) -> CoregSettings:
        """The registration settings with this block's QC thresholds."""
        return CoregSettings(
            min_dice=self.coreg_min_dice,
            max_bbr_cost=self.coreg_max_bbr_cost,
            min_nmi=self.coreg_min_nmi,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BoldData:
    """A checked BOLD run in memory.

    Attributes
    ----------
    data : ndarray of shape (n_x, n_y, n_z, n_volumes), float32
        Non-finite values replaced by 0.
    affine : ndarray of shape (4, 4)
    header : nibabel header
    valid : ndarray of bool, shape (n_x, n_y, n_z)
        Voxels with finite, non-constant signal.
    report : dict
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any
    valid: np.ndarray
    report: dict[str, Any]


def load_bold(path: PathLike, *, max_nonfinite_fraction: float = 0.1) -> BoldData:
    """Read a BOLD NIfTI and check it.

    Voxels holding NaN/Inf, or a value beyond
    :data:`~brainharmony.nifti_checks.MAX_ABS_VOXEL` in magnitude (corrupt), at any
    time are zeroed and excluded (reported); so are voxels whose signal never changes
    (zero variance). The run is refused (:class:`~brainharmony.io.InputDataError`,
    naming the file) when its orientation is unknown (qform and sform codes 0) or its
    affine singular, its voxels complex or RGB, its gzip data damaged (CRC, length),
    it is not 4-D, has fewer than 2 volumes, or such corrupt voxels exceed
    ``max_nonfinite_fraction`` of the voxels holding signal.
    """
    path = Path(path)
    img = load_checked(path, "BOLD image")
    try:
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: corrupt
            data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for broken files
        raise InputDataError(path, f"cannot read the BOLD image: {err}") from err
    if data.ndim != 4:
        raise InputDataError(path, f"BOLD must be 4-D, got shape {data.shape}")
    if data.shape[3] < 2:
        raise InputDataError(path, f"BOLD has {data.shape[3]} volume(s); at least 2 are needed")
    if min(data.shape[:3]) < 4:
        raise InputDataError(path, f"BOLD grid {data.shape[:3]} is too small (4 voxels per axis)")
    data = np.asfortranarray(data)
    corrupt = implausible_mask(data)
    finite = ~corrupt.any(axis=3)
    n_nonfinite = int((~finite).sum())
    n_huge = 0
    if n_nonfinite:
        n_huge = int((np.isfinite(data).all(axis=3) & ~finite).sum())
        data[corrupt] = 0.0
    del corrupt
    signal = np.abs(data).max(axis=3) > 0
    n_signal = int(signal.sum()) + n_nonfinite
    if n_signal == 0:
        raise InputDataError(path, "BOLD holds no signal (all voxels zero or non-finite)")
    fraction = n_nonfinite / n_signal
    if fraction > max_nonfinite_fraction:
        raise InputDataError(
            path,
            f"{n_nonfinite} voxels ({fraction:.1%} of those with signal) hold NaN or "
            f"infinite values or values beyond +-{MAX_ABS_VOXEL:g} ({n_huge} of them); "
            f"at most {max_nonfinite_fraction:.0%} is tolerated",
        )
    constant = (data.max(axis=3) - data.min(axis=3)) <= 0
    valid = finite & ~constant
    if not valid.any():
        raise InputDataError(path, "every BOLD voxel is constant over time (zero variance)")
    report = {
        "Shape": list(data.shape),
        "NonFiniteVoxels": n_nonfinite,
        "ImplausibleVoxels": n_huge,
        "ConstantVoxels": int((constant & finite & signal).sum()),
        "Handling": (
            "voxels with NaN/Inf, with values beyond +-"
            f"{MAX_ABS_VOXEL:g} (counted in NonFiniteVoxels, also in ImplausibleVoxels) "
            "or with zero variance are excluded from motion estimation and from coverage "
            "(template voxels whose interpolation touches them get none)"
        ),
    }
    if n_nonfinite:
        logger.warning(
            "%s: %d voxels hold NaN/Inf or |value| > %g; excluded", path, n_nonfinite, MAX_ABS_VOXEL
        )
    return BoldData(data, np.asarray(img.affine, dtype=np.float64), img.header, valid, report)


def bold_metadata(
    bold: PathLike, sidecar: PathLike | None = None, sources: dict[str, Path] | None = None
) -> dict[str, Any]:
    """Merged JSON metadata of a BOLD file (BIDS inheritance), most specific last.

    Parameters
    ----------
    bold : path-like
        The BOLD NIfTI inside a BIDS dataset.
    sidecar : path-like, optional
        A sidecar known to apply (read last). Without a BIDS layout around the file,
        only this (or the file's own ``.json``) is read.
    sources : dict, optional
        Filled with key -> the sidecar whose value was kept (for messages).

    Raises
    ------
    InputDataError
        A sidecar that cannot be read, is not UTF-8 or not JSON, naming it.
    """

    bold = Path(bold).absolute()
    merged: dict[str, Any] = {}
    root = next((p.parent for p in bold.parents if p.name.startswith("sub-")), None)
    candidates: list[Path] = []
    try:
        parsed = parse_name(bold.name)
    except BadName:
        parsed = None
    if root is not None and parsed is not None:
        folders = [bold.parent, *[p for p in bold.parents if p.is_relative_to(root)]]
        sidecars = {}
        for folder in folders:
            for path in folder.glob("*.json"):
                try:
                    sidecars[path] = parse_name(path.name)
                except BadName:
                    continue
        candidates = applicable_sidecars(bold, parsed, sidecars, root)
    own = bold.with_name(bold.name.removesuffix(".gz").removesuffix(".nii") + ".json")
    if own.exists() and own not in candidates:
        candidates.append(own)
    if sidecar is not None and Path(sidecar).exists():
        candidates.append(Path(sidecar).absolute())
    for path in candidates:
        try:
            content = read_json(path, context="cannot read JSON sidecar")
        except OSError as err:
            raise InputDataError(path, f"cannot read JSON sidecar: {err}") from err
        merged.update(content)
        if sources is not None:
            sources.update(dict.fromkeys(content, Path(path)))
    return merged


def resolve_repetition_time(
    bold: PathLike,
    t_r: Any,
    metadata: dict[str, Any],
    source: PathLike | None = None,
    tr_range: tuple[float, float] = DEFAULT_TR_RANGE,
) -> float:
    """The run's repetition time in seconds: ``t_r`` (``--tr``) when given, else the
    sidecar's ``RepetitionTime``; checked.

    Parameters
    ----------
    bold : path-like
        The BOLD file (named when the value came from ``--tr`` or is missing).
    t_r : float or None
        The command line's value.
    metadata : dict
        Merged sidecar metadata.
    source : path-like, optional
        The sidecar that set ``RepetitionTime`` (named in messages about its value).
    tr_range : (float, float)
        Plausible repetition times in seconds, inclusive.

    Raises
    ------
    InputDataError
        Missing, not a single number (a list such as ``[2.0]``, a string), not a
        positive finite number, or outside ``tr_range``; naming the sidecar (or the
        BOLD for ``--tr``) and the problem.
    """
    if t_r is not None:
        value, where, path = t_r, "--tr", Path(bold)
    else:
        value = metadata.get("RepetitionTime")
        if value is None:
            raise InputDataError(bold, "RepetitionTime unknown (no sidecar value, no --tr)")
        path = Path(source) if source is not None else Path(bold)
        where = "RepetitionTime in the sidecar"
    shown = value_text(value)
    number = as_number(value)
    if number is None:
        raise InputDataError(
            path,
            f"{where} is {shown}, not a number (one value in seconds is needed; --tr overrides it)",
        )
    if not (np.isfinite(number) and number > 0):
        raise InputDataError(path, f"{where} {shown} is not a positive finite number")
    problem = tr_range_problem(number, tr_range)
    if problem is not None:
        raise InputDataError(path, f"{where} {shown} s {problem}")
    return number


@dataclass
class RunInputs:
    """What the native backend needs for one run.

    Attributes
    ----------
    bold : Path
    t_r : float
        Repetition time in seconds (the sidecar's, from scans.tsv).
    metadata : dict
        Merged BOLD sidecar (``SliceTiming``, ``SliceEncodingDirection``).
    t1w_to_template : ndarray of shape (4, 4)
        T1w world -> template world (RAS mm), from the anatomy stage.
    t1w : Path, optional
        Raw T1w: the registration target only when ``t1w_brain`` is not given (its
        head mask then stands in for the brain).
    t1w_brain, t1w_brain_mask : Path, optional
        The anatomy stage's bias-corrected T1w and brain mask in the T1w's own world
        (``<p>_desc-preproc_T1w``, ``<p>_desc-brain_mask``): the registration target
        (the T1w masked to the brain).
    anat_sidecar : Path, optional
        Sidecar of the anatomy stage's template-space T1w; ``Excluded: true`` there
        excludes the run (reason ``anatomy excluded: <its reason>``) without
        registration.
    """

    bold: Path
    t_r: float
    metadata: dict[str, Any]
    t1w_to_template: np.ndarray
    t1w: Path | None = None
    t1w_brain: Path | None = None
    t1w_brain_mask: Path | None = None
    anat_sidecar: Path | None = None


@dataclass
class RunResult:
    """Everything the native backend computed for one run (arrays; no files)."""

    t_r: float
    start_time: float
    slice_timing_corrected: bool
    params: np.ndarray
    matrices: np.ndarray
    motion_center: np.ndarray
    boldref: np.ndarray
    bold_affine: np.ndarray
    bold_to_t1w: np.ndarray
    grid_affine: np.ndarray
    grid_shape: tuple[int, int, int]
    points: np.ndarray
    samples: np.ndarray
    coverage: np.ndarray
    point_labels: np.ndarray
    confounds: pd.DataFrame
    raw_series: np.ndarray
    denoised: np.ndarray
    keep: np.ndarray
    parcel_counts: np.ndarray
    atlas_counts: np.ndarray
    small_parcels: list[int]
    gm_points: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    excluded: str = ""
    """Why the run is left out of the later stages ("" when it is not)."""


def _slice_times(metadata: dict[str, Any], header: Any, t_r: float) -> tuple[Any, int, str]:

    values = metadata.get("SliceTiming")
    if values is None:
        return None, 2, "no SliceTiming in the sidecar"
    axis = slice_axis(metadata, header)
    problem = slice_timing_problem(values, int(header.get_data_shape()[axis]), t_r)
    if problem is not None:
        return None, axis, problem
    return np.asarray(values, dtype=np.float64), axis, ""


def _coreg_target(
    inputs: RunInputs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """Registration target in T1w world: (data, affine, brain mask or None, description).

    Each image is checked as the BOLD is (:func:`~brainharmony.nifti_checks.load_checked`).
    """
    if inputs.t1w_brain is not None:
        if inputs.t1w_brain_mask is None:
            raise ValueError("t1w_brain needs t1w_brain_mask (the anatomy stage's brain mask)")
        t1 = load_checked(inputs.t1w_brain, "T1w image")
        mask_img = load_checked(inputs.t1w_brain_mask, "brain mask")
        if mask_img.shape[:3] != t1.shape[:3] or not np.allclose(
            mask_img.affine, t1.affine, atol=1e-3
        ):
            raise InputDataError(inputs.t1w_brain_mask, "brain mask is not on the T1w's grid")
        mask = np.asarray(mask_img.dataobj) > 0.5
        what = "anatomy-stage T1w (bias-corrected) within its brain mask"
        return np.asarray(t1.dataobj, np.float32), np.asarray(t1.affine), mask, what
    if inputs.t1w is None:
        raise ValueError("BOLD -> T1w registration needs t1w_brain (+ mask) or t1w")
    t1 = load_checked(inputs.t1w, "T1w image")
    return np.asarray(t1.dataobj, np.float32), np.asarray(t1.affine), None, "raw T1w (head)"


def anatomy_exclusion(sidecar: PathLike | None) -> str:
    """Why the anatomy stage excluded the run's T1w ("" when it did not, or no sidecar).

    Parameters
    ----------
    sidecar : path-like or None
        JSON sidecar of the anatomy stage's template-space T1w.

    Returns
    -------
    str
        ``"anatomy excluded: <ExclusionReason>"`` when the sidecar says ``Excluded``.
    """
    if sidecar is None or not Path(sidecar).exists():
        return ""
    try:
        content = read_json(sidecar, context="cannot read the anatomy sidecar")
    except OSError as err:
        raise InputDataError(sidecar, f"cannot read the anatomy sidecar: {err}") from err
    if not content.get("Excluded"):
        return ""
    return f"anatomy excluded: {content.get('ExclusionReason') or 'no reason given'}"


def preprocess_run(
    inputs: RunInputs,
    atlas_image: Any,
    settings: NativeSettings | None = None,
    *,
    parcels: bool = True,
    tissues: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
) -> RunResult:
    """Run the native preprocessing of one BOLD run in memory.

    Parameters
    ----------
    inputs : RunInputs
    atlas_image : nibabel.Nifti1Image
        Schaefer-400 labels on the working (template) grid.
    settings : NativeSettings, optional
    parcels : bool
        Also compute the parcel series and denoise them (False: stop after the
        confounds; the parcel fields are then empty).
    tissues : (masks, report), optional
        The atlas grid's tissue masks as :func:`~.atlas_resource.read_tissue_masks`
        returns them; computed from the templates when not given (same result).

    Returns
    -------
    RunResult
    """

    settings = settings or NativeSettings()
    path = Path(inputs.bold)
    t_r = float(inputs.t_r)
    if not (np.isfinite(t_r) and t_r > 0):
        raise InputDataError(path, f"repetition time must be a positive number, got {t_r!r}")
    d = settings.denoise
    # Fail fast on what the data cannot support.
    try:
        sos = butterworth_sos(t_r, d.high_pass, d.low_pass, d.filter_order)
    except ValueError as err:
        raise InputDataError(path, str(err)) from err
    bold = load_bold(path, max_nonfinite_fraction=settings.max_nonfinite_fraction)
    n_vol = bold.data.shape[3]
    need = filter_min_volumes(sos)
    if n_vol < max(need, d.min_kept):
        raise InputDataError(
            path,
            f"{n_vol} volumes are too few: the Butterworth filter (order {d.filter_order}, "
            f"{d.high_pass}-{d.low_pass} Hz) needs at least {need} and min_kept is "
            f"{d.min_kept}",
        )
    report: dict[str, Any] = {"Bold": bold.report}

    # 2. Motion on the raw volumes.
    motion = estimate_motion(
        bold.data, bold.affine, settings=settings.motion, valid=bold.valid, device=settings.device
    )
    report["Motion"] = motion.diagnostics

    # 3. Slice timing.
    data = bold.data
    start_time = 0.0
    stc_done = False
    times, axis, why = _slice_times(inputs.metadata, bold.header, t_r)
    if settings.slice_timing and times is not None:
        start_time = reference_time(times, settings.stc_ref)
        data = slice_timing_correct(
            data, times, t_r, slice_axis=axis, ref_time=start_time, method=settings.stc_method
        )
        stc_done = True
    else:
        why = why or "disabled in the settings"
        logger.warning("%s: slice-timing correction skipped (%s)", path, why)
    report["SliceTiming"] = {
        "Corrected": stc_done,
        "Reason": why if not stc_done else "",
        "Method": settings.stc_method if stc_done else None,
        "ReferenceTime": start_time,
        "SliceAxis": int(axis),
    }

    # 4. Registration and the single resampling.
    excluded = anatomy_exclusion(inputs.anat_sidecar)
    if excluded:
        bold_to_t1w = np.eye(4)
        report["Coregistration"] = {
            "Method": "none (anatomy excluded); scanner header (identity) used",
            "Passed": False,
            "FailureReason": excluded,
        }
    elif settings.coreg != "header":
        target, target_affine, target_mask, what = _coreg_target(inputs)
        coreg = register_bold_to_t1w(
            motion.reference,
            bold.affine,
            target,
            target_affine,
            t1w_mask=target_mask,
            method=settings.coreg,
            settings=settings.coreg_settings(),
        )
        bold_to_t1w = coreg.bold_to_t1w
        excluded = coreg.failed
        report["Coregistration"] = {**coreg.report, "Target": what}
    else:
        bold_to_t1w = np.eye(4)
        report["Coregistration"] = {"Method": "scanner header (identity)"}
    if excluded:
        logger.warning("%s: excluded from the later stages: %s", path, excluded)
    grid_affine = np.asarray(atlas_image.affine, dtype=np.float64)
    grid_shape = tuple(int(n) for n in atlas_image.shape[:3])
    labels_grid = np.asarray(atlas_image.dataobj).astype(np.int64)
    masks, tissue_report = tissues or conf.tissue_masks(grid_affine, grid_shape)
    work = masks["brain"] | (labels_grid > 0)
    points = np.argwhere(work)
    maps = compose_maps(
        bold.affine, motion.matrices, bold_to_t1w, inputs.t1w_to_template, grid_affine
    )
    samples, coverage = resample_to_template(
        data, maps, points, valid=bold.valid, device=settings.device
    )
    del data
    sd = samples.std(axis=1)
    coverage &= np.isfinite(sd) & (sd > 0)
    point_labels = labels_grid[tuple(points.T)]
    point_masks = {k: v[tuple(points.T)] for k, v in masks.items()}
    report["Coverage"] = {
        "WorkingVoxels": int(points.shape[0]),
        "CoveredVoxels": int(coverage.sum()),
        "BrainCoveredFraction": round(
            float(coverage[point_masks["brain"]].mean()) if point_masks["brain"].any() else 0.0,
            4,
        ),
        "Tissues": tissue_report,
    }

    # 5. Confounds.
    try:
        tissue = conf.tissue_signals(samples, point_masks, coverage)
    except ValueError as err:
        if not excluded:
            raise InputDataError(path, f"{err} (is the run's field of view on the brain?)") from err
        # An excluded run (misregistered) is still written; its tissue signals are n/a.
        tissue = {k: np.full(n_vol, np.nan) for k in ("global_signal", "csf", "white_matter")}
    brain_cov = point_masks["brain"] & coverage
    dvars = conf.dvars(samples[brain_cov]) if brain_cov.sum() > 1 else np.full(n_vol, np.nan)
    table = conf.build_confounds(motion.params, tissue, dvars_values=dvars)

    common = {
        "t_r": t_r,
        "start_time": start_time,
        "slice_timing_corrected": stc_done,
        "params": motion.params,
        "matrices": motion.matrices,
        "motion_center": motion.center,
        "boldref": motion.reference,
        "bold_affine": bold.affine,
        "bold_to_t1w": bold_to_t1w,
        "grid_affine": grid_affine,
        "grid_shape": grid_shape,
        "points": points,
        "samples": samples,
        "coverage": coverage,
        "point_labels": point_labels,
        "confounds": table,
        "gm_points": point_masks["gm"] & coverage & (point_labels > 0),
        "report": report,
    }
    if not parcels:
        empty = np.zeros((n_vol, 0))
        return RunResult(
            **common,
            raw_series=empty,
            denoised=empty,
            keep=np.ones(n_vol, dtype=bool),
            parcel_counts=np.zeros(0, dtype=np.int64),
            atlas_counts=np.zeros(0, dtype=np.int64),
            small_parcels=[],
            excluded=excluded,
        )
    # Parcels, censoring, denoising.
    parcels_out = parcel_means(
        samples,
        point_labels,
        label_values=np.arange(1, 401),
        usable=coverage,
        min_voxels=settings.min_parcel_voxels,
    )
    raw = parcels_out.series
    keep = d.keep(table["framewise_displacement"].to_numpy())
    design, names = confound_matrix(table, d.strategy)
    if excluded:
        # Excluded before denoising (anatomy or coregistration): no series computed.
        denoised = np.empty((0, raw.shape[1]))
        info = {"Excluded": True, "ExclusionReason": excluded}
    else:
        try:
            denoised, info, excluded = denoise_run(
                raw, t_r, confounds=design, keep=keep, settings=d, scale=settings.scale
            )
        except ValueError as err:
            raise InputDataError(path, str(err)) from err
        if excluded:
            logger.warning("%s: excluded from the later stages: %s", path, excluded)
    report["Denoising"] = {**info, "Confounds": names}
    return RunResult(
        **common,
        raw_series=raw,
        denoised=denoised,
        keep=keep,
        parcel_counts=parcels_out.counts,
        atlas_counts=parcels_out.atlas_counts,
        small_parcels=parcels_out.small,
        excluded=excluded,
    )
