"""One T1w through the anatomy stage: validate, run the configured backend, write outputs.

:func:`run_anat` is what the command line (``brainharmony anat``) and the workflow call.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from brainharmony.anat.brain_extraction import BrainExtractionError
from brainharmony.anat.derivatives import (
    AnatPaths,
    anat_paths,
    write_derivatives,
    write_description,
    write_excluded,
)
from brainharmony.anat.images import itk_threads, load_t1w
from brainharmony.anat.native import REGISTRATION_MM, native_backend
from brainharmony.anat.register import RegistrationSettings
from brainharmony.anat.settings import AnatSettings
from brainharmony.anat.templates import load_template
from brainharmony.io import InputDataError, PathLike

logger = logging.getLogger(__name__)

#: Errors that make one T1w unusable (its outputs are written excluded, with the
#: message as the reason) rather than stopping the workflow: unreadable or implausible
#: input, no brain found, a registration that cannot run (SimpleITK raises
#: RuntimeError), an external tool that failed.
PROCESSING_ERRORS: tuple[type[BaseException], ...] = (
    InputDataError,
    BrainExtractionError,
    ValueError,
    RuntimeError,
)


def run_anat(
    t1w_path: PathLike,
    dataset_dir: PathLike,
    subject: str,
    session: str | None = None,
    settings: AnatSettings | None = None,
    registration: RegistrationSettings | None = None,
    work_dir: PathLike | None = None,
    template_dir: PathLike | None = None,
) -> AnatPaths:
    """Run the anatomy stage on one T1w with the configured backend.

    Parameters
    ----------
    t1w_path : path-like
        Raw T1w NIfTI.
    dataset_dir : path-like
        ``results/anat/<dataset>``; outputs go where :func:`.derivatives.anat_paths` says.
    subject, session : str
        Labels without prefixes; ``session`` None when the T1w has none.
    settings : AnatSettings, optional
    registration : RegistrationSettings, optional
        Native registration settings (``nonlinear`` is taken from ``settings``).
    work_dir : path-like, optional
        Scratch folder for the fsl/freesurfer backends (default: a temporary folder).
    template_dir : path-like, optional
        Folder of the template resource files (``brainharmony templates``); default:
        built from nilearn's template in this process (same arrays, about 2 s slower).

    Returns
    -------
    AnatPaths
        The files written. A T1w that cannot be processed (:data:`PROCESSING_ERRORS`)
        or fails the QC gate (:mod:`.gate`) still has every file, its sidecars
        carrying ``Excluded: true`` and ``ExclusionReason``.
    """
    settings = settings or AnatSettings()
    registration = replace(registration or RegistrationSettings(), nonlinear=settings.nonlinear)
    paths = anat_paths(
        dataset_dir, subject, session, settings.template, settings.nonlinear, settings.backend
    )
    label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    folder = None if template_dir is None else str(template_dir)
    template = load_template(settings.template, settings.resolution_mm, folder)
    write_description(dataset_dir, t1w_path)
    try:
        t1w = load_t1w(t1w_path, settings.max_nonfinite_fraction)
    except InputDataError as err:
        write_excluded(paths, t1w_path, template, settings, label, f"unusable T1w: {err}")
        return paths
    with itk_threads(registration.threads), contextlib.ExitStack() as stack:
        try:
            if settings.backend == "native":
                reg_template = load_template(
                    settings.template, max(REGISTRATION_MM, settings.resolution_mm), folder
                )
                fine = load_template(settings.template, 1, folder)
                result = native_backend(
                    t1w,
                    template,
                    reg_template,
                    registration,
                    fine_template=fine,
                    brain_extraction=settings.brain_extraction,
                    network_shape=settings.deepbet_shape,
                )
            else:
                from brainharmony.anat.nipype_backends import run_external_backend

                if work_dir is None:
                    work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bh-anat-"))
                work = Path(work_dir).resolve()
                work.mkdir(parents=True, exist_ok=True)
                result = run_external_backend(t1w, template, settings, work, registration.threads)
        except PROCESSING_ERRORS as err:
            logger.debug("anat processing failed", exc_info=True)
            reason = f"{settings.backend} backend failed on {t1w_path}: {err}"
            write_excluded(paths, t1w_path, template, settings, label, reason)
            return paths
        write_derivatives(paths, t1w, result, template, settings, label, registration.threads)
    return paths
