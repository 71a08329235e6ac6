"""Weights of the not-a-knot cubic spline, with numpy only.

``spline_weights(knots, points)`` is the matrix ``W`` with ``W @ y`` the value at
``points`` of the cubic spline through ``(knots, y)`` with not-a-knot ends, extrapolated
with the end pieces: what ``scipy.interpolate.CubicSpline(knots, np.eye(m))(points)``
gives (two knots: the straight line; three: the parabola), without importing
``scipy.interpolate`` (about 0.15 s per process). Agreement with SciPy to rounding is
tested in ``tests/unit/func/test_spline.py``.

The spline is written in Hermite form: the slopes ``s`` at the knots solve the usual
system (continuous second derivative at the interior knots, continuous third derivative
at the second and second-to-last knots), and on ``[x_i, x_i+1]`` with ``u = t - x_i``,
``h = x_i+1 - x_i`` and secant slope ``d``, the value is
``y_i + s_i u + (3 d - 2 s_i - s_i+1) u^2 / h + (s_i + s_i+1 - 2 d) u^3 / h^2``.
"""

from __future__ import annotations

import numpy as np


def _slopes(x: np.ndarray) -> np.ndarray:
    """(m, m) matrix taking knot values to not-a-knot spline slopes (m >= 4)."""
    m = x.size
    h = np.diff(x)
    eye = np.eye(m)
    secant = (eye[1:] - eye[:-1]) / h[:, None]  # (m - 1, m): secant slopes from values
    lhs = np.zeros((m, m))
    rhs = np.zeros((m, m))
    i = np.arange(1, m - 1)
    lhs[i, i - 1] = h[i]
    lhs[i, i] = 2.0 * (h[i - 1] + h[i])
    lhs[i, i + 1] = h[i - 1]
    rhs[i] = 3.0 * (h[i, None] * secant[i - 1] + h[i - 1, None] * secant[i])
    # Not-a-knot: the third derivative is continuous at x_1 and at x_m-2.
    lhs[0, :2] = h[1], h[0] + h[1]
    rhs[0] = ((h[0] + 2.0 * (h[0] + h[1])) * h[1] * secant[0] + h[0] ** 2 * secant[1]) / (
        h[0] + h[1]
    )
    lhs[-1, -2:] = h[-1] + h[-2], h[-2]
    rhs[-1] = (h[-1] ** 2 * secant[-2] + (2.0 * (h[-2] + h[-1]) + h[-1]) * h[-2] * secant[-1]) / (
        h[-2] + h[-1]
    )
    return np.linalg.solve(lhs, rhs)


def spline_weights(knots: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Weights of the not-a-knot cubic spline through ``knots`` at ``points``.

    Parameters
    ----------
    knots : ndarray of shape (m,)
        Strictly increasing abscissae, ``m >= 2``.
    points : ndarray of shape (k,)
        Where to evaluate (outside ``knots``: the end pieces extended).

    Returns
    -------
    ndarray of shape (k, m)
        Row ``j``: the spline's value at ``points[j]`` as weights of the knot values.

    Raises
    ------
    ValueError
        Fewer than two knots, or knots not strictly increasing.
    """
    x = np.asarray(knots, dtype=np.float64)
    t = np.asarray(points, dtype=np.float64)
    m = x.size
    if x.ndim != 1 or m < 2 or np.any(np.diff(x) <= 0):
        raise ValueError(f"knots must be strictly increasing with at least 2 values, got {x}")
    eye = np.eye(m)
    if m == 2:  # the straight line
        u = (t - x[0]) / (x[1] - x[0])
        return np.stack([1.0 - u, u], axis=1)
    if m == 3:  # the parabola through the three knots (Lagrange form)
        cols = []
        for j in range(3):
            a, b = (x[k] for k in range(3) if k != j)
            cols.append((t - a) * (t - b) / ((x[j] - a) * (x[j] - b)))
        return np.stack(cols, axis=1)
    slopes = _slopes(x)
    piece = np.clip(np.searchsorted(x, t, side="right") - 1, 0, m - 2)
    h = (x[piece + 1] - x[piece])[:, None]
    u = (t - x[piece])[:, None]
    y0, y1 = eye[piece], eye[piece + 1]
    s0, s1 = slopes[piece], slopes[piece + 1]
    secant = (y1 - y0) / h
    c2 = (3.0 * secant - 2.0 * s0 - s1) / h
    c3 = (s0 + s1 - 2.0 * secant) / (h * h)
    return y0 + u * (s0 + u * (c2 + u * c3))
