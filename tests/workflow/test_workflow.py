"""The Snakemake workflow: lint, dry-runs over config branches, a real tiny run."""

import shutil
import subprocess
import sys
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
            "probe_bh_f_roisim",
            "probe_harmonizer",
            "finetune_harmonizer",
            "finetune_bh_f",
            "predictor",
            "brainnetcnn",
            "braingnn",
            "bnt",
        ],
        "seeds": [0],
        "n_folds": 2,
        "val_fraction": 0.3,
        "finetune": {"epochs": 2, "warmup_epochs": 0.5, "patience": 2},
        # the graph baselines shrunk to a check that they run end to end (400 ROIs)
        "graphs": {
            "brainnetcnn": {
                "e2e_channels": [4, 4],
                "e2n_channels": 8,
                "n2g_channels": 16,
                "hidden": [8],
                "epochs": 2,
            },
            "braingnn": {"conv_dims": [8, 8], "mlp_hidden": 16, "epochs": 2},
            "bnt": {"ff_dim": 32, "clusters": 8, "hidden": [16], "epochs": 2},
        },
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


def test_rule_files_are_snakefmt_formatted(repo):
    """`make lint` runs snakefmt --check (the version pinned in requirements/lock-dev.txt,
    settings in pyproject's [tool.snakefmt]); this runs the same check in the test suite."""
    exe = Path(sys.executable).parent / "snakefmt"
    snakefmt = str(exe) if exe.exists() else shutil.which("snakefmt")
    if snakefmt is None:
        pytest.skip("snakefmt is not installed (make install: requirements/lock-dev.txt)")
    files = [repo / "Snakefile", *sorted((repo / "workflow" / "rules").glob("*.smk"))]
    out = subprocess.run(
        [snakefmt, "--config", str(repo / "pyproject.toml"), "--check", *map(str, files)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, f"run `make format` (snakefmt):\n{out.stdout}{out.stderr}"


def test_dry_run_default_config_plans_every_stage(repo, tmp_path):
    out = run_snakemake(tmp_path, "--configfile", str(repo / "config" / "demo.yaml"), "-n")
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
def test_tiny_run_through_every_stage(tiny_run):
    """demo -> ingest -> anat -> func -> geometry -> multi-TR -> train -> evaluate (tiny)."""
    import json

    import numpy as np

    tmp_path = tiny_run
    cfg = str(tmp_path / "config.yaml")
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
    assert set(preds["model"]) >= {
        "null_model",
        "probe_bh_f",
        "probe_bh_f_roisim",
        "probe_harmonizer",
        "finetune_harmonizer",
        "finetune_bh_f",
        "predictor",
        "brainnetcnn",
        "braingnn",
        "bnt",
    }
    # the fine-tuned rows trained the Harmonizer / F encoder (not a frozen probe)
    selection = pd.read_csv(res / "eval" / "demoA" / "diagnosis" / "selection.tsv", sep="\t")
    tuned = selection.loc[selection["model"].str.startswith("finetune_"), "params"]
    assert len(tuned) > 0 and all(json.loads(p)["train_encoder"] for p in tuned)
    table = (res / "tables" / "paper_table.md").read_text()
    assert "| BrainHarmonix (FT) |" in table and "| BrainHarmonix-F (FT) |" in table
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


# ---- faults at workflow level: one bad subject, a training run killed ---------------------

#: Tables that must come out byte-identical from an identical rerun (the report is not
#: among them: it records when it was made).
TABLES = (
    "results/eval/predictions.tsv",
    "results/tables/metrics.csv",
    "results/tables/tests.csv",
    "results/tables/paper_table.csv",
    "results/tables/paper_table.md",
    "results/tables/paper_table.tex",
)


@pytest.mark.slow
def test_unusable_t1w_is_excluded_and_the_others_finish(tiny_run, tmp_path):
    """A T1w damaged after ingestion (all voxels one value): its anat job writes its
    outputs flagged Excluded with the reason naming the file, the workflow finishes
    ``anat_all func_all multitr_all`` without --keep-going, the subject's runs are
    excluded by func ("anatomy excluded: ..."), the T1 shard and the series shards leave
    the subject out and list it, and every other subject's outputs equal the reference
    run's byte for byte."""
    import json

    import nibabel as nib
    import numpy as np

    from tests.slurm.conftest import copy_run

    work = copy_run(tiny_run, tmp_path / "run")
    t1w = next((work / "resources/demo/demoA/sub-02/anat").glob("*_T1w.nii.gz"))
    img = nib.load(t1w)
    nib.save(nib.Nifti1Image(np.full(img.shape, 7, np.int16), img.affine, img.header), t1w)
    # Ingest again too (scans.tsv holds absolute paths, into the run that was copied); by
    # file times only the damaged subject's jobs and the shards are redone.
    out = run_snakemake(
        work, "anat_all", "func_all", "multitr_all", "--configfile", str(work / "config.yaml"),
        "--cores", "2", "--forcerun", "ingest", "--rerun-triggers", "mtime",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    anat = work / "results/anat/demoA/sub-02/anat"
    sidecars = sorted(anat.glob("*.json"))
    assert len(sidecars) == 5
    for path in sidecars:
        doc = json.loads(path.read_text())
        assert doc["Excluded"] is True, path
        assert f"{t1w.name}: the image is constant" in doc["ExclusionReason"], doc
    func = sorted((work / "results/func/demoA/sub-02").rglob("*_desc-denoised_timeseries.json"))
    assert func
    for path in func:
        doc = json.loads(path.read_text())
        assert doc["Excluded"] is True and doc["ExclusionReason"].startswith("anatomy excluded")
    volumes = json.loads((work / "results/multitr/demoA/demoA_T1w_volumes.json").read_text())
    assert [e["subject"] for e in volumes["ExcludedSources"]] == ["02"], volumes
    index = pd.read_csv(work / "results/multitr/demoA/demoA_T1w_index.tsv", sep="\t", dtype=str)
    assert "02" not in set(index["subject"])
    for shard in sorted((work / "results/multitr/demoA").glob("demoA_tr-*_series.json")):
        listed = json.loads(shard.read_text())["ExcludedSources"]
        assert any("sub-02" in e["path"] for e in listed), shard
    ref_files = sorted(tiny_run.glob("results/anat/*/sub-*/**/*.nii.gz"))
    ref_files += sorted(tiny_run.glob("results/func/*/sub-*/**/*_timeseries.tsv"))
    assert len(ref_files) > 4
    for ref in ref_files:
        got = work / ref.relative_to(tiny_run)
        if "demoA/sub-02/" in str(got):
            continue
        assert got.read_bytes() == ref.read_bytes(), got


@pytest.mark.slow
def test_run_excluded_by_censoring_is_left_out_and_the_later_stages_run(tiny_run, tmp_path):
    """One demoA run made to jump 4 voxels on every other volume (FD far above the
    threshold, so censoring keeps nothing): its func job succeeds with the series
    flagged Excluded, and the multi-TR, geometry and training stages run to the end.
    The shards, scaling statistics and group gradients leave the run out and list it;
    the subject has BrainHarmonix-S embeddings but no BrainHarmonix-F or Harmonizer
    ones; every other series is unchanged. (The tiny preset's 2-fold evaluation has one
    training subject per fold, so losing one leaves a fold without training data; the
    protocol's drop of subjects without inputs is tested in tests/unit.)"""
    import json
    import re

    import nibabel as nib
    import numpy as np

    from tests.slurm.conftest import copy_run

    work = copy_run(tiny_run, tmp_path / "run")
    scans = pd.read_csv(tiny_run / "results/ingest/demoA/scans.tsv", sep="\t", dtype=str)
    subject = scans["subject"].iloc[1]
    bold = next((work / f"resources/demo/demoA/sub-{subject}").rglob("*_bold.nii.gz"))
    img = nib.load(bold)
    data = np.asarray(img.dataobj)
    data[..., 1::2] = np.roll(data[..., 1::2], 4, axis=0)
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bold)
    # Ingest again (scans.tsv holds absolute paths into the copied run); by file times,
    # only the damaged run's func job is redone.
    out = run_snakemake(
        work, "multitr_all", "geometry_all", "train_all", "--configfile",
        str(work / "config.yaml"), "--cores", "2", "--forcerun", "ingest",
        "--rerun-triggers", "mtime",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Jobs run (the first "Job stats" table predates the checkpoint's re-evaluation).
    ran = re.findall(r"^(?:local)?rule (\w+):$", out.stdout + out.stderr, flags=re.M)
    assert ran.count("func_native") == 1, ran
    assert {"train_bh_f", "train_harmonizer", "embed_encoders"} <= set(ran), ran

    res = work / "results"
    func = res / "func/demoA"
    excluded = [
        p
        for p in sorted(func.rglob("*_desc-denoised_timeseries.json"))
        if json.loads(p.read_text()).get("Excluded")
    ]
    assert [p.name.split("_")[0] for p in excluded] == [f"sub-{subject}"]
    reason = json.loads(excluded[0].read_text())["ExclusionReason"]
    assert "remain after censoring" in reason
    series = excluded[0].with_suffix(".tsv")
    for other in sorted(func.rglob("*_desc-denoised_timeseries.tsv")):
        if other != series:
            ref = tiny_run / other.relative_to(work)
            assert other.read_bytes() == ref.read_bytes(), other
    listed = [{"path": str(series.relative_to(work)), "reason": reason}]
    for shard in sorted((res / "multitr/demoA").glob("demoA_tr-*_series.json")):
        assert json.loads(shard.read_text())["ExcludedSources"] == listed, shard
        index = pd.read_csv(str(shard).replace("_series.json", "_index.tsv"), sep="\t", dtype=str)
        assert subject not in set(index["subject"]) and len(index) == len(scans) - 1
    stats = json.loads(next((res / "multitr").glob("*_desc-robust_scaling.json")).read_text())
    assert stats["Provenance"]["Parameters"]["excluded_series"] == listed
    gradients = json.loads(next((res / "geometry").glob("atlas-*_g-*_gradients.json")).read_text())
    assert gradients["ExcludedSeries"] == listed
    # BrainHarmonix-F trained afresh: its finished checkpoint belongs to the old data.
    assert "starting over" in (work / "logs/train/bh_f.log").read_text()
    for model, has_it in (("bh_s", True), ("bh_f", False), ("harmonizer", False)):
        subjects = np.load(res / f"embeddings/{model}/demoA.npz")["subject"].tolist()
        assert (subject in subjects) is has_it, (model, subjects)
        assert len(subjects) == len(scans) - (not has_it), (model, subjects)


@pytest.mark.slow
def test_kill_during_training_resumes_to_identical_weights_and_tables(tiny_run, tmp_path):
    """kill -9 of Snakemake and its jobs while BrainHarmonix-F trains (after its first
    checkpoint); the rerun resumes from the checkpoint, and the models and every table
    equal the uninterrupted run's byte for byte (also the determinism check: the whole
    training and evaluation chain computed twice)."""
    import shutil

    from tests.conftest import REPO
    from tests.slurm.conftest import copy_run, job_stats
    from tests.slurm.test_reruns import run_and_kill

    work = copy_run(tiny_run, tmp_path / "run")
    for folder in ("models", "embeddings", "eval", "tables", "report", "splits"):
        shutil.rmtree(work / "results" / folder, ignore_errors=True)
    shutil.rmtree(work / "work")
    # A checkpoint after every step (the weights do not depend on the cadence).
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "ckpt_every": 1}}))
    checkpoint = work / "work/train/bh_f/checkpoint.pt"
    victim = run_and_kill(
        work, tmp_path / "killed-run.log",
        ["all", "--configfile", str(config), "--cores", "2"],
        f"train --config {REPO / 'models' / 'bh_f_demo.yaml'}", checkpoint.is_file,
    )  # fmt: skip
    assert "bh_f_demo.yaml" in victim
    assert checkpoint.is_file() and not (work / "results/models/bh_f/model.safetensors").exists()

    unlock = run_snakemake(work, "all", "--configfile", str(config), "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    out = run_snakemake(
        work, "all", "--configfile", str(config), "--cores", "2", "--rerun-incomplete"
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert job_stats(out.stdout + out.stderr).get("train_bh_f") == 1
    assert "resuming bh_f_demo from step" in (work / "logs/train/bh_f.log").read_text()

    for role in ("bh_s", "bh_f", "harmonizer", "lmae"):
        rel = f"results/models/{role}/model.safetensors"
        assert (work / rel).read_bytes() == (tiny_run / rel).read_bytes(), rel
    for rel in TABLES:
        assert (work / rel).read_bytes() == (tiny_run / rel).read_bytes(), rel


@pytest.mark.slow
def test_group_qc_table_per_dataset_and_report_links_the_subject_pages(tiny_run):
    """`all` wrote one group QC table per dataset (one row per run of scans.tsv plus
    one per ingest exclusion, every run's QC filled in) with its column sidecar, one
    page per subject linking figures that exist, and the report links every page."""
    import json
    from html.parser import HTMLParser
    from urllib.parse import unquote

    from brainharmony.qc.group import COLUMNS, page_name, read_group_qc

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links = []

        def handle_starttag(self, tag, attrs):
            self.links += [v for k, v in attrs if k in ("href", "src") and v]

    def links(page: Path) -> list[str]:
        parser = Links()
        parser.feed(page.read_text())
        return [x for x in parser.links if not x.startswith(("data:", "#"))]

    res = tiny_run / "results"
    report = res / "report" / "index.html"
    report_links = links(report)
    for name in TINY["datasets"]:
        qc = res / "qc" / name
        table = read_group_qc(qc / "group_qc.tsv")
        assert list(table.columns) == list(COLUMNS)
        scans = pd.read_csv(res / "ingest" / name / "scans.tsv", sep="\t", dtype=str)
        excluded = pd.read_csv(res / "ingest" / name / "excluded.tsv", sep="\t", dtype=str)
        assert len(table) == len(scans) + len(excluded)
        runs = table[table["exclusion_stage"] != "ingest"]
        assert sorted(runs["source"]) == sorted(Path(p).name for p in scans["bold"])
        assert runs[["n_volumes", "frames_kept", "mean_fd", "tsnr", "anat_ncc"]].notna().all().all()
        assert (runs["atlas"] != "n/a").all()
        assert set(table["excluded"]) <= {"yes", "no"}
        assert (table.loc[table["excluded"] == "yes", "exclusion_reason"] != "n/a").all()
        side = json.loads((qc / "group_qc.json").read_text())
        assert all(side[c]["Description"] for c in COLUMNS)
        for subject in sorted(set(table["subject"])):
            page = qc / "subjects" / page_name(subject)
            assert page.is_file(), page
            assert f"../qc/{name}/subjects/{page.name}" in report_links, subject
            for link in links(page):
                assert (page.parent / unquote(link)).resolve().is_file(), (page, link)
        first = links(qc / "subjects" / page_name(scans["subject"].iloc[0]))
        assert sum(x.endswith(".png") for x in first) >= 4  # T1w + FD, carpet, FC of a run
    assert '<section id="groupqc">' in report.read_text()
