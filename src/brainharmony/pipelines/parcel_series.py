"""``brainharmony parcel-series``: one released parcel series in the func stage's format.

The per-run step of a ``parcellated`` dataset (:func:`brainharmony.parcellated.
convert_series`): reads the file a run table names (checked again: it may have changed
since ingestion) and writes the ``.tsv`` + ``.json`` pair that the multi-TR, geometry,
embedding and evaluation steps read.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from err
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds; got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony parcel-series``."""
    parser.add_argument("--source", required=True, type=Path, help="released series file")
    parser.add_argument("--tr", required=True, type=_seconds, help="repetition time (s)")
    parser.add_argument("--out", required=True, type=Path, help="series .tsv to write")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony parcel-series``; bad input raises InputDataError (exit 2)."""
    from brainharmony.parcellated import convert_series

    path = convert_series(args.source, args.out, tr=args.tr)
    logger.info("wrote %s", path)
    return 0
