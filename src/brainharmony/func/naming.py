"""BIDS-Derivatives names of the functional stage's outputs (one place for all of them).

A run's outputs live in ``<root>/sub-<l>/[ses-<l>/]func/`` and share the stem
``sub-<l>[_ses-<l>]_task-<task>[_run-<n>]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainharmony.io import PathLike

#: Atlas entity of the parcel-series file names: the 400-parcel layout, the same for the
#: official Schaefer-2018 volume and the offline rebuild (their resource files are named
#: apart, :func:`brainharmony.func.atlas_resource.atlas_files`; each series sidecar's
#: ``Atlas`` and ``AtlasSource`` say which one was used).
ATLAS_ENTITY = "Schaefer400"
#: ``GeneratedBy`` name of ``results/func/<dataset>`` (BIDS-Derivatives).
PIPELINE = "brainharmony-func"
#: Files BIDS 1.x has no name for (``.bidsignore``): parcel series and confounds
#: (``_timeseries``, fMRIPrep's names), transforms (``_xfm``, BEP014), the BOLD reference
#: (``_boldref``, fMRIPrep's name) and the QC figures.
BIDSIGNORE = ("*_timeseries.*", "*_xfm.*", "*_boldref.nii.gz", "*.png")


def template_space() -> str:
    """Name of the template space of native-backend outputs.

    The anatomy stage's template (:data:`brainharmony.anat.templates.DEFAULT_TEMPLATE`)
    names it; the functional outputs follow, so both stages agree.
    """
    try:
        from brainharmony.anat.templates import DEFAULT_TEMPLATE
    except ImportError:  # pragma: no cover - anatomy stage absent
        return "MNI152NLin2009aAsym"
    return str(DEFAULT_TEMPLATE)


def res_label(resolution_mm: float) -> str:
    """Alphanumeric resolution label: 2 -> "2", 2.5 -> "2p5"."""
    text = f"{float(resolution_mm):g}"
    return text.replace(".", "p")


def run_stem(subject: str, session: str | None, task: str, run: str | None) -> str:
    """``sub-<l>[_ses-<l>]_task-<t>[_run-<n>]`` (None or "n/a" leaves an entity out)."""
    parts = [f"sub-{subject}"]
    if session not in (None, "", "n/a"):
        parts.append(f"ses-{session}")
    parts.append(f"task-{task}")
    if run not in (None, "", "n/a"):
        parts.append(f"run-{run}")
    return "_".join(parts)


def run_folder(root: PathLike, subject: str, session: str | None) -> Path:
    """``<root>/sub-<l>/[ses-<l>/]func``."""
    folder = Path(root) / f"sub-{subject}"
    if session not in (None, "", "n/a"):
        folder = folder / f"ses-{session}"
    return folder / "func"


@dataclass(frozen=True)
class RunOutputs:
    """Every output path of one run.

    Parameters
    ----------
    folder : Path
        The run's ``func`` folder.
    stem : str
        :func:`run_stem`.
    space : str
        Template space entity.
    res : str
        Resolution entity of image outputs.
    """

    folder: Path
    stem: str
    space: str
    res: str

    def _p(self, name: str) -> Path:
        return self.folder / f"{self.stem}_{name}"

    @property
    def confounds(self) -> Path:
        return self._p("desc-confounds_timeseries.tsv")

    @property
    def motion(self) -> Path:
        return self._p("desc-motion_timeseries.tsv")

    @property
    def motion_xfm(self) -> Path:
        return self._p("desc-motion_xfm.npy")

    @property
    def coreg_xfm(self) -> Path:
        return self._p("from-boldref_to-T1w_mode-image_xfm.txt")

    @property
    def boldref(self) -> Path:
        return self._p("boldref.nii.gz")

    @property
    def preproc_bold(self) -> Path:
        return self._p(f"space-{self.space}_res-{self.res}_desc-preproc_bold.nii.gz")

    @property
    def coverage_mask(self) -> Path:
        return self._p(f"space-{self.space}_res-{self.res}_desc-brain_mask.nii.gz")

    @property
    def timeseries(self) -> Path:
        return self._p(f"space-{self.space}_atlas-{ATLAS_ENTITY}_desc-denoised_timeseries.tsv")

    @property
    def raw_timeseries(self) -> Path:
        return self._p(f"space-{self.space}_atlas-{ATLAS_ENTITY}_desc-preproc_timeseries.tsv")

    @property
    def fd_figure(self) -> Path:
        return self._p("desc-fdtrace_bold.png")

    @property
    def carpet_figure(self) -> Path:
        return self._p("desc-carpetplot_bold.png")

    @property
    def fc_figure(self) -> Path:
        return self._p(f"atlas-{ATLAS_ENTITY}_desc-fcmatrix_bold.png")


def run_outputs(
    root: PathLike,
    subject: str,
    session: str | None,
    task: str,
    run: str | None,
    *,
    space: str | None = None,
    resolution_mm: float = 2.0,
) -> RunOutputs:
    """All output paths of one run under ``root`` (``results/func/<dataset>``)."""
    return RunOutputs(
        folder=run_folder(root, subject, session),
        stem=run_stem(subject, session, task, run),
        space=space or template_space(),
        res=res_label(resolution_mm),
    )
