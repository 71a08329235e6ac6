"""``brainharmony ingest``: index a BIDS dataset into ``scans.tsv`` / ``excluded.tsv``.

The indexing is :mod:`brainharmony.ingest` (``--bids-dir``) or, for released parcel
series, :mod:`brainharmony.parcellated` (``--run-table``); the option defaults are the
per-run rules' (:class:`brainharmony.scan_pairing.CheckSettings`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from pathlib import Path

from brainharmony.bids_names import label_problem
from brainharmony.cli_types import bids_label, output_dir
from brainharmony.ingest import NoUsableScansError, ingest_dataset, write_excluded, write_outputs
from brainharmony.io import InputDataError
from brainharmony.parcellated import N_ROIS, ingest_parcellated
from brainharmony.participants import PHENOTYPE_KINDS, PhenotypeKind
from brainharmony.scan_pairing import CheckSettings
from brainharmony.scans_table import phenotype_name_problem

logger = logging.getLogger(__name__)


def parse_phenotypes(text: str) -> dict[str, PhenotypeKind]:
    """Parse ``age:number,sex:category`` (empty or ``none``: no phenotypes)."""
    if text.strip().lower() in ("", "none"):
        return {}
    kinds: dict[str, PhenotypeKind] = {}
    for item in text.split(","):
        name, colon, kind = item.strip().partition(":")
        if not colon or not name or kind not in PHENOTYPE_KINDS:
            raise argparse.ArgumentTypeError(
                f"phenotype {item.strip()!r} is not NAME:number or NAME:category"
            )
        problem = phenotype_name_problem(name.strip())
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        kinds[name.strip()] = kind  # type: ignore[assignment]
    return kinds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from err
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def _subject_labels(text: str) -> list[str]:
    labels = [part.strip() for part in text.split(",") if part.strip()]
    for label in labels:
        problem = label_problem("sub", label.removeprefix("sub-"))
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
    return labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony ingest``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bids-dir", type=Path, help="raw BIDS dataset root")
    source.add_argument(
        "--run-table",
        type=Path,
        help="run table of released parcel series (subject, session, run, path, tr, "
        "phenotypes; docs/ingest.md); the dataset kind 'parcellated'",
    )
    parser.add_argument(
        "--n-rois",
        type=_positive_int,
        default=N_ROIS,
        help="parcels of the --run-table series; only the workflow's atlas is accepted "
        "(default: %(default)s, Schaefer-400)",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        type=bids_label("dataset"),
        help="dataset name, letters and digits (written in each row)",
    )
    parser.add_argument("--out-dir", required=True, type=output_dir, help="folder for the tables")
    parser.add_argument(
        "--task",
        default=CheckSettings.task,
        type=bids_label("task"),
        help="BOLD task label (default: %(default)s)",
    )
    parser.add_argument(
        "--min-volumes",
        type=_positive_int,
        default=CheckSettings.min_volumes,
        help="fewest volumes a run needs (default: %(default)s)",
    )
    parser.add_argument(
        "--tr-tolerance",
        type=_tolerance,
        default=CheckSettings.tr_tolerance,
        help="relative header/sidecar TR difference tolerated (default: %(default)s)",
    )
    parser.add_argument(
        "--tr-conflict",
        choices=("warn", "exclude"),
        default=CheckSettings.tr_conflict,
        help="a larger difference warns (sidecar wins) or excludes the run (default: %(default)s)",
    )
    parser.add_argument(
        "--tr-range",
        nargs=2,
        type=float,
        default=list(CheckSettings.tr_range),
        metavar=("MIN", "MAX"),
        help="plausible RepetitionTime in seconds; runs outside are excluded "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--phenotypes",
        type=parse_phenotypes,
        default=None,
        help="participants.tsv columns and types, e.g. age:number,sex:category "
        "(default: age, sex, fluid_intelligence, diagnosis; 'none' for none)",
    )
    parser.add_argument("--site-column", default=None, help="participants.tsv column for site")
    parser.add_argument(
        "--exclude-subjects",
        nargs="*",
        type=_subject_labels,
        default=[],
        metavar="LABEL",
        help="subjects to leave out (space- or comma-separated, with or without sub-)",
    )
    parser.add_argument(
        "--participant-label",
        nargs="*",
        type=_subject_labels,
        default=None,
        metavar="LABEL",
        help="subjects to keep, all others are left out (default: every subject)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony ingest``; return the exit status.

    When nothing is usable, ``excluded.tsv`` is still written (stale ``scans.tsv``
    and ``scans.json`` are removed) and :class:`InputDataError` is raised, which
    the CLI turns into exit status 2.
    """
    labels = [label for group in args.exclude_subjects for label in group]
    keep = (
        None
        if args.participant_label is None
        else [label for group in args.participant_label for label in group]
    )
    out_dir = Path(args.out_dir)
    try:
        if args.run_table is not None:
            result = ingest_parcellated(
                args.run_table,
                args.dataset,
                task=args.task,
                min_volumes=args.min_volumes,
                tr_range=tuple(args.tr_range),
                phenotypes=args.phenotypes,
                site_column=args.site_column,
                n_rois=args.n_rois,
                exclude_subjects=labels,
                participant_label=keep,
            )
        else:
            result = ingest_dataset(
                args.bids_dir,
                args.dataset,
                task=args.task,
                min_volumes=args.min_volumes,
                tr_tolerance=args.tr_tolerance,
                tr_conflict=args.tr_conflict,
                tr_range=tuple(args.tr_range),
                phenotypes=args.phenotypes,
                site_column=args.site_column,
                exclude_subjects=labels,
                participant_label=keep,
            )
    except NoUsableScansError as err:
        path = write_excluded(err.result, out_dir)
        for stale in ("scans.tsv", "scans.json"):
            with contextlib.suppress(FileNotFoundError):
                (out_dir / stale).unlink()
        raise InputDataError(err.path, f"{err.problem}. Reasons per file: {path}") from err
    paths = write_outputs(result, out_dir)
    logger.info("wrote %s and %s", paths["scans"], paths["excluded"])
    return 0
