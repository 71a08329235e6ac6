"""Evaluation settings: task specifications and the ``evaluate:`` config block.

The workflow config's ``evaluate:`` block (schema: ``workflow/schemas/config.schema.yaml``)
is read here into frozen dataclasses with every default filled in, so the command line,
the tests and the Snakemake rules share one interpretation. Unknown keys are errors
naming the key and where it was found.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

TaskType = Literal["classification", "regression"]
TASK_TYPES: tuple[TaskType, ...] = ("classification", "regression")

#: Metrics per task type, in table order. Names are the ``metric`` column of metrics.csv.
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "auc")
REGRESSION_METRICS = ("mae", "pearson_r", "r2")
#: Metrics computed only for tasks that name a covariate (``partial_out``): the partial
#: correlation of prediction and truth with the covariate partialled out of both.
COVARIATE_METRICS = ("partial_r",)
METRICS: dict[TaskType, tuple[str, ...]] = {
    "classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS + COVARIATE_METRICS,
}
#: Metrics where smaller is better (all others: larger is better).
LOWER_IS_BETTER = frozenset({"mae"})
#: Short names used in the paper-layout tables.
METRIC_LABELS = {
    "accuracy": "ACC",
    "balanced_accuracy": "BACC",
    "f1": "F1",
    "auc": "AUC",
    "mae": "MAE",
    "pearson_r": "r",
    "r2": "R2",
    "partial_r": "partial r",
}

#: File stem of a table section's figure (``.png``) and its points (``.csv``), written
#: next to ``paper_table.*`` (:func:`brainharmony.evaluate.tables.make_tables`).
SECTION_FIGURE_STEM = "paper_figure_{section}"

_LABEL = re.compile(r"[a-zA-Z0-9]+")  # fullmatch: no trailing newline
_MODEL = re.compile(r"[a-z0-9_]+")

#: Harness models run when the config names none: every model the workflow trains (their
#: probes and the predictor) beside the FC baselines and the null model. The schema's
#: default is the same list (tests/workflow/test_presets.py checks it). A caller without
#: embeddings names the models it can run (``brainharmony evaluate --models``).
DEFAULT_MODELS = (
    "null_model",
    "fc_ridge",
    "fc_kernel_ridge",
    "fc_logistic",
    "probe_bh_f",
    "probe_bh_f_roisim",
    "probe_bh_s",
    "probe_harmonizer",
    "predictor",
)


#: How the predictor's LMAE is pretrained (``evaluate.predictor_lmae``).
PREDICTOR_LMAE_MODES = ("per_fold", "shared")


class SettingsError(ValueError):
    """The ``evaluate`` settings are invalid; the message names the key."""


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task on one evaluation dataset.

    Attributes
    ----------
    dataset : str
        Evaluation dataset name (a workflow dataset, or a cohort pooling several).
    name : str
        Task label (alphanumeric; a wildcard in the workflow).
    target : str
        Phenotype column holding the label / value.
    type : {"classification", "regression"}
    positive : str or None
        Class counted as positive by F1 and AUC in binary tasks (e.g. the patient
        class). Required for binary classification.
    classes : tuple of str or None
        Class order; default: the sorted labels found.
    average : {"macro", "weighted"}
        F1 average for more than two classes.
    site_mode : {"none", "stratify", "group"}
        How the splits treat sites (passed to ``brainharmony splits``).
    datasets : tuple of str
        Workflow datasets pooled into ``dataset`` (just ``(dataset,)`` for one).
    mapping : tuple of (str, str) or None
        Classification: raw value of ``target`` -> class label (config key ``map``),
        e.g. ADHD subtypes -> ``ADHD``. Values that are neither a key nor a label are
        left out (e.g. AD in a CN vs MCI task). A label may appear as a key only when
        it maps to itself, so applying the map twice changes nothing.
    partial_out : str or None
        Regression: a numeric phenotype column (e.g. ``age``) partialled out of truth
        and prediction for the ``partial_r`` metric; None: no ``partial_r``.
    """

    dataset: str
    name: str
    target: str
    type: TaskType
    positive: str | None = None
    classes: tuple[str, ...] | None = None
    average: Literal["macro", "weighted"] = "macro"
    site_mode: Literal["none", "stratify", "group"] = "none"
    datasets: tuple[str, ...] = ()
    mapping: tuple[tuple[str, str], ...] | None = None
    partial_out: str | None = None

    def __post_init__(self) -> None:
        where = f"evaluate.tasks.{self.dataset}.{self.name}"
        if not _LABEL.fullmatch(self.dataset):
            raise SettingsError(f"dataset name {self.dataset!r} must be alphanumeric")
        if not _LABEL.fullmatch(self.name):
            raise SettingsError(f"{where}: task name must be alphanumeric")
        if self.type not in TASK_TYPES:
            raise SettingsError(f"{where}.type: must be one of {TASK_TYPES}; got {self.type!r}")
        if not self.target:
            raise SettingsError(f"{where}.target: must name a phenotype column")
        if self.average not in ("macro", "weighted"):
            raise SettingsError(f"{where}.average: 'macro' or 'weighted'; got {self.average!r}")
        if self.site_mode not in ("none", "stratify", "group"):
            raise SettingsError(f"{where}.site_mode: none/stratify/group; got {self.site_mode!r}")
        if self.type == "regression" and (self.positive is not None or self.classes):
            raise SettingsError(f"{where}: 'positive'/'classes' only apply to classification")
        if self.classes is not None:
            if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
                raise SettingsError(f"{where}.classes: need >= 2 distinct classes")
            if self.positive is not None and self.positive not in self.classes:
                raise SettingsError(
                    f"{where}.positive: {self.positive!r} is not one of classes {self.classes}"
                )
        if self.partial_out is not None:
            if self.type != "regression":
                raise SettingsError(f"{where}.partial_out: only regression tasks partial out")
            if not self.partial_out or self.partial_out == self.target:
                raise SettingsError(
                    f"{where}.partial_out: must name a phenotype column other than the target"
                )
        if not self.datasets:
            object.__setattr__(self, "datasets", (self.dataset,))
        if self.mapping is not None:
            if self.type != "classification":
                raise SettingsError(f"{where}.map: only classification tasks map labels")
            table = dict(self.mapping)
            if not table:
                raise SettingsError(f"{where}.map: empty mapping")
            clash = sorted(v for v in set(table.values()) if v in table and table[v] != v)
            if clash:
                raise SettingsError(
                    f"{where}.map: labels {clash} are also raw values mapped elsewhere"
                )
            if self.classes is not None:
                extra = sorted(set(table.values()) - set(self.classes))
                if extra:
                    raise SettingsError(f"{where}.map: labels {extra} are not in classes")

    def map_label(self, raw: str) -> str | None:
        """The class label of a raw value (None: left out); identity without a map."""
        if self.mapping is None:
            return raw
        table = dict(self.mapping)
        if raw in table:
            return table[raw]
        return raw if raw in set(table.values()) else None

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataset, self.name)

    def resolve_classes(self, observed: Sequence[str]) -> tuple[str, ...]:
        """The class order given the labels found in the data.

        Raises
        ------
        SettingsError
            When a label is not among the configured classes, fewer than two classes
            are present, or a binary task has no (or an unknown) positive class.
        """
        where = f"evaluate.tasks.{self.dataset}.{self.name}"
        found = sorted({str(v) for v in observed})
        if self.classes is not None:
            unknown = [c for c in found if c not in self.classes]
            if unknown:
                raise SettingsError(
                    f"{where}: labels {unknown} of {self.target!r} are not in classes "
                    f"{list(self.classes)}"
                )
            classes = tuple(self.classes)
        else:
            classes = tuple(found)
        if len(classes) < 2:
            raise SettingsError(f"{where}: {self.target!r} has fewer than two classes: {found}")
        if len(classes) == 2:
            if self.positive is None:
                raise SettingsError(
                    f"{where}: binary task needs 'positive' (the class F1 and AUC score as "
                    f"positive, e.g. the patient class); classes: {list(classes)}"
                )
            if self.positive not in classes:
                raise SettingsError(
                    f"{where}.positive: {self.positive!r} is not one of {list(classes)}"
                )
        return classes

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "task": self.name,
            "target": self.target,
            "type": self.type,
            "positive": self.positive,
            "classes": list(self.classes) if self.classes is not None else None,
            "average": self.average,
            "site_mode": self.site_mode,
            "datasets": list(self.datasets),
            "map": dict(self.mapping) if self.mapping is not None else None,
            "partial_out": self.partial_out,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        classes = data.get("classes")
        return cls(
            dataset=str(data["dataset"]),
            name=str(data.get("task", data.get("name"))),
            target=str(data["target"]),
            type=data["type"],
            positive=None if data.get("positive") is None else str(data["positive"]),
            classes=None if classes is None else tuple(str(c) for c in classes),
            average=data.get("average", "macro"),
            site_mode=data.get("site_mode", "none"),
            datasets=tuple(data.get("datasets") or ()),
            mapping=_mapping(data.get("map")),
            partial_out=None if data.get("partial_out") is None else str(data["partial_out"]),
        )


