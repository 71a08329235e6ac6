"""Multi-TR resampling of ROI time series (anti-aliased, or the paper's decimation).

Sample times
------------
Time 0 is the first input frame; input frame ``i`` is at ``i * tr_in``. The
anti-aliased methods return frames at ``t_k = k * tr_out`` for
``k = 0 .. n_out - 1`` with

    n_out = floor((n_in - 1) * tr_in / tr_out) + 1,

that is every output time that lies within the span of the input (no
extrapolation past the last input frame). The ratio is evaluated exactly from
the TRs rounded to the microsecond.

Methods
-------
``"polyphase"`` (default)
    ``tr_out / tr_in`` is written as a reduced fraction ``down / up`` of the TRs
    in microseconds. When ``max(up, down) <= max_ratio_terms`` (1000; every TR
    pair of the papers qualifies: 0.735 -> 1.47 is 2/1, 0.735 -> 2.0 is 400/147),
    :func:`scipy.signal.resample_poly` upsamples by ``up``, filters and keeps
    every ``down``-th sample. The low-pass is a linear-phase Kaiser-window FIR
    (:func:`scipy.signal.kaiserord` / :func:`scipy.signal.firwin`) designed at the
    upsampled rate: pass band up to ``passband`` x the new Nyquist frequency
    (0.8), stop band from the new Nyquist frequency on, ``attenuation_db``
    (60 dB: ripple and leakage <= 0.1 %). The -6 dB point is half-way
    (0.9 x new Nyquist). Nothing at or above the new Nyquist frequency can
    alias into the output by more than the stop-band leakage. The series is
    extended at both ends by mirror symmetry before filtering (``padtype=
    "symmetric"``), which keeps an offset or slow drift (fMRI series carry large
    ones) from ringing into the first and last ``filter half-length`` output
    frames; those frames are still less exact than the interior.
``"interpolate"``
    For TR pairs with no small fraction (e.g. 0.7349 s -> 2.0 s): the same
    FIR low-pass applied at the input rate (zero-phase, centred, same padding),
    then a cubic spline evaluated at ``t_k``. The spline adds an error that
    grows with frequency (well under 1 % of amplitude below the new Nyquist for
    ratios >= 1.5). ``"polyphase"`` falls back to this automatically.
``"decimate"``
    The published recipe (BrainHarmonix / Brain-JEPA ``_temporal_sampling``),
    kept to reproduce it: no low-pass. With an integer ratio ``r``,
    ``n = n_in // r`` frames are taken at
    ``floor(linspace(start, start + r * n - 1, n))`` with ``start`` drawn
    uniformly from ``[0, n_in - r * n]`` by ``rng`` (``start = 0`` when no rng is
    given, so that a file-producing stage is deterministic). The step is slightly
    larger than ``r``, so a few steps are ``r + 1``; the returned ``times`` are
    the true ones (``frame * tr_in``). Frequencies above the new Nyquist alias.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Method = Literal["polyphase", "interpolate", "decimate"]
METHODS: tuple[str, ...] = ("polyphase", "interpolate", "decimate")


@dataclass(frozen=True)
class Resampled:
    """A resampled series.

    Attributes
    ----------
    data : ndarray of shape (n_out, n_rois), float64
    times : ndarray of shape (n_out,)
        Sample times in seconds, the first input frame at 0.
    tr : float
        Nominal output TR (seconds).
    method : str
        Method actually used.
    details : dict
        Filter design or decimation indices, for the sidecar.
    censored : ndarray of shape (n_out,), bool
        Output frames censored (their rows are NaN).
    """

    data: np.ndarray
    times: np.ndarray
    tr: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)
    censored: np.ndarray | None = None


def tr_label(tr_seconds: float) -> int:
    """The TR in integer milliseconds, for file names (``tr-1470``).

    Parameters
    ----------
    tr_seconds : float
        Positive, finite.

    Returns
    -------
    int
        ``round(1000 * tr)``: 0.735 -> 735, 1.47 -> 1470, 2.205 -> 2205.
    """
    tr = float(tr_seconds)
    if not math.isfinite(tr) or tr <= 0:
        raise ValueError(f"tr_seconds must be a positive number; got {tr_seconds!r}")
    ms = round(tr * 1000.0)
    if ms < 1:
        raise ValueError(f"tr_seconds={tr_seconds} is below 1 ms and has no ms label")
    return int(ms)


def _microseconds(tr: float, name: str) -> int:
    tr = float(tr)
    if not math.isfinite(tr) or tr <= 0:
        raise ValueError(f"{name} must be a positive number of seconds; got {tr!r}")
    us = round(tr * 1e6)
    if us < 1:
        raise ValueError(f"{name}={tr} s is below the 1 microsecond resolution")
    return us


def n_output_frames(n_in: int, tr_in: float, tr_out: float) -> int:
    """``floor((n_in - 1) * tr_in / tr_out) + 1``, exactly (TRs in microseconds).

    Parameters
    ----------
    n_in : int
        Input frames (>= 1).
    tr_in, tr_out : float
        Seconds.
    """
    if n_in < 1:
        raise ValueError(f"n_in must be >= 1; got {n_in}")
    a, b = _microseconds(tr_in, "tr_in"), _microseconds(tr_out, "tr_out")
    return (n_in - 1) * a // b + 1


def lowpass_fir(
    fs: float, cutoff_hz: float, *, passband: float = 0.8, attenuation_db: float = 60.0
) -> np.ndarray:
    """Linear-phase Kaiser FIR: pass band to ``passband * cutoff_hz``, stop band from ``cutoff_hz``.

    Parameters
    ----------
    fs : float
        Sampling rate of the filter (Hz).
    cutoff_hz : float
        Stop-band edge (the new Nyquist frequency).
    passband : float
        Pass-band edge as a fraction of ``cutoff_hz``, in (0, 1).
    attenuation_db : float
        Stop-band attenuation and pass-band ripple (dB), > 0.

    Returns
    -------
    ndarray of shape (n_taps,)
        Odd length, unit DC gain.
    """
    from scipy.signal import firwin, kaiserord

    if not 0 < passband < 1:
        raise ValueError(f"passband must be in (0, 1); got {passband}")
    if attenuation_db <= 0:
        raise ValueError(f"attenuation_db must be positive; got {attenuation_db}")
    nyq = fs / 2.0
    if not 0 < cutoff_hz <= nyq:
        raise ValueError(f"cutoff {cutoff_hz} Hz must be in (0, {nyq}] Hz (Nyquist at fs={fs})")
    width = (1.0 - passband) * cutoff_hz / nyq
    n_taps, beta = kaiserord(attenuation_db, width)
    n_taps |= 1
    centre = 0.5 * (1.0 + passband) * cutoff_hz
    return firwin(n_taps, centre, window=("kaiser", beta), fs=fs)


def _check_input(
    x: np.ndarray, tr_in: float, tr_out: float, censored: np.ndarray | None
) -> tuple[np.ndarray, int, int, np.ndarray, np.ndarray]:
    """Validate; return the array, the TRs in us, the censored rows and the empty columns."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"x must have shape (n_volumes, n_rois); got {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"x needs at least 2 volumes; got {a.shape[0]}")
    us_in, us_out = _microseconds(tr_in, "tr_in"), _microseconds(tr_out, "tr_out")
    if us_out < us_in:
        raise ValueError(
            f"target TR {tr_out} s is shorter than the source TR {tr_in} s; "
            "only resampling to a longer TR is supported"
        )
    if censored is None:
        cens = np.zeros(a.shape[0], dtype=bool)
    else:
        cens = np.asarray(censored, dtype=bool)
        if cens.shape != (a.shape[0],):
            raise ValueError(f"censored must have shape ({a.shape[0]},); got {cens.shape}")
    if np.isinf(a).any():
        raise ValueError("x contains infinite values")
    nan = np.isnan(a)
    empty = nan.all(axis=0)  # ROIs without data in this run (e.g. too small a parcel)
    stray = nan[:, ~empty].any(axis=1) & ~cens
    if stray.any():
        bad = np.flatnonzero(stray)[:5].tolist()
        raise ValueError(
            f"x has NaN in volumes {bad} that are not marked censored "
            "(only censored volumes and all-NaN ROIs are allowed)"
        )
    if cens.all():
        raise ValueError("every volume is censored")
    return a, us_in, us_out, cens, empty


