"""Subject anatomy: the MNI152 template brain inside a synthetic head, with ageing.

The brain comes from nilearn's ICBM152 2009a asymmetric template (1 mm grey- and
white-matter probability maps; the template is skull-stripped). Around it a head is
built on an extended 1 mm grid (70 mm more below the template, for the neck):

* a smooth *brain envelope* (the closed, smoothed brain mask), CSF between it and
  the brain;
* a skull where the distance to the envelope is small (inner table, diploe, outer
  table) above the skull base;
* a *core* below and in front of the brain (neck cylinder, face ellipsoid) holding
  muscle with fat streaks, the eyes with orbital fat, the spinal cord in its canal
  and the vertebral bodies;
* soft tissue (muscle, fat, skin) in a shell around envelope and core.

Ageing (per subject): cortical thinning (grey matter next to CSF turns into CSF over
a depth growing with age) and ventricle enlargement (CSF grows from the deep CSF
spaces by a distance growing faster with age). The T1w image is the tissue-weighted
sum of MPRAGE-like intensities (WM > GM > CSF, fat bright, bone dark), resampled into
the scanner grid with the subject's head pose, times a smooth bias field, plus Rician
noise, stored as int16.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from brainharmony.atlas import grid_affine

logger = logging.getLogger(__name__)

#: Extra millimetres of the head grid below the template (neck).
NECK_PAD_MM = 70
#: Voxel size of the head (non-brain) grid.
HEAD_GRID_MM = 2
_TEMPLATE_ORIGIN = np.array([-98.0, -134.0, -72.0])
#: BOLD source grid resolution (mm); matches the atlas grid of the same resolution.
BOLD_SOURCE_MM = 3
#: The brain envelope is where the brain mask smoothed with this sigma (mm) ...
_ENVELOPE_SIGMA_MM = 4.0
#: ... exceeds this level; the envelope weight ramps over +-_ENVELOPE_RAMP around it.
_ENVELOPE_LEVEL = 0.35
_ENVELOPE_RAMP = 0.08


@dataclass(frozen=True)
class T1Intensities:
    """Relative MPRAGE-like intensities (white matter = 1)."""

    wm: float = 1.0
    gm: float = 0.62
    csf: float = 0.18
    bone: float = 0.05
    marrow: float = 0.55
    muscle: float = 0.42
    fat: float = 1.12
    skin: float = 0.6
    eye: float = 0.12
    cord: float = 0.85

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class AgeingModel:
    """Age-dependent atrophy.

    ``thinning_mm = thinning_per_year * max(age - onset, 0)`` of grey matter next to
    CSF becomes CSF; ventricles (and the other deep CSF spaces) grow by
    ``ventricle_mm_at_85 * (max(age - onset, 0) / (85 - onset)) ** 2`` mm. Both are
    multiplied by a subject factor ``exp(N(0, individual_sd))``.
    """

    onset: float = 20.0
    thinning_per_year: float = 0.012
    ventricle_mm_at_85: float = 3.5
    individual_sd: float = 0.15

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def amounts(self, age: float, rng: np.random.Generator) -> tuple[float, float]:
        """Cortical thinning and ventricle growth (mm) for one subject."""
        years = max(float(age) - self.onset, 0.0)
        factor = float(np.exp(self.individual_sd * rng.standard_normal()))
        thin = self.thinning_per_year * years * factor
        vent = self.ventricle_mm_at_85 * (years / (85.0 - self.onset)) ** 2 * factor
        return thin, vent


@dataclass(frozen=True)
class HeadModel:
    """Template-level arrays shared by all subjects.

    Two grids: the brain on the template's own 1 mm grid (``affine``), and the
    non-brain head on a 2 mm grid extended 70 mm downwards (``head_affine``). A soft
    envelope weight splits every point between the two (``envelope`` on the brain
    grid, ``head_envelope`` on the head grid), both from one smooth field, so the
    two parts add up without seams. Distances are in mm.
    """

    affine: np.ndarray  # (4, 4) brain grid voxel -> MNI mm
    shape: tuple[int, int, int]
    gm: np.ndarray  # float32 template GM probability
    wm: np.ndarray  # float32 template WM probability
    envelope: np.ndarray  # float32 soft envelope weight (0..1)
    d_tissue: np.ndarray  # float32 distance inside GM+WM to the nearest CSF/outside
    d_deep_csf: np.ndarray  # float32 distance to the deep CSF spaces (ventricles)
    deep: np.ndarray  # bool, more than 6 mm inside the envelope
    head_affine: np.ndarray  # (4, 4) head grid voxel -> MNI mm
    head_shape: tuple[int, int, int]
    head_envelope: np.ndarray  # float32 soft envelope weight on the head grid
    d_env: np.ndarray  # float32 distance outside the envelope
    d_core: np.ndarray  # float32 distance outside envelope + neck + face core
    skull_zone: np.ndarray  # bool, where the skull may be (above the skull base)
    core_tissue: np.ndarray  # float32 T1 intensity inside the core (NaN elsewhere)
    core_other: np.ndarray  # bool, core voxels outside the envelope


def _edt(mask: np.ndarray, sampling: float = 1.0, cap: float = 40.0) -> np.ndarray:
    dist = ndi.distance_transform_edt(mask, sampling=sampling)
    return np.minimum(dist, cap).astype(np.float32)


def _envelope_weight(smoothed: np.ndarray) -> np.ndarray:
    ramp = (smoothed - _ENVELOPE_LEVEL) / (2.0 * _ENVELOPE_RAMP) + 0.5
    return np.clip(ramp, 0.0, 1.0).astype(np.float32)


def _axes(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    step = np.diag(affine)[:3]
    x = np.arange(shape[0]) * step[0] + affine[0, 3]
    y = np.arange(shape[1]) * step[1] + affine[1, 3]
    z = np.arange(shape[2]) * step[2] + affine[2, 3]
    return x[:, None, None], y[None, :, None], z[None, None, :]


def _bbox_edt(mask: np.ndarray, margin: int, cap: float) -> np.ndarray:
    """Distance to ``mask`` (True voxels), exact up to ``margin`` voxels, else ``cap``."""
    out = np.full(mask.shape, cap, dtype=np.float32)
    idx = np.argwhere(mask)
    if idx.size == 0:
        return out
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    out[box] = _edt(~mask[box], cap=cap)
    return out


@functools.lru_cache(maxsize=1)
def head_model() -> HeadModel:
    """Build (once per process) the template-level head model (a few seconds)."""
    from nilearn.datasets import (
        load_mni152_gm_template,
        load_mni152_template,
        load_mni152_wm_template,
    )

    ti = T1Intensities()
    t1 = load_mni152_template(resolution=1)
    shape = tuple(int(n) for n in t1.shape)
    if not np.allclose(t1.affine[:3, 3], _TEMPLATE_ORIGIN) or not np.allclose(
        np.diag(t1.affine)[:3], 1.0
    ):
        raise RuntimeError(f"unexpected template grid {t1.affine}")
    affine = np.asarray(t1.affine, dtype=float)
    gm = load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    brain = ndi.binary_fill_holes(np.asarray(t1.get_fdata(dtype=np.float32)) > 0.2)
    smooth = ndi.gaussian_filter(brain.astype(np.float32), _ENVELOPE_SIGMA_MM)
    envelope = np.maximum(_envelope_weight(smooth), brain.astype(np.float32))

    tissue_mask = (gm + wm) >= 0.5
    d_tissue = np.minimum(ndi.distance_transform_cdt(tissue_mask, "taxicab"), 3).astype(np.float32)
    d_in = ndi.distance_transform_cdt(envelope > 0.5, "chessboard")
    deep_csf = brain & ~tissue_mask & (d_in > 15)
    d_deep_csf = _bbox_edt(deep_csf, 8, 8.0)

    # Head grid: 2 mm, extended downwards; brain mask resampled by block maximum.
    step = HEAD_GRID_MM
    head_affine = np.diag([step, step, step, 1.0]).astype(float)
    head_affine[:3, 3] = _TEMPLATE_ORIGIN - np.array([0.0, 0.0, NECK_PAD_MM])
    head_shape = (
        int(np.ceil(shape[0] / step)),
        int(np.ceil(shape[1] / step)),
        int(np.ceil((shape[2] + NECK_PAD_MM) / step)),
    )
    to_brain = np.linalg.inv(affine) @ head_affine
    smooth2 = ndi.affine_transform(
        smooth, to_brain, output_shape=head_shape, order=1, mode="constant", cval=0.0
    )
    head_envelope = _envelope_weight(smooth2)
    env2 = head_envelope > 0.5
    xx, yy, zz = _axes(head_affine, head_shape)
    neck = (zz <= -35.0) & (((xx / 47.0) ** 2 + ((yy + 25.0) / 44.0) ** 2) <= 1.0)
    face = ((xx / 50.0) ** 2 + ((yy - 40.0) / 38.0) ** 2 + ((zz + 42.0) / 36.0) ** 2) <= 1.0
    core = env2 | neck | face
    core_other = core & ~env2
    # Distances at 2 mm, smoothed a little so the layers do not show the grid.
    d_env = ndi.gaussian_filter(_edt(~env2, sampling=step) - 1.0, 0.7)
    d_core = ndi.gaussian_filter(_edt(~core, sampling=step) - 1.0, 0.7)

    # Inside the core but outside the brain envelope: muscle with fat streaks.
    rng = np.random.default_rng(12345)  # fixed texture, part of the model
    streaks = ndi.gaussian_filter(rng.standard_normal(head_shape).astype(np.float32), 1.3)
    streaks = np.clip((streaks - 0.12) / 0.06, 0.0, 1.0)
    tissue = ti.muscle + (ti.fat - ti.muscle) * 0.7 * streaks
    # Spinal cord in its canal, continuing the brainstem downwards and forwards.
    cord_y = -45.0 - 0.2 * np.minimum(zz + 72.0, 0.0)
    r_cord = np.sqrt(xx**2 + (yy - cord_y) ** 2)
    below = zz < -60.0
    tissue = np.where(below & (r_cord < 11.0), ti.bone, tissue)
    tissue = np.where(below & (r_cord < 8.0), ti.csf, tissue)
    tissue = np.where(below & (r_cord < 5.0), ti.cord, tissue)
    r_body = np.sqrt(xx**2 + (yy - cord_y - 19.0) ** 2)
    level = np.mod(zz, 18.0) < 15.0  # vertebral bodies with discs between them
    tissue = np.where(below & (r_body < 9.0), ti.bone, tissue)
    tissue = np.where(below & level & (r_body < 7.5), ti.marrow, tissue)
    for side in (-1.0, 1.0):  # eyes with orbital fat
        r_eye = np.sqrt((xx - 32.0 * side) ** 2 + (yy - 55.0) ** 2 + (zz + 38.0) ** 2)
        tissue = np.where(r_eye < 19.0, ti.fat, tissue)
        tissue = np.where(r_eye < 12.0, ti.eye, tissue)
    core_tissue = np.where(core_other, np.broadcast_to(tissue, head_shape), np.nan)

    model = HeadModel(
        affine=affine,
        shape=shape,
        gm=gm,
        wm=wm,
        envelope=envelope,
        d_tissue=d_tissue,
        d_deep_csf=d_deep_csf,
        deep=d_in > 6,
        head_affine=head_affine,
        head_shape=head_shape,
        head_envelope=head_envelope,
        d_env=d_env.astype(np.float32),
        d_core=d_core.astype(np.float32),
        skull_zone=np.broadcast_to(zz > -62.0, head_shape) & ~core_other,
        core_tissue=core_tissue.astype(np.float32),
        core_other=core_other,
    )
    logger.info("head model built: brain grid %s, head grid %s", shape, head_shape)
    return model


@dataclass
class SubjectAnatomy:
    """One subject's tissues and head-shape parameters.

    Attributes
    ----------
    gm, wm, csf : ndarray (float32, HeadModel.shape)
        Tissue fractions on the 1 mm brain grid, already weighted by the envelope
        (they sum to the envelope weight).
    thinning_mm, ventricle_mm : float
        Applied atrophy.
    scalp_mm : float
        Thickness of the soft-tissue shell around the skull/core.
    skull_scale : float
        Factor on the nominal skull layer thicknesses.
    fat_fraction : float
        Share of the soft-tissue shell that is subcutaneous fat.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    thinning_mm: float
    ventricle_mm: float
    scalp_mm: float
    skull_scale: float
    fat_fraction: float

    def summary(self) -> dict[str, float]:
        """Scalar description for the truth files."""
        return {
            "thinning_mm": round(self.thinning_mm, 4),
            "ventricle_growth_mm": round(self.ventricle_mm, 4),
            "scalp_mm": round(self.scalp_mm, 3),
            "skull_scale": round(self.skull_scale, 4),
            "fat_fraction": round(self.fat_fraction, 4),
            "gm_volume_ml": round(float(self.gm.sum(dtype=np.float64)) / 1000.0, 2),
            "csf_volume_ml": round(float(self.csf.sum(dtype=np.float64)) / 1000.0, 2),
        }


