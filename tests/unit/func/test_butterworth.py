"""The numpy Butterworth design and zero-phase filter agree with scipy.signal."""

import numpy as np
import pytest
from scipy import signal

from brainharmony.func.butterworth import (
    butter_sos,
    sos_min_length,
    sos_steady_state,
    sosfiltfilt,
)

CASES = [
    (t_r, order, kind, cut)
    for t_r in (0.72, 0.8, 2.0, 3.0)
    for order in (1, 2, 3, 4, 5)
    for kind, cut in (
        ("bandpass", (0.01, 0.1)),
        ("bandpass", (0.009, 0.08)),
        ("lowpass", 0.1),
        ("highpass", 0.01),
    )
]


@pytest.mark.parametrize(("t_r", "order", "kind", "cut"), CASES)
def test_design_and_filter_match_scipy(t_r, order, kind, cut):
    fs = 1.0 / t_r
    ours = butter_sos(order, cut, kind, fs)
    ref = signal.butter(order, cut, btype=kind, output="sos", fs=fs)
    assert ours.shape == ref.shape
    assert sos_min_length(ours) == sos_min_length(ref)
    _, h_ours = signal.sosfreqz(ours, worN=256, fs=fs)
    _, h_ref = signal.sosfreqz(ref, worN=256, fs=fs)
    np.testing.assert_allclose(h_ours, h_ref, rtol=0, atol=1e-10)
    rng = np.random.default_rng(order)
    n = sos_min_length(ref) + int(rng.integers(1, 200))
    x = rng.normal(size=(n, 5)).cumsum(axis=0) + 100.0
    expected = signal.sosfiltfilt(ref, x, axis=0)
    np.testing.assert_allclose(sosfiltfilt(ours, x), expected, rtol=0, atol=1e-10 * 100)
    # On SciPy's own sections the filter agrees to rounding, not just the design.
    np.testing.assert_allclose(sosfiltfilt(ref, x), expected, rtol=1e-13, atol=1e-11)


def test_steady_state_matches_sosfilt_zi():
    ref = signal.butter(3, (0.01, 0.1), btype="bandpass", output="sos", fs=0.5)
    np.testing.assert_allclose(
        sos_steady_state(ref), signal.sosfilt_zi(ref), rtol=1e-12, atol=1e-14
    )


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="within"):
        butter_sos(2, 0.3, "lowpass", 0.5)
    with pytest.raises(ValueError, match="increasing"):
        butter_sos(2, (0.1, 0.01), "bandpass", 0.5)
    with pytest.raises(ValueError, match="order"):
        butter_sos(0, 0.1, "lowpass", 0.5)
    sos = butter_sos(2, (0.01, 0.1), "bandpass", 0.5)
    with pytest.raises(ValueError, match="n_samples >"):
        sosfiltfilt(sos, np.ones((sos_min_length(sos), 2)))
