"""The tiny demo preset: BIDS layout, validator, headers, truth consistency, bytes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony.demo import generate as gen
from brainharmony.demo.acquisition import presets
from brainharmony.demo.truth import load_run_series
from tests.unit.conftest import TINY_SEED

SPECS = {spec.name: spec for spec in presets()["tiny"]}


def _truth_row(root: Path, dataset: str, level: str) -> pd.Series:
    runs = pd.read_csv(
        root / f"{dataset}-truth" / "runs.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    return runs[runs["motion_level"] == level].iloc[0]


def _sub_dir(row: pd.Series) -> Path:
    path = Path(row["participant_id"])
    return path / f"ses-{row['session']}" if row["session"] != "n/a" else path


def test_layout_of_both_datasets(tiny_demo: Path) -> None:
    assert sorted(p.name for p in tiny_demo.iterdir()) == [
        "demoA",
        "demoA-truth",
        "demoB",
        "demoB-truth",
    ]
    a = tiny_demo / "demoA"
    for name in ("dataset_description.json", "participants.tsv", "participants.json", "README"):
        assert (a / name).is_file()
    assert len(list(a.glob("sub-*/anat/sub-*_T1w.nii.gz"))) == SPECS["demoA"].n_subjects
    assert len(list(a.glob("sub-*/func/sub-*_task-rest_bold.nii.gz"))) == SPECS["demoA"].n_subjects
    b = tiny_demo / "demoB"
    # Every subject has ses-1; at least one has a second session with its own T1w.
    assert len(list(b.glob("sub-*/ses-1/func/*_bold.nii.gz"))) == SPECS["demoB"].n_subjects
    second = list(b.glob("sub-*/ses-2/func/sub-*_ses-2_task-rest_bold.nii.gz"))
    assert second and all((p.parent.parent / "anat").is_dir() for p in second)
    description = json.loads((a / "dataset_description.json").read_text())
    assert description["BIDSVersion"] in ("1.9.0", "1.10.0")
    assert description["DatasetType"] == "raw"
    assert description["GeneratedBy"][0]["Name"] == "brainharmony"


def test_participants_table(tiny_demo: Path) -> None:
    for name, spec in SPECS.items():
        table = pd.read_csv(
            tiny_demo / name / "participants.tsv", sep="\t", dtype=str, keep_default_na=False
        )
        columns = ["participant_id", "age", "sex", "fluid_intelligence", "diagnosis"]
        assert list(table.columns) == columns
        assert len(table) == spec.n_subjects
        assert set(table["diagnosis"]) <= {"CN", "PT", "n/a"}
        truth = pd.read_csv(tiny_demo / f"{name}-truth" / "phenotypes.tsv", sep="\t")
        withheld = truth["withheld_fluid_intelligence"].to_numpy(dtype=bool)
        assert (table["fluid_intelligence"][withheld] == "n/a").all()
        assert (table["fluid_intelligence"][~withheld] != "n/a").all()
    assert (
        (
            pd.read_csv(
                tiny_demo / "demoB" / "participants.tsv", sep="\t", dtype=str, keep_default_na=False
            )
            == "n/a"
        )
        .any()
        .any()
    )


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bold_headers_and_sidecars(tiny_demo: Path, name: str) -> None:
    spec = SPECS[name]
    for path in sorted((tiny_demo / name).glob("sub-*/**/func/*_bold.nii.gz")):
        img = nib.load(path)
        assert img.shape == (*spec.bold_shape, spec.n_volumes)
        assert img.get_data_dtype() == np.int16
        assert img.header.get_zooms()[3] == pytest.approx(spec.tr)
        assert img.header.get_xyzt_units() == ("mm", "sec")
        assert "".join(nib.aff2axcodes(img.affine)) == spec.bold_orientation
        np.testing.assert_allclose(img.header.get_zooms()[:3], spec.bold_voxel_mm)
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert meta["RepetitionTime"] == spec.tr
        assert meta["TaskName"] == "rest"
        assert meta["SliceEncodingDirection"] == "k"
        assert {"PhaseEncodingDirection", "EchoTime"} <= set(meta)
        timing = np.asarray(meta["SliceTiming"])
        assert timing.shape == (spec.bold_shape[2],)
        assert timing.min() == 0.0 and timing.max() < spec.tr
    for path in sorted((tiny_demo / name).glob("sub-*/**/anat/*_T1w.nii.gz")):
        img = nib.load(path)
        assert img.shape == spec.t1_shape
        assert img.get_data_dtype() == np.int16
        assert "".join(nib.aff2axcodes(img.affine)) == spec.t1_orientation


def _validator() -> str | None:
    exe = Path(sys.executable).parent / "bids-validator-deno"
    return str(exe) if exe.exists() else shutil.which("bids-validator-deno")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bids_validator_reports_no_errors(tiny_demo: Path, name: str) -> None:
    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    proc = subprocess.run(
        [exe, str(tiny_demo / name), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert not errors, json.dumps(errors[:5], indent=1)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_truth_folder_contents(tiny_demo: Path) -> None:
    truth = tiny_demo / "demoB-truth"
    for name in ("README.md", "effects.json", "generation.json", "phenotypes.tsv", "runs.tsv"):
        assert (truth / name).is_file()
    generation = json.loads((truth / "generation.json").read_text())
    assert generation["seed"] == TINY_SEED and generation["preset"] == "tiny"
    effects = json.loads((truth / "effects.json").read_text())
    assert effects["effect_sizes"]["age_long_range"] > 0
    assert "Default" in json.dumps(effects["effects"]["diagnosis"])
    phenotypes = pd.read_csv(truth / "phenotypes.tsv", sep="\t")
    assert {"age", "z_age", "is_patient", "thinning_mm", "motion_level"} <= set(phenotypes)
    # Atrophy grows with age.
    assert np.corrcoef(phenotypes["age"], phenotypes["thinning_mm"])[0, 1] > 0.5


def test_truth_bold_rebuilds_from_the_neural_series(tiny_demo: Path) -> None:
    row = _truth_row(tiny_demo, "demoA", "clean")
    truth_dir = tiny_demo / "demoA-truth" / _sub_dir(row)
    fine, timing = load_run_series(truth_dir, row["stem"])
    from brainharmony.demo.dynamics import sample_at

    tr = timing["RepetitionTime"]
    onsets = np.arange(timing["n_volumes"]) * tr
    stored = np.load(truth_dir / f"{row['stem']}_desc-bold_timeseries.npy")
    assert stored.shape == (timing["n_volumes"], 400)
    rebuilt = sample_at(fine, timing["t0"], timing["dt"], onsets)
    np.testing.assert_allclose(rebuilt, stored, atol=1e-3 * stored.std())
    assert 0.5 < stored.std(axis=0).mean() < 3.0  # percent signal change
    neural = np.load(truth_dir / f"{row['stem']}_desc-neural_timeseries.npy")
    assert neural.shape[0] * timing["dt"] > timing["n_volumes"] * tr


def _center_of_mass_track(img: nib.Nifti1Image) -> np.ndarray:
    data = img.get_fdata(dtype=np.float32)
    weights = np.clip(data - 3.0 * np.percentile(data, 30), 0, None).reshape(-1, data.shape[3])
    ijk = np.indices(data.shape[:3]).reshape(3, -1).T
    xyz = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    return (weights.T @ xyz) / weights.sum(axis=0)[:, None]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_motion_in_the_images_matches_the_truth(tiny_demo: Path, name: str) -> None:
    row = _truth_row(tiny_demo, name, "high")
    sub = _sub_dir(row)
    img = nib.load(tiny_demo / name / sub / "func" / f"{row['stem']}_bold.nii.gz")
    com = _center_of_mass_track(img)
    mats = np.load(tiny_demo / f"{name}-truth" / sub / f"{row['stem']}_desc-motion_xfm.npy")
    predicted = mats[:, :3, :3] @ com[0] + mats[:, :3, 3] - com[0]
    measured = com - com[0]
    assert np.abs(predicted).max() > 0.3  # the subject does move
    r = np.corrcoef(measured.ravel(), predicted.ravel())[0, 1]
    slope = measured.ravel() @ predicted.ravel() / (predicted.ravel() @ predicted.ravel())
    assert r > 0.9 and 0.7 < slope < 1.3
    params = pd.read_csv(
        tiny_demo / f"{name}-truth" / sub / f"{row['stem']}_desc-motion_timeseries.tsv", sep="\t"
    )
    assert list(params.columns[:6]) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    assert (params["framewise_displacement"] > 0.5).sum() >= 1


def _voxel_labels(img: nib.Nifti1Image, pose: np.ndarray) -> np.ndarray:
    """Schaefer label (3 mm atlas) under each voxel centre, through the head pose."""
    from brainharmony.atlas import schaefer400_volume

    atlas, _ = schaefer400_volume(3.0)
    labels = np.asarray(atlas.dataobj)
    ijk = np.indices(img.shape[:3]).reshape(3, -1).T
    world = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    mni = world @ np.linalg.inv(pose)[:3, :3].T + np.linalg.inv(pose)[:3, 3]
    idx = np.rint((mni - atlas.affine[:3, 3]) / np.diag(atlas.affine)[:3]).astype(int)
    inside = np.all((idx >= 0) & (idx < labels.shape), axis=1)
    out = np.zeros(len(idx), dtype=int)
    out[inside] = labels[tuple(idx[inside].T)]
    return out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_parcel_signals_in_the_images_match_the_truth(tiny_demo: Path, name: str) -> None:
    """Voxels of a parcel carry that parcel's truth signal (and not another's)."""
    row = _truth_row(tiny_demo, name, "clean")
    sub = _sub_dir(row)
    truth_dir = tiny_demo / f"{name}-truth" / sub
    img = nib.load(tiny_demo / name / sub / "func" / f"{row['stem']}_bold.nii.gz")
    meta = json.loads((truth_dir / f"{row['stem']}_desc-bold_truth.json").read_text())
    labels = _voxel_labels(img, np.asarray(meta["bold_pose_mni_to_scanner"]))
    series = img.get_fdata(dtype=np.float32).reshape(-1, img.shape[3])
    truth = np.load(truth_dir / f"{row['stem']}_desc-bold_timeseries.npy")
    parcels = [p for p in range(1, 401) if (labels == p).sum() >= 2]
    assert len(parcels) > 350
    n = img.shape[3]
    t = np.linspace(-1, 1, n)
    confounds = np.column_stack([np.ones(n), t, t**2, t**3, series[labels > 0].mean(axis=0)])

    def residual(y: np.ndarray) -> np.ndarray:
        r = y - confounds @ np.linalg.lstsq(confounds, y, rcond=None)[0]
        return (r - r.mean(0)) / r.std(0)

    measured = residual(np.column_stack([series[labels == p].mean(axis=0) for p in parcels]))
    reference = residual(truth[:, np.asarray(parcels) - 1])
    corr = measured.T @ reference / n
    matched = np.diag(corr).mean()
    mismatched = (corr.sum() - np.trace(corr)) / (corr.size - len(parcels))
    assert matched > 0.3 and abs(mismatched) < 0.1
    assert (corr.argmax(axis=1) == np.arange(len(parcels))).mean() > 0.4


def test_t1_contrast_and_head_pose(tiny_demo: Path) -> None:
    """WM > GM in the T1w when looked up through the stored pose, less so without it."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    t1 = nib.load(tiny_demo / "demoB" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz")
    record = json.loads(
        (tiny_demo / "demoB-truth/sub-01/ses-1/sub-01_ses-1_desc-anat_truth.json").read_text()
    )
    np.testing.assert_allclose(record["t1w_affine"], t1.affine, atol=1e-5)
    gm_img, wm_img = load_mni152_gm_template(2), load_mni152_wm_template(2)
    gm, wm = gm_img.get_fdata(), wm_img.get_fdata()
    data = np.asarray(t1.dataobj, dtype=float).reshape(-1)
    ijk = np.indices(t1.shape).reshape(3, -1).T
    world = ijk @ t1.affine[:3, :3].T + t1.affine[:3, 3]

    def ratio(pose: np.ndarray) -> float:
        inv = np.linalg.inv(pose)
        mni = world @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint((mni - gm_img.affine[:3, 3]) / 2.0).astype(int)
        ok = np.all((idx >= 0) & (idx < gm.shape), axis=1)
        g = np.zeros(len(idx))
        w = np.zeros(len(idx))
        g[ok], w[ok] = gm[tuple(idx[ok].T)], wm[tuple(idx[ok].T)]
        return data[w > 0.9].mean() / data[g > 0.7].mean()

    true_ratio = ratio(np.asarray(record["head_pose_mni_to_scanner"]))
    assert true_ratio > 1.4
    assert true_ratio > ratio(np.eye(4)) + 0.1


