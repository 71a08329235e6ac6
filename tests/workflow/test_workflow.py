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
def test_tiny_run_generates_demo_and_ingests(tmp_path):
    cfg = str(_write_config(tmp_path, TINY))
    out = run_snakemake(tmp_path, "--configfile", cfg, "--cores", "2", "ingest_all")
    assert out.returncode == 0, out.stderr[-4000:]
    for name in ("demoA", "demoB"):
        scans = pd.read_csv(
            tmp_path / "results" / "ingest" / name / "scans.tsv", sep="\t", dtype=str
        )
        truth = pd.read_csv(
            tmp_path / "resources/demo" / f"{name}-truth" / "phenotypes.tsv", sep="\t", dtype=str
        )
        assert len(scans) >= 1
        assert set(scans["subject"]) == {str(s).removeprefix("sub-") for s in truth.iloc[:, 0]}
        assert (tmp_path / "logs" / "ingest" / f"{name}.log").exists()
    # A second call has nothing to do.
    again = run_snakemake(tmp_path, "--configfile", cfg, "--cores", "2", "ingest_all", "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
