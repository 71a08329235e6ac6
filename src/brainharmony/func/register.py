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

from brainharmony.func.defaults import (
    COREG_MAX_BBR_COST,
    COREG_MIN_DICE,
    COREG_MIN_NMI,
    DEFAULT_COREG,
    canonical_coreg,
)
from brainharmony.func.motion import inside_grid, inside_voxels, resolve_backend, sample_volumes
from brainharmony.io import InputDataError, PathLike, write_text

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
    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "transform file not found")
    lps = _read_itk_affine_text(path)
    if lps is not None:
        return FLIP4 @ lps @ FLIP4
    import SimpleITK as sitk

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


#: ITK text transforms read without SimpleITK: 9 matrix entries (row-major) then the
#: translation, the centre as FixedParameters (the layout ITK writes for these types).
_ITK_TEXT_AFFINES = ("AffineTransform_double_3_3", "MatrixOffsetTransformBase_double_3_3")


def _read_itk_affine_text(path: Path) -> np.ndarray | None:
    """The LPS 4 x 4 matrix of a one-transform ITK text file of an affine type, or None
    for anything else (binary, composite, other types: SimpleITK reads those). Parsing
    it directly spares a job SimpleITK's import (about 0.12 s); the result is the one
    SimpleITK gives (tests/unit/func/test_register.py)."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (UnicodeDecodeError, OSError):
        return None
    if not lines or lines[0] != "#Insight Transform File V1.0":
        return None
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            if line != "#Transform 0":
                return None  # several transforms
            continue
        key, sep, value = line.partition(":")
        if not sep or key in fields:
            return None
        fields[key.strip()] = value.strip()
    if fields.get("Transform") not in _ITK_TEXT_AFFINES or set(fields) != {
        "Transform",
        "Parameters",
        "FixedParameters",
    }:
        return None
    try:
        params = np.array([float(v) for v in fields["Parameters"].split()])
        center = np.array([float(v) for v in fields["FixedParameters"].split()])
    except ValueError:
        return None
    if params.shape != (12,) or center.shape != (3,):
        return None
    matrix = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = params[9:] + center - matrix @ center
    return lps


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
#: Radius (mm) that turns rotation angles (rad) into millimetres in the optimiser's
#: parameters and in the displacement reports (as framewise displacement does).
RADIUS_MM = 50.0


@dataclass(frozen=True)
class CoregSettings:
    """Settings of :func:`register_bold_to_t1w` (rigid, 6 degrees of freedom).

    Attributes
    ----------
    bins : int
        Histogram bins (per image) of the normalised mutual information.
    rim_mm : float
        The mutual information is evaluated on T1w points inside the brain mask
        dilated by this much (the brain outline is the strongest shared feature).
    coarse_mm, fine_mm : float
        Spacing of the T1w sample points of the coarse (multi-start) and fine levels.
    coarse_fwhm_mm : float
        Extra Gaussian smoothing (FWHM) of both images at the coarse level.
    start_angles_deg : tuple of float
        Rotations tried about each axis at the start (all combinations).
    start_shifts_mm : tuple of float
        Translations tried along each axis (one axis at a time) around the
        centre-of-mass alignment.
    n_refine : int
        Best starts refined at the coarse level.
    bbr_points : int
        White-matter boundary points sampled for boundary-based registration.
    bbr_wm_mm, bbr_gm_mm : float
        Distances inside (white matter) and outside (grey matter) the boundary at
        which the BOLD reference is sampled.
    bbr_slope : float
        Slope of the per-point cost ``1 - tanh(slope * Q)``, ``Q`` the percent
        contrast (grey minus white matter, T2*-weighted BOLD).
    min_dice : float
        QC gate: least Dice overlap of the BOLD brain mask (mapped to the T1w) with
        the T1w brain mask.
    max_bbr_cost : float
        QC gate (``bbr``): largest final boundary cost (0 perfect contrast, 1 none).
    min_nmi : float
        QC gate (``mi``, and ``bbr`` without a T1w brain mask): least normalised mutual
        information ``(H(A) + H(B)) / H(A, B)`` at the fine level (1: independent).
    seed : int
        Seed of the boundary-point subsampling (reproducible).
    """

    bins: int = 32
    rim_mm: float = 8.0
    coarse_mm: float = 8.0
    fine_mm: float = 4.0
    coarse_fwhm_mm: float = 8.0
    start_angles_deg: tuple[float, ...] = (-12.0, 0.0, 12.0)
    start_shifts_mm: tuple[float, ...] = (-10.0, 10.0)
    n_refine: int = 2
    bbr_points: int = 4000
    bbr_wm_mm: float = 2.0
    bbr_gm_mm: float = 2.0
    bbr_slope: float = 0.1
    min_dice: float = COREG_MIN_DICE
    max_bbr_cost: float = COREG_MAX_BBR_COST
    min_nmi: float = COREG_MIN_NMI
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bins < 4:
            raise ValueError(f"bins must be >= 4, got {self.bins}")
        if min(self.coarse_mm, self.fine_mm) <= 0:
            raise ValueError("coarse_mm and fine_mm must be > 0")
        if not 0.0 <= self.min_dice <= 1.0:
            raise ValueError(f"min_dice must be in [0, 1], got {self.min_dice}")
        if not 0.0 <= self.max_bbr_cost <= 2.0:
            raise ValueError(f"max_bbr_cost must be in [0, 2], got {self.max_bbr_cost}")
        if self.min_nmi < 1.0:
            raise ValueError(f"min_nmi must be >= 1, got {self.min_nmi}")


@dataclass(frozen=True)
class CoregResult:
    """Output of :func:`register_bold_to_t1w`.

    Attributes
    ----------
    bold_to_t1w : ndarray of shape (4, 4)
        boldref world -> T1w world (RAS mm).
    report : dict
        Method, QC metrics (``Dice``, ``NMI``, ``BBRCost``), the thresholds, the
        distance from the header alignment and the time taken.
    failed : str
        Why the QC gate rejects the registration ("" when it passes).
    """

    bold_to_t1w: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)
    failed: str = ""


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def epi_brain_mask(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Brain mask of a BOLD reference from its own intensities.

    Otsu's threshold of the lightly smoothed image (intensities clipped to their
    0.5-99.5th percentiles), the largest connected component, an opening of 1.5
    voxels (detaches thin scalp signal), the largest component again and hole
    filling. EPI brain is much brighter than the scalp and the background, so this is
    the brain with some partial-volume rim.

    Parameters
    ----------
    data : ndarray of shape (n_x, n_y, n_z)
    affine : ndarray of shape (4, 4)

    Returns
    -------
    ndarray of bool, same shape
    """
    from scipy import ndimage as ndi

    # Local like scipy.ndimage, which skullstrip imports: the header coregistration
    # of a native run needs neither (about 0.2 s of imports per run).
    from brainharmony.anat.skullstrip import ball, largest_component, otsu_threshold

    zooms = _zooms(affine)
    smooth = ndi.gaussian_filter(np.asarray(data, np.float32), sigma=0.5)
    lo, hi = np.percentile(smooth, [0.5, 99.5])
    threshold = otsu_threshold(np.clip(smooth, lo, hi).ravel())
    mask = largest_component(smooth > threshold)
    opened = ndi.binary_opening(mask, structure=ball(1.5 * float(zooms.min()), zooms))
    if opened.any():
        mask = largest_component(opened)
    return np.asarray(ndi.binary_fill_holes(mask))


