"""BOLD -> T1w coregistration from the images: planted header offsets, the QC gate.

The demo subject (:mod:`tests.unit.coreg_synthetic`) gives a T1w, its brain mask and a
BOLD reference sharing the scanner world exactly; a rigid offset planted in the BOLD
header (translations up to 30 mm, rotations up to 10 degrees about each axis) must be
recovered within one BOLD voxel (mean displacement over the BOLD brain). Run as a
script it prints the recovery errors of docs/func.md:
``python -m tests.unit.func.test_register``.
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainharmony.func.register import CoregSettings, epi_brain_mask, register_bold_to_t1w
from tests.unit.coreg_synthetic import demo_subject, mean_displacement, rigid

#: (BOLD voxel mm, offsets): tx, ty, tz (mm), rx, ry, rz (degrees); the first of each
#: grid is the extreme corner, the others drawn at random (seed 4).
_RNG = np.random.default_rng(4)
OFFSETS = [(30.0, -30.0, 30.0, 10.0, -10.0, 10.0)] + [
    tuple(np.r_[_RNG.uniform(-30, 30, 3), _RNG.uniform(-10, 10, 3)].round(1)) for _ in range(2)
]
CASES = [(vox, off) for vox in (2.0, 3.0) for off in OFFSETS]


@pytest.fixture(scope="module")
def subject():
    return demo_subject()


@pytest.fixture(scope="module")
def bolds(subject):
    return {vox: subject.boldref(vox, seed=1) for vox in (2.0, 3.0)}


def recovery_error(subject, data, affine, offset, method="bbr"):
    """Plant ``offset`` in the header, register, return (error mm, result)."""
    planted = rigid(*offset)
    header = planted @ affine  # the header now says the head is elsewhere
    result = register_bold_to_t1w(
        data, header, subject.t1w, subject.t1w_affine, t1w_mask=subject.brain_mask, method=method
    )
    brain = np.argwhere(epi_brain_mask(data, header)) @ header[:3, :3].T + header[:3, 3]
    return mean_displacement(result.bold_to_t1w, np.linalg.inv(planted), brain), result


@pytest.mark.parametrize(("vox", "offset"), CASES)
def test_planted_header_offsets_are_recovered(subject, bolds, vox, offset):
    data, affine = bolds[vox]
    error, result = recovery_error(subject, data, affine, offset)
    assert error < vox, (error, result.report)
    assert not result.failed
    assert result.report["Passed"] and result.report["Dice"] > 0.9


def test_mutual_information_alone_also_recovers(subject, bolds):
    data, affine = bolds[3.0]
    error, result = recovery_error(subject, data, affine, OFFSETS[0], method="mi")
    assert error < 3.0 and "BBRCost" not in result.report


def test_hopeless_pair_fails_the_gate(subject, bolds):
    """BOLD against a T1w of noise (with a real brain mask): excluded, not written."""
    data, affine = bolds[3.0]
    noise = np.random.default_rng(0).uniform(0, 1000, subject.t1w.shape).astype(np.float32)
    result = register_bold_to_t1w(
        data, affine, noise, subject.t1w_affine, t1w_mask=subject.brain_mask
    )
    assert result.failed.startswith("BOLD -> T1w coregistration failed its QC gate")
    assert "BBR cost" in result.failed and not result.report["Passed"]


def test_gate_thresholds_come_from_the_settings(subject, bolds):
    data, affine = bolds[3.0]
    strict = CoregSettings(min_dice=0.999)
    result = register_bold_to_t1w(
        data, affine, subject.t1w, subject.t1w_affine, t1w_mask=subject.brain_mask,
        settings=strict,
    )  # fmt: skip
    assert "Dice" in result.failed and result.report["Thresholds"]["DiceMin"] == 0.999


def _nipy_files(tmp_path_factory) -> tuple[Path, Path]:
    """nipy 0.6.1's real BOLD crop and anatomical (pip download; skip without network)."""
    import subprocess

    folder = tmp_path_factory.mktemp("nipy")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "nipy==0.6.1", "-d", str(folder)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"nipy wheel not available: {err}")
    wheel = next(folder.glob("nipy-*.whl"), None)
    if wheel is None:
        pytest.skip("nipy wheel not downloaded")
    out = []
    with zipfile.ZipFile(wheel) as z:
        for name in ("functional", "anatomical"):
            member = f"nipy/testing/{name}.nii.gz"
            z.extract(member, folder)
            out.append(folder / member)
    return out[0], out[1]