@dataclass(frozen=True)
class Grids:
    """Hyperparameter grids searched on the validation partition.

    Each grid is ordered from the strongest to the weakest regularisation; ties in the
    validation score keep the earlier (simpler) candidate. Features are standardised
    and scaled to unit root-mean-square row norm first, so the values are scale-free
    (see :mod:`brainharmony.evaluate.baselines`).
    """

    ridge_alphas: tuple[float, ...] = (100.0, 10.0, 1.0, 0.1, 0.01, 0.001)
    logistic_cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    rbf_gamma_factors: tuple[float, ...] = (0.25, 1.0, 4.0)
    kernel_alphas: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01)


@dataclass(frozen=True)
class FineTuneSettings:
    """Fine-tuning through a pretrained model's ``encode`` (see :mod:`.finetune`).

    The defaults are the published BrainHarmonix stage-2 recipe
    (``../shared/reference/brainharmonix.md`` §8.3): the Harmonizer (or the F encoder)
    and the head are trained for 50 epochs, AdamW with weight decay 0.05, learning rate
    5e-4 with layer-wise decay 0.65 per block (the head at the full rate), 5 warmup
    epochs then a cosine down to 1e-6, drop-path 0.1 and label smoothing 0.1.

    Attributes
    ----------
    epochs : int
        Length of the schedule (and the most epochs trained).
    lrs : tuple of float
        Peak learning rates of the head; each is one candidate chosen on val.
    batch_size : int
    weight_decay : float
        AdamW weight decay of the matrices (biases and norms: none).
    train_encoder : bool
        Train the model's blocks too (fine-tuning); ``false`` trains the head on
        frozen features (a linear probe: its table label says "LP").
    layer_decay : float
        Learning-rate factor per block below the head: block ``i`` of ``n`` gets
        ``layer_decay ** (n - i)``, the inputs (embeddings, hub tokens)
        ``layer_decay ** (n + 1)``, the final norms and the head 1.
    drop_path : float
        Stochastic depth of the last trained block during fine-tuning (block ``i``:
        ``drop_path * i / (n - 1)``); never applied when predicting.
    label_smoothing : float
        Of the classification cross-entropy.
    head_init_std : float
        Standard deviation of the head's truncated-normal weight initialisation (the
        official fine-tuning script uses 2e-5: the head starts near zero, so the first
        steps move the pretrained model little).
    warmup_epochs : float
        Linear warmup from 0 to the peak learning rate, then a cosine to ``min_lr``
        at ``epochs`` (updated every step).
    min_lr : float
    patience : int
        Stop after this many epochs without a better validation score (the best epoch
        is kept in any case; ``patience >= epochs`` runs the whole schedule).
    """

    epochs: int = 50
    lrs: tuple[float, ...] = (5e-4,)
    batch_size: int = 16
    weight_decay: float = 0.05
    train_encoder: bool = True
    layer_decay: float = 0.65
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    head_init_std: float = 2e-5
    warmup_epochs: float = 5.0
    min_lr: float = 1e-6
    patience: int = 50


