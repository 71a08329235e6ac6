"""Merged predictions, metrics, paired tests and paper-layout tables.

``brainharmony tables`` reads the per-task ``predictions.tsv`` files written by
``brainharmony evaluate`` and writes:

* ``results/eval/predictions.tsv`` (+ ``.json``): every task's predictions, one long
  table (columns :data:`brainharmony.evaluate.metrics.PREDICTION_COLUMNS`, then one
  ``p_<class>`` column per class of any task, ``n/a`` where a task lacks it);
* ``<out-dir>/metrics.csv``: ``dataset, task, model, metric, mean, std, n`` over the
  test partitions of every fold and seed (recomputable with
  :func:`metrics_from_file`), and ``metrics_per_fold.csv``;
* ``<out-dir>/tests.csv``: every model against the null model and against the best
  baseline (:mod:`brainharmony.evaluate.stats`);
* ``<out-dir>/paper_table.{csv,md,tex}``: rows models, columns dataset / task /
  metric, cells ``mean ± std`` (classification metrics in %), the best mean of each
  column in bold (Markdown, LaTeX), ``†`` where a model beats the task's best
  baseline at the configured alpha, and a note naming the test and saying why each
  ``–`` cell is empty (the models the evaluation skipped or did not run, from the
  predictions sidecars);
* with ``evaluate.sections``: one table per section in those files (a Markdown heading
  and a LaTeX table each; the CSV gains a ``section`` column), and for a section with a
  ``figure`` the figure ``paper_figure_<id>.png`` and its points ``paper_figure_<id>.csv``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.evaluate.harness import HARNESS, baseline_names, display_name
from brainharmony.evaluate.metrics import (
    COVARIATE_COLUMN,
    PREDICTION_COLUMNS,
    better,
    metrics_from_predictions,
    per_fold_metrics,
    summarise,
)
from brainharmony.evaluate.settings import (
    COVARIATE_METRICS,
    METRIC_LABELS,
    SECTION_FIGURE_STEM,
    EvalSettings,
    TableSection,
    TaskSpec,
    settings_from_mapping,
)
from brainharmony.evaluate.stats import TEST_NAME, paired_tests
from brainharmony.io import (
    InputDataError,
    PathLike,
    atomic_path,
    provenance,
    write_json,
    write_text,
    write_tsv,
)

logger = logging.getLogger(__name__)

PERCENT_METRICS = frozenset({"accuracy", "balanced_accuracy", "f1", "auc"})
MARK = "†"


# --------------------------------------------------------------------------- I/O


def read_predictions(path: PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a predictions TSV and its JSON sidecar.

    Returns
    -------
    predictions : pandas.DataFrame
        ``subject``, ``y_true``, ``y_pred`` as strings; ``seed``, ``fold`` as int.
    meta : dict
        ``{"Tasks": {"<dataset>/<task>": {...}}, "Settings": {...}}`` (a single-task
        sidecar is converted to this form).
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "predictions file not found")
    frame = pd.read_csv(
        p,
        sep="\t",
        dtype={
            "dataset": str,
            "task": str,
            "model": str,
            "subject": str,
            "y_true": str,
            "y_pred": str,
            "split": str,
        },
        na_values=["n/a"],
        keep_default_na=False,
    )
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise InputDataError(p, f"missing columns {missing}")
    frame["seed"] = frame["seed"].astype(int)
    frame["fold"] = frame["fold"].astype(int)
    side = p.with_suffix(".json")
    if not side.is_file():
        raise InputDataError(side, "sidecar not found (it describes the tasks and classes)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputDataError(side, f"not valid JSON: {err}") from None
    if "Tasks" not in meta:
        if "Task" not in meta:
            raise InputDataError(side, "no 'Task' or 'Tasks' entry")
        t = meta["Task"]
        entry = {k: v for k, v in meta.items() if k not in ("Provenance", "Settings", "Columns")}
        meta = {"Tasks": {f"{t['dataset']}/{t['task']}": entry}, "Settings": meta.get("Settings")}
    return frame, meta


def task_map(meta: Mapping[str, Any]) -> dict[tuple[str, str], tuple[TaskSpec, list[str] | None]]:
    """``(dataset, task) -> (TaskSpec, classes)`` from a predictions sidecar."""
    out = {}
    for entry in meta["Tasks"].values():
        spec = TaskSpec.from_dict(entry["Task"])
        out[spec.key] = (spec, entry.get("Classes"))
    return out


def merge_predictions(
    paths: Sequence[PathLike],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Concatenate per-task prediction files (each task once)."""
    frames, tasks = [], {}
    settings = None
    for path in paths:
        frame, meta = read_predictions(path)
        for key, entry in meta["Tasks"].items():
            if key in tasks:
                raise InputDataError(path, f"task {key} is in two prediction files")
            tasks[key] = entry
        settings = settings or meta.get("Settings")
        frames.append(frame)
    if not frames:
        raise InputDataError(None, "no prediction files given")
    merged = pd.concat(frames, ignore_index=True)
    p_cols = sorted({c for f in frames for c in f.columns if c.startswith("p_")})
    cov = [COVARIATE_COLUMN] if any(COVARIATE_COLUMN in f.columns for f in frames) else []
    merged = merged[list(PREDICTION_COLUMNS) + cov + p_cols]
    merged = merged.sort_values(
        ["dataset", "task", "model", "seed", "fold", "split", "subject"], kind="stable"
    ).reset_index(drop=True)
    return merged, {"Tasks": tasks, "Settings": settings}


