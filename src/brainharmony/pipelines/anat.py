"""``brainharmony anat``: one T1w through the anatomy stage.

Example::

    brainharmony -v anat --t1w sub-01_T1w.nii.gz --out-dir results/anat/demoA \\
        --subject 01 --resolution-mm 2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brainharmony.anat.model_input import NORMALISATIONS
from brainharmony.anat.settings import BACKENDS, BRAIN_EXTRACTIONS, AnatSettings
from brainharmony.anat.templates import RESOLUTIONS_MM, TEMPLATES
from brainharmony.cli_types import bids_label, output_dir

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``brainharmony anat`` options to ``parser`` (defaults: :class:`AnatSettings`)."""
    parser.add_argument("--t1w", type=Path, required=True, help="raw T1w NIfTI")
    parser.add_argument(
        "--out-dir", type=output_dir, required=True, help="dataset folder: results/anat/<dataset>"
    )
    # Labels become output file names: BIDS characters only (cli_types).
    parser.add_argument(
        "--subject", required=True, type=bids_label("sub"), help="subject label (no 'sub-')"
    )
    parser.add_argument(
        "--session", default=None, type=bids_label("ses"), help="session label (no 'ses-'), if any"
    )
    parser.add_argument("--backend", choices=BACKENDS, default=AnatSettings.backend)
    parser.add_argument("--template", choices=TEMPLATES, default=AnatSettings.template)
    parser.add_argument(
        "--resolution-mm", type=int, choices=RESOLUTIONS_MM, default=AnatSettings.resolution_mm
    )
    parser.add_argument(
        "--nonlinear", action="store_true", help="add a nonlinear stage to the affine"
    )
    parser.add_argument(
        "--model-box-mm",
        type=int,
        nargs=3,
        default=list(AnatSettings.model_box_mm),
        metavar=("X", "Y", "Z"),
        help="model-ready box size in mm (default: %(default)s)",
    )
    parser.add_argument(
        "--normalisation", choices=NORMALISATIONS, default=AnatSettings.normalisation
    )
    parser.add_argument(
        "--max-nonfinite-fraction",
        type=float,
        default=AnatSettings.max_nonfinite_fraction,
        help="largest fraction of NaN/Inf voxels set to 0; above it the T1w is refused",
    )
    parser.add_argument(
        "--brain-extraction",
        choices=BRAIN_EXTRACTIONS,
        default=AnatSettings.brain_extraction,
        help="native backend: deepbet's networks on the image (default) or the template "
        "mask carried back through a whole-head registration (fallback)",
    )
    parser.add_argument(
        "--deepbet-shape",
        type=int,
        default=AnatSettings.deepbet_shape,
        help="side of the cube deepbet's main network segments (default: %(default)s)",
    )
    gate = parser.add_argument_group("QC gate (a T1w outside a threshold is excluded)")
    gate.add_argument("--qc-min-ncc", type=float, default=AnatSettings.qc_min_ncc)
    gate.add_argument("--qc-min-dice", type=float, default=AnatSettings.qc_min_dice)
    gate.add_argument(
        "--qc-brain-volume-ml",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=list(AnatSettings.qc_brain_volume_ml),
    )
    gate.add_argument(
        "--qc-scale-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=list(AnatSettings.qc_scale_range),
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="SimpleITK and torch threads (1: results identical to the bit between runs)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="scratch folder for fsl/freesurfer (kept)"
    )
    parser.add_argument(
        "--template-dir",
        type=Path,
        default=None,
        help="template resource folder written by `brainharmony templates` (default: build "
        "the template in this process from nilearn's files)",
    )


def settings_from_args(args: argparse.Namespace) -> AnatSettings:
    """The :class:`AnatSettings` that the parsed arguments describe."""
    return AnatSettings(
        backend=args.backend,
        template=args.template,
        resolution_mm=args.resolution_mm,
        nonlinear=args.nonlinear,
        model_box_mm=tuple(args.model_box_mm),
        normalisation=args.normalisation,
        max_nonfinite_fraction=args.max_nonfinite_fraction,
        brain_extraction=args.brain_extraction,
        deepbet_shape=args.deepbet_shape,
        qc_min_ncc=args.qc_min_ncc,
        qc_min_dice=args.qc_min_dice,
        qc_brain_volume_ml=tuple(args.qc_brain_volume_ml),
        qc_scale_range=tuple(args.qc_scale_range),
    )


def run(args: argparse.Namespace) -> int:
    """Process one T1w as the parsed arguments say; 0 on success."""
    from brainharmony.anat.pipeline import run_anat
    from brainharmony.anat.register import RegistrationSettings

    settings = settings_from_args(args)
    paths = run_anat(
        args.t1w,
        args.out_dir,
        args.subject,
        args.session,
        settings=settings,
        registration=RegistrationSettings(threads=args.threads),
        work_dir=args.work_dir,
        template_dir=args.template_dir,
    )
    logger.info("wrote %s", ", ".join(str(p) for p in paths.files()))
    return 0
