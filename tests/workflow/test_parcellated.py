"""A ``parcellated`` dataset through the workflow: run table -> ingest -> series ->
multi-TR -> BrainHarmonix-F training and F features -> evaluation (the acceptance test
of issue 25.4).

The series are the demo generator's own: the tiny preset's demoA is generated, and its
truth folder's noise-free parcel BOLD of each run (``*_desc-bold_timeseries.npy``,
n_volumes x 400) is written out in the three accepted layouts (``.npy``, TSV with a
header, CSV without one and ROI x time), listed in a run table with the TR of the BIDS
sidecars and the phenotypes of ``phenotypes.tsv``, plus one bad row (399 ROIs) that
must be excluded while the others run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from brainharmony import cli
from tests.conftest import run_snakemake

pytestmark = pytest.mark.workflow


def _parcellated_demo(root: Path) -> Path:
    """demoA's truth series as released files + run table; returns the run table."""
    assert cli.main(["demo", "--out", str(root / "demo"), "--preset", "tiny", "--seed", "7",
                     "--datasets", "demoA", "--jobs", "1"]) == 0  # fmt: skip
    truth = root / "demo" / "demoA-truth"
    bids = root / "demo" / "demoA"
    phen = pd.read_csv(truth / "phenotypes.tsv", sep="\t", dtype=str)
    release = root / "release"
    (release / "ts").mkdir(parents=True)
    rows = []
    for i, rec in enumerate(phen.to_dict(orient="records")):
        sub = rec["participant_id"]
        (series,) = sorted(truth.glob(f"{sub}/**/*_desc-bold_timeseries.npy"))
        (sidecar,) = sorted(bids.glob(f"{sub}/**/func/*_bold.json"))
        data = np.load(series).astype(np.float64)
        if i % 3 == 0:
            name = f"{sub}.npy"
            np.save(release / "ts" / name, data)
        elif i % 3 == 1:
            name = f"{sub}_timeseries.tsv"  # header of ROI names, time x ROI
            cols = [f"7Networks_{k + 1}" for k in range(data.shape[1])]
            pd.DataFrame(data, columns=cols).to_csv(release / "ts" / name, sep="\t", index=False)
        else:
            name = f"{sub}.csv"  # no header, ROI x time
            np.savetxt(release / "ts" / name, data.T, delimiter=",", fmt="%.9g")
        rows.append(
            {
                "subject": sub.removeprefix("sub-"),
                "session": "n/a",
                "run": "1",
                "path": f"ts/{name}",
                "tr": json.loads(sidecar.read_text())["RepetitionTime"],
                "age": rec["age"],
                "sex": rec["sex"],
                "diagnosis": rec["diagnosis"],
            }
        )
    np.save(release / "ts" / "bad.npy", np.zeros((120, 399)))
    rows.append({**rows[0], "subject": "99", "path": "ts/bad.npy"})
    table = release / "runs.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    return table


