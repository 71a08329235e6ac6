"""``brainharmony tables``: merge predictions; metrics, paired tests and paper-layout tables.

The tables are :mod:`brainharmony.evaluate.tables`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainharmony.cli_types import output_dir
from brainharmony.evaluate.settings import load_settings
from brainharmony.evaluate.tables import make_tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony tables``."""
    parser.add_argument(
        "--inputs",
        nargs="+",
        required=True,
        type=Path,
        help="per-task predictions.tsv files (from brainharmony evaluate)",
    )
    parser.add_argument(
        "--predictions",
        required=True,
        type=Path,
        help="merged predictions.tsv to write (results/eval/predictions.tsv)",
    )
    parser.add_argument("--out-dir", required=True, type=output_dir, help="results/tables")
    parser.add_argument(
        "--settings",
        default=None,
        help="evaluate block / config (default: the one in the sidecars)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony tables``."""
    settings = load_settings(args.settings) if args.settings else None
    make_tables(args.inputs, args.predictions, args.out_dir, settings)
    return 0
