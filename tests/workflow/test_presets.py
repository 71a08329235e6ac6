"""Paper presets: each validates against the schema and dry-runs on a BIDS skeleton.

The skeletons mirror the real datasets' layouts (one folder per ABIDE / ADHD-200 site,
sessions where the archives have them, the task labels and participants columns the
presets expect) with zero-byte images: a dry-run plans until the ingest checkpoint,
which is as far as planning can go before the data are read.

Until the ``evaluate:`` block is part of ``workflow/schemas/config.schema.yaml``, the
tests merge :data:`EVALUATE_SCHEMA` (the fragment proposed for it) into a copy of the
schema and dry-run a copy of the workflow that uses it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from brainharmony.config import load_yaml, validate_config
from brainharmony.evaluate.settings import settings_from_mapping
from tests.conftest import BIN, REPO, snakemake_exe

pytestmark = pytest.mark.workflow

#: The paper presets (``demo_*.yaml`` are demo-data runs, tested in test_variants.py).
PRESETS = sorted(
    p for p in (REPO / "config" / "presets").glob("*.yaml") if not p.stem.startswith("demo_")
)

#: The ``evaluate:`` schema block (merged into the schema's properties for these tests).
EVALUATE_SCHEMA = yaml.safe_load(
    """
evaluate:
  type: object
  additionalProperties: false
  default: {}
  properties:
    cohorts:
      type: object
      default: {}
      propertyNames: {pattern: "^[a-zA-Z0-9]+$"}
      additionalProperties:
        type: array
        minItems: 1
        items: {type: string, pattern: "^[a-zA-Z0-9]+$"}
    tasks:
      type: object
      default: {}
      propertyNames: {pattern: "^[a-zA-Z0-9]+$"}
      additionalProperties:
        type: object
        minProperties: 1
        propertyNames: {pattern: "^[a-zA-Z0-9]+$"}
        additionalProperties:
          type: object
          additionalProperties: false
          required: [target, type]
          properties:
            target: {type: string, minLength: 1}
            type: {enum: [classification, regression]}
            positive: {type: [string, "null"], default: null}
            classes: {type: [array, "null"], items: {type: string}, minItems: 2, default: null}
            average: {enum: [macro, weighted], default: macro}
            site_mode: {enum: [none, stratify, group], default: none}
            map: {type: object, additionalProperties: {type: string}}
            description: {type: string}
    models:
      type: array
      minItems: 1
      uniqueItems: true
      items: {type: string, pattern: "^[a-z0-9_]+$"}
      default: [null_model, fc_ridge, fc_kernel_ridge, fc_logistic]
    seeds:
      type: array
      minItems: 1
      uniqueItems: true
      items: {type: integer, minimum: 0}
      default: [0]
    n_folds: {type: integer, minimum: 2, default: 5}
    val_fraction: {type: number, exclusiveMinimum: 0, exclusiveMaximum: 1, default: 0.2}
    n_bins: {type: integer, minimum: 1, default: 5}
    primary_metric:
      type: object
      additionalProperties: false
      default: {classification: balanced_accuracy, regression: mae}
      properties:
        classification: {enum: [accuracy, balanced_accuracy, f1, auc]}
        regression: {enum: [mae, pearson_r, r2]}
    select_metric:
      type: object
      additionalProperties: false
      default: {classification: auc, regression: mae}
      properties:
        classification: {enum: [accuracy, balanced_accuracy, f1, auc]}
        regression: {enum: [mae, pearson_r, r2]}
    table_metrics:
      type: object
      additionalProperties: false
      default:
        classification: [accuracy, balanced_accuracy, f1, auc]
        regression: [mae, pearson_r, r2]
      properties:
        classification:
          type: array
          minItems: 1
          items: {enum: [accuracy, balanced_accuracy, f1, auc]}
        regression:
          type: array
          minItems: 1
          items: {enum: [mae, pearson_r, r2]}
    alpha: {type: number, exclusiveMinimum: 0, exclusiveMaximum: 1, default: 0.05}
    grids:
      type: object
      additionalProperties: false
      default: {}
      properties:
        ridge_alphas: {type: array, minItems: 1, items: {type: number, exclusiveMinimum: 0}}
        logistic_cs: {type: array, minItems: 1, items: {type: number, exclusiveMinimum: 0}}
        rbf_gamma_factors: {type: array, minItems: 1, items: {type: number, exclusiveMinimum: 0}}
        kernel_alphas: {type: array, minItems: 1, items: {type: number, exclusiveMinimum: 0}}
    finetune:
      type: object
      additionalProperties: false
      default: {}
      properties:
        epochs: {type: integer, minimum: 1}
        lrs: {type: array, minItems: 1, items: {type: number, exclusiveMinimum: 0}}
        batch_size: {type: integer, minimum: 1}
        weight_decay: {type: number, minimum: 0}
        train_encoder: {type: boolean}
        layer_decay: {type: number, exclusiveMinimum: 0, maximum: 1}
        drop_path: {type: number, minimum: 0, exclusiveMaximum: 1}
        label_smoothing: {type: number, minimum: 0, exclusiveMaximum: 1}
        warmup_epochs: {type: number, minimum: 0}
        min_lr: {type: number, minimum: 0}
        patience: {type: integer, minimum: 1}
