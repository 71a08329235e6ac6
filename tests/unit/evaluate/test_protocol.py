"""The evaluation protocol: planted effects beat the null, no test leak, inputs checked.

The helpers at the top build a small synthetic cohort (participants.tsv, parcel
series with phenotype-dependent connectivity, split folders); other evaluation tests
import them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainharmony.evaluate.data import (
    FeatureTable,
    fc_from_series_files,
    fisher_z_fc,
    read_splits,
    subject_labels,
)
from brainharmony.evaluate.metrics import per_fold_metrics
from brainharmony.evaluate.protocol import evaluate_task, write_task_result
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.evaluate.stats import paired_tests
from brainharmony.io import InputDataError
from brainharmony.splits import make_splits, write_splits

N_ROIS = 10
TASKS = {
    "synth": {
        "dx": {"target": "diagnosis", "type": "classification", "positive": "PT"},
        "age": {"target": "age", "type": "regression"},
    }
}
SMALL_GRIDS = {
    "ridge_alphas": [10.0, 1.0, 0.1, 0.01],
    "logistic_cs": [0.1, 1.0, 10.0, 100.0],
    "rbf_gamma_factors": [0.5, 2.0],
    "kernel_alphas": [1.0, 0.1],
}


def planted_cohort(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """participants-like table: subject, diagnosis (CN/PT, balanced), age (20-80)."""
    rng = np.random.default_rng(seed)
    dx = rng.permutation(np.r_[np.zeros(n // 2), np.ones(n - n // 2)]).astype(int)
    return pd.DataFrame(
        {
            "subject": [f"s{i:02d}" for i in range(n)],
            "diagnosis": np.where(dx == 1, "PT", "CN"),
            "age": rng.uniform(20, 80, n).round(1),
        }
    )


def planted_series(row: pd.Series, rng: np.random.Generator, frames: int = 150) -> np.ndarray:
    """ROI series: ROIs 0-2 share a signal more strongly in patients, ROIs 3-5 with age."""
    x = rng.standard_normal((frames, N_ROIS))
    c_dx = 1.2 if row["diagnosis"] == "PT" else 0.3
    c_age = (float(row["age"]) - 20.0) / 40.0
    x[:, 0:3] += c_dx * rng.standard_normal((frames, 1))
    x[:, 3:6] += c_age * rng.standard_normal((frames, 1))
    x[rng.choice(frames, 10, replace=False)] = np.nan  # censored frames
    return x


def write_series(root: Path, table: pd.DataFrame, seed: int = 1) -> list[Path]:
    """One denoised-series TSV per subject (BIDS-like names, n/a rows for censoring)."""
    rng = np.random.default_rng(seed)
    paths = []
    for _, row in table.iterrows():
        sub = row["subject"]
        path = (
            root
            / f"sub-{sub}"
            / "func"
            / (f"sub-{sub}_task-rest_space-MNI_atlas-Schaefer400_desc-denoised_timeseries.tsv")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(planted_series(row, rng), columns=[f"ROI_{i}" for i in range(N_ROIS)])
        frame.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        paths.append(path)
    return paths


def write_split_dirs(
    table: pd.DataFrame, target: str, kind: str, root: Path, seeds=(0,), n_folds: int = 4
) -> list[Path]:
    """``brainharmony splits`` folders, one per seed."""
    out = []
    for seed in seeds:
        folder = root / f"seed-{seed}"
        write_splits(make_splits(table, target, task=kind, n_folds=n_folds, seed=seed), folder)
        out.append(folder)
    return out


def planted_fc(table: pd.DataFrame, seed: int = 1) -> FeatureTable:
    rng = np.random.default_rng(seed)
    rows = [fisher_z_fc(planted_series(r, rng)) for _, r in table.iterrows()]
    return FeatureTable(table["subject"].to_numpy(dtype=object), np.vstack(rows), "fc:test")


def _labels(table: pd.DataFrame, tmp: Path, target: str, kind: str) -> pd.Series:
    path = tmp / "participants.tsv"
    table.to_csv(path, sep="\t", index=False)
    return subject_labels([path], target, kind)[0]


# --------------------------------------------------------------------------- tests


def test_fisher_z_fc_matches_numpy_and_ignores_censored_frames():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 5))
    z = fisher_z_fc(x)
    iu = np.triu_indices(5, 1)
    np.testing.assert_allclose(z, np.arctanh(np.corrcoef(x.T)[iu]))
    y = x.copy()
    y[[3, 10]] = np.nan
    np.testing.assert_allclose(
        fisher_z_fc(y), np.arctanh(np.corrcoef(np.delete(x, [3, 10], 0).T)[iu])
    )
    y[:, 2] = np.nan  # an uncovered parcel: zero correlations, others unchanged
    out = fisher_z_fc(y).copy()
    full = np.zeros((5, 5))
    full[iu] = out
    assert np.all(full[2, :] == 0) and np.all(full[:, 2] == 0)


BASELINES = ["null_model", "fc_ridge", "fc_kernel_ridge", "fc_logistic"]


def test_baselines_beat_the_null_model_on_planted_effects(tmp_path):
    table = planted_cohort(40)
    fc = planted_fc(table)
    settings = settings_from_mapping(
        {"tasks": TASKS, "seeds": [0, 1], "grids": SMALL_GRIDS, "models": BASELINES}
    )
    for spec in settings.tasks:
        labels = _labels(table, tmp_path, spec.target, spec.type)
        splits = [
            read_splits(p)
            for p in write_split_dirs(
                table, spec.target, spec.type, tmp_path / spec.name, seeds=(0, 1)
            )
        ]
        result = evaluate_task(spec, settings, labels, splits, {"fc": fc})
        classes = result.info["Classes"]
        per_fold = per_fold_metrics(result.predictions, {spec.key: (spec, classes)})
        tests = paired_tests(
            per_fold,
            settings.primary_metric,
            {spec.key: spec.type},
            BASELINES,
            {spec.key: result.info["TestTrainRatio"]},
        )
        vs_null = tests.loc[tests["role"] == "vs_null"]
        expected = {"fc_ridge", "fc_kernel_ridge"} | (
            {"fc_logistic"} if spec.type == "classification" else set()
        )
        assert set(vs_null["model"]) == expected
        assert (vs_null["mean_diff"] > 0).all(), vs_null
        assert (vs_null["p"] < 0.05).all(), vs_null
        if spec.type == "regression":
            assert "fc_logistic" in result.info["SkippedModels"]
        # every model predicted every subject exactly once per seed on test
        test = result.predictions.loc[result.predictions["split"] == "test"]
        counts = test.groupby(["model", "seed"])["subject"].nunique()
        assert (counts == 40).all()


def test_test_labels_never_influence_selection(tmp_path):
    """Permuting the test labels of a fold leaves its chosen hyperparameters, validation
    score and predictions unchanged; permuting its validation labels changes them."""
    table = planted_cohort(40)
    fc = planted_fc(table)
    settings = settings_from_mapping(
        {"tasks": TASKS, "grids": SMALL_GRIDS, "models": ["fc_ridge", "fc_logistic"]}
    )
    spec = settings.task("synth", "dx")
    labels = _labels(table, tmp_path, spec.target, spec.type)
    splits = [
        read_splits(p)
        for p in write_split_dirs(table, "diagnosis", "classification", tmp_path / "dx")
    ]
    fold0 = splits[0].folds[0]

    def run(lab: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
        res = evaluate_task(spec, settings, lab, [splits[0]], {"fc": fc})
        sel = res.selection.loc[res.selection["fold"] == 0].set_index("model")
        pred = res.predictions.loc[
            (res.predictions["fold"] == 0) & (res.predictions["split"] == "test")
        ]
        return sel, pred

    base_sel, base_pred = run(labels)
    test_subj = fold0.loc[fold0["split"] == "test", "subject"].tolist()
    flipped = labels.copy()
    flipped[test_subj] = np.where(labels[test_subj] == "PT", "CN", "PT")
    sel, pred = run(flipped)
    pd.testing.assert_frame_equal(sel, base_sel)
    np.testing.assert_array_equal(pred["y_pred"], base_pred["y_pred"])
    np.testing.assert_allclose(pred[["p_CN", "p_PT"]], base_pred[["p_CN", "p_PT"]])
    assert (pred["y_true"].to_numpy() != base_pred["y_true"].to_numpy()).all()
    # Control: the validation labels do drive the selection (the test can fail).
    val_subj = fold0.loc[fold0["split"] == "val", "subject"].tolist()
    shuffled = labels.copy()
    shuffled[val_subj] = np.where(labels[val_subj] == "PT", "CN", "PT")
    sel_val, _ = run(shuffled)
    assert not np.allclose(sel_val["val_score"], base_sel["val_score"])


def test_subjects_without_inputs_leave_every_model(tmp_path):
    table = planted_cohort(24)
    fc = planted_fc(table)
    keep = fc.subjects != "s03"
    fc = FeatureTable(fc.subjects[keep], fc.values[keep], fc.source)
    settings = settings_from_mapping(
        {"tasks": TASKS, "grids": SMALL_GRIDS, "models": ["null_model", "fc_ridge"]}
    )
    spec = settings.task("synth", "age")
    labels = _labels(table, tmp_path, "age", "regression")
    splits = [
        read_splits(p)
        for p in write_split_dirs(table, "age", "regression", tmp_path / "age", n_folds=3)
    ]
    res = evaluate_task(spec, settings, labels, splits, {"fc": fc})
    assert "s03" not in set(res.predictions["subject"])
    assert res.info["SubjectsWithoutInputs"] == {"fc_ridge": ["s03"]}
    assert res.info["SubjectsEvaluated"] == 23
    # splits that name a subject without a label are refused
    with pytest.raises(InputDataError, match="no 'age' label"):
        evaluate_task(spec, settings, labels.drop("s05"), splits, {"fc": fc})


def test_external_predictions_are_merged_and_checked(tmp_path):
    table = planted_cohort(24)
    fc = planted_fc(table)
    settings = settings_from_mapping({"tasks": TASKS, "grids": SMALL_GRIDS, "models": ["fc_ridge"]})
    spec = settings.task("synth", "dx")
    labels = _labels(table, tmp_path, "diagnosis", "classification")
    splits = [
        read_splits(p)
        for p in write_split_dirs(table, "diagnosis", "classification", tmp_path / "dx", n_folds=3)
    ]
    ridge = evaluate_task(spec, settings, labels, splits, {"fc": fc}).predictions
    ext = ridge.assign(model="predictor_demo").drop(columns=["seed"])
    path = tmp_path / "ext.tsv"
    ext.to_csv(path, sep="\t", index=False)
    merged = evaluate_task(
        spec,
        settings,
        labels,
        splits,
        {"fc": fc, "predictions": {"predictor": [path]}},
        ["null_model", "predictor"],
    )
    got = merged.predictions.loc[merged.predictions["model"] == "predictor"].reset_index(drop=True)
    want = ridge.assign(model="predictor").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
    # a wrong y_true (another target) is refused, naming the file
    bad = ext.copy()
    bad.loc[0, "y_true"] = "CN" if bad.loc[0, "y_true"] == "PT" else "PT"
    bad.to_csv(path, sep="\t", index=False)
    with pytest.raises(InputDataError, match=r"ext\.tsv.*wrong target"):
        evaluate_task(
            spec, settings, labels, splits, {"predictions": {"predictor": [path]}}, ["predictor"]
        )
    # a test subject without a prediction leaves the evaluation for every model
    test_rows = ext.index[ext["split"] == "test"]
    gone = ext.loc[test_rows[0], "subject"]
    ext.drop(index=test_rows[0]).loc[lambda f: f["subject"] != gone].to_csv(
        path, sep="\t", index=False
    )
    res = evaluate_task(
        spec,
        settings,
        labels,
        splits,
        {"fc": fc, "predictions": {"predictor": [path]}},
        ["fc_ridge", "predictor"],
    )
    assert gone not in set(res.predictions["subject"])
    assert res.info["SubjectsWithoutInputs"] == {"predictor": [gone]}
    # incomplete validation rows are an error naming the file
    val_rows = ext.index[ext["split"] == "val"]
    ext.drop(index=val_rows[0]).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputDataError, match=r"ext\.tsv.*no prediction for subjects"):
        evaluate_task(
            spec, settings, labels, splits, {"predictions": {"predictor": [path]}}, ["predictor"]
        )


def test_fc_from_series_files_pools_runs(tmp_path):
    table = planted_cohort(6)
    paths = write_series(tmp_path, table)
    # a second run of s00 is averaged in z with the first
    second = paths[0].with_name(paths[0].name.replace("task-rest", "task-rest_run-2"))
    second.write_text(paths[1].read_text())
    fc = fc_from_series_files([*paths, second])
    assert list(fc.subjects) == list(table["subject"])
    one = fc_from_series_files([paths[0]]).values[0]
    two = fc_from_series_files([paths[1]]).values[0]
    np.testing.assert_allclose(fc.take(["s00"])[0], (one + two) / 2)


def test_written_outputs_have_the_contract_columns(tmp_path):
    table = planted_cohort(24)
    settings = settings_from_mapping(
        {"tasks": TASKS, "grids": SMALL_GRIDS, "models": ["null_model", "fc_logistic"]}
    )
    spec = settings.task("synth", "dx")
    labels = _labels(table, tmp_path, "diagnosis", "classification")
    splits = [
        read_splits(p)
        for p in write_split_dirs(table, "diagnosis", "classification", tmp_path / "dx", n_folds=3)
    ]
    res = evaluate_task(spec, settings, labels, splits, {"fc": planted_fc(table)})
    paths = write_task_result(res, tmp_path / "eval" / "predictions.tsv", settings)
    frame = pd.read_csv(paths["predictions"], sep="\t", dtype=str)
    assert list(frame.columns) == [
        "dataset",
        "task",
        "model",
        "seed",
        "fold",
        "split",
        "subject",
        "y_true",
        "y_pred",
        "p_CN",
        "p_PT",
    ]
    assert set(frame["split"]) == {"val", "test"}
    probs = frame[["p_CN", "p_PT"]].astype(float).sum(axis=1)
    np.testing.assert_allclose(probs, 1.0)
    sel = pd.read_csv(paths["selection"], sep="\t")
    assert set(sel.columns) >= {"model", "seed", "fold", "params", "val_score"}


def test_fc_from_a_packed_shard_equals_fc_from_files(tmp_path):
    from brainharmony.evaluate.data import fc_from_shard
    from brainharmony.packing import pack_series

    rng = np.random.default_rng(2)
    rows, files = [], []
    for sub in ("a", "b"):
        path = tmp_path / f"sub-{sub}_task-rest_timeseries.npy"
        np.save(path, rng.standard_normal((40, N_ROIS)))
        files.append(path)
        rows.append({"subject": sub, "session": "n/a", "run": "n/a", "path": str(path), "tr": 2.0})
    pack_series(pd.DataFrame(rows), tmp_path / "s.npy", tmp_path / "s.tsv")
    from_shard = fc_from_shard(tmp_path / "s.npy", tmp_path / "s.tsv")
    from_files = fc_from_series_files(files)
    assert list(from_shard.subjects) == ["a", "b"]
    np.testing.assert_allclose(from_shard.values, from_files.values, atol=1e-5)