@functools.lru_cache(maxsize=1)
def _envelope_support() -> tuple[np.ndarray, ...]:
    """Flat indices of the voxels inside the brain envelope (weight > 0) and the head
    model's per-voxel inputs of :func:`subject_anatomy` there.

    Outside, the fractions are exactly +0 as long as the template's tissue maps are
    finite and non-negative (no -0 either), which is checked.
    """
    model = head_model()
    for name, tissue in (("gm", model.gm), ("wm", model.wm)):
        if not np.all(np.isfinite(tissue)) or np.any(np.signbit(tissue)):
            raise RuntimeError(f"template {name} map has negative or non-finite values")
    env = model.envelope
    # +0 weights only (a -0 would give -0 fractions, so it counts as inside).
    index = np.flatnonzero((env != 0) | np.signbit(env))
    return (
        index,
        *(
            np.ascontiguousarray(a.reshape(-1)[index])
            for a in (
                model.gm,
                model.wm,
                model.envelope,
                model.d_tissue,
                model.d_deep_csf,
                model.deep,
            )
        ),
    )


def subject_anatomy(
    age: float, rng: np.random.Generator, ageing: AgeingModel | None = None
) -> SubjectAnatomy:
    """Apply ageing and draw head-shape parameters for one subject."""
    model = head_model()
    ageing = ageing or AgeingModel()
    thin, vent = ageing.amounts(age, rng)
    # Computed on the envelope's voxels only (a quarter of the grid): elsewhere every
    # product below has the factor envelope = 0 and the fractions are exactly 0.
    index, m_gm, m_wm, env, d_tissue, d_deep_csf, deep = _envelope_support()
    keep = 1.0 - np.clip(thin - d_tissue + 1.0, 0.0, 1.0)
    grow = np.clip(vent - d_deep_csf + 0.5, 0.0, 1.0) * deep
    keep_all = 1.0 - grow
    gm_in = (m_gm * keep * keep_all * env).astype(np.float32)
    wm_in = (m_wm * keep_all * env).astype(np.float32)
    csf_in = np.clip(env - gm_in - wm_in, 0.0, 1.0).astype(np.float32)
    gm, wm, csf = (np.zeros(model.shape, dtype=np.float32) for _ in range(3))
    for full, inside in ((gm, gm_in), (wm, wm_in), (csf, csf_in)):
        full.reshape(-1)[index] = inside
    return SubjectAnatomy(
        gm=gm,
        wm=wm,
        csf=csf,
        thinning_mm=thin,
        ventricle_mm=vent,
        scalp_mm=float(rng.uniform(7.0, 11.0)),
        skull_scale=float(rng.uniform(0.85, 1.2)),
        fat_fraction=float(rng.uniform(0.35, 0.65)),
    )