#: Why a model has no cell in a task: ``(dataset, task) -> {model: reason}``.
Reasons = Mapping[tuple[str, str], Mapping[str, str]]

NOT_RUN = "not run: "


def absence_reasons(meta: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, str]]:
    """Why models have no predictions, per task, from a predictions sidecar.

    ``SkippedModels`` (the harness found the model not applicable, e.g. logistic
    regression on a regression task) give their reason as it is; ``NotRun`` (models the
    workflow did not run on the task, e.g. a T1w model on parcellated data) give
    ``"not run: <reason>"``.
    """
    out: dict[tuple[str, str], dict[str, str]] = {}
    for key, entry in meta["Tasks"].items():
        ds, _, tk = key.partition("/")
        here = out.setdefault((ds, tk), {})
        for model, reason in (entry.get("NotRun") or {}).items():
            here[str(model)] = NOT_RUN + str(reason)
        for model, reason in (entry.get("SkippedModels") or {}).items():
            here[str(model)] = str(reason)
    return out


def metrics_from_file(path: PathLike) -> pd.DataFrame:
    """metrics.csv recomputed from a predictions TSV and its sidecar alone."""

    frame, meta = read_predictions(path)
    return metrics_from_predictions(frame, task_map(meta))


# --------------------------------------------------------------------------- tables


def format_cell(metric: str, mean: float, std: float) -> str:
    """``mean ± std``: classification metrics in % (2 decimals), MAE 2, r / R2 3."""
    if not np.isfinite(mean):
        return "n/a"
    if metric in PERCENT_METRICS:
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    if metric == "mae":
        return f"{mean:.2f} ± {std:.2f}"
    return f"{mean:.3f} ± {std:.3f}"


@dataclass(frozen=True)
class PaperTable:
    """A paper-layout table.

    Attributes
    ----------
    models : list of str
        Row order (harness names).
    columns : list of (dataset, task, metric)
    cells : dict
        ``(model, column) -> text`` (``mean ± std``).
    bold : set
        ``(model, column)`` holding the best mean of its column.
    marked : set
        ``(model, (dataset, task))`` significantly better than the best baseline.
    note : str
        What the numbers are and which test the mark stands for.
    labels : mapping of str to str
        ``model -> row label`` under the run's settings (a frozen fine-tuning entry says
        "LP"; the predictor with a shared LMAE says so; see :func:`row_labels`).
    key, title : str
        The section's id and heading (``evaluate.sections``; empty for the one table
        of a run without sections).
    absent : mapping
        ``(model, (dataset, task)) -> reason`` for every row without cells in a task
        of the table (the note lists them).
    """

    models: list[str]
    columns: list[tuple[str, str, str]]
    cells: dict[tuple[str, tuple[str, str, str]], str]
    bold: set[tuple[str, tuple[str, str, str]]]
    marked: set[tuple[str, tuple[str, str]]]
    note: str
    labels: Mapping[str, str] = field(default_factory=dict)
    key: str = ""
    title: str = ""
    absent: Mapping[tuple[str, tuple[str, str]], str] = field(default_factory=dict)

    def label(self, model: str) -> str:
        """Row label (``labels``, else :func:`~brainharmony.evaluate.harness.display_name`)."""
        return self.labels.get(model) or display_name(model)

    def text(self, model: str, col: tuple[str, str, str]) -> str:
        """The cell text with its significance mark; ``""`` when not applicable."""
        value = self.cells.get((model, col), "")
        if value and (model, (col[0], col[1])) in self.marked and value != "n/a":
            value += MARK
        return value

    def header(self, col: tuple[str, str, str]) -> str:
        label = METRIC_LABELS.get(col[2], col[2])
        return label + (" (%)" if col[2] in PERCENT_METRICS else "")


