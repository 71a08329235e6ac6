"""``brainharmony eval-labels``: the per-subject label table of one task.

The split files and the evaluation must see the same subjects and labels, so both
read this table: ``results/eval/<dataset>/<task>/labels.tsv`` with columns
``subject, dataset, site, <target>`` (the task's ``map`` applied, datasets of a
cohort pooled), and a JSON sidecar listing the subjects left out and why. The
splits are then made from it::

    brainharmony splits --table results/eval/D/T/labels.tsv --target <target> \\
        --task <type> --site-column site --site-mode <site_mode> ...
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brainharmony.evaluate.data import task_labels
from brainharmony.evaluate.settings import SettingsError, load_settings
from brainharmony.io import InputDataError, provenance, write_json, write_tsv

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony eval-labels``."""
    parser.add_argument("--dataset", required=True, help="evaluation dataset (or cohort)")
    parser.add_argument("--task", required=True, help="task name")
    parser.add_argument("--settings", required=True, help="evaluate block / config (file or JSON)")
    parser.add_argument(
        "--scans",
        nargs="+",
        required=True,
        type=Path,
        help="ingest scans.tsv of every pooled dataset",
    )
    parser.add_argument("--out", required=True, type=Path, help="labels.tsv to write")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony eval-labels``."""
    try:
        spec = load_settings(args.settings).task(args.dataset, args.task)
    except SettingsError as err:
        raise InputDataError(None, str(err)) from None
    if len(args.scans) != len(spec.datasets):
        raise InputDataError(
            None,
            f"{args.dataset}/{args.task} pools {len(spec.datasets)} datasets "
            f"{list(spec.datasets)}; got {len(args.scans)} --scans files",
        )
    frame, excluded = task_labels(args.scans, spec)
    if frame.empty:
        raise InputDataError(args.scans[0], f"no subject has a usable {spec.target!r} value")
    if spec.type == "classification":
        try:
            classes = spec.resolve_classes(frame[spec.target].astype(str).tolist())
        except SettingsError as err:
            raise InputDataError(args.scans[0], str(err)) from None
        counts = frame[spec.target].value_counts().reindex(classes, fill_value=0)
        summary = {str(k): int(v) for k, v in counts.items()}
    else:
        summary = {k: float(v) for k, v in frame[spec.target].describe().items()}
    write_json(
        args.out.with_suffix(".json"),
        {
            "Description": f"Per-subject labels of task {args.dataset}/{args.task}",
            "Task": spec.to_dict(),
            "Subjects": len(frame),
            "Summary": summary,
            "Excluded": excluded,
            "Provenance": provenance(step="eval-labels", inputs=args.scans),
        },
    )
    write_tsv(args.out, frame, float_format="%.10g")
    logger.info("%s: %d subjects (%s)", args.out, len(frame), summary)
    return 0
