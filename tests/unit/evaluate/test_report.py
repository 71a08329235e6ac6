"""The HTML report: self-contained, every section present, absent inputs said, errors contained.

:func:`synthetic_results` builds a small ``results/`` tree with every kind of input the
report reads; the browser test (tests/workflow/test_report_browser.py) uses it too.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from brainharmony.evaluate.figures import png_bytes
from brainharmony.evaluate.protocol import evaluate_task, write_task_result
from brainharmony.evaluate.report import build_report
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.evaluate.tables import make_tables
from tests.unit.evaluate.test_protocol import (
    SMALL_GRIDS,
    TASKS,
    planted_cohort,
    planted_fc,
    write_split_dirs,
)

SECTIONS = (
    "results",
    "tests",
    "predictions",
    "selection",
    "training",
    "ingest",
    "anat",
    "func",
    "geometry",
    "experts",
    "hubs",
    "provenance",
)


def _png(path: Path, seed: int = 0) -> None:
    from brainharmony.evaluate.figures import _figure

    fig = _figure(2.0, 1.5)
    fig.subplots().imshow(np.random.default_rng(seed).random((8, 8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))


def synthetic_results(root: Path, n_rois: int = 20) -> Path:
    """A ``results/`` tree with evaluation outputs and every QC input the report reads."""
    results = root / "results"
    table = planted_cohort(24)
    (root / "participants.tsv").parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    settings = settings_from_mapping(
        {"tasks": TASKS, "grids": SMALL_GRIDS, "models": ["null_model", "fc_ridge", "fc_logistic"]}
    )
    from brainharmony.evaluate.data import read_splits, subject_labels

    outs = []
    for spec in settings.tasks:
        labels = subject_labels([root / "participants.tsv"], spec.target, spec.type)[0]
        splits = [
            read_splits(p)
            for p in write_split_dirs(
                table, spec.target, spec.type, root / "splits" / spec.name, n_folds=3
            )
        ]
        res = evaluate_task(spec, settings, labels, splits, {"fc": planted_fc(table)})
        out = results / "eval" / spec.dataset / spec.name / "predictions.tsv"
        write_task_result(res, out, settings)
        outs.append(out)
    make_tables(outs, results / "eval" / "predictions.tsv", results / "tables")
    # training curves
    model_dir = results / "models" / "bh_f_demo"
    model_dir.mkdir(parents=True)
    with open(model_dir / "metrics.jsonl", "w") as fh:
        for step in range(0, 100, 5):
            fh.write(json.dumps({"step": step, "loss": 1.0 / (1 + step), "lr": 1e-3}) + "\n")
    # ingest
    ing = results / "ingest" / "synth"
    ing.mkdir(parents=True)
    pd.DataFrame({"subject": table["subject"], "tr": 2.0}).to_csv(
        ing / "scans.tsv", sep="\t", index=False
    )
    pd.DataFrame({"subject": ["x"], "reason": ["no T1w"]}).to_csv(
        ing / "excluded.tsv", sep="\t", index=False
    )
    # anatomy: sidecar with metrics + registration figure
    anat = results / "anat" / "synth" / "sub-s00" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-s00_space-MNI152NLin2009aAsym_desc-preproc_T1w.json").write_text(
        json.dumps({"Metrics": {"NCCWithTemplateInBrain": 0.91, "MaskDiceWithTemplateMask": 0.95}})
    )
    _png(results / "anat" / "synth" / "figures" / "sub-s00_desc-reg_T1w.png")
    # functional: denoised sidecar + QC figures
    func = results / "func" / "synth" / "sub-s00" / "func"
    func.mkdir(parents=True)
    stem = "sub-s00_task-rest"
    (func / f"{stem}_space-MNI_atlas-Schaefer400_desc-denoised_timeseries.json").write_text(
        json.dumps({"RepetitionTime": 2.0, "NumberOfVolumes": 100, "KeptVolumes": 80})
    )
    _png(func / f"{stem}_desc-fdtrace_bold.png", 1)
    _png(func / f"{stem}_atlas-Schaefer400_desc-fcmatrix_bold.png", 2)
    # geometry: a gradients table
    geo = results / "geometry"
    geo.mkdir(parents=True)
    rng = np.random.default_rng(0)
    grad = pd.DataFrame(rng.standard_normal((n_rois, 1)), columns=["g1"])
    grad.insert(0, "roi", [f"ROI_{i}" for i in range(n_rois)])
    grad.to_csv(geo / "atlas-Schaefer400_g-3_gradients.tsv", sep="\t", index=False)
    # RWMoE expert weights and hub attention
    pred_dir = results / "models" / "predictor_demo"
    pred_dir.mkdir(parents=True)
    pd.DataFrame(
        [
            {"roi": r + 1, "expert": e, "weight": rng.random()}
            for e in range(2)
            for r in range(n_rois)
        ]
    ).to_csv(pred_dir / "expert_weights.tsv", sep="\t", index=False)
    # the predictor-cv expert map: its TSV and figure beside the predictions
    cv_dir = results / "eval" / "synth" / "age" / "predictor"
    cv_dir.mkdir(parents=True, exist_ok=True)
    from brainharmony.evaluate.figures import expert_map_figure

    (cv_dir / "expert_weights.png").write_bytes(
        expert_map_figure(rng.dirichlet([1.0, 1.0], size=n_rois), "synth/age experts")
    )
    pd.DataFrame({"roi": range(n_rois), "attention": rng.random(n_rois)}).to_csv(
        results / "models" / "bh_f_demo" / "hub_attention.tsv", sep="\t", index=False
    )
    return results


def _sections(page: str) -> dict[str, str]:
    out = {}
    for key in SECTIONS:
        m = re.search(rf'<section id="{key}">(.*?)</section>', page, flags=re.S)
        assert m, f"section {key} missing"
        out[key] = m.group(1)
    return out


def test_report_with_nothing_says_so_for_every_section(tmp_path):
    out = build_report(tmp_path / "report" / "index.html", tmp_path / "results")
    page = out.read_text()
    sections = _sections(page)
    for key in SECTIONS[:-1]:
        assert 'class="absent"' in sections[key], key
    assert 'class="error"' not in page
    assert "git SHA" in sections["provenance"]


def test_full_report_is_self_contained_and_complete(tmp_path):
    results = synthetic_results(tmp_path)
    centroids = np.random.default_rng(0).normal(0, 40, (20, 3))
    config = tmp_path / "config.yaml"
    config.write_text("datasets:\n  synth: {bids_dir: /data/synth}\n")
    out = build_report(
        results / "report" / "index.html", results, configs=[config], centroids=centroids
    )
    page = out.read_text()
    sections = _sections(page)
    assert 'class="error"' not in page, re.findall(r'class="error">(.*?)<', page)
    for key in SECTIONS:
        assert 'class="absent"' not in sections[key], key
    # no external resource: every image is an inline PNG that decodes
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 10
    for b64 in images:
        raw = base64.b64decode(b64)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 200
    assert "Nadeau &amp; Bengio" in sections["results"]
    assert "FC ridge" in sections["results"] and "<b>" in sections["results"]
    assert sections["predictions"].count("<img") == 3 + 1  # 3 confusion matrices + 1 scatter
    assert "NCCWithTemplateInBrain" in sections["anat"]
    # the predictor's ROI x expert map is embedded with its path, before the brain maps
    assert "eval/synth/age/predictor/expert_weights.png" in sections["experts"]
    first = re.search(r'<img src="data:image/png;base64,([^"]+)"', sections["experts"])
    assert (
        first
        and base64.b64decode(first.group(1))
        == (results / "eval" / "synth" / "age" / "predictor" / "expert_weights.png").read_bytes()
    )
    assert "datasets:" in sections["provenance"] and "numpy" in sections["provenance"]


def test_a_broken_input_is_contained_in_its_section(tmp_path):
    results = tmp_path / "results"
    (results / "models" / "m").mkdir(parents=True)
    (results / "models" / "m" / "metrics.jsonl").write_text("{not json\n")
    (results / "models" / "m" / "expert_weights.tsv").write_text("expert\tweight\n0\t1\n")
    page = build_report(results / "report.html", results).read_text()
    sections = _sections(page)
    assert 'class="error"' in sections["training"] and "JSONDecodeError" in sections["training"]
    assert "no &#x27;roi&#x27; column" in sections["experts"]
    assert 'class="absent"' in sections["results"]
