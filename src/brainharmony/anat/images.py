"""Reading and checking a T1w image; nibabel <-> SimpleITK; affine transform conversions.

Conventions
-----------
* nibabel images carry a voxel -> world affine in RAS+ millimetres.
* SimpleITK images and transforms live in ITK's LPS+ physical space. The two differ
  by ``FLIP = diag(-1, -1, 1)`` on the world axes.
* An ITK transform used to resample a *moving* image onto a *fixed* grid maps fixed
  points to moving points. The transform that brings the T1w into template space
  therefore maps template points to T1w points; its file is named
  ``from-T1w_to-<template>_mode-image_xfm.txt`` (the ITK/ANTs/fMRIPrep convention).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brainharmony.anat.settings import MAX_NONFINITE_FRACTION
from brainharmony.io import InputDataError, PathLike
from brainharmony.nifti_checks import (
    MAX_ABS_VOXEL,
    compressed_data_problem,
    image_problem,
    implausible_mask,
)

logger = logging.getLogger(__name__)

#: RAS <-> LPS flip of the world axes.
FLIP = np.diag([-1.0, -1.0, 1.0])
FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest allowed departure of the affine's axes from orthogonality (shear).
MAX_SHEAR = 1e-3
#: Smallest size along any axis for a usable T1w (voxels).
MIN_AXIS_VOXELS = 16


@dataclass
class T1wImage:
    """A validated T1w, reoriented to RAS+ (array axes closest to R, A, S).

    Attributes
    ----------
    image : nibabel.Nifti1Image
        float32 data of shape ``(nx, ny, nz)`` with a RAS+-ordered affine. The world
        coordinates are the input's: reorientation only permutes and flips axes.
    path : Path
        The file it was read from.
    report : dict
        Facts for the sidecar: input shape, zooms, orientation, obliquity, the
        non-finite voxel handling.
    """

    image: nib.Nifti1Image
    path: Path
    report: dict[str, Any] = field(default_factory=dict)


def _orientation(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))


def _obliquity_deg(affine: np.ndarray) -> float:
    return float(np.degrees(np.max(np.abs(nib.affines.obliquity(affine)))))


def check_affine(affine: np.ndarray, path: PathLike | None = None) -> None:
    """Refuse an affine that is singular or sheared (its axes not orthogonal).

    Raises
    ------
    InputDataError
        Naming ``path`` and the problem.
    """
    lin = np.asarray(affine, dtype=float)[:3, :3]
    if not np.all(np.isfinite(affine)):
        raise InputDataError(path, "the image affine has non-finite entries")
    zooms = np.linalg.norm(lin, axis=0)
    if np.any(zooms < 1e-6) or abs(np.linalg.det(lin)) < 1e-9:
        raise InputDataError(path, f"the image affine is singular (voxel sizes {zooms})")
    rot = lin / zooms
    shear = float(np.max(np.abs(rot.T @ rot - np.eye(3))))
    if shear > MAX_SHEAR:
        raise InputDataError(
            path,
            f"the image affine is sheared (axes depart from orthogonality by {shear:.3g}, "
            f"allowed {MAX_SHEAR}); reslice it to an orthogonal grid first",
        )


def load_t1w(path: PathLike, max_nonfinite_fraction: float = MAX_NONFINITE_FRACTION) -> T1wImage:
    """Read a T1w, check it, zero its non-finite voxels and reorient it to RAS+.

    Parameters
    ----------
    path : path-like
        A NIfTI file holding one 3D volume (a 4D file with a single volume is accepted).
    max_nonfinite_fraction : float
        Non-finite voxels (NaN, +-Inf) and corrupt ones (magnitude beyond
        :data:`~brainharmony.nifti_checks.MAX_ABS_VOXEL`) are set to 0 and counted in
        the report when they are at most this fraction of all voxels; above it the file
        is refused.

    Returns
    -------
    T1wImage
        Oblique inputs keep their obliquity (the affine is not rounded): later steps
        resample with the full affine.

    Raises
    ------
    InputDataError
        Unreadable file (also a gzip stream failing its CRC or length check), unknown
        orientation (qform and sform codes 0), complex or RGB voxels, wrong
        dimensionality, too small, constant, too many non-finite voxels, singular or
        sheared affine. The message names the file.
    """
    if not 0 <= max_nonfinite_fraction < 1:
        raise ValueError(
            f"max_nonfinite_fraction must be in [0, 1); got {max_nonfinite_fraction!r}"
        )
    path = Path(path)
    try:
        img = nib.load(path)
    except FileNotFoundError:
        raise InputDataError(path, "file not found") from None
    except Exception as err:
        raise InputDataError(path, f"not a readable NIfTI image ({err})") from None
    problem = image_problem(img)
    if problem is not None:
        raise InputDataError(path, problem)
    problem = compressed_data_problem(path, img)
    if problem is not None:
        raise InputDataError(
            path, f"not a readable NIfTI image: the compressed data is damaged ({problem})"
        )
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputDataError(
            path, f"a T1w must be one 3D volume; got an image of shape {tuple(img.shape)}"
        )
    if min(shape) < MIN_AXIS_VOXELS:
        raise InputDataError(
            path, f"image of shape {shape} is too small (each axis needs >= {MIN_AXIS_VOXELS})"
        )
    affine = np.asarray(img.affine, dtype=float)
    check_affine(affine, path)
    try:
        with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: corrupt
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as err:  # truncated or damaged voxel data (the header read fine)
        raise InputDataError(
            path, f"not a readable NIfTI image (voxel data: {type(err).__name__}: {err})"
        ) from None
    bad = implausible_mask(data)
    n_bad = int(bad.sum())
    n_huge = int((bad & np.isfinite(data)).sum()) if n_bad else 0
    fraction = n_bad / data.size
    if fraction > max_nonfinite_fraction:
        raise InputDataError(
            path,
            f"{n_bad} non-finite (NaN/Inf) voxels or voxels beyond +-{MAX_ABS_VOXEL:g} "
            f"({n_huge} of them), {100 * fraction:.2f}% of the image; at most "
            f"{100 * max_nonfinite_fraction:.2f}% can be set to 0 (max_nonfinite_fraction)",
        )
    if n_bad:
        logger.warning(
            "%s: %d non-finite or corrupt voxels (%.3f%%) set to 0", path, n_bad, 100 * fraction
        )
        data = np.where(bad, np.float32(0), data)
    finite = data[data != 0]
    if finite.size == 0 or float(finite.max() - finite.min()) <= 0:
        raise InputDataError(path, "the image is constant (no anatomy to process)")
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    clean = nib.Nifti1Image(data, affine, header)
    canonical = nib.as_closest_canonical(clean)
    report = {
        "InputShape": list(shape),
        "InputVoxelSizeMM": [float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)],
        "InputOrientation": _orientation(affine),
        "ObliquityDegrees": round(_obliquity_deg(affine), 4),
        "Reoriented": _orientation(affine) != "RAS",
        "NonFiniteVoxels": n_bad,
        "ImplausibleVoxels": n_huge,
        "NonFiniteFraction": fraction,
        "NonFiniteAction": "set to 0" if n_bad else "none",
        "MaxNonFiniteFraction": max_nonfinite_fraction,
    }
    logger.info(
        "%s: shape %s, orientation %s -> RAS, obliquity %.2f deg",
        path,
        shape,
        report["InputOrientation"],
        report["ObliquityDegrees"],
    )
    return T1wImage(canonical, path, report)


# --- nibabel <-> SimpleITK -----------------------------------------------------------


def nib_to_sitk(img: nib.spatialimages.SpatialImage, dtype: Any = np.float32) -> sitk.Image:
    """A 3D nibabel image as a SimpleITK image in LPS physical space.

    Parameters
    ----------
    img : nibabel image
        Data of shape ``(nx, ny, nz)``; its affine must be orthogonal (see
        :func:`check_affine`).
    dtype : numpy dtype
        Pixel type of the result.
    """
    affine = np.asarray(img.affine, dtype=float)
    check_affine(affine)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    direction = FLIP @ (affine[:3, :3] / zooms)
    origin = FLIP @ affine[:3, 3]
    data = np.asarray(img.dataobj, dtype=dtype)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.SetSpacing([float(z) for z in zooms])
    out.SetDirection([float(v) for v in direction.ravel()])
    out.SetOrigin([float(v) for v in origin])
    return out


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """The RAS+ voxel -> world affine of a SimpleITK image, shape ``(4, 4)``."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = FLIP @ direction @ np.diag(spacing)
    affine[:3, 3] = FLIP @ np.asarray(image.GetOrigin(), dtype=float)
    return affine


