"""Denoising: censoring, interpolation, detrending, band-pass, confound regression.

Order (see ``docs/func.md`` for the reasons)
--------------------------------------------
Censoring first: frames with framewise displacement above the threshold are flagged,
optionally with neighbours before/after; kept runs shorter than ``min_segment`` frames
are flagged too. Then one of two orders:

``regress-filter`` (default; Power et al. 2014 and the CBIG pipeline, the order
described for BrainHarmonix):

1. **Regress** the confounds (with mean and linear trend when ``detrend``) from the
   BOLD; the betas are fitted on the kept frames only.
2. **Interpolate** the censored frames of the residual from the kept frames (cubic
   spline; leading/trailing flagged frames take the nearest kept value, or are
   extrapolated, or are trimmed): only so that the filter sees no motion spike.
3. **Band-pass** (zero-phase Butterworth, ``sosfiltfilt``).
4. **Drop** the censored frames (NaN rows of the output; indices in the sidecar).

``filter-regress`` (Lindquist et al. 2019; ``nilearn.signal.clean`` and XCP-D >= 0.7):
interpolate the censored frames of BOLD *and* confounds, detrend and band-pass both
alike, fit the confounds on the kept frames, drop the censored frames.

With ``edges="extrapolate"`` (or ``"trim"``) and ``intercept=False``, ``filter-regress``
is exactly ``nilearn.signal.clean(detrend=..., standardize=False, confounds=...,
sample_mask=..., filter="butterworth", extrapolate=True (or False))``, and
``regress-filter`` is exactly two chained calls (regression with ``filter=False``, then
the band-pass with the same ``sample_mask``).

Every step is linear along time and the same for every voxel, so the whole chain is
one ``n_volumes x n_volumes`` matrix (:func:`denoise_operator`), built once per run
and applied to all voxels or parcels by a single matrix product. The same linearity
means denoising commutes with parcel averaging: denoising the 400 parcel means gives
the parcel means of the denoised voxels, up to rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from brainharmony.func.butterworth import butter_sos, sos_min_length, sosfiltfilt
from brainharmony.func.confounds import EXPANSIONS, TISSUES
from brainharmony.func.defaults import DEFAULT_STRATEGY, MIN_SEGMENT
from brainharmony.func.motion import PARAM_NAMES
from brainharmony.func.spline import spline_weights

logger = logging.getLogger(__name__)

_MOTION24 = [f"{p}{e}" for p in PARAM_NAMES for e in EXPANSIONS]
#: Confound columns of each strategy (fMRIPrep names).
STRATEGIES: dict[str, tuple[str, ...]] = {
    # 24 motion (6 + derivatives + squares of both) + WM + CSF + GS (the default until
    # 2026-12-06).
    "24P+WM+CSF+GS": (*_MOTION24, "white_matter", "csf", "global_signal"),
    # Satterthwaite et al. 2013: 9 regressors with derivatives and squares.
    "36P": (*_MOTION24, *[f"{t}{e}" for t in TISSUES for e in EXPANSIONS]),
    # The CBIG regression (Kong et al. 2019, Li et al. 2019), the default: the 6 motion
    # parameters, white matter, CSF (ventricles) and global signal, each with its first
    # derivative. BrainHarmonix describes motion, WM, CSF and global-signal regression
    # in a CBIG-style pipeline.
    "18P": tuple(
        f"{c}{e}"
        for c in (*PARAM_NAMES, "white_matter", "csf", "global_signal")
        for e in ("", "_derivative1")
    ),
    "24P": tuple(_MOTION24),
    "9P": (*PARAM_NAMES, "white_matter", "csf", "global_signal"),
    # Tissue signals only (Ciric et al. 2017's 2P; 3P adds the global signal).
    "3P": ("white_matter", "csf", "global_signal"),
    "2P": ("white_matter", "csf"),
    "none": (),
}

Edges = Literal["nearest", "extrapolate", "trim"]
Order = Literal["regress-filter", "filter-regress"]
ORDERS: tuple[str, ...] = ("regress-filter", "filter-regress")


class TooFewFramesError(ValueError):
    """Censoring left too few frames to denoise a run.

    Not a fault of the file: the run is a data-quality exclusion. The func stage
    writes its outputs flagged ``Excluded`` with this message as the reason, and the
    later stages leave the run out (docs/reliability.md).
    """


@dataclass(frozen=True)
class DenoiseSettings:
    """Denoising settings (the ``func:`` config block).

    Attributes
    ----------
    strategy : str
        Key of :data:`STRATEGIES`.
    fd_threshold : float or None
        Censor frames with framewise displacement above this (mm); None: no censoring.
    min_segment : int
        Kept runs of fewer contiguous frames are censored too.
    censor_before, censor_after : int
        Also censor this many frames before / after each high-motion frame.
    high_pass, low_pass : float or None
        Band edges in Hz (None: that side open). Default 0.01-0.1 Hz.
    filter_order : int
        Butterworth order (applied forward and backward: the magnitude response is
        squared).
    detrend : bool
        Remove mean and linear trend from BOLD and confounds before filtering.
    intercept : bool
        Fit a constant with the confounds (removes the residual mean). Off matches
        nilearn (confounds are centred over the kept frames either way).
    edges : {"nearest", "extrapolate", "trim"}
        Censored frames before the first / after the last kept frame: copy the
        nearest kept value (XCP-D), extrapolate the spline (nilearn
        ``extrapolate=True``), or cut them off before filtering (nilearn
        ``extrapolate=False``).
    min_kept : int
        Fewest kept frames to proceed.
    order : {"regress-filter", "filter-regress"}
        ``regress-filter`` (default; Power et al. 2014, the CBIG pipeline described
        for BrainHarmonix): fit the confounds (and trend) on the kept frames of the
        unfiltered data, interpolate the censored frames of the residual, band-pass.
        ``filter-regress`` (Lindquist et al. 2019; nilearn ``signal.clean``, XCP-D
        >= 0.7): interpolate, detrend and band-pass BOLD and confounds alike, then fit
        on the kept frames.
    """

    strategy: str = DEFAULT_STRATEGY
    fd_threshold: float | None = 0.5
    min_segment: int = MIN_SEGMENT
    censor_before: int = 0
    censor_after: int = 0
    high_pass: float | None = 0.01
    low_pass: float | None = 0.1
    filter_order: int = 2
    detrend: bool = True
    intercept: bool = False
    edges: Edges = "nearest"
    min_kept: int = 20
    order: Order = "regress-filter"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        if self.fd_threshold is not None and not self.fd_threshold > 0:
            raise ValueError(f"fd_threshold must be > 0 mm or None, got {self.fd_threshold!r}")
        for name in ("min_segment", "censor_before", "censor_after", "min_kept"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.filter_order, int) or self.filter_order < 1:
            raise ValueError(f"filter_order must be a positive integer, got {self.filter_order!r}")
        for name in ("high_pass", "low_pass"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"{name} must be a positive frequency in Hz or None, got {value!r}"
                )
        if (
            self.high_pass is not None
            and self.low_pass is not None
            and not self.high_pass < self.low_pass
        ):
            raise ValueError(
                f"high_pass ({self.high_pass} Hz) must be below low_pass ({self.low_pass} Hz)"
            )
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.edges not in ("nearest", "extrapolate", "trim"):
            raise ValueError(
                f"edges must be 'nearest', 'extrapolate' or 'trim', got {self.edges!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def keep(self, fd: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """:func:`censor_mask` of a run's framewise displacement with these settings.

        ``exclude`` (bool, shape ``(n_volumes,)``): frames censored whatever their
        motion, e.g. fMRIPrep's non-steady-state volumes.
        """
        return censor_mask(
            fd,
            self.fd_threshold,
            min_segment=self.min_segment,
            before=self.censor_before,
            after=self.censor_after,
            exclude=exclude,
        )


@dataclass(frozen=True)
class DenoiseResult:
    """Output of :func:`denoise`.

    Attributes
    ----------
    denoised : ndarray of shape (n_volumes, n_signals)
        Cleaned signals; censored frames are NaN.
    interpolated : ndarray of shape (n_volumes, n_signals)
        The same before dropping the censored frames (their values come from the
        interpolation; for figures only).
    keep : ndarray of bool, shape (n_volumes,)
        Frames kept.
    info : dict
        Confounds used, rank, filter details, censoring counts.
    """

    denoised: np.ndarray
    interpolated: np.ndarray
    keep: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Censoring
# --------------------------------------------------------------------------------------
def censor_mask(
    fd: np.ndarray,
    threshold: float | None,
    *,
    min_segment: int = MIN_SEGMENT,
    before: int = 0,
    after: int = 0,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Frames to keep after framewise-displacement censoring.

    Parameters
    ----------
    fd : ndarray of shape (n_volumes,)
        Framewise displacement (mm); a NaN first value counts as 0.
    threshold : float or None
        Frames with ``fd > threshold`` are censored; None: no displacement censoring
        (``exclude`` still applies).
    min_segment : int
        Runs of contiguous kept frames shorter than this are censored as well.
    before, after : int
        Extra frames censored before / after each high-motion frame.
    exclude : ndarray of bool, shape (n_volumes,), optional
        Frames censored whatever their displacement (non-steady-state volumes); they
        are not padded by ``before``/``after``, but the kept runs they cut short fall
        under ``min_segment`` like any other.

    Returns
    -------
    ndarray of bool, shape (n_volumes,)
        True for kept frames.
    """
    fd = np.asarray(fd, dtype=np.float64)
    if fd.ndim != 1:
        raise ValueError(f"fd must be 1-D, got shape {fd.shape}")
    n = fd.size
    keep = np.ones(n, dtype=bool)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != (n,):
            raise ValueError(f"exclude must have shape ({n},) like fd, got {exclude.shape}")
        keep &= ~exclude
    if threshold is None and keep.all():
        return keep
    if threshold is not None:
        values = np.nan_to_num(fd, nan=0.0)
        bad = np.flatnonzero(values > threshold)
        for offset in range(-int(before), int(after) + 1):
            idx = bad + offset
            keep[idx[(idx >= 0) & (idx < n)]] = False
    if min_segment > 1:
        # Censor short runs of kept frames.
        edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
        starts = np.flatnonzero(edges == 1)
        stops = np.flatnonzero(edges == -1)
        for start, stop in zip(starts, stops, strict=True):
            if stop - start < min_segment:
                keep[start:stop] = False
    return keep


