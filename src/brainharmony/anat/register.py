"""Registration of a T1w to a brain-only template (SimpleITK).

Two routes, both ending in an affine (optionally + B-spline) template -> T1w transform:

**Brain to brain** (:func:`register_brain_to_template`, the default): the brain was
extracted from the image itself (:mod:`.brain_extraction`), so the skull-stripped T1w
is registered to the skull-stripped template and the transform is then applied to the
whole head.

1. **Initialisation from the brain's own centre and extent**: the brain mask's centroid
   is matched to the template mask's, and each world axis is scaled by the ratio of
   the two masks' spreads (standard deviations of their voxel coordinates).
2. **Coarse search** of rotations and translations around it, scored by mutual
   information on 6 mm images (numpy, every voxel of the template region); the best
   few are refined by a coarse affine registration and the best is kept.
3. **Affine** registration at 4 then 2 mm: Mattes mutual information, regular-step
   gradient descent, the metric region the template brain mask dilated by a few mm.

**Whole head** (:func:`register_to_template`, the fallback when no brain extractor is
used: ``anat.brain_extraction: template``): the template has no scalp, skull or neck;
the T1w does.

1. **Initial translation** from the head mask: the centroid of the upper cranium (a
   slab 10-80 mm below the top of the head) is matched to the same slab of the
   template brain mask dilated by the expected scalp thickness.
2. **Coarse search** as above, then rigid and affine registrations.
3. **Masked refinement**, repeated until the transform stops changing: the template
   brain mask (dilated) is carried back onto the T1w, the T1w is masked with it (so it
   looks like the brain-only template) and the affine is registered again.

Either route may add a **B-spline** (nonlinear) stage on top of the affine.

Metric sampling is random with a fixed seed and the thread count is fixed, so the
result is reproducible to the bit.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from brainharmony.anat.images import FLIP, itk_affine_to_lps_matrix, sitk_affine
from brainharmony.anat.skullstrip import pull_back_mask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrationSettings:
    """Settings of :func:`register_to_template`.

    Attributes
    ----------
    bins : int
        Histogram bins of the Mattes mutual information.
    sampling_fraction : float
        Fraction of the metric region's voxels sampled at each iteration (random,
        seeded by ``seed``).
    seed : int
        Seed of the metric sampling.
    metric_dilation_mm : float
        The metric region is the template brain mask dilated by this much.
    strip_dilation_mm : float
        In the masked refinement the T1w is masked with the template brain mask dilated
        by this much and carried back onto it.
    scalp_mm : float
        Expected distance from the top of the brain to the top of the head.
    search_rotations_deg : tuple of 3 tuples
        Rotations (about x, y, z) tried by the coarse search.
    search_translations_mm : tuple of floats
        Offsets tried along each axis by the coarse search.
    search_keep : int
        Candidates of the coarse search refined by a coarse rigid registration.
    brain_search_rotations_deg, brain_search_translations_mm
        The same grid for the brain-to-brain route. Its start already puts the two
        brains' centroids together and each rotation turns about that centroid, so it
        needs no translations but can afford wider rotations.
    max_refinements : int
        Most rounds of the masked refinement.
    convergence_mm : float
        The refinement stops when the transform moves brain voxels by less than this
        on average.
    nonlinear : bool
        Add a B-spline stage on top of the affine.
    bspline_spacing_mm : float
        Control-point spacing of the B-spline mesh.
    bspline_iterations : int
        Most L-BFGS-B iterations per level of the B-spline stage.
    bspline_sampling_fraction : float
        Metric sampling fraction of the B-spline stage.
    threads : int
        Threads of the registration (see :func:`.images.itk_threads`: only 1 gives
        bit-identical results from run to run).
    """

    bins: int = 32
    sampling_fraction: float = 0.15
    seed: int = 20251122
    metric_dilation_mm: float = 4.0
    strip_dilation_mm: float = 6.0
    scalp_mm: float = 10.0
    search_rotations_deg: tuple[tuple[float, ...], ...] = (
        (-20.0, -10.0, 0.0, 10.0, 20.0),
        (-10.0, 0.0, 10.0),
        (-10.0, 0.0, 10.0),
    )
    search_translations_mm: tuple[float, ...] = (-10.0, 0.0, 10.0)
    search_keep: int = 2
    brain_search_rotations_deg: tuple[tuple[float, ...], ...] = (
        (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0),
        (-15.0, 0.0, 15.0),
        (-15.0, 0.0, 15.0),
    )
    brain_search_translations_mm: tuple[float, ...] = (0.0,)
    max_refinements: int = 4
    convergence_mm: float = 0.1
    nonlinear: bool = False
    bspline_spacing_mm: float = 40.0
    bspline_iterations: int = 30
    bspline_sampling_fraction: float = 0.05
    threads: int = 1

    def __post_init__(self) -> None:
        if self.bins < 8:
            raise ValueError(f"bins must be >= 8; got {self.bins!r}")
        for name in ("sampling_fraction", "bspline_sampling_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1]; got {value!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1; got {self.threads!r}")
        if self.max_refinements < 0:
            raise ValueError(f"max_refinements must be >= 0; got {self.max_refinements!r}")
        if self.bspline_spacing_mm <= 0:
            raise ValueError(f"bspline_spacing_mm must be > 0; got {self.bspline_spacing_mm}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready mapping (for sidecars)."""
        return asdict(self)


