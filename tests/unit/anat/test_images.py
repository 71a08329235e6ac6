"""T1w reading and checks, orientation, nibabel <-> SimpleITK, transform conventions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from brainharmony.anat.images import (
    FLIP,
    check_affine,
    itk_affine_to_lps_matrix,
    itk_threads,
    load_t1w,
    lps_matrix_to_itk_affine,
    lps_to_ras,
    nib_to_sitk,
    sitk_affine,
    sitk_to_nib,
)
from brainharmony.io import InputDataError


def _volume(shape=(30, 34, 28), seed=0) -> np.ndarray:
    """A blob with a marker voxel, so voxel identity can be followed."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape).astype(float)
    centre = (np.asarray(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((ijk - centre) / (np.asarray(shape)[:, None, None, None] / 3)) ** 2).sum(0))
    data = (r < 1).astype(np.float32) * 100 + rng.normal(0, 1, shape).astype(np.float32)
    data[5, 7, 9] = 1000.0
    return data


def _lps_affine(zooms=(2.0, 2.5, 3.0), origin=(60.0, 70.0, -40.0)) -> np.ndarray:
    affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])
    affine[:3, 3] = origin
    return affine


def _save(tmp_path, data, affine, name="sub-01_T1w.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _marker_world(img: nib.Nifti1Image) -> np.ndarray:
    idx = np.unravel_index(np.argmax(np.asarray(img.dataobj)), img.shape)
    return nib.affines.apply_affine(img.affine, idx)


def test_lps_input_is_reoriented_to_ras_keeping_world(tmp_path):
    data, affine = _volume(), _lps_affine()
    t1w = load_t1w(_save(tmp_path, data, affine))
    assert nib.aff2axcodes(t1w.image.affine) == ("R", "A", "S")
    assert t1w.report["InputOrientation"] == "LPS" and t1w.report["Reoriented"]
    np.testing.assert_allclose(
        _marker_world(t1w.image), nib.affines.apply_affine(affine, (5, 7, 9))
    )
    assert t1w.image.get_data_dtype() == np.float32


def test_oblique_affine_keeps_its_obliquity(tmp_path):
    rot = np.eye(4)
    rot[:3, :3] = Rotation.from_euler("xy", [14.0, -6.0], degrees=True).as_matrix()
    affine = rot @ _lps_affine()
    t1w = load_t1w(_save(tmp_path, _volume(), affine))
    assert t1w.report["ObliquityDegrees"] > 10
    # Not rounded to the closest axis-aligned grid: the marker keeps its world position.
    np.testing.assert_allclose(
        _marker_world(t1w.image), nib.affines.apply_affine(affine, (5, 7, 9))
    )
    image = nib_to_sitk(t1w.image)
    idx = np.unravel_index(np.argmax(np.asarray(t1w.image.dataobj)), t1w.image.shape)
    lps = np.asarray(image.TransformIndexToPhysicalPoint([int(i) for i in idx]))
    np.testing.assert_allclose(FLIP @ lps, nib.affines.apply_affine(affine, (5, 7, 9)), atol=1e-6)


def test_nib_sitk_round_trip_is_exact():
    rot = np.eye(4)
    rot[:3, :3] = Rotation.from_euler("z", 20.0, degrees=True).as_matrix()
    img = nib.Nifti1Image(_volume(), rot @ _lps_affine())
    back = sitk_to_nib(nib_to_sitk(img))
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(img.dataobj))
    np.testing.assert_allclose(sitk_affine(nib_to_sitk(img)), img.affine, atol=1e-9)


def test_nan_region_below_the_limit_is_zeroed_and_reported(tmp_path):
    data = _volume()
    data[:, :, :1] = np.nan  # one slice: 1/28 of the voxels
    data[0, 0, 5] = np.inf
    t1w = load_t1w(_save(tmp_path, data, _lps_affine()), max_nonfinite_fraction=0.05)
    out = np.asarray(t1w.image.dataobj)
    assert np.isfinite(out).all()
    n_bad = 30 * 34 + 1
    assert t1w.report["NonFiniteVoxels"] == n_bad
    assert t1w.report["NonFiniteFraction"] == pytest.approx(n_bad / data.size)
    assert t1w.report["NonFiniteAction"] == "set to 0"


def test_nan_region_above_the_limit_is_refused_naming_the_file(tmp_path):
    data = _volume()
    data[:, :, :3] = np.nan
    path = _save(tmp_path, data, _lps_affine())
    with pytest.raises(InputDataError, match=r"sub-01_T1w\.nii\.gz: .*non-finite.*max_nonfinite"):
        load_t1w(path, max_nonfinite_fraction=0.05)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((30, 34, 28, 2), "one 3D volume"), ((30, 34), "one 3D volume"), ((30, 34, 8), "too small")],
)
def test_wrong_dimensions_are_refused(tmp_path, shape, message):
    path = _save(tmp_path, np.ones(shape, np.float32), np.eye(4))
    with pytest.raises(InputDataError, match=message):
        load_t1w(path)


def test_single_volume_4d_is_accepted(tmp_path):
    t1w = load_t1w(_save(tmp_path, _volume()[..., None], _lps_affine()))
    assert t1w.image.shape == (30, 34, 28)


