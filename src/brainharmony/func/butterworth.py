"""Digital Butterworth filters and zero-phase filtering, with numpy only.

The same filters as ``scipy.signal.butter(..., output="sos")`` and the same zero-phase
filtering as ``scipy.signal.sosfiltfilt`` (odd padding of ``3 * ntaps`` frames, initial
conditions at the step response's steady state scaled by the first sample), written
from the textbook definitions because importing ``scipy.signal`` costs about a second
per process and the functional stage runs one process per BOLD run. The second-order
sections may be grouped and ordered differently from SciPy's, so the results agree
with SciPy to rounding (``tests/unit/func/test_butterworth.py`` checks it on random
inputs, several orders, bands and repetition times).

Design (Oppenheim & Schafer, ch. 7): the analog prototype's ``order`` poles lie on the
left half of the unit circle; the cutoffs are pre-warped (``2 fs tan(pi f / fs)``), the
prototype is moved to a low-, high- or band-pass, and the bilinear transform
``z = (2 fs + s) / (2 fs - s)`` maps it to the z-plane. Zeros sit at ``z = -1``
(low-pass), ``z = +1`` (high-pass) or half at each (band-pass); the gain makes the
magnitude 1 at DC, at Nyquist or at the band's (warped) geometric centre.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Kind = Literal["lowpass", "highpass", "bandpass"]


def _prototype_poles(order: int) -> np.ndarray:
    """Poles of the analog Butterworth low-pass with cutoff 1 rad/s."""
    k = np.arange(order)
    return np.exp(1j * np.pi * (2 * k + order + 1) / (2 * order))


def _section(roots: list[complex], size: int) -> np.ndarray:
    """Coefficients ``[1, c1, c2]`` of ``prod(1 - r z^-1)`` over ``roots`` (1 or 2)."""
    if size == 1:
        return np.array([1.0, -roots[0].real, 0.0])
    r1, r2 = roots
    return np.array([1.0, -(r1 + r2).real, (r1 * r2).real])


def _pole_groups(poles: np.ndarray) -> list[list[complex]]:
    """Conjugate pairs, then real poles two by two (one left over for an odd count);
    the poles nearest the unit circle last."""
    scale = max(1.0, float(np.abs(poles).max(initial=0.0)))
    is_real = np.abs(poles.imag) <= 1e-12 * scale
    upper = sorted(poles[~is_real & (poles.imag > 0)], key=abs)
    real = sorted(poles[is_real].real, key=abs)
    groups: list[list[complex]] = []
    if len(real) % 2:
        groups.append([complex(real.pop(0))])
    while real:
        groups.append([complex(real.pop(0)), complex(real.pop(0))])
    groups += [[complex(p), complex(np.conj(p))] for p in upper]
    return sorted(groups, key=lambda g: max(abs(r) for r in g))


def butter_sos(
    order: int, cutoff_hz: float | tuple[float, float], kind: Kind, fs: float
) -> np.ndarray:
    """Second-order sections of a digital Butterworth filter.

    Parameters
    ----------
    order : int
        Filter order (a band-pass has twice as many poles).
    cutoff_hz : float or (float, float)
        Cutoff frequency in Hz; ``(low, high)`` edges for ``kind="bandpass"``.
    kind : {"lowpass", "highpass", "bandpass"}
    fs : float
        Sampling frequency in Hz.

    Returns
    -------
    sos : ndarray of shape (n_sections, 6)
        Rows ``[b0, b1, b2, 1, a1, a2]`` (SciPy's layout); a first-order section has
        ``b2 = a2 = 0``.

    Raises
    ------
    ValueError
        A non-positive order, or a cutoff outside ``(0, fs / 2)``.
    """
    order = int(order)
    if order < 1:
        raise ValueError(f"order must be a positive integer, got {order}")
    edges = np.atleast_1d(np.asarray(cutoff_hz, dtype=np.float64))
    if edges.shape != ((2,) if kind == "bandpass" else (1,)):
        raise ValueError(f"a {kind} needs {2 if kind == 'bandpass' else 1} cutoff(s), got {edges}")
    if not np.all((edges > 0) & (edges < fs / 2)) or (kind == "bandpass" and edges[0] >= edges[1]):
        raise ValueError(f"cutoffs must be increasing and within (0, {fs / 2:g}) Hz, got {edges}")
    two_fs = 2.0 * fs
    warped = two_fs * np.tan(np.pi * edges / fs)
    proto = _prototype_poles(order)
    if kind == "lowpass":
        analog = warped[0] * proto
        zeros = [-1.0] * order
        unit = 1.0  # |H| = 1 at DC
    elif kind == "highpass":
        analog = warped[0] / proto
        zeros = [1.0] * order
        unit = -1.0  # |H| = 1 at Nyquist
    elif kind == "bandpass":
        centre = np.sqrt(warped[0] * warped[1])
        half = proto * (warped[1] - warped[0]) / 2.0
        root = np.sqrt(half * half - centre * centre)
        analog = np.concatenate([half + root, half - root])
        zeros = [1.0, -1.0] * order
        unit = np.exp(2j * np.arctan(centre / two_fs))  # the warped band centre
    else:
        raise ValueError(f"kind must be lowpass, highpass or bandpass, got {kind!r}")
    poles = (two_fs + analog) / (two_fs - analog)
    gain = abs(np.prod(unit - poles) / np.prod(unit - np.asarray(zeros)))
    sections = []
    for group in _pole_groups(poles):
        size = len(group)
        taken, zeros = zeros[:size], zeros[size:]
        sections.append(
            np.concatenate([_section([complex(z) for z in taken], size), _section(group, size)])
        )
    sos = np.array(sections)
    sos[0, :3] *= gain
    return sos


def sos_steady_state(sos: np.ndarray) -> np.ndarray:
    """Initial states of a cascade at its steady state for a unit step input.

    Parameters
    ----------
    sos : ndarray of shape (n_sections, 6)

    Returns
    -------
    zi : ndarray of shape (n_sections, 2)
        Transposed direct-form-II states (``scipy.signal.sosfilt_zi``'s layout).
    """
    zi = np.empty((sos.shape[0], 2))
    level = 1.0  # the section's constant input
    for s, (b0, b1, b2, _, a1, a2) in enumerate(sos):
        out = level * (b0 + b1 + b2) / (1.0 + a1 + a2)
        zi[s] = (out - b0 * level, b2 * level - a2 * out)
        level = out
    return zi


def sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> np.ndarray:
    """Filter along axis 0 with transposed direct-form-II sections.

    Parameters
    ----------
    sos : ndarray of shape (n_sections, 6)
    x : ndarray of shape (n_samples, n_signals)
    zi : ndarray of shape (n_sections, 2, n_signals)
        Initial states (not modified).

    Returns
    -------
    ndarray of shape (n_samples, n_signals)
    """
    y = np.array(x, dtype=np.float64, copy=True)
    state = np.array(zi, dtype=np.float64, copy=True)
    for s, (b0, b1, b2, _, a1, a2) in enumerate(sos):
        z0, z1 = state[s, 0], state[s, 1]
        for t in range(y.shape[0]):
            inp = y[t]
            out = b0 * inp + z0
            z0 = b1 * inp - a1 * out + z1
            z1 = b2 * inp - a2 * out
            y[t] = out
    return y


def sos_min_length(sos: np.ndarray) -> int:
    """Padding ``3 * ntaps`` of :func:`sosfiltfilt` (ntaps: the cascade's order + 1)."""
    ntaps = 2 * sos.shape[0] + 1
    ntaps -= min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * ntaps


def sosfiltfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Zero-phase (forward-backward) filtering along axis 0, odd padding.

    Parameters
    ----------
    sos : ndarray of shape (n_sections, 6)
    x : ndarray of shape (n_samples, n_signals)
        ``n_samples`` must exceed the padding (:func:`sos_min_length`).

    Returns
    -------
    ndarray of shape (n_samples, n_signals)

    Raises
    ------
    ValueError
        Too few samples for the padding.
    """
    x = np.asarray(x, dtype=np.float64)
    pad = sos_min_length(sos)
    if x.ndim != 2 or x.shape[0] <= pad:
        raise ValueError(f"x must have shape (n_samples > {pad}, n_signals), got {x.shape}")
    # Odd extension: reflect about the end values.
    ext = np.concatenate([2.0 * x[0] - x[pad:0:-1], x, 2.0 * x[-1] - x[-2 : -pad - 2 : -1]])
    zi = sos_steady_state(sos)[:, :, None]
    y = sosfilt(sos, ext, zi * ext[0])
    y = sosfilt(sos, y[::-1], zi * y[-1])[::-1]
    return y[pad:-pad]