@dataclass
class RegistrationResult:
    """What :func:`register_to_template` found.

    Attributes
    ----------
    affine : SimpleITK.AffineTransform
        Maps template points to T1w points (LPS mm).
    nonlinear : SimpleITK.CompositeTransform or None
        Affine followed by the B-spline (template -> T1w) when requested.
    nonlinear_inverse : SimpleITK.CompositeTransform or None
        T1w -> template for the nonlinear transform (inverted displacement field).
    report : dict
        Metric values, the initialisation, the refinement history.
    """

    affine: sitk.AffineTransform
    nonlinear: sitk.CompositeTransform | None = None
    nonlinear_inverse: sitk.CompositeTransform | None = None
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def forward(self) -> sitk.Transform:
        """The full template -> T1w transform (nonlinear when present)."""
        return self.nonlinear if self.nonlinear is not None else self.affine

    @property
    def inverse(self) -> sitk.Transform:
        """The full T1w -> template transform."""
        if self.nonlinear_inverse is not None:
            return self.nonlinear_inverse
        return self.affine.GetInverse()


# --- helpers -------------------------------------------------------------------------


def _array(image: sitk.Image) -> np.ndarray:
    """Voxel data as ``(nx, ny, nz)`` (a copy)."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def _image_like(data: np.ndarray, reference: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    out.CopyInformation(reference)
    return out


def dilate_mask(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Dilate a uint8 mask by ``radius_mm`` (Euclidean distance, exact)."""
    return _Dilations(mask)(radius_mm)


class _Dilations:
    """Dilations of one mask by several radii from a single distance transform.

    ``reach_mm`` is the largest radius the caller will ask for (a larger one later
    recomputes the transform).

    The distance to the mask is computed once (on the mask's bounding box widened by
    the largest radius asked for so far: voxels further out cannot be within reach),
    and each dilation is a threshold of it: the same voxels as
    ``distance_transform_edt(~mask) <= radius`` on the whole grid.
    """

    def __init__(self, mask: sitk.Image, reach_mm: float = 0.0) -> None:
        self.mask = mask
        self.first_reach = float(reach_mm)
        self.data = _array(mask) > 0
        self.spacing = np.asarray(mask.GetSpacing(), float)
        self.reach = -1.0
        self.dist: np.ndarray | None = None
        self.box: tuple[slice, ...] = ()

    def __call__(self, radius_mm: float) -> sitk.Image:
        if radius_mm <= 0 or not self.data.any():
            return _image_like(self.data.astype(np.uint8), self.mask)
        if radius_mm > self.reach:
            self._distance(max(radius_mm, self.first_reach))
        assert self.dist is not None
        out = np.zeros(self.data.shape, np.uint8)
        out[self.box] = self.dist <= radius_mm
        return _image_like(out, self.mask)

    def _distance(self, radius_mm: float) -> None:
        idx = np.argwhere(self.data)
        margin = np.ceil(radius_mm / self.spacing).astype(int) + 1
        lo = np.maximum(idx.min(axis=0) - margin, 0)
        hi = np.minimum(idx.max(axis=0) + margin + 1, self.data.shape)
        self.box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        self.dist = ndi.distance_transform_edt(~self.data[self.box], sampling=self.spacing)
        self.reach = float(radius_mm)