def _euler(params: np.ndarray) -> np.ndarray:
    """Rotation matrix of ``params[3:]`` (rotation angles x ``RADIUS_MM``, about x, y, z)."""
    ax, ay, az = np.asarray(params[3:6], dtype=np.float64) / RADIUS_MM
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


class _Problem:
    """The two images, prepared once; costs of a T1w -> BOLD world map.

    A parameter vector ``p`` (translations in mm, rotations as angle x RADIUS_MM)
    gives the T1w world -> boldref world map
    ``x_b = R(p) (x_t - c_t) + c_b + t(p)``, with ``c_t`` and ``c_b`` the centres of
    mass of the two brain masks: ``p = 0`` is the centre-of-mass alignment, and
    rotations turn about the brain's centre.
    """

    def __init__(
        self,
        boldref: np.ndarray,
        bold_affine: np.ndarray,
        bold_mask: np.ndarray,
        t1w: np.ndarray,
        t1w_affine: np.ndarray,
        t1w_mask: np.ndarray,
        settings: CoregSettings,
        *,
        boundary: bool,
    ) -> None:
        from scipy import ndimage as ndi

        self.settings = settings
        self.bold_affine = bold_affine
        self.bold_inv = np.linalg.inv(bold_affine)
        self.bold_shape = np.array(boldref.shape)
        zb = _zooms(bold_affine)
        zt = _zooms(t1w_affine)
        self.c_b = bold_affine[:3, :3] @ np.argwhere(bold_mask).mean(0) + bold_affine[:3, 3]
        self.c_t = t1w_affine[:3, :3] @ np.argwhere(t1w_mask).mean(0) + t1w_affine[:3, 3]
        inside = boldref[bold_mask]
        self.bold_max = float(np.percentile(inside, 99.0)) if inside.size else 1.0
        bold = np.asarray(boldref, np.float32) / max(self.bold_max, 1e-12)
        sigma_c = settings.coarse_fwhm_mm / 2.3548
        self.bold = {
            "fine": bold,
            "coarse": ndi.gaussian_filter(bold, sigma_c / zb),
        }
        self.bold_mask = np.asarray(bold_mask, np.float32)
        brain_t1 = np.where(t1w_mask, np.asarray(t1w, np.float32), 0.0)
        t1_max = float(np.percentile(brain_t1[t1w_mask], 99.0))
        brain_t1 /= max(t1_max, 1e-12)
        self.points: dict[str, np.ndarray] = {}
        self.t1_bins: dict[str, np.ndarray] = {}
        for level, spacing, fwhm in (
            ("coarse", settings.coarse_mm, np.hypot(settings.coarse_fwhm_mm, float(zb.mean()))),
            ("fine", settings.fine_mm, float(zb.mean())),
        ):
            step = np.maximum(1, np.round(spacing / zt).astype(int))
            smooth = ndi.gaussian_filter(brain_t1, (fwhm / 2.3548) / zt)
            sub = tuple(slice(0, None, int(s)) for s in step)
            rim = ndi.binary_dilation(t1w_mask[sub], structure=_ball(settings.rim_mm, zt * step))
            ijk = np.argwhere(rim) * step
            values = smooth[tuple(ijk.T)]
            self.points[level] = ijk @ t1w_affine[:3, :3].T + t1w_affine[:3, 3]
            self.t1_bins[level] = np.clip(
                (values * (settings.bins - 1) + 0.5).astype(np.int64), 0, settings.bins - 1
            )
        # Dice: T1w grid points at about the BOLD resolution.
        step = np.maximum(1, np.round(zb.mean() / zt).astype(int))
        sub = tuple(slice(0, None, int(s)) for s in step)
        grid = np.argwhere(np.ones(t1w_mask[sub].shape, bool)) * step
        self.dice_points = grid @ t1w_affine[:3, :3].T + t1w_affine[:3, 3]
        self.dice_t1 = t1w_mask[tuple(grid.T)]
        self.wm_points: np.ndarray | None = None
        if boundary:
            self._boundary(brain_t1, t1w_mask, t1w_affine)

    def _boundary(self, brain_t1: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> None:
        """White-matter boundary points and their outward normals (world mm)."""
        from scipy import ndimage as ndi

        from brainharmony.anat.skullstrip import largest_component, otsu_threshold

        s = self.settings
        zt = _zooms(affine)
        smooth = ndi.gaussian_filter(brain_t1, 0.5 / zt)
        threshold = otsu_threshold(smooth[mask])
        wm = largest_component((smooth > threshold) & mask)
        edge = wm & ~ndi.binary_erosion(wm)
        field_ = ndi.gaussian_filter(wm.astype(np.float32), 1.5 / zt)
        grads = np.stack(np.gradient(field_), axis=-1)[edge]  # per voxel index
        ijk = np.argwhere(edge)
        # d/dx_world = inv(A)^T d/dijk; outward: down the white-matter fraction.
        normals = -grads @ np.linalg.inv(affine[:3, :3])
        length = np.linalg.norm(normals, axis=1)
        ok = length > 1e-3
        ijk, normals = ijk[ok], normals[ok] / length[ok, None]
        rng = np.random.default_rng(s.seed)
        if len(ijk) > s.bbr_points:
            pick = rng.choice(len(ijk), s.bbr_points, replace=False)
            ijk, normals = ijk[pick], normals[pick]
        centres = ijk @ affine[:3, :3].T + affine[:3, 3]
        self.wm_points = centres - s.bbr_wm_mm * normals
        self.gm_points = centres + s.bbr_gm_mm * normals
        self.wm_threshold = threshold

    # ------------------------------------------------------------------ transforms
    def t1w_to_bold(self, params: np.ndarray) -> np.ndarray:
        """T1w world -> boldref world (4 x 4) of a parameter vector."""
        r = _euler(params)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = self.c_b + np.asarray(params[:3]) - r @ self.c_t
        return m

    def _sample(self, image: np.ndarray, points: np.ndarray, params: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi

        m = self.bold_inv @ self.t1w_to_bold(params)
        ijk = points @ m[:3, :3].T + m[:3, 3]
        return ndi.map_coordinates(image, ijk.T, order=1, mode="constant", cval=0.0)

    # ----------------------------------------------------------------------- costs
    def nmi(self, params: np.ndarray, level: str = "fine") -> float:
        """Normalised mutual information (partial-volume histogram of the BOLD side)."""
        bins = self.settings.bins
        b = np.clip(self._sample(self.bold[level], self.points[level], params), 0.0, 1.0)
        b = b * (bins - 1)
        b0 = np.minimum(b.astype(np.int64), bins - 2)
        w = b - b0
        idx = self.t1_bins[level] * bins + b0
        joint = np.bincount(idx, 1.0 - w, minlength=bins * bins)
        joint += np.bincount(idx + 1, w, minlength=bins * bins)
        joint /= joint.sum()
        joint = joint.reshape(bins, bins)

        def entropy(p: np.ndarray) -> float:
            p = p[p > 0]
            return float(-(p * np.log(p)).sum())

        return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / max(entropy(joint), 1e-12)

    def bbr_cost(self, params: np.ndarray) -> float:
        """Mean ``1 - tanh(slope * Q)``; points with a sample off the BOLD grid count 1."""
        assert self.wm_points is not None
        both = np.concatenate([self.wm_points, self.gm_points])
        values = self._sample(self.bold["fine"], both, params)
        w, g = values[: len(self.wm_points)], values[len(self.wm_points) :]
        total = w + g
        ok = (w > 0) & (g > 0)
        q = np.zeros_like(w)
        q[ok] = 200.0 * (g[ok] - w[ok]) / total[ok]
        cost = 1.0 - np.tanh(self.settings.bbr_slope * q)
        cost[~ok] = 1.0
        return float(cost.mean())

    def dice(self, params: np.ndarray) -> float:
        """Dice of the BOLD brain mask mapped to the T1w with the T1w brain mask.

        Counted within the BOLD field of view only (a slab that leaves out the
        cerebellum is not a misregistration).
        """
        from scipy import ndimage as ndi

        m = self.bold_inv @ self.t1w_to_bold(params)
        ijk = self.dice_points @ m[:3, :3].T + m[:3, 3]
        inside = np.all((ijk >= -0.5) & (ijk <= self.bold_shape - 0.5), axis=1)
        values = ndi.map_coordinates(self.bold_mask, ijk[inside].T, order=1, mode="nearest")
        bold = values >= 0.5
        t1 = self.dice_t1[inside]
        denom = int(bold.sum()) + int(t1.sum())
        return 2.0 * float((bold & t1).sum()) / max(denom, 1)


def _ball(radius_mm: float, zooms: np.ndarray) -> np.ndarray:
    from brainharmony.anat.skullstrip import ball

    return ball(radius_mm, zooms)


def _minimise(cost: Any, x0: np.ndarray, xtol: float, maxfev: int) -> tuple[np.ndarray, float]:
    """Powell's method from ``x0`` (unit steps of 1 mm or 1/RADIUS_MM rad)."""
    from scipy.optimize import minimize

    res = minimize(
        cost,
        np.asarray(x0, np.float64),
        method="Powell",
        options={"xtol": xtol, "ftol": 1e-5, "maxfev": maxfev, "direc": np.eye(6) * 2.0},
    )
    return np.asarray(res.x), float(res.fun)


def _prepare_t1w(
    t1w: np.ndarray, affine: np.ndarray, mask: np.ndarray, finest_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The T1w and mask on a grid no finer than ``finest_mm`` (block means)."""
    zooms = _zooms(affine)
    factor = np.maximum(1, np.floor(finest_mm / zooms + 1e-6).astype(int))
    if np.all(factor == 1):
        return t1w, affine, mask
    shape = np.array(t1w.shape) // factor
    cut = tuple(slice(0, int(n * f)) for n, f in zip(shape, factor, strict=True))

    def block(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)[cut]
        return a.reshape(shape[0], factor[0], shape[1], factor[1], shape[2], factor[2]).mean(
            axis=(1, 3, 5)
        )

    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * factor
    new[:3, 3] = affine[:3, :3] @ ((factor - 1) / 2.0) + affine[:3, 3]
    return block(t1w), new, block(mask) >= 0.5


def register_bold_to_t1w(
    boldref: np.ndarray,
    bold_affine: np.ndarray,
    t1w: np.ndarray,
    t1w_affine: np.ndarray,
    *,
    t1w_mask: np.ndarray | None = None,
    method: str = DEFAULT_COREG,
    settings: CoregSettings | None = None,
) -> CoregResult:
    """Rigid registration of the BOLD reference to the T1w brain, from the images.

    1. Brain masks: the BOLD reference's own (:func:`epi_brain_mask`); the T1w's
       given (the anatomy stage's), else the T1w's foreground (head) from the same
       Otsu procedure.
    2. Start: the centres of mass of the two masks aligned, then every combination of
       ``start_angles_deg`` about the three axes, each also shifted by
       ``start_shifts_mm`` along each axis, scored by the normalised mutual
       information (NMI) of smoothed images on coarse points; the ``n_refine`` best
       refined there (Powell), the best of those refined on fine points.
    3. ``bbr`` (with a T1w brain mask): boundary-based refinement (bbregister's
       cost): the BOLD reference sampled ``bbr_wm_mm`` inside and ``bbr_gm_mm``
       outside the T1w white-matter boundary (Otsu within the brain), per-point cost
       ``1 - tanh(slope * Q)``, ``Q = 200 (g - w) / (g + w)`` (grey matter brighter
       than white matter in T2*-weighted BOLD).
    4. QC: Dice of the BOLD brain mask mapped onto the T1w brain mask, the NMI and
       (``bbr``) the boundary cost, against the settings' thresholds; ``failed`` says
       which failed. No limit on the distance from the header alignment.

    Parameters
    ----------
    boldref : ndarray of shape (n_x, n_y, n_z)
        BOLD reference volume (moving).
    bold_affine : ndarray of shape (4, 4)
    t1w : ndarray of shape (m_x, m_y, m_z)
        Bias-corrected T1w (fixed).
    t1w_affine : ndarray of shape (4, 4)
    t1w_mask : ndarray of bool, shape (m_x, m_y, m_z), optional
        Brain mask of the T1w. Without it the T1w's head mask stands in, the
        boundary refinement and the Dice gate are skipped (``bbr`` then works as
        ``mi``).
    method : {"bbr", "mi"}
    settings : CoregSettings, optional

    Returns
    -------
    CoregResult
    """
    import time

    start = time.perf_counter()
    settings = settings or CoregSettings()
    method = canonical_coreg(method)
    if method == "header":
        raise ValueError("method 'header' needs no registration (use the identity)")
    bold_affine = _check_matrix("bold_affine", bold_affine)
    t1w_affine = _check_matrix("t1w_affine", t1w_affine)
    boldref = np.asarray(boldref, np.float32)
    t1w = np.asarray(t1w, np.float32)
    if boldref.ndim != 3 or t1w.ndim != 3:
        raise ValueError("boldref and t1w must be 3-D arrays")
    have_brain = t1w_mask is not None
    if t1w_mask is None:
        t1w_mask = epi_brain_mask(t1w, t1w_affine)  # the head, for a raw T1w
    t1w_mask = np.asarray(t1w_mask, bool)
    if t1w_mask.shape != t1w.shape:
        raise ValueError(f"t1w_mask shape {t1w_mask.shape} differs from the T1w {t1w.shape}")
    if not t1w_mask.any():
        raise ValueError("the T1w brain mask is empty")
    bold_mask = epi_brain_mask(boldref, bold_affine)
    t1w, t1w_affine, t1w_mask = _prepare_t1w(
        t1w, t1w_affine, t1w_mask, min(2.0, settings.fine_mm / 1.5)
    )
    boundary = method == "bbr" and have_brain
    problem = _Problem(
        boldref, bold_affine, bold_mask, t1w, t1w_affine, t1w_mask, settings, boundary=boundary
    )

    # Multi-start on coarse points.
    angles = np.asarray(settings.start_angles_deg, np.float64) * np.pi / 180.0 * RADIUS_MM
    shifts = [np.zeros(3)] + [
        np.eye(3)[axis] * s for axis in range(3) for s in settings.start_shifts_mm
    ]
    starts = [
        np.r_[shift, ax, ay, az]
        for ax in angles
        for ay in angles
        for az in angles
        for shift in shifts
    ]

    def coarse(p: np.ndarray) -> float:
        return -problem.nmi(p, "coarse")

    scores = np.array([coarse(p) for p in starts])
    best = np.argsort(scores)[: settings.n_refine]
    refined = [_minimise(coarse, starts[i], 1.0, 400) for i in best]
    x, _ = min(refined, key=lambda r: r[1])
    x, neg_nmi = _minimise(lambda p: -problem.nmi(p, "fine"), x, 0.2, 400)
    report: dict[str, Any] = {
        "Method": (
            "rigid; centre-of-mass alignment, multi-start, normalised mutual information"
            + (", boundary-based refinement (bbregister cost)" if boundary else "")
        ),
        "Target": "T1w brain (brain mask given)" if have_brain else "T1w head (no brain mask)",
        "Starts": len(starts),
    }
    if boundary:
        report["NMIStage"] = round(-neg_nmi, 5)
        x, _ = _minimise(problem.bbr_cost, x, 0.1, 600)
        report["BBRCost"] = round(problem.bbr_cost(x), 5)
        report["WhiteMatterPoints"] = len(problem.wm_points)
    report["NMI"] = round(problem.nmi(x, "fine"), 5)
    report["Dice"] = round(problem.dice(x), 5)
    t1w_to_bold = problem.t1w_to_bold(x)
    bold_to_t1w = np.linalg.inv(t1w_to_bold)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], np.float64) * (
        np.array(boldref.shape) - 1
    )
    world = corners @ bold_affine[:3, :3].T + bold_affine[:3, 3]
    moved = world @ bold_to_t1w[:3, :3].T + bold_to_t1w[:3, 3]
    report["MeanShiftFromHeaderMM"] = round(float(np.linalg.norm(moved - world, axis=1).mean()), 3)
    report["RotationFromHeaderDeg"] = round(
        float(np.degrees(np.arccos(np.clip((np.trace(bold_to_t1w[:3, :3]) - 1) / 2, -1, 1)))), 3
    )
    failures = []
    thresholds: dict[str, float] = {"NMIMin": settings.min_nmi}
    if have_brain:
        thresholds["DiceMin"] = settings.min_dice
        if report["Dice"] < settings.min_dice:
            failures.append(f"Dice {report['Dice']:.3f} < {settings.min_dice}")
    if boundary:
        thresholds["BBRCostMax"] = settings.max_bbr_cost
        if report["BBRCost"] > settings.max_bbr_cost:
            failures.append(f"BBR cost {report['BBRCost']:.3f} > {settings.max_bbr_cost}")
    if report["NMI"] < settings.min_nmi:
        failures.append(f"NMI {report['NMI']:.4f} < {settings.min_nmi}")
    failed = (
        "BOLD -> T1w coregistration failed its QC gate: " + "; ".join(failures) if failures else ""
    )
    report.update(
        {
            "Thresholds": thresholds,
            "Passed": not failures,
            "FailureReason": failed,
        }
    )
    # The time goes to the log, not the report: sidecars are identical from run to run.
    seconds = time.perf_counter() - start
    if failed:
        logger.warning("%s (%.1f s)", failed, seconds)
    else:
        logger.info(
            "BOLD -> T1w: Dice %.3f, NMI %.4f, %.1f mm from the header (%.1f s)",
            report["Dice"],
            report["NMI"],
            report["MeanShiftFromHeaderMM"],
            seconds,
        )
    return CoregResult(bold_to_t1w, report, failed)


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
    chunk: int = 16,
    device: str = "cpu",
    backend: str = "auto",
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
        Volumes per batch (each volume is sampled on its own: the result does not
        depend on it; small batches keep the float64 coordinate temporaries, fresh pages
        the kernel must zero, small: 16 takes about 0.25 s less system time than 64).
    device : str
        Torch device of the torch backend.
    backend : {"auto", "numpy", "torch"}
        As in :func:`~brainharmony.func.motion.estimate_motion` (``auto``: numpy on the
        CPU, no torch import); both agree to float32 rounding.

    Returns
    -------
    samples : ndarray of shape (n_points, n_volumes), float32
    coverage : ndarray of bool, shape (n_points,)
        True where every volume's sample lay inside the native field of view and
        touched only valid voxels.
    """
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
    if resolve_backend(backend, device) == "numpy":
        return _resample_to_template_np(data, maps, points, valid, chunk)
    import torch
    import torch.nn.functional as F

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


def _resample_to_template_np(
    data: np.ndarray, maps: np.ndarray, points: np.ndarray, valid: np.ndarray | None, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy twin of :func:`resample_to_template` (zero outside the grid).

    Volumes get a one-voxel border of zeros and are sampled with ``mode="nearest"``
    one voxel in: the same values as ``mode="grid-constant"`` on the bare volume
    (interpolation reaches zero one voxel past the edge), about 1.5x faster in
    ``scipy.ndimage``.
    """
    n_vol = data.shape[3]
    shape = data.shape[:3]
    pts_h = np.concatenate([points, np.ones((points.shape[0], 1))], axis=1).T  # (4, P)
    pad = ((0, 0), (1, 1), (1, 1), (1, 1))
    bad = None
    if valid is not None:
        bad_b = ~np.asarray(valid, dtype=bool)
        if bad_b.any():
            bad = np.pad(bad_b.astype(np.float32), pad[1:])
    samples = np.empty((n_vol, points.shape[0]), dtype=np.float32)
    coverage = np.ones(points.shape[0], dtype=bool)
    for start in range(0, n_vol, chunk):
        stop = min(n_vol, start + chunk)
        coords = maps[start:stop, :3, :] @ pts_h  # (n, 3, P) native voxel coordinates
        coverage &= inside_voxels(coords, shape, 1e-5).all(axis=0)
        coords += 1.0  # into the padded grid
        vols = np.pad(np.moveaxis(data[..., start:stop], 3, 0).astype(np.float32), pad)
        sample_volumes(vols, coords, out=samples[start:stop])
        if bad is not None:
            # How much of each sample's weight fell on unusable voxels.
            touched = sample_volumes(np.broadcast_to(bad, (stop - start, *bad.shape)), coords)
            coverage &= (touched <= 1e-6).all(axis=0)
    return np.ascontiguousarray(samples.T), coverage


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