def _mirror_pad(a: np.ndarray, n: int) -> np.ndarray:
    n = min(n, a.shape[0] - 1)
    return np.pad(a, ((n, n), (0, 0)), mode="symmetric"), n


def _fill_censored(a: np.ndarray, cens: np.ndarray) -> np.ndarray:
    """Linear interpolation over censored rows (nearest kept value beyond the ends)."""
    if not cens.any():
        return a
    kept = np.flatnonzero(~cens)
    gaps = np.flatnonzero(cens)
    out = a.copy()
    for j in range(a.shape[1]):
        out[gaps, j] = np.interp(gaps, kept, a[kept, j])
    return out


def resample_to_tr(
    x: np.ndarray,
    tr_in: float,
    tr_out: float,
    method: Method = "polyphase",
    rng: np.random.Generator | int | None = None,
    *,
    censored: np.ndarray | None = None,
    passband: float = 0.8,
    attenuation_db: float = 60.0,
    max_ratio_terms: int = 1000,
) -> Resampled:
    """Resample ``x`` from ``tr_in`` to a longer ``tr_out``.

    Parameters
    ----------
    x : ndarray of shape (n_volumes, n_rois)
        Uniformly sampled series. NaN is allowed only in censored volumes and in
        ROIs that are NaN throughout (those stay NaN columns).
    tr_in, tr_out : float
        Repetition times in seconds, ``tr_out >= tr_in``.
    method : {"polyphase", "interpolate", "decimate"}
        See the module notes.
    rng : numpy.random.Generator or int, optional
        Only for ``"decimate"``: draws the start offset; None means offset 0.
    censored : ndarray of shape (n_volumes,), bool, optional
        Volumes removed by motion censoring (their values are ignored). Before
        filtering they are filled by linear interpolation; an output frame is
        censored (NaN, and True in ``Resampled.censored``) when a censored input
        volume lies within half an output TR of it (``decimate``: when its source
        volume is censored).
    passband, attenuation_db : float
        Low-pass design (see :func:`lowpass_fir`).
    max_ratio_terms : int
        Largest ``up``/``down`` for the polyphase path; above it ``"interpolate"``.

    Returns
    -------
    Resampled
        ``data`` of shape (n_out, n_rois), ``times`` and ``censored`` of shape (n_out,).

    Raises
    ------
    ValueError
        A target TR shorter than the source (the message names both), a
        non-integer ratio for ``"decimate"``, NaN outside censored volumes, bad
        shapes or arguments.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    a, us_in, us_out, cens, empty = _check_input(x, tr_in, tr_out, censored)
    n_in = a.shape[0]
    tr_out_s = us_out / 1e6
    if us_in == us_out:
        out = a.copy()
        out[cens] = np.nan
        times = np.arange(n_in) * (us_in / 1e6)
        return Resampled(out, times, tr_out_s, "identity", censored=cens.copy())
    if method == "decimate":
        return _decimate(a, us_in, us_out, rng, cens)
    ratio = Fraction(us_out, us_in)
    down, up = ratio.numerator, ratio.denominator
    n_out = (n_in - 1) * us_in // us_out + 1
    times = np.arange(n_out) * tr_out_s
    work = a[:, ~empty]
    if work.shape[1]:
        work = _fill_censored(work, cens)
    if method == "polyphase" and max(up, down) <= max_ratio_terms:
        from scipy.signal import resample_poly

        fs_up = up / (us_in / 1e6)
        taps = lowpass_fir(fs_up, 0.5 / tr_out_s, passband=passband, attenuation_db=attenuation_db)
        y = resample_poly(work, up, down, axis=0, window=taps, padtype="symmetric")
        details = {"up": up, "down": down, "n_taps": int(taps.size), "filter_fs_hz": fs_up}
        used = "polyphase"
    else:
        if method == "polyphase":
            logger.info("TR ratio %s has no small fraction; using interpolate", ratio)
        from scipy.interpolate import CubicSpline
        from scipy.signal import oaconvolve

        taps = lowpass_fir(
            1e6 / us_in, 0.5 / tr_out_s, passband=passband, attenuation_db=attenuation_db
        )
        half = taps.size // 2
        padded, n_pad = _mirror_pad(work, half)
        filtered = oaconvolve(padded, taps[:, None], mode="same", axes=0)[n_pad : n_pad + n_in]
        t_in = np.arange(n_in) * (us_in / 1e6)
        y = CubicSpline(t_in, filtered, axis=0)(times)
        details = {"n_taps": int(taps.size), "filter_fs_hz": 1e6 / us_in, "spline": "cubic"}
        used = "interpolate"
    details.update({"passband": passband, "attenuation_db": attenuation_db})
    out = np.full((n_out, a.shape[1]), np.nan)
    out[:, ~empty] = y[:n_out]
    out_cens = np.zeros(n_out, dtype=bool)
    if cens.any():
        # output frame k is censored if a censored input volume i has |i tr_in - k tr_out|
        # <= tr_out / 2 (integer microseconds: exact)
        t_bad = np.flatnonzero(cens) * us_in
        k_lo = np.ceil((2 * t_bad - us_out) / (2 * us_out)).astype(np.int64)
        k_hi = np.floor((2 * t_bad + us_out) / (2 * us_out)).astype(np.int64)
        for lo, hi in zip(k_lo, k_hi, strict=True):
            out_cens[max(lo, 0) : min(hi, n_out - 1) + 1] = True
        out[out_cens] = np.nan
    return Resampled(out, times, tr_out_s, used, details, censored=out_cens)


def _decimate(
    a: np.ndarray,
    us_in: int,
    us_out: int,
    rng: np.random.Generator | int | None,
    cens: np.ndarray,
) -> Resampled:
    ratio = us_out / us_in
    r = round(ratio)
    if abs(ratio - r) > 1e-6 * ratio:
        raise ValueError(
            f"method 'decimate' needs an integer TR ratio; {us_out / 1e6} s / {us_in / 1e6} s "
            f"= {ratio:.6g}"
        )
    n_in = a.shape[0]
    n = n_in // r
    if n < 2:
        raise ValueError(f"{n_in} volumes give fewer than 2 frames at ratio {r}")
    clip = r * n
    delta = n_in - clip
    if rng is None:
        start = 0.0
    else:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        start = float(gen.uniform(0.0, delta))
    idx = np.floor(np.linspace(start, start + clip - 1, n)).astype(np.int64)
    idx = np.clip(idx, 0, n_in - 1)
    times = idx * (us_in / 1e6)
    details = {"ratio": r, "start": start, "frames": idx.tolist()}
    out = a[idx].copy()
    out_cens = cens[idx].copy()
    out[out_cens] = np.nan
    return Resampled(out, times, us_out / 1e6, "decimate", details, censored=out_cens)


# --------------------------------------------------------------------- censoring


def censored_volumes(data: np.ndarray, sidecar: dict[str, Any]) -> np.ndarray:
    """Censored volumes of a series: the sidecar's ``CensoredVolumes`` (0-based) plus
    rows that are NaN in every ROI that has data.

    Returns
    -------
    ndarray of shape (n_volumes,), bool
    """
    n = data.shape[0]
    cens = np.zeros(n, dtype=bool)
    listed = sidecar.get("CensoredVolumes") or []
    idx = np.asarray(listed, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"CensoredVolumes lists volumes outside 0..{n - 1}")
    cens[idx] = True
    nan = np.isnan(data)
    with_data = ~nan.all(axis=0)
    if with_data.any():
        cens |= nan[:, with_data].all(axis=1)
    return cens
