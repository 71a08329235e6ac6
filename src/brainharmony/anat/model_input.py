"""The model-ready T1 volume: a fixed box cut from the template grid, skull-stripped, normalised.

BrainHarmonix-S takes ``160 x 192 x 160`` voxels at 1 mm. The box here is defined
physically (``box_mm``) and centred on the template brain mask's bounding-box centre,
so at 2 mm the same box is ``80 x 96 x 80`` voxels. The box is cut from the template
grid without resampling (voxels outside the grid are 0).

Normalisations
--------------
``zscore_brain`` (default)
    z-score over the brain-mask voxels inside the box; background 0.
``zscore_volume``
    The official loader's choice: the skull-stripped box z-scored over *all* its voxels,
    background included (background then sits at ``-mean/std``, not 0).
``none``
    Skull-stripped intensities as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

NORMALISATIONS: tuple[str, ...] = ("zscore_brain", "zscore_volume", "none")
#: BrainHarmonix-S's input box (mm; 160 x 192 x 160 voxels at 1 mm).
PAPER_BOX_MM: tuple[int, int, int] = (160, 192, 160)


def box_shape(box_mm: Sequence[float], resolution_mm: float) -> tuple[int, int, int]:
    """Voxels of a ``box_mm`` box at ``resolution_mm``.

    Raises
    ------
    ValueError
        When a side is not a whole number of voxels.
    """
    if len(box_mm) != 3 or min(box_mm) <= 0:
        raise ValueError(f"model box must be 3 positive sizes in mm; got {list(box_mm)}")
    shape = np.asarray(box_mm, float) / float(resolution_mm)
    if not np.allclose(shape, np.round(shape)):
        raise ValueError(
            f"model box {list(box_mm)} mm is not a whole number of {resolution_mm} mm voxels"
        )
    return tuple(round(float(s)) for s in shape)  # type: ignore[return-value]


def box_start(
    affine: np.ndarray, centre_mm: Sequence[float], shape: Sequence[int]
) -> tuple[int, int, int]:
    """First voxel index (may be negative) of a ``shape`` box centred on ``centre_mm``.

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        Grid affine (RAS+, axis-aligned).
    centre_mm : sequence of 3 floats
        World point the box is centred on.
    shape : sequence of 3 ints
    """
    centre_vox = np.linalg.solve(affine, np.append(np.asarray(centre_mm, float), 1.0))[:3]
    start = np.floor(centre_vox - (np.asarray(shape) - 1) / 2 + 0.5).astype(int)
    return tuple(int(s) for s in start)  # type: ignore[return-value]


def crop(data: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Cut ``shape`` voxels from ``data`` starting at ``start``; outside the array is 0.

    Parameters
    ----------
    data : ndarray of shape (nx, ny, nz)
    start : sequence of 3 ints (may be negative)
    shape : sequence of 3 ints

    Returns
    -------
    ndarray of shape ``shape``, same dtype as ``data``.
    """
    out = np.zeros(tuple(shape), dtype=data.dtype)
    src, dst = [], []
    for s, n, size in zip(start, shape, data.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, size)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = data[tuple(src)]
    return out


def normalise(box: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """Skull-strip and normalise a box.

    Parameters
    ----------
    box : ndarray of shape (nx, ny, nz)
    mask : ndarray of bool, same shape
    method : {"zscore_brain", "zscore_volume", "none"}

    Returns
    -------
    ndarray of float32, same shape.
    """
    if method not in NORMALISATIONS:
        raise ValueError(
            f"normalisation must be one of {', '.join(NORMALISATIONS)}; got {method!r}"
        )
    stripped = np.where(mask, box, 0).astype(np.float64)
    if method == "none":
        return stripped.astype(np.float32)
    values = stripped[mask] if method == "zscore_brain" else stripped.ravel()
    if values.size < 2:
        raise ValueError("the brain mask inside the model box is empty")
    mean = float(values.mean())
    std = float(values.std())
    if std <= 0:
        raise ValueError("the image is constant inside the brain mask")
    out = (stripped - mean) / std
    if method == "zscore_brain":
        out[~mask] = 0.0
    return out.astype(np.float32)


def model_ready(
    image: nib.Nifti1Image,
    mask: nib.Nifti1Image,
    centre_mm: Sequence[float],
    box_mm: Sequence[float] = PAPER_BOX_MM,
    normalisation: str = "zscore_brain",
) -> nib.Nifti1Image:
    """Cut, skull-strip and normalise the model-ready box from a template-space T1w.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        T1w on the template grid, shape ``(nx, ny, nz)``, isotropic voxels.
    mask : nibabel.Nifti1Image
        Brain mask on the same grid.
    centre_mm : sequence of 3 floats
        Box centre (world, RAS mm), e.g. the template brain's bounding-box centre.
    box_mm : sequence of 3 floats
        Box size in mm (a whole number of voxels per side).
    normalisation : str
        See the module docstring.

    Returns
    -------
    nibabel.Nifti1Image
        float32, shape ``box_mm / voxel size``, affine of the box on the template grid.
    """
    affine = np.asarray(image.affine, float)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(zooms, zooms[0]):
        raise ValueError(f"the template grid must be isotropic; got voxel sizes {zooms}")
    shape = box_shape(box_mm, float(zooms[0]))
    start = box_start(affine, centre_mm, shape)
    box = crop(np.asarray(image.dataobj, np.float32), start, shape)
    box_mask = crop(np.asarray(mask.dataobj) > 0, start, shape)
    data = normalise(box, box_mask, normalisation)
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
    out = nib.Nifti1Image(data, box_affine)
    out.header.set_xyzt_units("mm")
    out.header.set_sform(box_affine, code=4)
    out.header.set_qform(box_affine, code=4)
    logger.info("model box %s voxels from index %s (%s)", shape, start, normalisation)
    return out
