"""Slice-timing correction: resample every slice's time series to one reference time.

Each slice ``k`` of volume ``n`` was acquired at ``n * t_r + slice_times[k]``. The
corrected series of every voxel is its value at ``n * t_r + ref_time``, obtained by
shifting each slice's series by ``(ref_time - slice_times[k]) / t_r`` samples.

The reference time defaults to the middle of the slice acquisition range,
``min(SliceTiming) + 0.5 * (max - min)`` (fMRIPrep's ``--slice-time-ref 0.5``); after
correction volume ``n`` stands for time ``n * t_r + ref_time`` (recorded as
``StartTime`` in the output sidecar, as fMRIPrep does).

Two interpolators, both vectorised over the voxels (no Python loop over voxels):

* ``"fourier"`` (default): remove each series' straight line through its end
  samples, extend the remainder point-symmetrically (a smooth periodic signal of
  length ``2 (n - 1)``), apply the shift as a linear phase in the frequency domain,
  put the line back at the shifted times. Linear along time, so it is applied as one
  ``n_volumes x n_volumes`` matrix per slice (built by shifting the identity).
* ``"cubic"``: cubic B-spline along time on the series extended point-symmetrically
  at both ends; the shift is a 4-tap filter on the spline coefficients whose
  weights depend only on the slice.

At the two ends of the run a shift reaches up to one sample outside the data; both
methods then extrapolate along the local slope (no wrap-around, no folding back).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Method = Literal["fourier", "cubic"]
METHODS: tuple[str, ...] = ("fourier", "cubic")


def reference_time(slice_times: Sequence[float] | np.ndarray, fraction: float = 0.5) -> float:
    """Reference time of the corrected volumes, in seconds after each volume's onset.

    Parameters
    ----------
    slice_times : sequence of float, shape (n_slices,)
        BIDS ``SliceTiming`` (seconds).
    fraction : float
        Position in the acquisition range ``[min, max]``: 0 is the first slice,
        0.5 (default, as fMRIPrep) the middle, 1 the last.

    Returns
    -------
    float
    """
    times = np.asarray(slice_times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or not np.all(np.isfinite(times)):
        raise ValueError(f"slice_times must be a non-empty 1-D finite array, got {times!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    return float(times.min() + fraction * (times.max() - times.min()))


def _check(
    data: np.ndarray, slice_times: np.ndarray, t_r: float, slice_axis: int, ref_time: float
) -> None:
    if data.ndim != 4:
        raise ValueError(f"data must be 4-D (x, y, z, t), got shape {data.shape}")
    if not (isinstance(t_r, int | float) and np.isfinite(t_r) and t_r > 0):
        raise ValueError(f"t_r must be a positive number of seconds, got {t_r!r}")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
    if slice_times.ndim != 1 or slice_times.size != data.shape[slice_axis]:
        raise ValueError(
            f"slice_times has {slice_times.size} values but axis {slice_axis} of the data "
            f"has {data.shape[slice_axis]} slices"
        )
    if not np.all(np.isfinite(slice_times)) or slice_times.min() < 0 or slice_times.max() >= t_r:
        raise ValueError(
            f"slice_times must be finite and in [0, t_r={t_r:g}) s, got "
            f"{slice_times.min():g} to {slice_times.max():g}"
        )
    if not (np.isfinite(ref_time) and 0 <= ref_time < t_r):
        raise ValueError(f"ref_time must be in [0, t_r={t_r:g}) s, got {ref_time!r}")
    if data.shape[3] < 4:
        raise ValueError(f"slice-timing correction needs at least 4 volumes, got {data.shape[3]}")


def slice_timing_correct(
    data: np.ndarray,
    slice_times: Sequence[float] | np.ndarray,
    t_r: float,
    *,
    slice_axis: int = 2,
    ref_time: float | None = None,
    method: Method = "fourier",
) -> np.ndarray:
    """Shift every slice's time series to the common reference time.

    Parameters
    ----------
    data : ndarray of shape (n_x, n_y, n_z, n_volumes)
        BOLD data (any real dtype; computed in float64, returned as float32).
    slice_times : sequence of float, shape (n_slices,)
        Acquisition time of each slice after the volume onset, seconds (BIDS
        ``SliceTiming``), ordered along ``slice_axis``.
    t_r : float
        Repetition time in seconds.
    slice_axis : int
        Voxel axis (0, 1 or 2) along which ``slice_times`` are ordered.
    ref_time : float, optional
        Target time after each volume onset, seconds. Default
        :func:`reference_time` (middle of the acquisition range).
    method : {"fourier", "cubic"}
        Interpolator along time.

    Returns
    -------
    ndarray of shape (n_x, n_y, n_z, n_volumes), float32
        The corrected data: volume ``n`` is the signal at ``n * t_r + ref_time``.
    """
    times = np.asarray(slice_times, dtype=np.float64)
    if ref_time is None:
        ref_time = reference_time(times)
    _check(data, times, t_r, slice_axis, float(ref_time))
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    shifts = (float(ref_time) - times) / float(t_r)  # samples, in (-1, 1)
    moved = np.moveaxis(np.asarray(data), slice_axis, 2)  # slices on axis 2
    out = np.empty(moved.shape, dtype=np.float32)
    n_slices, n_vol = moved.shape[2], moved.shape[3]
    if method == "fourier":
        # The Fourier shift is linear along time and the same for every voxel of a
        # slice: one (n, n) matrix per distinct shift (the shift applied to the
        # identity), applied by a matrix product. The values of transforming every
        # series (to rounding), in a fraction of the time.
        matrices: dict[float, np.ndarray] = {}
        for k in range(n_slices):
            shift = float(shifts[k])
            if shift not in matrices:
                matrices[shift] = _fourier_shift(np.eye(n_vol), np.full((1, 1), shift))
            series = np.asarray(moved[:, :, k, :], dtype=np.float64).reshape(-1, n_vol)
            out[:, :, k, :] = (series @ matrices[shift]).reshape((*out.shape[:2], n_vol))
    else:
        # A few slices at a time (whole slices share one shift), about 64 MB of float64
        # temporaries per chunk. Larger chunks cost more, not less: hundreds of MB of
        # temporaries are fresh pages the kernel zeroes on first touch in every call,
        # while the buffers of smaller chunks are reused by the allocator.
        per_slice = moved.shape[0] * moved.shape[1] * n_vol * 8 * 6
        step = max(1, min(n_slices, int(64e6 // max(per_slice, 1))))
        for start in range(0, n_slices, step):
            stop = min(n_slices, start + step)
            chunk = np.asarray(moved[:, :, start:stop, :], dtype=np.float64)
            out[:, :, start:stop, :] = _cubic_shift(chunk, shifts[start:stop])
    logger.debug(
        "slice timing: %d slices, ref %.3f s, shifts %.3f..%.3f samples (%s)",
        n_slices,
        ref_time,
        shifts.min(),
        shifts.max(),
        method,
    )
    return np.moveaxis(out, 2, slice_axis)


def _fourier_shift(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Value of each series at ``n + shift`` (last axis time), Fourier interpolation."""
    n = x.shape[-1]
    t = np.arange(n, dtype=np.float64)
    # Remove the straight line through the first and last samples: the remainder is
    # zero at both ends, so its point-symmetric (odd) extension about the end samples
    # is smooth (value and slope continuous) with period 2 (n - 1).
    first = x[..., :1]
    slope = (x[..., -1:] - first) / (n - 1)
    rest = x - (first + slope * t)
    extended = np.concatenate([rest, -rest[..., -2:0:-1]], axis=-1)
    period = extended.shape[-1]
    spectrum = np.fft.rfft(extended, axis=-1)
    freqs = np.fft.rfftfreq(period)  # cycles per sample
    phase = np.exp(2j * np.pi * freqs * shift)
    if period % 2 == 0:
        # Nyquist bin: keep it real (a shifted cosine at Nyquist is not representable).
        phase[..., -1] = np.cos(np.pi * shift[..., 0])
    shifted = np.fft.irfft(spectrum * phase, n=period, axis=-1)[..., :n]
    return shifted + first + slope * (t + shift)


