"""``brainharmony predictor-cv``: per-fold training, val/test rows, harness compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.cli import main
from brainharmony.evaluate.data import labels_series, read_splits, task_labels
from brainharmony.evaluate.harness import create
from brainharmony.evaluate.protocol import evaluate_task
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.pipelines.predictor_cv import (
    _crop_starts,
    align_experts,
    candidate_steps,
    fold_seed,
)
from brainharmony.splits import make_splits, write_splits

R = 10
N_SUBJECTS = 12
SETTINGS = {
    "tasks": {
        "demo": {
            "age": {"target": "age", "type": "regression"},
            "dx": {"target": "dx", "type": "classification", "positive": "PT"},
        }
    },
    "models": ["null_model", "predictor"],
    "n_folds": 3,
    "val_fraction": 0.25,
}
TINY_SETS = [
    "model.n_rois=10",
    "model.encoder={dim: 32, depth: 1, heads: 4}",
    "model.spatial={experts: 2, steps: 1, top_k_edges: 4}",
    "model.temporal={experts: 2, steps: 1, window_s: 12.0}",
    "model.ssm={depth: 1, d_state: 4, expand: 1}",
    "train.batch_size=4",
    "train.log_every=1",
    "data.duration_s=30.0",
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _subject(i: int) -> str:
    return f"{i + 1:02d}"


def _write_data(root: Path) -> dict[str, Path]:
    """Two shards (TR 2.0 s and 1.0 s); subject 01 has a run in each; labels.tsv."""
    rng = np.random.default_rng(0)
    ages = np.round(rng.uniform(20, 80, N_SUBJECTS), 2)
    dx = np.where(np.arange(N_SUBJECTS) % 2 == 0, "HC", "PT")
    paths: dict[str, Path] = {}
    for name, tr, subjects, frames in (
        ("a", 2.0, list(range(0, 6)), 25),
        ("b", 1.0, [0, *range(6, N_SUBJECTS)], 45),
    ):
        n = len(subjects)
        data = rng.standard_normal((n * frames, R)).astype(np.float32)
        for j, s in enumerate(subjects):  # planted: ROI coupling grows with age
            block = data[j * frames : (j + 1) * frames]
            block[:, :3] += ((ages[s] - 50) / 30) * block[:, 3:4]
        np.save(root / f"{name}.npy", data)
        index = pd.DataFrame(
            {
                "subject": [_subject(s) for s in subjects],
                "session": "n/a",
                "run": "n/a",
                "tr": tr,
                "frames": frames,
                "offset": np.arange(n) * frames,
                # Raw phenotype columns that must NOT be used as targets.
                "age": -1.0,
                "dx": "raw-value",
            }
        )
        index.to_csv(root / f"{name}.tsv", sep="\t", index=False)
        paths[f"shard_{name}"] = root / f"{name}.npy"
        paths[f"index_{name}"] = root / f"{name}.tsv"
    labels = pd.DataFrame(
        {
            "subject": [_subject(i) for i in range(N_SUBJECTS)],
            "dataset": "demo",
            "site": "demo",
            "age": ages,
            "dx": dx,
        }
    )
    labels.to_csv(root / "labels.tsv", sep="\t", index=False)
    paths["labels"] = root / "labels.tsv"
    return paths


def _splits(root: Path, labels: Path, target: str, task: str, seeds: list[int]) -> list[Path]:
    table = pd.read_csv(labels, sep="\t", dtype={"subject": str})
    out = []
    for seed in seeds:
        result = make_splits(table, target, task=task, n_folds=3, seed=seed, val_fraction=0.25)
        folder = root / "splits" / task / f"seed-{seed}"
        write_splits(result, folder)
        out.append(folder)
    return out


def _run(
    paths: dict[str, Path],
    task: str,
    splits: list[Path],
    work: Path,
    out: Path,
    extra: list[str] | None = None,
) -> int:
    argv = [
        "predictor-cv",
        "--config",
        str(Path(__file__).resolve().parents[3] / "models" / "predictor_demo.yaml"),
        "--labels",
        str(paths["labels"]),
        "--splits",
        *map(str, splits),
        "--settings",
        json.dumps(SETTINGS),
        "--dataset",
        "demo",
        "--task",
        task,
        "--shard",
        str(paths["shard_a"]),
        "--index",
        str(paths["index_a"]),
        "--shard",
        str(paths["shard_b"]),
        "--index",
        str(paths["index_b"]),
        "--steps",
        "4",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    for item in TINY_SETS:
        argv += ["--set", item]
    return main(argv + list(extra or []))


def _check_rows(out: Path, splits: list[Path], work: Path, labels: pd.Series) -> pd.DataFrame:
    pred = pd.read_csv(out, sep="\t", dtype={"subject": str, "y_true": str, "y_pred": str})
    assert set(pred["model"]) == {"predictor"}
    for folder in splits:
        split_set = read_splits(folder)
        for k, table in split_set.folds.items():
            rows = pred.loc[(pred["seed"] == split_set.seed) & (pred["fold"] == k)]
            for split in ("val", "test"):
                want = sorted(table.loc[table["split"] == split, "subject"])
                got = sorted(rows.loc[rows["split"] == split, "subject"])
                assert got == want, (split_set.seed, k, split)
            assert set(rows["split"]) == {"val", "test"}
            # The rows actually trained on: train subjects only, never a test subject.
            used = pd.read_csv(
                work / f"seed-{split_set.seed}" / f"fold-{k}" / "train_rows.tsv",
                sep="\t",
                dtype={"subject": str},
            )
            train = set(table.loc[table["split"] == "train", "subject"])
            assert set(used["subject"]) == train
            assert not set(used["subject"]) & set(table.loc[table["split"] != "train", "subject"])
            # Subject 01 has a run in each shard: both runs are trained on.
            if "01" in train:
                assert (used["subject"] == "01").sum() == 2
    # y_true is labels.tsv's label (not the shard index's raw column).
    truth = labels.reindex(pred["subject"]).astype(str).to_numpy()
    if labels.dtype == object:
        assert (pred["y_true"].to_numpy() == truth).all()
    else:
        np.testing.assert_allclose(pred["y_true"].astype(float), truth.astype(float), rtol=1e-9)
    return pred


def _harness(task_name: str, paths: dict[str, Path], splits: list[Path], out: Path):
    settings = settings_from_mapping(SETTINGS)
    task = settings.task("demo", task_name)
    frame, _ = task_labels([paths["labels"]], task)
    labels = labels_series(frame, task)
    inputs = {"predictions": {"predictor": [out]}}
    model = create("predictor", task, settings, inputs)  # what the harness builds
    model.check_truth(labels)
    result = evaluate_task(task, settings, labels, [read_splits(p) for p in splits], inputs)
    return labels, result


def test_regression_two_seeds_every_subject_and_harness(tmp_path: Path) -> None:
    paths = _write_data(tmp_path)
    splits = _splits(tmp_path, paths["labels"], "age", "regression", [0, 1])
    out = tmp_path / "eval" / "predictor" / "predictions.tsv"
    work = tmp_path / "work"
    assert _run(paths, "age", splits, work, out) == 0
    labels, result = _harness("age", paths, splits, out)
    pred = _check_rows(out, splits, work, labels)
    assert np.isfinite(pred["y_pred"].astype(float)).all()
    assert (pred["y_true"].astype(float) > 0).all()  # not the raw index column (-1)
    scored = result.predictions.loc[result.predictions["model"] == "predictor"]
    assert len(scored.loc[scored["split"] == "test"]) == 2 * N_SUBJECTS
    side = json.loads(out.with_suffix(".json").read_text())
    assert set(side["Folds"]) == {f"{s}/{k}" for s in (0, 1) for k in range(3)}
    for fold in side["Folds"].values():
        assert fold["chosen_step"] in (2, 4) and set(fold["val_scores"]) == {"2", "4"}
    # The expert-weight map: each fold's chosen step, on that fold's test subjects,
    # aligned and averaged over the 6 folds; a figure beside it.
    experts = pd.read_csv(out.with_name("expert_weights.tsv"), sep="\t", dtype={"roi": str})
    assert list(experts.columns) == ["roi", "expert", "weight", "sd", "n_folds"]
    assert len(experts) == R * 2 and set(experts["expert"]) == {0, 1}
    np.testing.assert_allclose(experts.groupby("roi")["weight"].sum(), 1.0, atol=1e-9)
    assert (experts["n_folds"] == 6).all() and (experts["sd"] >= 0).all()
    assert out.with_name("expert_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expert_side = json.loads(out.with_name("expert_weights.json").read_text())
    assert expert_side["Folds"] == 6 and side["ExpertWeightFolds"] == 6
    for s_, k in [(0, 0), (1, 2)]:
        fold_dir = work / f"seed-{s_}" / f"fold-{k}"
        chosen = side["Folds"][f"{s_}/{k}"]["chosen_step"]
        per_fold = pd.read_csv(fold_dir / f"expert_weights-step{chosen}.tsv", sep="\t")
        assert len(per_fold) == R * 2
    # A rerun resumes from the work folder's caches and writes the same bytes.
    first = [
        p.read_bytes() for p in (out, out.with_suffix(".json"), out.with_name("expert_weights.tsv"))
    ]
    assert _run(paths, "age", splits, work, out) == 0
    again = [
        p.read_bytes() for p in (out, out.with_suffix(".json"), out.with_name("expert_weights.tsv"))
    ]
    assert again == first


def test_classification_probabilities_and_reproducible(tmp_path: Path) -> None:
    paths = _write_data(tmp_path)
    splits = _splits(tmp_path, paths["labels"], "dx", "classification", [0])
    out = tmp_path / "one" / "predictions.tsv"
    assert _run(paths, "dx", splits, tmp_path / "w1", out) == 0
    labels, _ = _harness("dx", paths, splits, out)
    pred = _check_rows(out, splits, tmp_path / "w1", labels)
    proba = pred[["p_HC", "p_PT"]].to_numpy(float)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-8)
    assert set(pred["y_pred"]) <= {"HC", "PT"}
    argmax = np.array(["HC", "PT"])[proba.argmax(axis=1)]
    assert (pred["y_pred"].to_numpy() == argmax).all()
    # Training targets are the class numbers of labels.tsv's labels.
    used = pd.read_csv(tmp_path / "w1" / "seed-0" / "fold-0" / "train_rows.tsv", sep="\t")
    used["subject"] = used["subject"].map(lambda s: f"{int(s):02d}")
    want = labels.reindex(used["subject"]).map({"HC": 0.0, "PT": 1.0}).to_numpy()
    np.testing.assert_array_equal(used["target"].to_numpy(), want)
    # A fresh run in another work folder gives identical files.
    again = tmp_path / "two" / "predictions.tsv"
    assert _run(paths, "dx", splits, tmp_path / "w2", again) == 0
    assert again.read_bytes() == out.read_bytes()
    assert again.with_suffix(".json").read_bytes() == out.with_suffix(".json").read_bytes()


def test_changed_inputs_restart_the_fold_and_bad_arguments(tmp_path: Path) -> None:
    paths = _write_data(tmp_path)
    splits = _splits(tmp_path, paths["labels"], "age", "regression", [0])
    out = tmp_path / "predictions.tsv"
    work = tmp_path / "work"
    assert _run(paths, "age", splits, work, out) == 0
    cache = work / "seed-0" / "fold-0" / "predictions-step4.tsv"
    stale = cache.read_text()
    # Other labels: the fold's digest changes, the stale state is discarded.
    table = pd.read_csv(paths["labels"], sep="\t", dtype={"subject": str})
    table["age"] = table["age"] + 10.0
    table.to_csv(paths["labels"], sep="\t", index=False)
    assert _run(paths, "age", splits, work, out) == 0
    assert cache.read_text() != stale
    pred = pd.read_csv(out, sep="\t", dtype={"subject": str})
    np.testing.assert_allclose(
        pred["y_true"], table.set_index("subject")["age"].reindex(pred["subject"])
    )
    # An unknown task is an input error (exit status 2), not a traceback.
    assert _run(paths, "nosuch", splits, tmp_path / "w", tmp_path / "x.tsv") == 2


def test_helpers() -> None:
    assert candidate_steps(200, (0.5, 1.0)) == [100, 200]
    assert candidate_steps(3, (0.1, 0.5)) == [1, 2, 3]
    assert fold_seed(0, 0, 1) != fold_seed(0, 1, 0) and fold_seed(0, 0, 1) == fold_seed(0, 0, 1)
    assert _crop_starts(10, 20) == [0]
    assert _crop_starts(45, 15) == [0, 15, 30]
    starts = _crop_starts(50, 20)
    assert starts[0] == 0 and starts[-1] == 30 and len(starts) == 3


def _expert_table(weights: np.ndarray) -> pd.DataFrame:
    r, e = weights.shape
    return pd.DataFrame(
        {
            "roi": np.repeat([str(i) for i in range(r)], e),
            "expert": np.tile(np.arange(e), r),
            "weight": weights.ravel(),
        }
    )


def test_align_experts_undoes_a_permutation_of_the_experts() -> None:
    rng = np.random.default_rng(0)
    base = rng.dirichlet([0.3, 0.3, 0.3], size=8)  # 8 ROIs, 3 distinct experts
    noisy = base + rng.normal(0, 0.01, base.shape)
    permuted = noisy[:, [2, 0, 1]]  # the same clusters, numbered differently
    permuted[5] = np.nan  # a ROI without data in this fold
    table = align_experts([_expert_table(base), _expert_table(permuted)])
    w = table.pivot(index="roi", columns="expert", values="weight").to_numpy()
    sd = table.pivot(index="roi", columns="expert", values="sd").to_numpy()
    n = table.pivot(index="roi", columns="expert", values="n_folds").to_numpy()
    want = (base + noisy) / 2
    want[5] = base[5]
    np.testing.assert_allclose(w, want, atol=1e-12)
    assert sd[np.arange(8) != 5].max() < 0.05  # matched: only the noise differs
    assert (n[5] == 1).all() and (sd[5] == 0).all() and (n[np.arange(8) != 5] == 2).all()
    # without the matching, the naive mean mixes unrelated experts
    naive = (base + np.nan_to_num(permuted)) / 2
    assert np.abs(naive - want)[np.arange(8) != 5].max() > 0.1
    with pytest.raises(ValueError, match="different ROIs or experts"):
        align_experts([_expert_table(base), _expert_table(base[:, :2])])


TINY_LMAE_SETS = [
    "model.n_rois=10",
    "model.dim=32",
    "model.depth=1",
    "model.heads=4",
    "model.decoder_dim=32",
    "model.decoder_heads=4",
    "train.batch_size=4",
    "data.duration_s=30.0",
]


def test_lmae_pretrained_per_fold_on_training_subjects_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _write_data(tmp_path)
    splits = _splits(tmp_path, paths["labels"], "age", "regression", [0])
    out = tmp_path / "eval" / "predictor" / "predictions.tsv"
    work = tmp_path / "work"
    lmae_yaml = Path(__file__).resolve().parents[3] / "models" / "lmae_demo.yaml"
    import brainharmony.pipelines.predictor_cv as cv
    import brainharmony.train.loop as loop

    calls: list[tuple[str, Path | None]] = []
    real_train = loop.train

    def spy(cfg, dataset, out_dir, state_dir, **kwargs):
        calls.append((cfg.kind, kwargs.get("init_from")))
        return real_train(cfg, dataset, out_dir, state_dir, **kwargs)

    monkeypatch.setattr(loop, "train", spy)
    argv = ["--lmae-config", str(lmae_yaml), "--lmae-steps", "2"]
    for item in TINY_LMAE_SETS:
        argv += ["--lmae-set", item]
    assert _run(paths, "age", splits, work, out, extra=argv) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["LMAEPretraining"] == "per_fold"
    split_set = read_splits(splits[0])
    for k, table in split_set.folds.items():
        folder = work / "seed-0" / f"fold-{k}" / "lmae"
        assert (folder / "model" / "model.safetensors").is_file()
        rows = pd.read_csv(folder / "rows.tsv", sep="\t", dtype={"subject": str})
        train = set(table.loc[table["split"] == "train", "subject"])
        assert set(rows["subject"]) == train  # never a val or test subject
    # each fold: one LMAE run, then the predictor starting from that fold's LMAE
    lmae_runs = [c for c in calls if c[0] == "lmae"]
    pred_inits = {str(c[1]) for c in calls if c[0] == "predictor"}
    assert len(lmae_runs) == 3 and all(c[1] is None for c in lmae_runs)
    assert pred_inits == {str(work / "seed-0" / f"fold-{k}" / "lmae" / "model") for k in range(3)}
    _check_rows(out, splits, work, _harness("age", paths, splits, out)[0])
    # --init (an LMAE trained on everyone) and --lmae-config exclude each other
    with pytest.raises(SystemExit):
        _run(paths, "age", splits, work, out, extra=[*argv, "--init", str(tmp_path)])
    assert cv.lmae_mode(tmp_path, None) == "given" and cv.lmae_mode(None, None) == "none"
