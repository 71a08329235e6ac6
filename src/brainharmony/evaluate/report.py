"""The HTML report: one self-contained page (inline CSS, figures as base64 PNG, no script).

``brainharmony report`` gathers what the pipeline produced under ``results/``:
evaluation tables and paired tests, predicted-vs-true plots and confusion matrices,
training curves (``results/models/*/metrics.jsonl``), quality control of the ingest,
anatomy and functional stages (their tables, JSON sidecars and figures), the
geometric modes and gradients, RWMoE expert weights and hub-token attention on the
brain, and provenance (package versions, git SHA, configuration). A section whose
inputs are absent says so; a section whose inputs cannot be read shows the error
and the rest of the page is still written.

File patterns read (all optional):

====================  ==========================================================
section               files
====================  ==========================================================
results               ``<tables>/metrics.csv``, ``tests.csv``, ``tables.json``
predictions           ``results/eval/predictions.tsv`` (+ ``.json``)
model selection       ``results/eval/*/*/selection.tsv``
training curves       ``results/models/*/metrics.jsonl``
ingest QC             ``results/ingest/*/scans.tsv``, ``excluded.tsv``
anatomy QC            ``results/anat/*/**/*_desc-preproc_T1w.json``, ``figures/*.png``
                      (a T1w excluded by the QC gate: reason, metrics vs
                      thresholds and its figure)
functional QC         ``results/func/*/**/*_desc-denoised_timeseries.json``, QC PNGs
group QC              ``results/qc/*/group_qc.tsv`` (rendered, excluded rows highlighted)
                      and ``results/qc/*/subjects/*.html`` (linked, relative to the page)
geometry              ``results/geometry/figures/*.png``, ``results/geometry/**/*gradients.tsv``
RWMoE experts         ``results/**/*expert*weight*.png`` (the predictor's ROI x expert
                      maps), ``results/**/*expert*weight*.tsv`` (``roi, expert, weight``)
hub-token attention   ``results/**/*hub*attention*.tsv`` (``roi`` + a value column)
====================  ==========================================================
"""

from __future__ import annotations

import html
import json
import logging
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.atlas import schaefer400_centroids, schaefer400_labels
from brainharmony.evaluate import figures as fg
from brainharmony.evaluate.harness import display_name
from brainharmony.evaluate.metrics import confusion_matrix
from brainharmony.evaluate.settings import (
    CLASSIFICATION_METRICS,
    SECTION_FIGURE_STEM,
    EvalSettings,
    settings_from_mapping,
)
from brainharmony.evaluate.stats import TEST_COLUMNS
from brainharmony.evaluate.tables import (
    PaperTable,
    build_sections,
    model_order,
    read_predictions,
    task_map,
)
from brainharmony.io import PathLike, git_sha, write_text
from brainharmony.qc.group import PAGES_DIR, TABLE_NAME, read_group_qc
from brainharmony.qc.pages import href, subject_links, table_html

logger = logging.getLogger(__name__)

