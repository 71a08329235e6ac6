"""results/anat/<dataset> and results/func/<dataset> are BIDS-Derivatives 1.x datasets.

A tiny anat + func run of one demo dataset: the official BIDS validator (bids-validator-deno)
finds no error in either folder, pybids indexes the derived files with their entities, and
every sidecar's ``Sources`` is a BIDS URI that resolves to an existing file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainharmony.bids_uri import parse_bids_uri, resolve_bids_uri
from tests.conftest import run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

CONFIG = {
    "demo": {"preset": "tiny", "seed": 7, "root": "resources/demo"},
    "datasets": {"demoA": {"bids_dir": "resources/demo/demoA", "demo": True}},
    "anat": {"resolution_mm": 2},
    "func": {"resolution_mm": 3},
    "pretrain": {"datasets": ["demoA"]},
}
RAW = Path("resources/demo/demoA")
STAGES = {"anat": "brainharmony-anat", "func": "brainharmony-func"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The workdir of the tiny run (``anat_all func_all``); tests only read it."""
    workdir = tmp_path_factory.mktemp("bids-derivatives")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    out = run_snakemake(
        workdir, "--configfile", "config.yaml", "--cores", "2", "anat_all", "func_all"
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return workdir


def _validator() -> str | None:
    exe = Path(sys.executable).parent / "bids-validator-deno"
    return str(exe) if exe.exists() else shutil.which("bids-validator-deno")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_bids_validator_finds_no_error(run, stage):
    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    folder = run / "results" / stage / "demoA"
    proc = subprocess.run(
        [exe, str(folder), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [i for i in issues if i.get("severity") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)
    # Warnings left (README, Authors): listed, allowed.
    warnings = sorted({i["code"] for i in issues if i.get("severity") == "warning"})
    assert set(warnings) <= {"README_FILE_MISSING", "TOO_FEW_AUTHORS"}, warnings
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_pybids_indexes_the_derived_files_with_their_entities(run, monkeypatch):
    from bids import BIDSLayout

    monkeypatch.chdir(run)
    subjects = sorted(p.name.removeprefix("sub-") for p in RAW.glob("sub-*"))
    queries = {
        "anat": [
            ({"suffix": "T1w", "desc": "model", "space": "MNI152NLin2009aAsym"}, {}),
            ({"suffix": "T1w", "desc": "preproc", "space": None}, {}),
            ({"suffix": "mask", "desc": "brain", "space": "MNI152NLin2009aAsym"}, {}),
        ],
        "func": [
            (
                {"suffix": "mask", "desc": "brain", "space": "MNI152NLin2009aAsym", "res": "3"},
                {"task": "rest"},
            ),
            (
                {"suffix": "timeseries", "desc": "denoised", "atlas": "Schaefer400"},
                {"task": "rest", "space": "MNI152NLin2009aAsym"},
            ),
        ],
    }
    # One layout per stage: pybids names a derivative dataset by its folder (demoA twice).
    for stage, pipeline in STAGES.items():
        layout = BIDSLayout(RAW, derivatives=[f"results/{stage}/demoA"])
        assert layout.derivatives["demoA"].source_pipeline == pipeline
        for query, more in queries[stage]:
            files = layout.get(scope=pipeline, extension=[".nii.gz", ".tsv"], **query)
            assert sorted(f.entities["subject"] for f in files) == subjects, (stage, query)
            for f in files:
                expected = {k: v for k, v in query.items() if v is not None} | more
                assert expected.items() <= f.entities.items(), (f.path, f.entities)
                assert f.get_metadata()["Sources"], f.path  # its JSON sidecar is attached


def test_sources_are_bids_uris_that_resolve(run):
    for stage in STAGES:
        root = run / "results" / stage / "demoA"
        description = json.loads((root / "dataset_description.json").read_text())
        assert description["DatasetType"] == "derivative"
        assert set(description["DatasetLinks"]) >= {"raw"}
        sidecars = sorted(root.glob("sub-*/**/*.json"))
        assert sidecars
        for sidecar in sidecars:
            sources = json.loads(sidecar.read_text()).get("Sources")
            assert sources, sidecar
            for uri in sources:
                name, _ = parse_bids_uri(uri)
                assert name in {"", "raw", "anat"}, (sidecar, uri)
                assert resolve_bids_uri(uri, root).is_file(), (sidecar, uri)
