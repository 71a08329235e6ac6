"""``brainharmony multitr``: resample a dataset's series to one target TR and pack them.

The manifest, the resampling and the packing are :mod:`brainharmony.timeseries.multitr`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brainharmony.ingest import read_scans
from brainharmony.timeseries.multitr import build_manifest, resample_and_pack
from brainharmony.timeseries.resample import METHODS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``brainharmony multitr``."""
    parser.add_argument("--scans", required=True, type=Path, help="ingest scans.tsv")
    parser.add_argument(
        "--series", required=True, nargs="+", type=Path, help="denoised ROI series (.tsv/.npy)"
    )
    parser.add_argument("--tr-out-ms", required=True, type=int, help="target TR (ms)")
    parser.add_argument("--shard", required=True, type=Path, help="output .npy shard")
    parser.add_argument("--index", required=True, type=Path, help="output index .tsv")
    parser.add_argument("--method", choices=METHODS, default="polyphase")
    parser.add_argument("--seed", type=int, default=0, help="decimate: start offsets")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony multitr``."""

    manifest = build_manifest(read_scans(args.scans), args.series)
    args.shard.parent.mkdir(parents=True, exist_ok=True)
    idx = resample_and_pack(
        manifest, args.tr_out_ms, args.shard, args.index, method=args.method, seed=args.seed
    )
    logger.info("%s: %d series at %d ms", args.shard, len(idx), args.tr_out_ms)
    return 0
