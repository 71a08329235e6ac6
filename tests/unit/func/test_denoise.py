"""Denoising: censoring rules, filter behaviour, no smearing, agreement with nilearn."""

import warnings

import numpy as np
import pytest

from brainharmony.func.denoise import (
    STRATEGIES,
    DenoiseSettings,
    TooFewFramesError,
    butterworth_sos,
    censor_mask,
    confound_matrix,
    denoise,
    denoise_operator,
    denoise_run,
    filter_min_volumes,
)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, v, k = 180, 60, 10
    y = rng.normal(size=(n, v)).cumsum(0) * 0.1 + rng.normal(size=(n, v)) + 100.0
    c = rng.normal(size=(n, k)).cumsum(0)
    fd = np.abs(rng.normal(0, 0.15, n))
    fd[[0, 40, 41, 100, 176]] = [0.0, 1.5, 2.0, 0.9, 1.2]
    return y, c, fd


def test_censor_mask_threshold_padding_and_min_segment():
    fd = np.zeros(20)
    fd[[5, 12]] = 1.0
    keep = censor_mask(fd, 0.5, min_segment=1)
    assert np.flatnonzero(~keep).tolist() == [5, 12]
    keep = censor_mask(fd, 0.5, min_segment=1, before=1, after=2)
    assert np.flatnonzero(~keep).tolist() == [4, 5, 6, 7, 11, 12, 13, 14]
    # Frames 6-11 form a run of 6 kept frames: kept with min_segment 6, censored with 7.
    assert censor_mask(fd, 0.5, min_segment=6)[6:12].all()
    assert not censor_mask(fd, 0.5, min_segment=7)[6:12].any()
    assert censor_mask(fd, None).all()
    assert censor_mask(np.r_[np.nan, fd[1:]], 0.5)[0]  # NaN first FD counts as 0


def test_censor_mask_excluded_frames_are_censored_not_padded():
    fd = np.zeros(20)
    fd[8] = 1.0
    dummies = np.arange(20) < 3
    keep = censor_mask(fd, 0.5, min_segment=1, before=1, after=1, exclude=dummies)
    assert np.flatnonzero(~keep).tolist() == [0, 1, 2, 7, 8, 9]  # no padding at frame 3
    # Frames 3-6 (4 frames) between the dummies and the motion: cut by min_segment 5.
    keep = censor_mask(fd, 0.5, min_segment=5, before=1, after=1, exclude=dummies)
    assert np.flatnonzero(~keep).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    # Without displacement censoring the excluded frames are still censored.
    assert np.flatnonzero(~censor_mask(fd, None, exclude=dummies)).tolist() == [0, 1, 2]
    assert np.array_equal(DenoiseSettings(fd_threshold=None).keep(fd, exclude=dummies), ~dummies)
    with pytest.raises(ValueError, match="exclude must have shape"):
        censor_mask(fd, 0.5, exclude=dummies[:5])


def test_cutoff_above_nyquist_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"low_pass cutoff 0.3 Hz .* Nyquist frequency 0.25 Hz"):
        butterworth_sos(2.0, 0.01, 0.3, 2)
    with pytest.raises(ValueError, match="high_pass"):
        DenoiseSettings(high_pass=0.2, low_pass=0.1)


def test_too_few_volumes_for_the_filter():
    s = DenoiseSettings(strategy="none", fd_threshold=None, min_kept=2, filter_order=5)
    need = filter_min_volumes(butterworth_sos(1.0, 0.01, 0.1, 5))
    with pytest.raises(ValueError, match=f"needs at least {need}"):
        denoise(np.ones((need - 1, 3)), 1.0, settings=s)
    out = denoise(np.random.default_rng(0).normal(size=(need, 3)), 1.0, settings=s)
    assert out.denoised.shape == (need, 3)