def test_sheared_singular_constant_and_missing_inputs_are_refused(tmp_path):
    shear = _lps_affine()
    shear[0, 1] = 0.4
    with pytest.raises(InputDataError, match="sheared"):
        load_t1w(_save(tmp_path, _volume(), shear, "a.nii.gz"))
    singular = _lps_affine()
    singular[:, 2] = 0
    with pytest.raises(InputDataError, match="singular"):
        check_affine(singular, "b.nii.gz")
    with pytest.raises(InputDataError, match="constant"):
        load_t1w(_save(tmp_path, np.full((20, 20, 20), 7, np.float32), np.eye(4), "c.nii.gz"))
    with pytest.raises(InputDataError, match="file not found"):
        load_t1w(tmp_path / "nowhere.nii.gz")


def test_itk_matrix_conversions_round_trip():
    euler = sitk.Euler3DTransform((10.0, -5.0, 3.0), 0.1, -0.2, 0.05, (4.0, 5.0, -6.0))
    lps = itk_affine_to_lps_matrix(euler)
    point = np.array([12.0, -30.0, 44.0])
    np.testing.assert_allclose(lps[:3, :3] @ point + lps[:3, 3], euler.TransformPoint(point))
    back = lps_matrix_to_itk_affine(lps)
    np.testing.assert_allclose(back.TransformPoint(point), euler.TransformPoint(point))
    ras = lps_to_ras(lps)
    np.testing.assert_allclose(
        ras[:3, :3] @ (FLIP @ point) + ras[:3, 3], FLIP @ np.asarray(euler.TransformPoint(point))
    )


def test_itk_threads_sets_and_restores():
    before = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    with itk_threads(1):
        assert sitk.ProcessObject_GetGlobalDefaultNumberOfThreads() == 1
    assert sitk.ProcessObject_GetGlobalDefaultNumberOfThreads() == before
    with pytest.raises(ValueError, match="threads must be >= 1"):
        with itk_threads(0):
            pass


# ------------------------------------------------- hostile T1w images (issue 23)


def _complex(img):
    return nib.Nifti1Image(np.asarray(img.dataobj).astype(np.complex64), img.affine)


def _rgb(img):
    return nib.Nifti1Image(
        np.zeros(img.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), img.affine
    )


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("unoriented", r"no orientation: qform_code and sform_code are both 0"),
        ("zero sform", r"sform \(code 1\) is singular"),
        ("complex", r"voxel type complex64 is complex"),
        ("rgb", r"RGB or structured"),
        ("bad crc", r"the compressed data is damaged \(BadGzipFile: CRC check failed"),
        ("bad length", r"the compressed data is damaged \(BadGzipFile: Incorrect length"),
    ],
)
def test_hostile_t1w_is_refused_naming_the_file(tmp_path, case, problem):
    from tests.unit.test_nifti_checks import flip_gzip_byte, unoriented, zero_sform

    change = {
        "unoriented": unoriented,
        "zero sform": zero_sform,
        "complex": _complex,
        "rgb": _rgb,
    }.get(case, lambda img: img)
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(change(nib.Nifti1Image(_volume(), _lps_affine())), path)
    if case.startswith("bad"):
        flip_gzip_byte(path, "crc" if case == "bad crc" else "length")
    with pytest.raises(InputDataError, match=problem) as info:
        load_t1w(path)
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_real_t1w_loads_and_without_orientation_is_refused(tmp_path):
    """nibabel's bundled anatomical.nii (outside the project), intact and unoriented."""
    from tests.unit.test_nifti_checks import ANATOMICAL, unoriented

    t1w = load_t1w(ANATOMICAL)
    assert t1w.image.shape == (33, 41, 25)
    path = tmp_path / "anatomical.nii"
    nib.save(unoriented(nib.load(ANATOMICAL)), path)
    with pytest.raises(InputDataError, match=r"no orientation"):
        load_t1w(path)


def test_huge_voxels_are_zeroed_and_counted_like_nan(tmp_path):
    data = _volume()
    data[3, 4, 5] = 1e30
    data[6, 7, 8] = -3e38
    t1w = load_t1w(_save(tmp_path, data, _lps_affine()))
    out = np.asarray(t1w.image.dataobj)
    assert np.abs(out).max() < 2000
    assert t1w.report["NonFiniteVoxels"] == 2
    assert t1w.report["ImplausibleVoxels"] == 2
    data[:, :, :3] = 1e30
    with pytest.raises(InputDataError, match=r"voxels beyond \+-1e\+10 \(\d+ of them\)"):
        load_t1w(_save(tmp_path, data, _lps_affine(), "b.nii.gz"), max_nonfinite_fraction=0.05)


def test_anat_cli_excludes_a_hostile_t1w_with_its_reason(tmp_path, capsys):
    """The anat stage's way: every output written, flagged Excluded with the reason."""
    import json

    from brainharmony import cli
    from brainharmony.anat.derivatives import anat_paths
    from tests.unit.test_nifti_checks import unoriented

    t1w = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    t1w.parent.mkdir(parents=True)
    nib.save(unoriented(nib.Nifti1Image(_volume(), _lps_affine())), t1w)
    out = tmp_path / "anat"
    capsys.readouterr()
    argv = ["anat", "--t1w", str(t1w), "--out-dir", str(out), "--subject", "01"]
    assert cli.main([*argv, "--resolution-mm", "2"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    paths = anat_paths(out, "01", None)
    doc = json.loads(
        paths.preproc.with_name(paths.preproc.name.replace(".nii.gz", ".json")).read_text()
    )
    assert doc["Excluded"] is True
    assert str(t1w) in doc["ExclusionReason"]
    assert "no orientation: qform_code and sform_code are both 0" in doc["ExclusionReason"]
