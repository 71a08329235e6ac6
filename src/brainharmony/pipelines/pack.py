"""``brainharmony pack``: pack ROI series or T1 volumes into training shards.

The shard format and the packing itself are :mod:`brainharmony.packing`; this command
reads the manifest (or matches files to the ingest ``scans.tsv``) and adds the folds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from brainharmony.ingest import read_scans
from brainharmony.io import InputDataError
from brainharmony.packing import pack_series, pack_volumes
from brainharmony.timeseries.multitr import build_manifest


def _read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(path, "manifest not found")
    frame = pd.read_csv(path, sep="\t", dtype=str, na_values=[], keep_default_na=False)
    for col in frame.columns:
        if col in ("subject", "session", "run", "path"):
            continue
        numeric = pd.to_numeric(frame[col].replace("n/a", np.nan), errors="coerce")
        if numeric.notna().sum() == (frame[col] != "n/a").sum():
            frame[col] = numeric
    return frame


def _attach_folds(manifest: pd.DataFrame, folds_dir: Path | None) -> pd.DataFrame:
    """Add a ``fold`` column: the fold in which each subject is *tested*."""
    if folds_dir is None:
        return manifest
    files = sorted(folds_dir.glob("fold-*.tsv"))
    if not files:
        raise InputDataError(folds_dir, "no fold-<k>.tsv files")
    parts = [pd.read_csv(f, sep="\t", dtype={"subject": str}) for f in files]
    tested = pd.concat(parts).query("split == 'test'").set_index("subject")["fold"]
    out = manifest.copy()
    out["fold"] = out["subject"].map(tested).astype("Int64")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony pack``."""
    parser.add_argument("--kind", choices=("series", "volumes"), required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--manifest",
        type=Path,
        help="TSV: subject, session, path, and for series run [, tr]; other columns "
        "(phenotypes) are copied into the index",
    )
    source.add_argument(
        "--files",
        nargs="+",
        type=Path,
        help="series/volume files matched to --scans rows by their sub/ses/run entities",
    )
    parser.add_argument("--scans", type=Path, help="ingest scans.tsv (with --files)")
    parser.add_argument("--shard", required=True, type=Path, help="output .npy")
    parser.add_argument("--index", required=True, type=Path, help="output index .tsv")
    parser.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default=None,
        help="shard dtype (default: float32 for series, float16 for volumes)",
    )
    parser.add_argument(
        "--folds-dir", type=Path, help="splits folder (fold-<k>.tsv): adds the test fold"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony pack``."""
    if args.files:
        if args.scans is None:
            raise InputDataError(None, "--files needs --scans (the ingest scans.tsv)")
        manifest = _attach_folds(
            build_manifest(read_scans(args.scans), args.files, args.kind), args.folds_dir
        )
    else:
        manifest = _attach_folds(_read_manifest(args.manifest), args.folds_dir)
    Path(args.shard).parent.mkdir(parents=True, exist_ok=True)
    if args.kind == "series":
        pack_series(manifest, args.shard, args.index, dtype=np.dtype(args.dtype or "float32"))
    else:
        pack_volumes(manifest, args.shard, args.index, dtype=np.dtype(args.dtype or "float16"))
    return 0