def _digests(root: Path, pattern: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob(pattern))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_demo: Path, tmp_path: Path) -> None:
    gen.generate_demo(tmp_path / "same", "tiny", TINY_SEED, datasets=["demoB"], max_subjects=1)
    gen.generate_demo(tmp_path / "other", "tiny", TINY_SEED + 1, datasets=["demoB"], max_subjects=1)
    for folder in ("demoB", "demoB-truth"):
        reference = _digests(tiny_demo / folder, "sub-01/**/*")
        assert len(reference) >= 4
        assert _digests(tmp_path / "same" / folder, "sub-01/**/*") == reference
        other = _digests(tmp_path / "other" / folder, "sub-01/**/*")
        changed = [
            k for k in reference if other.get(k) != reference[k] and k.endswith((".gz", ".npy"))
        ]
        assert len(changed) == len([k for k in reference if k.endswith((".gz", ".npy"))])


def test_failed_generation_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(gen, "_simulate_subject", boom)
    (tmp_path / ".demoA.left-over.tmp").mkdir()  # from an earlier, killed run
    with pytest.raises(RuntimeError, match="simulated crash"):
        gen.generate_demo(tmp_path, "tiny", 1, datasets=["demoA"], n_jobs=1)
    assert list(tmp_path.iterdir()) == []


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        gen.generate_demo(tmp_path, "huge")
    with pytest.raises(ValueError, match="demoC"):
        gen.generate_demo(tmp_path, "tiny", datasets=["demoC"])
    with pytest.raises(ValueError, match="seed"):
        gen.generate_demo(tmp_path, "tiny", seed=-1)


def test_cli_forwards_its_arguments(tmp_path: Path, monkeypatch) -> None:
    import argparse

    from brainharmony.pipelines import demo as cli

    seen = {}

    def fake(out, **kwargs):
        seen.update(out=out, **kwargs)
        return {}

    monkeypatch.setattr(gen, "generate_demo", fake)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--preset", "tiny", "--datasets", "demoB"])
    assert cli.run(args) == 0
    assert seen == {
        "out": str(tmp_path),
        "preset": "tiny",
        "seed": 20251122,
        "datasets": ["demoB"],
        "n_jobs": None,
    }
    defaults = parser.parse_args(["--out", "x"])
    assert defaults.preset == "default" and defaults.datasets is None
