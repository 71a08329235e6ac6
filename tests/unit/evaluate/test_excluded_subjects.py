"""Subjects the anatomy stage excluded: left out downstream and listed.

Small fake anatomy outputs (sidecars with ``Excluded`` true/false, tiny volumes) check
that the T1 volume shard skips an excluded T1w and records it, that a dataset whose
every T1w is excluded stops with a message naming it, that the evaluation leaves an
excluded subject out for every model with its reason, and that the report lists it
with its reason, QC metrics against the thresholds and its figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony.evaluate.data import FeatureTable, read_splits, subject_exclusions
from brainharmony.evaluate.protocol import evaluate_task, write_task_result
from brainharmony.evaluate.report import ReportBuilder, qc_against_thresholds
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.io import InputDataError
from brainharmony.packing import PackedVolumeDataset, pack_volumes, read_index, shard_info
from tests.unit.evaluate.test_protocol import (
    SMALL_GRIDS,
    TASKS,
    _labels,
    planted_cohort,
    planted_fc,
    write_split_dirs,
)

SPACE = "space-MNI152NLin2009cAsym"
REASON = "correlation with the template in its brain mask 0.412 < qc_min_ncc 0.5"
THRESHOLDS = {
    "MinNCCWithTemplateInBrain": 0.5,
    "MinMaskDiceWithTemplateMask": 0.8,
    "NativeBrainVolumeMLRange": [800.0, 2200.0],
    "TransformScaleFactorRange": [0.7, 1.4],
}


def fake_anat(results: Path, dataset: str, subject: str, reason: str = "") -> dict[str, Path]:
    """The anatomy outputs the later stages read, for one T1w (tiny volume, sidecars)."""
    folder = results / "anat" / dataset / f"sub-{subject}" / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    flag = {"Excluded": True, "ExclusionReason": reason} if reason else {}
    model = folder / f"sub-{subject}_{SPACE}_desc-model_T1w.nii.gz"
    value = 0.0 if reason else float(int(subject[-2:]))
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), value, np.float32), np.eye(4)), model)
    model.with_name(model.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"Description": "Model-ready T1w box", **flag})
    )
    metrics = {
        "NCCWithTemplateInBrain": 0.412 if reason else 0.93,
        "MaskDiceWithTemplateMask": 0.91,
        "NativeBrainVolumeML": 1450.0,
        "TransformScaleFactors": [1.01, 0.98, 1.02],
    }
    preproc = folder / f"sub-{subject}_{SPACE}_desc-preproc_T1w.json"
    preproc.write_text(json.dumps({"Metrics": metrics, "QCThresholds": THRESHOLDS, **flag}))
    figure = results / "anat" / dataset / "figures" / f"sub-{subject}_desc-reg_T1w.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    from brainharmony.evaluate.figures import _figure, png_bytes

    fig = _figure(1.0, 1.0)
    fig.subplots().imshow(np.full((4, 4), value))
    figure.write_bytes(png_bytes(fig))
    return {"model": model, "preproc": preproc, "figure": figure}


def _manifest(paths: dict[str, Path]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": list(paths),
            "session": "n/a",
            "age": [30.0 + i for i in range(len(paths))],
            "path": [str(p) for p in paths.values()],
        }
    )


# --------------------------------------------------------------------------- T1 shards


def test_volume_shard_leaves_out_an_excluded_t1w_and_lists_it(tmp_path):
    results = tmp_path / "results"
    models = {
        s: fake_anat(results, "dsA", s, REASON if s == "02" else "")["model"]
        for s in ("01", "02", "03")
    }
    shard = results / "multitr" / "dsA" / "dsA_T1w_volumes.npy"
    shard.parent.mkdir(parents=True)
    index = pack_volumes(_manifest(models), shard, shard.with_name("dsA_T1w_index.tsv"))
    assert index["subject"].tolist() == ["01", "03"]
    assert index["offset"].tolist() == [0, 1]
    assert index["age"].tolist() == [30.0, 32.0]  # the phenotypes of the kept rows
    data = np.load(shard)
    assert data.shape == (2, 4, 5, 6)
    assert data[0].max() == 1 and data[1].max() == 3
    info = shard_info(shard)
    assert info["Shape"] == [2, 4, 5, 6]
    assert info["ExcludedSources"] == [
        {"subject": "02", "session": "n/a", "path": str(models["02"]), "reason": REASON}
    ]
    assert read_index(shard.with_name("dsA_T1w_index.tsv"))["subject"].tolist() == ["01", "03"]


def test_every_t1w_excluded_stops_with_a_message_naming_the_dataset(tmp_path):
    results = tmp_path / "results"
    models = {s: fake_anat(results, "dsB", s, REASON)["model"] for s in ("01", "02")}
    shard = results / "multitr" / "dsB" / "dsB_T1w_volumes.npy"
    shard.parent.mkdir(parents=True)
    with pytest.raises(InputDataError, match="excluded every one of the 2 T1w") as err:
        pack_volumes(_manifest(models), shard, shard.with_name("dsB_T1w_index.tsv"))
    assert "dsB" in str(err.value) and REASON in str(err.value)
    assert not shard.exists() and not shard.with_name("dsB_T1w_index.tsv").exists()


def test_a_volume_index_without_rows_is_refused_by_training(tmp_path):
    shard = tmp_path / "dsC_T1w_volumes.npy"
    np.save(shard, np.zeros((0, 4, 5, 6), np.float16))
    empty = pd.DataFrame({"subject": [], "session": [], "offset": []})
    with pytest.raises(InputDataError, match="ExcludedSources"):
        PackedVolumeDataset(shard, empty)


# --------------------------------------------------------------------------- evaluation


def _series(root: Path, subject: str, run: int, reason: str = "") -> Path:
    path = root / f"sub-{subject}_task-rest_run-{run}_desc-denoised_timeseries.tsv"
    path.write_text("ROI_1\tROI_2\n" + ("" if reason else "0.1\t0.2\n"))
    flag = {"Excluded": True, "ExclusionReason": reason} if reason else {}
    path.with_suffix(".json").write_text(json.dumps({"RepetitionTime": 2.0, **flag}))
    return path


def test_subject_exclusions_come_from_the_run_sidecars(tmp_path):
    anat = f"anatomy excluded: {REASON}"
    paths = [
        _series(tmp_path, "01", 1, anat),
        _series(tmp_path, "01", 2, anat),
        _series(tmp_path, "02", 1, "too few frames left after censoring"),
        _series(tmp_path, "02", 2),  # one usable run: the subject stays
        _series(tmp_path, "03", 1),
    ]
    assert subject_exclusions(paths) == {"01": anat}


def _evaluated(tmp_path: Path):
    table = planted_cohort(24)
    fc = planted_fc(table)
    keep = fc.subjects != "s03"  # s03: no FC (e.g. an embedding model lacks it)
    fc = FeatureTable(fc.subjects[keep], fc.values[keep], fc.source)
    settings = settings_from_mapping(
        {"tasks": TASKS, "grids": SMALL_GRIDS, "models": ["null_model", "fc_ridge"]}
    )
    spec = settings.task("synth", "age")
    labels = _labels(table, tmp_path, "age", "regression")
    splits = [
        read_splits(p)
        for p in write_split_dirs(table, "age", "regression", tmp_path / "age", n_folds=3)
    ]
    exclusions = {"s05": f"anatomy excluded: {REASON}"}
    result = evaluate_task(spec, settings, labels, splits, {"fc": fc, "exclusions": exclusions})
    return result, settings


def test_an_excluded_subject_is_left_out_for_every_model_with_its_reason(tmp_path):
    result, _ = _evaluated(tmp_path)
    pred = result.predictions
    # s05 has FC and the null model needs none: left out all the same (one subject set)
    for model, rows in pred.groupby("model"):
        assert not {"s03", "s05"} & set(rows["subject"]), model
    assert result.info["SubjectsEvaluated"] == 22
    assert result.info["SubjectsLeftOut"] == {
        "s03": "no input for fc_ridge",
        "s05": f"anatomy excluded: {REASON}",
    }
    assert result.info["SubjectsWithoutInputs"] == {"fc_ridge": ["s03"]}


# --------------------------------------------------------------------------- report


def test_qc_against_thresholds_marks_the_failing_metric():
    metrics = {
        "NCCWithTemplateInBrain": 0.412,
        "MaskDiceWithTemplateMask": 0.91,
        "NativeBrainVolumeML": 3000.0,
        "TransformScaleFactors": [1.0, 0.98, 1.02],
    }
    out = qc_against_thresholds(metrics, THRESHOLDS)
    assert out["NCC in brain"] == "0.412 (min 0.5) FAIL"
    assert out["mask Dice"] == "0.91 (min 0.8)"
    assert out["brain volume (mL)"] == "3000 ([800, 2200]) FAIL"
    assert out["scale factors"] == "1, 0.98, 1.02 ([0.7, 1.4])"
    # a T1w that could not be processed has no metrics
    assert set(qc_against_thresholds({}, THRESHOLDS).values()) == {"n/a"}


def test_report_lists_the_excluded_t1w_and_the_subjects_left_out(tmp_path):
    results = tmp_path / "results"
    fake_anat(results, "dsA", "01")
    bad = fake_anat(results, "dsA", "02", REASON)
    result, settings = _evaluated(tmp_path)
    predictions = results / "eval" / "synth" / "age" / "predictions.tsv"
    write_task_result(result, predictions, settings)
    builder = ReportBuilder(results, predictions=predictions)
    anat = builder.section_anat()
    assert "T1ws excluded by the anatomy QC gate" in anat
    part = anat.split("T1ws excluded by the anatomy QC gate", 1)[1]
    assert "sub-02" in part and "sub-01" not in part.split("<h3>", 1)[0]
    assert "0.412 (min 0.5) FAIL" in part and "1450 ([800, 2200])" in part
    assert "qc_min_ncc 0.5" in part  # the reason
    assert "EXCLUDED: dsA: sub-02_desc-reg_T1w" in anat  # its figure, embedded
    assert anat.count("data:image/png;base64,") == 2  # + the kept T1w's figure
    assert bad["preproc"] in builder.inputs and bad["figure"] in builder.inputs
    shown = builder.section_predictions()
    assert "Subjects left out of the evaluation" in shown
    assert "s05" in shown and "anatomy excluded" in shown and "no input for fc_ridge" in shown
    assert "synth/age: 22" in shown
