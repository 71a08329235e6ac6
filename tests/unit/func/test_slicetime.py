"""Slice-timing correction: a known per-slice delay is undone."""

import numpy as np
import pytest

from brainharmony.func.slicetime import reference_time, slice_timing_correct


def _acquired(n_volumes: int, t_r: float, slice_times: np.ndarray, freq: float) -> tuple:
    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 2 * np.pi, (3, 4, 1, 1))
    onsets = np.arange(n_volumes) * t_r

    def signal(t):
        return np.sin(2 * np.pi * freq * t + phase) + 0.5 * np.cos(2 * np.pi * 0.013 * t + phase)

    data = np.concatenate([signal(onsets[None, None, None, :] + st) for st in slice_times], axis=2)
    return data, signal, onsets


@pytest.mark.parametrize("method", ["fourier", "cubic"])
def test_shift_to_reference_time_recovers_the_signal(method):
    t_r, n_slices = 2.0, 12
    slice_times = (np.r_[0:n_slices:2, 1:n_slices:2] * t_r / n_slices).astype(float)
    data, signal, onsets = _acquired(150, t_r, slice_times, freq=0.04)
    ref = reference_time(slice_times)
    assert ref == pytest.approx((slice_times.min() + slice_times.max()) / 2)
    out = slice_timing_correct(data, slice_times, t_r, method=method)
    truth = np.broadcast_to(signal(onsets[None, None, None, :] + ref), data.shape)
    before = np.abs(data - truth)[..., 3:-3].max()
    after = np.abs(out - truth)[..., 3:-3].max()
    assert before > 0.2
    assert after < 0.01
    # The run's ends extrapolate along the slope: no wrap-around.
    assert np.abs(out - truth).max() < 0.15


def test_slice_axis_and_reference_zero():
    t_r = 1.0
    slice_times = np.array([0.0, 0.25, 0.5, 0.75])
    data, signal, onsets = _acquired(80, t_r, slice_times, freq=0.05)
    moved = np.moveaxis(data, 2, 0)  # slices along axis 0
    out = slice_timing_correct(moved, slice_times, t_r, slice_axis=0, ref_time=0.0)
    truth = np.moveaxis(np.broadcast_to(signal(onsets[None, None, None, :]), data.shape), 2, 0)
    assert np.abs(out - truth)[..., 2:-2].max() < 0.01


def test_bad_inputs_are_refused():
    data = np.zeros((2, 2, 3, 10))
    with pytest.raises(ValueError, match="slice_times has 2 values"):
        slice_timing_correct(data, [0.0, 0.5], 1.0)
    with pytest.raises(ValueError, match=r"in \[0, t_r=1"):
        slice_timing_correct(data, [0.0, 0.5, 1.5], 1.0)
    with pytest.raises(ValueError, match="t_r must be"):
        slice_timing_correct(data, [0.0, 0.1, 0.2], -1.0)
    with pytest.raises(ValueError, match="method"):
        slice_timing_correct(data, [0.0, 0.1, 0.2], 1.0, method="linear")


@pytest.mark.parametrize("method", ["fourier", "cubic"])
def test_chunks_of_slices_give_the_whole_array_result(method):
    # 40 x 40 x 12 slices x 160 volumes: about 12 MB of temporaries per slice, so the
    # cubic correction runs in several chunks of slices; each series is shifted on its
    # own, so the result must equal the one-pass computation to the bit. The Fourier
    # shift is applied as one matrix per slice: the same to float32 rounding (1 ulp).
    from brainharmony.func.slicetime import _cubic_shift, _fourier_shift

    rng = np.random.default_rng(3)
    data = rng.standard_normal((40, 40, 12, 160)).astype(np.float32)
    slice_times = np.linspace(0.0, 0.7, 12)
    out = slice_timing_correct(data, slice_times, 0.8, method=method, ref_time=0.3)
    shifts = (0.3 - slice_times) / 0.8
    x = data.astype(np.float64)
    if method == "fourier":
        whole = _fourier_shift(x, shifts[None, None, :, None])
    else:
        whole = _cubic_shift(x, shifts)
    if method == "fourier":
        np.testing.assert_array_max_ulp(out, whole.astype(np.float32), maxulp=1)
    else:
        np.testing.assert_array_equal(out, whole.astype(np.float32))