@dataclass(frozen=True)
class BrainNetCNNSettings:
    """BrainNetCNN (``brainnetcnn``): Kawahara et al. 2017, their sizes and recipe.

    Architecture (:class:`brainharmony.models.graphs.BrainNetCNNConfig`): two
    edge-to-edge layers of 32 maps, edge-to-node 64, node-to-graph 256, fully connected
    128 and 30, dropout 0.5, leaky ReLU slope 0.33. Training: SGD with momentum 0.9,
    learning rate 0.01, weight decay 5e-4, mini-batches of 14 (the paper's Caffe
    solver). The paper gives no epoch count: up to ``epochs``, the epoch chosen on val
    (stopping after ``patience`` epochs without a better val score).
    """

    e2e_channels: tuple[int, ...] = (32, 32)
    e2n_channels: int = 64
    n2g_channels: int = 256
    hidden: tuple[int, ...] = (128, 30)
    dropout: float = 0.5
    negative_slope: float = 0.33
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    batch_size: int = 14
    epochs: int = 100
    patience: int = 20


@dataclass(frozen=True)
class BrainGNNSettings:
    """BrainGNN (``braingnn``): Li et al. 2021, sizes and recipe of the official code
    (xxlya/BrainGNN_Pytorch).

    Two Ra-GConv layers of 32 with 8 communities, each followed by R-pool keeping half
    the nodes; fully connected 32 and 512, dropout 0.5. Graphs: node features the FC
    rows, edges the top ``edge_density`` of the positive FC values. Loss:
    cross-entropy + ``unit_weight`` x unit loss + ``topk_weight`` x TopK-pooling loss
    (both layers) + ``consistency_weight`` x group-level consistency. Training: SGD
    (Nesterov momentum 0.9), learning rate 0.01 halved every 20 epochs, weight decay
    5e-3, batches of 100, up to 100 epochs, the epoch chosen on val.
    """

    conv_dims: tuple[int, ...] = (32, 32)
    communities: int = 8
    pool_ratio: float = 0.5
    mlp_hidden: int = 512
    dropout: float = 0.5
    edge_density: float = 0.1
    unit_weight: float = 1.0
    topk_weight: float = 0.1
    consistency_weight: float = 0.1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.005
    step_size: int = 20
    gamma: float = 0.5
    batch_size: int = 100
    epochs: int = 100
    patience: int = 20


@dataclass(frozen=True)
class BNTSettings:
    """Brain Network Transformer (``bnt``): Kan et al. 2022, sizes and recipe of the
    official code (Wayfear/BrainNetworkTransformer).

    Two transformer layers over the ROI tokens (4 heads, feed-forward 1024, dropout
    0.1), OCRead with 100 frozen orthonormal centres (encoder MLP 32), reduction to 8
    per cluster, fully connected 256 and 32. Training: Adam, learning rate 1e-4 with a
    cosine decay to 1e-5 over ``epochs``, weight decay 1e-4, batches of 64, up to 200
    epochs, the epoch chosen on val.
    """

    layers: int = 2
    heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    clusters: int = 100
    encoder_hidden: int = 32
    reduced_dim: int = 8
    hidden: tuple[int, ...] = (256, 32)
    lr: float = 0.0001
    min_lr: float = 0.00001
    weight_decay: float = 0.0001
    batch_size: int = 64
    epochs: int = 200
    patience: int = 20


@dataclass(frozen=True)
class GraphSettings:
    """The published graph baselines (``evaluate.graphs``; :mod:`.graphs`)."""

    brainnetcnn: BrainNetCNNSettings = field(default_factory=BrainNetCNNSettings)
    braingnn: BrainGNNSettings = field(default_factory=BrainGNNSettings)
    bnt: BNTSettings = field(default_factory=BNTSettings)


