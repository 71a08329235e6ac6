"""``brainharmony predictor-cv``: the LMAE -> RWMoE -> SSM predictor under the evaluation protocol.

One call handles one evaluation dataset and task. For every split seed folder and every
``fold-<k>.tsv`` in it the predictor (:mod:`brainharmony.models.predictor`) is trained on
the rows of the ``train`` subjects, a step count is chosen on ``val`` only, and the ``val``
and ``test`` subjects are predicted. The rows are written in the harness's long format
(``dataset, task, model, seed, fold, split, subject, y_true, y_pred[, p_<class> ...]``),
which :class:`brainharmony.evaluate.external.ExternalPredictions` reads as model
``predictor``.

Targets come from ``labels.tsv`` (the task's ``map`` already applied), never from the raw
phenotype column of the shard index: class ``i`` of the task's class order (settings'
``classes``, else the sorted labels) is target ``i``, so the classes, the positive class and
the ``p_<class>`` columns agree with every other harness model.

Step selection: the fold's run is stopped at each candidate step (by default half and all of
``train.steps``; ``--select-steps``), its checkpoint is scored on ``val`` with the task type's
``select_metric``, and the best candidate (ties: fewer steps) gives the ``val`` and ``test``
rows. Stopping and resuming equals an uninterrupted run (see
:mod:`brainharmony.train.loop`), so the last candidate is exactly the full-length run.

Prediction: every run of a subject is cut into the training window (``data.duration_s`` /
``data.window``) at evenly spaced positions covering the whole run; the model's predictions
(values or class probabilities) are averaged over the crops of a run, then over the runs of
the subject.

Expert-weight maps: each candidate's spatial gates on the fold's ``test`` subjects (from
the same forward passes as the predictions) are written by
:func:`brainharmony.models.predictor.write_gate_table`; the chosen step's
maps of all folds are matched to one expert numbering (:func:`align_experts`), averaged and
written with a figure (``--expert-weights`` / ``--expert-figure``; default
``expert_weights.tsv`` / ``.png`` beside ``--out``).

Scratch state lives under ``--work`` (``seed-<s>/fold-<k>/``: the trainer's resumable
``state/``, the finished ``model/``, one ``predictions-step<n>.tsv`` and one
``expert_weights-step<n>.tsv`` per candidate, and ``train_rows.tsv``, the shard rows
trained on). A killed job rerun with the same arguments resumes; a fold whose inputs
changed (configuration, labels, subjects, shards) starts over.
Each fold's torch seed is derived from ``train.seed``, the split seed and the fold number,
so reruns give identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.evaluate.data import labels_series, read_splits, task_labels
from brainharmony.evaluate.metrics import score
from brainharmony.evaluate.settings import LOWER_IS_BETTER, SettingsError, load_settings
from brainharmony.io import (
    InputDataError,
    PathLike,
    atomic_path,
    config_digest,
    provenance,
    sidecar_path,
    write_json,
    write_tsv,
)
from brainharmony.packing import PackedSeriesDataset, read_index
from brainharmony.timeseries.scaling import load_stats

logger = logging.getLogger(__name__)

__all__ = [
    "FoldResult",
    "ShardSource",
    "add_arguments",
    "align_experts",
    "candidate_steps",
    "fold_seed",
    "lmae_mode",
    "predict_subjects",
    "pretrain_lmae",
    "run",
    "run_cv",
    "training_dataset",
    "write_expert_map",
]

MODEL_NAME = "predictor"
DEFAULT_SELECT_STEPS = (0.5, 1.0)


# --------------------------------------------------------------------------- data


@dataclass
class ShardSource:
    """One packed series shard, its index and the frames of one window.

    Attributes
    ----------
    shard, index_path : Path
    index : pandas.DataFrame
        The shard index (``subject`` as str).
    window : int
        Frames per window (``data.window``, or ``data.duration_s`` / the shard's TR).
    """

    shard: Path
    index_path: Path
    index: pd.DataFrame
    window: int

    @classmethod
    def open(cls, shard: PathLike, index: PathLike, data: Mapping[str, Any]) -> ShardSource:
        """Read the index and work out the window of ``data`` for this shard."""

        shard, index = Path(shard), Path(index)
        if not shard.is_file():
            raise InputDataError(shard, "series shard not found")
        frame = read_index(index)
        for col in ("subject", "frames", "offset"):
            if col not in frame.columns:
                raise InputDataError(index, f"shard index has no {col!r} column")
        frame["subject"] = frame["subject"].astype(str)
        window, duration = data.get("window"), data.get("duration_s")
        if (window is None) == (duration is None):
            raise ValueError("series data needs exactly one of data.window or data.duration_s")
        if window is not None:
            frames = int(window)
        else:
            if "tr" not in frame.columns:
                raise InputDataError(index, "index has no 'tr' column (needed by duration_s)")
            trs = np.unique(frame["tr"].to_numpy(np.float64))
            if trs.size != 1:
                raise InputDataError(index, f"holds several TRs {trs.tolist()}; one per shard")
            frames = max(1, round(float(duration) / float(trs[0])))
        return cls(shard, index, frame, frames)

    def rows_of(self, subjects: set[str]) -> np.ndarray:
        """Index rows (ascending) of the given subjects."""
        return np.flatnonzero(self.index["subject"].isin(subjects).to_numpy())


def _targets(labels: pd.Series, task_type: str, classes: Sequence[str] | None) -> pd.Series:
    """Numeric training targets per subject: class number or value."""
    if task_type == "classification":
        number = {c: float(i) for i, c in enumerate(classes or ())}
        return labels.astype(str).map(number).astype(float)
    return labels.astype(float)


def training_dataset(
    sources: Sequence[ShardSource],
    subjects: set[str],
    target: str,
    values: pd.Series,
    data: Mapping[str, Any],
    scaling: Any | None = None,
) -> tuple[Any, pd.DataFrame]:
    """The training dataset of one fold and the rows it holds.

    Parameters
    ----------
    sources : sequence of ShardSource
    subjects : set of str
        The fold's ``train`` subjects (only their rows are used).
    target : str
        Item key of the target (its index column is replaced by ``values``).
    values : pandas.Series
        Numeric target per subject (from ``labels.tsv``).
    data : mapping
        The YAML's ``data:`` block (``crop``, ``group_by_shard``).
    scaling : RobustScalingStats, optional

    Returns
    -------
    dataset : SeriesCollection
    rows : pandas.DataFrame
        ``part, shard, row, subject, target``: every item of ``dataset``, in item order.
    """
    from brainharmony.train.data import SeriesCollection

    parts, tables = [], []
    for source in sources:
        rows = source.rows_of(subjects)
        if rows.size == 0:
            continue
        index = source.index.copy()
        index[target] = index["subject"].map(values).astype(np.float64)
        parts.append(
            PackedSeriesDataset(
                source.shard,
                index,
                window=source.window,
                crop=data.get("crop", "random"),
                rows=rows,
                targets=(target,),
                scaling=scaling,
            )
        )
        tables.append(
            pd.DataFrame(
                {
                    "part": len(parts) - 1,
                    "shard": str(source.shard),
                    "row": rows,
                    "subject": index["subject"].to_numpy()[rows],
                    "target": index[target].to_numpy()[rows],
                }
            )
        )
    if not parts:
        raise InputDataError(None, "no shard row belongs to a training subject of this fold")
    dataset = SeriesCollection(parts, group_by_part=bool(data.get("group_by_shard", False)))
    return dataset, pd.concat(tables, ignore_index=True)


def _crop_starts(n_frames: int, window: int) -> list[int]:
    """Evenly spaced window starts that cover a run of ``n_frames`` frames."""
    if n_frames <= window:
        return [0]
    count = math.ceil(n_frames / window)
    return [int(s) for s in np.unique(np.linspace(0, n_frames - window, count).round())]


def _subject_crops(
    sources: Sequence[ShardSource], subjects: set[str], scaling: Any | None
) -> tuple[list[dict[str, Any]], list[tuple[int, int]], dict[tuple[int, int], str]]:
    """Training-length crops covering every run of ``subjects``.

    Returns the crops (``x, mask, roi_mask, tr``), the ``(source, row)`` run of each and
    the subject of each run. A crop without a valid frame or ROI is skipped.
    """
    crops: list[dict[str, Any]] = []
    keys: list[tuple[int, int]] = []
    owner: dict[tuple[int, int], str] = {}
    for si, source in enumerate(sources):
        rows = source.rows_of(subjects)
        if rows.size == 0:
            continue
        full = PackedSeriesDataset(
            source.shard, source.index, crop="start", rows=rows, scaling=scaling
        )
        for i in range(len(full)):
            item = full[i]
            n, w = int(item["length"]), source.window
            for start in _crop_starts(n, w):
                x = item["x"].new_zeros(w, item["x"].shape[1])
                mask = item["mask"].new_zeros(w)
                take = min(w, n - start)
                x[:take] = item["x"][start : start + take]
                mask[:take] = item["mask"][start : start + take]
                if not bool(mask.any()) or not bool(item["roi_mask"].any()):
                    continue
                crops.append({"x": x, "mask": mask, "roi_mask": item["roi_mask"], "tr": item["tr"]})
                keys.append((si, int(item["row"])))
                owner[(si, int(item["row"]))] = str(source.index["subject"].iat[int(item["row"])])
    return crops, keys, owner


def _batches(
    crops: Sequence[dict[str, Any]], keys: Sequence[tuple[int, int]], batch_size: int, device: str
) -> Any:
    """Crops collated into batches of up to ``batch_size`` on ``device``; a batch holds
    crops of one shard only (one window length)."""
    import torch

    start = 0
    while start < len(crops):
        stop = start
        while stop < len(crops) and stop - start < batch_size:
            if keys[stop][0] != keys[start][0]:
                break
            stop += 1
        batch = torch.utils.data.default_collate(list(crops[start:stop]))
        yield {k: v.to(device) for k, v in batch.items()}
        start = stop


def predict_subjects(
    model: Any,
    sources: Sequence[ShardSource],
    subjects: set[str],
    *,
    scaling: Any | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Subject -> prediction (value, or class probabilities), averaged over crops and runs.

    A crop without a valid frame or ROI is skipped; a subject none of whose crops is
    usable is absent from the result.
    """
    preds, _, _ = _predict_with_gates(
        model, sources, subjects, scaling=scaling, batch_size=batch_size, device=device
    )
    return preds


def _predict_with_gates(
    model: Any,
    sources: Sequence[ShardSource],
    subjects: set[str],
    *,
    scaling: Any | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    gates_of: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, np.ndarray], list[Any], list[Any]]:
    """:func:`predict_subjects`, plus the spatial gates and ROI masks of the crops of the
    ``gates_of`` subjects (in crop order) from the same forward passes."""
    import torch

    model.eval()
    per_run: dict[tuple[int, int], list[np.ndarray]] = {}
    crops, keys, owner = _subject_crops(sources, subjects, scaling)
    gates: list[Any] = []
    masks: list[Any] = []
    done = 0
    with torch.no_grad():
        for batch in _batches(crops, keys, batch_size, device):
            n = len(batch["x"])
            take = [i for i, key in enumerate(keys[done : done + n]) if owner[key] in gates_of]
            if take:
                out, g, m = model.predict_with_gates(batch)
                gates.append(g[take].float().cpu())
                masks.append(m[take].cpu())
            else:
                out = model.predict(batch)
            out = out.double().cpu().numpy()
            for key, value in zip(keys[done : done + n], out, strict=True):
                per_run.setdefault(key, []).append(np.atleast_1d(value))
            done += n
    per_subject: dict[str, list[np.ndarray]] = {}
    for key in sorted(per_run):
        per_subject.setdefault(owner[key], []).append(np.mean(per_run[key], axis=0))
    return {s: np.mean(v, axis=0) for s, v in per_subject.items()}, gates, masks