def test_real_epi_crop_is_flagged_not_trusted(tmp_path_factory):
    """A real 3-slice EPI crop (nipy's, 4 x 4 x 8 mm) holds too little to register.

    The crop (17 x 21 x 3 voxels inside the brain, no brain outline) against nipy's
    cropped anatomical: the gate must say so (NMI near 1) instead of writing a
    transform nobody can check. It is the only real EPI at hand; it cannot test
    accuracy, only that real data too fails loudly rather than silently.
    """
    functional, anatomical = _nipy_files(tmp_path_factory)
    bold, t1 = nib.load(functional), nib.load(anatomical)
    ref = np.asarray(bold.dataobj, np.float32).mean(axis=3)
    result = register_bold_to_t1w(
        ref, bold.affine, np.asarray(t1.dataobj, np.float32), t1.affine, method="mi"
    )
    assert result.failed and "NMI" in result.failed
    assert result.report["NMI"] < CoregSettings().min_nmi


def test_anatomy_exclusion_excludes_the_run_without_registration(tmp_path):
    from brainharmony.atlas import schaefer400_volume
    from brainharmony.func.pipeline import NativeSettings, RunInputs, preprocess_run
    from tests.unit.func_synthetic import RES_MM, synthetic_bold

    path, meta, _ = synthetic_bold(tmp_path / "sub-01" / "func", n_volumes=40)
    sidecar = tmp_path / "sub-01_space-MNI152NLin2009cAsym_desc-preproc_T1w.json"
    sidecar.write_text(json.dumps({"Excluded": True, "ExclusionReason": "skull strip failed"}))
    inputs = RunInputs(
        bold=path,
        t_r=meta["RepetitionTime"],
        metadata=meta,
        t1w_to_template=np.eye(4),
        t1w_brain=tmp_path / "absent_T1w.nii.gz",  # never read: no registration
        t1w_brain_mask=tmp_path / "absent_mask.nii.gz",
        anat_sidecar=sidecar,
    )
    atlas, table = schaefer400_volume(RES_MM)
    result = preprocess_run(inputs, atlas, NativeSettings())
    assert result.excluded == "anatomy excluded: skull strip failed"
    assert result.report["Coregistration"]["Method"].startswith("none")
    assert result.denoised.shape == (0, 400)

    from brainharmony.func.naming import run_outputs
    from brainharmony.func.outputs import write_native_outputs

    out = run_outputs(tmp_path / "out", "01", None, "rest", None, resolution_mm=RES_MM)
    write_native_outputs(result, out, table, inputs=[], parameters={}, qc=False)
    side = json.loads(out.timeseries.with_suffix(".json").read_text())
    assert side["Excluded"] is True
    assert side["ExclusionReason"] == "anatomy excluded: skull strip failed"


def test_failed_registration_excludes_the_run(tmp_path):
    """A T1w of noise as the target: the run is written excluded with the gate's reason."""
    from brainharmony.atlas import schaefer400_volume
    from brainharmony.func.pipeline import NativeSettings, RunInputs, preprocess_run
    from tests.unit.func_synthetic import RES_MM, synthetic_bold

    path, meta, _ = synthetic_bold(tmp_path / "sub-01" / "func", n_volumes=40)
    atlas, _ = schaefer400_volume(RES_MM)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    shape = (91, 109, 91)
    ijk = np.indices(shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    mask = (((ijk - [0, -18, 8]) / [65, 85, 60]) ** 2).sum(1).reshape(shape) <= 1
    noise = np.random.default_rng(1).uniform(0, 1000, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, affine), tmp_path / "t1w.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    inputs = RunInputs(
        bold=path,
        t_r=meta["RepetitionTime"],
        metadata=meta,
        t1w_to_template=np.eye(4),
        t1w_brain=tmp_path / "t1w.nii.gz",
        t1w_brain_mask=tmp_path / "mask.nii.gz",
    )
    result = preprocess_run(inputs, atlas, NativeSettings())
    assert result.excluded.startswith("BOLD -> T1w coregistration failed its QC gate")
    assert result.report["Coregistration"]["Passed"] is False


def main() -> None:  # pragma: no cover - the docs table
    subject = demo_subject()
    rng = np.random.default_rng(11)
    for vox in (2.0, 3.0, 5.0):
        data, affine = subject.boldref(vox, seed=1)
        for method in ("bbr", "mi"):
            errors, seconds = [], []
            for k in range(8):
                offset = OFFSETS[0] if k == 0 else np.r_[rng.uniform(-30, 30, 3),
                                                         rng.uniform(-10, 10, 3)]  # fmt: skip
                tic = time.perf_counter()
                error, result = recovery_error(subject, data, affine, offset, method)
                seconds.append(time.perf_counter() - tic)
                errors.append(error)
            print(
                f"{vox:.0f} mm {method}: mean {np.mean(errors):.2f} mm, max {np.max(errors):.2f} "
                f"mm over {len(errors)} offsets; Dice {result.report['Dice']:.3f}, "
                f"NMI {result.report['NMI']:.3f}, BBR {result.report.get('BBRCost')}, "
                f"{np.mean(seconds):.1f} s per registration"
            )