def t1_sources(
    anatomy: SubjectAnatomy, intensities: T1Intensities | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free T1w intensities of one subject in MNI space.

    Returns
    -------
    brain : ndarray of shape HeadModel.shape, float32
        Brain part on the 1 mm brain grid (0 outside the envelope).
    head : ndarray of shape HeadModel.head_shape, float32
        Non-brain part on the 2 mm head grid (0 inside the envelope).
    """
    model = head_model()
    ti = intensities or T1Intensities()
    brain = anatomy.gm * ti.gm + anatomy.wm * ti.wm + anatomy.csf * ti.csf
    s = anatomy.skull_scale
    knots = np.array([0.0, 1.5, 2.0, 3.5, 4.0, 6.5, 7.0, 8.5, 9.0]) * s
    values = [ti.csf, ti.csf, ti.bone, ti.bone, ti.marrow, ti.marrow, ti.bone, ti.bone, 0.0]
    skull = np.interp(model.d_env, knots, values)
    skull_outer = 8.75 * s
    base = np.where(model.skull_zone, np.maximum(model.d_env - skull_outer, 0.0), model.d_core)
    depth = anatomy.scalp_mm - base
    fat_in = anatomy.scalp_mm * anatomy.fat_fraction
    soft_knots = [0.0, 1.2, 1.7, fat_in, fat_in + 0.5]
    soft = np.interp(depth, soft_knots, [ti.skin, ti.skin, ti.fat, ti.fat, ti.muscle])
    soft = np.where(depth >= 0.0, soft, 0.0)
    # Smooth edge at the skin.
    soft *= np.clip(depth + 0.5, 0.0, 1.0)
    in_skull = model.skull_zone & (model.d_env <= skull_outer)
    head = np.where(in_skull, skull, soft)
    head = np.where(model.core_other & ~in_skull, model.core_tissue, head)
    head = head * (1.0 - model.head_envelope)
    return brain.astype(np.float32), np.nan_to_num(head, nan=0.0).astype(np.float32)


def _block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``-voxel blocks centred on every ``factor``-th voxel.

    Coarse voxel ``j`` averages fine voxels ``factor * j - factor // 2`` ...
    ``factor * j + factor // 2`` (odd ``factor``), matching grids that share the
    first voxel centre.
    """
    half = factor // 2
    n_out = [int(np.ceil(n / factor - 1e-9)) for n in data.shape]
    padded = np.zeros([n * factor for n in n_out], dtype=np.float32)
    keep = [min(n, n_o * factor - half) for n, n_o in zip(data.shape, n_out, strict=True)]
    src = data[tuple(slice(0, k) for k in keep)]
    padded[tuple(slice(half, half + s) for s in src.shape)] = src
    return padded.reshape(n_out[0], factor, n_out[1], factor, n_out[2], factor).mean(axis=(1, 3, 5))


def bold_tissues(anatomy: SubjectAnatomy) -> dict[str, np.ndarray]:
    """Tissue fractions on the BOLD source grid (3 mm, the atlas grid).

    Returns
    -------
    dict of str -> ndarray of shape ``atlas.grid_affine(3)[1]``
        ``gm``, ``wm``, ``csf`` fractions and ``other`` (non-brain head tissue).
    """

    model = head_model()
    affine3, shape3 = grid_affine(float(BOLD_SOURCE_MM))
    head_other = (model.d_core <= anatomy.scalp_mm).astype(np.float32)
    head_other *= 1.0 - model.head_envelope
    to_head = np.linalg.inv(model.head_affine) @ affine3
    other = ndi.affine_transform(head_other, to_head, output_shape=shape3, order=1)
    return {
        "gm": _block_mean(anatomy.gm, BOLD_SOURCE_MM),
        "wm": _block_mean(anatomy.wm, BOLD_SOURCE_MM),
        "csf": _block_mean(anatomy.csf, BOLD_SOURCE_MM),
        "other": np.clip(other, 0.0, 1.0).astype(np.float32),
    }


def render_t1(
    sources: tuple[np.ndarray, np.ndarray],
    pose: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    bias_sd: float = 0.08,
    noise_fraction: float = 0.025,
) -> np.ndarray:
    """Acquire a T1w image: resample, bias field, Rician noise, integer scaling.

    Parameters
    ----------
    sources : tuple of 2 ndarray
        :func:`t1_sources` (brain on the 1 mm grid, head on the 2 mm grid; MNI
        space, white matter about 1).
    pose : ndarray of shape (4, 4)
        Head pose, MNI mm -> scanner mm.
    affine : ndarray of shape (4, 4)
        Voxel -> scanner mm affine of the output grid.
    shape : tuple of 3 int
    rng : numpy.random.Generator
    bias_sd : float
        SD of the coefficients of the log bias field (a quadratic polynomial of
        position in decimetres, in the scanner frame).
    noise_fraction : float
        Noise SD relative to white matter (before the magnitude operation).

    Returns
    -------
    ndarray of shape ``shape``, int16
        White matter around 1000 times a random receiver gain.
    """
    model = head_model()
    scanner_to_mni = np.linalg.inv(pose) @ affine
    image = np.zeros(shape, dtype=np.float64)
    for source, grid in zip(sources, (model.affine, model.head_affine), strict=True):
        image += ndi.affine_transform(
            source,
            np.linalg.inv(grid) @ scanner_to_mni,
            output_shape=shape,
            order=1,
            mode="constant",
            cval=0.0,
        )
    world = _world_grid(affine, shape) / 100.0
    terms = [world[..., 0], world[..., 1], world[..., 2]]
    terms += [a * b for i, a in enumerate(terms[:3]) for b in terms[i:3]]
    log_bias = sum(float(bias_sd * rng.standard_normal()) * t for t in terms)
    image = image * np.exp(log_bias - np.mean(log_bias))
    sigma = noise_fraction
    real = image + sigma * rng.standard_normal(shape)
    imag = sigma * rng.standard_normal(shape)
    magnitude = np.sqrt(real**2 + imag**2)
    gain = 1000.0 * float(rng.uniform(0.8, 1.25))
    return np.clip(np.round(magnitude * gain), 0, 32767).astype(np.int16)


def _world_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World coordinates (mm) of every voxel: ndarray of shape ``shape + (3,)``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)
