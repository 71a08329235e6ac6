"""Confounds: fMRIPrep column names, expansions, DVARS, tissue masks."""

import numpy as np
import pytest

from brainharmony.func.confounds import (
    build_confounds,
    dvars,
    expand,
    outlier_columns,
    outlier_frames,
    tissue_masks,
    with_motion_outliers,
)


def test_columns_follow_fmriprep():
    rng = np.random.default_rng(0)
    n = 12
    params = rng.normal(size=(n, 6))
    tissue = {k: rng.normal(size=n) for k in ("global_signal", "csf", "white_matter")}
    table = build_confounds(params, tissue, dvars_values=dvars(rng.normal(size=(50, n)) + 10))
    for base in ("trans_x", "rot_z", "global_signal", "csf", "white_matter"):
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            assert f"{base}{suffix}" in table.columns
    for col in ("framewise_displacement", "dvars", "std_dvars"):
        assert col in table.columns
        assert np.isnan(table[col].iloc[0])
    np.testing.assert_allclose(table["trans_x"], params[:, 0])
    np.testing.assert_allclose(table["trans_x_derivative1"].iloc[1:], np.diff(params[:, 0]))
    np.testing.assert_allclose(table["rot_y_power2"], params[:, 4] ** 2)
    assert np.isnan(table["csf_derivative1_power2"].iloc[0])


def test_expand_and_input_checks():
    import pandas as pd

    out = expand(pd.DataFrame({"a": [1.0, 3.0, 6.0]}))
    assert out.columns.tolist() == ["a", "a_derivative1", "a_derivative1_power2", "a_power2"]
    assert out["a_derivative1_power2"].tolist()[1:] == [4.0, 9.0]
    with pytest.raises(ValueError, match="lacks"):
        build_confounds(np.zeros((3, 6)), {"csf": np.zeros(3)})


def test_dvars_standardised_near_one_for_white_noise():
    rng = np.random.default_rng(0)
    x = 1000 + rng.normal(size=(2000, 200))
    raw, std = dvars(x)
    assert np.isnan(raw[0]) and np.isnan(std[0])
    assert np.nanmedian(std) == pytest.approx(1.0, abs=0.05)
    x[:, 100] += 5.0  # a jump
    _, std2 = dvars(x)
    assert std2[100] > 3 * np.nanmedian(std2)


def _dvars_reference(samples):
    """DVARS on the whole float64 array with np.percentile and np.median."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.all(np.isfinite(x), axis=1)]
    x = x[np.std(x, axis=1) > 1e-8 * max(float(np.abs(x).max(initial=0.0)), 1e-30)]
    median = float(np.median(x))
    x = x / median * 1000.0 if median != 0 else x
    q75, q25 = np.percentile(x, [75, 25], axis=1)
    centred = x - x.mean(axis=1, keepdims=True)
    denom = np.sum(centred * centred, axis=1)
    ar1 = np.sum(centred[:, 1:] * centred[:, :-1], axis=1) / np.where(denom > 0, denom, 1.0)
    expected = float(np.mean(np.sqrt(np.clip(2.0 * (1.0 - ar1), 0.0, None)) * (q75 - q25) / 1.349))
    diff = np.diff(x, axis=1)
    raw = np.sqrt(np.mean(diff * diff, axis=0))
    return np.r_[np.nan, raw], np.r_[np.nan, raw / expected]


@pytest.mark.parametrize(
    ("n_vox", "n_vol", "dtype", "sign"),
    [
        (700, 150, np.float32, 1),
        (513, 40, np.float64, 1),
        (300, 37, np.float32, -1),
        (1, 9, np.int16, 1),
    ],
)
def test_dvars_blocks_give_the_whole_array_result_bit_for_bit(n_vox, n_vol, dtype, sign):
    """Block-wise statistics, sorted-row quartiles and the float32 median are exact."""
    rng = np.random.default_rng(n_vox)
    x = rng.normal(800, 50, (n_vox, n_vol)) + rng.normal(0, 200, (n_vox, 1))
    if n_vox > 100:
        x[3] = np.nan  # dropped: not finite
        x[5] = 7.0  # dropped: constant
    x = (sign * x).astype(dtype)
    for got, want in zip(dvars(x, chunk=64), _dvars_reference(x), strict=True):
        np.testing.assert_array_equal(got, want)


def test_tissue_masks_on_a_coarse_grid():
    from brainharmony.atlas import grid_affine

    affine, shape = grid_affine(4.0)
    masks, report = tissue_masks(affine, shape)
    assert set(masks) == {"brain", "gm", "wm", "csf"}
    for name in ("wm", "csf"):
        assert masks[name].sum() >= 5
        assert not (masks[name] & ~masks["brain"]).any()
    assert report["WMVoxels"] > report["CSFVoxels"] > 0


def test_outlier_columns_follow_fmriprep():
    import pandas as pd

    frames = np.zeros(8, dtype=bool)
    frames[[2, 5]] = True
    cols = outlier_columns(frames)
    assert cols.columns.tolist() == ["motion_outlier00", "motion_outlier01"]
    assert cols["motion_outlier00"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert cols["motion_outlier01"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert outlier_columns(np.zeros(4, dtype=bool)).shape == (4, 0)
    table = pd.concat([pd.DataFrame({"a": np.arange(8.0)}), cols], axis=1)
    np.testing.assert_array_equal(outlier_frames(table, "motion_outlier"), frames)
    assert not outlier_frames(table).any()  # no non_steady_state_outlier column
    table["non_steady_state_outlier00"] = 0.5
    with pytest.raises(ValueError, match=r"non_steady_state_outlier00.*one-hot"):
        outlier_frames(table)


def test_with_motion_outliers_replaces_input_columns_and_leaves_dummies_alone():
    import pandas as pd

    n = 10
    dummies = np.arange(n) < 2
    table = pd.concat(
        [
            pd.DataFrame({"framewise_displacement": np.linspace(0, 1, n)}),
            outlier_columns(dummies, "non_steady_state_outlier"),
            outlier_columns(np.arange(n) >= 7),  # a previous censoring: 3 columns
        ],
        axis=1,
    )
    keep = np.ones(n, dtype=bool)
    keep[[0, 1, 4, 9]] = False
    out, replaced = with_motion_outliers(table, keep, dummies)
    assert replaced == 3
    motion = outlier_frames(out, "motion_outlier")
    assert np.flatnonzero(motion).tolist() == [4, 9]
    np.testing.assert_array_equal(motion | outlier_frames(out), ~keep)
    assert [c for c in out.columns if not c.startswith("motion_outlier")] == [
        "framewise_displacement",
        "non_steady_state_outlier00",
        "non_steady_state_outlier01",
    ]
    with pytest.raises(ValueError, match="rows"):
        with_motion_outliers(table, keep[:5])
