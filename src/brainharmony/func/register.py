"""BOLD reference -> T1w registration and the single native -> template resampling.

Conventions
-----------
Every matrix here is a 4 x 4 map between **world (scanner RAS+, mm)** coordinates, named
for the direction in which it carries points:

* ``motion[v]``: boldref world -> volume ``v`` world (:mod:`brainharmony.func.motion`);
* ``bold_to_t1w``: boldref world -> T1w world (rigid, this module);
* ``t1w_to_template``: T1w world -> template world (the anatomy stage's affine).

A template-grid voxel ``ijk`` is sampled in the native data of volume ``v`` at

    inv(A_bold) @ motion[v] @ inv(bold_to_t1w) @ inv(t1w_to_template) @ A_template @ ijk

so every volume is interpolated exactly once, from its native grid to the template
grid (:func:`resample_to_template`). SimpleITK transforms live in LPS+ and map fixed
points to moving points; :func:`read_itk_affine` converts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainharmony.io import InputDataError, PathLike

logger = logging.getLogger(__name__)

FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def _check_matrix(name: str, m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must be a finite 4 x 4 matrix, got shape {m.shape}")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"{name} must be affine (last row 0 0 0 1), got {m[3]}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-9:
        raise ValueError(f"{name} is singular")
    return m


# --------------------------------------------------------------------------------------
# Transform files
# --------------------------------------------------------------------------------------
def read_itk_affine(path: PathLike) -> np.ndarray:
    """Read an ITK affine-family transform file as a RAS world 4 x 4 matrix.

    The ITK transform maps *fixed* points to *moving* points in LPS+; so does the
    returned matrix, in RAS+. For ``from-T1w_to-<tpl>_mode-image_xfm.txt`` (fixed =
    template, moving = T1w) the result maps template points to T1w points; invert it
    to get ``t1w_to_template``.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    ndarray of shape (4, 4)
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "transform file not found")
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as err:
        raise InputDataError(path, f"cannot read ITK transform: {err}") from err
    if tx.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(tx)
        if composite.GetNumberOfTransforms() != 1:
            raise InputDataError(
                path, "composite (nonlinear) transforms are not supported; give the affine"
            )
        tx = composite.GetNthTransform(0)
    try:
        matrix = np.array(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
        translation = np.array(tx.GetTranslation(), dtype=np.float64)
        center = np.array(tx.GetCenter(), dtype=np.float64)
    except (AttributeError, RuntimeError) as err:
        raise InputDataError(path, f"{tx.GetName()} is not an affine transform") from err
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = translation + center - matrix @ center
    return FLIP4 @ lps @ FLIP4


def write_itk_affine(path: PathLike, fixed_to_moving_ras: np.ndarray) -> Path:
    """Write a RAS world matrix (fixed -> moving points) as an ITK affine text file.

    Parameters
    ----------
    path : path-like
    fixed_to_moving_ras : ndarray of shape (4, 4)

    Returns
    -------
    Path
    """
    from brainharmony.io import write_text

    m = FLIP4 @ _check_matrix("fixed_to_moving_ras", fixed_to_moving_ras) @ FLIP4
    params = [*m[:3, :3].ravel(), *m[:3, 3]]
    text = (
        "#Insight Transform File V1.0\n"
        "#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(f'{v:.12g}' for v in params)}\n"
        "FixedParameters: 0 0 0\n"
    )
    return write_text(path, text)


# --------------------------------------------------------------------------------------
# BOLD -> T1w
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoregSettings:
    """Settings of :func:`register_bold_to_t1w` (SimpleITK Mattes mutual information).

    Attributes
    ----------
    bins : int
        Histogram bins of the metric.
    sampling_fraction : float
        Fraction of the fixed-image voxels sampled (fixed seed: reproducible).
    shrink : tuple of int
        Multi-resolution shrink factors of the T1w (coarse to fine). The finest level
        stops at half the T1w resolution: BOLD voxels are coarser still, and the full
        resolution cost 5-10x the time for no gain on the demo data.
    smoothing_mm : tuple of float
        Gaussian smoothing per level (mm).
    iterations : int
        Optimiser iterations per level.
    max_step_mm : float
        Largest allowed distance from the header alignment (translation plus 50 mm x
        rotation): beyond it the registration is rejected and the header alignment
        kept, with a warning (both recorded in the sidecar).
    """

    bins: int = 32
    sampling_fraction: float = 0.1
    shrink: tuple[int, ...] = (4, 2)
    smoothing_mm: tuple[float, ...] = (4.0, 2.0)
    iterations: int = 60
    max_step_mm: float = 20.0

    def __post_init__(self) -> None:
        if len(self.shrink) != len(self.smoothing_mm):
            raise ValueError("shrink and smoothing_mm must have the same length")
        if not 0 < self.sampling_fraction <= 1:
            raise ValueError(f"sampling_fraction must be in (0, 1], got {self.sampling_fraction}")


@dataclass(frozen=True)
class CoregResult:
    """Output of :func:`register_bold_to_t1w`.

    Attributes
    ----------
    bold_to_t1w : ndarray of shape (4, 4)
        boldref world -> T1w world (RAS mm).
    report : dict
        Metric value, step from the header alignment, whether it was accepted.
    """

    bold_to_t1w: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image (LPS) from a RAS voxel array and its affine."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).T))
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    direction = (FLIP4[:3, :3] @ affine[:3, :3]) / zooms
    origin = FLIP4[:3, :3] @ affine[:3, 3]
    img.SetSpacing([float(z) for z in zooms])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in origin])
    return img


