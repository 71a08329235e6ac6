"""The harness: one registry entry per evaluated model, one interface for all of them.

A harness model receives a :class:`Fold`, which carries the subjects of the three
partitions and the labels of **train and val only** (the test labels never reach a
model), and returns a :class:`FoldOutcome`: predictions for val and test and the
hyperparameters it chose on val. Grid-searched models share
:meth:`GridModel.run_fold`: every candidate is fitted on train and scored on val with
the task's selection metric; the best (ties: the earliest, i.e. most regularised)
candidate's test predictions are kept.

Registry
--------
:data:`HARNESS` maps a model name to its :class:`ModelInfo`; the implementing class is
imported only when the model is used (so the harness imports torch only for the
fine-tuning entries). Adding a model is one entry here plus its class.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainharmony.evaluate.metrics import score
from brainharmony.evaluate.settings import LOWER_IS_BETTER, EvalSettings, TaskSpec


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry.

    Attributes
    ----------
    name : str
        Harness name (``evaluate.models``; the ``model`` column of the outputs).
    display : str
        Row label in the paper-layout tables.
    target : str
        ``"module:Class"`` of the implementation.
    baseline : bool
        Counted among the baselines ("best baseline" of the paired tests).
    inputs : str
        What the model needs: ``fc``, ``embedding``, ``predictions`` or ``model_dir``.
    kwargs : mapping
        Constructor arguments.
    """

    name: str
    display: str
    target: str
    baseline: bool
    inputs: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def uses_torch(self) -> bool:
        """Whether the model trains with torch (its thread count is then limited too)."""
        return self.target.partition(":")[0] in TORCH_MODULES


_B = "brainharmony.evaluate.baselines"
_FT = "brainharmony.evaluate.finetune"
_G = "brainharmony.evaluate.graphs"
#: Modules whose models train with torch (``brainharmony evaluate --threads`` limits it).
TORCH_MODULES = frozenset({_FT, _G})

#: Every harness model, by name.
HARNESS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("null_model", "Null (majority / mean)", f"{_B}:NullModel", True, "none"),
        ModelInfo("fc_ridge", "FC ridge", f"{_B}:RidgeModel", True, "fc"),
        ModelInfo("fc_kernel_ridge", "FC kernel ridge (RBF)", f"{_B}:KernelRidgeModel", True, "fc"),
        ModelInfo("fc_logistic", "FC logistic regression", f"{_B}:LogisticModel", True, "fc"),
        ModelInfo("brainnetcnn", "BrainNetCNN", f"{_G}:BrainNetCNNModel", True, "fc"),
        ModelInfo("braingnn", "BrainGNN", f"{_G}:BrainGNNModel", True, "fc"),
        ModelInfo("bnt", "BNT", f"{_G}:BNTModel", True, "fc"),
        ModelInfo(
            "probe_harmonizer", "BrainHarmonix (LP)", f"{_B}:LinearProbe", False, "embedding"
        ),
        ModelInfo("probe_bh_f", "BrainHarmonix-F (LP)", f"{_B}:LinearProbe", False, "embedding"),
        ModelInfo(
            "probe_bh_f_roisim",
            "BrainHarmonix-F (LP, ROI similarity)",
            f"{_B}:LinearProbe",
            False,
            "embedding",
        ),
        ModelInfo("probe_bh_s", "BrainHarmonix-S (LP)", f"{_B}:LinearProbe", False, "embedding"),
        ModelInfo(
            "finetune_harmonizer", "BrainHarmonix (FT)", f"{_FT}:FineTune", False, "model_dir"
        ),
        ModelInfo("finetune_bh_f", "BrainHarmonix-F (FT)", f"{_FT}:FineTune", False, "model_dir"),
        ModelInfo("finetune_bh_s", "BrainHarmonix-S (FT)", f"{_FT}:FineTune", False, "model_dir"),
        ModelInfo(
            "predictor",
            "LMAE-RWMoE-SSM",
            "brainharmony.evaluate.external:ExternalPredictions",
            False,
            "predictions",
        ),
    )
}


