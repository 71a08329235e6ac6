"""Robust-scaling statistics: definitions, artifact round trip, identical application."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from brainharmony.io import InputDataError
from brainharmony.pipelines import scaling as scaling_command
from brainharmony.timeseries import scaling as sc


def _series(rng, offsets, n=60, noise=1.0):
    return [o + noise * rng.standard_normal((n, len(o))) for o in offsets]


def test_subject_means_is_the_official_statistic():
    rng = np.random.default_rng(0)
    offsets = rng.normal(1000, 50, size=(9, 4))
    series = _series(rng, offsets)
    stats = sc.compute_robust_stats(series, roi_names=list("abcd"))
    means = np.array([s.mean(axis=0) for s in series])
    q25, q50, q75 = np.percentile(means, [25, 50, 75], axis=0)
    np.testing.assert_allclose(stats.median, q50)
    np.testing.assert_allclose(stats.iqr, q75 - q25)
    assert stats.mode == "subject_means" and stats.n_subjects == 9 and stats.n_frames == 540
    # the IQR reflects the spread of offsets between subjects (~67), not the noise (~1.35)
    assert (stats.iqr > 20).all()


def test_runs_of_a_subject_are_averaged_first():
    one = np.zeros((10, 1))
    runs = [one + 0.0, one + 10.0, one + 10.0, one + 10.0, one + 20.0, one + 21.0]
    # as six subjects: {0, 10, 10, 10, 20, 21} -> median 10, IQR 17.5 - 10
    alone = sc.compute_robust_stats(runs)
    assert alone.median[0] == 10.0 and alone.iqr[0] == pytest.approx(7.5)
    # subject "b" has the three runs at 10 and counts once: {0, 10, 20, 21}
    stats = sc.compute_robust_stats(runs, ["a", "b", "b", "b", "c", "d"])
    assert stats.median[0] == 15.0 and stats.iqr[0] == pytest.approx(20.25 - 7.5)
    assert stats.n_subjects == 4 and stats.n_series == 6


def test_all_frames_mode():
    rng = np.random.default_rng(1)
    series = _series(rng, rng.normal(0, 5, size=(4, 3)), n=30)
    stats = sc.compute_robust_stats(series, mode="all_frames")
    pooled = np.concatenate(series)
    np.testing.assert_allclose(stats.median, np.median(pooled, axis=0))
    np.testing.assert_allclose(
        stats.iqr, np.percentile(pooled, 75, axis=0) - np.percentile(pooled, 25, axis=0)
    )


def test_zero_iqr_names_the_roi():
    series = [np.array([[1.0, 5.0, 2.0]]) + i * np.array([[1.0, 0.0, 1.0]]) for i in range(5)]
    with pytest.raises(ValueError, match=r"zero IQR for 1 ROI\(s\): visual \(column 1\)"):
        sc.compute_robust_stats(series, roi_names=["a", "visual", "c"])


def test_apply_and_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    series = _series(rng, rng.normal(100, 10, size=(7, 5)))
    names = [f"R{i}" for i in range(5)]
    stats = sc.compute_robust_stats(series, roi_names=names)
    x = series[0]
    y = sc.apply_robust_scaling(x, stats, names)
    np.testing.assert_allclose(y, (x - stats.median) / stats.iqr)
    assert sc.apply_robust_scaling(x.astype(np.float32), stats).dtype == np.float32
    batch = np.stack(series[:3])  # (batch, volumes, rois)
    np.testing.assert_allclose(
        sc.apply_robust_scaling(batch, stats)[1], sc.apply_robust_scaling(series[1], stats)
    )
    path = sc.save_stats(tmp_path / "robust_scaling.json", stats)
    back = sc.load_stats(path)
    np.testing.assert_array_equal(back.median, stats.median)  # exact float round trip
    np.testing.assert_array_equal(back.iqr, stats.iqr)
    assert back.roi_names == names
    np.testing.assert_array_equal(sc.apply_robust_scaling(x, back), y)
    with pytest.raises(ValueError, match=r"ROI names differ .* column 0"):
        sc.apply_robust_scaling(x, stats, ["X", *names[1:]])
    with pytest.raises(ValueError, match="has 4 ROIs"):
        sc.apply_robust_scaling(x[:, :4], stats)


def test_load_rejects_bad_files(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"Format": "other"}))
    with pytest.raises(InputDataError, match="not a robust-scaling file"):
        sc.load_stats(p)
    with pytest.raises(InputDataError, match="not found"):
        sc.load_stats(tmp_path / "missing.json")


def test_input_errors():
    with pytest.raises(ValueError, match="no series"):
        sc.compute_robust_stats([])
    with pytest.raises(ValueError, match="has 3 ROIs"):
        sc.compute_robust_stats([np.ones((5, 2)), np.ones((5, 3))])
    with pytest.raises(ValueError, match="mode"):
        sc.compute_robust_stats([np.ones((5, 2))], mode="zscore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 subject labels for 1 series"):
        sc.compute_robust_stats([np.ones((5, 2))], ["a", "b"])


def test_cli(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        p = tmp_path / f"sub-{i:02d}_task-rest_timeseries.npy"
        np.save(p, rng.normal(i, 1.0, size=(40, 3)))
        paths.append(str(p))
    parser = argparse.ArgumentParser()
    scaling_command.add_arguments(parser)
    out = tmp_path / "stats.json"
    assert scaling_command.run(parser.parse_args(["--series", *paths, "--out", str(out)])) == 0
    stats = sc.load_stats(out)
    assert stats.n_subjects == 6
    assert stats.provenance["Step"] == "scaling-stats"
    assert len(stats.provenance["Inputs"]) == 6
    np.testing.assert_allclose(stats.median, 2.5, atol=0.6)
    bad = tmp_path / "nosubject.npy"
    np.save(bad, np.ones((3, 3)))
    with pytest.raises(InputDataError, match="no 'sub-<label>'"):
        scaling_command.run(parser.parse_args(["--series", str(bad), "--out", str(out)]))


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_censored_rows_and_missing_rois_are_skipped():
    rng = np.random.default_rng(4)
    series = _series(rng, rng.normal(50, 5, size=(6, 3)), n=20)
    clean = sc.compute_robust_stats([s.copy() for s in series])
    dirty = [s.copy() for s in series]
    dirty[0][[3, 4]] = np.nan  # censored volumes
    dirty[1][:, 2] = np.nan  # a ROI missing from one run
    stats = sc.compute_robust_stats(dirty)
    means = np.array([np.nanmean(s, axis=0) for s in dirty])
    np.testing.assert_allclose(stats.median[:2], np.median(means[:, :2], axis=0))
    np.testing.assert_allclose(stats.median[2], np.median(np.delete(means[:, 2], 1)))
    assert not np.allclose(stats.median, clean.median)
    frames = sc.compute_robust_stats(dirty, mode="all_frames")
    np.testing.assert_allclose(frames.median, np.nanmedian(np.concatenate(dirty), axis=0))
    for s in dirty:
        s[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"no data for 1 ROI\(s\): ROI_2 \(column 1\)"):
        sc.compute_robust_stats(dirty)
