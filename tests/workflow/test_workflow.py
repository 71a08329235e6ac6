"""The Snakemake workflow: lint, dry-runs over config branches, a real tiny run."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import run_snakemake

pytestmark = pytest.mark.workflow

TINY = {
    "demo": {"preset": "tiny", "seed": 7, "root": "resources/demo"},
    "datasets": {
        "demoA": {"bids_dir": "resources/demo/demoA", "demo": True},
        "demoB": {"bids_dir": "resources/demo/demoB", "demo": True},
    },
    "anat": {"resolution_mm": 2},
    "func": {"resolution_mm": 3},
    "pretrain": {"datasets": ["demoA"]},
    "train": {"steps": 4},
    "evaluate": {
        "tasks": {
            "demoA": {
                "age": {"target": "age", "type": "regression"},
                "diagnosis": {"target": "diagnosis", "type": "classification", "positive": "PT"},
            }
        },
        "models": [
            "null_model",
            "fc_ridge",
            "fc_logistic",
            "probe_bh_f",
            "probe_harmonizer",
            "predictor",
        ],
        "seeds": [0],
        "n_folds": 2,
        "val_fraction": 0.3,
    },
}


def _write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_lint_has_no_findings(tmp_path):
    out = run_snakemake(tmp_path, "--configfile", str(_write_config(tmp_path, TINY)), "--lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr


def test_dry_run_default_config_plans_every_stage(repo, tmp_path):
    out = run_snakemake(tmp_path, "--configfile", str(repo / "config" / "config.yaml"), "-n")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "demo" in text and "ingest" in text


@pytest.mark.parametrize("target", ["ingest_all", "all"])
def test_stage_targets_exist(tmp_path, target):
    out = run_snakemake(tmp_path, "--configfile", str(_write_config(tmp_path, TINY)), "-n", target)
    assert out.returncode == 0, out.stderr


def test_user_dataset_missing_is_refused_at_planning(tmp_path):
    config = {"datasets": {"study": {"bids_dir": str(tmp_path / "nowhere")}}}
    out = run_snakemake(tmp_path, "--configfile", str(_write_config(tmp_path, config)), "-n")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "dataset 'study'" in text and "nowhere" in text


def test_unknown_config_key_is_named(tmp_path):
    config = {**TINY, "ingset": {"min_volumes": 10}}
    out = run_snakemake(tmp_path, "--configfile", str(_write_config(tmp_path, config)), "-n")
    assert out.returncode != 0
    assert "unknown key 'ingset'" in out.stdout + out.stderr


@pytest.mark.slow
def test_tiny_run_through_every_stage(tmp_path):
    """demo -> ingest -> anat -> func -> geometry -> multi-TR -> train -> evaluate (tiny)."""
    import json

    import numpy as np

    cfg = str(_write_config(tmp_path, TINY))
    out = run_snakemake(tmp_path, "--configfile", cfg, "--cores", "2", "all")
    assert out.returncode == 0, out.stderr[-4000:]
    res = tmp_path / "results"
    for name in ("demoA", "demoB"):
        scans = pd.read_csv(res / "ingest" / name / "scans.tsv", sep="\t", dtype=str)
        truth = pd.read_csv(
            tmp_path / "resources/demo" / f"{name}-truth" / "phenotypes.tsv", sep="\t", dtype=str
        )
        assert len(scans) >= 1
        assert set(scans["subject"]) == {str(s).removeprefix("sub-") for s in truth.iloc[:, 0]}
        assert (tmp_path / "logs" / "ingest" / f"{name}.log").exists()
        # One model-ready T1 per subject, one denoised series per run.
        models = sorted((res / "anat" / name).rglob("*_desc-model_T1w.nii.gz"))
        assert {p.name.split("_")[0] for p in models} == {f"sub-{s}" for s in scans["subject"]}
        denoised = sorted((res / "func" / name).rglob("*_desc-denoised_timeseries.tsv"))
        assert len(denoised) == len(scans)
        # Multi-TR shards: every target TR, every run, phenotypes in the index.
        tr = float(scans["tr"].iloc[0])
        expected = [round(f * tr * 1000) for f in (1, 2, 3, 4) if f == 1 or f * tr <= 3.0]
        for ms in expected:
            index = pd.read_csv(res / "multitr" / name / f"{name}_tr-{ms}_index.tsv", sep="\t")
            shard = np.load(res / "multitr" / name / f"{name}_tr-{ms}_series.npy", mmap_mode="r")
            assert len(index) == len(scans) and shard.shape == (index["frames"].sum(), 400)
            assert {"age", "diagnosis"} <= set(index.columns)
        volumes = np.load(res / "multitr" / name / f"{name}_T1w_volumes.npy", mmap_mode="r")
        assert volumes.shape[0] == len(models)
        grads = pd.read_csv(
            res / "geometry" / name / f"{name}_atlas-Schaefer400_g-30_gradients.tsv", sep="\t"
        )
        assert grads.shape == (400, 31)
    harm = pd.read_csv(
        res / "geometry" / "atlas-Schaefer400_surf-fslr32k_k-200_harmonics.tsv", sep="\t"
    )
    assert harm.shape[0] == 400 and harm.shape[1] >= 200
    stats = json.loads((res / "multitr" / "atlas-Schaefer400_desc-robust_scaling.json").read_text())
    assert len(stats["Median"]) == 400 and stats["Mode"] == "all_frames"
    # Training: every model folder is complete; 4 steps as configured.
    for role in ("bh_s", "bh_f", "harmonizer", "lmae"):
        folder = res / "models" / role
        for name in ("model.safetensors", "config.json", "metrics.jsonl", "curves.png"):
            assert (folder / name).stat().st_size > 0, folder / name
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 4 and np.isfinite(last["loss"])
    for kind in ("bh_f", "bh_s", "harmonizer"):
        emb = np.load(res / "embeddings" / kind / "demoA.npz")
        assert emb["features"].shape[0] == len(emb["subject"]) >= 1
    # Evaluation: the long-format contracts and the report.
    preds = pd.read_csv(res / "eval" / "predictions.tsv", sep="\t", dtype={"subject": str})
    assert {"dataset", "task", "model", "fold", "split", "subject", "y_true", "y_pred"} <= set(
        preds.columns
    )
    assert set(preds["model"]) >= {"null_model", "probe_bh_f", "probe_harmonizer", "predictor"}
    metrics = pd.read_csv(res / "tables" / "metrics.csv")
    assert list(metrics.columns[:7]) == ["dataset", "task", "model", "metric", "mean", "std", "n"]
    for ext in ("csv", "md", "tex"):
        assert (res / "tables" / f"paper_table.{ext}").stat().st_size > 0
    html = (res / "report" / "index.html").read_text()
    assert "<img" in html and "demoA" in html
    # A second call has nothing to do.
    again = run_snakemake(tmp_path, "--configfile", cfg, "--cores", "2", "all", "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
