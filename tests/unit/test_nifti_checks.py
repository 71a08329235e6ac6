"""brainharmony.nifti_checks: the image checks ingest, func and anat share.

Each hostile file is built here with nibabel/gzip; two real files from outside the
project (nibabel's bundled test data: ``example4d.nii.gz``, a 4-D int16 EPI with
qform/sform code 1, and ``anatomical.nii``) are checked intact and damaged.
"""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainharmony import nifti_checks as nc
from brainharmony.io import InputDataError

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
EXAMPLE4D = NIB_DATA / "example4d.nii.gz"
ANATOMICAL = NIB_DATA / "anatomical.nii"


# ------------------------------------------------------------------ hostile builders


def unoriented(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` with qform_code = sform_code = 0 (nibabel falls back to a made-up affine)."""
    header = img.header.copy()
    header["qform_code"] = 0
    header["sform_code"] = 0
    return nib.Nifti1Image(np.asanyarray(img.dataobj), None, header)


def zero_sform(img: nib.Nifti1Image, code: int = 1) -> nib.Nifti1Image:
    """``img`` with an all-zero sform of the given code (and no qform)."""
    header = img.header.copy()
    header.set_sform(np.zeros((4, 4)), code=code)
    header["qform_code"] = 0
    return nib.Nifti1Image(np.asanyarray(img.dataobj), None, header)


def flip_gzip_byte(path: Path, where: str = "crc") -> Path:
    """Damage the trailer of a gzip file: its CRC-32 or its length (ISIZE) field."""
    raw = bytearray(path.read_bytes())
    raw[-8 if where == "crc" else -4] ^= 0x5A
    path.write_bytes(bytes(raw))
    return path


def gzip_bytes(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def _image(shape=(8, 8, 6, 5), dtype=np.float32, zooms=(2.0, 2.0, 3.0)) -> nib.Nifti1Image:
    data = np.arange(math.prod(shape), dtype=np.float64).reshape(shape).astype(dtype)
    return nib.Nifti1Image(data, np.diag([*zooms, 1.0]))


def _saved(img: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    nib.save(img, path)
    return nib.load(path)


# ---------------------------------------------------------------------- orientation


def test_real_images_pass_every_check():
    for path in (EXAMPLE4D, ANATOMICAL):
        img = nib.load(path)
        assert nc.image_problem(img) is None
        assert nc.file_problem(path, img) is None
        assert nc.voxel_size_problem(img.affine) is None
    total, problem = nc.gzip_problem(EXAMPLE4D, chunk=4096)  # many small chunks
    assert problem is None
    assert total == nc.expected_nbytes(nib.load(EXAMPLE4D))


def test_no_qform_and_no_sform_is_refused_naming_both_codes(tmp_path):
    img = _saved(unoriented(nib.load(ANATOMICAL)), tmp_path / "anat.nii")
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (0, 0)
    assert nc.orientation_problem(img) == (
        "no orientation: qform_code and sform_code are both 0 "
        "(the voxel -> world mapping is unknown)"
    )


def test_zero_sform_with_code_1_is_singular():
    img = zero_sform(_image())
    assert nc.orientation_problem(img).startswith("sform (code 1) is singular")


def test_qform_with_zero_voxel_size_is_singular():
    img = _image()
    img.header.set_sform(None, code=0)
    img.header.set_qform(img.affine, code=1)
    img.header["pixdim"][1] = 0.0
    assert nc.orientation_problem(img).startswith("qform (code 1) is singular")


def test_non_finite_or_degenerate_affines_are_named():
    bad = np.diag([2.0, 2.0, 2.0, 1.0])
    bad[0, 3] = np.nan
    assert nc.affine_problem(bad, "sform (code 2)") == "sform (code 2) has non-finite entries"
    parallel = np.eye(4)
    parallel[:3, 1] = [1.0, 0.0, 0.0]  # two voxel axes along x
    assert "not independent" in nc.affine_problem(parallel)
    assert nc.affine_problem(np.eye(4)) is None


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    ("dtype", "problem"),
    [
        (np.complex64, r"voxel type complex64 is complex"),
        (np.complex128, r"voxel type complex128 is complex"),
        (np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")]), r"RGB or structured"),
    ],
    ids=["complex64", "complex128", "rgb24"],
)
def test_complex_and_rgb_voxels_are_refused(tmp_path, dtype, problem):
    shape = (8, 8, 6)
    data = np.zeros(shape, dtype=dtype)
    img = _saved(nib.Nifti1Image(data, np.eye(4)), tmp_path / "x.nii.gz")
    assert img.get_data_dtype().kind in "cV"
    assert nc.image_problem(img) is not None
    import re

    assert re.search(problem, nc.image_problem(img))


def test_real_dtypes_pass():
    for dtype in (np.uint8, np.int16, np.int32, np.float32, np.float64):
        assert nc.dtype_problem(dtype) is None


# ----------------------------------------------------------------------------- gzip


@pytest.mark.parametrize(
    ("where", "message"),
    [("crc", r"^BadGzipFile: CRC check failed"), ("length", r"Incorrect length")],
)
def test_damaged_gzip_trailer_of_a_real_file_is_found(tmp_path, where, message):
    path = flip_gzip_byte(shutil.copy(EXAMPLE4D, tmp_path / "bold.nii.gz"), where)
    img = nib.load(path)
    np.asarray(img.dataobj)  # nibabel reads every voxel without noticing
    problem = nc.compressed_data_problem(path, img)
    assert problem is not None
    import re

    assert re.search(message, problem), problem
    assert nc.file_problem(path, img).startswith("the compressed data is damaged (")


def test_corrupt_deflate_data_and_truncation_are_found(tmp_path):
    img = _image()
    path = tmp_path / "bold.nii.gz"
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    middle = raw.copy()
    middle[len(raw) // 2] ^= 0xFF
    (tmp_path / "mid.nii.gz").write_bytes(bytes(middle))
    assert nc.gzip_problem(tmp_path / "mid.nii.gz")[1] is not None
    (tmp_path / "cut.nii.gz").write_bytes(bytes(raw[: len(raw) // 2]))
    assert nc.gzip_problem(tmp_path / "cut.nii.gz")[1].startswith("EOFError")


def test_intact_gzip_of_a_short_image_is_truncation(tmp_path):
    """A valid gzip stream whose content stops before the voxel data announced ends."""
    full = tmp_path / "full.nii"
    nib.save(_image(), full)
    raw = full.read_bytes()
    short = gzip_bytes(tmp_path / "short.nii.gz", raw[: len(raw) - 100])
    problem = nc.compressed_data_problem(short, nib.load(short))
    assert problem.startswith("gzip data ends early:"), problem


def test_uncompressed_files_are_not_gzip_checked(tmp_path):
    path = tmp_path / "x.nii"
    nib.save(_image(), path)
    assert not nc.is_gzip(path)
    assert nc.compressed_data_problem(path) is None


def test_load_checked_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(unoriented(_image((8, 8, 6))), path)
    with pytest.raises(InputDataError, match=r"T1w image: no orientation") as info:
        nc.load_checked(path, "T1w image")
    assert info.value.path == path
    with pytest.raises(InputDataError, match=r"T1w image file not found"):
        nc.load_checked(tmp_path / "missing.nii.gz", "T1w image")


# ------------------------------------------------------------------------- ranges


def test_voxel_size_and_volume_limits():
    assert nc.voxel_size_problem(np.diag([2.0, 2.0, 2.0, 1.0])) is None
    assert nc.voxel_size_problem(np.diag([0.1, 20.0, 1.0, 1.0])) is None  # inclusive
    assert nc.voxel_size_problem(np.diag([2.0, 2.0, 30.0, 1.0])) == (
        "voxel size 2x2x30 mm is outside 0.1-20 mm"
    )
    assert "outside" in nc.voxel_size_problem(np.diag([0.01, 1.0, 1.0, 1.0]))
    assert nc.volume_count_problem(nc.MAX_VOLUMES) is None
    assert "plausible maximum" in nc.volume_count_problem(nc.MAX_VOLUMES + 1)


def test_tr_range_checks():
    assert nc.tr_range_problem(2.0) is None
    assert nc.tr_range_problem(0.1) is None and nc.tr_range_problem(10.0) is None
    assert nc.tr_range_problem(1e-6) == "is outside the plausible range 0.1-10 s (tr_range)"
    assert nc.tr_range_problem(15.0, (0.1, 20.0)) is None
    assert nc.check_tr_range([0.5, 3]) == (0.5, 3.0)
    for bad in ([1.0], [3.0, 1.0], [0.0, 1.0], [float("nan"), 1.0], ["a", 1.0], None):
        with pytest.raises(ValueError, match="tr_range"):
            nc.check_tr_range(bad)


def test_huge_integers_are_numbers_without_overflow():
    huge = 10**400
    assert nc.as_number(huge) == math.inf
    assert nc.as_number(-huge) == -math.inf
    assert nc.as_number(True) is None and nc.as_number([2.0]) is None
    assert nc.value_text(huge) == "<integer of 401 digits>"
    assert nc.value_text(2.0) == "2.0"


def test_implausible_mask_flags_nan_inf_and_huge_values():
    data = np.array([1.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 9e9, -9e9], np.float32)
    assert nc.implausible_mask(data).tolist() == [
        False, True, True, True, True, True, False, False
    ]  # fmt: skip
