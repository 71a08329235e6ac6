"""The native anat backend on the tiny demo, against the demo's planted truth.

Truth (``<dataset>-truth/README.md``): each session's ``*_desc-anat_truth.json`` holds
``head_pose_mni_to_scanner`` ``P`` (``x_scanner = P @ x_mni``); the subject's brain
is nilearn's MNI152 template brain (mask: template > 0.2, holes filled), so the true
brain mask in T1w space is that mask carried through ``P``.

Metrics: Dice of the written T1w-space brain mask with the true one; registration
error = mean distance, over the template's brain voxels at the working resolution,
between where the fitted and the true transforms send them, in voxels of that grid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from brainharmony.anat.derivatives import AnatPaths, anat_paths, dice
from brainharmony.anat.images import FLIP
from brainharmony.anat.pipeline import run_anat
from brainharmony.anat.settings import AnatSettings
from brainharmony.anat.templates import load_template
from brainharmony.pipelines import anat as anat_cli

RESOLUTION_MM = 2
#: The commit recorded in sidecars during these tests (see ``native_runs``).
PINNED_SHA = "0" * 40
SETTINGS = AnatSettings(resolution_mm=RESOLUTION_MM)
#: (dataset, subject, session): demoA is stored RAS-like at 2 mm, demoB LPS at 2.2 mm.
CASES = [("demoA", "01", None), ("demoB", "01", "1")]


def _stem(subject: str, session: str | None) -> tuple[str, str]:
    folder = f"sub-{subject}" + (f"/ses-{session}" if session else "")
    return folder, f"sub-{subject}" + (f"_ses-{session}" if session else "")


def t1w_path(demo: Path, dataset: str, subject: str, session: str | None) -> Path:
    folder, stem = _stem(subject, session)
    return demo / dataset / folder / "anat" / f"{stem}_T1w.nii.gz"


def true_pose(demo: Path, dataset: str, subject: str, session: str | None) -> np.ndarray:
    """``P``: template (MNI) world -> scanner world, RAS mm."""
    folder, stem = _stem(subject, session)
    truth = demo / f"{dataset}-truth" / folder / f"{stem}_desc-anat_truth.json"
    return np.asarray(json.loads(truth.read_text())["head_pose_mni_to_scanner"], float)


def true_brain_mask(reference: nib.Nifti1Image, pose: np.ndarray) -> np.ndarray:
    """The template brain (1 mm, > 0.2, holes filled) carried by ``pose`` onto a grid."""
    tpl = load_template("MNI152NLin2009aAsym", 1)
    brain = ndi.binary_fill_holes(np.asarray(tpl.image.dataobj) > 0.2).astype(np.float32)
    vox = np.linalg.inv(tpl.affine) @ np.linalg.inv(pose) @ reference.affine
    ijk = np.indices(reference.shape[:3]).reshape(3, -1)
    soft = ndi.map_coordinates(brain, vox[:3, :3] @ ijk + vox[:3, 3:4], order=1)
    return soft.reshape(reference.shape[:3]) >= 0.5


def sidecar(paths: AnatPaths) -> dict:
    return json.loads(
        paths.preproc.with_name(paths.preproc.name.replace(".nii.gz", ".json")).read_text()
    )


def registration_error_voxels(paths: AnatPaths, pose: np.ndarray) -> float:
    """Mean displacement of template brain voxels (working grid) vs the true pose, in voxels."""
    tpl = load_template("MNI152NLin2009aAsym", RESOLUTION_MM)
    pts = nib.affines.apply_affine(tpl.affine, np.argwhere(np.asarray(tpl.mask.dataobj) > 0))
    # Read the transform back from the ITK file (what the functional stage will use).
    tx = sitk.ReadTransform(str(paths.xfm_to_template))
    fitted = np.array([tx.TransformPoint(tuple(FLIP @ p)) for p in pts[::7]]) @ FLIP
    error_mm = np.linalg.norm(fitted - nib.affines.apply_affine(pose, pts[::7]), axis=1)
    return float(error_mm.mean() / RESOLUTION_MM)


def file_digests(paths: AnatPaths) -> dict[str, str]:
    files = [*paths.files()]
    files += [
        p.with_name(p.name.replace(".nii.gz", ".json")) for p in files if p.name.endswith(".nii.gz")
    ]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def native_runs(tiny_demo, tmp_path_factory):
    """The native backend on one demoA and one demoB T1w (shared by the tests below)."""
    out = tmp_path_factory.mktemp("anat-native")
    runs = {}
    # Sidecars record the checkout's commit; others may commit while the tests run.
    with mock.patch("brainharmony.io.git_sha", return_value=PINNED_SHA):
        for dataset, subject, session in CASES:
            paths = run_anat(
                t1w_path(tiny_demo, dataset, subject, session),
                out / dataset,
                subject,
                session,
                settings=SETTINGS,
            )
            runs[dataset] = (paths, true_pose(tiny_demo, dataset, subject, session))
    return runs


@pytest.mark.parametrize("dataset", [c[0] for c in CASES])
def test_brain_mask_dice_against_truth(native_runs, dataset):
    paths, pose = native_runs[dataset]
    mask_img = nib.load(paths.native_mask)
    truth = true_brain_mask(mask_img, pose)
    score = dice(np.asarray(mask_img.dataobj) > 0, truth)
    assert score >= 0.95, score


@pytest.mark.parametrize("dataset", [c[0] for c in CASES])
def test_registration_error_within_one_voxel(native_runs, dataset):
    paths, pose = native_runs[dataset]
    error = registration_error_voxels(paths, pose)
    assert error <= 1.0, error
    # The sidecar's RAS matrix says the same as the ITK file.
    side = sidecar(paths)
    tx = sitk.ReadTransform(str(paths.xfm_to_template))
    point = np.array([10.0, -20.0, 30.0])
    ras = np.asarray(side["Transforms"]["TemplateToT1wRAS"])
    np.testing.assert_allclose(
        ras[:3, :3] @ point + ras[:3, 3],
        FLIP @ np.asarray(tx.TransformPoint(tuple(FLIP @ point))),
        atol=1e-6,
    )
    inverse = sitk.ReadTransform(str(paths.xfm_from_template))
    back = np.asarray(inverse.TransformPoint(tx.TransformPoint(tuple(point))))
    np.testing.assert_allclose(back, point, atol=1e-6)


def test_outputs_shapes_and_sidecar(native_runs):
    paths, _ = native_runs["demoB"]
    tpl = load_template("MNI152NLin2009aAsym", RESOLUTION_MM)
    preproc = nib.load(paths.preproc)
    assert preproc.shape == tpl.shape and np.allclose(preproc.affine, tpl.affine)
    assert preproc.get_data_dtype() == np.float32
    model = nib.load(paths.model)
    assert model.shape == (80, 96, 80) and model.get_data_dtype() == np.float32
    data = np.asarray(model.dataobj)
    brain = data != 0
    assert abs(data[brain].mean()) < 1e-3 and data[brain].std() == pytest.approx(1, abs=1e-3)
    native = nib.load(paths.native_preproc)
    assert nib.aff2axcodes(native.affine) == ("R", "A", "S")
    side = sidecar(paths)
    assert side["Input"]["InputOrientation"] == "LPS" and side["Input"]["Reoriented"]
    assert side["SpatialReference"] == "MNI152NLin2009aAsym"
    assert side["Provenance"]["Step"] == "anat-native"
    assert side["Metrics"]["NCCWithTemplateInBrain"] > 0.8
    png = paths.figure.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rerun_through_the_cli_gives_identical_files(native_runs, tiny_demo, tmp_path):
    """The CLI, reading the template from the resource files the workflow's
    anat_templates rule writes, gives the files the in-process template gave."""
    from brainharmony import cli

    first, _ = native_runs["demoA"]
    templates = tmp_path / "templates"
    assert cli.main(["templates", "--out-dir", str(templates)]) == 0
    parser = argparse.ArgumentParser()
    anat_cli.add_arguments(parser)
    dataset_dir = tmp_path / "demoA"
    args = parser.parse_args(
        [
            "--t1w",
            str(t1w_path(tiny_demo, "demoA", "01", None)),
            "--out-dir",
            str(dataset_dir),
            "--subject",
            "01",
            "--resolution-mm",
            str(RESOLUTION_MM),
            "--template-dir",
            str(templates),
        ]
    )
    with mock.patch("brainharmony.io.git_sha", return_value=PINNED_SHA):
        assert anat_cli.run(args) == 0
    second = anat_paths(dataset_dir, "01", None, SETTINGS.template)
    assert file_digests(second) == file_digests(first)


def test_template_resource_reads_back_the_same_arrays_and_refuses_damage(tmp_path):
    from brainharmony.anat.templates import resource_files, write_resource
    from brainharmony.io import InputDataError

    path = write_resource(tmp_path, resolution_mm=2)
    assert path == resource_files(tmp_path, "MNI152NLin2009aAsym", 2)
    ref = load_template("MNI152NLin2009aAsym", 2)
    got = load_template("MNI152NLin2009aAsym", 2, str(tmp_path))
    np.testing.assert_array_equal(np.asarray(got.image.dataobj), np.asarray(ref.image.dataobj))
    np.testing.assert_array_equal(np.asarray(got.mask.dataobj), np.asarray(ref.mask.dataobj))
    assert got.mask.get_data_dtype() == np.uint8 and got.source == ref.source
    np.testing.assert_array_equal(got.affine, ref.affine)
    with pytest.raises(InputDataError, match="not found") as err:
        load_template("MNI152NLin2009aAsym", 1, str(tmp_path))  # only 2 mm was written
    assert "res-01" in str(err.value)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputDataError, match="cannot read the template resource"):
        load_template("MNI152NLin2009aAsym", 2, f"{tmp_path}/")  # not the cached call


def test_oblique_affine_with_nan_region_is_handled(tiny_demo, tmp_path):
    """An oblique T1w (affine tilted 12 deg, data untouched, so the true pose tilts too)
    with a NaN slab at the edge of the field of view (1.6% of voxels)."""
    src = nib.load(t1w_path(tiny_demo, "demoA", "02", None))
    pose = true_pose(tiny_demo, "demoA", "02", None)
    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler("x", 12.0, degrees=True).as_matrix()
    data = np.asarray(src.dataobj, dtype=np.float32).copy()
    data[:, :2, :] = np.nan
    path = tmp_path / "sub-02_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, tilt @ src.affine), path)
    paths = run_anat(path, tmp_path / "out", "02", settings=SETTINGS)
    side = sidecar(paths)
    assert side["Input"]["ObliquityDegrees"] > 11
    assert side["Input"]["NonFiniteVoxels"] == int(np.isnan(data).sum())
    assert side["Input"]["NonFiniteAction"] == "set to 0"
    assert registration_error_voxels(paths, tilt @ pose) <= 1.0
    mask_img = nib.load(paths.native_mask)
    assert dice(np.asarray(mask_img.dataobj) > 0, true_brain_mask(mask_img, tilt @ pose)) >= 0.95


@pytest.mark.slow
def test_nonlinear_option_writes_consistent_warps(tiny_demo, tmp_path):
    settings = AnatSettings(resolution_mm=RESOLUTION_MM, nonlinear=True)
    pose = true_pose(tiny_demo, "demoA", "03", None)
    paths = run_anat(t1w_path(tiny_demo, "demoA", "03", None), tmp_path, "03", settings=settings)
    forward = sitk.ReadTransform(str(paths.nonlinear_to_template))
    inverse = sitk.ReadTransform(str(paths.nonlinear_from_template))
    tpl = load_template("MNI152NLin2009aAsym", RESOLUTION_MM)
    pts = nib.affines.apply_affine(tpl.affine, np.argwhere(np.asarray(tpl.mask.dataobj) > 0))
    pts = pts[::50]
    moved = np.array([forward.TransformPoint(tuple(FLIP @ p)) for p in pts])
    back = np.array([inverse.TransformPoint(tuple(q)) for q in moved]) @ FLIP
    assert np.linalg.norm(back - pts, axis=1).mean() < 0.1  # inverse consistency (mm)
    # The demo's heads are the template under a rigid pose: the warp stays small.
    error = np.linalg.norm(moved @ FLIP - nib.affines.apply_affine(pose, pts), axis=1).mean()
    assert error / RESOLUTION_MM <= 1.0
    mask_img = nib.load(paths.native_mask)
    assert dice(np.asarray(mask_img.dataobj) > 0, true_brain_mask(mask_img, pose)) >= 0.95
    assert sidecar(paths)["Transforms"]["NonlinearFormat"].startswith("ITK composite")


def _demo_t1ws(demo: Path) -> list[tuple[str, str, str | None]]:
    """Every T1w of a demo folder: (dataset, subject, session)."""
    out = []
    for path in sorted(demo.glob("demo?/sub-*/**/anat/*_T1w.nii.gz")):
        entities = dict(part.split("-", 1) for part in path.name.split("_")[:-1])
        out.append((path.relative_to(demo).parts[0], entities["sub"], entities.get("ses")))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("res", [1, 2])
def test_every_demo_t1w_lands_at_1_and_2_mm(tiny_demo, tmp_path, res):
    """Every T1w of the tiny preset at the paper's 1 mm and the demo's 2 mm: not excluded,
    correlation >= 0.85 and Dice >= 0.90 with nilearn's template and mask (computed by
    nilearn), Dice >= 0.95 with the true brain mask and error <= 1 output voxel."""
    from tests.unit.anat.test_real_t1w import nilearn_metrics

    settings = AnatSettings(resolution_mm=res)
    cases = _demo_t1ws(tiny_demo)
    assert len(cases) >= 8
    for dataset, subject, session in cases:
        path = t1w_path(tiny_demo, dataset, subject, session)
        where = (dataset, subject, session, res)
        paths = run_anat(path, tmp_path / dataset, subject, session, settings=settings)
        side = sidecar(paths)
        assert not side.get("Excluded"), (where, side.get("ExclusionReason"))
        corr, overlap = nilearn_metrics(paths)
        assert corr >= 0.85 and overlap >= 0.90, (where, corr, overlap)
        pose = true_pose(tiny_demo, dataset, subject, session)
        assert registration_error_voxels(paths, pose) * RESOLUTION_MM <= res, where
        mask_img = nib.load(paths.native_mask)
        score = dice(np.asarray(mask_img.dataobj) > 0, true_brain_mask(mask_img, pose))
        assert score >= 0.95, (where, score)