def _world_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS coordinates of a boolean array's true voxels, shape ``(n, 3)``."""
    idx = np.argwhere(mask)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def cranium_centroid(
    mask: np.ndarray, affine: np.ndarray, top_offset_mm: tuple[float, float] = (10.0, 80.0)
) -> tuple[np.ndarray, float]:
    """Centroid of the slab of a head mask lying between two depths below its top.

    Parameters
    ----------
    mask : ndarray of bool, shape (nx, ny, nz)
    affine : ndarray of shape (4, 4)
        RAS voxel -> world affine.
    top_offset_mm : (float, float)
        The slab spans from ``top - offset[1]`` to ``top - offset[0]`` along world z.

    Returns
    -------
    centroid : ndarray of shape (3,)
        RAS mm.
    top : float
        World z of the highest voxel.
    """
    pts = _world_points(mask, affine)
    if len(pts) == 0:
        raise ValueError("the head mask is empty")
    top = float(pts[:, 2].max())
    keep = (pts[:, 2] <= top - top_offset_mm[0]) & (pts[:, 2] >= top - top_offset_mm[1])
    if not keep.any():
        keep = np.ones(len(pts), bool)
    return pts[keep].mean(axis=0), top


def _euler(
    center_lps: np.ndarray, angles_deg: Sequence[float], shift_lps: np.ndarray
) -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(c) for c in center_lps])
    tx.SetRotation(*[float(np.radians(a)) for a in angles_deg])
    tx.SetTranslation([float(s) for s in shift_lps])
    return tx


def _mi(fixed_bins: np.ndarray, moving: np.ndarray, lo: float, hi: float, bins: int) -> float:
    """Mutual information (nats) of pre-binned fixed values and moving values."""
    mb = np.clip(((moving - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    joint = np.bincount(fixed_bins * bins + mb, minlength=bins * bins).reshape(bins, bins)
    p = joint / joint.sum()
    px = p.sum(axis=1, keepdims=True)
    py = p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / (px @ py)[nz])))


def _candidate(
    base: sitk.Transform, angles_deg: Sequence[float], shift_lps: Sequence[float]
) -> sitk.AffineTransform:
    """``base`` preceded by a rotation about its centre and followed by a shift (LPS)."""
    rotation = np.asarray(_euler((0.0, 0.0, 0.0), angles_deg, (0.0, 0.0, 0.0)).GetMatrix())
    out = sitk.AffineTransform(3)
    out.SetCenter(base.GetCenter())  # type: ignore[attr-defined]
    matrix = np.asarray(base.GetMatrix(), float).reshape(3, 3)  # type: ignore[attr-defined]
    out.SetMatrix([float(v) for v in (matrix @ rotation.reshape(3, 3)).ravel()])
    translation = np.asarray(base.GetTranslation(), float) + np.asarray(shift_lps, float)  # type: ignore[attr-defined]
    out.SetTranslation([float(v) for v in translation])
    return out