@dataclass(frozen=True)
class SectionFigure:
    """A figure drawn for a table section (``evaluate.sections.<id>.figure``).

    One panel per task of the section: the chosen metric's mean ± std (over the test
    partitions, as in the table) of each row that has an x value, against that value
    (e.g. the hub-token count N_H of the ``probe_hubs<N>`` rows).

    Attributes
    ----------
    x : tuple of (str, float)
        Model -> x value (config: a mapping). Empty when ``pattern`` gives the values.
    pattern : str
        Regular expression with one group matched against the section's model names;
        the group's number is the x value (config: ``x`` as a string, e.g.
        ``probe_hubs(\\d+)``). Empty when ``x`` is a mapping.
    metric : mapping of task type to metric
        The plotted metric per task type; empty: ``primary_metric``.
    xlabel : str
        Axis label (default: "x").
    log_x : bool
        Logarithmic (base 2) x axis.
    """

    x: tuple[tuple[str, float], ...] = ()
    pattern: str = ""
    metric: Mapping[str, str] = field(default_factory=dict)
    xlabel: str = ""
    log_x: bool = False

    def points(self, models: Sequence[str]) -> dict[str, float]:
        """``model -> x`` for those of ``models`` that have an x value."""
        if self.pattern:
            rx = re.compile(self.pattern)
            out = {}
            for m in models:
                hit = rx.fullmatch(m)
                if hit:
                    out[m] = float(hit.group(1))
            return out
        table = dict(self.x)
        return {m: table[m] for m in models if m in table}

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.pattern if self.pattern else dict(self.x),
            "metric": dict(self.metric),
            "xlabel": self.xlabel,
            "log_x": self.log_x,
        }


@dataclass(frozen=True)
class TableSection:
    """One section of the paper-layout tables (``evaluate.sections.<id>``): its own
    table (Markdown heading, LaTeX table) over some tasks and rows.

    Attributes
    ----------
    title : str
        Heading / caption (default: the section's id).
    tasks : tuple of (str, str)
        ``(dataset, task)`` columns, in order (config: ``dataset/task`` or a dataset
        name for all its tasks; default: every task).
    models : tuple of str
        Rows, in order (default: every model evaluated on the section's tasks, in the
        registry's order).
    figure : SectionFigure or None
    """

    title: str = ""
    tasks: tuple[tuple[str, str], ...] = ()
    models: tuple[str, ...] = ()
    figure: SectionFigure | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "title": self.title,
            "tasks": [f"{d}/{t}" for d, t in self.tasks],
            "models": list(self.models),
        }
        if self.figure is not None:
            out["figure"] = self.figure.to_dict()
        return out


