"""Packed shards: exact content, index, memory-mapped datasets, crops and padding, CLI."""

from __future__ import annotations

import argparse
import copy
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony import packing as pk
from brainharmony.io import InputDataError
from brainharmony.pipelines import pack as pack_command
from brainharmony.timeseries.scaling import compute_robust_stats

torch = pytest.importorskip("torch")


@pytest.fixture
def series_files(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    arrays = []
    for i, n in enumerate([30, 45, 12]):
        data = rng.standard_normal((n, 4)) + 10 * i
        p = tmp_path / f"sub-{i}_timeseries.npy"
        np.save(p, data)
        p.with_suffix(".json").write_text(json.dumps({"RepetitionTime": 1.47}))
        rows.append(
            {
                "subject": f"{i}",
                "session": "n/a",
                "run": "1",
                "path": str(p),
                "age": 20.0 + i,
                "sex": "F" if i % 2 else "M",
            }
        )
        arrays.append(data)
    return pd.DataFrame(rows), arrays


def test_pack_series_content_and_index(tmp_path, series_files):
    manifest, arrays = series_files
    shard, index_path = tmp_path / "shard.npy", tmp_path / "index.tsv"
    index = pk.pack_series(manifest, shard, index_path)
    data = np.load(shard, mmap_mode="r")
    assert data.dtype == np.float32 and data.shape == (87, 4)
    np.testing.assert_array_equal(data, np.concatenate(arrays).astype(np.float32))
    assert index["offset"].tolist() == [0, 30, 75]
    assert index["frames"].tolist() == [30, 45, 12]
    back = pk.read_index(index_path)
    assert list(back.columns) == [
        "subject",
        "session",
        "run",
        "tr",
        "frames",
        "offset",
        "age",
        "sex",
    ]
    assert back["subject"].tolist() == ["0", "1", "2"]
    assert back["session"].tolist() == ["n/a"] * 3
    assert (back["tr"] == 1.47).all()
    info = pk.shard_info(shard)
    assert info["Shape"] == [87, 4] and info["RepetitionTime"] == 1.47


def test_pack_series_rejects_mixed_inputs(tmp_path, series_files):
    manifest, _ = series_files
    other = tmp_path / "wide.npy"
    np.save(other, np.zeros((10, 5)))
    bad = pd.concat([manifest, manifest.iloc[[0]].assign(path=str(other))], ignore_index=True)
    with pytest.raises(InputDataError, match=r"wide\.npy: has a different ROI count"):
        pk.pack_series(bad, tmp_path / "s.npy", tmp_path / "i.tsv")
    mixed = manifest.assign(tr=[1.47, 1.47, 2.205])
    with pytest.raises(InputDataError, match=r"TR 2\.205 s differs from 1\.47 s"):
        pk.pack_series(mixed, tmp_path / "s.npy", tmp_path / "i.tsv")
    assert not (tmp_path / "s.npy").exists()  # nothing left under the final name


def test_series_dataset_windows(tmp_path, series_files):
    manifest, arrays = series_files
    shard, index_path = tmp_path / "shard.npy", tmp_path / "index.tsv"
    pk.pack_series(manifest, shard, index_path)
    ds = pk.PackedSeriesDataset(shard, index_path, window=20, crop="start", targets=["age"])
    assert len(ds) == 3
    item = ds[0]
    assert item["x"].shape == (20, 4) and item["x"].dtype == torch.float32
    np.testing.assert_allclose(item["x"].numpy(), arrays[0][:20], rtol=1e-6)
    assert item["length"] == 20 and bool(item["mask"].all())
    assert float(item["age"]) == 20.0 and item["tr"] == 1.47
    short = ds[2]  # 12 frames padded to 20
    assert short["length"] == 12
    np.testing.assert_allclose(short["x"][:12].numpy(), arrays[2], rtol=1e-6)
    assert (short["x"][12:] == 0).all() and short["mask"].sum() == 12
    centre = pk.PackedSeriesDataset(shard, index_path, window=20, crop="center")[1]
    np.testing.assert_allclose(centre["x"].numpy(), arrays[1][12:32], rtol=1e-6)
    rand = pk.PackedSeriesDataset(shard, index_path, window=20, crop="random")
    torch.manual_seed(0)
    a = rand[1]["x"]
    torch.manual_seed(0)
    b = rand[1]["x"]
    assert torch.equal(a, b)
    starts = set()
    for _ in range(30):
        x = rand[1]["x"].numpy()
        starts.add(int(np.argmin(np.abs(arrays[1][:, 0] - x[0, 0]))))
    assert len(starts) > 3 and max(starts) <= 25


def test_series_dataset_scaling_subset_and_loader(tmp_path, series_files):
    manifest, arrays = series_files
    shard, index_path = tmp_path / "shard.npy", tmp_path / "index.tsv"
    pk.pack_series(manifest.assign(fold=[0, 1, 1]), shard, index_path)
    stats = compute_robust_stats(arrays)
    splits = pd.DataFrame(
        {"subject": ["0", "1", "2"], "fold": [0, 0, 0], "split": ["test", "train", "train"]}
    )
    rows = pk.rows_for_split(pk.read_index(index_path), splits, 0, "train")
    np.testing.assert_array_equal(rows, [1, 2])
    ds = pk.PackedSeriesDataset(
        shard, index_path, window=16, crop="start", rows=rows, scaling=stats
    )
    item = ds[1]  # index row 2, 12 frames
    expected = (arrays[2].astype(np.float32) - stats.median.astype(np.float32)) / stats.iqr.astype(
        np.float32
    )
    np.testing.assert_allclose(item["x"][:12].numpy(), expected, rtol=1e-5)
    assert (item["x"][12:] == 0).all()
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["x"].shape == (2, 16, 4) and batch["length"].tolist() == [16, 12]
    # a worker receives a pickled copy without the memory map, which it reopens
    ds[0]
    clone = copy.deepcopy(ds)  # what pickling a worker copy does
    assert clone._data is None
    assert torch.equal(clone[0]["x"], ds[0]["x"])


def test_volumes(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    vols = []
    for i in range(3):
        vol = rng.standard_normal((6, 7, 5)).astype(np.float32)
        vols.append(vol)
        if i == 0:
            p = tmp_path / "v0.npy"
            np.save(p, vol)
        else:
            p = tmp_path / f"v{i}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
        rows.append({"subject": str(i), "session": "1", "path": str(p), "age": 30 + i})
    manifest = pd.DataFrame(rows)
    shard, index_path = tmp_path / "t1.npy", tmp_path / "t1.tsv"
    index = pk.pack_volumes(manifest, shard, index_path)
    assert index["offset"].tolist() == [0, 1, 2]
    data = np.load(shard)
    assert data.dtype == np.float16 and data.shape == (3, 6, 7, 5)
    ds = pk.PackedVolumeDataset(shard, index_path, targets=["age"], rows=[2, 0])
    item = ds[0]
    assert item["x"].shape == (1, 6, 7, 5) and item["x"].dtype == torch.float32
    np.testing.assert_allclose(item["x"][0].numpy(), vols[2], atol=2e-3)
    assert float(item["age"]) == 32
    big = manifest.iloc[[0]].assign(path=str(tmp_path / "big.npy"))
    np.save(tmp_path / "big.npy", np.full((6, 7, 5), 1e6, np.float32))
    with pytest.raises(InputDataError, match=r"big\.npy: values are NaN/inf or do not fit float16"):
        pk.pack_volumes(big, tmp_path / "b.npy", tmp_path / "b.tsv")
    odd = manifest.iloc[[0]].assign(path=str(tmp_path / "odd.npy"))
    np.save(tmp_path / "odd.npy", np.zeros((6, 7, 6), np.float32))
    with pytest.raises(InputDataError, match="differs"):
        pk.pack_volumes(pd.concat([manifest, odd]), tmp_path / "c.npy", tmp_path / "c.tsv")


def test_cli_pack_series_with_folds(tmp_path, series_files):
    manifest, _ = series_files
    mpath = tmp_path / "manifest.tsv"
    manifest.to_csv(mpath, sep="\t", index=False)
    folds = tmp_path / "splits"
    folds.mkdir()
    for k, test_subject in enumerate(["0", "1", "2"]):
        split = ["test" if s == test_subject else "train" for s in ("0", "1", "2")]
        pd.DataFrame({"subject": ["0", "1", "2"], "fold": k, "split": split}).to_csv(
            folds / f"fold-{k}.tsv", sep="\t", index=False
        )
    parser = argparse.ArgumentParser()
    pack_command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--kind",
            "series",
            "--manifest",
            str(mpath),
            "--shard",
            str(tmp_path / "s.npy"),
            "--index",
            str(tmp_path / "s.tsv"),
            "--folds-dir",
            str(folds),
        ]
    )
    assert pack_command.run(args) == 0
    index = pk.read_index(tmp_path / "s.tsv")
    assert index["fold"].tolist() == [0, 1, 2]
    assert index.columns[-1] == "fold"
    assert index["age"].tolist() == [20.0, 21.0, 22.0]


