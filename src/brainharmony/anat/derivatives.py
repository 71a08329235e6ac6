"""Output paths and the writing of every anatomy derivative (all backends).

A backend (native, fsl, freesurfer) supplies the bias-corrected T1w in RAS+, a brain
mask in T1w space and the template -> T1w transform; :func:`write_derivatives` then
resamples once into the template grid, cuts the model-ready box, draws the QC figure
and writes the transforms and sidecars, the same way for every backend.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brainharmony.anat.gate import qc_failures
from brainharmony.anat.images import (
    T1wImage,
    itk_affine_to_lps_matrix,
    lps_to_ras,
    nib_to_sitk,
    sitk_to_nib,
)
from brainharmony.anat.model_input import box_shape, model_ready
from brainharmony.anat.qc import registration_figure
from brainharmony.anat.settings import AnatSettings
from brainharmony.anat.templates import DEFAULT_TEMPLATE, Template
from brainharmony.bids_uri import (
    RAW,
    bids_root,
    bids_uri,
    source_uris,
    write_dataset_description,
)
from brainharmony.io import PathLike, atomic_path, provenance, sidecar_path, write_json, write_nifti

logger = logging.getLogger(__name__)

#: ``GeneratedBy`` name of ``results/anat/<dataset>`` (BIDS-Derivatives).
PIPELINE = "brainharmony-anat"
#: Files BIDS 1.x has no name for: the QC figures and the transforms (BEP014 names,
#: as fMRIPrep writes them).
BIDSIGNORE = ("figures", "*_xfm.*")


@dataclass(frozen=True)
class AnatPaths:
    """Every file the stage writes for one T1w (BIDS-Derivatives names).

    ``space-<template>`` files are on the template grid; files without ``space-`` are
    in the T1w's own world (reoriented to RAS+, not resampled).
    """

    preproc: Path
    mask: Path
    model: Path
    native_preproc: Path
    native_mask: Path
    xfm_to_template: Path
    xfm_from_template: Path
    figure: Path
    nonlinear_to_template: Path | None = None
    nonlinear_from_template: Path | None = None

    def files(self) -> list[Path]:
        """Every data file (sidecars excluded), in a fixed order."""
        out = [
            self.preproc,
            self.mask,
            self.model,
            self.native_preproc,
            self.native_mask,
            self.xfm_to_template,
            self.xfm_from_template,
            self.figure,
        ]
        out += [p for p in (self.nonlinear_to_template, self.nonlinear_from_template) if p]
        return out


def anat_paths(
    dataset_dir: PathLike,
    subject: str,
    session: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    nonlinear: bool = False,
    backend: str = "native",
) -> AnatPaths:
    """Output paths for one T1w.

    Parameters
    ----------
    dataset_dir : path-like
        ``results/anat/<dataset>``.
    subject, session : str
        Labels without ``sub-`` / ``ses-``; ``session`` None when the T1w has none.
    template : str
    nonlinear : bool
        Whether the nonlinear transform files are written.
    backend : str
        Sets the nonlinear files' format: ITK composite ``.h5`` (native,
        ``desc-nonlinear``) or FSL warp coefficients ``.nii.gz`` (fsl, ``desc-fnirt``).
    """
    root = Path(dataset_dir)
    folder = root / f"sub-{subject}"
    prefix = f"sub-{subject}"
    if session:
        folder = folder / f"ses-{session}"
        prefix += f"_ses-{session}"
    folder = folder / "anat"
    space = f"{prefix}_space-{template}"
    nl_to = nl_from = None
    if nonlinear:
        desc, ext = ("fnirt", ".nii.gz") if backend == "fsl" else ("nonlinear", ".h5")
        nl_to = folder / f"{prefix}_from-T1w_to-{template}_mode-image_desc-{desc}_xfm{ext}"
        nl_from = folder / f"{prefix}_from-{template}_to-T1w_mode-image_desc-{desc}_xfm{ext}"
    return AnatPaths(
        preproc=folder / f"{space}_desc-preproc_T1w.nii.gz",
        mask=folder / f"{space}_desc-brain_mask.nii.gz",
        model=folder / f"{space}_desc-model_T1w.nii.gz",
        native_preproc=folder / f"{prefix}_desc-preproc_T1w.nii.gz",
        native_mask=folder / f"{prefix}_desc-brain_mask.nii.gz",
        xfm_to_template=folder / f"{prefix}_from-T1w_to-{template}_mode-image_xfm.txt",
        xfm_from_template=folder / f"{prefix}_from-{template}_to-T1w_mode-image_xfm.txt",
        figure=root / "figures" / f"{prefix}_desc-reg_T1w.png",
        nonlinear_to_template=nl_to,
        nonlinear_from_template=nl_from,
    )


@dataclass
class BackendResult:
    """What a backend hands to :func:`write_derivatives`.

    Attributes
    ----------
    corrected : nibabel.Nifti1Image
        Bias-corrected T1w, RAS+, float32, shape ``(nx, ny, nz)`` in the T1w world.
    native_mask : nibabel.Nifti1Image
        Brain mask on the same grid (uint8).
    affine : SimpleITK.AffineTransform
        Template -> T1w points (LPS mm): resamples the T1w into the template.
    nonlinear : SimpleITK.Transform or None
        The full nonlinear template -> T1w transform, when computed.
    nonlinear_inverse : SimpleITK.Transform or None
        Its inverse (T1w -> template).
    template_mask : ndarray or None
        Brain mask already on the template grid (native: the template's own mask);
        None: the native mask is resampled forward.
    template_image : ndarray or None
        The T1w already resampled onto the template grid by the backend (FSL's
        ``applywarp`` for FNIRT warps); None: resampled here with ``forward``.
    external_files : dict
        ``AnatPaths`` field name -> a backend file copied there (FSL warps).
    reports : dict
        Backend facts for the sidecar (commands, metric values ...).
    """

    corrected: nib.Nifti1Image
    native_mask: nib.Nifti1Image
    affine: sitk.AffineTransform
    nonlinear: sitk.Transform | None = None
    nonlinear_inverse: sitk.Transform | None = None
    template_mask: np.ndarray | None = None
    template_image: np.ndarray | None = None
    external_files: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)

    @property
    def forward(self) -> sitk.Transform:
        """The full template -> T1w transform (the nonlinear one when present)."""
        return self.nonlinear if self.nonlinear is not None else self.affine


def resample_to_template(
    image: nib.Nifti1Image,
    transform: sitk.Transform,
    template: Template,
    interpolator: int = sitk.sitkLinear,
    threads: int = 1,
) -> np.ndarray:
    """Resample a T1w-space image onto the template grid in one step.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        Shape ``(nx, ny, nz)`` in the T1w world (any orthogonal affine, oblique included).
    transform : SimpleITK.Transform
        Template -> T1w points.
    template : Template
    interpolator : int
        SimpleITK interpolator (linear by default).
    threads : int

    Returns
    -------
    ndarray of float32, shape ``template.shape``.
    """
    reference = nib_to_sitk(template.mask, np.uint8)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetNumberOfThreads(threads)
    out = resampler.Execute(nib_to_sitk(image, np.float32))
    return sitk_to_nib(out).get_fdata(dtype=np.float32)


def _template_image(data: np.ndarray, template: Template, dtype: Any) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), template.affine)
    img.header.set_xyzt_units("mm")
    img.header.set_sform(template.affine, code=4)
    img.header.set_qform(template.affine, code=4)
    return img


def _native_image(data: np.ndarray, like: nib.Nifti1Image, dtype: Any) -> nib.Nifti1Image:
    affine = np.asarray(like.affine, float)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    return img


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays of the same shape (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _round(matrix: np.ndarray) -> list[list[float]]:
    return [[float(f"{v:.10g}") for v in row] for row in np.asarray(matrix, float)]


def write_transform(path: PathLike, transform: sitk.Transform) -> Path:
    """Write an ITK transform file atomically (``.txt`` text or ``.h5``)."""
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return Path(path)


def qc_thresholds(settings: AnatSettings) -> dict[str, Any]:
    """The QC gate's thresholds as recorded in the sidecar."""
    return {
        "MinNCCWithTemplateInBrain": settings.qc_min_ncc,
        "MinMaskDiceWithTemplateMask": settings.qc_min_dice,
        "NativeBrainVolumeMLRange": list(settings.qc_brain_volume_ml),
        "TransformScaleFactorRange": list(settings.qc_scale_range),
    }


def raw_sources(t1w_path: PathLike) -> list[str]:
    """``Sources`` of an output made from the raw T1w: its ``bids:raw:`` URI.

    Empty when the T1w is a loose file, outside a BIDS tree
    (:func:`~brainharmony.bids_uri.bids_root`).
    """
    root = bids_root(t1w_path)
    return [] if root is None else source_uris([t1w_path], {RAW: root})


def write_description(dataset_dir: PathLike, t1w_path: PathLike) -> Path:
    """Write ``dataset_description.json`` and ``.bidsignore`` of ``results/anat/<dataset>``.

    Every anat job of the dataset writes the same bytes (``DatasetLinks``: ``raw`` -> the
    raw dataset holding ``t1w_path``; none for a loose T1w).
    """
    return write_dataset_description(
        dataset_dir,
        pipeline=PIPELINE,
        description=(
            "Anatomy stage: each T1w bias-corrected, brain-masked and registered to a "
            "template; model-ready box (docs/anat.md)"
        ),
        links={RAW: bids_root(t1w_path)},
        bidsignore=BIDSIGNORE,
    )


def _exclusion(reason: str) -> dict[str, Any]:
    return {"Excluded": True, "ExclusionReason": reason}


def write_derivatives(
    paths: AnatPaths,
    t1w: T1wImage,
    result: BackendResult,
    template: Template,
    settings: AnatSettings,
    subject_label: str,
    threads: int = 1,
) -> dict[str, Any]:
    """Resample, cut, draw and write every output of one T1w.

    Parameters
    ----------
    paths : AnatPaths
    t1w : T1wImage
        The validated input (its report goes to the sidecar).
    result : BackendResult
    template : Template
        At ``settings.resolution_mm``.
    settings : AnatSettings
    subject_label : str
        For the figure's title, e.g. ``sub-01`` or ``sub-01_ses-1``.
    threads : int

    Returns
    -------
    dict
        The preprocessed T1w's sidecar (also written).
    """
    if result.template_image is not None:
        preproc = np.asarray(result.template_image, np.float32)
    else:
        preproc = resample_to_template(result.corrected, result.forward, template, threads=threads)
    template_mask = np.asarray(template.mask.dataobj) > 0
    if result.template_mask is not None:
        mask = np.asarray(result.template_mask, bool)
    else:
        soft = resample_to_template(result.native_mask, result.forward, template, threads=threads)
        mask = soft >= 0.5
    lo, hi = template.brain_bbox_mm()
    centre = (lo + hi) / 2
    preproc_img = _template_image(preproc, template, np.float32)
    mask_img = _template_image(mask, template, np.uint8)
    model_img = model_ready(
        preproc_img, mask_img, centre, settings.model_box_mm, settings.normalisation
    )
    native_img = _native_image(
        result.corrected.get_fdata(dtype=np.float32), result.corrected, np.float32
    )
    native_mask = _native_image(
        np.asarray(result.native_mask.dataobj) > 0, result.corrected, np.uint8
    )

    lps = itk_affine_to_lps_matrix(result.affine)
    template_to_t1w = lps_to_ras(lps)
    t1w_to_template = np.linalg.inv(template_to_t1w)
    tpl_data = np.asarray(template.image.dataobj, np.float32)
    zooms = np.linalg.norm(np.asarray(result.corrected.affine)[:3, :3], axis=0)
    metrics = {
        "NCCWithTemplateInBrain": round(_ncc(preproc[template_mask], tpl_data[template_mask]), 6),
        "MaskDiceWithTemplateMask": round(dice(mask, template_mask), 6),
        "NativeBrainVolumeML": round(
            float((np.asarray(native_mask.dataobj) > 0).sum() * np.prod(zooms) / 1000), 3
        ),
        "AffineDeterminant": round(float(np.linalg.det(template_to_t1w[:3, :3])), 6),
        "TransformScaleFactors": [
            round(float(v), 6) for v in np.linalg.svd(t1w_to_template[:3, :3], compute_uv=False)
        ],
    }
    failures = qc_failures(metrics, settings)
    exclusion = _exclusion("; ".join(failures)) if failures else {}
    if failures:
        logger.warning("%s: excluded by the QC gate: %s", subject_label, "; ".join(failures))

    write_nifti(paths.preproc, preproc_img)
    write_nifti(paths.mask, mask_img)
    write_nifti(paths.model, model_img)
    write_nifti(paths.native_preproc, native_img)
    write_nifti(paths.native_mask, native_mask)
    write_transform(paths.xfm_to_template, result.affine)
    write_transform(paths.xfm_from_template, result.affine.GetInverse())
    if settings.nonlinear:
        if paths.nonlinear_to_template is None or paths.nonlinear_from_template is None:
            raise ValueError("nonlinear outputs need paths made with nonlinear=True")
        if result.external_files:
            for name, src in sorted(result.external_files.items()):
                with atomic_path(getattr(paths, name)) as tmp:
                    shutil.copyfile(src, tmp)
        elif result.nonlinear is not None and result.nonlinear_inverse is not None:
            write_transform(paths.nonlinear_to_template, result.nonlinear)
            write_transform(paths.nonlinear_from_template, result.nonlinear_inverse)
        else:
            raise RuntimeError("nonlinear was requested but the backend returned no warp")
    registration_figure(
        paths.figure,
        preproc,
        tpl_data,
        mask,
        title=f"{subject_label} -> {template.name} ({settings.resolution_mm} mm, "
        f"{settings.backend}); NCC {metrics['NCCWithTemplateInBrain']:.3f}, Dice "
        f"{metrics['MaskDiceWithTemplateMask']:.3f}" + ("; EXCLUDED" if failures else ""),
        zooms=[float(template.resolution_mm)] * 3,
    )

    def rel(p: Path | None) -> str | None:
        return None if p is None else p.name

    transforms = {
        "Convention": (
            "ITK files map template points to T1w points in LPS mm (they resample the T1w "
            "into the template: the 'from-T1w_to-<template>' file); the RAS matrices below "
            "map points between worlds, x_dst = M @ [x_src, 1]"
        ),
        "T1wToTemplateRAS": _round(t1w_to_template),
        "TemplateToT1wRAS": _round(template_to_t1w),
        "FromT1wToTemplateFile": rel(paths.xfm_to_template),
        "FromTemplateToT1wFile": rel(paths.xfm_from_template),
        "NonlinearFromT1wToTemplateFile": rel(paths.nonlinear_to_template),
        "NonlinearFromTemplateToT1wFile": rel(paths.nonlinear_from_template),
        "NonlinearFormat": None
        if not settings.nonlinear
        else (
            "FSL warp coefficients (fnirt --cout)"
            if result.external_files
            else "ITK composite transform (affine + B-spline; inverse: displacement field)"
        ),
    }
    prov = provenance(
        step=f"anat-{settings.backend}",
        inputs=[t1w.path],
        parameters=settings.to_dict(),
        config=settings.to_dict(),
    )
    common = {
        "SpatialReference": template.name,
        "TemplateSource": template.source,
        "Resolution": f"{settings.resolution_mm} mm isotropic",
        "Backend": settings.backend,
        "Sources": raw_sources(t1w.path),
        "Provenance": prov,
        **exclusion,
    }
    preproc_sidecar = {
        **common,
        "Description": "Bias-corrected T1w resampled once into the template grid (linear).",
        "SkullStripped": False,
        "Input": t1w.report,
        "Transforms": transforms,
        "Metrics": metrics,
        "QCThresholds": qc_thresholds(settings),
        "Steps": result.reports,
        "Outputs": {k: rel(v) for k, v in asdict(paths).items()},
    }
    write_json(sidecar_path(paths.preproc), preproc_sidecar)
    write_json(
        sidecar_path(paths.mask),
        {**common, "Type": "Brain", "Description": "Brain mask on the template grid."},
    )
    # The model box is cut from this dataset's template-space T1w and mask (bids::).
    own = bids_root(paths.preproc)
    box_sources = [bids_uri(p, own) for p in (paths.preproc, paths.mask)] if own else []
    write_json(
        sidecar_path(paths.model),
        {
            **common,
            "Sources": box_sources,
            "Description": "Model-ready T1w box: skull-stripped, normalised, float32.",
            "SkullStripped": True,
            "BoxMM": list(settings.model_box_mm),
            "BoxShape": list(model_img.shape),
            "BoxCentreRAS": [float(c) for c in centre],
            "Normalisation": settings.normalisation,
        },
    )
    write_json(
        sidecar_path(paths.native_preproc),
        {
            **common,
            "SpatialReference": "T1w",
            "Description": "Bias-corrected T1w in its own world, axes reoriented to RAS+.",
            "SkullStripped": False,
        },
    )
    write_json(
        sidecar_path(paths.native_mask),
        {
            **common,
            "SpatialReference": "T1w",
            "Type": "Brain",
            "Description": "Brain mask in the T1w world (grid of desc-preproc_T1w).",
        },
    )
    logger.info("%s: anat outputs written (%s)", subject_label, metrics)
    return preproc_sidecar


def write_excluded(
    paths: AnatPaths,
    t1w_path: PathLike,
    template: Template,
    settings: AnatSettings,
    subject_label: str,
    reason: str,
) -> dict[str, Any]:
    """Write every output of a T1w that could not be processed, flagged as excluded.

    The workflow's jobs need their files; these hold no data (zeros on the template
    grid, identity transforms) and every sidecar says ``Excluded: true`` with the
    reason, so no later stage uses them.

    Parameters
    ----------
    paths : AnatPaths
    t1w_path : path-like
        The input that failed.
    template : Template
        At ``settings.resolution_mm``.
    settings : AnatSettings
    subject_label : str
    reason : str
        Why the T1w could not be processed (the error message).

    Returns
    -------
    dict
        The preprocessed T1w's sidecar (also written).
    """
    logger.warning("%s: excluded: %s", subject_label, reason)
    zeros = np.zeros(template.shape, np.float32)
    empty = _template_image(zeros, template, np.uint8)
    write_nifti(paths.preproc, _template_image(zeros, template, np.float32))
    write_nifti(paths.mask, empty)
    box = box_shape(settings.model_box_mm, settings.resolution_mm)
    model_img = nib.Nifti1Image(np.zeros(box, np.float32), template.affine)
    write_nifti(paths.model, model_img)
    write_nifti(paths.native_preproc, _template_image(zeros, template, np.float32))
    write_nifti(paths.native_mask, empty)
    identity = sitk.AffineTransform(3)
    write_transform(paths.xfm_to_template, identity)
    write_transform(paths.xfm_from_template, identity)
    for path in (paths.nonlinear_to_template, paths.nonlinear_from_template):
        if path is None:
            continue
        if path.name.endswith(".nii.gz"):
            write_nifti(path, _template_image(np.zeros((*template.shape, 3)), template, np.float32))
        else:
            write_transform(path, sitk.CompositeTransform([identity]))
    tpl_data = np.asarray(template.image.dataobj, np.float32)
    registration_figure(
        paths.figure,
        zeros,
        tpl_data,
        np.zeros(template.shape, bool),
        title=f"{subject_label}: EXCLUDED ({reason[:80]})",
        zooms=[float(template.resolution_mm)] * 3,
    )
    common = {
        "SpatialReference": template.name,
        "Backend": settings.backend,
        "Sources": raw_sources(t1w_path),
        "Provenance": provenance(
            step=f"anat-{settings.backend}",
            inputs=[Path(t1w_path)],
            parameters=settings.to_dict(),
            config=settings.to_dict(),
        ),
        **_exclusion(reason),
    }
    described = {
        paths.preproc: "No data: the T1w could not be processed (see ExclusionReason).",
        paths.mask: "No data (excluded).",
        paths.model: "No data (excluded).",
        paths.native_preproc: "No data (excluded); template grid, not the T1w's.",
        paths.native_mask: "No data (excluded); template grid, not the T1w's.",
    }
    for path, text in described.items():
        write_json(sidecar_path(path), {**common, "Description": text})
    return json.loads(sidecar_path(paths.preproc).read_text())