@dataclass(frozen=True)
class EvalSettings:
    """The ``evaluate:`` block with defaults.

    Attributes
    ----------
    tasks : tuple of TaskSpec
    cohorts : mapping of str to tuple of str
        Evaluation dataset -> workflow datasets pooled into it.
    models : tuple of str
        Harness model names (:data:`brainharmony.evaluate.harness.HARNESS`).
    seeds : tuple of int
        Split seeds (repeats of the K-fold cross-validation).
    n_folds, val_fraction, n_bins :
        Parameters of the split files (``brainharmony splits``).
    primary_metric : mapping of task type to metric
        Metric of the paired tests, of "best baseline" and of bold in tables.
    select_metric : mapping of task type to metric
        Metric maximised (or minimised) on the validation partition to choose
        hyperparameters / epochs.
    table_metrics : mapping of task type to tuple of metrics
        Columns of the paper-layout tables.
    alpha : float
        Significance level of the paired tests shown in the tables.
    grids : Grids
    finetune : FineTuneSettings
    graphs : GraphSettings
        Sizes and recipes of the graph baselines (``brainnetcnn``, ``braingnn``, ``bnt``).
    predictor_lmae : {"per_fold", "shared"}
        How the predictor's LMAE stage is pretrained: per fold on that fold's training
        subjects only (default), or once on every subject of ``pretrain.datasets``, test
        folds included (transductive; the table labels the predictor so).
    labels : mapping of str to str
        Row label per harness model name, over the registry's (the workflow adds those
        of its ``train.variants``: ``probe_<name>`` -> ``"<label> (LP)"``).
    external : mapping of str to str
        ``<name>`` -> path pattern of the predictions TSV of model ``external_<name>``
        (made by the user's own code on the exported split files), with the
        placeholders ``{dataset}`` and ``{task}`` (:data:`EXTERNAL_PLACEHOLDERS`); the
        workflow passes the file to ``brainharmony evaluate --external``.
    sections : mapping of str to TableSection
        The paper-layout tables' sections, in order (empty: one table of every task and
        model).
    """

    tasks: tuple[TaskSpec, ...] = ()
    cohorts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    models: tuple[str, ...] = DEFAULT_MODELS
    seeds: tuple[int, ...] = (0,)
    n_folds: int = 5
    val_fraction: float = 0.2
    n_bins: int = 5
    primary_metric: Mapping[str, str] = field(
        default_factory=lambda: {"classification": "balanced_accuracy", "regression": "mae"}
    )
    select_metric: Mapping[str, str] = field(
        default_factory=lambda: {"classification": "auc", "regression": "mae"}
    )
    table_metrics: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "classification": CLASSIFICATION_METRICS,
            "regression": REGRESSION_METRICS,
        }
    )
    alpha: float = 0.05
    grids: Grids = field(default_factory=Grids)
    finetune: FineTuneSettings = field(default_factory=FineTuneSettings)
    graphs: GraphSettings = field(default_factory=GraphSettings)
    predictor_lmae: Literal["per_fold", "shared"] = "per_fold"
    labels: Mapping[str, str] = field(default_factory=dict)
    external: Mapping[str, str] = field(default_factory=dict)
    sections: Mapping[str, TableSection] = field(default_factory=dict)

    def task(self, dataset: str, name: str) -> TaskSpec:
        """The spec of one task (error listing the configured tasks when absent)."""
        for spec in self.tasks:
            if spec.dataset == dataset and spec.name == name:
                return spec
        known = [f"{t.dataset}/{t.name}" for t in self.tasks]
        raise SettingsError(f"no task {dataset}/{name} in evaluate.tasks; configured: {known}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :func:`settings_from_mapping`)."""
        tasks: dict[str, dict[str, Any]] = {}
        for t in self.tasks:
            d = t.to_dict()
            d.pop("dataset")
            d.pop("task")
            d.pop("datasets")
            if d["map"] is None:
                d.pop("map")
            if d["partial_out"] is None:
                d.pop("partial_out")
            tasks.setdefault(t.dataset, {})[t.name] = d
        return {
            "tasks": tasks,
            "cohorts": {k: list(v) for k, v in self.cohorts.items()},
            "models": list(self.models),
            "seeds": list(self.seeds),
            "n_folds": self.n_folds,
            "val_fraction": self.val_fraction,
            "n_bins": self.n_bins,
            "primary_metric": dict(self.primary_metric),
            "select_metric": dict(self.select_metric),
            "table_metrics": {k: list(v) for k, v in self.table_metrics.items()},
            "alpha": self.alpha,
            "grids": {f.name: list(getattr(self.grids, f.name)) for f in fields(Grids)},
            "finetune": {
                f.name: (
                    list(getattr(self.finetune, f.name))
                    if isinstance(getattr(self.finetune, f.name), tuple)
                    else getattr(self.finetune, f.name)
                )
                for f in fields(FineTuneSettings)
            },
            "graphs": {f.name: _plain(getattr(self.graphs, f.name)) for f in fields(GraphSettings)},
            "predictor_lmae": self.predictor_lmae,
            "labels": dict(self.labels),
            "external": dict(self.external),
            "sections": {k: v.to_dict() for k, v in self.sections.items()},
        }


_TOP_KEYS = {
    "tasks",
    "cohorts",
    "models",
    "seeds",
    "n_folds",
    "val_fraction",
    "n_bins",
    "primary_metric",
    "select_metric",
    "table_metrics",
    "alpha",
    "grids",
    "finetune",
    "graphs",
    "predictor_lmae",
    "labels",
    "external",
    "sections",
}
_SECTION_KEYS = {"title", "tasks", "models", "figure"}
_FIGURE_KEYS = {"x", "metric", "xlabel", "log_x"}
_SECTION_ID = re.compile(r"[a-zA-Z0-9_]+")
_TASK_KEYS = {
    "target",
    "type",
    "positive",
    "classes",
    "average",
    "site_mode",
    "map",
    "partial_out",
    "description",
}


def _plain(block: Any) -> dict[str, Any]:
    """A settings dataclass as a JSON-ready dict (tuples as lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(block, f.name), tuple) else v
        for f in fields(block)
    }


#: Graph-baseline settings that must be > 0, in [0, 1), or in (0, 1].
_GRAPH_POSITIVE = (
    "lr",
    "batch_size",
    "epochs",
    "patience",
    "communities",
    "mlp_hidden",
    "e2n_channels",
    "n2g_channels",
    "layers",
    "heads",
    "ff_dim",
    "clusters",
    "encoder_hidden",
    "reduced_dim",
    "step_size",
    "gamma",
)
_GRAPH_UNIT_OPEN = ("dropout", "momentum")
_GRAPH_UNIT_CLOSED = ("pool_ratio", "edge_density")


def _graph_settings(raw: Any) -> GraphSettings:
    """``evaluate.graphs`` -> :class:`GraphSettings` (unknown keys and bad values named)."""
    if raw is None:
        return GraphSettings()
    if not isinstance(raw, Mapping):
        raise SettingsError("evaluate.graphs: expected a mapping model -> settings")
    kinds = [f.name for f in fields(GraphSettings)]
    _check_keys(raw, set(kinds), "evaluate.graphs")
    built: dict[str, Any] = {}
    for name in kinds:
        cls = type(getattr(GraphSettings(), name))
        block = raw.get(name) or {}
        where = f"evaluate.graphs.{name}"
        if not isinstance(block, Mapping):
            raise SettingsError(f"{where}: expected a mapping")
        _check_keys(block, {g.name for g in fields(cls)}, where)
        values: dict[str, Any] = {}
        for key, value in block.items():
            if isinstance(value, Sequence) and not isinstance(value, str):
                if not value or any(not isinstance(v, int) or v < 1 for v in value):
                    raise SettingsError(f"{where}.{key}: expected a non-empty list of ints >= 1")
                value = tuple(int(v) for v in value)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{where}.{key}: expected a number; got {value!r}")
            values[key] = value
        settings = cls(**values)
        for key in (g.name for g in fields(cls)):
            v = getattr(settings, key)
            if key in _GRAPH_POSITIVE and not v > 0:
                raise SettingsError(f"{where}.{key}: must be > 0; got {v}")
            if key in _GRAPH_UNIT_OPEN and not 0 <= v < 1:
                raise SettingsError(f"{where}.{key}: must be in [0, 1); got {v}")
            if key in _GRAPH_UNIT_CLOSED and not 0 < v <= 1:
                raise SettingsError(f"{where}.{key}: must be in (0, 1]; got {v}")
            if key.endswith("_weight") or key in ("weight_decay", "min_lr"):
                if v < 0:
                    raise SettingsError(f"{where}.{key}: must be >= 0; got {v}")
        built[name] = settings
    return GraphSettings(**built)


def _mapping(value: Any) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SettingsError(f"map: expected a mapping raw value -> label; got {value!r}")
    return tuple((str(k), str(v)) for k, v in value.items())


def _check_keys(block: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise SettingsError(
            f"unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}"
        )


def _metric_map(
    value: Any,
    default: Mapping[str, str],
    where: str,
    multi: bool = False,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = dict(default)
    if value is None:
        return out
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where}: expected a mapping task type -> metric")
    _check_keys(value, set(TASK_TYPES), where)
    for kind, chosen in value.items():
        names = list(chosen) if multi else [chosen]
        allowed = tuple(m for m in METRICS[kind] if m not in exclude)
        for name in names:
            if name not in allowed:
                raise SettingsError(
                    f"{where}.{kind}: unknown metric {name!r}; choose from {allowed}"
                )
        out[kind] = tuple(names) if multi else names[0]
    return out


def _floats(value: Any, where: str, positive: bool = True) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise SettingsError(f"{where}: expected a non-empty list of numbers")
    out = tuple(float(v) for v in value)
    if positive and any(v <= 0 for v in out):
        raise SettingsError(f"{where}: every value must be > 0; got {list(out)}")
    return out


def _labels(value: Any) -> dict[str, str]:
    """``evaluate.labels``: harness model name -> row label."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"evaluate.labels: expected a mapping model -> label; got {value!r}")
    out: dict[str, str] = {}
    for model, label in value.items():
        if not _MODEL.fullmatch(str(model)) or not str(label).strip():
            raise SettingsError(
                f"evaluate.labels: {model!r}: {label!r} is not a harness model name with a "
                "non-empty label"
            )
        out[str(model)] = str(label)
    return out


#: Placeholders an ``evaluate.external`` path pattern may use (filled per task).
EXTERNAL_PLACEHOLDERS = ("dataset", "task")


def _external(value: Any) -> dict[str, str]:
    """``evaluate.external``: ``<name>`` -> predictions path pattern of ``external_<name>``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(
            f"evaluate.external: expected a mapping name -> predictions file; got {value!r}"
        )
    out: dict[str, str] = {}
    allowed = ", ".join(f"{{{p}}}" for p in EXTERNAL_PLACEHOLDERS)
    for name, pattern in value.items():
        where = f"evaluate.external.{name}"
        if not _MODEL.fullmatch(str(name)):
            raise SettingsError(
                f"{where}: the name must be lower case letters, digits and _ (the model is "
                f"external_<name>)"
            )
        if not isinstance(pattern, str) or not pattern.strip():
            raise SettingsError(f"{where}: expected a path (pattern); got {pattern!r}")
        try:
            fields_used = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        except ValueError as err:
            raise SettingsError(f"{where}: {pattern!r} is not a valid pattern ({err})") from None
        unknown = sorted({f for f in fields_used if f not in EXTERNAL_PLACEHOLDERS})
        if unknown:
            raise SettingsError(
                f"{where}: unknown placeholder(s) {['{' + f + '}' for f in unknown]} in "
                f"{pattern!r}; allowed: {allowed} (double a literal brace: {{{{ }}}})"
            )
        out[str(name)] = pattern
    return out


def _sections(
    raw: Any, tasks: Sequence[TaskSpec], models: Sequence[str], primary: Mapping[str, str]
) -> dict[str, TableSection]:
    """``evaluate.sections`` -> :class:`TableSection` per id, checked against the
    configured tasks and models (errors name the section)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SettingsError("evaluate.sections: expected a mapping section id -> settings")
    keys = [t.key for t in tasks]
    out: dict[str, TableSection] = {}
    for sid, spec in raw.items():
        where = f"evaluate.sections.{sid}"
        if not _SECTION_ID.fullmatch(str(sid)):
            raise SettingsError(f"{where}: a section id is letters, digits and _")
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            raise SettingsError(f"{where}: expected a mapping")
        _check_keys(spec, _SECTION_KEYS, where)
        chosen: list[tuple[str, str]] = []
        names = spec.get("tasks")
        if names is None:
            chosen = list(keys)
        else:
            if isinstance(names, str) or not isinstance(names, Sequence) or not names:
                raise SettingsError(f"{where}.tasks: expected a non-empty list")
            for name in names:
                ds, _, tk = str(name).partition("/")
                found = [k for k in keys if k[0] == ds and (not tk or k[1] == tk)]
                if not found:
                    raise SettingsError(
                        f"{where}.tasks: {name!r} is not a task (dataset/task) or dataset of "
                        f"evaluate.tasks; configured: {[f'{d}/{t}' for d, t in keys]}"
                    )
                chosen += [k for k in found if k not in chosen]
        rows = tuple(str(m) for m in spec.get("models") or ())
        unknown = [m for m in rows if m not in models]
        if unknown:
            raise SettingsError(
                f"{where}.models: {unknown} are not in evaluate.models ({list(models)})"
            )
        if len(set(rows)) != len(rows):
            raise SettingsError(f"{where}.models: duplicate names in {list(rows)}")
        figure = _figure(spec.get("figure"), rows or tuple(models), primary, f"{where}.figure")
        out[str(sid)] = TableSection(
            title=str(spec.get("title") or sid),
            tasks=tuple(chosen),
            models=rows,
            figure=figure,
        )
    return out


def _figure(
    raw: Any, rows: Sequence[str], primary: Mapping[str, str], where: str
) -> SectionFigure | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{where}: expected a mapping")
    _check_keys(raw, _FIGURE_KEYS, where)
    if "x" not in raw:
        raise SettingsError(f"{where}: missing required key 'x' (model -> value, or a pattern)")
    x, pattern = raw["x"], ""
    pairs: tuple[tuple[str, float], ...] = ()
    if isinstance(x, str):
        try:
            rx = re.compile(x)
        except re.error as err:
            raise SettingsError(f"{where}.x: not a regular expression: {err}") from None
        if rx.groups != 1:
            raise SettingsError(f"{where}.x: the pattern needs exactly one group (the value)")
        pattern = x
    elif isinstance(x, Mapping) and x:
        values = []
        for model, value in x.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{where}.x.{model}: expected a number; got {value!r}")
            values.append((str(model), float(value)))
        pairs = tuple(values)
        extra = [m for m, _ in pairs if m not in rows]
        if extra:
            raise SettingsError(f"{where}.x: {extra} are not rows of the section ({list(rows)})")
    else:
        raise SettingsError(f"{where}.x: a mapping model -> number or a pattern with one group")
    figure = SectionFigure(
        x=pairs,
        pattern=pattern,
        metric=_metric_map(raw.get("metric"), primary, f"{where}.metric"),
        xlabel=str(raw.get("xlabel") or ""),
        log_x=bool(raw.get("log_x", False)),
    )
    try:
        points = figure.points(rows)
    except ValueError:
        raise SettingsError(f"{where}.x: the pattern's group must be a number") from None
    if len(points) < 2:
        raise SettingsError(
            f"{where}.x: fewer than two of the section's rows have a value ({points})"
        )
    if figure.log_x and min(points.values()) <= 0:
        raise SettingsError(f"{where}.log_x: every x value must be > 0; got {points}")
    return figure


def settings_from_mapping(block: Mapping[str, Any] | None) -> EvalSettings:
    """Build :class:`EvalSettings` from an ``evaluate:`` block (defaults filled).

    Parameters
    ----------
    block : mapping or None
        The ``evaluate`` block of the workflow config; a whole config (with an
        ``evaluate`` key and a ``datasets`` key) is accepted too.

    Raises
    ------
    SettingsError
        Naming the offending key.
    """
    block = dict(block or {})
    known_datasets: list[str] | None = None
    if "datasets" in block or "evaluate" in block:  # a whole workflow config
        if isinstance(block.get("datasets"), Mapping):
            known_datasets = [str(d) for d in block["datasets"]]
        block = dict(block.get("evaluate") or {})
    _check_keys(block, _TOP_KEYS, "evaluate")
    base = EvalSettings()
    cohorts_raw = block.get("cohorts") or {}
    cohorts: dict[str, tuple[str, ...]] = {}
    for name, members in cohorts_raw.items():
        if not _LABEL.fullmatch(str(name)):
            raise SettingsError(f"evaluate.cohorts: name {name!r} must be alphanumeric")
        if not isinstance(members, Sequence) or isinstance(members, str) or not members:
            raise SettingsError(f"evaluate.cohorts.{name}: expected a non-empty list of datasets")
        cohorts[str(name)] = tuple(str(m) for m in members)
    tasks: list[TaskSpec] = []
    for dataset, per in (block.get("tasks") or {}).items():
        if not isinstance(per, Mapping) or not per:
            raise SettingsError(f"evaluate.tasks.{dataset}: expected a mapping task -> settings")
        for name, spec in per.items():
            where = f"evaluate.tasks.{dataset}.{name}"
            if not isinstance(spec, Mapping):
                raise SettingsError(f"{where}: expected a mapping")
            _check_keys(spec, _TASK_KEYS, where)
            for req in ("target", "type"):
                if req not in spec:
                    raise SettingsError(f"{where}: missing required key {req!r}")
            classes = spec.get("classes")
            tasks.append(
                TaskSpec(
                    dataset=str(dataset),
                    name=str(name),
                    target=str(spec["target"]),
                    type=spec["type"],
                    positive=None if spec.get("positive") is None else str(spec["positive"]),
                    classes=None if classes is None else tuple(str(c) for c in classes),
                    average=spec.get("average", "macro"),
                    site_mode=spec.get("site_mode", "none"),
                    datasets=cohorts.get(str(dataset), (str(dataset),)),
                    mapping=_mapping(spec.get("map")),
                    partial_out=(
                        None if spec.get("partial_out") is None else str(spec["partial_out"])
                    ),
                )
            )
    if known_datasets is not None:
        for spec in tasks:
            missing = [d for d in spec.datasets if d not in known_datasets]
            if missing:
                raise SettingsError(
                    f"evaluate.tasks.{spec.dataset}: datasets {missing} are not in the config's "
                    f"datasets ({known_datasets}); pool several with evaluate.cohorts"
                )
    models = tuple(block.get("models") or DEFAULT_MODELS)
    for m in models:
        if not _MODEL.fullmatch(str(m)):
            raise SettingsError(
                f"evaluate.models: {m!r} is not a harness model name (lower case, digits, _)"
            )
    if len(set(models)) != len(models):
        raise SettingsError(f"evaluate.models: duplicate names in {list(models)}")
    seeds = tuple(int(s) for s in (block.get("seeds") or base.seeds))
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SettingsError(f"evaluate.seeds: distinct integers >= 0; got {list(seeds)}")
    n_folds = int(block.get("n_folds", base.n_folds))
    if n_folds < 2:
        raise SettingsError(f"evaluate.n_folds: must be >= 2; got {n_folds}")
    val_fraction = float(block.get("val_fraction", base.val_fraction))
    if not 0 < val_fraction < 1:
        raise SettingsError(f"evaluate.val_fraction: must be in (0, 1); got {val_fraction}")
    alpha = float(block.get("alpha", base.alpha))
    if not 0 < alpha < 1:
        raise SettingsError(f"evaluate.alpha: must be in (0, 1); got {alpha}")
    grids_raw = dict(block.get("grids") or {})
    _check_keys(grids_raw, {f.name for f in fields(Grids)}, "evaluate.grids")
    grids = Grids(
        **{k: _floats(v, f"evaluate.grids.{k}") for k, v in grids_raw.items()}  # type: ignore[arg-type]
    )
    ft_raw = dict(block.get("finetune") or {})
    _check_keys(ft_raw, {f.name for f in fields(FineTuneSettings)}, "evaluate.finetune")
    if "lrs" in ft_raw:
        ft_raw["lrs"] = _floats(ft_raw["lrs"], "evaluate.finetune.lrs")
    finetune = FineTuneSettings(**ft_raw)
    if finetune.epochs < 1 or finetune.batch_size < 1 or finetune.patience < 1:
        raise SettingsError("evaluate.finetune: epochs, batch_size and patience must be >= 1")
    predictor_lmae = str(block.get("predictor_lmae", base.predictor_lmae))
    if predictor_lmae not in PREDICTOR_LMAE_MODES:
        raise SettingsError(
            f"evaluate.predictor_lmae: one of {PREDICTOR_LMAE_MODES}; got {predictor_lmae!r}"
        )
    if not 0 < finetune.layer_decay <= 1:
        raise SettingsError(
            f"evaluate.finetune.layer_decay: must be in (0, 1]; got {finetune.layer_decay}"
        )
    if not 0 <= finetune.drop_path < 1 or not 0 <= finetune.label_smoothing < 1:
        raise SettingsError("evaluate.finetune: drop_path and label_smoothing must be in [0, 1)")
    if not finetune.head_init_std > 0:
        raise SettingsError("evaluate.finetune: head_init_std must be > 0")
    if finetune.warmup_epochs < 0 or finetune.min_lr < 0:
        raise SettingsError("evaluate.finetune: warmup_epochs and min_lr must be >= 0")
    primary_metric = _metric_map(
        block.get("primary_metric"),
        base.primary_metric,
        "evaluate.primary_metric",
        exclude=COVARIATE_METRICS,  # tests compare every task; partial_r is not in all
    )
    return EvalSettings(
        tasks=tuple(tasks),
        cohorts=cohorts,
        models=models,
        seeds=seeds,
        n_folds=n_folds,
        val_fraction=val_fraction,
        n_bins=int(block.get("n_bins", base.n_bins)),
        primary_metric=primary_metric,
        select_metric=_metric_map(
            block.get("select_metric"),
            base.select_metric,
            "evaluate.select_metric",
            exclude=COVARIATE_METRICS,  # the harness selects without the covariate
        ),
        table_metrics=_metric_map(
            block.get("table_metrics"), base.table_metrics, "evaluate.table_metrics", multi=True
        ),
        alpha=alpha,
        grids=grids,
        finetune=finetune,
        graphs=_graph_settings(block.get("graphs")),
        predictor_lmae=predictor_lmae,  # type: ignore[arg-type]
        labels=_labels(block.get("labels")),
        external=_external(block.get("external")),
        sections=_sections(block.get("sections"), tasks, models, primary_metric),
    )


def load_settings(source: str | Path | None) -> EvalSettings:
    """Settings from a JSON/YAML file or a JSON string (``None``: defaults only).

    The document may be the ``evaluate:`` block itself or a whole workflow config.
    """
    if source is None:
        return settings_from_mapping({})
    text = str(source)
    path = Path(text)
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SettingsError(f"--settings: not valid JSON: {err}") from None
    elif path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise SettingsError(f"{path}: not valid YAML/JSON: {err}") from None
    else:
        raise SettingsError(f"--settings: {text!r} is neither a file nor a JSON object")
    if data is not None and not isinstance(data, Mapping):
        raise SettingsError(f"{text}: expected a mapping")
    return settings_from_mapping(data)
