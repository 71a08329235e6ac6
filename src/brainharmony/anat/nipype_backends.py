"""The ``fsl`` and ``freesurfer`` anatomy backends, through nipype interfaces.

Both produce the same outputs as the native backend (see :mod:`.derivatives`); only
reorientation, brain extraction and the registration estimate come from the external
tools. N4 bias correction is SimpleITK's in every backend, and the final resampling
into the template grid is done once, in Python, with the converted transform (except
FNIRT warps, which FSL's ``applywarp`` applies).

``fsl``
    ``fslreorient2std`` -> N4 -> ``bet -R -m`` -> ``flirt -dof 12 -cost corratio``
    (brain to the template brain) [-> ``fnirt`` + ``applywarp`` + ``invwarp``].
``freesurfer``
    ``mri_convert --out_orientation RAS`` -> N4 -> ``mri_synthstrip -i -o -m -b 1`` ->
    ``mri_coreg --dof 12`` (brain to the template brain; an LTA). No nonlinear option.

Every command line uses only options the tools' own parsers accept (FSL 6.0,
FreeSurfer >= 7.3); ``tests/workflow/anat_standins.py`` checks that against option lists
read from their sources.

The template is written to the work folder as NIfTI (brain-only T1 and mask), so the
tools never see anything but plain files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brainharmony.anat.bias import n4_correct
from brainharmony.anat.derivatives import BackendResult
from brainharmony.anat.images import (
    T1wImage,
    lps_matrix_to_itk_affine,
    nib_to_sitk,
    ras_to_lps,
    sitk_to_nib,
)
from brainharmony.anat.settings import AnatSettings
from brainharmony.anat.skullstrip import head_mask
from brainharmony.anat.templates import Template

logger = logging.getLogger(__name__)

#: Executables each backend calls (the nonlinear ones only with ``nonlinear: true``).
REQUIRED: dict[str, tuple[str, ...]] = {
    "fsl": ("fslreorient2std", "bet", "flirt"),
    "freesurfer": ("mri_convert", "mri_synthstrip", "mri_coreg"),
}
REQUIRED_NONLINEAR: dict[str, tuple[str, ...]] = {
    "fsl": ("fnirt", "applywarp", "invwarp"),
    "freesurfer": (),
}
HINTS: dict[str, str] = {
    "fsl": "install FSL (or `module load fsl`) and source $FSLDIR/etc/fslconf/fsl.sh",
    "freesurfer": "install FreeSurfer >= 7.3 (mri_synthstrip) and source "
    "$FREESURFER_HOME/SetUpFreeSurfer.sh",
}


class BackendUnavailableError(RuntimeError):
    """A selected backend cannot run here. The message lists what is missing."""


class ExternalToolError(RuntimeError):
    """An FSL or FreeSurfer command failed (non-zero exit status or missing outputs)."""


def required_executables(backend: str, nonlinear: bool) -> tuple[str, ...]:
    """Executables that ``backend`` needs on PATH."""
    if backend not in REQUIRED:
        raise ValueError(f"backend must be one of {', '.join(REQUIRED)}; got {backend!r}")
    return REQUIRED[backend] + (REQUIRED_NONLINEAR[backend] if nonlinear else ())


def check_backend(backend: str, nonlinear: bool, path: str | None = None) -> dict[str, str]:
    """Check, before anything runs, that an external backend can run.

    Parameters
    ----------
    backend : {"fsl", "freesurfer"}
    nonlinear : bool
    path : str, optional
        PATH to search (default: the environment's).

    Returns
    -------
    dict
        Executable name -> where it was found.

    Raises
    ------
    BackendUnavailableError
        Naming every missing executable and how to get them, or an unsupported option.
    """
    if backend == "freesurfer" and nonlinear:
        raise BackendUnavailableError(
            "anat.nonlinear: true is not available with anat.backend: freesurfer (its "
            "nonlinear tools need downloaded model weights); use backend native or fsl, "
            "or set nonlinear: false"
        )
    found: dict[str, str] = {}
    missing = []
    for exe in required_executables(backend, nonlinear):
        where = shutil.which(exe, path=path)
        if where is None:
            missing.append(exe)
        else:
            found[exe] = where
    if missing:
        raise BackendUnavailableError(
            f"anat.backend is {backend!r} but these executables are not on PATH: "
            f"{', '.join(missing)}; {HINTS[backend]}, or set anat.backend: native "
            f"(offline, Python only)"
        )
    return found


# --- coordinate conventions --------------------------------------------------------


def fsl_scaled_voxels(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """FSL's voxel -> "scaled voxel" matrix of an image, shape ``(4, 4)``.

    FLIRT works in voxel coordinates scaled by the voxel sizes; when the affine has a
    positive determinant (neurological storage) the first voxel axis is flipped first.
    """
    affine = np.asarray(img.affine, float)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    out = np.diag([*zooms, 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0] = -1.0
        flip[0, 3] = img.shape[0] - 1
        out = out @ flip
    return out


def flirt_to_world(
    matrix: np.ndarray,
    moving: nib.spatialimages.SpatialImage,
    reference: nib.spatialimages.SpatialImage,
) -> np.ndarray:
    """Convert a FLIRT matrix into a RAS world point mapping (moving world -> reference world).

    Parameters
    ----------
    matrix : ndarray of shape (4, 4)
        FLIRT ``-omat`` (scaled voxel of ``moving`` -> scaled voxel of ``reference``).
    moving, reference : nibabel images
        The ``-in`` and ``-ref`` images FLIRT saw (their headers fix the convention).

    Returns
    -------
    ndarray of shape (4, 4)
    """
    return (
        np.asarray(reference.affine, float)
        @ np.linalg.inv(fsl_scaled_voxels(reference))
        @ np.asarray(matrix, float)
        @ fsl_scaled_voxels(moving)
        @ np.linalg.inv(np.asarray(moving.affine, float))
    )


def world_to_flirt(
    world: np.ndarray,
    moving: nib.spatialimages.SpatialImage,
    reference: nib.spatialimages.SpatialImage,
) -> np.ndarray:
    """Inverse of :func:`flirt_to_world`: a RAS world mapping as a FLIRT matrix."""
    return (
        fsl_scaled_voxels(reference)
        @ np.linalg.inv(np.asarray(reference.affine, float))
        @ np.asarray(world, float)
        @ np.asarray(moving.affine, float)
        @ np.linalg.inv(fsl_scaled_voxels(moving))
    )


def _lta_geometry(block: str) -> np.ndarray | None:
    """vox2ras of an LTA 'volume info' block (FreeSurfer: centre at dims / 2)."""

    def vec(name: str) -> np.ndarray:
        m = re.search(rf"^\s*{name}\s*=\s*(.+)$", block, re.MULTILINE)
        if m is None:
            raise ValueError(f"LTA volume info lacks '{name}'")
        return np.array([float(v) for v in m.group(1).split()[:3]])

    valid = re.search(r"^\s*valid\s*=\s*(\d)", block, re.MULTILINE)
    if valid is None or valid.group(1) != "1":
        return None
    dims, sizes = vec("volume"), vec("voxelsize")
    rot = np.column_stack([vec("xras"), vec("yras"), vec("zras")]) * sizes
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = vec("cras") - rot @ (dims / 2)
    return out


def read_lta(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a FreeSurfer LTA as a RAS world point mapping (source world -> destination world).

    Handles ``LINEAR_RAS_TO_RAS`` (type 1) and ``LINEAR_VOX_TO_VOX`` (type 0, converted
    with the source and destination geometry the file carries).

    Returns
    -------
    ndarray of shape (4, 4)
    """
    text = Path(path).read_text()
    kind = re.search(r"^\s*type\s*=\s*(\d+)", text, re.MULTILINE)
    rows = re.search(
        r"^\s*1 4 4\s*\n((?:\s*[-+0-9.eE]+\s+[-+0-9.eE]+\s+[-+0-9.eE]+\s+"
        r"[-+0-9.eE]+\s*\n){4})",
        text,
        re.MULTILINE,
    )
    if kind is None or rows is None:
        raise ValueError(f"{path}: not a linear LTA file with one 4x4 transform")
    matrix = np.array(
        [[float(v) for v in line.split()] for line in rows.group(1).strip().splitlines()]
    )
    lta_type = int(kind.group(1))
    if lta_type == 1:
        return matrix
    if lta_type == 0:
        src = re.search(r"src volume info(.*?)(?=dst volume info)", text, re.S)
        dst = re.search(r"dst volume info(.*)", text, re.S)
        src_g = _lta_geometry(src.group(1)) if src else None
        dst_g = _lta_geometry(dst.group(1)) if dst else None
        if src_g is None or dst_g is None:
            raise ValueError(f"{path}: voxel-to-voxel LTA without valid volume geometry")
        return dst_g @ matrix @ np.linalg.inv(src_g)
    raise ValueError(f"{path}: LTA type {lta_type} is not supported (only 0 and 1)")


# --- nipype interfaces -------------------------------------------------------------


def _synthstrip_interface() -> Any:
    """A nipype interface for ``mri_synthstrip`` (nipype ships none).

    Only the options of the script FreeSurfer 7.3 and 7.4 ship are used (``-i -o -m -b``;
    see ``mri_synthstrip/mri_synthstrip`` in freesurfer/freesurfer). That script has no
    thread option (``-t/--threads`` came with later standalone SynthStrip releases), so
    the thread count goes through ``OMP_NUM_THREADS``, which sets PyTorch's CPU threads.
    """
    from nipype.interfaces.base import (
        CommandLine,
        CommandLineInputSpec,
        File,
        TraitedSpec,
        traits,
    )

    class SynthStripInputSpec(CommandLineInputSpec):
        """Inputs of ``mri_synthstrip``."""

        in_file = File(exists=True, mandatory=True, argstr="-i %s", desc="input image")
        out_file = File(mandatory=True, argstr="-o %s", desc="skull-stripped image")
        mask_file = File(mandatory=True, argstr="-m %s", desc="brain mask")
        border = traits.Int(1, usedefault=True, argstr="-b %d", desc="mask border (mm)")

    class SynthStripOutputSpec(TraitedSpec):
        """Outputs of ``mri_synthstrip``."""

        out_file = File(exists=True)
        mask_file = File(exists=True)

    class SynthStrip(CommandLine):
        """FreeSurfer's deep-learning skull stripping (``mri_synthstrip -i -o -m``)."""

        _cmd = "mri_synthstrip"
        input_spec = SynthStripInputSpec
        output_spec = SynthStripOutputSpec

        def _list_outputs(self) -> dict[str, Any]:
            outputs = self.output_spec().get()
            outputs["out_file"] = os.path.abspath(self.inputs.out_file)
            outputs["mask_file"] = os.path.abspath(self.inputs.mask_file)
            return outputs

    return SynthStrip


def _run(interface: Any, work: Path, log: list[dict[str, Any]]) -> Any:
    """Run one nipype command-line interface in ``work``; its outputs, or raise.

    nipype does not raise on a non-zero exit status (it only fails later if an output
    file is missing, which stale files from an earlier run can hide), so the status is
    checked here.

    Raises
    ------
    ExternalToolError
        The command exited non-zero or its outputs are missing; the message has the
        command line, the exit status and the end of its stderr.
    """
    cmdline = interface.cmdline
    logger.info("running: %s", cmdline)
    log.append({"Command": cmdline})
    result = interface.run(cwd=str(work), ignore_exception=True)
    runtime = result.runtime
    status = getattr(runtime, "returncode", None)
    if status != 0 or result.outputs is None:
        detail = getattr(runtime, "stderr", None) or getattr(runtime, "traceback", None) or ""
        detail = str(detail).strip()[-2000:]
        raise ExternalToolError(
            f"{cmdline} failed (exit status {status})" + (f":\n{detail}" if detail else "")
        )
    return result.outputs


def _canonical(path: Path) -> nib.Nifti1Image:
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_xyzt_units("mm")
    return out


def _n4(image: nib.Nifti1Image, threads: int) -> tuple[nib.Nifti1Image, dict[str, Any]]:
    img = nib_to_sitk(image)
    mask, _ = head_mask(img)
    corrected, _, report = n4_correct(img, mask, threads=threads)
    return sitk_to_nib(corrected), report


def _template_files(template: Template, work: Path) -> tuple[Path, Path]:
    brain = work / f"tpl-{template.name}_res-{template.resolution_mm}_desc-brain_T1w.nii.gz"
    mask = work / f"tpl-{template.name}_res-{template.resolution_mm}_desc-brain_mask.nii.gz"
    nib.save(template.image, brain)
    nib.save(template.mask, mask)
    return brain, mask


def _world_to_itk(t1w_to_template: np.ndarray) -> sitk.AffineTransform:
    """ITK template -> T1w (LPS) transform from a RAS T1w -> template point mapping."""
    return lps_matrix_to_itk_affine(ras_to_lps(np.linalg.inv(t1w_to_template)))


def _fsl(
    t1w: T1wImage, template: Template, settings: AnatSettings, work: Path, threads: int
) -> BackendResult:
    from nipype.interfaces import fsl

    fsl.FSLCommand.set_default_output_type("NIFTI_GZ")
    log: list[dict[str, Any]] = []
    raw = work / "t1w.nii.gz"
    nib.save(t1w.image, raw)
    reoriented = _run(
        fsl.Reorient2Std(in_file=str(raw), out_file=str(work / "t1w_reoriented.nii.gz")),
        work,
        log,
    ).out_file
    corrected, n4_report = _n4(_canonical(Path(reoriented)), threads)
    corrected_path = work / "t1w_n4.nii.gz"
    nib.save(corrected, corrected_path)
    bet = _run(
        fsl.BET(
            in_file=str(corrected_path),
            out_file=str(work / "t1w_brain.nii.gz"),
            mask=True,
            robust=True,
            frac=0.5,
        ),
        work,
        log,
    )
    tpl_brain, tpl_mask = _template_files(template, work)
    flirt = _run(
        fsl.FLIRT(
            in_file=bet.out_file,
            reference=str(tpl_brain),
            out_file=str(work / "t1w_brain_flirt.nii.gz"),
            out_matrix_file=str(work / "t1w_to_template.mat"),
            dof=12,
            cost="corratio",
            searchr_x=[-30, 30],
            searchr_y=[-30, 30],
            searchr_z=[-30, 30],
        ),
        work,
        log,
    )
    matrix = np.loadtxt(flirt.out_matrix_file)
    world = flirt_to_world(matrix, nib.load(bet.out_file), nib.load(tpl_brain))
    mask_img = _canonical(Path(bet.mask_file))
    native_mask = nib.Nifti1Image(
        (np.asarray(mask_img.dataobj) > 0.5).astype(np.uint8), corrected.affine
    )
    result = BackendResult(
        corrected=corrected,
        native_mask=native_mask,
        affine=_world_to_itk(world),
        reports={"BiasCorrection": n4_report, "Commands": log, "FlirtMatrix": matrix.tolist()},
    )
    if settings.nonlinear:
        fnirt = _run(
            fsl.FNIRT(
                in_file=str(corrected_path),
                ref_file=str(tpl_brain),
                refmask_file=str(tpl_mask),
                affine_file=flirt.out_matrix_file,
                fieldcoeff_file=str(work / "t1w_to_template_fnirt_coef.nii.gz"),
                warped_file=str(work / "t1w_fnirt.nii.gz"),
                log_file=str(work / "fnirt.log"),
            ),
            work,
            log,
        )
        warped = _run(
            fsl.ApplyWarp(
                in_file=str(corrected_path),
                ref_file=str(tpl_brain),
                field_file=fnirt.fieldcoeff_file,
                interp="spline",
                out_file=str(work / "t1w_space-template.nii.gz"),
            ),
            work,
            log,
        )
        inverse = _run(
            fsl.InvWarp(
                warp=fnirt.fieldcoeff_file,
                reference=str(corrected_path),
                inverse_warp=str(work / "template_to_t1w_fnirt.nii.gz"),
            ),
            work,
            log,
        )
        warped_mask = _run(
            fsl.ApplyWarp(
                in_file=bet.mask_file,
                ref_file=str(tpl_brain),
                field_file=fnirt.fieldcoeff_file,
                interp="nn",
                out_file=str(work / "t1w_brain_mask_space-template.nii.gz"),
            ),
            work,
            log,
        )
        result.template_image = _canonical(Path(warped.out_file)).get_fdata(dtype=np.float32)
        result.template_mask = _canonical(Path(warped_mask.out_file)).get_fdata() > 0.5
        result.external_files = {
            "nonlinear_to_template": Path(fnirt.fieldcoeff_file),
            "nonlinear_from_template": Path(inverse.inverse_warp),
        }
    return result


def _freesurfer(
    t1w: T1wImage, template: Template, settings: AnatSettings, work: Path, threads: int
) -> BackendResult:
    from nipype.interfaces import freesurfer as fs

    log: list[dict[str, Any]] = []
    raw = work / "t1w.nii.gz"
    nib.save(t1w.image, raw)
    converted = _run(
        fs.MRIConvert(
            in_file=str(raw),
            out_file=str(work / "t1w_ras.nii.gz"),
            out_orientation="RAS",
            subjects_dir=str(work),
        ),
        work,
        log,
    ).out_file
    converted = converted[0] if isinstance(converted, list) else converted
    corrected, n4_report = _n4(_canonical(Path(converted)), threads)
    corrected_path = work / "t1w_n4.nii.gz"
    nib.save(corrected, corrected_path)
    strip = _run(
        _synthstrip_interface()(
            in_file=str(corrected_path),
            out_file=str(work / "t1w_brain.nii.gz"),
            mask_file=str(work / "t1w_brain_mask.nii.gz"),
            environ={"OMP_NUM_THREADS": str(threads)},
        ),
        work,
        log,
    )
    tpl_brain, _ = _template_files(template, work)
    coreg = _run(
        fs.MRICoreg(
            source_file=strip.out_file,
            reference_file=str(tpl_brain),
            dof=12,
            out_lta_file=str(work / "t1w_to_template.lta"),
            subjects_dir=str(work),
            num_threads=threads,
        ),
        work,
        log,
    )
    world = read_lta(coreg.out_lta_file)
    mask_img = _canonical(Path(strip.mask_file))
    native_mask = nib.Nifti1Image(
        (np.asarray(mask_img.dataobj) > 0.5).astype(np.uint8), corrected.affine
    )
    return BackendResult(
        corrected=corrected,
        native_mask=native_mask,
        affine=_world_to_itk(world),
        reports={
            "BiasCorrection": n4_report,
            "Commands": log,
            "LTA": Path(coreg.out_lta_file).read_text(),
        },
    )


def run_external_backend(
    t1w: T1wImage,
    template: Template,
    settings: AnatSettings,
    work_dir: Path,
    threads: int = 1,
) -> BackendResult:
    """Run the ``fsl`` or ``freesurfer`` backend on one validated T1w.

    Parameters
    ----------
    t1w : T1wImage
    template : Template
        At the output resolution (the tools register to it).
    settings : AnatSettings
    work_dir : Path
        Scratch folder; the result may point at files in it (FSL warps), so keep it
        until the derivatives are written.
    threads : int

    Returns
    -------
    BackendResult
    """
    check_backend(settings.backend, settings.nonlinear)
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network
    run = {"fsl": _fsl, "freesurfer": _freesurfer}[settings.backend]
    work_dir.mkdir(parents=True, exist_ok=True)
    return run(t1w, template, settings, work_dir, threads)


def command_names(log: Sequence[dict[str, Any]]) -> list[str]:
    """The executable of each logged command (for tests and reports)."""
    return [entry["Command"].split()[0] for entry in log]