def test_censoring_that_leaves_too_little_is_an_exclusion_and_a_short_run_an_error():
    """Too few kept frames, or a segment trimmed by censoring below the filter's minimum,
    raise TooFewFramesError (the run is excluded downstream); an intact run that is too
    short stays a plain ValueError (bad input)."""
    s = DenoiseSettings(strategy="none", fd_threshold=None, min_kept=20, filter_order=5)
    need = filter_min_volumes(butterworth_sos(1.0, 0.01, 0.1, 5))
    x = np.random.default_rng(0).normal(size=(need + 10, 3))
    keep = np.zeros(need + 10, dtype=bool)
    keep[:19] = True
    with pytest.raises(TooFewFramesError, match=r"only 19 of \d+ frames remain after censoring"):
        denoise(x, 1.0, keep=keep, settings=s)
    keep = np.zeros(need + 10, dtype=bool)
    keep[5 : need - 1] = True  # enough frames kept, but the trimmed segment is too short
    trim = DenoiseSettings(strategy="none", min_kept=20, filter_order=5, edges="trim")
    with pytest.raises(TooFewFramesError, match=rf"of {need + 10}; censored frames at the ends"):
        denoise(x, 1.0, keep=keep, settings=trim)
    with pytest.raises(ValueError, match="needs at least") as caught:
        denoise(
            x[: need - 1],
            1.0,
            settings=DenoiseSettings(strategy="none", min_kept=2, filter_order=5),
        )
    assert not isinstance(caught.value, TooFewFramesError)
    # denoise_run: the exclusion comes back as a reason with an empty series.
    keep[:] = False
    keep[:3] = True
    out, info, reason = denoise_run(x, 1.0, confounds=None, keep=keep, settings=s, scale="psc")
    assert out.shape == (0, 3) and reason.startswith("only 3 of")
    assert info["Excluded"] is True and info["ExclusionReason"] == reason
    assert info["n_kept"] == 3
    out, info, reason = denoise_run(
        x + 100.0, 1.0, confounds=None, keep=np.ones(need + 10, bool), settings=s, scale="psc"
    )
    assert reason == "" and out.shape == x.shape and "Excluded" not in info


def test_band_pass_removes_out_of_band_frequencies():
    t_r, n = 1.0, 400
    t = np.arange(n) * t_r
    inband = np.sin(2 * np.pi * 0.05 * t)
    slow = 3 * np.sin(2 * np.pi * 0.002 * t)
    fast = np.sin(2 * np.pi * 0.3 * t)
    s = DenoiseSettings(strategy="none", fd_threshold=None, filter_order=4)
    out = denoise((inband + slow + fast)[:, None], t_r, settings=s).denoised[:, 0]
    inner = slice(60, -60)
    assert np.corrcoef(out[inner], inband[inner])[0, 1] > 0.99
    assert np.std(out[inner] - inband[inner]) < 0.1


def test_censored_frames_do_not_leak_into_kept_frames(data):
    """A spike in a censored frame changes nothing in the kept frames' output."""
    y, c, fd = data
    keep = censor_mask(fd, 0.5, min_segment=3)
    spiked = y.copy()
    spiked[~keep] += 1e4
    c_spiked = c.copy()
    c_spiked[~keep] -= 50.0
    for order in ("regress-filter", "filter-regress"):
        s = DenoiseSettings(strategy="none", order=order, min_kept=10)
        a = denoise(y, 0.8, confounds=c, keep=keep, settings=s).denoised
        b = denoise(spiked, 0.8, confounds=c_spiked, keep=keep, settings=s).denoised
        np.testing.assert_allclose(a[keep], b[keep], atol=1e-8)
        assert np.isnan(a[~keep]).all()


def test_operator_commutes_with_averaging(data):
    y, c, fd = data
    keep = censor_mask(fd, 0.5)
    s = DenoiseSettings(min_kept=10)
    weights = np.random.default_rng(3).dirichlet(np.ones(y.shape[1]), size=4).T  # (v, 4)
    voxelwise = denoise(y, 0.8, confounds=c, keep=keep, settings=s).denoised[keep] @ weights
    parcelwise = denoise(y @ weights, 0.8, confounds=c, keep=keep, settings=s).denoised[keep]
    np.testing.assert_allclose(voxelwise, parcelwise, atol=1e-9)


NILEARN_CASES = [
    # (detrend, censor, extrapolate)
    (False, False, True),
    (True, False, True),
    (False, True, True),
    (True, True, True),
    (False, True, False),
    (True, True, False),
]


