"""The graph baselines through the harness: a planted class difference is learned, the
predictions repeat for a seed, and nothing of the test subjects reaches training.

Small sizes (a shrunken recipe per model, 32 ROIs, 100 subjects) keep each test a few
seconds on one thread; the papers' sizes are the settings' defaults.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainharmony.evaluate.data import FeatureTable, fisher_z_fc
from brainharmony.evaluate.graphs import fc_matrices, n_rois_of
from brainharmony.evaluate.harness import HARNESS, Fold, FoldOutcome, create, model_info
from brainharmony.evaluate.metrics import score
from brainharmony.evaluate.settings import SettingsError, settings_from_mapping

GRAPHS = ("brainnetcnn", "braingnn", "bnt")
CLASSES = ("ctl", "pat")

#: Shrunken recipes: fewer maps and epochs than the papers, batches that give several
#: steps per epoch on 60 training subjects (BrainGNN's 100 would give one), BrainGNN
#: without its step decay within the 60 epochs, BNT at a higher learning rate (its 1e-4
#: is for 200 epochs).
SMALL = {
    "brainnetcnn": {
        "e2e_channels": [8, 8],
        "e2n_channels": 16,
        "n2g_channels": 32,
        "hidden": [16],
        "batch_size": 8,
        "epochs": 30,
        "patience": 30,
    },
    "braingnn": {
        "conv_dims": [16, 16],
        "mlp_hidden": 64,
        "batch_size": 12,
        "step_size": 100,
        "epochs": 60,
        "patience": 60,
    },
    "bnt": {
        "ff_dim": 64,
        "clusters": 8,
        "hidden": [32, 16],
        "lr": 0.001,
        "batch_size": 12,
        "epochs": 10,
        "patience": 10,
    },
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted(n: int = 100, rois: int = 32, frames: int = 120, seed: int = 0, amp: float = 0.6):
    """FC of ``n`` subjects: noise plus a global signal; class ``pat`` adds a shared
    signal to ROIs 0-7 (their 28 edges are stronger)."""
    rng = np.random.default_rng(seed)
    labels = np.array([CLASSES[i % 2] for i in range(n)], dtype=object)
    rows = []
    for label in labels:
        x = rng.standard_normal((frames, rois)) + 0.5 * rng.standard_normal((frames, 1))
        if label == "pat":
            x[:, :8] += amp * rng.standard_normal((frames, 1))
        rows.append(fisher_z_fc(x))
    subjects = np.array([f"s{i:03d}" for i in range(n)], dtype=object)
    return FeatureTable(subjects, np.vstack(rows), "synthetic"), labels


def settings(task_type: str = "classification", **graphs):
    task = {"target": "dx", "type": task_type}
    if task_type == "classification":
        task["positive"] = "pat"
    block = {"tasks": {"d": {"dx": task}}, "graphs": {**SMALL, **graphs}}
    return settings_from_mapping(block)


def make_fold(table, labels, seed=0, index=0, y=None):
    order = np.random.default_rng(100 + index).permutation(table.subjects.size)
    tr, va, te = order[:60], order[60:80], order[80:]
    y = labels if y is None else y
    return Fold(
        seed,
        index,
        table.subjects[tr],
        table.subjects[va],
        table.subjects[te],
        y[tr],
        y[va],
        CLASSES if y.dtype == object else None,
    ), te


@pytest.fixture(scope="module")
def data():
    return planted()


def test_registry_entries_are_fc_baselines():
    for name, label in zip(GRAPHS, ("BrainNetCNN", "BrainGNN", "BNT"), strict=True):
        info = model_info(name)
        assert info.display == label and info.baseline and info.inputs == "fc"
        assert info.uses_torch
    assert not HARNESS["fc_ridge"].uses_torch


def test_fc_matrices_invert_the_upper_triangle():
    rng = np.random.default_rng(0)
    z = fisher_z_fc(rng.standard_normal((50, 6)))
    m = fc_matrices(z[None])[0]
    assert m.shape == (6, 6) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    iu = np.triu_indices(6, 1)
    np.testing.assert_allclose(m[iu], np.tanh(z), atol=1e-6)
    assert n_rois_of(400 * 399 // 2) == 400
    with pytest.raises(ValueError, match="upper triangle"):
        n_rois_of(7)


@pytest.mark.parametrize("name", GRAPHS)
def test_planted_difference_is_learned_like_ridge(name, data):
    table, labels = data
    s = settings()
    task = s.task("d", "dx")
    fold, te = make_fold(table, labels)
    aucs = {}
    for model in ("fc_ridge", name):
        out = create(model, task, s, {"fc": table}).run_fold(fold)
        aucs[model] = score(task, CLASSES, labels[te], out.test.y_pred, out.test.proba)["auc"]
    assert aucs["fc_ridge"] >= 0.9, aucs  # the difference is there to be learned
    assert aucs[name] >= 0.9, aucs


@pytest.mark.parametrize("name", GRAPHS)
def test_same_seed_same_predictions_other_seed_other_init(name, data):
    table, labels = data
    s = settings(**{name: {**SMALL[name], "epochs": 2, "patience": 2}})
    task = s.task("d", "dx")
    fold, _ = make_fold(table, labels)
    runs = [create(name, task, s, {"fc": table}).run_fold(f) for f in (fold, fold)]
    np.testing.assert_array_equal(runs[0].test.proba, runs[1].test.proba)
    np.testing.assert_array_equal(runs[0].val.proba, runs[1].val.proba)
    other = Fold(
        7,
        *[
            getattr(fold, k)
            for k in ("index", "train", "val", "test", "y_train", "y_val", "classes")
        ],
    )
    again = create(name, task, s, {"fc": table}).run_fold(other)
    assert not np.array_equal(again.test.proba, runs[0].test.proba)


@pytest.mark.parametrize("name", GRAPHS)
def test_fold_in_outcome_out_without_the_test_subjects(name, data):
    """Training and the epoch choice see train and val only: the test subjects' FC
    changes the test predictions and nothing else."""
    table, labels = data
    s = settings(**{name: {**SMALL[name], "epochs": 3, "patience": 3}})
    task = s.task("d", "dx")
    fold, te = make_fold(table, labels)
    out = create(name, task, s, {"fc": table}).run_fold(fold)
    assert isinstance(out, FoldOutcome)
    assert out.test.proba.shape == (te.size, 2) and out.val.proba.shape == (fold.val.size, 2)
    np.testing.assert_allclose(out.test.proba.sum(axis=1), 1.0)
    assert set(out.test.y_pred) <= set(CLASSES) and 1 <= out.params["epoch"] <= 3
    values = table.values.copy()
    values[te] = np.random.default_rng(5).standard_normal(values[te].shape) * 0.3
    scrambled = FeatureTable(table.subjects, values, "scrambled")
    out2 = create(name, task, s, {"fc": scrambled}).run_fold(fold)
    np.testing.assert_array_equal(out.val.proba, out2.val.proba)
    assert out.params == out2.params and out.val_score == out2.val_score
    assert not np.array_equal(out.test.proba, out2.test.proba)


@pytest.mark.parametrize("name", GRAPHS)
def test_regression_task_predicts_values(name, data):
    table, labels = data
    s = settings("regression", **{name: {**SMALL[name], "epochs": 2, "patience": 2}})
    task = s.task("d", "dx")
    y = np.where(labels == "pat", 30.0, 20.0) + np.arange(labels.size) % 3
    fold, te = make_fold(table, labels, y=y)
    out = create(name, task, s, {"fc": table}).run_fold(fold)
    assert out.test.proba is None and out.test.y_pred.shape == (te.size,)
    assert np.isfinite(out.test.y_pred.astype(float)).all() and np.isfinite(out.val_score)


def test_missing_fc_input_and_bad_settings_are_named(data):
    s = settings()
    model = create("bnt", s.task("d", "dx"), s, {})
    with pytest.raises(ValueError, match="bnt: no FC input"):
        model.available_subjects()
    with pytest.raises(SettingsError, match=r"evaluate\.graphs\.braingnn\.pool_ratio"):
        settings_from_mapping({"graphs": {"braingnn": {"pool_ratio": 1.5}}})
    with pytest.raises(SettingsError, match=r"unknown key\(s\) \['convs'\]"):
        settings_from_mapping({"graphs": {"braingnn": {"convs": [3]}}})
    with pytest.raises(SettingsError, match=r"evaluate\.graphs\.brainnetcnn\.hidden"):
        settings_from_mapping({"graphs": {"brainnetcnn": {"hidden": []}}})


def test_settings_round_trip_through_json():
    s = settings()
    again = settings_from_mapping(s.to_dict())
    assert again.graphs == s.graphs
    assert again.graphs.bnt.clusters == 8 and again.graphs.brainnetcnn.e2e_channels == (8, 8)


@pytest.mark.parametrize("name", GRAPHS)
def test_one_training_subject_still_trains(name, data):
    """A tiny fold (one training and one validation subject) runs: BrainGNN's batch norm
    falls back to its running statistics for a batch of one."""
    table, labels = data
    s = settings(**{name: {**SMALL[name], "epochs": 2, "patience": 2}})
    fold = Fold(
        0, 0, table.subjects[:1], table.subjects[1:2], table.subjects[2:5],
        labels[:1], labels[1:2], CLASSES,
    )  # fmt: skip
    out = create(name, s.task("d", "dx"), s, {"fc": table}).run_fold(fold)
    assert out.test.proba.shape == (3, 2) and np.isfinite(out.test.proba).all()


def test_cli_evaluate_runs_the_graph_baselines_on_series_files(tmp_path):
    """The workflow's route: ``brainharmony evaluate --series ... --models ...`` with the
    settings JSON carrying ``graphs``; every baseline predicts every test subject."""
    import json

    import pandas as pd

    from brainharmony import cli
    from tests.unit.evaluate.test_protocol import planted_cohort, write_series, write_split_dirs

    table = planted_cohort(16)
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    series = write_series(tmp_path / "func", table)  # 10 ROIs
    small = {name: {**SMALL[name], "epochs": 2, "patience": 2} for name in GRAPHS}
    small["bnt"].update(heads=2, clusters=4)
    block = {
        "tasks": {"synth": {"dx": {"target": "diagnosis", "type": "classification",
                                   "positive": "PT"}}},
        "models": ["fc_ridge", *GRAPHS],
        "graphs": small,
    }  # fmt: skip
    splits = write_split_dirs(table, "diagnosis", "classification", tmp_path / "splits", n_folds=2)
    out = tmp_path / "predictions.tsv"
    args = ["evaluate", "--dataset", "synth", "--task", "dx", "--settings", json.dumps(block)]
    args += ["--labels", str(tmp_path / "participants.tsv"), "--splits", *map(str, splits)]
    args += ["--series", *map(str, series), "--threads", "1", "--out", str(out)]
    assert cli.main(args) == 0
    assert torch.get_num_threads() == 1
    preds = pd.read_csv(out, sep="\t", dtype={"subject": str})
    test = preds.loc[preds["split"] == "test"]
    assert set(test["model"]) == {"fc_ridge", *GRAPHS}
    assert (test.groupby("model")["subject"].nunique() == 16).all()