#: Packages whose versions the provenance section lists (read from metadata only).
PACKAGES = (
    "brainharmony",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "torch",
    "nibabel",
    "nilearn",
    "matplotlib",
    "snakemake",
    "safetensors",
    "brainspace",
)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#23395d;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:22px}
nav{padding:8px 28px;background:#e8edf4;font-size:13px}
nav a{margin-right:14px;color:#23395d}
main{padding:8px 28px 40px 28px;max-width:1300px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 18px;margin:16px 0}
h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:4px}
h3{font-size:15px;margin-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f3f7}
td:first-child,th:first-child{text-align:left}
.note{font-size:12px;color:#555}
.absent{color:#777;font-style:italic}
.error{color:#a40000;background:#fff0f0;padding:6px;border:1px solid #f3c0c0}
.figs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.figs figure{margin:0}
figcaption{font-size:11px;color:#555;max-width:520px}
img{max-width:100%;height:auto;border:1px solid #eee}
td.text,th.text{text-align:left}
tr.excluded td{background:#fde2e2}
.subjects a{margin-right:8px}
.wide{overflow-x:auto}
pre{background:#f5f5f5;padding:8px;font-size:11.5px;overflow-x:auto;max-height:420px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _absent(text: str) -> str:
    return f'<p class="absent">{_esc(text)}</p>'


def _img(png: bytes, alt: str, caption: str = "", width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{fg.data_uri(png)}" alt="{_esc(alt)}"{w}>{cap}</figure>'


def _figs(items: Sequence[str]) -> str:
    return '<div class="figs">' + "".join(items) + "</div>" if items else ""


def _table(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    """An HTML table from a DataFrame (values escaped)."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for v in values:
            if isinstance(v, float | np.floating):
                text = "n/a" if not np.isfinite(v) else float_format.format(v)
            else:
                text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            cells.append(f"<td>{_esc(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


#: Rows of a dataset's group QC table shown in the page (every excluded row, then the
#: first kept ones); the TSV beside it holds them all.
QC_TABLE_ROWS = 500


#: The anatomy QC metrics and their thresholds (sidecar ``Metrics`` / ``QCThresholds``):
#: column, metric key, threshold key, whether the threshold is a minimum or a range.
_ANAT_QC = (
    ("NCC in brain", "NCCWithTemplateInBrain", "MinNCCWithTemplateInBrain", "min"),
    ("mask Dice", "MaskDiceWithTemplateMask", "MinMaskDiceWithTemplateMask", "min"),
    ("brain volume (mL)", "NativeBrainVolumeML", "NativeBrainVolumeMLRange", "range"),
    ("scale factors", "TransformScaleFactors", "TransformScaleFactorRange", "range"),
)


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def qc_against_thresholds(
    metrics: Mapping[str, Any], thresholds: Mapping[str, Any]
) -> dict[str, str]:
    """The four anatomy QC metrics of one T1w as text, each against its threshold.

    Parameters
    ----------
    metrics : mapping
        The preprocessed T1w sidecar's ``Metrics`` (may be empty: a T1w that could
        not be processed has none).
    thresholds : mapping
        Its ``QCThresholds``.

    Returns
    -------
    dict of str to str
        Column -> e.g. ``"0.412 (min 0.5) FAIL"``, ``"1450 ([900, 2200])"``, ``"n/a"``.
    """
    out = {}
    for column, key, limit_key, kind in _ANAT_QC:
        value = metrics.get(key)
        limit = thresholds.get(limit_key)
        values = value if isinstance(value, list | tuple) else [value]
        parsed = [_number(v) for v in values]
        numbers = [v for v in parsed if v is not None]
        if value is None or not numbers or len(numbers) != len(parsed):
            out[column] = "n/a"
            continue
        shown = ", ".join(f"{v:.4g}" for v in numbers)
        low = _number(limit)
        if kind == "min" and low is not None:
            ok = all(v >= low for v in numbers)
            text = f"{shown} (min {low:g})"
        elif kind == "range" and isinstance(limit, list | tuple) and len(limit) == 2:
            lo, hi = float(limit[0]), float(limit[1])
            ok = all(lo <= v <= hi for v in numbers)
            text = f"{shown} ([{lo:g}, {hi:g}])"
        else:
            out[column] = shown
            continue
        out[column] = text if ok else f"{text} FAIL"
    return out


def _left_out_subjects(meta: Mapping[str, Any]) -> str:
    """The subject set of every task and the subjects left out for every model."""
    rows, counts = [], []
    for key, entry in (meta.get("Tasks") or {}).items():
        dataset, _, task = str(key).partition("/")
        left = entry.get("SubjectsLeftOut")
        if left is None:  # predictions written before reasons were recorded
            left = {
                s: f"no input for {m}"
                for m, subjects in (entry.get("SubjectsWithoutInputs") or {}).items()
                for s in subjects
            }
        if entry.get("SubjectsEvaluated") is not None:
            counts.append(f"{dataset}/{task}: {int(entry['SubjectsEvaluated'])}")
        rows += [
            {"dataset": dataset, "task": task, "subject": s, "reason": r}
            for s, r in sorted(left.items())
        ]
    out = ""
    if counts:
        out += (
            '<p class="note">Every model of a task is evaluated on the same subjects (those '
            "with a label and an input for every model); subjects per task: "
            + _esc("; ".join(counts))
            + ".</p>"
        )
    if rows:
        out += (
            "<h3>Subjects left out of the evaluation (for every model)</h3>"
            '<p class="note">Excluded by an earlier stage (anatomy QC gate, functional '
            "censoring) or without an input of some model.</p>" + _table(pd.DataFrame(rows))
        )
    return out


class ReportBuilder:
    """Collects the sections of the report.

    Parameters
    ----------
    results : path-like
        The ``results/`` folder.
    tables : path-like, optional
        Folder of metrics.csv / tests.csv (default ``results/tables``).
    predictions : path-like, optional
        Merged predictions TSV (default ``results/eval/predictions.tsv``).
    configs : sequence of path-like
        Workflow config files to show under provenance.
    max_figures : int
        Figures per group (e.g. QC examples per dataset).
    centroids : ndarray of shape (n_rois, 3), optional
        ROI coordinates for brain figures (default: Schaefer-400 centroids, when
        available).
    out_dir : path-like, optional
        The folder the page is written to (default ``<results>/report``): links to the
        subject QC pages are relative to it.
    """

    def __init__(
        self,
        results: PathLike,
        tables: PathLike | None = None,
        predictions: PathLike | None = None,
        configs: Sequence[PathLike] = (),
        max_figures: int = 3,
        centroids: np.ndarray | None = None,
        out_dir: PathLike | None = None,
    ) -> None:
        self.results = Path(results)
        self.tables = Path(tables) if tables is not None else self.results / "tables"
        self.predictions = (
            Path(predictions)
            if predictions is not None
            else self.results / "eval" / "predictions.tsv"
        )
        self.configs = [Path(c) for c in configs]
        self.out_dir = Path(out_dir) if out_dir is not None else self.results / "report"
        self.max_figures = max(1, int(max_figures))
        self._centroids = centroids
        self._centroids_tried = centroids is not None
        self.sections: list[tuple[str, str, str]] = []
        self.inputs: list[Path] = []
        self._label_settings: EvalSettings | None = None

    # ------------------------------------------------------------------ helpers

    def _use(self, path: Path) -> Path:
        self.inputs.append(path)
        return path

    def centroids(self) -> np.ndarray | None:
        """Schaefer-400 centroids (None when the atlas sources are unavailable)."""
        if not self._centroids_tried:
            self._centroids_tried = True
            try:
                self._centroids = schaefer400_centroids()[["x", "y", "z"]].to_numpy(float)
            except Exception as err:  # optional data; the figures fall back to profiles
                logger.warning("no ROI centroids for brain figures: %s", err)
                self._centroids = None
        return self._centroids

    def _roi_values(self, frame: pd.DataFrame, value: str) -> np.ndarray:
        """Values in ROI order 0..n-1 from a table with a ``roi`` column."""
        rois = frame["roi"]
        numeric = pd.to_numeric(rois, errors="coerce")
        if numeric.notna().all():
            idx = numeric.astype(int).to_numpy()
            idx = idx - 1 if idx.min() >= 1 else idx
        else:
            names = list(dict.fromkeys(rois.astype(str)))
            atlas_names: list[str] = []
            try:
                atlas_names = schaefer400_labels()["name"].astype(str).tolist()
            except Exception:  # fall back to the order of appearance
                atlas_names = []
            lookup = {n: i for i, n in enumerate(atlas_names)}
            if all(n in lookup for n in names):
                idx = rois.astype(str).map(lookup).to_numpy()
            else:
                pos = {n: i for i, n in enumerate(names)}
                idx = rois.astype(str).map(pos).to_numpy()
        n = int(idx.max()) + 1
        out = np.full(n, np.nan)
        out[idx] = pd.to_numeric(frame[value], errors="coerce").to_numpy(float)
        return out

    def add(self, key: str, title: str, build: Callable[[], str]) -> None:
        """Add a section; an exception becomes an error box in the page."""
        try:
            body = build()
        except Exception as err:  # the report must be written whatever one input holds
            logger.warning("report section %r failed: %s: %s", title, type(err).__name__, err)
            body = (
                f'<p class="error">This section could not be built: '
                f"{_esc(type(err).__name__)}: {_esc(err)}</p>"
            )
        self.sections.append((key, title, body))

    # ------------------------------------------------------------------ sections

    def section_results(self) -> str:

        metrics_path = self.tables / "metrics.csv"
        if not metrics_path.is_file():
            return _absent(f"No evaluation tables ({metrics_path} not found).")
        metrics = pd.read_csv(self._use(metrics_path), dtype={"dataset": str, "task": str})
        tests_path = self.tables / "tests.csv"
        tests = (
            pd.read_csv(self._use(tests_path), dtype={"dataset": str, "task": str})
            if tests_path.is_file()
            else pd.DataFrame()
        )
        side = self.tables / "tables.json"
        sidecar: dict[str, Any] = {}
        if side.is_file():
            sidecar = json.loads(self._use(side).read_text(encoding="utf-8"))
        settings = settings_from_mapping(sidecar.get("Settings", {}))
        reasons = {
            tuple(key.split("/", 1)): dict(models)
            for key, models in (sidecar.get("Absent") or {}).items()
        }
        types = self._task_types(metrics)
        tables = build_sections(metrics, tests, settings, types, reasons)  # type: ignore[arg-type]
        parts = []
        for table in tables:
            if table.key:
                parts.append(f"<h3>{_esc(table.title or table.key)}</h3>")
            parts.append(self._paper_table_html(table))
            stem = SECTION_FIGURE_STEM.format(section=table.key)
            png = self.tables / f"{stem}.png"
            if table.key and png.is_file():
                parts.append(
                    _figs([_img(self._use(png).read_bytes(), stem, f"{table.title}: {png.name}")])
                )
        files = ", ".join(
            p.name
            for pattern in ("paper_table.*", SECTION_FIGURE_STEM.format(section="*") + ".*")
            for p in sorted(self.tables.glob(pattern))
            if p.is_file()
        )
        return "".join(parts) + (
            f'<p class="note">Files: {_esc(files)} in {_esc(self.tables)}.</p>' if files else ""
        )

    def _paper_table_html(self, table: PaperTable) -> str:
        """One paper-layout table (or section) and its note."""
        heads = "".join(
            f"<th>{_esc(d)}<br>{_esc(t)}<br>{_esc(table.header(c))}</th>"
            for c in table.columns
            for d, t, _ in [c]
        )
        rows = []
        for m in table.models:
            cells = [f"<td>{_esc(table.label(m))}</td>"]
            for c in table.columns:
                text = _esc(table.text(m, c) or "–")
                cells.append(
                    f"<td><b>{text}</b></td>" if (m, c) in table.bold else f"<td>{text}</td>"
                )
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return (
            f"<table><thead><tr><th>Model</th>{heads}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            f'<p class="note">{_esc(table.note)}</p>'
        )

    def _label(self, model: str) -> str:
        """A model's row label under the run's settings (``tables.json``)."""
        if self._label_settings is None:
            side = self.tables / "tables.json"
            raw = (
                json.loads(side.read_text(encoding="utf-8")).get("Settings", {})
                if side.is_file()
                else {}
            )
            self._label_settings = settings_from_mapping(raw)
        return display_name(model, self._label_settings)

    def _task_types(self, metrics: pd.DataFrame) -> dict[tuple[str, str], str]:

        types: dict[tuple[str, str], str] = {}
        for (ds, tk), group in metrics.groupby(["dataset", "task"], sort=False):
            cls = group["metric"].isin(CLASSIFICATION_METRICS).any()
            types[(str(ds), str(tk))] = "classification" if cls else "regression"
        return types

    def section_tests(self) -> str:
        path = self.tables / "tests.csv"
        if not path.is_file():
            return _absent(f"No paired tests ({path} not found).")
        tests = pd.read_csv(path, dtype={"dataset": str, "task": str})
        if tests.empty:
            return _absent("No paired tests (fewer than two models per task).")

        shown = tests.assign(
            model=tests["model"].map(self._label),
            reference=tests["reference"].map(self._label),
        )[[c for c in TEST_COLUMNS if c not in ("test_train_ratio", "test")]]  # test: in the note
        not_better = tests.loc[
            (tests["role"] == "vs_null") & ~((tests["p"] < 0.05) & (tests["mean_diff"] > 0))
        ]
        honest = ""
        if len(not_better):
            items = ", ".join(
                f"{self._label(m)} on {d}/{t} (p = {p:.3g})"
                for d, t, m, p in zip(
                    not_better["dataset"],
                    not_better["task"],
                    not_better["model"],
                    not_better["p"],
                    strict=True,
                )
            )
            honest = (
                f'<p class="note"><b>Not significantly better than the null model at '
                f"p &lt; 0.05:</b> {_esc(items)}.</p>"
            )
        return (
            f'<p class="note">{_esc(tests["test"].iloc[0])}; mean_diff is oriented so that '
            "positive means the model is better; n = paired folds x seeds.</p>"
            + _table(shown)
            + honest
        )

    def section_predictions(self) -> str:

        if not self.predictions.is_file():
            return _absent(f"No predictions ({self.predictions} not found).")
        frame, meta = read_predictions(self._use(self.predictions))
        tasks = task_map(meta)
        test = frame.loc[frame["split"] == "test"]
        parts = [_left_out_subjects(meta)]
        for (ds, tk), (spec, classes) in tasks.items():
            sub = test.loc[(test["dataset"] == ds) & (test["task"] == tk)]
            if sub.empty:
                continue
            seed = int(sub["seed"].min())
            sub = sub.loc[sub["seed"] == seed]
            models = model_order(list(dict.fromkeys(sub["model"])))
            parts.append(
                f"<h3>{_esc(ds)} / {_esc(tk)} ({_esc(spec.type)}, target "
                f"{_esc(spec.target)}; test partitions of seed {seed}, every "
                "subject once)</h3>"
            )
            if spec.type == "classification":
                imgs = []
                for m in models:
                    rows = sub.loc[sub["model"] == m]
                    cm = confusion_matrix(rows["y_true"], rows["y_pred"], classes or [])
                    imgs.append(
                        _img(
                            fg.confusion_figure(cm, classes or [], self._label(m)),
                            f"confusion matrix {ds} {tk} {m}",
                        )
                    )
                parts.append(_figs(imgs))
            else:
                panels = {}
                for m in models:
                    rows = sub.loc[sub["model"] == m]
                    panels[self._label(m)] = (
                        pd.to_numeric(rows["y_true"]).to_numpy(float),
                        pd.to_numeric(rows["y_pred"]).to_numpy(float),
                    )
                parts.append(
                    _figs(
                        [
                            _img(
                                fg.scatter_figure(
                                    panels, f"{ds} / {tk}: predicted vs true", spec.target
                                ),
                                f"predicted vs true {ds} {tk}",
                            )
                        ]
                    )
                )
        if len(parts) == 1:
            return parts[0] + _absent("The predictions file holds no test rows.")
        return "".join(parts)

    def section_selection(self) -> str:

        files = sorted((self.results / "eval").glob("*/*/selection.tsv"))
        if not files:
            return _absent("No model-selection records (results/eval/*/*/selection.tsv).")
        frame = pd.concat([pd.read_csv(self._use(f), sep="\t", dtype=str) for f in files])
        frame["val_score"] = pd.to_numeric(frame["val_score"], errors="coerce")
        rows = []
        for (ds, tk, m), g in frame.groupby(["dataset", "task", "model"], sort=True):
            counts = g["params"].value_counts()
            top = "; ".join(f"{p} ({n}x)" for p, n in counts.head(3).items())
            rows.append(
                {
                    "dataset": ds,
                    "task": tk,
                    "model": self._label(m),
                    "folds": len(g),
                    "mean val score": g["val_score"].mean(),
                    "most chosen (on val)": top,
                }
            )
        return (
            '<p class="note">Hyperparameters chosen on the validation partitions '
            "(test partitions are never used for choosing).</p>" + _table(pd.DataFrame(rows))
        )

    def section_training(self) -> str:
        files = sorted((self.results / "models").glob("*/metrics.jsonl"))
        if not files:
            return _absent("No trained models (results/models/*/metrics.jsonl).")
        imgs = []
        for f in files:
            records = []
            for line in self._use(f).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    records.append(json.loads(line))
            if not records:
                imgs.append(_absent(f"{f.parent.name}: metrics.jsonl is empty."))
                continue
            last = records[-1]
            loss = last.get("loss")
            loss_text = f"{loss:.4g}" if isinstance(loss, int | float) else str(loss)
            cap = f"{len(records)} logged steps; last step {last.get('step')}, loss {loss_text}"
            imgs.append(
                _img(
                    fg.curves_figure(records, f.parent.name), f"training curve {f.parent.name}", cap
                )
            )
        return _figs(imgs)

    def section_ingest(self) -> str:
        files = sorted((self.results / "ingest").glob("*/scans.tsv"))
        if not files:
            return _absent("No ingest tables (results/ingest/*/scans.tsv).")
        rows = []
        reasons = []
        for f in files:
            scans = pd.read_csv(self._use(f), sep="\t", dtype=str, keep_default_na=False)
            excl_path = f.with_name("excluded.tsv")
            excl = (
                pd.read_csv(excl_path, sep="\t", dtype=str, keep_default_na=False)
                if excl_path.is_file()
                else pd.DataFrame(columns=["reason"])
            )
            trs = sorted({f"{float(t):g}" for t in scans.get("tr", []) if t not in ("", "n/a")})
            rows.append(
                {
                    "dataset": f.parent.name,
                    "subjects": scans["subject"].nunique() if "subject" in scans else 0,
                    "runs": len(scans),
                    "TR (s)": ", ".join(trs),
                    "excluded rows": len(excl),
                }
            )
            for reason, n in excl["reason"].value_counts().head(5).items():
                reasons.append({"dataset": f.parent.name, "reason": reason, "rows": n})
        out = _table(pd.DataFrame(rows))
        if reasons:
            out += "<h3>Most frequent exclusion reasons</h3>" + _table(pd.DataFrame(reasons))
        return out

    def section_anat(self) -> str:
        root = self.results / "anat"
        sidecars = sorted(root.glob("*/sub-*/**/*_desc-preproc_T1w.json"))
        if not sidecars:
            return _absent("No anatomy outputs (results/anat/*/sub-*/.../*_desc-preproc_T1w.json).")
        rows = []
        excluded = []
        for p in sidecars:
            doc = json.loads(self._use(p).read_text(encoding="utf-8"))
            metrics = doc.get("Metrics", {}) or {}
            dataset = p.relative_to(root).parts[0]
            reason = (
                str(doc.get("ExclusionReason") or "excluded by the anatomy stage")
                if doc.get("Excluded")
                else ""
            )
            rows.append(
                {
                    "dataset": dataset,
                    "file": p.name,
                    "excluded": reason,
                    **{k: v for k, v in metrics.items() if isinstance(v, int | float)},
                }
            )
            if reason:
                excluded.append(
                    {
                        "dataset": dataset,
                        "T1w": p.name.split("_space-")[0],
                        "reason": reason,
                        **qc_against_thresholds(metrics, doc.get("QCThresholds") or {}),
                    }
                )
        frame = pd.DataFrame(rows)
        numeric = [c for c in frame.columns if c not in ("dataset", "file", "excluded")]
        summary = []
        for ds, g in frame.groupby("dataset", sort=True):
            entry: dict[str, Any] = {
                "dataset": ds,
                "T1w": len(g),
                "excluded": int((g["excluded"] != "").sum()),
            }
            for c in numeric:
                vals = pd.to_numeric(g[c], errors="coerce")
                entry[f"{c} median"] = vals.median()
                entry[f"{c} min"] = vals.min()
            summary.append(entry)
        out = _table(pd.DataFrame(summary))
        imgs = []
        if excluded:
            out += (
                "<h3>T1ws excluded by the anatomy QC gate</h3>"
                '<p class="note">Left out of every later stage: their runs are excluded by '
                "the functional stage, their volumes are not packed into the T1 shards, and "
                "evaluation leaves the subjects out for every model. Each metric is shown "
                "against its threshold (FAIL: outside it).</p>" + _table(pd.DataFrame(excluded))
            )
            cap = 4 * self.max_figures
            for entry in excluded[:cap]:
                imgs += self._anat_figures(root, entry["dataset"], entry["T1w"], "EXCLUDED: ")
            if len(excluded) > cap:
                out += (
                    f'<p class="note">Figures of the first {cap} of {len(excluded)} '
                    "excluded T1ws.</p>"
                )
        kept = frame[frame["excluded"] == ""]
        key = "NCCWithTemplateInBrain"
        if key in kept.columns and not kept.empty:
            kept = kept.sort_values(key, kind="stable")
            out += "<h3>Lowest template similarity (kept T1ws)</h3>" + _table(
                kept.head(self.max_figures)[["dataset", "file", key]]
            )
        # figures of the least template-like T1ws (the page stays small for big studies)
        n_excluded_figs = len(imgs)
        for _, row in kept.head(self.max_figures).iterrows():
            prefix = str(row["file"]).split("_space-")[0]
            imgs += self._anat_figures(root, str(row["dataset"]), prefix)
        if len(imgs) == n_excluded_figs and not excluded:  # figures without sidecar metrics
            for png in sorted(root.glob("*/figures/*.png"))[: self.max_figures]:
                imgs.append(
                    _img(self._use(png).read_bytes(), f"registration {png.stem}", png.stem, 520)
                )
        return out + _figs(imgs)

    def _anat_figures(self, root: Path, dataset: str, prefix: str, label: str = "") -> list[str]:
        """The registration figure of one T1w (``<prefix>_desc-*.png``), embedded."""
        out = []
        for png in sorted((root / dataset / "figures").glob(f"{prefix}_desc-*.png"))[:1]:
            out.append(
                _img(
                    self._use(png).read_bytes(),
                    f"registration {png.stem}",
                    f"{label}{dataset}: {png.stem}",
                    width=520,
                )
            )
        return out

    def section_func(self) -> str:
        root = self.results / "func"
        sidecars = sorted(root.glob("*/sub-*/**/*_desc-denoised_timeseries.json"))
        if not sidecars:
            return _absent(
                "No functional outputs (results/func/*/.../*_desc-denoised_timeseries.json)."
            )
        rows = []
        for p in sidecars:
            doc = json.loads(self._use(p).read_text(encoding="utf-8"))
            n = doc.get("NumberOfVolumes")
            kept = doc.get("KeptVolumes")
            rows.append(
                {
                    "dataset": p.relative_to(root).parts[0],
                    "run": p.name,
                    "tr": doc.get("RepetitionTime"),
                    "kept_fraction": (kept / n) if n and kept is not None else np.nan,
                    "excluded": str(doc.get("ExclusionReason", "")) if doc.get("Excluded") else "",
                }
            )
        frame = pd.DataFrame(rows)
        summary = []
        for ds, g in frame.groupby("dataset", sort=True):
            kf = g["kept_fraction"].astype(float)
            summary.append(
                {
                    "dataset": ds,
                    "runs": len(g),
                    "TR (s)": ", ".join(sorted({f"{float(t):g}" for t in g["tr"].dropna()})),
                    "kept frames median": kf.median(),
                    "kept frames min": kf.min(),
                    "runs < 50% kept": int((kf < 0.5).sum()),
                    "runs excluded": int((g["excluded"] != "").sum()),
                }
            )
        out = _table(pd.DataFrame(summary), "{:.3g}")
        left_out = frame[frame["excluded"] != ""]
        if not left_out.empty:
            out += (
                '<p class="note">Runs excluded by the functional stage and left out of every '
                "later stage:</p>"
                + _table(
                    left_out[["dataset", "run", "excluded"]].rename(columns={"excluded": "reason"})
                )
            )
        imgs = []
        worst = frame.sort_values(["kept_fraction", "dataset", "run"], kind="stable")
        for _, row in worst.head(self.max_figures).iterrows():
            stem = str(row["run"]).split("_space-")[0]
            folder = root / str(row["dataset"])
            for pattern in (
                f"{stem}_desc-fdtrace_bold.png",
                f"{stem}_desc-carpetplot_bold.png",
                f"{stem}_*desc-fcmatrix_bold.png",
            ):
                for png in sorted(folder.glob(f"**/{pattern}"))[:1]:
                    caption = f"{row['dataset']}: {png.stem} (kept {row['kept_fraction']:.0%})"
                    imgs.append(_img(self._use(png).read_bytes(), png.stem, caption, width=520))
        if imgs:
            out += (
                f'<p class="note">Figures of the {self.max_figures} runs with the fewest '
                "frames kept after censoring.</p>"
            )
        return out + _figs(imgs)

    def section_group_qc(self) -> str:
        """Per dataset: the group QC table, the atlas used and links to the subject pages."""

        files = sorted((self.results / "qc").glob(f"*/{TABLE_NAME}"))
        if not files:
            return _absent(
                f"No group QC tables (results/qc/*/{TABLE_NAME}; rule group_qc, target qc_all)."
            )
        parts = [
            '<p class="note">One row per BOLD run and per file or subject the ingest left '
            "out; excluded rows are highlighted, with the stage and the reason. Columns: "
            "docs/evaluation.md (Group QC) and the JSON sidecar of each table.</p>"
        ]
        for path in files:
            dataset = path.parent.name
            frame = read_group_qc(self._use(path))
            runs = frame[frame["exclusion_stage"] != "ingest"]
            excluded = frame[frame["excluded"] == "yes"]
            subjects = list(dict.fromkeys(frame["subject"].astype(str)))
            atlases = sorted(
                {
                    f"{a} (source: {s})"
                    for a, s in zip(runs["atlas"], runs["atlas_source"], strict=True)
                }
            )
            links = subject_links(subjects, path.parent / PAGES_DIR, self.out_dir)
            parts.append(
                f"<h3>{_esc(dataset)}</h3>"
                f'<p class="note">{len(runs)} runs of {runs["subject"].nunique()} subjects, '
                f"{int((runs['excluded'] == 'yes').sum())} runs excluded; "
                f"{len(frame) - len(runs)} ingest exclusions. Table: "
                f'<a href="{href(path, self.out_dir)}">{_esc(TABLE_NAME)}</a>.</p>'
                f'<p class="note">Atlas: {_esc("; ".join(atlases) or "n/a")}.</p>'
            )
            if links:
                parts.append(
                    '<p class="note subjects">Subject pages: '
                    + " ".join(f'<a href="{h}">{_esc(s)}</a>' for s, h in links.items())
                    + "</p>"
                )
            else:
                parts.append(_absent(f"No subject pages ({path.parent / PAGES_DIR})."))
            # a long text the same on every run (atlas, coregistration method) is said
            # once above the table, not repeated on each row (the TSV keeps the columns)
            constant = [
                c for c in ("atlas", "atlas_source", "coreg_method") if runs[c].nunique() <= 1
            ]
            if "coreg_method" in constant and len(runs):
                parts.append(
                    f'<p class="note">Coregistration (coreg_method): '
                    f"{_esc(runs['coreg_method'].iloc[0])}.</p>"
                )
            shown = frame.drop(columns=constant)
            if len(frame) > QC_TABLE_ROWS:
                keep = excluded.index.union(
                    frame.index.difference(excluded.index)[: max(0, QC_TABLE_ROWS - len(excluded))]
                )
                shown = shown.loc[keep]
                parts.append(
                    f'<p class="note">{len(shown)} of {len(frame)} rows shown: every excluded '
                    "row, then the first kept ones; the TSV has them all.</p>"
                )
            # the exclusion first, after the run's name; the metrics follow
            first = ["subject", "session", "run", "source", "excluded"]
            first += ["exclusion_stage", "exclusion_reason"]
            shown = shown[[c for c in first if c in shown] + [c for c in shown if c not in first]]
            parts.append(f'<div class="wide">{table_html(shown, links)}</div>')
        return "".join(parts)

    def section_geometry(self) -> str:
        root = self.results / "geometry"
        pngs = sorted((root / "figures").glob("*.png"))
        tables = sorted(root.glob("**/*gradients.tsv"))
        if not pngs and not tables:
            return _absent("No geometry outputs (results/geometry/).")
        imgs = [
            _img(self._use(p).read_bytes(), p.stem, p.stem, width=640)
            for p in pngs[: self.max_figures]
        ]
        for t in tables[:1]:
            frame = pd.read_csv(self._use(t), sep="\t")
            frame = frame.rename(columns={frame.columns[0]: "roi"})
            for col in [c for c in frame.columns if c != "roi"][:3]:
                values = self._roi_values(frame, col)
                imgs.append(
                    _img(
                        fg.brain_figure(values, self.centroids(), f"{t.stem}: {col}"),
                        f"{t.stem} {col}",
                    )
                )
        return _figs(imgs)

    def _roi_tables(self, pattern: str, title: str, group_cols: Sequence[str]) -> str:
        files = sorted(p for p in self.results.glob(f"**/{pattern}") if p.is_file())
        if not files:
            return _absent(f"No {title} files (results/**/{pattern}).")
        imgs = []
        for f in files[: self.max_figures]:
            frame = pd.read_csv(self._use(f), sep="\t" if f.suffix == ".tsv" else ",")
            if "roi" not in frame.columns:
                raise ValueError(f"{f}: no 'roi' column")
            group = next((c for c in group_cols if c in frame.columns), None)
            numeric = [
                c
                for c in frame.columns
                if c not in ("roi", group) and pd.api.types.is_numeric_dtype(frame[c])
            ]
            if not numeric:
                raise ValueError(f"{f}: no numeric value column")
            value = next((c for c in ("weight", "attention", "value") if c in numeric), numeric[-1])
            label = f.parent.name + "/" + f.stem
            groups = frame.groupby(group, sort=True) if group else [("all", frame)]
            for key, g in list(groups)[:8]:
                values = self._roi_values(g, value)
                imgs.append(
                    _img(
                        fg.brain_figure(
                            values,
                            self.centroids(),
                            f"{label} {group or ''} {key}".replace("  ", " "),
                            cmap="viridis",
                            symmetric=False,
                        ),
                        f"{label} {key}",
                    )
                )
        return _figs(imgs)

    def section_experts(self) -> str:
        """The predictor's ROI x expert maps (``expert_weights.png`` of ``predictor-cv``),
        then every expert-weight table drawn on the brain."""
        pngs = sorted(p for p in self.results.glob("**/*expert*weight*.png") if p.is_file())
        maps = [
            _img(
                self._use(png).read_bytes(),
                f"expert map {png.parent.name}/{png.stem}",
                png.relative_to(self.results).as_posix(),
            )
            for png in pngs[: self.max_figures]
        ]
        tables = self._roi_tables("*expert*weight*.tsv", "RWMoE expert weight", ("expert",))
        return (_figs(maps) if maps else "") + tables

    def section_hubs(self) -> str:
        return self._roi_tables("*hub*attention*.tsv", "hub-token attention", ("hub", "head"))

    def section_provenance(self) -> str:
        from importlib import metadata

        versions = []
        for name in PACKAGES:
            try:
                versions.append({"package": name, "version": metadata.version(name)})
            except metadata.PackageNotFoundError:
                versions.append({"package": name, "version": "not installed"})
        facts = pd.DataFrame(
            [
                {"item": "git SHA", "value": git_sha() or "unknown (not a git checkout)"},
                {"item": "Python", "value": platform.python_version()},
                {"item": "platform", "value": platform.platform()},
                {"item": "results folder", "value": str(self.results)},
            ]
        )
        out = _table(facts) + _table(pd.DataFrame(versions))
        for c in self.configs:
            if c.is_file():
                out += f"<h3>Configuration: {_esc(c)}</h3><pre>{_esc(c.read_text('utf-8'))}</pre>"
            else:
                out += _absent(f"Configuration file {c} not found.")
        side = self.tables / "tables.json"
        if side.is_file():
            settings = json.loads(side.read_text(encoding="utf-8")).get("Settings", {})
            out += (
                "<h3>Evaluation settings</h3><pre>"
                + _esc(json.dumps(settings, indent=2, sort_keys=True))
                + "</pre>"
            )
        if not self.configs and not side.is_file():
            out += _absent("No configuration given (--config).")
        listed = sorted({str(p) for p in self.inputs})
        out += (
            f"<details><summary>{len(listed)} input files read</summary><pre>"
            + _esc("\n".join(listed))
            + "</pre></details>"
        )
        return out

    # ------------------------------------------------------------------ page

    def build(self) -> str:
        """Build every section and return the page."""
        self.sections = []
        self.add("results", "Results (paper layout)", self.section_results)
        self.add("tests", "Paired tests", self.section_tests)
        self.add(
            "predictions",
            "Predictions: confusion matrices and predicted vs true",
            self.section_predictions,
        )
        self.add("selection", "Model selection (validation partitions)", self.section_selection)
        self.add("training", "Training curves", self.section_training)
        self.add("ingest", "QC: ingestion", self.section_ingest)
        self.add("anat", "QC: anatomy", self.section_anat)
        self.add("func", "QC: functional", self.section_func)
        self.add("groupqc", "QC: per dataset (group table, subject pages)", self.section_group_qc)
        self.add("geometry", "Geometric modes and gradients", self.section_geometry)
        self.add("experts", "RWMoE expert weights", self.section_experts)
        self.add("hubs", "Hub-token attention", self.section_hubs)
        self.add("provenance", "Provenance", self.section_provenance)
        nav = "".join(f'<a href="#{k}">{_esc(t)}</a>' for k, t, _ in self.sections)
        body = "".join(
            f'<section id="{k}"><h2>{_esc(t)}</h2>{b}</section>' for k, t, b in self.sections
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>brainharmony report</title>"
            f'<link rel="icon" href="data:,"><style>{_CSS}</style></head><body>'
            "<header><h1>brainharmony: evaluation report</h1></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
        )


def build_report(
    out: PathLike,
    results: PathLike = "results",
    tables: PathLike | None = None,
    predictions: PathLike | None = None,
    configs: Sequence[PathLike] = (),
    max_figures: int = 3,
    centroids: np.ndarray | None = None,
) -> Path:
    """Write the report page atomically and return its path."""
    builder = ReportBuilder(
        results, tables, predictions, configs, max_figures, centroids, out_dir=Path(out).parent
    )
    page = builder.build()
    return write_text(out, page)
