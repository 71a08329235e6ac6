"""``brainharmony demo``: write the demo BIDS datasets with their planted truth."""

from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` sub-command's arguments (cheap: no heavy imports)."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--preset",
        choices=("tiny", "default"),
        default="default",
        help="tiny: 2 small datasets for tests; default: 3 datasets, ~100 subjects",
    )
    parser.add_argument(
        "--seed", type=int, default=20251122, help="random seed (same seed, same bytes)"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        default=None,
        help="only these datasets of the preset (demoA, demoB, demoC)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: CPU count, at most 4); output does not depend on it",
    )
    parser.add_argument(
        "--fmriprep-derivatives",
        action="store_true",
        help=argparse.SUPPRESS,  # reserved: fMRIPrep-style derivatives (not implemented)
    )


def run(args: argparse.Namespace) -> int:
    """Generate the datasets; print a JSON summary on stdout."""
    if getattr(args, "fmriprep_derivatives", False):
        raise SystemExit("brainharmony demo: --fmriprep-derivatives is not implemented yet")
    from brainharmony.demo.generate import generate_demo

    summary = generate_demo(
        args.out, preset=args.preset, seed=args.seed, datasets=args.datasets, n_jobs=args.jobs
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