"""
)

# --------------------------------------------------------------------------- skeletons

#: dataset-name prefix -> (subject labels, sessions, runs, phenotype example values)
LAYOUTS: dict[str, dict] = {
    "ukb": {"subjects": ["1000012", "1000025"], "sessions": ["2"], "runs": [None]},
    "abcd": {
        "subjects": ["NDARINV00BD7VDC", "NDARINV00CY2MDM"],
        "sessions": ["baselineYear1Arm1", "2YearFollowUpYArm1"],
        "runs": ["1", "2"],
    },
    "abide1": {"subjects": ["0050002", "0050003", "0050004"], "sessions": [None], "runs": [None]},
    "abide2": {"subjects": ["29006", "29007"], "sessions": ["1", "2"], "runs": [None]},
    "adhd": {"subjects": ["0010001", "0010002"], "sessions": ["1"], "runs": ["1", "2"]},
    "ppmi": {"subjects": ["3001", "3002", "3003", "3004"], "sessions": ["BL"], "runs": [None]},
    "adni": {
        "subjects": ["ADNI002S0295", "ADNI002S0413"],
        "sessions": ["M000", "M012"],
        "runs": [None],
    },
    "hcpa": {"subjects": ["HCA6002236", "HCA6010538"], "sessions": [None], "runs": ["1", "2"]},
    "camcan": {"subjects": ["CC110033", "CC110037"], "sessions": [None], "runs": [None]},
}
VALUES = {"number": ["34.5", "61.2", "n/a", "22.0"], "category": ["1", "2", "1", "n/a"]}
CATEGORIES = {
    "cohort": ["Healthy Control", "SWEDD", "Prodromal", "Parkinson's Disease"],
    "DX_bl": ["CN", "EMCI", "AD", "LMCI"],
    "DX": ["0", "1", "3", "pending"],
}


def _layout(name: str) -> dict:
    for prefix, layout in LAYOUTS.items():
        if name.startswith(prefix):
            return layout
    raise KeyError(f"no skeleton layout for dataset {name!r}")


def make_skeleton(root: Path, name: str, settings: dict) -> Path:
    """A BIDS skeleton: description, participants, zero-byte T1w and BOLD per session/run."""
    layout = _layout(name)
    task = settings.get("task", "rest")
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.8.0", "DatasetType": "raw"})
    )
    (root / f"task-{task}_bold.json").touch()
    columns = dict(settings.get("phenotypes", {}))
    site = settings.get("site_column")
    rows = []
    for i, sub in enumerate(layout["subjects"]):
        row = {"participant_id": f"sub-{sub}"}
        for col, kind in columns.items():
            pool = CATEGORIES.get(col, VALUES[kind])
            row[col] = pool[i % len(pool)]
        if site:
            row[site] = f"site{i % 2}"
        rows.append(row)
        for ses in layout["sessions"]:
            base = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "")
            stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            (base / "anat").mkdir(parents=True, exist_ok=True)
            (base / "anat" / f"{stem}_T1w.nii.gz").touch()
            (base / "func").mkdir(parents=True, exist_ok=True)
            for run in layout["runs"]:
                bold = f"{stem}_task-{task}" + (f"_run-{run}" if run else "") + "_bold"
                (base / "func" / f"{bold}.nii.gz").touch()
                (base / "func" / f"{bold}.json").touch()
    header = list(rows[0])
    lines = ["\t".join(header)] + ["\t".join(r[c] for c in header) for r in rows]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------- helpers


def _schema_has_evaluate() -> bool:
    schema = load_yaml(REPO / "workflow" / "schemas" / "config.schema.yaml")
    return "evaluate" in schema.get("properties", {})


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    """The repository's Snakefile, or a copy whose schema has the ``evaluate`` block."""
    if _schema_has_evaluate():
        return REPO / "Snakefile"
    root = tmp_path_factory.mktemp("workflow")
    shutil.copy2(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow")
    skip = {"Snakefile", "workflow", ".git", ".snakemake", ".venv", "results", "logs"}
    for entry in REPO.iterdir():  # models/, envs/, src/, ...: read by the rule files
        if entry.name not in skip:
            os.symlink(entry, root / entry.name)
    schema_path = root / "workflow" / "schemas" / "config.schema.yaml"
    schema = load_yaml(schema_path)
    schema["properties"].update(EVALUATE_SCHEMA)
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return root / "Snakefile"


def _schema_path(tmp_path: Path) -> Path:
    schema = load_yaml(REPO / "workflow" / "schemas" / "config.schema.yaml")
    schema["properties"].setdefault("evaluate", EVALUATE_SCHEMA["evaluate"])
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return path


def _on_skeleton(preset: Path, root: Path) -> dict:
    config = load_yaml(preset)
    for name, ds in config["datasets"].items():
        ds["bids_dir"] = str(make_skeleton(root / "bids" / name, name, ds))
    return config


# --------------------------------------------------------------------------- tests


def test_brainharmonix_presets_fine_tune_as_published(tmp_path):
    """Every preset's finetune_* rows train the Harmonizer (or F) with the published
    stage-2 recipe (docs/evaluation.md)."""
    for preset in PRESETS:
        config = load_yaml(preset)
        validate_config(config, _schema_path(tmp_path))
        ft = settings_from_mapping(config).finetune
        assert ft.train_encoder, preset.name
        assert (ft.epochs, ft.lrs, ft.layer_decay, ft.drop_path) == (50, (5e-4,), 0.65, 0.1)
        assert (ft.label_smoothing, ft.warmup_epochs, ft.min_lr) == (0.1, 5, 1e-6)
        assert (ft.batch_size, ft.weight_decay) == (16, 0.05), preset.name


def test_there_is_a_preset_per_paper_dataset():
    assert {p.stem for p in PRESETS} == {
        "abide1",
        "abide2",
        "adhd200",
        "ppmi",
        "adni",
        "hcpa",
        "camcan",
    }


def test_schema_fragment_defaults_equal_the_code_defaults(tmp_path):
    config = {"datasets": {"a": {"bids_dir": "x"}}}
    validate_config(config, _schema_path(tmp_path))
    defaults = settings_from_mapping({}).to_dict()
    for key, value in config["evaluate"].items():
        if key == "grids":
            assert value == {}
        else:
            assert value == defaults[key], key


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_validates_and_dry_runs_on_a_skeleton(preset, tmp_path, workflow_copy):
    config = _on_skeleton(preset, tmp_path)
    validate_config(json.loads(json.dumps(config)), _schema_path(tmp_path))
    settings = settings_from_mapping(config)  # tasks, cohorts and models are consistent
    from brainharmony.evaluate.harness import HARNESS

    assert set(settings.models) <= set(HARNESS)
    for task in settings.tasks:
        for ds in task.datasets:
            assert task.target in config["datasets"][ds]["phenotypes"], (ds, task.target)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(
        [
            snakemake_exe(),
            "-s",
            str(workflow_copy),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(path),
            "-n",
            "--quiet",
            "rules",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "ingest" in text
    counts = re.findall(r"^ingest\s+(\d+)\s*$", text, flags=re.M)  # the job-stats table
    assert counts, text[-2000:]
    n_ingest = int(counts[0])
    assert n_ingest == len(config["datasets"]), text[-2000:]
