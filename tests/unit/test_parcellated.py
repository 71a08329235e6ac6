"""Run-table ingest of released parcel series (dataset kind ``parcellated``).

Each bad-row kind is excluded with its reason in ``excluded.tsv`` while the good rows
are indexed exactly as without it; only a malformed run table stops the dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainharmony import cli
from brainharmony.ingest import NoUsableScansError, read_scans, write_outputs
from brainharmony.io import InputDataError
from brainharmony.parcellated import (
    convert_series,
    ingest_parcellated,
    read_parcel_file,
    read_run_table,
)
from brainharmony.series_files import read_series
from brainharmony.timeseries.multitr import build_manifest

N = 400
FRAMES = 60


def _series(seed: int, frames: int = FRAMES) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((frames, N))


def _table(root: Path, rows: list[dict], name: str = "runs.tsv") -> Path:
    path = root / name
    pd.DataFrame(rows).to_csv(path, sep="," if name.endswith(".csv") else "\t", index=False)
    return path


def _good(root: Path) -> list[dict]:
    """Three subjects, sub-01 with two runs: .npy, headed TSV, headerless CSV."""
    (root / "ts").mkdir(parents=True, exist_ok=True)
    np.save(root / "ts" / "s01r1.npy", _series(1))
    np.save(root / "ts" / "s01r2.npy", _series(2).astype(np.float32))
    pd.DataFrame(_series(3), columns=[f"7Networks_{i}" for i in range(N)]).to_csv(
        root / "ts" / "s02.tsv", sep="\t", index=False
    )
    np.savetxt(root / "ts" / "s03.csv", _series(4), delimiter=",")
    base = {"session": "2", "tr": 0.735, "age": 60.5, "sex": "F"}
    return [
        {**base, "subject": "01", "run": "1", "path": "ts/s01r1.npy"},
        {**base, "subject": "01", "run": "2", "path": "ts/s01r2.npy"},
        {**base, "subject": "sub-02", "run": "n/a", "path": "ts/s02.tsv", "sex": "M"},
        {**base, "subject": "03", "run": "1", "path": str(root / "ts" / "s03.csv"), "age": 71},
    ]


def _ingest(table: Path, **kw):
    kw.setdefault("min_volumes", 50)
    kw.setdefault("phenotypes", {"age": "number", "sex": "category"})
    return ingest_parcellated(table, "ukb", **kw)


def test_good_table_gives_the_bids_ingest_columns_and_values(tmp_path):
    result = _ingest(_table(tmp_path, _good(tmp_path)))
    scans = result.scans
    assert scans["subject"].tolist() == ["01", "01", "02", "03"]
    assert scans["run"].tolist() == ["1", "2", "n/a", "1"]
    assert set(scans["session"]) == {"2"} and set(scans["t1w"]) == {"n/a"}
    assert scans["n_volumes"].tolist() == [FRAMES] * 4
    assert scans["tr"].tolist() == [0.735] * 4
    assert scans["age"].tolist() == [60.5, 60.5, 60.5, 71.0]
    assert scans["sex"].tolist() == ["F", "F", "M", "F"]
    assert set(scans["site"]) == {"ukb"} and result.excluded.empty
    assert scans["bold"].iloc[0] == str(tmp_path / "ts" / "s01r1.npy")
    # written and read back like a BIDS ingest's scans.tsv
    paths = write_outputs(result, tmp_path / "out")
    back = read_scans(paths["scans"])
    assert back["subject"].tolist() == ["01", "01", "02", "03"]
    sidecar = json.loads(paths["sidecar"].read_text())
    assert sidecar["Provenance"]["Parameters"]["kind"] == "parcellated"


def test_csv_run_table_and_site_column(tmp_path):
    rows = [{**r, "site": f"centre{i % 2}"} for i, r in enumerate(_good(tmp_path))]
    rows[1]["site"] = "centre0"  # sub-01's two rows agree
    result = _ingest(_table(tmp_path, rows, "runs.csv"))
    assert result.scans["site"].tolist() == ["centre0", "centre0", "centre0", "centre1"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda root, row: row.update(path="ts/missing.npy"), "series file not found"),
        (lambda root, row: row.update(subject="0-2"), "sub label '0-2'"),
        (lambda root, row: row.update(run="x"), "run index 'x' is not a non-negative integer"),
        (lambda root, row: row.update(tr="fast"), "tr 'fast' is not a positive number"),
        (lambda root, row: row.update(tr=735), "tr 735 s is outside the plausible range"),
        (
            lambda root, row: np.save(root / "ts/s01r2.npy", _series(2)[:, :399]),
            "399 columns x 60 rows; expected 400 ROIs",
        ),
        (
            lambda root, row: np.save(root / "ts/s01r2.npy", _series(2, 40)),
            "40 volumes < min_volumes 50",
        ),
        (
            lambda root, row: np.save(
                root / "ts/s01r2.npy", np.where(np.eye(FRAMES, N), np.nan, 1)
            ),
            "NaN or infinite values in 60 volumes",
        ),
        (
            lambda root, row: (root / "ts/s01r2.npy").write_text("0.1\t0.2\tabc\n"),
            "not a readable .npy array",
        ),
        (
            lambda root, row: (
                row.update(path="ts/s01r2.txt")
                or (root / "ts/s01r2.txt").write_text("\n".join(["1\tx"] * 60))
            ),
            "is not a number",
        ),
        (
            lambda root, row: (
                row.update(path="ts/s01r2.mat") or (root / "ts/s01r2.mat").write_bytes(b"x")
            ),
            "unknown series format '.mat'",
        ),
        (lambda root, row: row.update(path="../outside.npy"), "leaves the run table's folder"),
        (lambda root, row: row.update(path="ts"), "folder"),
        (lambda root, row: row.update(path="/dev/zero"), "character device"),
    ],
)
def test_each_bad_row_is_excluded_with_its_reason_and_the_others_stay(tmp_path, damage, reason):
    root = tmp_path / "d"
    rows = _good(root)
    clean = _ingest(_table(root, rows)).scans
    damage(root, rows[1])
    result = _ingest(_table(root, rows))
    assert len(result.excluded) == 1, result.excluded
    got = result.excluded.iloc[0]
    assert reason in got["reason"] and got["reason"].startswith("line 3:"), got["reason"]
    assert result.excluded["dataset"].tolist() == ["ukb"]
    assert got["subject"] in ("01", "0-2") and got["path"] != "n/a"
    expected = clean.drop(index=1).reset_index(drop=True)
    pd.testing.assert_frame_equal(result.scans, expected)


def test_named_pipe_is_refused_without_hanging(tmp_path):
    root = tmp_path / "d"
    rows = _good(root)
    os.mkfifo(root / "ts" / "pipe.tsv")
    rows[1]["path"] = "ts/pipe.tsv"
    result = _ingest(_table(root, rows))
    assert "named pipe" in result.excluded.iloc[0]["reason"]


def test_duplicate_run_and_conflicting_phenotypes(tmp_path):
    rows = _good(tmp_path)
    rows.append({**rows[0]})  # the same run twice
    rows[3]["age"] = 99  # sub-02 single row: fine
    rows[1]["sex"] = "M"  # sub-01's rows disagree
    result = _ingest(_table(tmp_path, rows))
    reasons = result.excluded["reason"].tolist()
    assert any("a second row for this run (first: line 2)" in r for r in reasons)
    assert sum("disagree on sex" in r for r in reasons) == 2
    assert result.scans["subject"].tolist() == ["02", "03"]


def test_participant_label_and_exclude_subjects(tmp_path):
    table = _table(tmp_path, _good(tmp_path))
    result = _ingest(table, participant_label=["01", "sub-03"], exclude_subjects=["03"])
    assert result.scans["subject"].tolist() == ["01", "01"]
    reasons = dict(zip(result.excluded["subject"], result.excluded["reason"], strict=True))
    assert reasons["02"].endswith("subject not in participant_label")
    assert reasons["03"].endswith("subject listed in exclude_subjects")


def test_malformed_table_and_wrong_atlas_stop_the_dataset(tmp_path):
    rows = _good(tmp_path)
    bad = tmp_path / "bad.tsv"
    pd.DataFrame(rows).drop(columns=["tr"]).to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputDataError, match=r"bad.tsv: the run table has no column 'tr'"):
        _ingest(bad)
    with pytest.raises(ValueError, match="Schaefer-400"):
        _ingest(_table(tmp_path, rows), n_rois=200)
    for row in rows:
        row["tr"] = 99
    with pytest.raises(NoUsableScansError, match="nothing usable") as err:
        _ingest(_table(tmp_path, rows))
    assert len(err.value.result.excluded) == 4


def test_orientation_by_roi_count(tmp_path):
    data = _series(5, 120)
    np.savetxt(tmp_path / "roi_by_time.tsv", data.T, delimiter="\t")
    got = read_parcel_file(tmp_path / "roi_by_time.tsv")
    assert got.transposed and np.allclose(got.data, data)
    np.save(tmp_path / "time_by_roi.npy", data)
    got = read_parcel_file(tmp_path / "time_by_roi.npy")
    assert not got.transposed and np.array_equal(got.data, data)
    # with a header the columns are the ROIs: 120 named columns is not 400 ROIs
    pd.DataFrame(data.T, columns=[f"t{i}" for i in range(120)]).to_csv(
        tmp_path / "headed.tsv", sep="\t", index=False
    )
    with pytest.raises(InputDataError, match="120 columns x 400 rows"):
        read_parcel_file(tmp_path / "headed.tsv")


def test_run_table_lines_are_numbered(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("subject\trun\tpath\ttr\n\n01\t1\ta.npy\t2\n")
    assert read_run_table(path)["line"].tolist() == [3]
    path.write_text("subject\trun\tpath\ttr\n01\t1\ta.npy\n")
    with pytest.raises(InputDataError, match="line 2 has 3 fields but the header has 4"):
        read_run_table(path)


def test_converted_series_reads_like_the_func_stage_output(tmp_path):
    data = _series(6)
    np.savetxt(tmp_path / "src.csv", data.T, delimiter=",")  # ROI x time, no header
    out = tmp_path / "sub-01_task-rest_run-1_atlas-Schaefer400_desc-released_timeseries.tsv"
    convert_series(tmp_path / "src.csv", out, tr=0.735)
    series = read_series(out)
    assert series.tr == 0.735 and series.excluded == ""
    assert np.allclose(series.data, data, rtol=1e-7) and series.roi_names[0] == "ROI_1"
    assert json.loads(out.with_suffix(".json").read_text())["Transposed"] is True
    # the multi-TR stage pairs it with its scans.tsv row by its entities
    scans = pd.DataFrame(
        [{"subject": "01", "session": "n/a", "run": "1", "tr": 0.735, "bold": "x", "age": 3.0}]
    )
    manifest = build_manifest(scans, [out])
    assert manifest[["subject", "run", "tr", "age"]].iloc[0].tolist() == ["01", "1", 0.735, 3.0]


def test_cli_ingest_run_table_writes_the_tables(tmp_path):
    table = _table(tmp_path, _good(tmp_path))
    code = cli.main(
        ["ingest", "--dataset", "ukb", "--run-table", str(table), "--out-dir",
         str(tmp_path / "out"), "--min-volumes", "10", "--phenotypes", "age:number"]
    )  # fmt: skip
    assert code == 0
    scans = read_scans(tmp_path / "out" / "scans.tsv")
    assert len(scans) == 4 and "age" in scans.columns
    assert (tmp_path / "out" / "excluded.tsv").is_file()
