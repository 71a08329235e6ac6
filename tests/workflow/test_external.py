"""``evaluate.external``: a row made by the user's own code plans its predictions file as
an input of the ``evaluate`` rule and passes it with ``--external`` (dry runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_snakemake
from tests.workflow.test_workflow import TINY

pytestmark = pytest.mark.workflow

MODELS = ["null_model", "fc_ridge", "external_svm"]


def _dry(workdir: Path, evaluate: dict, target: str = "evaluate_all"):
    config = {**TINY, "evaluate": {**TINY["evaluate"], **evaluate}}
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return run_snakemake(workdir, "--configfile", str(cfg), "-n", "-p", target, timeout=300)


def _jobs(text: str) -> dict[str, int]:
    block = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_splits_all_exports_the_split_files_before_any_prediction(tmp_path):
    # the file of the external row need not exist yet: it is made from these splits
    evaluate = {"models": MODELS, "external": {"svm": "mine/{dataset}_{task}.tsv"}, "seeds": [0, 2]}
    out = _dry(tmp_path, evaluate, "splits_all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = _jobs(out.stdout)
    tasks = TINY["evaluate"]["tasks"]["demoA"]
    assert jobs["eval_splits"] == len(tasks) * 2 and jobs["eval_labels"] == len(tasks)
    assert "evaluate" not in jobs and "train_bh_f" not in jobs and "func_native" not in jobs
    for task in tasks:
        for seed in (0, 2):
            assert f"results/splits/demoA/{task}/seed-{seed}/fold-1.tsv" in out.stdout


def test_an_external_row_reads_its_file_in_the_evaluate_rule(tmp_path):
    tasks = list(TINY["evaluate"]["tasks"]["demoA"])
    (tmp_path / "mine").mkdir()
    for task in tasks[1:]:  # the first task's file is not there yet
        (tmp_path / "mine" / f"demoA_{task}.tsv").write_text("made by my own code\n")
    evaluate = {
        "models": MODELS,
        "external": {"svm": "mine/{dataset}_{task}.tsv"},
        "labels": {"external_svm": "SVM on FC (mine)"},
    }
    out = _dry(tmp_path, evaluate)
    assert out.returncode != 0  # a missing file is named, as any missing input
    text = out.stdout + out.stderr
    assert "Missing input files for rule evaluate" in text and f"mine/demoA_{tasks[0]}.tsv" in text
    (tmp_path / "mine" / f"demoA_{tasks[0]}.tsv").write_text("made by my own code\n")
    out = _dry(tmp_path, evaluate)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    commands = [line for line in out.stdout.splitlines() if " evaluate --dataset " in line]
    assert len(commands) == len(tasks)
    for line in commands:
        task = re.search(r"--task (\w+)", line).group(1)
        assert re.search(r"--models '?null_model fc_ridge external_svm'? ", line), line
        assert f"--external external_svm=mine/demoA_{task}.tsv " in line, line
        settings = json.loads(re.search(r"--settings '(\{.*?\})' --labels", line).group(1))
        assert settings["external"] == {"svm": "mine/{dataset}_{task}.tsv"}
        assert settings["labels"]["external_svm"] == "SVM on FC (mine)"
    assert "rule predictor_cv" not in out.stdout  # only the rows asked for are made


@pytest.mark.parametrize(
    ("evaluate", "expected"),
    [
        (
            {"models": MODELS},
            "'external_svm' needs its predictions file under evaluate.external.svm",
        ),
        (
            {"models": MODELS[:2], "external": {"svm": "mine.tsv"}},
            "evaluate.external.svm: model 'external_svm' is not in evaluate.models",
        ),
        (
            {"models": MODELS, "external": {"svm": "mine/{dataset}/{fold}.tsv"}},
            "evaluate.external.svm: unknown placeholder(s) ['{fold}']",
        ),
    ],
)
def test_an_unusable_external_entry_stops_the_planning(tmp_path, evaluate, expected):
    out = _dry(tmp_path, evaluate)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert expected in text, text[-3000:]
    assert "Job stats" not in text
