"""The anatomy QC gate: registration metrics that can fail, and the exclusion they cause.

Every metric is computed from the written outputs (:func:`.derivatives.write_derivatives`)
and compared with a threshold of :class:`.settings.AnatSettings`:

============================  =============================================  ==============
metric                        what                                           threshold
============================  =============================================  ==============
``NCCWithTemplateInBrain``    correlation of the T1w in template space with  ``qc_min_ncc``
                              the template, inside the template brain mask
``MaskDiceWithTemplateMask``  Dice of the brain mask carried into template   ``qc_min_dice``
                              space with the template brain mask
``NativeBrainVolumeML``       volume of the T1w-space brain mask             ``qc_brain_volume_ml``
``TransformScaleFactors``     singular values of the T1w -> template         ``qc_scale_range``
                              transform's linear part
============================  =============================================  ==============

A T1w that fails any of them is **excluded with its reason**: its outputs are still
written (so the workflow's jobs complete), every sidecar carries ``Excluded: true`` and
``ExclusionReason``, and the later stages leave the subject out and list it (packing reads
the flag with :func:`brainharmony.packing.exclusion_reason`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brainharmony.anat.settings import AnatSettings


def qc_failures(metrics: Mapping[str, Any], settings: AnatSettings) -> list[str]:
    """The QC metrics of one T1w that are outside their thresholds, as sentences.

    Parameters
    ----------
    metrics : mapping
        ``NCCWithTemplateInBrain``, ``MaskDiceWithTemplateMask``, ``NativeBrainVolumeML``,
        ``TransformScaleFactors`` (as written to the sidecar's ``Metrics``).
    settings : AnatSettings
        The thresholds.

    Returns
    -------
    list of str
        Empty when the T1w passes.
    """
    out = []
    ncc = float(metrics["NCCWithTemplateInBrain"])
    if not ncc >= settings.qc_min_ncc:
        out.append(
            f"correlation with the template in its brain mask {ncc:.3f} < "
            f"qc_min_ncc {settings.qc_min_ncc}"
        )
    dice = float(metrics["MaskDiceWithTemplateMask"])
    if not dice >= settings.qc_min_dice:
        out.append(
            f"Dice of the brain mask with the template's {dice:.3f} < "
            f"qc_min_dice {settings.qc_min_dice}"
        )
    lo, hi = settings.qc_brain_volume_ml
    volume = float(metrics["NativeBrainVolumeML"])
    if not lo <= volume <= hi:
        out.append(f"brain volume {volume:.0f} mL outside qc_brain_volume_ml [{lo}, {hi}]")
    lo, hi = settings.qc_scale_range
    scales = [float(s) for s in metrics["TransformScaleFactors"]]
    if not all(lo <= s <= hi for s in scales):
        shown = ", ".join(f"{s:.3f}" for s in scales)
        out.append(f"transform scale factors ({shown}) outside qc_scale_range [{lo}, {hi}]")
    return out
