"""A row from someone else's code: a foreign model's predictions on the exported split
files become an ``external_<name>`` row whose metrics are those of the file.

``foreign_svm`` stands for a user's own program: plain numpy/pandas/scikit-learn that
reads only the split folders (``fold-<k>.tsv``, ``splits.json``), its own features and
its own labels, chooses its hyperparameter on ``val`` and writes the documented
predictions TSV (docs/evaluation.md, "Adding a row from your own code").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, SVR

from brainharmony.cli import main as cli_main
from brainharmony.evaluate.harness import display_name
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.evaluate.tables import metrics_from_file
from tests.unit.evaluate.test_protocol import (
    TASKS,
    planted_cohort,
    write_series,
    write_split_dirs,
)

SEEDS = (0, 1)
CS = (0.1, 1.0, 10.0)


def foreign_svm(
    split_dirs: list[Path], series: list[Path], participants: Path, target: str, kind: str
) -> pd.DataFrame:
    """An SVM on Fisher-z FC (SVR / SVC), C chosen on val, in the documented predictions
    format (classification: ``p_CN``, ``p_PT`` from the SVC's decision function)."""

    def fc(path: Path) -> np.ndarray:
        x = pd.read_csv(path, sep="\t", na_values="n/a").dropna().to_numpy(float)
        r = np.corrcoef(x.T)[np.triu_indices(x.shape[1], 1)]
        return np.arctanh(np.clip(r, -0.999999, 0.999999))

    features = {p.name.split("_")[0].removeprefix("sub-"): fc(p) for p in series}
    table = pd.read_csv(participants, sep="\t", dtype={"subject": str}).set_index("subject")
    rows = []
    for folder in split_dirs:
        seed = json.loads((folder / "splits.json").read_text())["Parameters"]["seed"]
        for path in sorted(folder.glob("fold-*.tsv")):
            split = pd.read_csv(path, sep="\t", dtype={"subject": str})
            part = {s: split.loc[split["split"] == s, "subject"].tolist() for s in SPLITS}
            x = {s: np.vstack([features[i] for i in part[s]]) for s in SPLITS}
            y = {s: table.loc[part[s], target].to_numpy() for s in SPLITS}
            scale = StandardScaler().fit(x["train"])
            x = {s: scale.transform(v) for s, v in x.items()}
            best = None
            for c in CS:  # chosen on val only; the first of equal scores
                if kind == "regression":
                    model = SVR(C=c).fit(x["train"], y["train"])
                    score = -mean_absolute_error(y["val"], model.predict(x["val"]))
                else:
                    model = SVC(C=c).fit(x["train"], y["train"])  # classes_: CN, PT
                    score = roc_auc_score(y["val"] == "PT", model.decision_function(x["val"]))
                if best is None or score > best[0]:
                    best = (score, model)
            model = best[1]
            for s in ("val", "test"):
                out = pd.DataFrame(
                    {
                        "seed": seed,
                        "fold": int(split["fold"].iloc[0]),
                        "split": s,
                        "subject": part[s],
                        "y_true": y[s],
                        "y_pred": model.predict(x[s]),
                    }
                )
                if kind == "classification":  # scores in [0, 1] for the AUC
                    p_pt = 1.0 / (1.0 + np.exp(-model.decision_function(x[s])))
                    out = out.assign(p_CN=1.0 - p_pt, p_PT=p_pt)
                rows.append(out)
    return pd.concat(rows, ignore_index=True)


SPLITS = ("train", "val", "test")


def recomputed(frame: pd.DataFrame, kind: str) -> dict[str, float]:
    """The test metrics of a predictions file, per fold with scikit-learn, averaged."""
    per: dict[str, list[float]] = {}
    for _, part in frame.loc[frame["split"] == "test"].groupby(["seed", "fold"]):
        if kind == "regression":
            t, p = part["y_true"].astype(float), part["y_pred"].astype(float)
            values = {
                "mae": mean_absolute_error(t, p),
                "pearson_r": float(np.corrcoef(t, p)[0, 1]),
                "r2": r2_score(t, p),
            }
        else:
            t, p = part["y_true"], part["y_pred"]
            values = {
                "accuracy": accuracy_score(t, p),
                "balanced_accuracy": balanced_accuracy_score(t, p),
                "f1": f1_score(t, p, pos_label="PT"),
                "auc": roc_auc_score(t == "PT", part["p_PT"]),
            }
        for k, v in values.items():
            per.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in per.items()}