#: Name prefixes that make an entry on the fly (ablations and other variants of a model):
#: ``probe_<x>`` is a linear probe on ``--embedding probe_<x>=...``, ``finetune_<x>``
#: fine-tunes ``--finetune finetune_<x>=DIR``, ``external_<x>`` reads ``--external``.
PREFIXES: dict[str, tuple[str, str, str]] = {
    "probe_": (f"{_B}:LinearProbe", "embedding", "LP"),
    "finetune_": (f"{_FT}:FineTune", "model_dir", "FT"),
    "external_": ("brainharmony.evaluate.external:ExternalPredictions", "predictions", "ext"),
}


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``, or one made from its prefix (see :data:`PREFIXES`).

    Raises
    ------
    ValueError
        For a name that is neither registered nor has a known prefix.
    """
    if name in HARNESS:
        return HARNESS[name]
    for prefix, (target, inputs, tag) in PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return ModelInfo(name, f"{name[len(prefix) :]} ({tag})", target, False, inputs)
    raise ValueError(
        f"unknown harness model {name!r}; known: {', '.join(sorted(HARNESS))}, or a name "
        f"starting with {', '.join(PREFIXES)}"
    )


#: What a fine-tuning entry's "(FT)" becomes when ``evaluate.finetune.train_encoder`` is
#: false: only the head is trained on frozen features, a linear probe.
FROZEN_TAG = "(LP, trained head)"


def display_name(name: str, settings: EvalSettings | None = None) -> str:
    """Table row label of a model.

    With ``settings``, a fine-tuning entry (``finetune_*``) run with a frozen encoder
    (``evaluate.finetune.train_encoder: false``) is labelled a linear probe
    (:data:`FROZEN_TAG` instead of "(FT)"), so that no row claims fine-tuning it did not do;
    a label in ``settings.labels`` (``evaluate.labels``, the workflow's variants) wins.
    """
    if settings is not None and name in settings.labels:
        return settings.labels[name]
    try:
        info = model_info(name)
    except ValueError:
        return name
    if (
        settings is not None
        and not settings.finetune.train_encoder
        and info.target == f"{_FT}:FineTune"
    ):
        return info.display.replace("(FT)", FROZEN_TAG)
    return info.display


def baseline_names() -> list[str]:
    return [n for n, info in HARNESS.items() if info.baseline]


@dataclass(frozen=True)
class Fold:
    """One fold of one split seed, as a model sees it.

    Attributes
    ----------
    seed, index : int
        Split seed and fold number.
    train, val, test : ndarray of str
        Subjects of each partition.
    y_train, y_val : ndarray
        Labels (class strings or floats) of train and val. Test labels are not here.
    classes : tuple of str or None
        Class order (classification).
    """

    seed: int
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    classes: tuple[str, ...] | None


@dataclass(frozen=True)
class Output:
    """Predictions for one partition.

    Attributes
    ----------
    y_pred : ndarray of shape (n,)
        Class labels (str) or values (float).
    proba : ndarray of shape (n, n_classes) or None
        Class probabilities (or normalised scores) in ``Fold.classes`` order.
    """

    y_pred: np.ndarray
    proba: np.ndarray | None = None


@dataclass(frozen=True)
class FoldOutcome:
    """What a model returns for one fold.

    Attributes
    ----------
    val : Output or None
        None when the model gives no validation predictions (external files may omit
        them).
    test : Output
    params : dict
        The chosen hyperparameters.
    val_score : float
        The selection metric of the chosen candidate on val.
    """

    val: Output | None
    test: Output
    params: dict[str, Any]
    val_score: float


class HarnessModel(ABC):
    """Base class of every harness model.

    Parameters
    ----------
    info : ModelInfo
    task : TaskSpec
    settings : EvalSettings
    inputs : mapping
        See :func:`create`.
    """

    def __init__(
        self,
        info: ModelInfo,
        task: TaskSpec,
        settings: EvalSettings,
        inputs: Mapping[str, Any],
    ) -> None:
        self.info = info
        self.task = task
        self.settings = settings
        self.inputs = inputs

    @property
    def name(self) -> str:
        return self.info.name

    def supports(self, task: TaskSpec) -> bool:
        """Whether the model applies to this task type."""
        return True

    def available_subjects(self) -> set[str] | None:
        """Subjects the model can predict (None: any)."""
        return None

    @abstractmethod
    def run_fold(self, fold: Fold) -> FoldOutcome:
        """Fit on train, choose on val, predict val and test."""

    def select_value(self, y_true: np.ndarray, out: Output, classes: Sequence[str] | None) -> float:
        """The selection metric on val (as reported; NaN when undefined)."""

        metric = self.settings.select_metric[self.task.type]
        return float(score(self.task, classes, y_true, out.y_pred, out.proba)[metric])

    def select_score(self, y_true: np.ndarray, out: Output, classes: Sequence[str] | None) -> float:
        """The selection metric on val, signed so that larger is better (-inf if undefined)."""

        value = self.select_value(y_true, out, classes)
        if not np.isfinite(value):
            return -np.inf
        metric = self.settings.select_metric[self.task.type]
        return -value if metric in LOWER_IS_BETTER else value


class GridModel(HarnessModel):
    """A model with a hyperparameter grid searched on val.

    Subclasses implement :meth:`fit_candidates`, which fits every candidate on train
    and predicts the evaluation partitions it is given.
    """

    @abstractmethod
    def features(self, subjects: Sequence[str]) -> np.ndarray:
        """Feature rows of ``subjects``."""

    @abstractmethod
    def fit_candidates(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_eval: Sequence[np.ndarray],
        classes: tuple[str, ...] | None,
    ) -> list[tuple[dict[str, Any], list[Output]]]:
        """Fit each candidate on train; predict every array of ``x_eval``.

        Returns
        -------
        list of (params, outputs)
            In grid order (strongest regularisation first); ``outputs`` aligned with
            ``x_eval``.
        """

    def run_fold(self, fold: Fold) -> FoldOutcome:
        x_train = self.features(fold.train)
        x_val = self.features(fold.val)
        x_test = self.features(fold.test)
        candidates = self.fit_candidates(x_train, fold.y_train, [x_val, x_test], fold.classes)
        best_i, best = 0, -np.inf
        for i, (_, (val_out, _)) in enumerate(candidates):
            s = self.select_score(fold.y_val, val_out, fold.classes)
            if s > best:
                best_i, best = i, s
        params, (val_out, test_out) = candidates[best_i]
        value = self.select_value(fold.y_val, val_out, fold.classes)
        return FoldOutcome(val_out, test_out, dict(params), float(value))


def create(
    name: str,
    task: TaskSpec,
    settings: EvalSettings,
    inputs: Mapping[str, Any],
) -> HarnessModel:
    """Instantiate harness model ``name`` for ``task``.

    Parameters
    ----------
    name : str
    task : TaskSpec
    settings : EvalSettings
    inputs : mapping
        What the model needs, by kind: ``fc`` (FeatureTable), ``embedding``
        (``name -> FeatureTable``), ``predictions`` (``name -> list of paths``),
        ``model_dir`` (``name -> path``) and ``finetune_data`` (item source factory).
    """
    info = model_info(name)
    module_name, _, cls_name = info.target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(info, task, settings, inputs, **dict(info.kwargs))