def confound_matrix(table: pd.DataFrame, strategy: str) -> tuple[np.ndarray, list[str]]:
    """Columns of a confounds table for a strategy, NaNs (first derivative row) as 0.

    Parameters
    ----------
    table : pandas.DataFrame of shape (n_volumes, n_columns)
        fMRIPrep-named confounds (ours or fMRIPrep's own).
    strategy : str
        Key of :data:`STRATEGIES`.

    Returns
    -------
    matrix : ndarray of shape (n_volumes, n_confounds)
    names : list of str
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    names = list(STRATEGIES[strategy])
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise ValueError(f"confounds table lacks columns {missing} needed by strategy {strategy!r}")
    matrix = table[names].to_numpy(dtype=np.float64)
    return np.nan_to_num(matrix, nan=0.0), names


# --------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------
def butterworth_sos(
    t_r: float, high_pass: float | None, low_pass: float | None, order: int
) -> np.ndarray | None:
    """Second-order sections of the Butterworth band-pass; None when both edges are open.

    The filter of ``scipy.signal.butter(..., output="sos")``, designed without importing
    ``scipy.signal`` (:mod:`brainharmony.func.butterworth`).

    Raises
    ------
    ValueError
        When a cutoff is at or above the Nyquist frequency (never clamped).
    """
    if not (isinstance(t_r, int | float) and np.isfinite(t_r) and t_r > 0):
        raise ValueError(f"t_r must be a positive number of seconds, got {t_r!r}")
    nyquist = 0.5 / float(t_r)
    for name, value in (("low_pass", low_pass), ("high_pass", high_pass)):
        if value is not None and value >= nyquist:
            raise ValueError(
                f"{name} cutoff {value:g} Hz is at or above the Nyquist frequency "
                f"{nyquist:g} Hz of TR {t_r:g} s; lower it (it is not clamped)"
            )
    if high_pass is None and low_pass is None:
        return None
    if high_pass is not None and low_pass is not None:
        return butter_sos(order, (high_pass, low_pass), "bandpass", 1 / t_r)
    if high_pass is not None:
        return butter_sos(order, high_pass, "highpass", 1 / t_r)
    return butter_sos(order, low_pass, "lowpass", 1 / t_r)


def filter_min_volumes(sos: np.ndarray | None) -> int:
    """Fewest frames ``sosfiltfilt`` accepts with its default padding (as SciPy's)."""
    if sos is None:
        return 1
    return sos_min_length(sos) + 1


def _interpolation_matrix(n: int, keep: np.ndarray, edges: str) -> np.ndarray:
    """(n, n) matrix replacing censored frames by a cubic spline through kept frames."""
    kept = np.flatnonzero(keep)
    out = np.zeros((n, n))
    out[kept, kept] = 1.0
    lost = np.flatnonzero(~keep)
    if lost.size == 0:
        return out
    if kept.size == 1:
        out[lost, kept[0]] = 1.0
        return out
    # scipy.interpolate.CubicSpline's not-a-knot spline, without importing it.
    weights = spline_weights(kept.astype(np.float64), lost.astype(np.float64))  # (n_lost, n_kept)
    if edges == "nearest":
        weights[lost < kept[0]] = 0.0
        weights[lost < kept[0], 0] = 1.0
        weights[lost > kept[-1]] = 0.0
        weights[lost > kept[-1], -1] = 1.0
    out[np.ix_(lost, kept)] = weights
    return out


def _detrend_matrix(n: int) -> np.ndarray:
    """(n, n) projector removing mean and linear trend."""
    t = np.arange(n, dtype=np.float64)
    basis = np.stack([np.ones(n), t - t.mean()], axis=1)
    q, _ = np.linalg.qr(basis)
    return np.eye(n) - q @ q.T


def _filter_matrix(n: int, sos: np.ndarray) -> np.ndarray:
    """(n, n) matrix of ``sosfiltfilt`` (odd padding): linear in its input."""
    return sosfiltfilt(sos, np.eye(n))


def _regression_pinv(design_k: np.ndarray, n_kept: int) -> tuple[np.ndarray, int]:
    """Pseudo-inverse of the kept-frame design (rank-revealing SVD, columns scaled)."""
    scale = np.abs(design_k).max(axis=0)
    scale[scale == 0] = 1.0
    u, s, vt = np.linalg.svd(design_k / scale, full_matrices=False)
    rank = int((s > s.max(initial=0.0) * max(design_k.shape) * np.finfo(float).eps).sum())
    if rank >= n_kept:
        raise ValueError(f"{n_kept} kept frames cannot support {rank} regressors")
    return (vt[:rank].T / s[:rank]) @ u[:, :rank].T / scale[:, None], rank


def denoise_operator(
    n_volumes: int,
    t_r: float,
    confounds: np.ndarray | None,
    keep: np.ndarray | None,
    settings: DenoiseSettings,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The whole denoising chain as one matrix along time.

    Parameters
    ----------
    n_volumes : int
    t_r : float
        Repetition time in seconds.
    confounds : ndarray of shape (n_volumes, n_confounds) or None
    keep : ndarray of bool, shape (n_volumes,) or None
        Kept frames (None: all).
    settings : DenoiseSettings

    Returns
    -------
    operator : ndarray of shape (n_volumes, n_volumes)
        ``denoised_all_frames = operator @ signals``. Rows of frames trimmed off
        (``edges="trim"``) are NaN.
    keep : ndarray of bool, shape (n_volumes,)
    info : dict

    Raises
    ------
    TooFewFramesError
        Censoring left fewer than ``min_kept`` frames, or a trimmed segment too short
        for the filter.
    ValueError
        Too few volumes for the filter or the regression, a cutoff above Nyquist.
    """
    n = int(n_volumes)
    keep = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool).copy()
    if keep.shape != (n,):
        raise ValueError(f"keep must have shape ({n},), got {keep.shape}")
    sos = butterworth_sos(t_r, settings.high_pass, settings.low_pass, settings.filter_order)
    n_kept = int(keep.sum())
    if n_kept < max(settings.min_kept, 2):
        raise TooFewFramesError(
            f"only {n_kept} of {n} frames remain after censoring; at least "
            f"{max(settings.min_kept, 2)} are needed (min_kept)"
        )
    conf = None
    if confounds is not None and np.asarray(confounds).shape[1] > 0:
        conf = np.asarray(confounds, dtype=np.float64)
        if conf.shape[0] != n or not np.all(np.isfinite(conf)):
            raise ValueError(f"confounds must be finite with {n} rows, got shape {conf.shape}")
    # The segment the chain runs on (trim: drop censored frames at both ends).
    lo, hi = 0, n
    if settings.edges == "trim":
        kept_idx = np.flatnonzero(keep)
        lo, hi = int(kept_idx[0]), int(kept_idx[-1]) + 1
    m = hi - lo
    need = filter_min_volumes(sos)
    if m < need:
        # Trimmed by censoring at the ends: an exclusion; an intact run too short: an error.
        trimmed = f" (of {n}; censored frames at the ends are trimmed)" if m < n else ""
        error = TooFewFramesError if m < n else ValueError
        raise error(
            f"{m} volumes{trimmed} are too few for the Butterworth filter (order "
            f"{settings.filter_order}, {settings.high_pass}-{settings.low_pass} Hz): "
            f"it needs at least {need}"
        )
    seg_keep = keep[lo:hi]
    kept_rows = np.flatnonzero(seg_keep)
    select = np.zeros((n_kept, m))
    select[np.arange(n_kept), kept_rows] = 1.0
    interp = _interpolation_matrix(m, seg_keep, settings.edges)
    filt = np.eye(m) if sos is None else _filter_matrix(m, sos)
    info: dict[str, Any] = {
        "n_volumes": n,
        "n_kept": n_kept,
        "filter_min_volumes": need,
        "order": settings.order,
    }
    if settings.order == "filter-regress":
        # Interpolate, detrend, filter BOLD and confounds alike; fit on kept frames.
        chain = interp
        if settings.detrend:
            chain = _detrend_matrix(m) @ chain
        chain = filt @ chain
        if conf is not None:
            c_proc = chain @ conf[lo:hi]
            c_proc = c_proc - c_proc[seg_keep].mean(axis=0)
            if settings.intercept:
                c_proc = np.column_stack([np.ones(m), c_proc])
            pinv, rank = _regression_pinv(c_proc[seg_keep], n_kept)
            chain = chain - c_proc @ (pinv @ (select @ chain))
            info["n_confounds"], info["rank"] = int(conf.shape[1]), rank
    else:
        # Regress on kept frames (trend terms in the design), then interpolate the
        # censored frames of the residual, then filter.
        columns = []
        if settings.detrend:
            t = np.arange(lo, hi, dtype=np.float64)
            columns += [np.ones(m), t - t[seg_keep].mean()]
        elif settings.intercept:
            columns.append(np.ones(m))
        if conf is not None:
            c = conf[lo:hi]
            columns += list((c - c[seg_keep].mean(axis=0)).T)
            info["n_confounds"] = int(conf.shape[1])
        resid = np.eye(m)
        if columns:
            design = np.column_stack(columns)
            pinv, rank = _regression_pinv(design[seg_keep], n_kept)
            resid = np.eye(m) - design @ (pinv @ select)
            info["rank"] = rank
        chain = filt @ interp @ resid
    operator = np.full((n, n), np.nan)
    operator[lo:hi] = 0.0
    operator[lo:hi, lo:hi] = chain
    return operator, keep, info


def denoise(
    signals: np.ndarray,
    t_r: float,
    *,
    confounds: np.ndarray | None = None,
    keep: np.ndarray | None = None,
    settings: DenoiseSettings | None = None,
) -> DenoiseResult:
    """Denoise signals (voxels or parcels) of one run.

    Parameters
    ----------
    signals : ndarray of shape (n_volumes, n_signals)
        Time along axis 0. Columns that are entirely NaN (e.g. parcels without
        coverage) stay NaN; any other non-finite value is an error.
    t_r : float
        Repetition time in seconds.
    confounds : ndarray of shape (n_volumes, n_confounds), optional
    keep : ndarray of bool, shape (n_volumes,), optional
        Frames kept after censoring (:func:`censor_mask`); default all.
    settings : DenoiseSettings, optional

    Returns
    -------
    DenoiseResult
    """
    settings = settings or DenoiseSettings()
    x = np.asarray(signals, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"signals must have shape (n_volumes, n_signals), got {x.shape}")
    empty = np.all(np.isnan(x), axis=0)
    if not np.all(np.isfinite(x[:, ~empty])):
        raise ValueError("signals hold NaN or infinite values (outside all-NaN columns)")
    operator, keep, info = denoise_operator(x.shape[0], t_r, confounds, keep, settings)
    rows = np.all(np.isfinite(operator), axis=1)
    interpolated = np.full(x.shape, np.nan)
    if (~empty).any():
        interpolated[np.ix_(rows, ~empty)] = operator[rows] @ x[:, ~empty]
    denoised = interpolated.copy()
    denoised[~keep] = np.nan
    info["censored"] = np.flatnonzero(~keep).tolist()
    return DenoiseResult(denoised, interpolated, keep, info)


def to_percent(denoised: np.ndarray, raw: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Express denoised series in percent of each column's mean raw signal (kept frames).

    Parameters
    ----------
    denoised, raw : ndarray of shape (n_volumes, n_signals)
    keep : ndarray of bool, shape (n_volumes,)

    Returns
    -------
    ndarray of shape (n_volumes, n_signals)
        NaN columns where the baseline is not positive (or the column is NaN).
    """
    raw_k = np.asarray(raw, dtype=np.float64)[np.asarray(keep, dtype=bool)]
    finite = np.all(np.isfinite(raw_k), axis=0)
    baseline = np.full(raw_k.shape[1], np.nan)
    baseline[finite] = raw_k[:, finite].mean(axis=0)
    baseline[~(baseline > 0)] = np.nan
    return np.asarray(denoised, dtype=np.float64) / baseline * 100.0


def denoise_run(
    raw: np.ndarray,
    t_r: float,
    *,
    confounds: np.ndarray | None,
    keep: np.ndarray,
    settings: DenoiseSettings,
    scale: str,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """Denoise a run's parcel series, or say why the run is excluded.

    Parameters
    ----------
    raw : ndarray of shape (n_volumes, n_parcels)
    t_r : float
    confounds : ndarray of shape (n_volumes, n_confounds) or None
    keep : ndarray of bool, shape (n_volumes,)
    settings : DenoiseSettings
    scale : {"psc", "none"}
        ``psc``: percent of each parcel's mean raw signal over the kept frames.

    Returns
    -------
    denoised : ndarray of shape (n_volumes, n_parcels), or (0, n_parcels) when excluded
    info : dict
        The denoising report (``Excluded`` and ``ExclusionReason`` when excluded).
    excluded : str
        Why censoring leaves too little of the run ("" when it was denoised).

    Raises
    ------
    ValueError
        Any other problem (e.g. a cutoff above Nyquist, non-finite confounds).
    """
    keep = np.asarray(keep, dtype=bool)
    try:
        result = denoise(raw, t_r, confounds=confounds, keep=keep, settings=settings)
    except TooFewFramesError as err:
        info = {
            "n_volumes": int(keep.size),
            "n_kept": int(keep.sum()),
            "censored": np.flatnonzero(~keep).tolist(),
            "Excluded": True,
            "ExclusionReason": str(err),
        }
        return np.empty((0, np.asarray(raw).shape[1])), info, str(err)
    denoised = result.denoised
    if scale == "psc":
        denoised = to_percent(denoised, raw, keep)
    return denoised, result.info, ""


def describe_order(settings: DenoiseSettings) -> list[str]:
    """The steps of the chain, in order, for the sidecar."""
    trend = "linear detrend" if settings.detrend else "no detrend"
    if settings.order == "filter-regress":
        return [
            "censor (FD, padding, min segment)",
            "interpolate censored frames (cubic spline) in BOLD and confounds",
            f"{trend} of BOLD and confounds",
            "zero-phase Butterworth band-pass of BOLD and confounds",
            "confound regression fitted on kept frames",
            "drop censored frames",
        ]
    return [
        "censor (FD, padding, min segment)",
        f"confound regression ({trend} terms included) fitted on kept frames",
        "interpolate censored frames of the residual (cubic spline)",
        "zero-phase Butterworth band-pass",
        "drop censored frames",
    ]


def describe(settings: DenoiseSettings, names: Sequence[str]) -> dict[str, Any]:
    """Sidecar block describing the denoising."""
    return {
        "Strategy": settings.strategy,
        "Confounds": list(names),
        "FDThresholdMM": settings.fd_threshold,
        "MinSegment": settings.min_segment,
        "CensorBefore": settings.censor_before,
        "CensorAfter": settings.censor_after,
        "BandPassHz": [settings.high_pass, settings.low_pass],
        "FilterType": "butterworth",
        "FilterOrder": settings.filter_order,
        "Detrend": settings.detrend,
        "Intercept": settings.intercept,
        "CensoredEdges": settings.edges,
        "OrderName": settings.order,
        "Order": describe_order(settings),
    }