def model_order(models: Sequence[str]) -> list[str]:
    """Registry order (baselines first), unknown names after, alphabetically."""
    known = [m for m in HARNESS if m in models]
    return known + sorted(m for m in models if m not in HARNESS)


def build_paper_table(
    metrics: pd.DataFrame,
    tests: pd.DataFrame,
    settings: EvalSettings,
    task_types: Mapping[tuple[str, str], str],
    reasons: Reasons | None = None,
    section: TableSection | None = None,
    section_id: str = "",
) -> PaperTable:
    """Arrange metrics.csv into the papers' layout (see the module notes).

    Parameters
    ----------
    metrics, tests : pandas.DataFrame
        metrics.csv and tests.csv.
    settings : EvalSettings
    task_types : mapping
        ``(dataset, task) -> task type``, in column order.
    reasons : mapping, optional
        Why models lack predictions per task (:func:`absence_reasons`); a row without
        cells in a task whose reason is not recorded is noted "not run" all the same.
    section : TableSection, optional
        Restrict the columns to its tasks and the rows to its models (in its order),
        and head the table with its title (``section_id`` is its id).
    """
    reasons = reasons or {}
    tasks = list(task_types)
    if section is not None and section.tasks:
        missing = [f"{d}/{t}" for d, t in section.tasks if (d, t) not in task_types]
        if missing:
            raise InputDataError(
                None,
                f"evaluate.sections.{section_id}: tasks {missing} have no predictions among the "
                f"inputs (tasks found: {[f'{d}/{t}' for d, t in task_types]})",
            )
        tasks = list(section.tasks)
    in_tasks = metrics.loc[
        [(d, t) in set(tasks) for d, t in zip(metrics["dataset"], metrics["task"], strict=True)]
    ]
    if section is not None and section.models:
        models = list(section.models)
    else:
        found = list(dict.fromkeys(in_tasks["model"]))
        found += [m for t in tasks for m in reasons.get(t, {}) if m not in found]
        models = model_order(found)
    columns: list[tuple[str, str, str]] = []
    computed = set(zip(metrics["dataset"], metrics["task"], metrics["metric"], strict=True))
    for ds, tk in tasks:
        for metric in settings.table_metrics[task_types[(ds, tk)]]:
            if metric in COVARIATE_METRICS and (ds, tk, metric) not in computed:
                continue  # partial_r: only tasks with a partial_out covariate have it
            columns.append((ds, tk, metric))
    index = metrics.set_index(["dataset", "task", "model", "metric"])
    cells, bold = {}, set()
    n_values: set[int] = set()
    for col in columns:
        means: dict[str, float] = {}
        for model in models:
            key = (col[0], col[1], model, col[2])
            if key not in index.index:
                continue
            row = index.loc[key]
            cells[(model, col)] = format_cell(col[2], float(row["mean"]), float(row["std"]))
            if int(row["n"]) > 0:
                n_values.add(int(row["n"]))
            means[model] = float(row["mean"])
        best_value = float("nan")
        for value in means.values():
            if better(col[2], value, best_value):
                best_value = value
        if np.isfinite(best_value):  # every model tied for the best is bold
            bold |= {
                (m, col) for m, v in means.items() if np.isclose(v, best_value, rtol=0, atol=1e-12)
            }
    marked = set()
    if len(tests):
        sig = tests.loc[
            (tests["role"] == "best_baseline")
            & (tests["p"] < settings.alpha)
            & (tests["mean_diff"] > 0)
        ]
        marked = {
            (m, (d, t)) for d, t, m in zip(sig["dataset"], sig["task"], sig["model"], strict=True)
        }
    n_text = "/".join(str(n) for n in sorted(n_values)) or "0"
    primary = ", ".join(
        f"{kind}: {METRIC_LABELS[m]}" for kind, m in settings.primary_metric.items()
    )
    note = (
        f"Mean ± std over {n_text} test partitions (every fold of every split seed) "
        f"(hyperparameters chosen on validation partitions only). Classification "
        f"metrics in %. Bold: best mean per column. {MARK}: better than the task's best "
        f"baseline at p < {settings.alpha:g} ({TEST_NAME}, on the primary metric: "
        f"{primary})."
    )
    labels = {m: display_name(m, settings) for m in models}
    shared = row_labels(settings, models)
    labels.update(shared)
    if shared:
        note += (
            " Shared LMAE: the predictor's LMAE stage was pretrained once, on every "
            "subject of pretrain.datasets (evaluate.predictor_lmae: shared); where the "
            "evaluated dataset is one of them, its test folds were seen (transductive)."
        )
    absent: dict[tuple[str, tuple[str, str]], str] = {}
    for model in models:
        for task in tasks:
            if any((model, c) in cells for c in columns if c[:2] == task):
                continue
            absent[(model, task)] = reasons.get(task, {}).get(model) or (
                NOT_RUN + "not in evaluate.models"
                if model not in settings.models
                else NOT_RUN + "no predictions among the inputs (no reason recorded)"
            )
    if absent:
        note += (
            " –: "
            + "; ".join(
                f"{labels[m]}: {reason} ({', '.join(f'{d}/{t}' for d, t in where)})"
                for (m, reason), where in _grouped(absent).items()
            )
            + "."
        )
    title = section.title if section is not None else ""
    return PaperTable(models, columns, cells, bold, marked, note, labels, section_id, title, absent)