@pytest.mark.parametrize(("detrend", "censor", "extrapolate"), NILEARN_CASES)
def test_filter_regress_equals_nilearn_clean(data, detrend, censor, extrapolate):
    from nilearn.signal import clean

    y, c, fd = data
    keep = censor_mask(fd, 0.5, min_segment=3) if censor else None
    s = DenoiseSettings(
        strategy="none",
        order="filter-regress",
        detrend=detrend,
        filter_order=3,
        edges="extrapolate" if extrapolate else "trim",
        min_kept=10,
    )
    mine = denoise(y, 0.8, confounds=c, keep=keep, settings=s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = clean(
            y.copy(),
            detrend=detrend,
            standardize=False,
            confounds=c.copy(),
            sample_mask=None if keep is None else np.flatnonzero(keep),
            filter="butterworth",
            low_pass=0.1,
            high_pass=0.01,
            t_r=0.8,
            extrapolate=extrapolate,
            butterworth__order=3,
        )
    got = mine.denoised[mine.keep]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("detrend", "censor"), [(False, False), (True, False), (False, True)])
def test_regress_filter_equals_two_chained_nilearn_calls(data, detrend, censor):
    """Regression (no filter), then band-pass with the same sample mask, in nilearn."""
    from nilearn.signal import clean

    y, c, fd = data
    keep = censor_mask(fd, 0.5, min_segment=3) if censor else None
    s = DenoiseSettings(
        strategy="none",
        order="regress-filter",
        detrend=detrend,
        edges="extrapolate",
        min_kept=10,
    )
    mine = denoise(y, 0.8, confounds=c, keep=keep, settings=s)
    mask = None if keep is None else np.flatnonzero(keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step1 = clean(
            y.copy(),
            detrend=detrend,
            standardize=False,
            confounds=c.copy(),
            sample_mask=mask,
            filter=False,
            t_r=0.8,
        )
        full = np.zeros_like(y)
        if keep is None:
            full = step1
        else:
            full[keep] = step1
        ref = clean(
            full,
            detrend=False,
            standardize=False,
            sample_mask=mask,
            filter="butterworth",
            low_pass=0.1,
            high_pass=0.01,
            t_r=0.8,
            extrapolate=True,
            butterworth__order=2,
        )
    np.testing.assert_allclose(mine.denoised[mine.keep], ref, atol=1e-5, rtol=0)


def test_strategies_pick_fmriprep_columns():
    import pandas as pd

    from brainharmony.func.confounds import build_confounds

    n = 30
    rng = np.random.default_rng(0)
    table = build_confounds(
        rng.normal(size=(n, 6)),
        {k: rng.normal(size=n) for k in ("global_signal", "csf", "white_matter")},
    )
    m24, names = confound_matrix(table, "24P+WM+CSF+GS")
    assert m24.shape == (n, 27) and names[-3:] == ["white_matter", "csf", "global_signal"]
    m36, names36 = confound_matrix(table, "36P")
    assert m36.shape == (n, 36) and "global_signal_derivative1_power2" in names36
    assert np.isfinite(m36).all()  # first derivative row (n/a) becomes 0
    assert len(STRATEGIES["24P"]) == 24
    m18, names18 = confound_matrix(table, "18P")
    assert m18.shape == (n, 18) and names18[:2] == ["trans_x", "trans_x_derivative1"]
    assert names18[-2:] == ["global_signal", "global_signal_derivative1"]
    assert not any(name.endswith("power2") for name in names18)
    with pytest.raises(ValueError, match="lacks columns"):
        confound_matrix(pd.DataFrame({"trans_x": np.zeros(n)}), "24P")


def test_rank_deficient_confounds_and_too_many_regressors():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 3))
    c = rng.normal(size=(40, 2))
    c = np.c_[c, c[:, 0] * 2.0]  # collinear column
    s = DenoiseSettings(strategy="none", fd_threshold=None, high_pass=None, low_pass=None)
    _, _, info = denoise_operator(40, 1.0, c, None, s)
    assert info["rank"] == 4  # mean, trend, two independent confounds
    with pytest.raises(ValueError, match="cannot support"):
        denoise(y, 1.0, confounds=rng.normal(size=(40, 45)), settings=s)
