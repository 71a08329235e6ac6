"""The multi-TR stage: target TRs, pairing files with scans.tsv rows, resample + pack."""

import json

import numpy as np
import pandas as pd
import pytest

from brainharmony.io import InputDataError
from brainharmony.packing import PackedSeriesDataset, read_index
from brainharmony.timeseries.multitr import build_manifest, resample_and_pack, target_trs


def test_targets_follow_the_paper():
    assert target_trs([0.735] * 3, [1, 2, 3, 4], 3.0) == {
        735: [0.735],
        1470: [0.735],
        2205: [0.735],
        2940: [0.735],
    }
    assert list(target_trs([0.8], [1, 2, 3, 4], 3.0)) == [800, 1600, 2400]
    # The source TR is kept even when it is above max_tr.
    assert list(target_trs([3.5], [1, 2], 3.0)) == [3500]
    # Two source TRs that give the same target share one shard.
    assert target_trs([1.0, 2.0], [1, 2], None)[2000] == [1.0, 2.0]


def test_targets_refuse_bad_factors():
    with pytest.raises(ValueError, match="integers >= 1"):
        target_trs([1.0], [0, 2], 3.0)
    with pytest.raises(ValueError, match="integers >= 1"):
        target_trs([1.0], [1.5], 3.0)


def _scans(tmp_path, rows):
    frame = pd.DataFrame(rows)
    for col in ("session", "run", "t1w_session"):
        if col not in frame:
            frame[col] = "n/a"
    frame["bold"] = "x"
    frame["t1w"] = "y"
    return frame


def _write(path, data, tr, names=None):
    names = names or [f"roi{i}" for i in range(data.shape[1])]
    pd.DataFrame(data, columns=names).to_csv(path, sep="\t", index=False, na_rep="n/a")
    path.with_suffix(".json").write_text(json.dumps({"RepetitionTime": tr}))
    return path


def test_manifest_pairs_files_by_entities(tmp_path):
    scans = _scans(
        tmp_path,
        [
            {"subject": "01", "session": "1", "run": "1", "tr": 0.8, "age": 30.0},
            {"subject": "01", "session": "1", "run": "2", "tr": 0.8, "age": 30.0},
            {"subject": "02", "session": "1", "run": "1", "tr": 0.8, "age": 50.0},
        ],
    )
    files = [
        tmp_path / "sub-02_ses-1_task-rest_run-1_timeseries.tsv",
        tmp_path / "sub-01_ses-1_task-rest_run-2_timeseries.tsv",
    ]
    m = build_manifest(scans, files)
    assert m[["subject", "run"]].values.tolist() == [["02", "1"], ["01", "2"]]
    assert m["age"].tolist() == [50.0, 30.0]
    assert "bold" not in m.columns and "t1w" not in m.columns
    with pytest.raises(InputDataError, match=r"no scans\.tsv row"):
        build_manifest(scans, [tmp_path / "sub-03_ses-1_task-rest_run-1_timeseries.tsv"])
    with pytest.raises(InputDataError, match="a second file"):
        build_manifest(scans, [files[0], files[0]])


def test_volume_manifest_uses_t1w_session(tmp_path):
    scans = _scans(
        tmp_path,
        [
            {"subject": "01", "run": "1", "tr": 2.0, "age": 30.0},
            {"subject": "01", "run": "2", "tr": 2.0, "age": 30.0},
        ],
    )
    m = build_manifest(scans, [tmp_path / "sub-01_space-X_desc-model_T1w.nii.gz"], "volumes")
    assert len(m) == 1 and m["session"].iloc[0] == "n/a" and "run" not in m.columns


def test_resample_and_pack_keeps_slow_signal_and_censoring(tmp_path):
    tr, n = 0.8, 600
    t = np.arange(n) * tr
    slow = np.sin(2 * np.pi * 0.05 * t)  # below every new Nyquist
    fast = 0.5 * np.sin(2 * np.pi * 0.5 * t)  # above the 1.6 s Nyquist (0.3125 Hz): removed
    data = np.stack([slow + fast, slow], axis=1)
    censored = data.copy()
    censored[300:305] = np.nan
    scans = _scans(
        tmp_path,
        [
            {"subject": "01", "tr": tr, "age": 30.0},
            {"subject": "02", "tr": tr, "age": 40.0},
        ],
    )
    files = [
        _write(tmp_path / "sub-01_task-rest_timeseries.tsv", data, tr),
        _write(tmp_path / "sub-02_task-rest_timeseries.tsv", censored, tr),
    ]
    m = build_manifest(scans, files)
    shard, index = tmp_path / "d_tr-1600_series.npy", tmp_path / "d_tr-1600_index.tsv"
    idx = resample_and_pack(m, 1600, shard, index)
    assert idx["frames"].tolist() == [300, 300]
    assert idx["tr"].tolist() == [1.6, 1.6]
    assert idx["source_tr"].tolist() == [0.8, 0.8]
    assert idx["age"].tolist() == [30.0, 40.0]
    packed = np.load(shard)
    out = packed[:300]
    t_out = np.arange(300) * 1.6
    core = slice(20, 280)  # away from the filter's edges
    np.testing.assert_allclose(out[core, 0], np.sin(2 * np.pi * 0.05 * t_out[core]), atol=0.02)
    np.testing.assert_allclose(out[core, 1], out[core, 0], atol=0.02)
    # Censored input frames censor the output frames around them (NaN rows).
    second = packed[300:]
    assert np.isnan(second[150:152]).all()
    assert np.isfinite(second[:140]).all()
    side = json.loads(shard.with_suffix(".json").read_text())
    assert side["TargetRepetitionTimeMs"] == 1600 and side["ResamplingMethod"] == "polyphase"
    # The packed data set reads it back; censored frames are masked out.
    ds = PackedSeriesDataset(shard, read_index(index), window=300, crop="start")
    item = ds[1]
    assert not item["mask"][150] and item["mask"][10]


def test_source_tr_is_packed_unchanged_and_decimate_is_reproducible(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((100, 3))
    scans = _scans(tmp_path, [{"subject": "01", "tr": 1.0}])
    f = _write(tmp_path / "sub-01_task-rest_timeseries.tsv", data, 1.0)
    m = build_manifest(scans, [f])
    resample_and_pack(m, 1000, tmp_path / "a.npy", tmp_path / "a.tsv")
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), data.astype(np.float32))
    resample_and_pack(m, 3000, tmp_path / "b.npy", tmp_path / "b.tsv", method="decimate", seed=3)
    resample_and_pack(m, 3000, tmp_path / "c.npy", tmp_path / "c.tsv", method="decimate", seed=3)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "c.npy"))
    with pytest.raises(InputDataError, match="no usable series has a source TR"):
        resample_and_pack(m, 1500, tmp_path / "d.npy", tmp_path / "d.tsv")
    assert not (tmp_path / "d.npy").exists()