@pytest.mark.parametrize(
    ("task", "target", "kind"),
    [("age", "age", "regression"), ("dx", "diagnosis", "classification")],
)
def test_a_foreign_svm_gets_a_row_with_the_metrics_of_its_file(tmp_path, task, target, kind):
    table = planted_cohort(30)
    participants = tmp_path / "participants.tsv"
    table.to_csv(participants, sep="\t", index=False)
    series = write_series(tmp_path / "series", table)
    split_dirs = write_split_dirs(table, target, kind, tmp_path / "splits", SEEDS, n_folds=3)
    # the foreign program: split files, its own features and labels -> predictions TSV
    foreign = foreign_svm(split_dirs, series, participants, target, kind)
    path = tmp_path / "mine" / f"synth_{task}.tsv"
    path.parent.mkdir()
    foreign.assign(dataset="synth", task=task).to_csv(path, sep="\t", index=False)

    settings = settings_from_mapping(
        {
            "tasks": TASKS,
            "seeds": list(SEEDS),
            "n_folds": 3,
            "models": ["null_model", "external_svm"],
            "external": {"svm": str(tmp_path / "mine" / "{dataset}_{task}.tsv")},
            "labels": {"external_svm": "SVM on FC (mine)"},
        }
    )
    out = tmp_path / "eval" / "predictions.tsv"
    args = ["evaluate", "--dataset", "synth", "--task", task]
    args += ["--settings", json.dumps(settings.to_dict()), "--labels", str(participants)]
    args += ["--splits", *map(str, split_dirs), "--models", "null_model", "external_svm"]
    assert cli_main([*args, "--external", f"external_svm={path}", "--out", str(out)]) == 0

    written = pd.read_csv(out, sep="\t", dtype={"subject": str, "y_true": str, "y_pred": str})
    row = written.loc[written["model"] == "external_svm"]
    # every test subject of every fold and seed, with the file's predictions unchanged
    assert len(row.loc[row["split"] == "test"]) == len(table) * len(SEEDS)
    key = ["seed", "fold", "split", "subject"]
    got = row.set_index(key).sort_index()
    want = foreign.astype({"y_pred": str}).set_index(key).sort_index()
    if kind == "regression":
        np.testing.assert_allclose(got["y_pred"].astype(float), want["y_pred"].astype(float))
    else:
        assert list(got["y_pred"]) == list(want["y_pred"])
        np.testing.assert_allclose(got["p_PT"], want["p_PT"])
    metrics = metrics_from_file(out).set_index(["model", "metric"])["mean"]
    expected = recomputed(foreign, kind)
    assert set(expected) <= set(metrics.loc["external_svm"].index)
    for name, value in expected.items():
        assert metrics.loc[("external_svm", name)] == pytest.approx(value, rel=1e-9), name
    # the row stands beside the null model, under its label, in the paper table
    tables = tmp_path / "tables"
    tab_args = ["tables", "--inputs", str(out), "--predictions", str(tmp_path / "all.tsv")]
    tab_args += ["--out-dir", str(tables), "--settings", json.dumps(settings.to_dict())]
    assert cli_main(tab_args) == 0
    paper = (tables / "paper_table.md").read_text()
    assert f"| {display_name('null_model')} |" in paper and "| SVM on FC (mine) |" in paper


def test_a_file_missing_a_seed_is_refused_naming_it(tmp_path, capsys):
    table = planted_cohort(30)
    participants = tmp_path / "participants.tsv"
    table.to_csv(participants, sep="\t", index=False)
    split_dirs = write_split_dirs(table, "age", "regression", tmp_path / "splits", SEEDS, 3)
    series = write_series(tmp_path / "series", table)
    foreign = foreign_svm(split_dirs, series, participants, "age", "regression")
    # seed 1 forgotten: the evaluation has two seeds
    path = tmp_path / "svm.tsv"
    foreign.loc[foreign["seed"] == 0].to_csv(path, sep="\t", index=False)
    settings = settings_from_mapping({"tasks": TASKS, "seeds": list(SEEDS), "n_folds": 3})
    args = ["evaluate", "--dataset", "synth", "--task", "age"]
    args += ["--settings", json.dumps(settings.to_dict()), "--labels", str(participants)]
    args += ["--splits", *map(str, split_dirs), "--models", "external_svm"]
    args += ["--external", f"external_svm={path}", "--out", str(tmp_path / "p.tsv")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "seed 1 fold 0: no prediction for subjects" in err
