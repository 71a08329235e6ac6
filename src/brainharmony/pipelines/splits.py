"""``brainharmony splits``: seeded subject-level cross-validation splits.

The splits are :mod:`brainharmony.splits`; the option defaults are the evaluation
settings' (:class:`~brainharmony.evaluate.settings.EvalSettings`, ``TaskSpec``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brainharmony.cli_types import output_dir
from brainharmony.evaluate.settings import EvalSettings, TaskSpec
from brainharmony.io import InputDataError
from brainharmony.splits import make_splits, read_table, write_splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony splits``."""
    parser.add_argument("--table", required=True, type=Path, help="scans.tsv or participants.tsv")
    parser.add_argument("--target", required=True, help="column to stratify on")
    parser.add_argument("--task", choices=("classification", "regression"), required=True)
    parser.add_argument("--out-dir", required=True, type=output_dir)
    parser.add_argument("--n-folds", type=int, default=EvalSettings.n_folds)
    parser.add_argument("--seed", type=int, default=EvalSettings.seeds[0])
    parser.add_argument("--val-fraction", type=float, default=EvalSettings.val_fraction)
    parser.add_argument(
        "--n-bins", type=int, default=EvalSettings.n_bins, help="regression: stratification bins"
    )
    parser.add_argument("--subject-column", default="subject")
    parser.add_argument("--site-column", default=None)
    parser.add_argument(
        "--site-mode", choices=("none", "stratify", "group"), default=TaskSpec.site_mode
    )


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony splits``."""
    table = read_table(args.table, args.subject_column)
    try:
        result = make_splits(
            table,
            args.target,
            task=args.task,
            n_folds=args.n_folds,
            seed=args.seed,
            val_fraction=args.val_fraction,
            n_bins=args.n_bins,
            subject_column=args.subject_column,
            site_column=args.site_column,
            site_mode=args.site_mode,
        )
    except ValueError as err:
        raise InputDataError(args.table, str(err)) from None
    write_splits(result, args.out_dir, inputs=[args.table])
    return 0