def _cubic_shift(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Cubic B-spline value of each series at ``n + shift[k]`` (slices on axis 2)."""
    from scipy.ndimage import spline_filter1d

    n = x.shape[-1]
    # Point-symmetric extension about the end samples (keeps the local slope, so a
    # shift past either end extrapolates linearly instead of folding back).
    ext = min(8, n - 1)
    head = 2 * x[..., :1] - x[..., ext:0:-1]
    tail = 2 * x[..., -1:] - x[..., -2 : -2 - ext : -1]
    coef = spline_filter1d(
        np.concatenate([head, x, tail], axis=-1), order=3, axis=-1, mode="mirror"
    )
    out = np.empty_like(x)
    base = np.floor(shifts).astype(np.int64)
    frac = shifts - base
    for b in np.unique(base):
        sel = np.flatnonzero(base == b)
        u = frac[sel][None, None, :, None]
        # Cubic B-spline weights for taps at offsets -1, 0, 1, 2 around floor(n + s).
        w = (
            (1 - u) ** 3 / 6,
            (3 * u**3 - 6 * u**2 + 4) / 6,
            (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6,
            u**3 / 6,
        )
        acc = np.zeros((x.shape[0], x.shape[1], sel.size, n))
        for j, wj in zip(range(-1, 3), w, strict=True):
            start = ext + int(b) + j
            acc += wj * coef[:, :, sel, start : start + n]
        out[:, :, sel, :] = acc
    return out
