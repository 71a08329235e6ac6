"""Predictions made outside the harness (e.g. the LMAE -> RWMoE -> SSM predictor).

A model trained per fold by its own workflow rule writes its predictions in the
harness's long format (:data:`brainharmony.evaluate.metrics.PREDICTION_COLUMNS`;
``dataset``, ``task``, ``model`` and ``seed`` optional, ``p_<class>`` columns for
classification). It must use the same split files, select its epochs /
hyperparameters on ``val`` only, and write ``test`` rows for every test subject of
every fold (``val`` rows are optional and used for the selection score shown in the
report). The harness checks all of this and that ``y_true`` agrees with the labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.evaluate.harness import Fold, FoldOutcome, HarnessModel, ModelInfo, Output
from brainharmony.evaluate.settings import EvalSettings, TaskSpec
from brainharmony.io import InputDataError


class ExternalPredictions(HarnessModel):
    """Reads another program's per-fold predictions."""

    def __init__(
        self,
        info: ModelInfo,
        task: TaskSpec,
        settings: EvalSettings,
        inputs: Mapping[str, Any],
    ) -> None:
        super().__init__(info, task, settings, inputs)
        paths = inputs.get("predictions", {}).get(info.name)
        if not paths:
            raise ValueError(f"{info.name}: no predictions file given (--external NAME=FILE)")
        frames = [self._read(Path(p)) for p in paths]
        self.frame = pd.concat(frames, ignore_index=True)
        self.paths = [Path(p) for p in paths]
        key = ["seed", "fold", "split", "subject"]
        dup = self.frame.duplicated(key)
        if dup.any():
            first = self.frame.loc[dup, key].iloc[0].to_dict()
            raise InputDataError(self.paths[0], f"duplicate prediction rows, e.g. {first}")

    def _read(self, path: Path) -> pd.DataFrame:
        if not path.is_file():
            raise InputDataError(path, "predictions file not found")
        frame = pd.read_csv(
            path, sep="\t", dtype={"subject": str, "y_true": str, "y_pred": str}, na_values=["n/a"]
        )
        for col in ("fold", "split", "subject", "y_true", "y_pred"):
            if col not in frame.columns:
                raise InputDataError(path, f"no {col!r} column")
        for col, want in (("dataset", self.task.dataset), ("task", self.task.name)):
            if col in frame.columns:
                frame = frame.loc[frame[col].astype(str) == want]
        if frame.empty:
            raise InputDataError(
                path, f"no rows for dataset {self.task.dataset!r}, task {self.task.name!r}"
            )
        if "model" in frame.columns and frame["model"].nunique() > 1:
            raise InputDataError(
                path, f"several models in one file: {sorted(frame['model'].unique())}"
            )
        if "seed" not in frame.columns:
            if len(self.settings.seeds) != 1:
                raise InputDataError(
                    path, f"no 'seed' column, but the evaluation has seeds {self.settings.seeds}"
                )
            frame = frame.assign(seed=self.settings.seeds[0])
        frame = frame.assign(seed=frame["seed"].astype(int), fold=frame["fold"].astype(int))
        bad = sorted(set(frame["split"]) - {"val", "test", "train"})
        if bad:
            raise InputDataError(path, f"unknown split names {bad}")
        return frame.assign(_source=str(path))

    def available_subjects(self) -> set[str] | None:
        return set(self.frame.loc[self.frame["split"] == "test", "subject"])

    def check_truth(self, labels: pd.Series) -> None:
        """Error when the file's ``y_true`` disagrees with the evaluation's labels."""
        rows = self.frame.loc[self.frame["subject"].isin(labels.index)]
        truth = labels.reindex(rows["subject"]).to_numpy()
        if self.task.type == "regression":
            claimed = pd.to_numeric(rows["y_true"], errors="coerce").to_numpy(float)
            bad = ~np.isclose(claimed, truth.astype(float), rtol=1e-5, atol=1e-6)
        else:
            bad = rows["y_true"].astype(str).to_numpy() != truth.astype(str)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = rows.iloc[i]
            raise InputDataError(
                row["_source"],
                f"y_true of subject {row['subject']!r} is {row['y_true']!r}; the labels say "
                f"{truth[i]!r} (wrong target column?)",
            )

    def _output(self, part: pd.DataFrame, subjects: np.ndarray, fold: Fold) -> Output:
        part = part.set_index("subject")
        missing = [s for s in subjects if s not in part.index]
        if missing:
            raise InputDataError(
                part["_source"].iloc[0] if len(part) else self.paths[0],
                f"seed {fold.seed} fold {fold.index}: no prediction for subjects {missing[:10]}",
            )
        part = part.loc[list(subjects)]
        if self.task.type == "regression":
            return Output(pd.to_numeric(part["y_pred"]).to_numpy(float))
        classes = fold.classes or ()
        cols = [f"p_{c}" for c in classes]
        proba = None
        if all(c in part.columns for c in cols):
            proba = part[cols].to_numpy(float)
            if not np.isfinite(proba).all():
                proba = None
        return Output(part["y_pred"].astype(str).to_numpy(dtype=object), proba)

    def run_fold(self, fold: Fold) -> FoldOutcome:
        rows = self.frame.loc[
            (self.frame["seed"] == fold.seed) & (self.frame["fold"] == fold.index)
        ]
        test = self._output(rows.loc[rows["split"] == "test"], fold.test, fold)
        val_rows = rows.loc[rows["split"] == "val"]
        val: Output | None = None
        val_score = float("nan")
        if len(val_rows):
            val = self._output(val_rows, fold.val, fold)
            val_score = self.select_value(fold.y_val, val, fold.classes)
        return FoldOutcome(val, test, {"source": sorted({str(p) for p in self.paths})}, val_score)
