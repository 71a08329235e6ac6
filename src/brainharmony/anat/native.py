"""The native (offline, Python-only) anatomy backend.

Per T1w: validate and reorient to RAS+ -> head mask -> N4 -> brain extraction ->
registration -> transform applied to the whole head. :func:`.pipeline.run_anat` then
writes the derivatives (one resampling into the template grid, model box, QC metrics
and figure, transforms, sidecars).

Brain extraction (``brain_extraction``):

* ``deepbet`` (default): the brain mask comes from the image, by deepbet's networks
  (:mod:`.brain_extraction`); the extracted brain is registered to the brain-only
  template (:func:`.register.register_brain_to_template`).
* ``template`` (fallback, no network): the whole head is registered to the brain-only
  template (:func:`.register.register_to_template`) and the template's brain mask is
  carried back into the T1w. It fits a head into a brain when the cranium
  initialisation fails; the QC gate catches that.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import SimpleITK as sitk

from brainharmony.anat.bias import N4Settings, n4_correct
from brainharmony.anat.brain_extraction import DEFAULT_SHAPE, deepbet_mask
from brainharmony.anat.derivatives import BackendResult
from brainharmony.anat.images import T1wImage, nib_to_sitk, sitk_to_nib
from brainharmony.anat.register import (
    RegistrationSettings,
    register_brain_to_template,
    register_to_template,
)
from brainharmony.anat.skullstrip import head_mask, pull_back_mask
from brainharmony.anat.templates import Template, load_template

logger = logging.getLogger(__name__)

#: Resolution (mm) of the template grid the registration's finest level works on.
REGISTRATION_MM = 2


def native_backend(
    t1w: T1wImage,
    template: Template,
    registration_template: Template,
    registration: RegistrationSettings,
    n4: N4Settings | None = None,
    fine_template: Template | None = None,
    brain_extraction: str = "deepbet",
    network_shape: int = DEFAULT_SHAPE,
) -> BackendResult:
    """Bias correction, registration and brain mask for one validated T1w.

    Parameters
    ----------
    t1w : T1wImage
        From :func:`.images.load_t1w` (RAS+).
    template : Template
        The output grid's template (its brain mask is the template-space mask).
    registration_template : Template
        The same template at the registration's resolution.
    registration : RegistrationSettings
    n4 : N4Settings, optional
    fine_template : Template, optional
        The template at 1 mm (``brain_extraction="template"``: its brain mask is
        carried back into the T1w); loaded when not given.
    brain_extraction : {"deepbet", "template"}
    network_shape : int
        deepbet's network input side (see :func:`.brain_extraction.deepbet_mask`).

    Returns
    -------
    BackendResult
    """
    threads = registration.threads
    steps: dict[str, Any] = {}
    image = nib_to_sitk(t1w.image)
    tic = time.perf_counter()
    mask, threshold = head_mask(image)
    head_fraction = float(sitk.GetArrayViewFromImage(mask).mean())
    steps["HeadMask"] = {"OtsuThreshold": threshold, "Fraction": round(head_fraction, 6)}
    corrected, _, steps["BiasCorrection"] = n4_correct(image, mask, n4, threads=threads)
    fixed = nib_to_sitk(registration_template.image)
    fixed_mask = sitk.Cast(nib_to_sitk(registration_template.mask, np.uint8), sitk.sitkUInt8)
    if brain_extraction == "deepbet":
        brain, steps["BrainMask"] = deepbet_mask(
            sitk.GetArrayFromImage(corrected).transpose(2, 1, 0),
            np.asarray(corrected.GetSpacing()),
            shape=network_shape,
            threads=threads,
        )
        native_mask = sitk.GetImageFromArray(brain.transpose(2, 1, 0).astype(np.uint8))
        native_mask.CopyInformation(corrected)
        result = register_brain_to_template(
            sitk.Mask(corrected, native_mask), native_mask, fixed, fixed_mask, registration
        )
        steps["Registration"] = result.report
    elif brain_extraction == "template":
        result = register_to_template(corrected, mask, fixed, fixed_mask, registration)
        steps["Registration"] = result.report
        # Brain mask in T1w space: the template's (finest available grid) carried back.
        fine = fine_template or (
            load_template(template.name, 1) if template.resolution_mm != 1 else template
        )
        fine_mask = sitk.Cast(nib_to_sitk(fine.mask, np.uint8), sitk.sitkUInt8)
        native_mask = pull_back_mask(fine_mask, result.inverse, corrected, threads)
        steps["BrainMask"] = {
            "Method": "template brain mask carried into the T1w through the fitted transform "
            "(linear interpolation of the 1 mm mask, threshold 0.5); no intensity refinement",
        }
    else:
        raise ValueError(
            f"brain_extraction must be 'deepbet' or 'template'; got {brain_extraction!r}"
        )
    logger.info("native backend: %.1f s", time.perf_counter() - tic)
    return BackendResult(
        corrected=sitk_to_nib(corrected),
        native_mask=sitk_to_nib(native_mask, np.uint8),
        affine=result.affine,
        nonlinear=result.nonlinear,
        nonlinear_inverse=result.nonlinear_inverse,
        reports=steps,
    )