def test_volumes_as_stored(tmp_path):
    vol = np.random.default_rng(2).standard_normal((4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    manifest = pd.DataFrame({"subject": ["a"], "session": ["1"], "path": [str(tmp_path / "v.npy")]})
    pk.pack_volumes(manifest, tmp_path / "s.npy", tmp_path / "s.tsv")
    x = pk.PackedVolumeDataset(tmp_path / "s.npy", tmp_path / "s.tsv", as_stored=True)[0]["x"]
    assert x.dtype == torch.float16
    np.testing.assert_allclose(x.float().numpy()[0], vol, atol=2e-3)


def test_censored_frames_and_missing_rois_are_masked(tmp_path):
    data = np.arange(40, dtype=float).reshape(10, 4)
    data[[2, 3]] = np.nan  # censored volumes
    data[:, 1] = np.nan  # a ROI without coverage
    p = tmp_path / "sub-x.npy"
    np.save(p, data)
    manifest = pd.DataFrame({"subject": ["x"], "session": ["n/a"], "run": ["1"],
                             "path": [str(p)], "tr": [0.8]})  # fmt: skip
    pk.pack_series(manifest, tmp_path / "s.npy", tmp_path / "s.tsv")
    item = pk.PackedSeriesDataset(tmp_path / "s.npy", tmp_path / "s.tsv", window=12)[0]
    assert item["mask"].tolist() == [True, True, False, False] + [True] * 6 + [False] * 2
    assert item["roi_mask"].tolist() == [True, False, True, True]
    assert torch.isfinite(item["x"]).all()
    assert float(item["x"][2, 0]) == 0.0 and float(item["x"][4, 0]) == 16.0
