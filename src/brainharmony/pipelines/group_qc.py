"""``brainharmony group-qc``: the group QC table of one dataset and its subject pages.

Writes ``<out-dir>/group_qc.tsv`` (+ ``group_qc.json``, the columns described) and
``<out-dir>/subjects/sub-<label>.html`` (one page per subject, figures linked).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brainharmony.cli_types import bids_label, output_dir
from brainharmony.qc.group import PAGES_DIR, build_group_qc, write_group_qc
from brainharmony.qc.pages import write_subject_pages
from brainharmony.scan_pairing import CheckSettings

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony group-qc``."""
    parser.add_argument("--dataset", required=True, type=bids_label("dataset"), help="dataset name")
    parser.add_argument(
        "--scans", type=Path, required=True, help="results/ingest/<dataset>/scans.tsv"
    )
    parser.add_argument(
        "--excluded", type=Path, default=None, help="results/ingest/<dataset>/excluded.tsv"
    )
    parser.add_argument("--anat-dir", type=Path, required=True, help="results/anat/<dataset>")
    parser.add_argument("--func-dir", type=Path, required=True, help="results/func/<dataset>")
    parser.add_argument(
        "--task",
        default=CheckSettings.task,
        type=bids_label("task"),
        help="task label of the runs (default %(default)s)",
    )
    parser.add_argument(
        "--template",
        default=None,
        help="space- of the anatomy outputs (default: the anatomy stage's default template)",
    )
    parser.add_argument(
        "--space", default=None, help="space- of the parcel series (default: --template)"
    )
    parser.add_argument("--out-dir", type=output_dir, required=True, help="results/qc/<dataset>")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony group-qc``."""

    qc = build_group_qc(
        args.dataset,
        args.scans,
        args.excluded,
        args.anat_dir,
        args.func_dir,
        task=args.task,
        template=args.template,
        space=args.space,
    )
    inputs = [args.scans] + ([args.excluded] if args.excluded else [])
    parameters = {
        "dataset": args.dataset,
        "task": args.task,
        "template": args.template,
        "space": args.space,
        "anat_dir": str(args.anat_dir),
        "func_dir": str(args.func_dir),
    }
    table, _ = write_group_qc(qc, args.out_dir, inputs, parameters)
    pages = write_subject_pages(qc, args.out_dir / PAGES_DIR)
    logger.info("wrote %s and %d subject pages", table, len(pages))
    return 0
