"""``brainharmony train``: train one model from its YAML on packed data.

Examples
--------
One process (CPU or one GPU)::

    brainharmony train --config models/bh_s_demo.yaml --out results/models/bh_s_demo \\
        --state work/train/bh_s_demo --shard vols.npy --index vols.tsv

Several GPUs of one node (DDP)::

    torchrun --standalone --nproc-per-node 4 -m brainharmony train --config ... (same)

Rerunning the same command after an interruption resumes from ``--state``.

The training package (its ``__init__`` imports torch) is imported inside the functions,
so that ``brainharmony train --help`` stays cheap.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony train``."""
    parser.add_argument("--config", required=True, type=Path, help="model YAML")
    parser.add_argument("--out", required=True, type=Path, help="model folder written at the end")
    parser.add_argument(
        "--state", required=True, type=Path, help="scratch folder: checkpoint and running metrics"
    )
    parser.add_argument(
        "--shard",
        action="append",
        default=[],
        type=Path,
        help="packed shard (.npy); repeat with --index for several (not for fused data)",
    )
    parser.add_argument(
        "--index",
        action="append",
        default=[],
        type=Path,
        help="index TSV of the matching --shard (fused data: the token index)",
    )
    parser.add_argument("--scaling", type=Path, help="robust-scaling statistics JSON (series)")
    parser.add_argument("--rows-from", type=Path, help="splits TSV (subject, fold, split)")
    parser.add_argument("--fold", type=int, help="fold of --rows-from (needed if it has several)")
    parser.add_argument(
        "--split", default="train", choices=("train", "val", "test"), help="split of --rows-from"
    )
    parser.add_argument("--init", type=Path, help="trained model folder to initialise from")
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one YAML value (repeatable), e.g. model.target=age",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument(
        "--max-steps-this-call",
        type=int,
        help="stop after this many steps without writing --out (resume by rerunning)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _token_files(index: Path, kind: object) -> list[Path]:
    """The token files a fused-data index lists."""
    if kind != "fused":
        return []
    from brainharmony.models.harmonizer_data import read_token_index

    return [Path(p) for p in read_token_index(index)["path"]]


def _resolve_img_size(cfg: object, shards: list[tuple[Path | None, Path]]) -> object:
    """``model.img_size: auto`` -> the volume shards' voxel grid.

    The workflow's default BrainHarmonix-S YAML says ``auto`` so that it trains on
    whatever box the anatomy stage writes (``anat.model_box_mm / anat.resolution_mm``);
    the trained folder's config.json records the resolved size.
    """
    from brainharmony.train.config import ModelConfigError, with_overrides

    left = sorted(k for k, v in cfg.model.items() if v == "auto" and k != "img_size")
    if left:
        raise ModelConfigError(
            cfg.name,
            f"model.{left[0]}: auto is resolved by the workflow; give it with "
            f"--set model.{left[0]}=<value>",
        )
    if cfg.model.get("img_size") != "auto":
        return cfg
    if cfg.data.get("kind") != "volumes" or not shards or shards[0][0] is None:
        raise ModelConfigError(
            cfg.name, "model.img_size: auto needs volume data (data.kind: volumes)"
        )
    shape = [int(n) for n in np.load(shards[0][0], mmap_mode="r").shape[-3:]]
    logger.info("%s: model.img_size auto -> %s (the volume shards' grid)", cfg.name, shape)
    return with_overrides(cfg, [f"model.img_size={shape}"])


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony train``; returns the exit status."""
    from brainharmony.train.config import load_config, resolve_grad_accum, with_overrides
    from brainharmony.train.data import build_dataset
    from brainharmony.train.loop import NonFiniteLossError, train

    cfg = load_config(args.config)
    if args.set:
        cfg = with_overrides(cfg, args.set)
    if args.steps is not None:
        cfg = cfg.with_train(steps=args.steps)
    # Before any data is read: a global batch that this process count cannot make.
    resolve_grad_accum(cfg.train, int(os.environ.get("WORLD_SIZE") or 1), args.config)
    kind = cfg.data.get("kind")
    if kind == "fused":
        if args.shard or not args.index:
            print(
                "brainharmony train: fused data takes token --index files and no --shard",
                file=sys.stderr,
            )
            return 2
        shards: list[tuple[Path | None, Path]] = [(None, i) for i in args.index]
    else:
        if not args.shard or len(args.shard) != len(args.index):
            print(
                f"brainharmony train: give one --index per --shard (got {len(args.shard)} "
                f"shard(s), {len(args.index)} index(es))",
                file=sys.stderr,
            )
            return 2
        shards = list(zip(args.shard, args.index, strict=True))
    dataset = build_dataset(
        cfg.data,
        shards,
        scaling=args.scaling,
        rows_from=args.rows_from,
        fold=args.fold,
        split=args.split,
    )
    cfg = _resolve_img_size(cfg, shards)
    inputs = [p for pair in shards for p in pair if p is not None]
    inputs += [p for p in (args.scaling, args.rows_from, args.init) if p is not None]
    # A checkpoint is tied to these bytes: the data, the token files a fused index
    # names, and the geometry tables the model reads (model.harmonics/gradients).
    data_files = [*inputs, *(p for _, index in shards for p in _token_files(index, kind))]
    data_files += [
        Path(str(cfg.model[key]))
        for key in ("harmonics", "gradients")
        if cfg.model.get(key) and Path(str(cfg.model[key])).is_file()
    ]
    try:
        result = train(
            cfg,
            dataset,
            args.out,
            args.state,
            init_from=args.init,
            max_steps_this_call=args.max_steps_this_call,
            threads=args.threads,
            device=args.device,
            inputs=inputs,
            data_files=data_files,
            progress=not args.no_progress,
        )
    except NonFiniteLossError as err:
        print(f"brainharmony train: error: {err}", file=sys.stderr)
        return 3
    logger.info("%s: %d steps, finished=%s", cfg.name, result.step, result.finished)
    return 0
