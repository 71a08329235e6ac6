"""Template resources: a brain-only T1 template and its brain mask at a resolution.

The offline default is nilearn's MNI152 template, which is the ICBM152 **2009a
asymmetric** nonlinear template (skull-stripped, intensities in [0, 1]); its brain
mask is ``template > 0.2`` (nilearn's ``load_mni152_brain_mask``). Outputs made
against it are named ``space-MNI152NLin2009aAsym``.

``MNI152NLin2009cAsym`` (fMRIPrep's default) is offered when a TemplateFlow folder
holding its files exists (``$TEMPLATEFLOW_HOME``); the ``templateflow`` package
itself is not needed, the files are read directly.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brainharmony.io import (
    InputDataError,
    provenance,
    read_resource,
    sidecar_path,
    write_json,
    write_nifti,
)

logger = logging.getLogger(__name__)

#: The offline default template space (nilearn's MNI152 template).
DEFAULT_TEMPLATE = "MNI152NLin2009aAsym"
#: Templates this module can load.
TEMPLATES: tuple[str, ...] = ("MNI152NLin2009aAsym", "MNI152NLin2009cAsym")
#: Output resolutions (mm, isotropic) the stage supports.
RESOLUTIONS_MM: tuple[int, ...] = (1, 2)
#: nilearn's brain-mask threshold on the [0, 1] template.
NILEARN_MASK_THRESHOLD = 0.2


class TemplateUnavailableError(RuntimeError):
    """The requested template's files cannot be found. The message says where to put them."""


