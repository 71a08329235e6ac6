"""scripts/fc_fidelity.py: truth vs denoised FC of a demo dataset (docs/demo-data.md)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainharmony.func.confounds import build_confounds
from brainharmony.io import InputDataError, sidecar_path, write_json, write_tsv
from brainharmony.series_files import write_series
from tests.conftest import load_script


@pytest.fixture(scope="module")
def fc_fidelity():
    return load_script("fc_fidelity")


def _dataset(root: Path, noise: float, n: int = 20, n_rois: int = 12) -> tuple[Path, Path]:
    """Patients have ROIs 0-3 coupled; the denoised copy adds white noise of SD ``noise``.

    Each run also has parcel means before denoising (``desc-preproc``, TR 2 s): the truth
    plus a white-matter signal shared by every ROI, which is its confounds table's
    ``white_matter`` column.
    """
    rng = np.random.default_rng(0)
    truth, func = root / "demoX-truth", root / "func" / "demoX"
    rows = []
    for i in range(n):
        sub, patient = f"{i + 1:02d}", i % 2
        x = rng.normal(size=(120, n_rois))
        if patient:
            x[:, :4] += 1.5 * rng.normal(size=(120, 1))
        stem = f"sub-{sub}_ses-1_task-rest"
        write_series(truth / f"sub-{sub}" / "ses-1" / f"{stem}_desc-bold_timeseries.npy", x)
        noisy = x + noise * rng.normal(size=x.shape)
        noisy[5] = np.nan  # a censored frame
        name = f"{stem}_space-MNI_atlas-X_desc-denoised_timeseries.tsv"
        write_series(func / f"sub-{sub}" / "ses-1" / "func" / name, noisy)
        wm = 8.0 * rng.normal(size=120)
        preproc = func / f"sub-{sub}" / "ses-1" / "func" / name.replace("denoised", "preproc")
        write_series(preproc, 100.0 + x + wm[:, None])
        write_json(sidecar_path(preproc), {"RepetitionTime": 2.0})
        table = build_confounds(
            np.zeros((120, 6)),
            {
                "white_matter": wm,
                "csf": rng.normal(size=120),
                "global_signal": rng.normal(size=120),
            },
        )
        write_tsv(preproc.parent / f"{stem}_desc-confounds_timeseries.tsv", table)
        rows.append({"participant_id": f"sub-{sub}", "is_patient": patient, "age": 20 + i})
    pd.DataFrame(rows).to_csv(truth / "phenotypes.tsv", sep="\t", index=False)
    return truth, func


def test_agreement_falls_with_noise_and_the_diagnosis_is_found(fc_fidelity, tmp_path):
    truth, func = _dataset(tmp_path / "clean", noise=0.1)
    a, b = fc_fidelity.read_fc(truth, func)
    clean = fc_fidelity.edge_agreement(a, b)
    assert len(clean) == 20 and clean.min() > 0.95
    truth_n, func_n = _dataset(tmp_path / "noisy", noise=3.0)
    noisy = fc_fidelity.edge_agreement(*fc_fidelity.read_fc(truth_n, func_n))
    assert noisy.mean() < clean.mean() - 0.3
    y = np.arange(20) % 2
    auc, bacc = fc_fidelity.diagnosis_cv(a.take(list(clean.index)), y, folds=4, repeats=2)
    assert auc > 0.95 and bacc > 0.9


def test_cli_reports_and_names_missing_inputs(fc_fidelity, tmp_path, capsys):
    truth, func = _dataset(tmp_path, noise=0.5)
    args = ["--truth", str(truth), "--denoised", str(func), "--folds", "4", "--repeats", "1"]
    assert fc_fidelity.main(args) == 0
    out = capsys.readouterr().out
    assert "20 subjects: truth vs denoised FC" in out
    assert "diagnosis from truth FC" in out and "diagnosis from denoised FC" in out
    assert "age from truth FC (1 x 4-fold ridge): MAE" in out
    expected = re.escape("nothing: no sub-*/**/*_desc-denoised_timeseries.tsv series")
    with pytest.raises(SystemExit, match=expected):
        fc_fidelity.main(["--truth", str(truth), "--denoised", str(tmp_path / "nothing")])


def test_redenoising_with_the_right_confounds_recovers_the_truth(fc_fidelity, tmp_path):
    truth, func = _dataset(tmp_path, noise=0.5)
    truth_fc = fc_fidelity.read_fc(truth, func)[0]
    cleaned = fc_fidelity.edge_agreement(truth_fc, fc_fidelity.redenoised_fc(func, "2P"))
    raw = fc_fidelity.edge_agreement(truth_fc, fc_fidelity.redenoised_fc(func, "none"))
    assert len(cleaned) == 20
    assert cleaned.mean() > 0.6 and cleaned.mean() > raw.mean() + 0.2  # 0.69 vs 0.39


def test_cli_compares_strategies_and_names_a_missing_confounds_table(fc_fidelity, tmp_path, capsys):
    truth, func = _dataset(tmp_path, noise=0.5)
    args = ["--truth", str(truth), "--denoised", str(func), "--folds", "4", "--repeats", "1"]
    assert fc_fidelity.main([*args, "--strategies", "2P", "none"]) == 0
    out = capsys.readouterr().out
    assert "re-denoised with 2P: truth vs denoised FC" in out
    assert "diagnosis from none re-denoised FC" in out
    gone = sorted(func.glob("sub-03/**/*_desc-confounds_timeseries.tsv"))[0]
    gone.unlink()
    with pytest.raises(InputDataError, match="confounds table not found"):
        fc_fidelity.redenoised_fc(func, "2P")


def test_age_cv_recovers_a_linear_age_signal(fc_fidelity):
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, size=60)
    x = rng.normal(size=(60, 200))
    x[:, :20] += 0.1 * (age[:, None] - 50)  # 20 features carry age, SD about 1.7
    mae, sd = fc_fidelity.age_cv(x, age, folds=5, repeats=2)
    shuffled, _ = fc_fidelity.age_cv(x, rng.permutation(age), folds=5, repeats=2)
    assert mae < 0.3 * age.std() < shuffled and sd >= 0