def register_bold_to_t1w(
    boldref: np.ndarray,
    bold_affine: np.ndarray,
    t1w: np.ndarray,
    t1w_affine: np.ndarray,
    *,
    t1w_mask: np.ndarray | None = None,
    settings: CoregSettings | None = None,
    seed: int = 1,
) -> CoregResult:
    """Rigid registration of the BOLD reference to the T1w (mutual information).

    The search starts from the header alignment (the two images share the scanner's
    world frame), which is the identity here.

    Parameters
    ----------
    boldref : ndarray of shape (n_x, n_y, n_z)
        BOLD reference volume (moving).
    bold_affine : ndarray of shape (4, 4)
    t1w : ndarray of shape (m_x, m_y, m_z)
        T1w (fixed), ideally bias-corrected and brain-extracted.
    t1w_affine : ndarray of shape (4, 4)
    t1w_mask : ndarray of bool, shape (m_x, m_y, m_z), optional
        Where the metric is evaluated (brain).
    settings : CoregSettings, optional
    seed : int
        Seed of the metric's random sampling.

    Returns
    -------
    CoregResult
    """
    import SimpleITK as sitk

    settings = settings or CoregSettings()
    bold_affine = _check_matrix("bold_affine", bold_affine)
    t1w_affine = _check_matrix("t1w_affine", t1w_affine)
    if np.asarray(boldref).ndim != 3 or np.asarray(t1w).ndim != 3:
        raise ValueError("boldref and t1w must be 3-D arrays")
    fixed = _to_sitk(t1w, t1w_affine)
    moving = _to_sitk(boldref, bold_affine)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(settings.sampling_fraction, seed)
    if t1w_mask is not None:
        mask = _to_sitk(np.asarray(t1w_mask, dtype=np.float32), t1w_affine)
        reg.SetMetricFixedMask(sitk.Cast(mask > 0.5, sitk.sitkUInt8))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=settings.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(settings.shrink))
    reg.SetSmoothingSigmasPerLevel(list(settings.smoothing_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    # Rotation centre: the centre of the BOLD field of view.
    shape = np.array(np.asarray(boldref).shape)
    center_ras = bold_affine[:3, :3] @ ((shape - 1) / 2) + bold_affine[:3, 3]
    init = sitk.Euler3DTransform()
    init.SetCenter([float(v) for v in FLIP4[:3, :3] @ center_ras])
    reg.SetInitialTransform(init, inPlace=False)
    reg.SetNumberOfThreads(1)
    try:
        result = reg.Execute(fixed, moving)
    except RuntimeError as err:
        logger.warning("BOLD -> T1w registration failed (%s); keeping the header alignment", err)
        return CoregResult(np.eye(4), {"Accepted": False, "Reason": str(err)})
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(result).GetNthTransform(0))
    m = np.eye(4)
    m[:3, :3] = np.array(euler.GetMatrix()).reshape(3, 3)
    c = np.array(euler.GetCenter())
    m[:3, 3] = np.array(euler.GetTranslation()) + c - m[:3, :3] @ c
    t1w_to_bold = FLIP4 @ m @ FLIP4  # fixed (T1w) -> moving (BOLD), RAS
    bold_to_t1w = np.linalg.inv(t1w_to_bold)
    angles = np.array(euler.GetParameters()[:3])
    step = float(np.linalg.norm(bold_to_t1w[:3, 3] + bold_to_t1w[:3, :3] @ center_ras - center_ras))
    step += 50.0 * float(np.abs(angles).sum())
    report = {
        "Method": "SimpleITK Euler3D, Mattes mutual information, regular-step gradient",
        "Metric": float(reg.GetMetricValue()),
        "Iterations": int(reg.GetOptimizerIteration()),
        "StepFromHeaderMM": round(step, 4),
        "Accepted": step <= settings.max_step_mm,
    }
    if step > settings.max_step_mm:
        logger.warning(
            "BOLD -> T1w registration moved %.1f mm from the header alignment (limit %.1f); "
            "keeping the header alignment",
            step,
            settings.max_step_mm,
        )
        return CoregResult(np.eye(4), report)
    logger.info("BOLD -> T1w: %.3f mm from the header alignment", step)
    return CoregResult(bold_to_t1w, report)


# --------------------------------------------------------------------------------------
# One resampling: native -> template
# --------------------------------------------------------------------------------------
def native_to_template_maps(
    bold_affine: np.ndarray,
    motion: np.ndarray,
    bold_to_t1w: np.ndarray,
    t1w_to_template: np.ndarray,
    template_affine: np.ndarray,
) -> np.ndarray:
    """Per-volume 4 x 4 maps from template voxel indices to native BOLD voxel indices.

    Parameters
    ----------
    bold_affine : ndarray of shape (4, 4)
    motion : ndarray of shape (n_volumes, 4, 4)
        boldref world -> volume world.
    bold_to_t1w : ndarray of shape (4, 4)
    t1w_to_template : ndarray of shape (4, 4)
    template_affine : ndarray of shape (4, 4)

    Returns
    -------
    ndarray of shape (n_volumes, 4, 4)
    """
    motion = np.asarray(motion, dtype=np.float64)
    if motion.ndim != 3 or motion.shape[1:] != (4, 4):
        raise ValueError(f"motion must have shape (n_volumes, 4, 4), got {motion.shape}")
    a_bold = _check_matrix("bold_affine", bold_affine)
    b2t = _check_matrix("bold_to_t1w", bold_to_t1w)
    t2m = _check_matrix("t1w_to_template", t1w_to_template)
    a_tpl = _check_matrix("template_affine", template_affine)
    tail = np.linalg.inv(b2t) @ np.linalg.inv(t2m) @ a_tpl
    return np.linalg.inv(a_bold) @ motion @ tail


def resample_to_template(
    data: np.ndarray,
    maps: np.ndarray,
    points: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    chunk: int = 64,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Sample every native volume at template points (trilinear), once.

    Parameters
    ----------
    data : ndarray of shape (n_x, n_y, n_z, n_volumes)
        Native BOLD (after slice-timing correction).
    maps : ndarray of shape (n_volumes, 4, 4)
        Template voxel -> native voxel (:func:`native_to_template_maps`).
    points : ndarray of shape (n_points, 3)
        Template voxel indices to sample (e.g. the voxels of a brain mask).
    valid : ndarray of bool, shape (n_x, n_y, n_z), optional
        Native voxels holding usable data; a template point whose interpolation
        touches an unusable voxel in any volume loses coverage.
    chunk : int
        Volumes per batch.
    device : str

    Returns
    -------
    samples : ndarray of shape (n_points, n_volumes), float32
    coverage : ndarray of bool, shape (n_points,)
        True where every volume's sample lay inside the native field of view and
        touched only valid voxels.
    """
    import torch
    import torch.nn.functional as F

    from brainharmony.func.motion import inside_grid

    data = np.asarray(data)
    maps = np.asarray(maps, dtype=np.float64)
    points = np.asarray(points)
    if data.ndim != 4:
        raise ValueError(f"data must be 4-D, got shape {data.shape}")
    n_vol = data.shape[3]
    if maps.shape != (n_vol, 4, 4):
        raise ValueError(f"maps must have shape ({n_vol}, 4, 4), got {maps.shape}")
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (n_points, 3), got {points.shape}")
    shape = np.array(data.shape[:3])
    norm = np.zeros((4, 4))
    for row, axis in enumerate((2, 1, 0)):
        norm[row, axis] = 2.0 / (shape[axis] - 1)
        norm[row, 3] = -1.0
    norm[3, 3] = 1.0
    to_grid = norm @ maps  # template voxel -> grid_sample coordinates (z, y, x)
    vols = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, 3, 0), dtype=np.float32))
    vols = vols.unsqueeze(1).to(device)
    pts_h = torch.from_numpy(np.concatenate([points, np.ones((points.shape[0], 1))], axis=1)).to(
        device
    )
    valid_vol = None
    if valid is not None:
        bad = ~np.asarray(valid, dtype=bool)
        if bad.any():
            valid_vol = torch.from_numpy(np.ascontiguousarray(bad, dtype=np.float32))[None, None]
            valid_vol = valid_vol.to(device)
    samples = np.empty((points.shape[0], n_vol), dtype=np.float32)
    coverage = torch.ones(points.shape[0], dtype=torch.bool, device=device)
    for start in range(0, n_vol, chunk):
        stop = min(n_vol, start + chunk)
        m = torch.from_numpy(to_grid[start:stop, :3, :]).to(device)
        # Coordinates in float64, sampled as float32 (grid_sample's dtype).
        grid = (pts_h @ m.transpose(1, 2)).float()  # (n, P, 3)
        coverage &= inside_grid(grid, 1e-5).all(dim=0)
        out = F.grid_sample(
            vols[start:stop],
            grid[:, None, None],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        samples[:, start:stop] = out[:, 0, 0, 0, :].T.cpu().numpy()
        if valid_vol is not None:
            touched = F.grid_sample(
                valid_vol.expand(stop - start, -1, -1, -1, -1),
                grid[:, None, None],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )
            coverage &= (touched[:, 0, 0, 0, :] <= 1e-6).all(dim=0)
    return samples, coverage.cpu().numpy()


def resample_image(
    data: np.ndarray,
    affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    world_map: np.ndarray | None = None,
    *,
    order: int = 1,
) -> np.ndarray:
    """Resample a 3-D image onto another grid (for T1w and masks; scipy).

    Parameters
    ----------
    data : ndarray of shape (n_x, n_y, n_z)
    affine : ndarray of shape (4, 4)
        Voxel -> world of ``data``.
    target_affine : ndarray of shape (4, 4)
    target_shape : tuple of 3 int
    world_map : ndarray of shape (4, 4), optional
        Target world -> source world (identity when absent).
    order : int
        Spline order (0 nearest, 1 trilinear).

    Returns
    -------
    ndarray of shape ``target_shape``, float32
    """
    from scipy import ndimage

    w = np.eye(4) if world_map is None else _check_matrix("world_map", world_map)
    m = (
        np.linalg.inv(_check_matrix("affine", affine))
        @ w
        @ _check_matrix("target_affine", target_affine)
    )
    out = ndimage.affine_transform(
        np.asarray(data, dtype=np.float32),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=tuple(int(n) for n in target_shape),
        order=order,
        mode="constant",
        cval=0.0,
    )
    return out.astype(np.float32)