if __name__ == "__main__":  # pragma: no cover
    main()


def test_resampling_does_not_depend_on_the_batch_size():
    """Each volume is sampled on its own: any chunk gives the same bits."""
    from brainharmony.func.register import resample_to_template

    rng = np.random.default_rng(5)
    data = rng.normal(1000, 50, (12, 11, 9, 21)).astype(np.float32)
    maps = np.tile(np.eye(4), (21, 1, 1))
    maps[:, :3, :3] *= 0.7
    maps[:, :3, 3] = 1.0 + rng.normal(0, 0.3, (21, 3))
    points = np.argwhere(np.ones((16, 15, 13), bool))
    valid = np.ones(data.shape[:3], bool)
    valid[5, 5, 4] = False
    whole = resample_to_template(data, maps, points, valid=valid, chunk=64)
    for chunk in (1, 4, 16):
        part = resample_to_template(data, maps, points, valid=valid, chunk=chunk)
        np.testing.assert_array_equal(part[0], whole[0])
        np.testing.assert_array_equal(part[1], whole[1])
    assert 0 < whole[1].sum() < points.shape[0]


def test_resampling_backends_agree():
    """The numpy backend (CPU default) is the torch one to float32 rounding, coverage alike."""
    from brainharmony.func.register import resample_to_template

    rng = np.random.default_rng(6)
    data = rng.normal(1000, 50, (12, 11, 9, 7)).astype(np.float32)
    maps = np.tile(np.eye(4), (7, 1, 1))
    maps[:, :3, :3] *= 0.7
    maps[:, :3, 3] = 1.0 + rng.normal(0, 0.3, (7, 3))
    points = np.argwhere(np.ones((16, 15, 13), bool))
    valid = np.ones(data.shape[:3], bool)
    valid[5, 5, 4] = False
    ref = resample_to_template(data, maps, points, valid=valid, backend="torch")
    fast = resample_to_template(data, maps, points, valid=valid, backend="numpy")
    np.testing.assert_array_equal(fast[1], ref[1])
    assert 0 < fast[1].sum() < points.shape[0]
    np.testing.assert_allclose(fast[0], ref[0], rtol=0, atol=1e-5 * np.abs(ref[0]).max())
    assert fast[0].flags.c_contiguous and fast[0].dtype == np.float32


def test_itk_text_affines_read_without_simpleitk_match_simpleitk(tmp_path):
    """One-transform ITK text affines are parsed directly; the matrix is SimpleITK's."""
    import SimpleITK as sitk

    from brainharmony.func.register import (
        FLIP4,
        _read_itk_affine_text,
        read_itk_affine,
        write_itk_affine,
    )

    rng = np.random.default_rng(7)
    for k, kind in enumerate(("affine", "euler")):
        if kind == "affine":
            tx = sitk.AffineTransform(3)
            tx.SetMatrix(list(np.eye(3).ravel() + rng.normal(0, 0.05, 9)))
        else:
            tx = sitk.Euler3DTransform()
            tx.SetRotation(*rng.normal(0, 0.1, 3))
        tx.SetTranslation(list(rng.normal(0, 10, 3)))
        tx.SetCenter(list(rng.normal(0, 20, 3)))
        path = tmp_path / f"t{k}.txt"
        sitk.WriteTransform(tx, str(path))
        m = np.array(tx.GetMatrix()).reshape(3, 3)
        c = np.array(tx.GetCenter())
        lps = np.eye(4)
        lps[:3, :3] = m
        lps[:3, 3] = np.array(tx.GetTranslation()) + c - m @ c
        np.testing.assert_allclose(read_itk_affine(path), FLIP4 @ lps @ FLIP4, atol=1e-12)
        # Euler (angles as parameters) is left to SimpleITK.
        assert (_read_itk_affine_text(path) is None) == (kind == "euler")
    # The writer's own files round-trip through the text reader.
    ras = np.eye(4)
    ras[:3, :3] += rng.normal(0, 0.05, (3, 3))
    ras[:3, 3] = [1.5, -2.0, 3.25]
    written = tmp_path / "w.txt"
    write_itk_affine(written, ras)
    assert _read_itk_affine_text(written) is not None
    np.testing.assert_allclose(read_itk_affine(written), ras, atol=1e-9)
