"""Scientific settings of the anatomy stage (the workflow config's ``anat:`` block).

Kept free of heavy imports: the command line and the workflow's planning step read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from brainharmony.anat.model_input import NORMALISATIONS, PAPER_BOX_MM, box_shape
from brainharmony.anat.templates import DEFAULT_TEMPLATE, check_template_available

#: Largest fraction of non-finite (NaN/Inf) voxels that is set to 0 and reported;
#: above it the T1w is refused.
MAX_NONFINITE_FRACTION = 0.02

BACKENDS: tuple[str, ...] = ("native", "fsl", "freesurfer")
#: How the native backend finds the brain: a network on the image (deepbet) or, as a
#: fallback, the template's mask carried back through a whole-head registration.
BRAIN_EXTRACTIONS: tuple[str, ...] = ("deepbet", "template")


@dataclass(frozen=True)
class AnatSettings:
    """Scientific settings of the anatomy stage (the config's ``anat:`` block).

    Attributes
    ----------
    backend : {"native", "fsl", "freesurfer"}
    template : str
        Template space (``MNI152NLin2009aAsym`` offline; ``MNI152NLin2009cAsym`` with
        TemplateFlow files).
    resolution_mm : int
        Output grid (the template's grid at this resolution): 1 (paper, the default) or 2
        (the demo).
    nonlinear : bool
        Add a nonlinear stage (native: B-spline; fsl: FNIRT) on top of the affine.
    model_box_mm : tuple of 3 ints
        Physical size of the model-ready box (paper: 160 x 192 x 160 mm = voxels at 1 mm).
    normalisation : str
        Intensity normalisation of the model-ready box (see :mod:`.model_input`).
    max_nonfinite_fraction : float
        Largest fraction of NaN/Inf voxels set to 0 (above it the T1w is refused).
    brain_extraction : {"deepbet", "template"}
        Native backend only: deepbet's networks on the image (default), or the
        template's mask carried back through a whole-head registration (fallback).
    deepbet_shape : int
        Side of the cube deepbet's main network segments (deepbet: 256; smaller is
        faster and coarser, docs/anat.md).
    qc_min_ncc : float
        QC gate: least correlation of the T1w in template space with the template,
        inside the template's brain mask.
    qc_min_dice : float
        QC gate: least Dice of the brain mask carried into template space with the
        template's brain mask.
    qc_brain_volume_ml : (float, float)
        QC gate: plausible range of the T1w-space brain mask's volume (mL).
    qc_scale_range : (float, float)
        QC gate: plausible range of the transform's scale factors (the singular values
        of its linear part, T1w -> template).
    """

    backend: str = "native"
    template: str = DEFAULT_TEMPLATE
    resolution_mm: int = 1
    nonlinear: bool = False
    model_box_mm: tuple[int, int, int] = PAPER_BOX_MM
    normalisation: str = "zscore_brain"
    max_nonfinite_fraction: float = MAX_NONFINITE_FRACTION
    brain_extraction: str = "deepbet"
    deepbet_shape: int = 256
    qc_min_ncc: float = 0.8
    qc_min_dice: float = 0.85
    qc_brain_volume_ml: tuple[float, float] = (600.0, 2600.0)
    qc_scale_range: tuple[float, float] = (0.67, 1.5)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {', '.join(NORMALISATIONS)}; "
                f"got {self.normalisation!r}"
            )
        check_template_available(self.template, self.resolution_mm)
        box_shape(self.model_box_mm, self.resolution_mm)
        if self.brain_extraction not in BRAIN_EXTRACTIONS:
            raise ValueError(
                f"brain_extraction must be one of {', '.join(BRAIN_EXTRACTIONS)}; "
                f"got {self.brain_extraction!r}"
            )
        if self.deepbet_shape < 64 or self.deepbet_shape % 32:
            raise ValueError(
                f"deepbet_shape must be a multiple of 32 >= 64; got {self.deepbet_shape}"
            )
        for name in ("qc_brain_volume_ml", "qc_scale_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"{name} must be a range 0 < low < high; got {[lo, hi]}")
        for name in ("qc_min_ncc", "qc_min_dice"):
            if not -1 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [-1, 1]; got {getattr(self, name)}")
        if not 0 <= self.max_nonfinite_fraction < 1:
            raise ValueError(
                f"max_nonfinite_fraction must be in [0, 1); got {self.max_nonfinite_fraction}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready mapping (for sidecars and provenance)."""
        out = asdict(self)
        for name in ("model_box_mm", "qc_brain_volume_ml", "qc_scale_range"):
            out[name] = list(getattr(self, name))
        return out
