"""The numpy not-a-knot spline weights agree with scipy.interpolate.CubicSpline."""

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from brainharmony.func.spline import spline_weights


@pytest.mark.parametrize("m", [2, 3, 4, 5, 9, 60, 300])
def test_weights_match_cubicspline(m):
    rng = np.random.default_rng(m)
    knots = np.sort(rng.choice(np.arange(3 * m + 10), size=m, replace=False)).astype(float)
    # Between the knots, on them, and past both ends (extrapolation).
    points = np.r_[knots[0] - 3, knots[0] - 1, knots[:-1] + 0.5, knots, knots[-1] + 2]
    want = CubicSpline(knots, np.eye(m), extrapolate=True)(points)
    got = spline_weights(knots, points)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)
    # Values: the spline through random data, as a matrix product.
    y = rng.normal(size=(m, 3)) * 100
    np.testing.assert_allclose(
        got @ y, CubicSpline(knots, y, extrapolate=True)(points), rtol=1e-11, atol=1e-9
    )


def test_bad_knots_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        spline_weights(np.array([1.0]), np.array([0.5]))
    with pytest.raises(ValueError, match="strictly increasing"):
        spline_weights(np.array([0.0, 2.0, 1.0, 3.0]), np.array([0.5]))