# --------------------------------------------------------------------------- per fold


def candidate_steps(total: int, fractions: Sequence[float]) -> list[int]:
    """Distinct step counts ``round(f * total)`` (at least 1), ascending; ``total`` always in."""
    steps = {max(1, min(total, round(float(f) * total))) for f in fractions if f > 0}
    return sorted(steps | {total})


def fold_seed(base: int, split_seed: int, fold: int) -> int:
    """The torch/training seed of one fold (a hash of the three numbers, < 2**31)."""
    state = np.random.SeedSequence([int(base), int(split_seed), int(fold)]).generate_state(1)
    return int(state[0]) & 0x7FFFFFFF


@dataclass(frozen=True)
class FoldResult:
    """The rows and choices of one fold."""

    rows: pd.DataFrame
    chosen_step: int
    val_scores: dict[int, float]
    train_rows: int
    seconds: float
    #: ``roi, expert, weight`` of the chosen step's spatial gates on the fold's test
    #: subjects (None when no test subject has a usable crop).
    experts: pd.DataFrame | None = None


def _prediction_frame(
    preds: Mapping[str, np.ndarray], split_of: Mapping[str, str], classes: Sequence[str] | None
) -> pd.DataFrame:
    subjects = sorted(preds)
    frame = pd.DataFrame({"split": [split_of[s] for s in subjects], "subject": subjects})
    if classes:
        proba = np.stack([preds[s] for s in subjects]) if subjects else np.zeros((0, len(classes)))
        for i, c in enumerate(classes):
            frame[f"p_{c}"] = proba[:, i]
    else:
        frame["value"] = [float(preds[s][0]) for s in subjects]
    return frame