def _grouped(
    absent: Mapping[tuple[str, tuple[str, str]], str],
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``(model, reason) -> tasks``, in row then column order."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for (model, task), reason in absent.items():
        out.setdefault((model, reason), []).append(task)
    return out


def build_sections(
    metrics: pd.DataFrame,
    tests: pd.DataFrame,
    settings: EvalSettings,
    task_types: Mapping[tuple[str, str], str],
    reasons: Reasons | None = None,
) -> list[PaperTable]:
    """One :class:`PaperTable` per ``evaluate.sections`` entry, in order; without
    sections, the one table of every task and model."""
    if not settings.sections:
        return [build_paper_table(metrics, tests, settings, task_types, reasons)]
    return [
        build_paper_table(metrics, tests, settings, task_types, reasons, section, key)
        for key, section in settings.sections.items()
    ]


#: Suffix of the predictor's row when its LMAE was pretrained once for all folds.
SHARED_LMAE = " (shared LMAE)"


def row_labels(settings: EvalSettings, models: Sequence[str]) -> dict[str, str]:
    """Row labels the predictor's LMAE variant adds (``shared``)."""
    if settings.predictor_lmae == "shared" and "predictor" in models:
        return {"predictor": display_name("predictor", settings) + SHARED_LMAE}
    return {}


def table_csv(table: PaperTable) -> pd.DataFrame:
    """The table as a DataFrame: ``model`` then one ``dataset/task/metric`` column each
    (``–`` where the model has no value; the note says why)."""
    data: dict[str, list[str]] = {"model": [table.label(m) for m in table.models]}
    for col in table.columns:
        data["/".join(col)] = [table.text(m, col) or "–" for m in table.models]
    return pd.DataFrame(data)


def sections_csv(tables: Sequence[PaperTable]) -> pd.DataFrame:
    """Several sections as one DataFrame: ``section`` (its id), ``model``, then the
    union of their columns (empty where a column is not one of the row's section)."""
    if len(tables) == 1 and not tables[0].key:
        return table_csv(tables[0])
    frames = [table_csv(t).assign(section=t.key) for t in tables]
    merged = pd.concat(frames, ignore_index=True).fillna("")
    return merged[["section"] + [c for c in merged.columns if c != "section"]]


def table_markdown(table: PaperTable) -> str:
    """GitHub-flavoured Markdown (two header rows merged as ``dataset · task · metric``)."""
    head = ["Model"] + [f"{d} · {t} · {table.header(c)}" for c in table.columns for d, t, _ in [c]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in table.models:
        cells = [table.label(m)]
        for col in table.columns:
            text = table.text(m, col)
            cells.append(f"**{text}**" if (m, col) in table.bold and text else text or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + table.note + "\n"


def sections_markdown(tables: Sequence[PaperTable], figures: Mapping[str, str] = {}) -> str:
    """Every section: ``## <title>``, its table and note, and its figure (``figures``:
    section id -> file name, linked relative to the Markdown file). One table without a
    section id is :func:`table_markdown` alone."""
    if len(tables) == 1 and not tables[0].key:
        return table_markdown(tables[0])
    parts = []
    for t in tables:
        text = f"## {t.title or t.key}\n\n" + table_markdown(t)
        if t.key in figures:
            text += f"\n![{t.title or t.key}]({figures[t.key]})\n"
        parts.append(text)
    return "\n".join(parts)


def sections_latex(tables: Sequence[PaperTable]) -> str:
    """One booktabs table per section (caption: its title then its note; label
    ``tab:<id>``); one table without a section id is :func:`table_latex` alone."""
    if len(tables) == 1 and not tables[0].key:
        return table_latex(tables[0])
    return "\n".join(
        table_latex(t, (t.title or t.key).rstrip(".") + ".", f"tab:{t.key}") for t in tables
    )


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def _latex_cell(text: str, bold: bool) -> str:
    if not text:
        return "--"
    mark = text.endswith(MARK)
    core = r" $\pm$ ".join(latex_escape(part) for part in text.removesuffix(MARK).split(" ± "))
    if bold:
        core = r"\textbf{" + core + "}"
    return core + (r"$^{\dagger}$" if mark else "")


def table_latex(table: PaperTable, caption: str = "", label: str = "tab:results") -> str:
    """A booktabs table: dataset and task as spanning header rows, metrics below."""
    ncol = len(table.columns)
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{"
        + latex_escape(caption or "Downstream results.")
        + " "
        + latex_escape(table.note).replace(MARK, r"$^{\dagger}$").replace("±", r"$\pm$")
        + "}",
        r"\label{" + label + "}",
        r"\begin{tabular}{l" + "c" * ncol + "}",
        r"\toprule",
    ]
    for level in (0, 1):
        spans: list[tuple[str, int, int]] = []
        for i, col in enumerate(table.columns):
            key = col[: level + 1]
            if spans and spans[-1][0] == key:
                spans[-1] = (key, spans[-1][1], i)
            else:
                spans.append((key, i, i))
        cells = [""]
        rules = []
        for key, a, b in spans:
            n = b - a + 1
            cells.append(r"\multicolumn{" + str(n) + "}{c}{" + latex_escape(key[-1]) + "}")
            rules.append(r"\cmidrule(lr){" + f"{a + 2}-{b + 2}" + "}")
        lines.append(" & ".join(cells) + r" \\")
        lines.append("".join(rules))
    lines.append(
        "Model & " + " & ".join(latex_escape(table.header(c)) for c in table.columns) + r" \\"
    )
    lines.append(r"\midrule")
    for m in table.models:
        row = [latex_escape(table.label(m))]
        row += [_latex_cell(table.text(m, c), (m, c) in table.bold) for c in table.columns]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures

#: Columns of a section figure's points (``paper_figure_<id>.csv``).
FIGURE_COLUMNS = ("model", "label", "x", "dataset", "task", "metric", "mean", "std", "n")


def figure_points(
    table: PaperTable,
    metrics: pd.DataFrame,
    settings: EvalSettings,
    task_types: Mapping[tuple[str, str], str],
) -> pd.DataFrame:
    """The points of a section's figure: for each task of the section, each row with
    an x value (``figure.x``) and a value of the plotted metric (``figure.metric``,
    default the primary metric), its mean, std and n over the test partitions.

    Rows without metrics (not run) have no point; columns :data:`FIGURE_COLUMNS`.
    """
    spec = settings.sections[table.key].figure
    if spec is None:
        raise ValueError(f"evaluate.sections.{table.key} has no figure")
    xs = spec.points(table.models)
    index = metrics.set_index(["dataset", "task", "model", "metric"])
    rows = []
    tasks = list(dict.fromkeys(c[:2] for c in table.columns))
    for ds, tk in tasks:
        kind = task_types[(ds, tk)]
        metric = (spec.metric or settings.primary_metric).get(kind, settings.primary_metric[kind])
        for model, x in xs.items():
            key = (ds, tk, model, metric)
            if key not in index.index:
                continue
            row = index.loc[key]
            rows.append(
                {
                    "model": model,
                    "label": table.label(model),
                    "x": x,
                    "dataset": ds,
                    "task": tk,
                    "metric": metric,
                    "mean": float(row["mean"]),
                    "std": float(row["std"]),
                    "n": int(row["n"]),
                }
            )
    frame = pd.DataFrame(rows, columns=list(FIGURE_COLUMNS))
    return frame.sort_values(["dataset", "task", "x"], kind="stable").reset_index(drop=True)


def figure_png(points: pd.DataFrame, settings: EvalSettings, key: str, title: str) -> bytes:
    """The section figure (:func:`brainharmony.evaluate.figures.sweep_figure`) of
    :func:`figure_points`: one panel per task, classification metrics in %."""
    from brainharmony.evaluate import figures

    spec = settings.sections[key].figure
    if spec is None:
        raise ValueError(f"evaluate.sections.{key} has no figure")
    panels = {}
    for (ds, tk, metric), group in points.groupby(["dataset", "task", "metric"], sort=False):
        scale = 100.0 if metric in PERCENT_METRICS else 1.0
        label = METRIC_LABELS.get(str(metric), str(metric)) + (" (%)" if scale == 100 else "")
        panels[f"{ds} · {tk}"] = (
            group["x"].to_numpy(float),
            scale * group["mean"].to_numpy(float),
            scale * group["std"].to_numpy(float),
            label,
        )
    return figures.sweep_figure(panels, title, spec.xlabel or "x", spec.log_x)


# --------------------------------------------------------------------------- pipeline


def make_tables(
    prediction_files: Sequence[PathLike],
    predictions_out: PathLike,
    out_dir: PathLike,
    settings: EvalSettings | None = None,
) -> dict[str, Path]:
    """Merge predictions and write every table (see the module notes)."""

    merged, meta = merge_predictions(prediction_files)
    if settings is None:
        settings = settings_from_mapping(meta.get("Settings") or {})
    tasks = task_map(meta)
    per_fold = per_fold_metrics(merged, tasks)
    metrics = summarise(per_fold)
    types = {k: spec.type for k, (spec, _) in tasks.items()}
    ratios = {}
    for key, entry in meta["Tasks"].items():
        ds, tk = key.split("/", 1)
        ratio = entry.get("TestTrainRatio")
        if ratio is None:
            k = settings.n_folds
            ratio = 1.0 / ((k - 1) * (1 - settings.val_fraction))
        ratios[(ds, tk)] = float(ratio)
    tests = paired_tests(per_fold, settings.primary_metric, types, baseline_names(), ratios)
    reasons = absence_reasons(meta)
    tables = build_sections(metrics, tests, settings, types, reasons)
    out = Path(out_dir)
    pred_out = Path(predictions_out)
    figure_paths: dict[str, Path] = {}
    figure_names: dict[str, str] = {}
    for table in tables:
        if not table.key or settings.sections[table.key].figure is None:
            continue
        stem = SECTION_FIGURE_STEM.format(section=table.key)
        points = figure_points(table, metrics, settings, types)
        write_text(out / f"{stem}.csv", points.to_csv(index=False, lineterminator="\n"))
        png = figure_png(points, settings, table.key, table.title or table.key)
        with atomic_path(out / f"{stem}.png") as tmp:
            Path(tmp).write_bytes(png)
        figure_paths[f"figure_{table.key}"] = out / f"{stem}.png"
        figure_names[table.key] = f"{stem}.png"
    paths = {
        "predictions_json": write_json(
            pred_out.with_suffix(".json"),
            {**meta, "Provenance": provenance(step="tables", inputs=prediction_files)},
        ),
        "predictions": write_tsv(pred_out, merged, float_format="%.10g"),
        "metrics_per_fold": write_text(
            out / "metrics_per_fold.csv", per_fold.to_csv(index=False, lineterminator="\n")
        ),
        "metrics": write_text(
            out / "metrics.csv", metrics.to_csv(index=False, lineterminator="\n")
        ),
        "tests": write_text(out / "tests.csv", tests.to_csv(index=False, lineterminator="\n")),
        "table_csv": write_text(
            out / "paper_table.csv",
            sections_csv(tables).to_csv(index=False, lineterminator="\n"),
        ),
        "table_md": write_text(out / "paper_table.md", sections_markdown(tables, figure_names)),
        "table_tex": write_text(out / "paper_table.tex", sections_latex(tables)),
        **figure_paths,
    }
    paths["sidecar"] = write_json(
        out / "tables.json",
        {
            "Description": "Metrics, paired tests and paper-layout tables",
            "Note": " ".join((f"{t.title}: " if t.key else "") + t.note for t in tables),
            "Sections": [
                {
                    "id": t.key,
                    "title": t.title,
                    "note": t.note,
                    "figure": figure_names.get(t.key),
                }
                for t in tables
            ],
            "Absent": {f"{d}/{t}": dict(models) for (d, t), models in reasons.items() if models},
            "Settings": settings.to_dict(),
            "Provenance": provenance(step="tables", inputs=prediction_files),
        },
    )
    return paths
