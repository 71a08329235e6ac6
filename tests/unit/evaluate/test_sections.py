"""Table sections (``evaluate.sections``): rows and columns per section, the † marks of
each section's tasks, notes naming why every "–" cell is empty, the section figure's
points, and the settings errors that name the section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainharmony.evaluate.settings import SettingsError, settings_from_mapping
from brainharmony.evaluate.tables import (
    build_sections,
    make_tables,
    sections_csv,
    sections_latex,
    sections_markdown,
)

TASKS = {
    "d": {
        "cls": {"target": "dx", "type": "classification", "positive": "PT"},
        "reg": {"target": "age", "type": "regression"},
    },
    "e": {"other": {"target": "age", "type": "regression"}},
}
MODELS = ["null_model", "fc_ridge", "fc_logistic", "probe_a", "probe_b", "probe_c"]
TYPES = {("d", "cls"): "classification", ("d", "reg"): "regression", ("e", "other"): "regression"}


def _metrics() -> tuple[pd.DataFrame, pd.DataFrame]:
    """metrics.csv / tests.csv: fc_logistic only on d/cls; probe_b nowhere on d/reg."""
    rows = []
    values = {"null_model": 0.5, "fc_ridge": 0.7, "fc_logistic": 0.72, "probe_a": 0.8}
    values |= {"probe_b": 0.6, "probe_c": 0.65}
    for model, acc in values.items():
        rows.append(("d", "cls", model, "balanced_accuracy", acc, 0.05, 10))
        if model not in ("fc_logistic", "probe_b"):
            rows.append(("d", "reg", model, "mae", 10 * (1 - acc), 0.5, 10))
            rows.append(("e", "other", model, "mae", 5 * (1 - acc), 0.5, 10))
    metrics = pd.DataFrame(rows, columns=["dataset", "task", "model", "metric", "mean", "std", "n"])
    # probe_a beats the best baseline on d/cls only; probe_c on e/other only
    tests = pd.DataFrame(
        [
            (
                "d",
                "cls",
                "probe_a",
                "fc_logistic",
                "best_baseline",
                "balanced_accuracy",
                0.08,
                0.01,
            ),
            ("d", "reg", "probe_a", "fc_ridge", "best_baseline", "mae", 1.0, 0.2),
            ("e", "other", "probe_c", "fc_ridge", "best_baseline", "mae", 0.2, 0.01),
        ],
        columns=["dataset", "task", "model", "reference", "role", "metric", "mean_diff", "p"],
    )
    return metrics, tests


def _settings(sections: dict) -> object:
    return settings_from_mapping(
        {
            "tasks": TASKS,
            "models": MODELS,
            "table_metrics": {"classification": ["balanced_accuracy"], "regression": ["mae"]},
            "sections": sections,
        }
    )


REASONS = {
    ("d", "reg"): {
        "fc_logistic": "not applicable to regression",
        "probe_b": "not run: needs T1w images",
    }
}


def test_sections_split_rows_columns_marks_and_notes():
    metrics, tests = _metrics()
    settings = _settings(
        {
            "first": {"title": "Table 1", "tasks": ["d/cls"], "models": ["probe_a", "fc_ridge"]},
            "second": {"title": "Table 2", "tasks": ["d/reg", "e"]},
        }
    )
    first, second = build_sections(metrics, tests, settings, TYPES, REASONS)
    # rows: the section's models in its order; columns: its tasks only
    assert (first.key, first.title) == ("first", "Table 1")
    assert first.models == ["probe_a", "fc_ridge"]
    assert first.columns == [("d", "cls", "balanced_accuracy")]
    # default rows: every model with results or a recorded reason, registry order first
    assert second.columns == [("d", "reg", "mae"), ("e", "other", "mae")]
    assert set(second.models) == set(MODELS)
    assert second.models.index("null_model") < second.models.index("probe_a")
    # † per section's tasks: probe_a on d/cls (first), probe_c on e/other (second) only
    assert first.text("probe_a", ("d", "cls", "balanced_accuracy")).endswith("†")
    assert not second.text("probe_a", ("d", "reg", "mae")).endswith("†")
    assert second.text("probe_c", ("e", "other", "mae")).endswith("†")
    assert not second.text("probe_c", ("d", "reg", "mae")).endswith("†")
    # every empty cell is explained: the sidecar's reasons, and "not run" without one
    assert first.absent == {}
    assert "–:" not in first.note
    assert second.absent == {
        ("fc_logistic", ("d", "reg")): "not applicable to regression",
        ("fc_logistic", ("e", "other")): "not run: no predictions among the inputs (no reason "
        "recorded)",
        ("probe_b", ("d", "reg")): "not run: needs T1w images",
        ("probe_b", ("e", "other")): "not run: no predictions among the inputs (no reason "
        "recorded)",
    }
    assert "FC logistic regression: not applicable to regression (d/reg)" in second.note
    assert "b (LP): not run: needs T1w images (d/reg)" in second.note
    assert "b (LP): not run: no predictions among the inputs (no reason recorded) (e/other)" in (
        second.note
    )
    # Markdown: a heading per section, "–" only where the note says why
    md = sections_markdown([first, second], {"second": "paper_figure_second.png"})
    assert md.count("## ") == 2 and "## Table 1\n" in md and "## Table 2\n" in md
    assert md.count("| – |") + md.count("| – | –") >= 2
    assert "![Table 2](paper_figure_second.png)" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| FC logistic")]
    assert lines == ["| FC logistic regression | – | – |"]
    # LaTeX: one table each, labelled by id, captioned by title and note
    tex = sections_latex([first, second])
    assert tex.count(r"\begin{table}") == 2
    assert r"\label{tab:first}" in tex and r"\label{tab:second}" in tex
    assert r"\caption{Table 1. Mean $\pm$ std" in tex
    # CSV: a section column, the union of columns, "–" for cells without a value
    csv = sections_csv([first, second])
    assert list(csv.columns) == [
        "section",
        "model",
        "d/cls/balanced_accuracy",
        "d/reg/mae",
        "e/other/mae",
    ]
    assert list(csv["section"]) == ["first"] * 2 + ["second"] * len(MODELS)
    row = csv.loc[(csv["section"] == "second") & (csv["model"] == "FC logistic regression")]
    assert row[["d/reg/mae", "e/other/mae"]].values.tolist() == [["–", "–"]]
    assert row["d/cls/balanced_accuracy"].item() == ""  # not a column of that section


def test_without_sections_one_table_as_before():
    metrics, tests = _metrics()
    settings = _settings({})
    (table,) = build_sections(metrics, tests, settings, TYPES, REASONS)
    assert table.key == "" and len(table.columns) == 3
    assert sections_markdown([table]).startswith("| Model |")
    assert "section" not in sections_csv([table]).columns
    assert r"\label{tab:results}" in sections_latex([table])


def _write_predictions(root: Path) -> list[Path]:
    """A regression task whose MAE per fold is known: y_pred = y_true + c * (fold + 1)
    for probe_hubs<c> (c = 1, 2, 4 for 32, 64, 128 hubs) and a constant for the others."""
    rng = np.random.default_rng(0)
    offsets = {"null_model": 6.0, "fc_ridge": 5.0, "probe_hubs32": 1.0}
    offsets |= {"probe_hubs64": 2.0, "probe_hubs128": 4.0}
    rows = []
    for fold in range(3):
        subjects = [f"s{fold}{i}" for i in range(6)]
        truth = rng.normal(50, 10, len(subjects))
        for model, c in offsets.items():
            shift = c * (fold + 1) if model.startswith("probe_") else c + 0.1 * fold
            for split in ("val", "test"):
                for s, t in zip(subjects, truth, strict=True):
                    rows.append(("syn", "age", model, 0, fold, split, s, t, t + shift))
    frame = pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "task",
            "model",
            "seed",
            "fold",
            "split",
            "subject",
            "y_true",
            "y_pred",
        ],
    )
    out = root / "syn" / "age" / "predictions.tsv"
    out.parent.mkdir(parents=True)
    frame.to_csv(out, sep="\t", index=False)
    task = {"dataset": "syn", "task": "age", "target": "age", "type": "regression"}
    sidecar = {
        "Task": task,
        "Classes": None,
        "Models": list(offsets),
        "SkippedModels": {"fc_logistic": "not applicable to regression"},
        "NotRun": {"probe_hubs256": "needs T1w images (every dataset is parcellated)"},
        "TestTrainRatio": 0.5,
    }
    out.with_suffix(".json").write_text(json.dumps(sidecar))
    return [out]


def test_section_figure_has_the_right_points_and_is_written_next_to_the_tables(tmp_path):
    inputs = _write_predictions(tmp_path / "eval")
    settings = settings_from_mapping(
        {
            "tasks": {"syn": {"age": {"target": "age", "type": "regression"}}},
            "models": [
                "null_model",
                "fc_ridge",
                "fc_logistic",
                "probe_hubs32",
                "probe_hubs64",
                "probe_hubs128",
                "probe_hubs256",
            ],
            "seeds": [0],
            "n_folds": 3,
            "sections": {
                "main": {"title": "Results", "models": ["null_model", "fc_ridge", "fc_logistic"]},
                "hubs": {
                    "title": "Hub sweep",
                    "tasks": ["syn/age"],
                    "models": ["probe_hubs32", "probe_hubs64", "probe_hubs128", "probe_hubs256"],
                    "figure": {"x": r"probe_hubs(\d+)", "xlabel": "N_H", "log_x": True},
                },
            },
        }
    )
    out = tmp_path / "tables"
    paths = make_tables(inputs, tmp_path / "eval" / "predictions.tsv", out, settings)
    points = pd.read_csv(out / "paper_figure_hubs.csv")
    # probe_hubs256 was not run: no point; the others at their N_H, MAE = c * mean(1, 2, 3)
    assert list(points["x"]) == [32, 64, 128]
    assert list(points["metric"]) == ["mae"] * 3
    np.testing.assert_allclose(points["mean"], [2.0, 4.0, 8.0])
    np.testing.assert_allclose(points["std"], [1.0, 2.0, 4.0])  # std of c * (1, 2, 3), ddof 1
    assert list(points["n"]) == [3, 3, 3]
    png = out / "paper_figure_hubs.png"
    assert paths["figure_hubs"] == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "paper_figure_main.png").exists()
    md = (out / "paper_table.md").read_text()
    assert "## Results\n" in md and "## Hub sweep\n" in md
    assert "![Hub sweep](paper_figure_hubs.png)" in md
    assert "FC logistic regression: not applicable to regression (syn/age)" in md
    assert "hubs256 (LP): not run: needs T1w images (every dataset is parcellated) (syn/age)" in md
    side = json.loads((out / "tables.json").read_text())
    assert [s["id"] for s in side["Sections"]] == ["main", "hubs"]
    assert side["Sections"][1]["figure"] == "paper_figure_hubs.png"
    assert side["Absent"]["syn/age"]["probe_hubs256"].startswith("not run: needs T1w")
    csv = pd.read_csv(out / "paper_table.csv", keep_default_na=False)
    assert set(csv["section"]) == {"main", "hubs"}
    # the report draws every section, its note and its figure from these files
    from brainharmony.evaluate.report import ReportBuilder

    html = ReportBuilder(results=tmp_path, tables=out).section_results()
    assert "<h3>Results</h3>" in html and "<h3>Hub sweep</h3>" in html
    assert html.count("<img") == 1 and "not run: needs T1w images" in html


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"s": {"tasks": ["d/nope"]}}, r"evaluate\.sections\.s\.tasks: 'd/nope' is not a task"),
        ({"s": {"tasks": ["zz"]}}, r"evaluate\.sections\.s\.tasks: 'zz'"),
        ({"s": {"models": ["probe_x"]}}, r"evaluate\.sections\.s\.models: \['probe_x'\] are not"),
        ({"s": {"colour": 1}}, r"unknown key\(s\) \['colour'\] in evaluate\.sections\.s"),
        ({"bad-id": {}}, r"evaluate\.sections\.bad-id: a section id"),
        (
            {"s": {"models": ["probe_a"], "figure": {"x": {"probe_b": 1, "probe_a": 2}}}},
            r"evaluate\.sections\.s\.figure\.x: \['probe_b'\] are not rows",
        ),
        ({"s": {"figure": {"x": "probe_(a|b)(c)"}}}, r"s\.figure\.x: the pattern needs exactly"),
        ({"s": {"figure": {"x": r"probe_(\w)"}}}, r"s\.figure\.x: the pattern's group must be"),
        ({"s": {"figure": {"x": {"probe_a": 1}}}}, r"s\.figure\.x: fewer than two"),
        (
            {"s": {"figure": {"x": {"probe_a": 0, "probe_b": 1}, "log_x": True}}},
            r"s\.figure\.log_x: every x value must be > 0",
        ),
        ({"s": {"figure": {"xlabel": "N"}}}, r"s\.figure: missing required key 'x'"),
    ],
)
def test_section_settings_errors_name_the_section(sections, message):
    with pytest.raises(SettingsError, match=message):
        _settings(sections)


def test_sections_round_trip_through_the_settings_json():
    settings = _settings(
        {
            "b": {
                "tasks": ["e"],
                "models": ["probe_a", "probe_b"],
                "figure": {"x": {"probe_a": 1, "probe_b": 2}},
            },
            "a": {"title": "A"},
        }
    )
    assert list(settings.sections) == ["b", "a"]  # config order
    assert settings.sections["a"].tasks == (("d", "cls"), ("d", "reg"), ("e", "other"))
    again = settings_from_mapping(json.loads(json.dumps(settings.to_dict())))
    assert again.sections == settings.sections


def test_evaluate_records_not_run_models_and_the_table_note_quotes_them(tmp_path, capsys):
    from brainharmony import cli
    from tests.unit.evaluate.test_protocol import planted_cohort, write_series, write_split_dirs

    table = planted_cohort(18)
    table.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    series = write_series(tmp_path / "func", table)
    splits = write_split_dirs(table, "age", "regression", tmp_path / "splits", n_folds=3)
    settings = json.dumps(
        {
            "tasks": {"synth": {"age": {"target": "age", "type": "regression"}}},
            "models": ["null_model", "fc_ridge", "probe_bh_f"],
            "grids": {"ridge_alphas": [1.0]},
        }
    )
    out = tmp_path / "eval" / "synth" / "age" / "predictions.tsv"
    args = ["evaluate", "--dataset", "synth", "--task", "age", "--settings", settings]
    args += ["--labels", str(tmp_path / "participants.tsv"), "--splits", str(splits[0])]
    args += ["--series", *map(str, series), "--models", "null_model", "fc_ridge"]
    # a model both run and listed as not run is refused
    bad = [*args, "--not-run", "fc_ridge=no reason", "--out", str(out)]
    assert cli.main(bad) == 2
    assert "both evaluated and listed as not run" in capsys.readouterr().err
    reason = "needs T1w images, and every dataset of synth/age is parcellated"
    assert cli.main([*args, "--not-run", f"probe_bh_f={reason}", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["NotRun"] == {"probe_bh_f": reason}
    tables = ["tables", "--inputs", str(out), "--predictions", str(tmp_path / "merged.tsv")]
    assert cli.main([*tables, "--out-dir", str(tmp_path / "tables")]) == 0
    md = (tmp_path / "tables" / "paper_table.md").read_text()
    assert "| BrainHarmonix-F (LP) | – | – | – |" in md
    assert f"–: BrainHarmonix-F (LP): not run: {reason} (synth/age)." in md
