"""Paper-layout tables (CSV, Markdown, LaTeX) and metrics recomputable from predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainharmony import cli
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.evaluate.tables import (
    build_paper_table,
    format_cell,
    metrics_from_file,
    table_csv,
    table_latex,
    table_markdown,
)
from tests.unit.evaluate.test_protocol import (
    SMALL_GRIDS,
    TASKS,
    planted_cohort,
    write_series,
    write_split_dirs,
)


def _metrics() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for model, acc, mae in (
        ("null_model", 0.5, 10.0),
        ("fc_ridge", 0.8, 6.0),
        ("probe_bh_f", 0.9, 7.0),
    ):
        rows += [
            {
                "dataset": "abide1",
                "task": "asd",
                "model": model,
                "metric": "accuracy",
                "mean": acc,
                "std": 0.05,
                "n": 10,
            },
            {
                "dataset": "abide1",
                "task": "asd",
                "model": model,
                "metric": "f1",
                "mean": acc - 0.1,
                "std": 0.04,
                "n": 10,
            },
            {
                "dataset": "camcan",
                "task": "age",
                "model": model,
                "metric": "mae",
                "mean": mae,
                "std": 0.5,
                "n": 10,
            },
        ]
    tests = pd.DataFrame(
        [
            {
                "dataset": "abide1",
                "task": "asd",
                "model": "probe_bh_f",
                "reference": "fc_ridge",
                "role": "best_baseline",
                "metric": "balanced_accuracy",
                "mean_diff": 0.1,
                "p": 0.01,
            },
            {
                "dataset": "camcan",
                "task": "age",
                "model": "probe_bh_f",
                "reference": "fc_ridge",
                "role": "best_baseline",
                "metric": "mae",
                "mean_diff": -1.0,
                "p": 0.01,
            },
        ]
    )
    return pd.DataFrame(rows), tests


def test_paper_table_layout_csv_markdown_latex():
    metrics, tests = _metrics()
    settings = settings_from_mapping(
        {"table_metrics": {"classification": ["accuracy", "f1"], "regression": ["mae"]}}
    )
    types = {("abide1", "asd"): "classification", ("camcan", "age"): "regression"}
    table = build_paper_table(metrics, tests, settings, types)
    assert table.models == ["null_model", "fc_ridge", "probe_bh_f"]  # registry order
    csv = table_csv(table)
    assert list(csv.columns) == ["model", "abide1/asd/accuracy", "abide1/asd/f1", "camcan/age/mae"]
    assert list(csv["model"]) == ["Null (majority / mean)", "FC ridge", "BrainHarmonix-F (LP)"]
    rows = csv.set_index("model")
    # classification in %, significance mark only where the model beats the best baseline
    assert rows.loc["BrainHarmonix-F (LP)", "abide1/asd/accuracy"] == "90.00 ± 5.00†"
    assert rows.loc["FC ridge", "abide1/asd/accuracy"] == "80.00 ± 5.00"
    # worse MAE than the baseline: no mark (mean_diff < 0) although p < alpha
    assert rows.loc["BrainHarmonix-F (LP)", "camcan/age/mae"] == "7.00 ± 0.50"
    md = table_markdown(table)
    lines = md.splitlines()
    assert lines[0] == (
        "| Model | abide1 · asd · ACC (%) | abide1 · asd · F1 (%) | camcan · age · MAE |"
    )
    assert lines[1] == "|---|---|---|---|"
    assert "| **90.00 ± 5.00†** |" in md  # best ACC in bold
    assert "| **6.00 ± 0.50** |" in md  # lowest MAE is the best
    assert "corrected resampled t-test (Nadeau & Bengio 2003)" in md
    tex = table_latex(table)
    assert r"\begin{tabular}{lccc}" in tex
    assert r" & \multicolumn{2}{c}{abide1} & \multicolumn{1}{c}{camcan} \\" in tex
    assert r"\cmidrule(lr){2-3}\cmidrule(lr){4-4}" in tex
    assert r"Model & ACC (\%) & F1 (\%) & MAE \\" in tex
    assert (
        r"BrainHarmonix-F (LP) & \textbf{90.00 $\pm$ 5.00}$^{\dagger}$ & "
        r"\textbf{80.00 $\pm$ 4.00}$^{\dagger}$ & 7.00 $\pm$ 0.50 \\"
    ) in tex
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1
    assert "Nadeau \\& Bengio" in tex


def test_format_cell():
    assert format_cell("auc", 0.71234, 0.0312) == "71.23 ± 3.12"
    assert format_cell("pearson_r", 0.4, 0.05) == "0.400 ± 0.050"
    assert format_cell("mae", 5.432, 0.31) == "5.43 ± 0.31"
    assert format_cell("r2", float("nan"), 0.0) == "n/a"


def test_cli_evaluate_tables_and_metrics_recomputable_from_predictions(tmp_path):
    table = planted_cohort(30)
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    series = write_series(tmp_path / "func", table)
    # an embedding file whose features carry the diagnosis (a probe model's input)
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((30, 8))
    feats[:, 0] += 2.0 * (table["diagnosis"] == "PT").to_numpy()
    feats[:, 1] += (table["age"].to_numpy() - 50) / 10
    np.savez(
        tmp_path / "emb.npz",
        subject=table["subject"].to_numpy(dtype=str),
        session=np.array(["n/a"] * 30),
        features=feats,
    )
    settings = tmp_path / "settings.yaml"
    import yaml

    settings.write_text(
        yaml.safe_dump(
            {
                "tasks": TASKS,
                "grids": SMALL_GRIDS,
                "seeds": [0, 1],
                # probe_noharm: an ablation's embeddings, an entry made from its prefix
                "models": ["null_model", "fc_ridge", "fc_logistic", "probe_bh_f", "probe_noharm"],
            }
        )
    )
    outs = []
    for name, target, kind in (("dx", "diagnosis", "classification"), ("age", "age", "regression")):
        splits = write_split_dirs(
            table, target, kind, tmp_path / "splits" / name, seeds=(0, 1), n_folds=3
        )
        out = tmp_path / "eval" / "synth" / name / "predictions.tsv"
        status = cli.main(
            [
                "evaluate",
                "--dataset",
                "synth",
                "--task",
                name,
                "--settings",
                str(settings),
                "--labels",
                str(tmp_path / "participants.tsv"),
                "--splits",
                *map(str, splits),
                "--series",
                *map(str, series),
                "--embedding",
                f"probe_bh_f={tmp_path / 'emb.npz'}",
                "--embedding",
                f"probe_noharm={tmp_path / 'emb.npz'}",
                "--out",
                str(out),
            ]
        )
        assert status == 0
        outs.append(out)
    assert (
        cli.main(
            [
                "tables",
                "--inputs",
                *map(str, outs),
                "--predictions",
                str(tmp_path / "eval" / "predictions.tsv"),
                "--out-dir",
                str(tmp_path / "tables"),
            ]
        )
        == 0
    )
    written = pd.read_csv(tmp_path / "tables" / "metrics.csv", dtype={"dataset": str})
    assert list(written.columns) == ["dataset", "task", "model", "metric", "mean", "std", "n"]
    recomputed = metrics_from_file(tmp_path / "eval" / "predictions.tsv")
    pd.testing.assert_frame_equal(
        recomputed.reset_index(drop=True), written, check_dtype=False, rtol=1e-9
    )
    # the merged file is the contract: long format, p_<class> n/a for the regression task
    merged = pd.read_csv(
        tmp_path / "eval" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    assert list(merged.columns)[:9] == [
        "dataset",
        "task",
        "model",
        "seed",
        "fold",
        "split",
        "subject",
        "y_true",
        "y_pred",
    ]
    assert {"p_CN", "p_PT"} <= set(merged.columns)
    assert (merged.loc[merged["task"] == "age", "p_PT"] == "n/a").all()
    assert set(merged["model"]) == {
        "null_model",
        "fc_ridge",
        "fc_logistic",
        "probe_bh_f",
        "probe_noharm",
    }
    paper = pd.read_csv(tmp_path / "tables" / "paper_table.csv")
    assert list(paper["model"])[-2:] == ["BrainHarmonix-F (LP)", "noharm (LP)"]
    for ext in ("csv", "md", "tex"):
        assert (tmp_path / "tables" / f"paper_table.{ext}").stat().st_size > 0
    tests = pd.read_csv(tmp_path / "tables" / "tests.csv")
    probe = tests.loc[(tests["model"] == "probe_bh_f") & (tests["role"] == "vs_null")]
    assert (probe["mean_diff"] > 0).all()
    # n counts folds x seeds, and the table's note says so
    assert set(written["n"]) <= {6, 0}
    note = "Mean ± std over 6 test partitions (every fold of every split seed)"
    assert note in (tmp_path / "tables" / "paper_table.md").read_text()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    table = planted_cohort(12)
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    splits = write_split_dirs(table, "age", "regression", tmp_path / "splits", n_folds=3)
    status = cli.main(
        [
            "evaluate",
            "--dataset",
            "synth",
            "--task",
            "age",
            "--settings",
            '{"tasks": {"synth": {"age": {"target": "age", "type": "regression"}}}}',
            "--labels",
            str(tmp_path / "participants.tsv"),
            "--splits",
            str(splits[0]),
            "--out",
            str(tmp_path / "p.tsv"),
        ]
    )
    assert status == 2
    assert "FC models need --series files or --fc-shard" in capsys.readouterr().err
    status = cli.main(
        [
            "evaluate",
            "--dataset",
            "synth",
            "--task",
            "nope",
            "--settings",
            '{"tasks": {"synth": {"age": {"target": "age", "type": "regression"}}}}',
            "--labels",
            str(tmp_path / "participants.tsv"),
            "--splits",
            str(splits[0]),
            "--out",
            str(tmp_path / "p.tsv"),
        ]
    )
    assert status == 2
    assert "no task synth/nope" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"tasks": {"d": {"t": {"target": "x"}}}}, "missing required key 'type'"),
        (
            {"tasks": {"d": {"t": {"target": "x", "type": "classification", "postive": "a"}}}},
            "unknown key",
        ),
        ({"modles": []}, "unknown key"),
        ({"primary_metric": {"regression": "auc"}}, "unknown metric 'auc'"),
        ({"seeds": [0, 0]}, "distinct"),
        (
            {
                "datasets": {"a": {}},
                "evaluate": {"tasks": {"b": {"t": {"target": "x", "type": "regression"}}}},
            },
            "not in the config's datasets",
        ),
    ],
)
def test_settings_errors_name_the_key(block, message):
    from brainharmony.evaluate.settings import SettingsError

    with pytest.raises(SettingsError, match=message):
        settings_from_mapping(block)


def test_binary_task_requires_a_positive_class():
    from brainharmony.evaluate.settings import SettingsError

    spec = settings_from_mapping(
        {"tasks": {"d": {"t": {"target": "dx", "type": "classification"}}}}
    ).task("d", "t")
    with pytest.raises(SettingsError, match="binary task needs 'positive'"):
        spec.resolve_classes(["CN", "PT", "CN"])
    assert spec.resolve_classes(["a", "b", "c"]) == ("a", "b", "c")


def test_partial_out_covariate_flows_from_labels_to_partial_r(tmp_path):
    import yaml

    table = planted_cohort(30)
    rng = np.random.default_rng(7)
    table["score"] = (-0.5 * table["age"] + rng.normal(0, 4, 30)).round(3)
    table.loc[3, "age"] = np.nan  # a subject without the covariate keeps its score
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    series = write_series(tmp_path / "func", table.fillna({"age": 50.0}))
    tasks = {"synth": {"score": {"target": "score", "type": "regression", "partial_out": "age"}}}
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "tasks": tasks,
                "grids": SMALL_GRIDS,
                "models": ["null_model", "fc_ridge"],
                "table_metrics": {"regression": ["mae", "partial_r"]},
            }
        )
    )
    splits = write_split_dirs(table, "score", "regression", tmp_path / "splits", n_folds=3)
    out = tmp_path / "eval" / "synth" / "score" / "predictions.tsv"
    args = ["evaluate", "--dataset", "synth", "--task", "score", "--settings", str(settings)]
    args += ["--labels", str(tmp_path / "participants.tsv"), "--splits", str(splits[0])]
    assert cli.main([*args, "--series", *map(str, series), "--out", str(out)]) == 0
    merged_out = tmp_path / "eval" / "predictions.tsv"
    tables_args = ["tables", "--inputs", str(out), "--predictions", str(merged_out)]
    assert cli.main([*tables_args, "--out-dir", str(tmp_path / "tables")]) == 0
    merged = pd.read_csv(merged_out, sep="\t", dtype={"subject": str})
    age = table.set_index("subject")["age"]
    np.testing.assert_allclose(
        merged["covariate"].to_numpy(float), age.loc[merged["subject"]].to_numpy(float)
    )
    written = pd.read_csv(tmp_path / "tables" / "metrics.csv")
    fc = written.loc[(written["model"] == "fc_ridge") & (written["metric"] == "partial_r")]
    assert len(fc) == 1 and fc["n"].item() == 3
    test = merged.loc[(merged["split"] == "test") & (merged["model"] == "fc_ridge")]
    from brainharmony.evaluate.metrics import partial_r

    by_fold = [partial_r(g["y_true"], g["y_pred"], g["covariate"]) for _, g in test.groupby("fold")]
    assert fc["mean"].item() == pytest.approx(np.mean(by_fold), rel=1e-9)
    pd.testing.assert_frame_equal(
        metrics_from_file(merged_out).reset_index(drop=True), written, check_dtype=False
    )
    paper = pd.read_csv(tmp_path / "tables" / "paper_table.csv")
    assert list(paper.columns) == ["model", "synth/score/mae", "synth/score/partial_r"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"tasks": {"d": {"t": {"target": "x", "type": "classification", "partial_out": "a"}}}},
            "only regression tasks partial out",
        ),
        (
            {"tasks": {"d": {"t": {"target": "x", "type": "regression", "partial_out": "x"}}}},
            "other than the target",
        ),
        ({"select_metric": {"regression": "partial_r"}}, "unknown metric 'partial_r'"),
        ({"primary_metric": {"regression": "partial_r"}}, "unknown metric 'partial_r'"),
    ],
)
def test_partial_out_settings_errors(block, message):
    from brainharmony.evaluate.settings import SettingsError

    with pytest.raises(SettingsError, match=message):
        settings_from_mapping(block)


def test_partial_out_round_trips_through_the_settings_json():
    block = {"tasks": {"d": {"t": {"target": "x", "type": "regression", "partial_out": "age"}}}}
    settings = settings_from_mapping(block)
    assert settings.task("d", "t").partial_out == "age"
    again = settings_from_mapping(settings.to_dict())
    assert again.task("d", "t") == settings.task("d", "t")
    from brainharmony.evaluate.settings import TaskSpec

    assert TaskSpec.from_dict(settings.task("d", "t").to_dict()).partial_out == "age"


def test_shared_lmae_predictor_is_labelled_in_every_table_format():
    from brainharmony.evaluate.tables import SHARED_LMAE

    metrics, tests = _metrics()
    metrics = metrics.copy()
    metrics.loc[metrics["model"] == metrics["model"].iloc[-1], "model"] = "predictor"
    tests = tests.iloc[0:0]
    types = {
        (d, t): ("regression" if m in ("mae", "pearson_r", "r2") else "classification")
        for d, t, m in zip(metrics["dataset"], metrics["task"], metrics["metric"], strict=True)
    }
    label = "LMAE-RWMoE-SSM" + SHARED_LMAE
    for mode, shown in (("per_fold", False), ("shared", True)):
        settings = settings_from_mapping({"predictor_lmae": mode})
        table = build_paper_table(metrics, tests, settings, types)
        texts = [
            "\n".join(table_csv(table)["model"]),
            table_markdown(table),
            table_latex(table),
        ]
        for text in texts:
            assert (label in text) is shown, mode
            assert "LMAE-RWMoE-SSM" in text
        assert ("Shared LMAE" in table.note) is shown
    with pytest.raises(Exception, match="predictor_lmae"):
        settings_from_mapping({"predictor_lmae": "all"})