@pytest.mark.slow
def test_parcellated_dataset_runs_ingest_multitr_training_and_evaluation(tmp_path):
    table = _parcellated_demo(tmp_path)
    work = tmp_path / "run"
    work.mkdir()
    config = {
        "datasets": {"ukb": {"kind": "parcellated", "run_table": str(table)}},
        "ingest": {"min_volumes": 50},
        "train": {"steps": 4},
        "evaluate": {
            "tasks": {"ukb": {"age": {"target": "age", "type": "regression"}}},
            "models": ["null_model", "fc_ridge", "probe_bh_f", "probe_harmonizer", "finetune_bh_f"],
            "seeds": [0],
            "n_folds": 2,
            "val_fraction": 0.3,
            "finetune": {"epochs": 1, "warmup_epochs": 0.5, "patience": 1},
        },
    }
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = run_snakemake(
        work, "--configfile", str(cfg), "--cores", "2", "multitr_all", "evaluate_all"
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    res = work / "results"

    # ingest: four runs from the run table, the 399-ROI row excluded with its reason
    scans = pd.read_csv(res / "ingest/ukb/scans.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert scans["subject"].tolist() == ["01", "02", "03", "04"]
    assert set(scans["t1w"]) == {"n/a"} and set(scans["n_volumes"]) == {"120"}
    excluded = pd.read_csv(res / "ingest/ukb/excluded.tsv", sep="\t", dtype=str)
    assert excluded["subject"].tolist() == ["99"]
    assert "399 columns x 120 rows; expected 400 ROIs" in excluded["reason"].iloc[0]
    # the series, in the func stage's format, equal the released ones (any layout)
    truth = tmp_path / "demo/demoA-truth"
    for sub in scans["subject"]:
        (path,) = sorted((res / "ingest/ukb/series").glob(f"sub-{sub}/func/*_timeseries.tsv"))
        got = pd.read_csv(path, sep="\t").to_numpy()
        want = np.load(next(truth.glob(f"sub-{sub}/**/*_desc-bold_timeseries.npy")))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert json.loads(path.with_suffix(".json").read_text())["RepetitionTime"] == 0.735
    # no anatomy, functional or T1 work was planned for it
    assert not (res / "anat").exists() and not (res / "func").exists()
    assert not (res / "multitr/ukb/ukb_T1w_volumes.npy").exists()
    # multi-TR: every target TR, every run, phenotypes in the index
    for ms in (735, 1470, 2205, 2940):  # factors 1-4 up to multitr.max_tr 3 s
        index = pd.read_csv(res / f"multitr/ukb/ukb_tr-{ms}_index.tsv", sep="\t", dtype=str)
        shard = np.load(res / f"multitr/ukb/ukb_tr-{ms}_series.npy", mmap_mode="r")
        assert len(index) == 4 and shard.shape == (index["frames"].astype(int).sum(), 400)
        assert "age" in index.columns
    # BrainHarmonix-F trained on the parcellated series (4 steps), then fine-tuned
    last = json.loads((res / "models/bh_f/metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and np.isfinite(last["loss"])
    assert not (res / "models/bh_s").exists() and not (res / "models/harmonizer").exists()
    # its frozen F features without T1w (rule embed_f), every subject
    emb = np.load(res / "embeddings/bh_f/ukb.npz")
    assert emb["subject"].tolist() == ["01", "02", "03", "04"] and emb["features"].ndim == 2
    assert not (res / "embeddings/tokens").exists()
    # evaluation: the rows that need no T1w; the Harmonizer's left out of the task
    preds = pd.read_csv(res / "eval/predictions.tsv", sep="\t", dtype={"subject": str})
    assert set(preds["model"]) == {"null_model", "fc_ridge", "probe_bh_f", "finetune_bh_f"}
    assert set(preds["subject"]) == {"01", "02", "03", "04"}
    metrics = pd.read_csv(res / "tables/metrics.csv")
    assert {"fc_ridge", "finetune_bh_f"} <= set(metrics["model"])
    assert metrics.loc[metrics["metric"] == "mae", "mean"].notna().all()
    assert "ukb" in (res / "report/index.html").read_text()


def test_bh_s_with_only_parcellated_pretraining_is_refused_when_planned(tmp_path):
    table = tmp_path / "runs.tsv"
    table.write_text("subject\trun\tpath\ttr\n01\t1\ta.npy\t0.7\n")
    config = {"datasets": {"ukb": {"kind": "parcellated", "run_table": str(table)}}}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n", "train_bh_s")
    assert out.returncode != 0
    assert "BrainHarmonix-S needs T1w images" in out.stdout + out.stderr
    # what does not need T1w is planned (ingest of the run table first)
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n", "multitr_all")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert re.search(r"^ingest +1$", out.stdout, flags=re.M), out.stdout[-2000:]


def test_a_parcellated_dataset_beside_bids_datasets_plans(tmp_path):
    """The tiny config plus a parcellated dataset in a cohort with demoA: the whole
    plan (`all`) builds, the run table's ingest among the first jobs."""
    from tests.workflow.test_workflow import TINY

    table = tmp_path / "my runs $(x).tsv"
    table.write_text("subject\trun\tpath\ttr\n01\t1\ta.npy\t0.7\n")
    config = json.loads(json.dumps(TINY))
    config["datasets"]["ukb"] = {"kind": "parcellated", "run_table": str(table)}
    config["evaluate"]["cohorts"] = {"both": ["demoA", "ukb"]}
    config["evaluate"]["tasks"]["both"] = {"age": {"target": "age", "type": "regression"}}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n", "-p", "all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"--run-table '{table}' --n-rois 400" in out.stdout  # quoted: one word
    assert re.search(r"^ingest +3$", out.stdout, flags=re.M), out.stdout[-2000:]
