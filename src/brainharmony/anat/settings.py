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
        Output grid (the template's grid at this resolution): 1 (paper) or 2 (demo).
    nonlinear : bool
        Add a nonlinear stage (native: B-spline; fsl: FNIRT) on top of the affine.
    model_box_mm : tuple of 3 ints
        Physical size of the model-ready box (paper: 160 x 192 x 160 mm = voxels at 1 mm).
    normalisation : str
        Intensity normalisation of the model-ready box (see :mod:`.model_input`).
    max_nonfinite_fraction : float
        Largest fraction of NaN/Inf voxels set to 0 (above it the T1w is refused).
    """

    backend: str = "native"
    template: str = DEFAULT_TEMPLATE
    resolution_mm: int = 2
    nonlinear: bool = False
    model_box_mm: tuple[int, int, int] = PAPER_BOX_MM
    normalisation: str = "zscore_brain"
    max_nonfinite_fraction: float = MAX_NONFINITE_FRACTION

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
        if not 0 <= self.max_nonfinite_fraction < 1:
            raise ValueError(
                f"max_nonfinite_fraction must be in [0, 1); got {self.max_nonfinite_fraction}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready mapping (for sidecars and provenance)."""
        out = asdict(self)
        out["model_box_mm"] = list(self.model_box_mm)
        return out
