"""A synthetic whole-head T1w with a known pose, for tests and benchmarks.

Independent of the demo generator: the brain is nilearn's MNI152 template; around it
are layers set by the distance to the brain mask (CSF, skull with diploe, scalp fat,
skin), a neck, a smooth multiplicative bias field, Rician noise and a rigid head pose.
The image is stored on a grid of a chosen orientation (e.g. LPS) and obliquity, so
what the anatomy stage must undo is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from brainharmony.anat.templates import load_template

#: (inner distance mm, outer distance mm, intensity) of the layers outside the brain.
LAYERS: tuple[tuple[float, float, float], ...] = (
    (0.0, 2.5, 0.12),  # CSF
    (2.5, 4.0, 0.04),  # outer table of the skull
    (4.0, 6.0, 0.30),  # diploe (marrow)
    (6.0, 7.5, 0.04),  # inner table
    (7.5, 11.5, 0.95),  # scalp fat
    (11.5, 13.5, 0.45),  # skin and muscle
)


@dataclass(frozen=True)
class Phantom:
    """A synthetic T1w and its truth.

    Attributes
    ----------
    image : nibabel.Nifti1Image
        Whole-head T1w, int16, shape ``(nx, ny, nz)`` on the requested grid.
    mni_to_t1w : ndarray of shape (4, 4)
        True RAS point mapping from template world to T1w world.
    brain_mask : nibabel.Nifti1Image
        The template brain mask carried into T1w space (uint8, same grid as ``image``).
    """

    image: nib.Nifti1Image
    mni_to_t1w: np.ndarray
    brain_mask: nib.Nifti1Image


def _head_canvas(resolution_mm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head intensities and brain mask on a padded template-aligned grid, with its affine."""
    tpl = load_template(resolution_mm=resolution_mm)
    pad_lo = np.array([30, 30, 70]) // resolution_mm
    pad_hi = np.array([30, 30, 30]) // resolution_mm
    brain = np.pad(
        np.asarray(tpl.image.dataobj, np.float32), list(zip(pad_lo, pad_hi, strict=True))
    )
    mask = np.pad(np.asarray(tpl.mask.dataobj) > 0, list(zip(pad_lo, pad_hi, strict=True)))
    affine = tpl.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ pad_lo
    dist = ndi.distance_transform_edt(~mask, sampling=[resolution_mm] * 3)
    head = np.where(mask, brain, 0.0).astype(np.float32)
    for inner, outer, value in LAYERS:
        head[(dist > inner) & (dist <= outer)] = value
    # A neck: an elliptic column of muscle under the brain, wrapped in fat.
    ijk = np.indices(mask.shape, dtype=np.float32)
    xyz = np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3, None, None, None]
    ell = ((xyz[0] / 52.0) ** 2 + ((xyz[1] + 25.0) / 48.0) ** 2) ** 0.5
    neck = (xyz[2] < -35.0) & (ell <= 1.0) & (head == 0)
    head[neck & (ell > 0.92)] = 0.9
    head[neck & (ell <= 0.92)] = 0.45
    return head, mask.astype(np.float32), affine


def _grid(
    extent_lo: np.ndarray, extent_hi: np.ndarray, zooms: np.ndarray, orientation: str, oblique_deg
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An affine and shape covering a world box, stored with the given axis codes."""
    axes = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    lin = np.zeros((3, 3))
    for col, code in enumerate(orientation):
        axis, sign = axes[code]
        lin[axis, col] = sign * zooms[col]
    rot = Rotation.from_euler("x", oblique_deg, degrees=True).as_matrix()
    lin = rot @ lin
    centre = (extent_lo + extent_hi) / 2
    # The box in grid axes: project the half-extent on each (rotated) axis.
    half = (extent_hi - extent_lo) / 2
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    local = (corners * half) @ np.linalg.inv(lin).T
    shape = np.ceil(np.ptp(local, axis=0)).astype(int) + 1
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = centre - lin @ ((shape - 1) / 2)
    return affine, tuple(int(s) for s in shape)  # type: ignore[return-value]


def make_phantom(
    *,
    zooms_mm: tuple[float, float, float] = (2.0, 2.0, 2.0),
    rotation_deg: tuple[float, float, float] = (8.0, -5.0, 6.0),
    translation_mm: tuple[float, float, float] = (4.0, -9.0, 14.0),
    orientation: str = "LPS",
    oblique_deg: float = 0.0,
    bias_strength: float = 0.25,
    noise: float = 0.02,
    seed: int = 0,
    canvas_mm: int = 2,
) -> Phantom:
    """Build a whole-head T1w with a known pose.

    Parameters
    ----------
    zooms_mm : tuple of 3 floats
        Voxel size along the stored axes.
    rotation_deg : tuple of 3 floats
        Head rotation about the template's x, y, z axes (degrees, extrinsic XYZ).
    translation_mm : tuple of 3 floats
        Head translation (RAS mm).
    orientation : str
        Axis codes of the stored grid, e.g. ``"LPS"`` or ``"RAS"``.
    oblique_deg : float
        Tilt of the stored grid about the world x axis (an oblique affine).
    bias_strength : float
        Peak-to-peak amplitude of the log bias field.
    noise : float
        Rician noise sigma relative to the white-matter intensity.
    seed : int
        Seed of the noise.
    canvas_mm : int
        Resolution of the template the head is built from (1 or 2).

    Returns
    -------
    Phantom
    """
    head, brain, canvas_affine = _head_canvas(canvas_mm)
    rot = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    mni_to_t1w = np.eye(4)
    mni_to_t1w[:3, :3] = rot
    mni_to_t1w[:3, 3] = translation_mm
    # The head's extent in T1w world (a field of view that cuts part of the neck).
    idx = np.argwhere(head > 0)
    pts = nib.affines.apply_affine(mni_to_t1w @ canvas_affine, idx)
    lo, hi = pts.min(axis=0) - 6, pts.max(axis=0) + 6
    lo[2] = max(lo[2], hi[2] - 230.0)
    affine, shape = _grid(lo, hi, np.asarray(zooms_mm, float), orientation, oblique_deg)
    # T1w voxel -> canvas voxel, then linear interpolation.
    to_canvas = np.linalg.inv(canvas_affine) @ np.linalg.inv(mni_to_t1w) @ affine
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    src = to_canvas[:3, :3] @ ijk + to_canvas[:3, 3:4]
    values = ndi.map_coordinates(head, src, order=1, cval=0.0).reshape(shape)
    mask = ndi.map_coordinates(brain, src, order=1, cval=0.0).reshape(shape) >= 0.5
    # Smooth multiplicative bias in world coordinates.
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape) / 100.0
    log_bias = 0.6 * world[0] - 0.4 * world[1] + 0.5 * world[2] + 0.3 * world[0] * world[2]
    log_bias = log_bias - log_bias.mean()
    log_bias *= bias_strength / max(float(np.ptp(log_bias)), 1e-9)
    values = values * np.exp(log_bias)
    rng = np.random.default_rng(seed)
    noisy = np.hypot(values + rng.normal(0, noise, shape), rng.normal(0, noise, shape))
    data = np.round(noisy * 1000).astype(np.int16)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    return Phantom(image, mni_to_t1w, mask_img)
