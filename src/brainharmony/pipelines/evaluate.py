"""``brainharmony evaluate``: cross-validated predictions of every harness model for one task.

The protocol (folds x seeds x models, the outputs) is :mod:`brainharmony.evaluate.protocol`;
this command reads the settings, labels, splits and model inputs named on the command
line. Fine-tuning (torch) is imported only when a ``--finetune`` entry is given.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainharmony.evaluate.data import (
    FeatureTable,
    covariate_series,
    fc_from_series_files,
    fc_from_shard,
    labels_series,
    merge_tables,
    parse_named,
    read_embeddings,
    read_splits,
    subject_exclusions,
    task_labels,
)
from brainharmony.evaluate.harness import model_info
from brainharmony.evaluate.protocol import evaluate_task, write_task_result
from brainharmony.evaluate.settings import SettingsError, load_settings
from brainharmony.io import InputDataError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony evaluate``."""
    parser.add_argument("--dataset", required=True, help="evaluation dataset (or cohort) name")
    parser.add_argument("--task", required=True, help="task name (evaluate.tasks.<dataset>)")
    parser.add_argument(
        "--settings",
        default=None,
        help="the evaluate block (or a whole workflow config) as a YAML/JSON file or a JSON "
        "string; it defines the task, the models and the grids",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        required=True,
        type=Path,
        help="scans.tsv (ingest) or participants.tsv, one per pooled dataset",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        required=True,
        type=Path,
        help="split folders (fold-<k>.tsv + splits.json), one per seed",
    )
    parser.add_argument("--models", nargs="+", default=None, help="override evaluate.models")
    parser.add_argument(
        "--not-run",
        action="append",
        default=[],
        metavar="NAME=REASON",
        help="a model of evaluate.models left out of this task, and why (recorded in the "
        "sidecar's NotRun; the tables' notes quote it)",
    )
    parser.add_argument(
        "--series",
        nargs="*",
        default=[],
        type=Path,
        help="parcel series files for FC (sub-<label> in the name)",
    )
    parser.add_argument(
        "--fc-shard",
        nargs=2,
        action="append",
        default=[],
        type=Path,
        metavar=("SHARD", "INDEX"),
        help="packed series shard + index for FC",
    )
    parser.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="NAME=NPZ",
        help="pooled embeddings of a probe model (repeat per pooled dataset)",
    )
    parser.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=TSV",
        help="predictions of an externally trained model",
    )
    parser.add_argument(
        "--finetune",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="trained model folder of a fine-tuning entry",
    )
    parser.add_argument(
        "--ft-shard",
        nargs=2,
        action="append",
        default=[],
        type=Path,
        metavar=("SHARD", "INDEX"),
        help="packed shard + index for fine-tuning",
    )
    parser.add_argument(
        "--ft-tokens",
        nargs="*",
        default=[],
        type=Path,
        help="fused token index TSVs for fine-tuning the Harmonizer",
    )
    parser.add_argument(
        "--scaling",
        type=Path,
        default=None,
        help="robust-scaling statistics for series fine-tuning",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS/OpenMP and torch threads (default: the environment's, e.g. Snakemake's "
        "OMP_NUM_THREADS)",
    )
    parser.add_argument("--out", required=True, type=Path, help="predictions.tsv to write")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony evaluate`` (BLAS/OpenMP and torch limited to ``--threads``)."""
    if args.threads is None:
        return _run(args)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(int(args.threads)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.settings)
        task = settings.task(args.dataset, args.task)
    except SettingsError as err:
        raise InputDataError(None, str(err)) from None
    models = list(args.models) if args.models else list(settings.models)
    frame, excluded = task_labels(args.labels, task)
    for reason, subjects in excluded.items():
        logger.info("%d subjects left out (%s): %s", len(subjects), reason, subjects[:10])
    labels = labels_series(frame, task)
    covariates = covariate_series(frame, task)
    splits = [read_splits(p) for p in args.splits]
    inputs: dict[str, Any] = {}
    needs = {model_info(m).inputs for m in models}
    if "fc" in needs:
        tables: list[FeatureTable] = []
        if args.series:
            tables.append(fc_from_series_files(args.series))
        tables += [fc_from_shard(s, i) for s, i in args.fc_shard]
        if not tables:
            raise InputDataError(None, "FC models need --series files or --fc-shard")
        inputs["fc"] = merge_tables(tables) if len(tables) > 1 else tables[0]
    inputs["embedding"] = {
        name: merge_tables([read_embeddings(p) for p in paths])
        for name, paths in parse_named(args.embedding, "--embedding").items()
    }
    inputs["predictions"] = parse_named(args.external, "--external")
    inputs["exclusions"] = subject_exclusions(args.series, args.fc_shard)
    dirs = parse_named(args.finetune, "--finetune")
    inputs["model_dir"] = {k: v[0] for k, v in dirs.items()}
    if args.threads and (dirs or any(model_info(m).uses_torch for m in models)):
        import torch

        torch.set_num_threads(args.threads)
    if dirs:
        from brainharmony.evaluate.finetune import item_source

        shards = [(s, i) for s, i in args.ft_shard]

        def factory(kind: str, data_cfg: Mapping[str, Any]) -> Any:
            return item_source(kind, data_cfg, shards, args.ft_tokens, args.scaling)

        inputs["finetune_data"] = factory
    not_run: dict[str, str] = {}
    for item in args.not_run:
        name, eq, reason = item.partition("=")
        if not eq or not name or not reason.strip():
            raise InputDataError(None, f"--not-run {item!r}: expected NAME=REASON")
        not_run[name] = reason.strip()
    try:
        result = evaluate_task(task, settings, labels, splits, inputs, models, covariates, not_run)
    except (SettingsError, ValueError) as err:
        if isinstance(err, InputDataError):
            raise
        raise InputDataError(None, f"{args.dataset}/{args.task}: {err}") from None
    used = [*args.labels, *args.splits, *args.series, *(p for pair in args.fc_shard for p in pair)]
    write_task_result(result, args.out, settings, used)
    logger.info("wrote %s (%d rows)", args.out, len(result.predictions))
    return 0