def sitk_to_nib(image: sitk.Image, dtype: Any = np.float32) -> nib.Nifti1Image:
    """A 3D SimpleITK image as a nibabel image with a RAS+ affine (``xyzt_units`` mm)."""
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(dtype, copy=False)
    out = nib.Nifti1Image(np.ascontiguousarray(data), sitk_affine(image))
    out.header.set_xyzt_units("mm")
    return out


# --- affine transforms ---------------------------------------------------------------


def itk_affine_to_lps_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 LPS point mapping of an ITK affine-like transform (Euler, Similarity, Affine)."""
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(transform.GetMatrix())  # type: ignore[attr-defined]
    affine.SetTranslation(transform.GetTranslation())  # type: ignore[attr-defined]
    affine.SetCenter(transform.GetCenter())  # type: ignore[attr-defined]
    matrix = np.asarray(affine.GetMatrix(), dtype=float).reshape(3, 3)
    center = np.asarray(affine.GetCenter(), dtype=float)
    translation = np.asarray(affine.GetTranslation(), dtype=float)
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = translation + center - matrix @ center
    return out


def lps_matrix_to_itk_affine(matrix: np.ndarray) -> sitk.AffineTransform:
    """An ITK ``AffineTransform`` (centre at the origin) from a 4x4 LPS point mapping."""
    matrix = np.asarray(matrix, dtype=float)
    out = sitk.AffineTransform(3)
    out.SetMatrix([float(v) for v in matrix[:3, :3].ravel()])
    out.SetTranslation([float(v) for v in matrix[:3, 3]])
    return out


def lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """Convert a 4x4 point mapping between LPS worlds into one between RAS worlds."""
    return FLIP4 @ np.asarray(matrix, dtype=float) @ FLIP4


ras_to_lps = lps_to_ras


@contextlib.contextmanager
def itk_threads(threads: int) -> Iterator[None]:
    """Run SimpleITK filters with ``threads`` threads by default, restoring the old value.

    Some filters that SimpleITK builds internally (the registration's metric and
    pyramid) follow the global default rather than a per-object setting; with more
    than one thread ITK's thread pool sums partial results in a varying order, so only
    ``threads=1`` makes results identical to the bit from run to run.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads!r}")
    previous = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(previous)
