"""scripts/offline_probe.py: the exploratory probe quoted in docs/evaluation.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def offline_probe():
    return load_script("offline_probe")


def _cohort(tmp_path: Path, signal: float) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    n = 40
    subjects = [f"{i:02d}" for i in range(1, n + 1)]
    is_patient = np.tile([0, 1], n // 2)
    age = rng.uniform(20, 80, n)
    noise = rng.normal(size=(n, 6))
    features = noise.copy()
    features[:, 0] += signal * (is_patient - 0.5) * 4
    features[:, 1] += signal * (age - age.mean()) / age.std() * 4
    # two rows for the first subject: rows of one subject are averaged
    rows = np.vstack([features, features[:1] + 0.01])
    labels = np.array(subjects + subjects[:1])
    np.savez(tmp_path / "emb.npz", subject=labels, features=rows)
    pd.DataFrame(
        {"participant_id": [f"sub-{s}" for s in subjects], "age": age, "is_patient": is_patient}
    ).to_csv(tmp_path / "phenotypes.tsv", sep="\t", index=False)
    return tmp_path / "emb.npz", tmp_path / "phenotypes.tsv"


def test_probe_finds_a_planted_signal_and_not_an_absent_one(offline_probe, tmp_path):
    """Signal 1: both phenotypes found; signal 0 (the same noise alone): near chance."""
    emb, pheno = _cohort(tmp_path, signal=1.0)
    table = pd.read_csv(pheno, sep="\t")
    table.index = table["participant_id"].str.removeprefix("sub-")
    features = offline_probe.subject_features(emb)
    assert features.shape == (40, 6)
    auc, bacc, mae, sd = offline_probe.probe(features, table, folds=5, repeats=2)
    assert auc > 0.9 and bacc > 0.8 and mae < 0.5 * sd

    (tmp_path / "none").mkdir()
    emb0, _ = _cohort(tmp_path / "none", signal=0.0)
    auc0, _, mae0, sd0 = offline_probe.probe(
        offline_probe.subject_features(emb0), table, folds=5, repeats=2
    )
    assert auc0 < 0.75 and mae0 > 0.7 * sd0


def test_cli_prints_one_line_per_file_and_refuses_unknown_subjects(offline_probe, tmp_path, capsys):
    emb, pheno = _cohort(tmp_path, signal=1.0)
    assert offline_probe.main(["--phenotypes", str(pheno), "--repeats", "1", str(emb)]) == 0
    out = capsys.readouterr().out
    assert "40 subjects x 6 features" in out and "diagnosis AUC" in out
    table = pd.read_csv(pheno, sep="\t").iloc[1:]
    table.to_csv(pheno, sep="\t", index=False)
    with pytest.raises(SystemExit, match="subjects without phenotypes"):
        offline_probe.main(["--phenotypes", str(pheno), str(emb)])
