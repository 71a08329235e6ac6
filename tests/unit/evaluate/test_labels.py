"""Per-subject task labels: maps, pooled cohorts, and the table the splits are made from."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from brainharmony import cli
from brainharmony.evaluate.data import read_splits, task_labels
from brainharmony.evaluate.settings import SettingsError, TaskSpec, settings_from_mapping
from brainharmony.io import InputDataError

ADHD_MAP = {"0": "TD", "1": "ADHD", "2": "ADHD", "3": "ADHD"}


def _scans(path, dataset, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["subject", "run", "DX", "age"])
    frame.insert(0, "dataset", dataset)
    frame["site"] = dataset
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def test_map_pool_and_exclusions(tmp_path):
    a = _scans(
        tmp_path / "siteA" / "scans.tsv",
        "siteA",
        [("01", "1", "0", 10), ("01", "2", "0", 10), ("02", "1", "3", 11), ("03", "1", "n/a", 12)],
    )
    b = _scans(
        tmp_path / "siteB" / "scans.tsv", "siteB", [("11", "1", "1", 9), ("12", "1", "pending", 8)]
    )
    spec = TaskSpec(
        "adhd",
        "adhd",
        "DX",
        "classification",
        positive="ADHD",
        datasets=("siteA", "siteB"),
        mapping=tuple(ADHD_MAP.items()),
    )
    frame, excluded = task_labels([a, b], spec)
    assert frame.to_dict("list") == {
        "subject": ["01", "02", "11"],
        "dataset": ["siteA", "siteA", "siteB"],
        "site": ["siteA", "siteA", "siteB"],
        "DX": ["TD", "ADHD", "ADHD"],
    }
    assert excluded == {"no value": ["03"], "value not in the task's map": ["12"]}
    # the written table maps onto itself (the evaluation may read it again)
    out = tmp_path / "labels.tsv"
    frame.to_csv(out, sep="\t", index=False)
    again, none = task_labels([out], spec)
    pd.testing.assert_frame_equal(again.drop(columns="dataset"), frame.drop(columns="dataset"))
    assert none == {}


def test_label_errors(tmp_path):
    a = _scans(tmp_path / "a" / "scans.tsv", "a", [("01", "1", "0", 1), ("01", "2", "1", 1)])
    spec = TaskSpec("a", "dx", "DX", "classification", positive="1")
    with pytest.raises(InputDataError, match="different 'DX' labels"):
        task_labels([a], spec)
    b = _scans(tmp_path / "b" / "scans.tsv", "b", [("01", "1", "0", 1)])
    c = _scans(tmp_path / "c" / "scans.tsv", "c", [("01", "1", "0", 1)])
    with pytest.raises(InputDataError, match="pooled datasets need distinct subject labels"):
        task_labels([b, c], TaskSpec("bc", "dx", "DX", "classification", positive="1"))
    with pytest.raises(SettingsError, match="also raw values"):
        TaskSpec("a", "t", "DX", "classification", mapping=(("1", "2"), ("2", "1")))
    with pytest.raises(SettingsError, match="only classification"):
        TaskSpec("a", "t", "age", "regression", mapping=(("1", "2"),))


def test_eval_labels_cli_feeds_the_splits(tmp_path):
    rows_a = [(f"a{i:02d}", "1", str(i % 4), 20 + i) for i in range(16)]
    rows_b = [(f"b{i:02d}", "1", str(i % 2), 30 + i) for i in range(16)]
    a = _scans(tmp_path / "siteA" / "scans.tsv", "siteA", rows_a)
    b = _scans(tmp_path / "siteB" / "scans.tsv", "siteB", rows_b)
    settings = settings_from_mapping(
        {
            "cohorts": {"adhd": ["siteA", "siteB"]},
            "tasks": {
                "adhd": {
                    "adhd": {
                        "target": "DX",
                        "type": "classification",
                        "positive": "ADHD",
                        "map": ADHD_MAP,
                        "site_mode": "stratify",
                    }
                }
            },
        }
    )
    text = json.dumps(settings.to_dict())
    assert settings_from_mapping(json.loads(text)).to_dict() == settings.to_dict()
    out = tmp_path / "eval" / "adhd" / "adhd" / "labels.tsv"
    assert (
        cli.main(
            [
                "eval-labels",
                "--dataset",
                "adhd",
                "--task",
                "adhd",
                "--settings",
                text,
                "--scans",
                str(a),
                str(b),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["Subjects"] == 32 and side["Summary"] == {"ADHD": 20, "TD": 12}
    assert (
        cli.main(
            [
                "splits",
                "--table",
                str(out),
                "--target",
                "DX",
                "--task",
                "classification",
                "--site-column",
                "site",
                "--site-mode",
                "stratify",
                "--n-folds",
                "4",
                "--out-dir",
                str(tmp_path / "splits" / "seed-0"),
            ]
        )
        == 0
    )
    split = read_splits(tmp_path / "splits" / "seed-0")
    assert split.seed == 0 and len(split.subjects()) == 32
    # wrong number of --scans for the cohort
    assert (
        cli.main(
            [
                "eval-labels",
                "--dataset",
                "adhd",
                "--task",
                "adhd",
                "--settings",
                text,
                "--scans",
                str(a),
                "--out",
                str(out),
            ]
        )
        == 2
    )