def coarse_search(
    fixed: sitk.Image,
    fixed_mask: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform,
    settings: RegistrationSettings,
    grid_mm: float = 6.0,
) -> list[tuple[float, sitk.AffineTransform]]:
    """Score a grid of poses around ``initial`` by mutual information.

    Both images are smoothed (sigma ``grid_mm / 2``) and the fixed one is sampled on a
    ``grid_mm`` grid inside its mask; every candidate is scored on all those points.

    Parameters
    ----------
    fixed : SimpleITK.Image
        Template, shape ``(nx, ny, nz)``.
    fixed_mask : SimpleITK.Image
        Metric region on the template grid (uint8).
    moving : SimpleITK.Image
        The T1w.
    initial : SimpleITK.Transform
        Template -> T1w start (Euler, similarity or affine); each candidate rotates
        template points about its centre before applying it, then shifts the result.
    settings : RegistrationSettings
        ``search_rotations_deg``, ``search_translations_mm``, ``search_keep``.
    grid_mm : float
        Spacing of the scoring grid.

    Returns
    -------
    list of (score, transform)
        Best first (higher mutual information is better).
    """
    bins = 24
    sigma = grid_mm / 2
    factor = [max(1, round(grid_mm / s)) for s in fixed.GetSpacing()]
    f_small = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, sigma), factor)
    m_small = sitk.Shrink(fixed_mask, factor)
    f_data = _array(f_small)
    region = _array(m_small) > 0
    pts_lps = _world_points(region, sitk_affine(f_small)) * np.array([-1.0, -1.0, 1.0])
    f_vals = f_data[region]
    f_lo, f_hi = float(f_vals.min()), float(f_vals.max()) + 1e-6
    f_bins = np.clip(((f_vals - f_lo) / (f_hi - f_lo) * bins).astype(np.int64), 0, bins - 1)
    m_factor = [max(1, round(grid_mm / 2 / s)) for s in moving.GetSpacing()]
    m_small = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving, sigma), m_factor)
    m_data = _array(m_small)
    m_inv = np.linalg.inv(sitk_affine(m_small))
    m_lo, m_hi = np.percentile(m_data, [1, 99.5])
    scored: list[tuple[float, tuple[float, ...]]] = []
    rotations = list(itertools.product(*settings.search_rotations_deg))
    shifts = list(itertools.product(settings.search_translations_mm, repeat=3))
    for angles in rotations:
        lin = itk_affine_to_lps_matrix(_candidate(initial, angles, (0.0, 0.0, 0.0)))
        moved = pts_lps @ lin[:3, :3].T + lin[:3, 3]
        for shift in shifts:
            ras = (moved + np.asarray(shift)) * np.array([-1.0, -1.0, 1.0])
            ijk = ras @ m_inv[:3, :3].T + m_inv[:3, 3]
            vals = ndi.map_coordinates(m_data, ijk.T, order=1, cval=0.0)
            score = _mi(f_bins, vals, m_lo, m_hi, bins)
            scored.append((score, (*angles, *shift)))
    scored.sort(key=lambda item: -item[0])
    out = [
        (score, _candidate(initial, params[:3], params[3:]))
        for score, params in scored[: max(1, settings.search_keep)]
    ]
    logger.info(
        "coarse search: %d poses, best MI %.4f at rotation %s deg, shift %s mm",
        len(scored),
        scored[0][0],
        scored[0][1][:3],
        scored[0][1][3:],
    )
    return out


def _method(
    settings: RegistrationSettings,
    fixed_mask: sitk.Image,
    shrink: Sequence[int],
    sigmas_mm: Sequence[float],
    iterations: int,
    learning_rate: float,
    moving_mask: sitk.Image | None = None,
    physical_scales: bool = True,
) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(settings.threads)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(settings.sampling_fraction, settings.seed)
    reg.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-8,
    )
    if physical_scales:
        reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas_mm))
    reg.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(True)
    return reg


def _run(
    reg: sitk.ImageRegistrationMethod,
    fixed: sitk.Image,
    moving: sitk.Image,
    initial: sitk.Transform,
) -> tuple[sitk.Transform, float, int]:
    reg.SetInitialTransform(initial, inPlace=False)
    out = reg.Execute(fixed, moving)
    if isinstance(out, sitk.CompositeTransform):
        out = out.GetBackTransform() if out.GetNumberOfTransforms() == 1 else out
    return out, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration())


def _as_euler(tx: sitk.Transform) -> sitk.Euler3DTransform:
    """A rigid transform (Euler or an affine whose matrix is a rotation) as an Euler one."""
    if isinstance(tx, sitk.Euler3DTransform):
        return tx
    out = sitk.Euler3DTransform()
    out.SetCenter(tx.GetCenter())  # type: ignore[attr-defined]
    out.SetMatrix(tx.GetMatrix(), 1e-6)  # type: ignore[attr-defined]
    out.SetTranslation(tx.GetTranslation())  # type: ignore[attr-defined]
    return out


