"""Cross-validation splits: subject level, stratified, site-aware, reproducible files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from brainharmony import splits as sp
from brainharmony.io import InputDataError
from brainharmony.pipelines import splits as splits_command


def _table(n=80, seed=0, sessions=True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    subjects = [f"{i:03d}" for i in range(n)]
    dx = rng.choice(["ASD", "TD"], size=n, p=[0.3, 0.7])
    age = rng.uniform(8, 80, size=n)
    site = rng.choice(["NYU", "UCLA", "KKI", "PITT", "USM", "SDSU"], size=n)
    rows = []
    for i, s in enumerate(subjects):
        for ses in ["1", "2"] if sessions and i % 3 == 0 else ["n/a"]:
            rows.append(
                {
                    "subject": s,
                    "session": ses,
                    "diagnosis": dx[i],
                    "age": age[i] + (0.5 if ses == "2" else 0.0),
                    "site": site[i],
                }
            )
    return pd.DataFrame(rows)


def _assert_partitions(assign: pd.DataFrame, subjects: set[str], n_folds: int) -> None:
    sp.check_splits(assign)
    for _k, part in assign.groupby("fold"):
        groups = {name: set(part.loc[part["split"] == name, "subject"]) for name in sp.SPLITS}
        assert not groups["train"] & groups["val"]
        assert not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        assert groups["train"] | groups["val"] | groups["test"] == subjects
    tested = assign.loc[assign["split"] == "test", "subject"]
    assert sorted(tested) == sorted(subjects)  # each subject tested exactly once
    assert assign["fold"].nunique() == n_folds


@pytest.mark.parametrize("site_mode", ["none", "stratify", "group"])
@pytest.mark.parametrize(
    ("task", "target"), [("classification", "diagnosis"), ("regression", "age")]
)
def test_no_subject_in_two_partitions(task, target, site_mode):
    table = _table()
    res = sp.make_splits(
        table, target, task=task, n_folds=5, seed=3, site_column="site", site_mode=site_mode
    )
    _assert_partitions(res.assignments, set(table["subject"]), 5)


def test_check_splits_catches_a_leak():
    res = sp.make_splits(_table(), "diagnosis", n_folds=4, seed=0)
    leaked = pd.concat(
        [res.assignments, pd.DataFrame({"subject": ["000"], "fold": [0], "split": ["val"]})]
    )
    with pytest.raises(AssertionError, match="two partitions"):
        sp.check_splits(leaked)


def test_stratified_classification_balances_labels():
    table = _table(n=100, sessions=False)
    res = sp.make_splits(table, "diagnosis", n_folds=5, seed=1)
    label = table.set_index("subject")["diagnosis"]
    overall = (label == "ASD").mean()
    for _k, part in res.assignments.groupby("fold"):
        test = part.loc[part["split"] == "test", "subject"]
        assert abs((label[test] == "ASD").mean() - overall) <= 0.06
        val = part.loc[part["split"] == "val", "subject"]
        assert abs((label[val] == "ASD").mean() - overall) <= 0.1
        assert len(val) == round(0.2 * (len(part) - len(test)))


def test_binned_regression_spreads_the_target():
    table = _table(n=150, sessions=False)
    res = sp.make_splits(table, "age", task="regression", n_folds=5, seed=2, n_bins=5)
    age = table.set_index("subject")["age"]
    for _k, part in res.assignments.groupby("fold"):
        test = age[part.loc[part["split"] == "test", "subject"]]
        # every age quintile is represented in every test fold
        bins = pd.qcut(age.rank(method="first"), 5, labels=False)
        assert set(bins[test.index]) == {0, 1, 2, 3, 4}
        assert abs(test.mean() - age.mean()) < 0.1 * age.std() * 3


def test_site_group_holds_out_whole_sites():
    table = _table(n=120)
    res = sp.make_splits(
        table, "diagnosis", n_folds=3, seed=0, site_column="site", site_mode="group"
    )
    site = table.groupby("subject")["site"].first()
    for _k, part in res.assignments.groupby("fold"):
        test_sites = set(site[part.loc[part["split"] == "test", "subject"]])
        other_sites = set(site[part.loc[part["split"] != "test", "subject"]])
        assert not test_sites & other_sites


def test_site_stratify_spreads_sites():
    table = _table(n=120, sessions=False)
    res = sp.make_splits(
        table, "diagnosis", n_folds=4, seed=0, site_column="site", site_mode="stratify"
    )
    site = table.set_index("subject")["site"]
    for _k, part in res.assignments.groupby("fold"):
        test_sites = site[part.loc[part["split"] == "test", "subject"]]
        assert test_sites.nunique() == site.nunique()


def test_same_seed_same_files_other_seed_differs(tmp_path):
    table = _table()
    files = {}
    for name, seed, shuffle in (("a", 11, 1), ("b", 11, 2), ("c", 12, 1)):
        shuffled = table.sample(frac=1, random_state=shuffle)  # row order must not matter
        res = sp.make_splits(shuffled, "diagnosis", n_folds=5, seed=seed)
        paths = sp.write_splits(res, tmp_path / name)
        assert [p.name for p in paths] == [f"fold-{k}.tsv" for k in range(5)]
        files[name] = [p.read_bytes() for p in paths]
    assert files["a"] == files["b"]
    assert files["a"] != files["c"]
    back = pd.read_csv(tmp_path / "a" / "fold-0.tsv", sep="\t", dtype={"subject": str})
    assert list(back.columns) == ["subject", "fold", "split"]
    assert back["split"].tolist() == sorted(back["split"], key=sp.SPLITS.index)
    meta = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert meta["Parameters"]["seed"] == 11
    assert sum(meta["Counts"]["0"].values()) == table["subject"].nunique()


def test_missing_targets_are_excluded_and_reported():
    table = _table(n=40, sessions=False)
    table.loc[table["subject"].isin(["001", "002"]), "diagnosis"] = np.nan
    res = sp.make_splits(table, "diagnosis", n_folds=4, seed=0)
    assert res.excluded == ["001", "002"]
    assert not set(res.assignments["subject"]) & {"001", "002"}


def test_errors():
    table = _table(n=30)
    inconsistent = table.copy()
    first = inconsistent.index[inconsistent["subject"] == "000"]
    inconsistent.loc[first[-1], "diagnosis"] = "other"
    with pytest.raises(ValueError, match=r"subjects \['000'\] have different 'diagnosis'"):
        sp.make_splits(inconsistent, "diagnosis")
    with pytest.raises(ValueError, match="at least n_folds=10 sites"):
        sp.make_splits(table, "diagnosis", n_folds=10, site_column="site", site_mode="group")
    with pytest.raises(ValueError, match="needs site_column"):
        sp.make_splits(table, "diagnosis", site_mode="group")
    with pytest.raises(ValueError, match="column 'iq' not in the table"):
        sp.make_splits(table, "iq")
    with pytest.raises(ValueError, match="n_folds=40 needs more"):
        sp.make_splits(table, "diagnosis", n_folds=40)
    with pytest.raises(ValueError, match="val_fraction"):
        sp.make_splits(table, "diagnosis", val_fraction=1.0)


def test_tiny_dataset_still_splits():
    table = pd.DataFrame(
        {"subject": [f"s{i}" for i in range(7)], "dx": ["a", "a", "a", "a", "b", "b", "c"]}
    )
    res = sp.make_splits(table, "dx", n_folds=3, seed=0)
    _assert_partitions(res.assignments, set(table["subject"]), 3)


def test_cli_with_participants_tsv(tmp_path):
    table = _table(n=30, sessions=False)
    participants = table.assign(participant_id="sub-" + table["subject"]).drop(columns="subject")
    path = tmp_path / "participants.tsv"
    participants.to_csv(path, sep="\t", index=False)
    parser = argparse.ArgumentParser()
    splits_command.add_arguments(parser)
    out = tmp_path / "splits"
    args = parser.parse_args(
        [
            "--table",
            str(path),
            "--target",
            "age",
            "--task",
            "regression",
            "--out-dir",
            str(out),
            "--n-folds",
            "3",
            "--seed",
            "5",
        ]
    )
    assert splits_command.run(args) == 0
    fold0 = pd.read_csv(out / "fold-0.tsv", sep="\t", dtype={"subject": str})
    assert set(fold0["subject"]) == set(table["subject"])
    args = parser.parse_args(
        ["--table", str(path), "--target", "nope", "--task", "regression", "--out-dir", str(out)]
    )
    with pytest.raises(InputDataError, match=r"participants\.tsv: column 'nope'"):
        splits_command.run(args)


# The sub-commands of this issue, as they are to be registered in brainharmony.cli.
NEW_COMMANDS = {
    "harmonics": ("brainharmony.pipelines.harmonics", "geometric harmonics table"),
    "gradients": ("brainharmony.pipelines.gradients", "functional gradients"),
    "resample": ("brainharmony.pipelines.resample", "resample a series to a longer TR"),
    "scaling-stats": ("brainharmony.pipelines.scaling", "robust-scaling statistics"),
    "splits": ("brainharmony.pipelines.splits", "cross-validation splits"),
    "pack": ("brainharmony.pipelines.pack", "packed training shards"),
}


def test_commands_plug_into_the_cli(tmp_path, monkeypatch, capsys):
    from brainharmony import cli

    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, **NEW_COMMANDS})
    parser = cli.build_parser()
    for name in NEW_COMMANDS:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([name, "--help"])
        assert stop.value.code == 0
    capsys.readouterr()
    table = _table(n=20, sessions=False)
    path = tmp_path / "scans.tsv"
    table.to_csv(path, sep="\t", index=False)
    out = tmp_path / "s"
    argv = ["splits", "--table", str(path), "--target", "diagnosis", "--task", "classification",
            "--out-dir", str(out), "--n-folds", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    assert (out / "fold-1.tsv").is_file()
    assert cli.main([*argv[:4], "missing", *argv[5:]]) == 2  # InputDataError -> exit 2
    assert "column 'missing' not in the table" in capsys.readouterr().err
