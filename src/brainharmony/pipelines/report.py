"""``brainharmony report``: the self-contained HTML report.

The page is built by :mod:`brainharmony.evaluate.report`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainharmony.evaluate.report import build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony report``."""
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    parser.add_argument("--tables", type=Path, default=None, help="default <results>/tables")
    parser.add_argument(
        "--predictions", type=Path, default=None, help="default <results>/eval/predictions.tsv"
    )
    parser.add_argument(
        "--config",
        nargs="*",
        default=[],
        type=Path,
        help="workflow config file(s) shown under provenance",
    )
    parser.add_argument("--max-figures", type=int, default=3, help="figures per group")
    parser.add_argument("--out", type=Path, required=True, help="results/report/index.html")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony report``."""
    build_report(
        args.out, args.results, args.tables, args.predictions, args.config, args.max_figures
    )
    return 0