@dataclass(frozen=True)
class Template:
    """A brain-only template and its brain mask on the same grid.

    Attributes
    ----------
    name : str
        Space name used in output file names (``space-<name>``).
    resolution_mm : int
        Isotropic voxel size of the grid.
    image : nibabel.Nifti1Image
        Brain-only T1 template, float32, shape ``(nx, ny, nz)``, RAS+ affine.
    mask : nibabel.Nifti1Image
        Brain mask, uint8 (0/1), same grid as ``image``.
    source : str
        Where the files came from (for provenance).
    """

    name: str
    resolution_mm: int
    image: nib.Nifti1Image
    mask: nib.Nifti1Image
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(nx, ny, nz)``."""
        return tuple(int(n) for n in self.image.shape[:3])  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """RAS+ voxel -> world affine, shape ``(4, 4)``."""
        return np.asarray(self.image.affine, dtype=float)

    def brain_bbox_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """World (RAS, mm) coordinates of the brain mask's bounding-box corner voxels.

        Returns
        -------
        lo, hi : ndarray of shape (3,)
            Centres of the lowest and highest mask voxels along each axis.
        """
        idx = np.argwhere(np.asarray(self.mask.dataobj) > 0)
        lo = nib.affines.apply_affine(self.affine, idx.min(axis=0))
        hi = nib.affines.apply_affine(self.affine, idx.max(axis=0))
        return np.minimum(lo, hi), np.maximum(lo, hi)


def _validate(name: str, resolution_mm: int) -> None:
    if name not in TEMPLATES:
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)}; got {name!r}")
    if resolution_mm not in RESOLUTIONS_MM:
        raise ValueError(
            f"resolution_mm must be one of {', '.join(map(str, RESOLUTIONS_MM))}; "
            f"got {resolution_mm!r}"
        )


def templateflow_files(name: str, resolution_mm: int) -> tuple[Path, Path]:
    """Paths of a TemplateFlow template's brain T1w and brain mask (they may not exist).

    Parameters
    ----------
    name : str
        TemplateFlow identifier, e.g. ``MNI152NLin2009cAsym``.
    resolution_mm : int
        1 or 2 (TemplateFlow's ``res-01`` / ``res-02``).

    Returns
    -------
    t1w, mask : Path
        ``tpl-<name>_res-0<r>_T1w.nii.gz`` and ``..._desc-brain_mask.nii.gz``.

    Raises
    ------
    TemplateUnavailableError
        When ``TEMPLATEFLOW_HOME`` is not set.
    """
    home = os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        raise TemplateUnavailableError(
            f"template {name!r} is read from TemplateFlow files, but TEMPLATEFLOW_HOME is not "
            f"set; set it to a folder holding tpl-{name}/ or use template "
            f"{DEFAULT_TEMPLATE!r} (offline, from nilearn)"
        )
    folder = Path(home) / f"tpl-{name}"
    stem = f"tpl-{name}_res-{resolution_mm:02d}"
    return folder / f"{stem}_T1w.nii.gz", folder / f"{stem}_desc-brain_mask.nii.gz"


def check_template_available(name: str, resolution_mm: int) -> None:
    """Raise a clear error now if :func:`load_template` would fail later.

    Cheap (no image is read): meant for the workflow's planning step.

    Raises
    ------
    ValueError
        Unknown template or resolution.
    TemplateUnavailableError
        TemplateFlow files are missing; the message names them.
    """
    _validate(name, resolution_mm)
    if name == DEFAULT_TEMPLATE:
        return
    missing = [str(p) for p in templateflow_files(name, resolution_mm) if not p.is_file()]
    if missing:
        raise TemplateUnavailableError(
            f"template {name!r} needs TemplateFlow files that do not exist: "
            f"{', '.join(missing)}; download them (templateflow.api.get) or use template "
            f"{DEFAULT_TEMPLATE!r} (offline, from nilearn)"
        )


def resource_files(folder: str | os.PathLike[str], name: str, resolution_mm: int) -> Path:
    """The template resource file of :func:`write_resource` (image, mask: two volumes).

    One file per template and resolution in ``folder`` (the workflow's
    ``resources/templates``): ``tpl-<name>_res-0<r>_desc-brainandmask_T1w.nii.gz`` holds the
    brain-only image and, as its second volume, the brain mask; the JSON sidecar beside it
    records where they came from.
    """
    return Path(folder) / f"tpl-{name}_res-{resolution_mm:02d}_desc-brainandmask_T1w.nii.gz"


def write_resource(
    folder: str | os.PathLike[str], name: str = DEFAULT_TEMPLATE, resolution_mm: int = 2
) -> Path:
    """Write :func:`load_template`'s result for ``name`` at ``resolution_mm`` into ``folder``.

    The anatomy jobs then read it with ``load_template(..., folder=...)``, which gives the
    same arrays without importing nilearn's dataset loaders and resampling the 1 mm
    template again in every job (about 2 s of CPU each).
    """

    tpl = load_template(name, resolution_mm)
    data = np.stack(
        [np.asarray(tpl.image.dataobj, np.float32), np.asarray(tpl.mask.dataobj, np.float32)],
        axis=-1,
    )
    path = resource_files(folder, name, resolution_mm)
    write_nifti(path, nib.Nifti1Image(data, tpl.affine))
    write_json(
        sidecar_path(path),
        {
            "Volumes": ["brain", "brain_mask"],
            "Template": name,
            "ResolutionMM": resolution_mm,
            "Source": tpl.source,
            "Provenance": provenance(step="anat template resource"),
        },
    )
    return path


def _read_resource(folder: str | os.PathLike[str], name: str, resolution_mm: int) -> Template:

    path = resource_files(folder, name, resolution_mm)
    img, raw, meta = read_resource(path, "template resource", "run `brainharmony templates`")
    data = np.asarray(raw, dtype=np.float32)
    if data.ndim != 4 or data.shape[3] != 2 or meta.get("Template") != name:
        raise InputDataError(
            path,
            f"expected template {name} as 2 volumes (image, mask); got {meta.get('Template')} "
            f"of shape {data.shape}",
        )
    zooms = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    if not np.allclose(zooms, resolution_mm, atol=1e-3):
        raise InputDataError(path, f"voxel size {zooms} is not {resolution_mm} mm")
    return _make_template(
        name,
        resolution_mm,
        np.ascontiguousarray(data[..., 0]),
        (data[..., 1] > 0.5).astype(np.uint8),
        np.asarray(img.affine, dtype=float),
        # The resource is a cache of that template: outputs must not depend on it.
        str(meta.get("Source", "unknown")),
    )


def _make_template(
    name: str,
    resolution_mm: int,
    data: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    source: str,
) -> Template:
    image = nib.Nifti1Image(data, affine)
    mask_image = nib.Nifti1Image(mask, affine)
    for im in (image, mask_image):
        im.header.set_xyzt_units("mm")
        im.header.set_sform(affine, code=4)  # 4 = MNI152
        im.header.set_qform(affine, code=4)
    logger.debug("loaded template %s at %d mm from %s", name, resolution_mm, source)
    return Template(name, resolution_mm, image, mask_image, source)


@functools.lru_cache(maxsize=8)
def load_template(
    name: str = DEFAULT_TEMPLATE,
    resolution_mm: int = 2,
    folder: str | os.PathLike[str] | None = None,
) -> Template:
    """Load a brain-only template and its brain mask at ``resolution_mm``.

    Parameters
    ----------
    name : str
        ``MNI152NLin2009aAsym`` (nilearn, offline) or ``MNI152NLin2009cAsym``
        (TemplateFlow files under ``$TEMPLATEFLOW_HOME``).
    resolution_mm : int
        1 or 2.
    folder : path-like, optional
        A folder where :func:`write_resource` wrote this template: read from there (the
        same arrays, faster). A missing or damaged file is an
        :class:`~brainharmony.io.InputDataError` naming it.

    Returns
    -------
    Template
        Cached: the same object is returned for the same arguments; do not modify
        its arrays.
    """
    check_template_available(name, resolution_mm)
    if folder is not None:
        return _read_resource(folder, name, resolution_mm)
    if name == DEFAULT_TEMPLATE:
        from nilearn.datasets import load_mni152_template

        img = load_mni152_template(resolution=resolution_mm)
        data = np.asarray(img.dataobj, dtype=np.float32)
        # nilearn stores the template as uint8 scaled to [0, 1]; threshold as it does.
        mask = (data > NILEARN_MASK_THRESHOLD).astype(np.uint8)
        source = "nilearn.datasets.load_mni152_template (ICBM152 2009a asymmetric)"
        affine = np.asarray(img.affine, dtype=float)
    else:
        t1w_path, mask_path = templateflow_files(name, resolution_mm)
        head = nib.as_closest_canonical(nib.load(t1w_path))
        mask_img = nib.as_closest_canonical(nib.load(mask_path))
        mask = (np.asarray(mask_img.dataobj) > 0.5).astype(np.uint8)
        head_data = np.asarray(head.dataobj, dtype=np.float32)
        hi = float(np.percentile(head_data[mask > 0], 99.5))
        data = np.clip(head_data / hi, 0, None).astype(np.float32) * mask
        source = f"TemplateFlow files {t1w_path}, {mask_path}"
        affine = np.asarray(head.affine, dtype=float)
    return _make_template(name, resolution_mm, data, mask, affine, source)