def _read_cache(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"subject": str, "split": str})


def _val_score(task: Any, settings: Any, classes: Any, frame: pd.DataFrame, labels: pd.Series):

    val = frame.loc[frame["split"] == "val"]
    metric = settings.select_metric[task.type]
    if val.empty:
        return float("nan"), -np.inf
    y_true = labels.reindex(val["subject"]).to_numpy()
    y_pred, proba = _outputs(val, classes)
    value = float(score(task, classes, y_true, y_pred, proba)[metric])
    if not np.isfinite(value):
        return value, -np.inf
    return value, -value if metric in LOWER_IS_BETTER else value


def _outputs(frame: pd.DataFrame, classes: Sequence[str] | None) -> tuple[np.ndarray, Any]:
    if classes:
        proba = frame[[f"p_{c}" for c in classes]].to_numpy(float)
        y_pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
        return y_pred, proba
    return frame["value"].to_numpy(float), None


def _checkpoint_step(state_dir: Path) -> int:
    from brainharmony.train import checkpoint as ckpt

    path = state_dir / ckpt.CHECKPOINT_NAME
    return int(ckpt.load_checkpoint(path)["step"]) if path.is_file() else 0


def _model_at_checkpoint(cfg: Any, state_dir: Path, step: int, device: str) -> Any:
    from brainharmony.models.registry import build_model
    from brainharmony.train import checkpoint as ckpt

    path = state_dir / ckpt.CHECKPOINT_NAME
    state = ckpt.load_checkpoint(path)
    if int(state["step"]) != step:
        raise InputDataError(path, f"holds step {state['step']}, expected {step}")
    model = build_model(cfg.kind, cfg.model)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def run_fold(
    cfg: Any,
    task: Any,
    settings: Any,
    labels: pd.Series,
    classes: Sequence[str] | None,
    split_seed: int,
    fold: int,
    table: pd.DataFrame,
    sources: Sequence[ShardSource],
    work: Path,
    *,
    scaling_path: Path | None = None,
    init: Path | None = None,
    lmae_cfg: Any | None = None,
    fractions: Sequence[float] = DEFAULT_SELECT_STEPS,
    threads: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> FoldResult:
    """Train, select and predict one fold (see the module docstring).

    With ``lmae_cfg`` (an ``lmae`` model YAML) the LMAE is first pretrained on the fold's
    ``train`` subjects only (:func:`pretrain_lmae`) and the predictor starts from it;
    ``init`` (an LMAE trained elsewhere) is then not allowed.
    """
    import torch

    from brainharmony.models.predictor import write_gate_table
    from brainharmony.train.loop import train

    began = time.perf_counter()
    scaling = None
    if scaling_path is not None:
        scaling = load_stats(scaling_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = cfg.with_train(seed=fold_seed(cfg.train.seed, split_seed, fold))
    steps = candidate_steps(cfg.train.steps, fractions)
    cfg = cfg.with_train(ckpt_every=math.gcd(cfg.train.ckpt_every, *steps))

    split_of = dict(zip(table["subject"].astype(str), table["split"].astype(str), strict=True))
    train_subjects = {s for s, p in split_of.items() if p == "train"}
    eval_subjects = {s for s, p in split_of.items() if p in ("val", "test")}
    values = _targets(labels, task.type, classes)
    dataset, rows = training_dataset(
        sources, train_subjects, task.target, values, cfg.data, scaling
    )
    if rows["target"].isna().any():
        bad = sorted(rows.loc[rows["target"].isna(), "subject"].unique())
        raise InputDataError(None, f"training subjects without a label: {bad[:10]}")

    fold_dir = work / f"seed-{split_seed}" / f"fold-{fold}"
    digest = config_digest(
        {
            "config": cfg.to_dict(),
            "rows": rows.astype(str).to_dict("list"),
            "eval": sorted(eval_subjects),
            "shards": [[str(s.shard), str(s.index_path), s.window] for s in sources],
            "scaling": str(scaling_path),
            "init": str(init),
            "lmae": None if lmae_cfg is None else lmae_cfg.to_dict(),
            "steps": steps,
            # what each candidate leaves in the folder (older folders lack expert weights)
            "outputs": ["predictions", "expert_weights"],
        }
    )
    stamp = fold_dir / "inputs.json"
    if fold_dir.exists():
        old = json.loads(stamp.read_text()).get("digest") if stamp.is_file() else None
        if old != digest:
            logger.warning(
                "%s: inputs changed since the last run; starting this fold over", fold_dir
            )
            shutil.rmtree(fold_dir)
    if not stamp.is_file():
        write_json(stamp, {"digest": digest, "candidate_steps": steps})
    write_tsv(fold_dir / "train_rows.tsv", rows, float_format="%.10g")

    inputs = [p for s in sources for p in (s.shard, s.index_path)]
    inputs += [p for p in (scaling_path, init) if p is not None]
    if lmae_cfg is not None:
        if init is not None:
            raise ValueError("give either a per-fold LMAE configuration or --init, not both")
        init = pretrain_lmae(
            lmae_cfg.with_train(seed=fold_seed(lmae_cfg.train.seed, split_seed, fold)),
            sources,
            train_subjects,
            fold_dir / "lmae",
            scaling=scaling,
            threads=threads,
            device=device,
            inputs=inputs,
            progress=progress,
        )
    frames: dict[int, pd.DataFrame] = {}
    state_dir = fold_dir / "state"
    test_subjects = {s for s, p in split_of.items() if p == "test"}
    for step in steps:
        cache = fold_dir / f"predictions-step{step}.tsv"
        if cache.is_file():
            frames[step] = _read_cache(cache)
            continue
        start = _checkpoint_step(state_dir)
        if start > step:
            raise InputDataError(
                state_dir,
                f"is at step {start}, past candidate {step} whose predictions are "
                f"missing; delete {fold_dir} to start this fold over",
            )
        if start < step:
            train(
                cfg,
                dataset,
                fold_dir / "model",
                state_dir,
                init_from=init,
                max_steps_this_call=step - start,
                threads=threads,
                device=device,
                inputs=inputs,
                progress=progress,
            )
        model = _model_at_checkpoint(cfg, state_dir, step, device)
        # one pass over the val and test crops gives the predictions and the spatial
        # gates of the test crops
        preds, gates, masks = _predict_with_gates(
            model,
            sources,
            eval_subjects,
            scaling=scaling,
            batch_size=cfg.train.batch_size,
            device=device,
            gates_of=test_subjects,
        )
        # the spatial expert weights of this candidate on the held-out subjects, written
        # before its predictions (a cached prediction file implies its weights)
        if gates:
            write_gate_table(model, gates, masks, _experts_path(fold_dir, step), inputs=inputs)
        write_tsv(cache, _prediction_frame(preds, split_of, classes), float_format="%.10g")
        frames[step] = _read_cache(cache)  # as a resumed run sees it: identical files

    scores: dict[int, float] = {}
    best, best_key = steps[-1], -np.inf
    for step in steps:  # ascending: ties keep the shorter run
        value, key = _val_score(task, settings, classes, frames[step], labels)
        scores[step] = value
        if key > best_key:
            best, best_key = step, key
    chosen = frames[best]
    y_pred, proba = _outputs(chosen, classes)
    out = pd.DataFrame(
        {
            "dataset": task.dataset,
            "task": task.name,
            "model": MODEL_NAME,
            "seed": split_seed,
            "fold": fold,
            "split": chosen["split"].to_numpy(),
            "subject": chosen["subject"].to_numpy(),
            "y_true": labels.reindex(chosen["subject"]).to_numpy(),
            "y_pred": y_pred,
        }
    )
    if classes:
        for i, c in enumerate(classes):
            out[f"p_{c}"] = proba[:, i]
    rank = out["split"].map({"val": 0, "test": 1})
    out = out.assign(_r=rank).sort_values(["_r", "subject"], kind="stable").drop(columns="_r")
    experts_file = _experts_path(fold_dir, best)
    experts = (
        pd.read_csv(experts_file, sep="\t", dtype={"roi": str}) if experts_file.is_file() else None
    )
    return FoldResult(
        out.reset_index(drop=True),
        best,
        scores,
        len(rows),
        time.perf_counter() - began,
        experts,
    )


def pretrain_lmae(
    cfg: Any,
    sources: Sequence[ShardSource],
    subjects: set[str],
    folder: Path,
    *,
    scaling: Any | None = None,
    threads: int | None = None,
    device: str | None = None,
    inputs: Sequence[PathLike] = (),
    progress: bool = False,
) -> Path:
    """Pretrain the LMAE on every shard row of ``subjects`` (a fold's training subjects).

    The model folder is ``folder/model`` (resumable state in ``folder/state``; a finished
    folder is reused); the rows used are listed in ``folder/rows.tsv``. Windows are the
    LMAE YAML's ``data`` (``duration_s`` / ``window``), at each shard's TR.

    Returns
    -------
    Path
        The model folder (the predictor's ``init_from``).
    """
    from brainharmony.train import checkpoint as ckpt
    from brainharmony.train.data import SeriesCollection
    from brainharmony.train.loop import train

    if cfg.kind != "lmae":
        raise InputDataError(None, f"per-fold pretraining needs an 'lmae' YAML; got {cfg.kind!r}")
    model_dir = folder / "model"
    if (model_dir / ckpt.WEIGHTS_NAME).is_file():
        return model_dir
    parts, tables = [], []
    for source in sources:
        rows = source.rows_of(subjects)
        if rows.size == 0:
            continue
        own = ShardSource.open(source.shard, source.index_path, cfg.data)
        parts.append(
            PackedSeriesDataset(
                own.shard,
                own.index,
                window=own.window,
                crop=cfg.data.get("crop", "random"),
                rows=rows,
                scaling=scaling,
            )
        )
        tables.append(
            pd.DataFrame(
                {
                    "shard": str(source.shard),
                    "row": rows,
                    "subject": own.index["subject"].to_numpy()[rows],
                }
            )
        )
    if not parts:
        raise InputDataError(None, "no shard row belongs to a training subject of this fold")
    write_tsv(folder / "rows.tsv", pd.concat(tables, ignore_index=True))
    dataset = SeriesCollection(parts, group_by_part=bool(cfg.data.get("group_by_shard", False)))
    train(
        cfg,
        dataset,
        model_dir,
        folder / "state",
        threads=threads,
        device=device,
        inputs=inputs,
        progress=progress,
    )
    return model_dir


def _experts_path(fold_dir: Path, step: int) -> Path:
    return fold_dir / f"expert_weights-step{step}.tsv"


def align_experts(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-fold ``roi, expert, weight`` maps on one expert numbering, averaged.

    Expert numbers are arbitrary in each fold's model (any permutation of the experts is
    the same model), so a mean over folds of "expert 0" would mix unrelated clusters.
    Every fold's experts are matched one-to-one to the first fold's by the assignment
    that minimises the summed squared difference of their ROI weight profiles (Hungarian
    algorithm; NaN weights count as 0), then renumbered.

    Parameters
    ----------
    tables : sequence of pandas.DataFrame
        ``roi, expert, weight`` each (:func:`brainharmony.models.rwmoe.expert_weight_table`),
        same ROIs and number of experts.

    Returns
    -------
    pandas.DataFrame
        ``roi, expert, weight, sd, n_folds``: the mean and standard deviation (ddof 1;
        0 for one fold) over the folds where the ROI has a weight, in the first table's
        ROI order and expert numbering.
    """
    from scipy.optimize import linear_sum_assignment

    if not tables:
        raise ValueError("align_experts: no table given")
    mats = []
    rois = list(dict.fromkeys(tables[0]["roi"].astype(str)))
    for t in tables:
        m = t.assign(roi=t["roi"].astype(str)).pivot(index="roi", columns="expert", values="weight")
        if set(m.index) != set(rois) or m.shape[1] != tables[0]["expert"].nunique():
            raise ValueError("align_experts: the folds' maps have different ROIs or experts")
        mats.append(m.reindex(rois).to_numpy(float))
    ref = np.nan_to_num(mats[0])
    aligned = []
    for m in mats:
        filled = np.nan_to_num(m)
        cost = ((ref[:, :, None] - filled[:, None, :]) ** 2).sum(axis=0)  # (E_ref, E_fold)
        _, cols = linear_sum_assignment(cost)
        aligned.append(m[:, cols])
    stack = np.stack(aligned)  # (folds, R, E)
    n = np.isfinite(stack).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(stack, axis=0) / np.maximum(n, 1), np.nan)
        dev = np.nansum((stack - mean) ** 2, axis=0)
        sd = np.where(n > 1, np.sqrt(dev / np.maximum(n - 1, 1)), np.where(n == 1, 0.0, np.nan))
    e = stack.shape[2]
    return pd.DataFrame(
        {
            "roi": np.repeat(np.asarray(rois, dtype=object), e),
            "expert": np.tile(np.arange(e), len(rois)),
            "weight": mean.ravel(),
            "sd": sd.ravel(),
            "n_folds": n.ravel().astype(int),
        }
    )


def run_cv(
    cfg: Any,
    task: Any,
    settings: Any,
    labels: pd.Series,
    splits: Sequence[Any],
    sources: Sequence[ShardSource],
    work: PathLike,
    **kwargs: Any,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame | None]:
    """Every fold of every split seed: the prediction rows, a summary and the expert map.

    The expert map is :func:`align_experts` of the folds' spatial expert weights (each
    fold's chosen model on its test subjects); None when no fold has one.

    ``kwargs`` go to :func:`run_fold` (``scaling_path``, ``init``, ``fractions``,
    ``threads``, ``device``, ``progress``).
    """
    classes = None
    if task.type == "classification":
        classes = task.resolve_classes(labels.astype(str).tolist())
    labelled = set(labels.index.astype(str))
    have_data = set().union(*(set(s.index["subject"]) for s in sources))
    frames: list[pd.DataFrame] = []
    experts: list[pd.DataFrame] = []
    folds: dict[str, Any] = {}
    no_data: set[str] = set()
    for split_set in splits:
        for k, table in sorted(split_set.folds.items()):
            where = f"{split_set.path}/fold-{k}.tsv"
            unlabelled = sorted(set(table["subject"]) - labelled)
            if unlabelled:
                raise InputDataError(where, f"subjects without a label: {unlabelled[:10]}")
            missing = set(table["subject"]) - have_data
            no_data |= missing
            if not (set(table.loc[table["split"] == "train", "subject"]) & have_data):
                raise InputDataError(where, "no training subject has rows in the shards")
            result = run_fold(
                cfg,
                task,
                settings,
                labels,
                classes,
                split_set.seed,
                k,
                table,
                sources,
                Path(work),
                **kwargs,
            )
            logger.info(
                "%s/%s seed %d fold %d: %d training rows, step %d chosen (val %s), %.1f s",
                task.dataset,
                task.name,
                split_set.seed,
                k,
                result.train_rows,
                result.chosen_step,
                result.val_scores,
                result.seconds,
            )
            lost = set(table.loc[table["split"] != "train", "subject"]) - set(
                result.rows["subject"]
            )
            no_data |= lost
            frames.append(result.rows)
            if result.experts is not None:
                experts.append(result.experts)
            folds[f"{split_set.seed}/{k}"] = {
                "chosen_step": result.chosen_step,
                "val_scores": {str(s): v for s, v in result.val_scores.items()},
                "train_rows": result.train_rows,
            }
    predictions = pd.concat(frames, ignore_index=True)
    info = {
        "Classes": list(classes) if classes else None,
        "SelectMetric": settings.select_metric[task.type],
        "Folds": folds,
        "SubjectsWithoutData": sorted(no_data),
        "ExpertWeightFolds": len(experts),
    }
    return predictions, info, (align_experts(experts) if experts else None)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony predictor-cv``."""
    parser.add_argument("--config", required=True, type=Path, help="predictor model YAML")
    parser.add_argument("--labels", required=True, type=Path, help="the task's labels.tsv")
    parser.add_argument(
        "--splits", required=True, nargs="+", type=Path, help="split folders (seed-<s>)"
    )
    parser.add_argument("--settings", required=True, help="evaluate block / config (file or JSON)")
    parser.add_argument("--dataset", required=True, help="evaluation dataset (or cohort)")
    parser.add_argument("--task", required=True, help="task name")
    parser.add_argument(
        "--shard", action="append", default=[], type=Path, help="packed series shard (.npy)"
    )
    parser.add_argument(
        "--index", action="append", default=[], type=Path, help="index TSV of the matching --shard"
    )
    parser.add_argument("--scaling", type=Path, help="robust-scaling statistics JSON")
    lmae = parser.add_mutually_exclusive_group()
    lmae.add_argument(
        "--init",
        type=Path,
        help="trained model folder (LMAE) to start from; an LMAE pretrained on subjects "
        "that include the test folds makes the protocol transductive",
    )
    lmae.add_argument(
        "--lmae-config",
        type=Path,
        help="LMAE model YAML: pretrain it per fold on the fold's training subjects only and "
        "start from it (inductive)",
    )
    parser.add_argument(
        "--lmae-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one value of the --lmae-config YAML (repeatable)",
    )
    parser.add_argument("--lmae-steps", type=int, help="override the LMAE's train.steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one YAML value (repeatable)",
    )
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument(
        "--select-steps",
        default=",".join(str(f) for f in DEFAULT_SELECT_STEPS),
        help="candidate step counts as fractions of train.steps, chosen on val (default 0.5,1.0)",
    )
    parser.add_argument("--work", required=True, type=Path, help="scratch folder (resumable)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True, type=Path, help="predictions.tsv to write")
    parser.add_argument(
        "--expert-weights",
        type=Path,
        help="ROI x expert map TSV to write (default: expert_weights.tsv beside --out)",
    )
    parser.add_argument(
        "--expert-figure",
        type=Path,
        help="its figure, PNG (default: the --expert-weights path with suffix .png)",
    )


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputDataError(
            None, f"--select-steps: expected fractions like 0.5,1.0; got {text!r}"
        ) from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise InputDataError(None, f"--select-steps: fractions must be in (0, 1]; got {text!r}")
    return values


def _task_config(cfg: Any, task: Any, n_classes: int | None, sets: Sequence[str]) -> Any:
    """The YAML with the user's ``--set`` and then the task's target/type applied."""
    from brainharmony.train.config import with_overrides

    if cfg.kind != "predictor":
        raise InputDataError(None, f"predictor-cv needs a 'predictor' YAML; got kind {cfg.kind!r}")
    if cfg.data.get("kind") != "series":
        raise InputDataError(
            None, f"predictor-cv needs data.kind: series; got {cfg.data.get('kind')!r}"
        )
    name = json.dumps(task.target)
    assignments = [
        *sets,
        f"model.target={name}",
        f"model.task={task.type}",
        f"data.targets=[{name}]",
    ]
    if task.type == "classification":
        assignments += [f"model.n_classes={n_classes}", "model.loss=cross_entropy"]
    else:
        assignments.append("model.n_classes=null")
        if cfg.model.get("loss") == "cross_entropy":
            assignments.append("model.loss=null")
    return with_overrides(cfg, assignments)


def write_expert_map(
    table: pd.DataFrame,
    tsv: Path,
    png: Path,
    task: Any,
    info: Mapping[str, Any],
    inputs: Sequence[PathLike] = (),
) -> tuple[Path, Path]:
    """Write the aligned expert map (:func:`align_experts`) as TSV + sidecar and PNG."""
    from brainharmony.evaluate.figures import expert_map_figure

    rois = list(dict.fromkeys(table["roi"].astype(str)))
    matrix = table.pivot(index="roi", columns="expert", values="weight").reindex(rois)
    n_folds = int(info.get("ExpertWeightFolds", 0))
    title = (
        f"predictor spatial experts, {task.dataset}/{task.name} "
        f"(mean over {n_folds} folds' test subjects)"
    )
    png_bytes = expert_map_figure(matrix.to_numpy(float), title, rois)
    with atomic_path(png) as tmp:
        tmp.write_bytes(png_bytes)
    write_json(
        sidecar_path(tsv),
        {
            "Description": "RWMoE spatial expert weights of the cross-validated predictor: "
            "per fold, the chosen model's mean gate over its test subjects' crops; experts "
            "matched to the first fold's by the Hungarian algorithm, then averaged",
            "Columns": {
                "roi": "ROI (index of the shard's ROI order)",
                "expert": "spatial expert, numbered as in the first fold",
                "weight": "mean gate weight over folds; a ROI's weights sum to 1",
                "sd": "standard deviation over folds (ddof 1)",
                "n_folds": "folds in which the ROI has data",
            },
            "Task": task.to_dict(),
            "Folds": n_folds,
            "Figure": png.name,
            "Provenance": provenance(step="predictor-cv-experts", inputs=inputs),
        },
    )
    write_tsv(tsv, table, float_format="%.10g")
    return tsv, png


def lmae_mode(init: Path | None, lmae_cfg: Any | None) -> str:
    """How the LMAE stage was pretrained (the sidecar's ``LMAEPretraining``)."""
    if lmae_cfg is not None:
        return "per_fold"  # on each fold's training subjects only
    return "none" if init is None else "given"  # --init: pretrained elsewhere


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony predictor-cv``."""
    import torch

    from brainharmony.train.config import load_config

    try:
        settings = load_settings(args.settings)
        task = settings.task(args.dataset, args.task)
    except SettingsError as err:
        raise InputDataError(None, str(err)) from None
    if not args.shard or len(args.shard) != len(args.index):
        raise InputDataError(
            None, f"give one --index per --shard ({len(args.shard)} vs {len(args.index)})"
        )
    frame, _ = task_labels([args.labels], task)
    if frame.empty:
        raise InputDataError(args.labels, f"no subject has a {task.target!r} label")
    labels = labels_series(frame, task)
    n_classes = None
    if task.type == "classification":
        try:
            n_classes = len(task.resolve_classes(labels.astype(str).tolist()))
        except SettingsError as err:
            raise InputDataError(args.labels, str(err)) from None
    cfg = load_config(args.config)
    cfg = _task_config(cfg, task, n_classes, args.set)
    if args.steps is not None:
        cfg = cfg.with_train(steps=args.steps)
    if args.threads:
        torch.set_num_threads(int(args.threads))
    sources = [
        ShardSource.open(s, i, cfg.data) for s, i in zip(args.shard, args.index, strict=True)
    ]
    splits = [read_splits(p) for p in args.splits]
    seeds = [s.seed for s in splits]
    if len(set(seeds)) != len(seeds):
        raise InputDataError(None, f"two split folders have the same seed: {seeds}")
    lmae_cfg = None
    if args.lmae_config is not None:
        from brainharmony.train.config import with_overrides

        lmae_cfg = with_overrides(load_config(args.lmae_config), list(args.lmae_set))
        if args.lmae_steps is not None:
            lmae_cfg = lmae_cfg.with_train(steps=args.lmae_steps)
        if lmae_cfg.kind != "lmae":
            raise InputDataError(
                args.lmae_config, f"--lmae-config needs an 'lmae' YAML; got {lmae_cfg.kind!r}"
            )
    elif args.lmae_set or args.lmae_steps is not None:
        raise InputDataError(None, "--lmae-set / --lmae-steps need --lmae-config")
    began = time.perf_counter()
    predictions, info, experts = run_cv(
        cfg,
        task,
        settings,
        labels,
        splits,
        sources,
        args.work,
        scaling_path=args.scaling,
        init=args.init,
        lmae_cfg=lmae_cfg,
        fractions=_fractions(args.select_steps),
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
    )
    used = [args.config, args.labels, *args.splits, *args.shard, *args.index]
    used += [p for p in (args.scaling, args.init, args.lmae_config) if p is not None]
    info["LMAEPretraining"] = lmae_mode(args.init, lmae_cfg)
    write_json(
        sidecar_path(args.out),
        {
            "Description": f"Cross-validated predictions of the LMAE-RWMoE-SSM predictor, "
            f"task {task.dataset}/{task.name}",
            "Columns": {
                "seed": "split seed",
                "fold": "fold number of that seed",
                "split": "val (used to choose the step count) or test (reported)",
                "y_true": "label / value from labels.tsv",
                "y_pred": "predicted class / value (mean over crops and runs)",
                "p_<class>": "class probability (mean over crops and runs)",
            },
            "Task": task.to_dict(),
            **info,
            "Model": cfg.to_dict(),
            "Provenance": provenance(
                step="predictor-cv",
                inputs=used,
                parameters={"select_steps": args.select_steps, "steps": cfg.train.steps},
            ),
        },
    )
    experts_tsv = args.expert_weights or args.out.with_name("expert_weights.tsv")
    experts_png = args.expert_figure or experts_tsv.with_suffix(".png")
    if experts is None:
        raise InputDataError(None, "no fold has a test subject with usable data: no expert map")
    write_expert_map(experts, experts_tsv, experts_png, task, info, used)
    write_tsv(args.out, predictions, float_format="%.10g")
    logger.info(
        "wrote %s (%d rows) in %.1f s", args.out, len(predictions), time.perf_counter() - began
    )
    return 0