def _as_affine(tx: sitk.Transform) -> sitk.AffineTransform:
    out = sitk.AffineTransform(3)
    lin = itk_affine_to_lps_matrix(tx)
    out.SetCenter(tx.GetCenter())  # type: ignore[attr-defined]
    out.SetMatrix([float(v) for v in lin[:3, :3].ravel()])
    center = np.asarray(tx.GetCenter())  # type: ignore[attr-defined]
    out.SetTranslation([float(v) for v in lin[:3, 3] + lin[:3, :3] @ center - center])
    return out


def mean_displacement_mm(a: sitk.Transform, b: sitk.Transform, points_lps: np.ndarray) -> float:
    """Mean distance between where two transforms send the same points (mm).

    Parameters
    ----------
    a, b : SimpleITK.Transform
    points_lps : ndarray of shape (n, 3)
    """
    pa = np.array([a.TransformPoint(tuple(map(float, p))) for p in points_lps])
    pb = np.array([b.TransformPoint(tuple(map(float, p))) for p in points_lps])
    return float(np.linalg.norm(pa - pb, axis=1).mean())


def evaluate_mi(
    fixed: sitk.Image,
    fixed_mask: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    settings: RegistrationSettings,
) -> float:
    """Mattes mutual information (ITK sign: lower is better) on every region voxel."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(settings.threads)
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    # The value needs no image gradient; by default the metric would still filter the
    # whole moving image for one (three quarters of the evaluation's time).
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(transform, inPlace=False)
    return float(reg.MetricEvaluate(fixed, moving))


def _shrink_to(
    template: sitk.Image, moving: sitk.Image, mask: sitk.Image, report: dict[str, Any]
) -> tuple[sitk.Image, sitk.Image]:
    """Block-average a T1w (and its mask) finer than the template grid to about its spacing.

    The metric only samples the moving image at template points, and each level's
    smoothing of a 1 mm image would otherwise dominate the cost.
    """
    factors = [
        max(1, int(f // m)) for f, m in zip(template.GetSpacing(), moving.GetSpacing(), strict=True)
    ]
    if max(factors) == 1:
        return moving, mask
    report["MovingBinShrink"] = factors
    shrunk = sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), factors) >= 0.5
    return sitk.BinShrink(moving, factors), sitk.Cast(shrunk, sitk.sitkUInt8)


def _best_candidate(
    template: sitk.Image,
    region: sitk.Image,
    moving: sitk.Image,
    start: sitk.Transform,
    settings: RegistrationSettings,
    report: dict[str, Any],
    kind: Callable[[sitk.Transform], sitk.Transform],
) -> sitk.Transform:
    """Coarse search around ``start``, each kept candidate refined by a 4 mm registration
    of the transform ``kind`` (``_as_euler``: rigid, head route; ``_as_affine``: brain
    route); the best."""
    best: tuple[float, sitk.Transform] | None = None
    tried = []
    for score, cand in coarse_search(template, region, moving, start, settings):
        reg = _method(settings, region, [4], [4.0], 100, 2.0)
        tx, value, _ = _run(reg, template, moving, kind(cand))
        tried.append({"SearchMI": round(score, 5), "CoarseMetric": round(value, 6)})
        if best is None or value < best[0]:
            best = (value, tx)
    assert best is not None
    report["SearchCandidates"] = tried
    return best[1]


# --- the procedure -------------------------------------------------------------------


def initial_transform(
    template_mask: sitk.Image,
    head_mask: sitk.Image,
    scalp_mm: float,
    dilations: _Dilations | None = None,
) -> tuple[sitk.Euler3DTransform, dict[str, Any]]:
    """Translation-only start matching the upper cranium of the T1w to the template's.

    Parameters
    ----------
    template_mask : SimpleITK.Image
        Template brain mask (uint8).
    head_mask : SimpleITK.Image
        T1w head mask (uint8).
    scalp_mm : float
        Expected distance from the brain's top to the head's top.
    dilations : _Dilations, optional
        Dilations of ``template_mask`` (reuses its distance transform).

    Returns
    -------
    transform : SimpleITK.Euler3DTransform
        Template -> T1w, centred on the template brain's centroid.
    report : dict
    """
    t_head = _array((dilations or _Dilations(template_mask))(scalp_mm)) > 0
    t_affine = sitk_affine(template_mask)
    t_centroid, t_top = cranium_centroid(t_head, t_affine)
    s_centroid, s_top = cranium_centroid(_array(head_mask) > 0, sitk_affine(head_mask))
    brain_centroid = _world_points(_array(template_mask) > 0, t_affine).mean(axis=0)
    shift_ras = s_centroid - t_centroid
    tx = _euler(FLIP @ brain_centroid, (0.0, 0.0, 0.0), FLIP @ shift_ras)
    report = {
        "TemplateCraniumCentroidRAS": t_centroid.round(3).tolist(),
        "T1wCraniumCentroidRAS": s_centroid.round(3).tolist(),
        "TemplateHeadTopZ": round(t_top, 3),
        "T1wHeadTopZ": round(s_top, 3),
        "InitialShiftRAS": shift_ras.round(3).tolist(),
    }
    logger.info("initial shift (RAS mm): %s", np.round(shift_ras, 1))
    return tx, report


def register_to_template(
    moving: sitk.Image,
    head_mask: sitk.Image,
    template: sitk.Image,
    template_mask: sitk.Image,
    settings: RegistrationSettings | None = None,
) -> RegistrationResult:
    """Affine (optionally + B-spline) registration of a whole-head T1w to a brain template.

    Parameters
    ----------
    moving : SimpleITK.Image
        Bias-corrected T1w (float32), shape ``(nx, ny, nz)``.
    head_mask : SimpleITK.Image
        Its head (foreground) mask, uint8, same grid.
    template : SimpleITK.Image
        Brain-only template (float32) on the grid the registration works on (its
        spacing is the finest level).
    template_mask : SimpleITK.Image
        The template's brain mask, uint8, same grid as ``template``.
    settings : RegistrationSettings, optional

    Returns
    -------
    RegistrationResult
    """
    settings = settings or RegistrationSettings()
    report: dict[str, Any] = {"Settings": settings.to_dict()}
    moving, head_mask = _shrink_to(template, moving, head_mask, report)
    reach = (settings.metric_dilation_mm, settings.scalp_mm, settings.strip_dilation_mm + 4.0)
    dilate = _Dilations(template_mask, max(reach))
    metric_region = dilate(settings.metric_dilation_mm)
    brain_pts = _world_points(_array(template_mask) > 0, sitk_affine(template_mask))
    rng = np.random.default_rng(0)
    probe = brain_pts[rng.choice(len(brain_pts), size=min(2000, len(brain_pts)), replace=False)]
    probe_lps = probe * np.array([-1.0, -1.0, 1.0])

    start, init_report = initial_transform(template_mask, head_mask, settings.scalp_mm, dilate)
    report["Initialisation"] = init_report

    # Coarse search (each kept candidate refined by a coarse rigid registration).
    best = _best_candidate(template, metric_region, moving, start, settings, report, _as_euler)

    # Rigid, then affine, on the whole head.
    reg = _method(settings, metric_region, [4, 2], [4.0, 2.0], 200, 1.0)
    rigid, rigid_metric, _ = _run(reg, template, moving, _as_euler(best))
    reg = _method(settings, metric_region, [2, 1], [2.0, 1.0], 200, 0.5)
    affine, affine_metric, _ = _run(reg, template, moving, _as_affine(rigid))
    affine = _as_affine(affine)
    report["RigidMetric"] = rigid_metric
    report["AffineMetric"] = affine_metric

    # Masked refinement until the transform stops changing.
    strip_region = dilate(settings.strip_dilation_mm)
    wide_region = dilate(settings.strip_dilation_mm + 4.0)
    history = []
    for round_ in range(settings.max_refinements):
        subject_mask = pull_back_mask(strip_region, affine.GetInverse(), moving, settings.threads)
        masked = sitk.Mask(moving, subject_mask)
        reg = _method(settings, wide_region, [1], [1.0], 200, 0.25)
        new, metric, iters = _run(reg, template, masked, affine)
        new = _as_affine(new)
        change = mean_displacement_mm(affine, new, probe_lps)
        history.append(
            {
                "Round": round_ + 1,
                "Metric": metric,
                "Iterations": iters,
                "ChangeMM": round(change, 4),
            }
        )
        logger.info("masked refinement %d: metric %.5f, change %.3f mm", round_ + 1, metric, change)
        affine = new
        if change < settings.convergence_mm:
            break
    report["Refinements"] = history
    result = RegistrationResult(affine=affine, report=report)

    if settings.nonlinear:
        subject_mask = pull_back_mask(strip_region, affine.GetInverse(), moving, settings.threads)
        masked = sitk.Mask(moving, subject_mask)
        result.nonlinear, result.nonlinear_inverse, nl_report = _bspline(
            template, wide_region, masked, affine, settings
        )
        report["Nonlinear"] = nl_report

    report["FinalMetricAllVoxels"] = evaluate_mi(
        template, metric_region, moving, result.forward, settings
    )
    return result


def initial_brain_transform(
    template_mask: sitk.Image,
    brain_mask: sitk.Image,
    max_scale: float = 1.5,
) -> tuple[sitk.AffineTransform, dict[str, Any]]:
    """Start from the brain's own centre and extent.

    The template brain's centroid goes to the T1w brain's centroid, and each world axis
    is scaled by the ratio of the two masks' spreads (standard deviations of their
    voxel coordinates along that axis), clipped to ``[1 / max_scale, max_scale]``.

    Parameters
    ----------
    template_mask : SimpleITK.Image
        Template brain mask (uint8).
    brain_mask : SimpleITK.Image
        T1w brain mask (uint8), from the image itself.
    max_scale : float

    Returns
    -------
    transform : SimpleITK.AffineTransform
        Template -> T1w, centred on the template brain's centroid.
    report : dict
    """
    t_pts = _world_points(_array(template_mask) > 0, sitk_affine(template_mask))
    s_pts = _world_points(_array(brain_mask) > 0, sitk_affine(brain_mask))
    if len(s_pts) < 100:
        raise ValueError(f"the brain mask has {len(s_pts)} voxels: too few to register")
    t_centre, s_centre = t_pts.mean(axis=0), s_pts.mean(axis=0)
    scale = np.clip(s_pts.std(axis=0) / t_pts.std(axis=0), 1 / max_scale, max_scale)
    tx = sitk.AffineTransform(3)
    tx.SetCenter([float(c) for c in FLIP @ t_centre])
    # Diagonal scales commute with the RAS <-> LPS flip.
    tx.SetMatrix([float(v) for v in np.diag(scale).ravel()])
    tx.SetTranslation([float(v) for v in FLIP @ (s_centre - t_centre)])
    report = {
        "Method": "brain centroid and per-axis spread of the brain masks",
        "TemplateBrainCentroidRAS": t_centre.round(3).tolist(),
        "T1wBrainCentroidRAS": s_centre.round(3).tolist(),
        "InitialScale": scale.round(4).tolist(),
    }
    logger.info("initial shift (RAS mm): %s, scales %s", np.round(s_centre - t_centre, 1), scale)
    return tx, report


def register_brain_to_template(
    brain: sitk.Image,
    brain_mask: sitk.Image,
    template: sitk.Image,
    template_mask: sitk.Image,
    settings: RegistrationSettings | None = None,
) -> RegistrationResult:
    """Affine (optionally + B-spline) registration of an extracted brain to a brain template.

    Parameters
    ----------
    brain : SimpleITK.Image
        Bias-corrected T1w, already masked by its brain mask (float32).
    brain_mask : SimpleITK.Image
        The brain mask (uint8), same grid.
    template : SimpleITK.Image
        Brain-only template (float32) on the grid the registration works on (its
        spacing is the finest level).
    template_mask : SimpleITK.Image
        The template's brain mask, uint8, same grid as ``template``.
    settings : RegistrationSettings, optional

    Returns
    -------
    RegistrationResult
        The transform maps template points to T1w points; applied to the whole head.
    """
    settings = settings or RegistrationSettings()
    report: dict[str, Any] = {"Route": "brain to brain", "Settings": settings.to_dict()}
    brain, brain_mask = _shrink_to(template, brain, brain_mask, report)
    reach = (settings.metric_dilation_mm, settings.strip_dilation_mm + 4.0)
    dilate = _Dilations(template_mask, max(reach) if settings.nonlinear else reach[0])
    metric_region = dilate(settings.metric_dilation_mm)
    start, report["Initialisation"] = initial_brain_transform(template_mask, brain_mask)

    grid = replace(
        settings,
        search_rotations_deg=settings.brain_search_rotations_deg,
        search_translations_mm=settings.brain_search_translations_mm,
    )
    best = _best_candidate(template, metric_region, brain, start, grid, report, _as_affine)

    reg = _method(settings, metric_region, [2, 1], [2.0, 1.0], 200, 0.5)
    affine, affine_metric, iterations = _run(reg, template, brain, _as_affine(best))
    affine = _as_affine(affine)
    report["AffineMetric"] = affine_metric
    report["AffineIterations"] = iterations
    result = RegistrationResult(affine=affine, report=report)
    if settings.nonlinear:
        wide_region = dilate(settings.strip_dilation_mm + 4.0)
        result.nonlinear, result.nonlinear_inverse, nl_report = _bspline(
            template, wide_region, brain, affine, settings
        )
        report["Nonlinear"] = nl_report
    report["FinalMetricAllVoxels"] = evaluate_mi(
        template, metric_region, brain, result.forward, settings
    )
    return result


def _bspline(
    template: sitk.Image,
    region: sitk.Image,
    moving: sitk.Image,
    affine: sitk.AffineTransform,
    settings: RegistrationSettings,
) -> tuple[sitk.CompositeTransform, sitk.CompositeTransform, dict[str, Any]]:
    """B-spline stage on top of ``affine``; returns forward, inverse composites and a report."""
    extent = np.asarray(template.GetSize()) * np.asarray(template.GetSpacing())
    mesh = [max(1, round(e / settings.bspline_spacing_mm)) for e in extent]
    bspline = sitk.BSplineTransformInitializer(template, mesh, order=3)
    reg = _method(settings, region, [2, 1], [2.0, 1.0], 100, 1.0, physical_scales=False)
    # Quasi-Newton without parameter scales: estimating scales from physical shifts costs
    # one pass over the samples per control-point coordinate.
    reg.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=settings.bspline_iterations,
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=4 * settings.bspline_iterations,
        costFunctionConvergenceFactor=1e7,
    )
    # Each sample costs far more with thousands of local parameters: sample less.
    reg.SetMetricSamplingPercentage(settings.bspline_sampling_fraction, settings.seed)
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(template, moving)
    forward = sitk.CompositeTransform([affine, bspline])
    # The inverse is stored as a displacement field; the B-spline is smooth on the scale
    # of its control-point spacing, so a 4 mm-ish grid holds it.
    field_grid = sitk.Shrink(template, [max(1, round(4.0 / sp)) for sp in template.GetSpacing()])
    field_filter = sitk.TransformToDisplacementFieldFilter()
    field_filter.SetReferenceImage(field_grid)
    field_filter.SetOutputPixelType(sitk.sitkVectorFloat64)
    field_filter.SetNumberOfThreads(settings.threads)
    disp = field_filter.Execute(bspline)
    inv = sitk.InvertDisplacementFieldImageFilter()
    inv.SetMaximumNumberOfIterations(30)
    inv.SetMeanErrorToleranceThreshold(1e-3)
    inv.SetMaxErrorToleranceThreshold(0.1)
    inv.SetEnforceBoundaryCondition(True)
    inv.SetNumberOfThreads(settings.threads)
    inverse_field = sitk.DisplacementFieldTransform(inv.Execute(disp))
    inverse = sitk.CompositeTransform([inverse_field, affine.GetInverse()])
    magnitude = np.linalg.norm(sitk.GetArrayFromImage(disp), axis=-1)
    report = {
        "MeshSize": mesh,
        "Metric": float(reg.GetMetricValue()),
        "Iterations": int(reg.GetOptimizerIteration()),
        "MaxDisplacementMM": float(magnitude.max()),
        "InverseMaxErrorMM": float(inv.GetMaxErrorNorm()),
    }
    return forward, inverse, report
