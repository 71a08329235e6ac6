"""Training datasets from a model YAML's ``data:`` block, and a resumable batch order.

``data:`` blocks
----------------
``kind: series``: ROI series from one or more packed series shards (e.g. one dataset's
series at every TR of the multi-TR stage), concatenated.

    window: 160            # frames per sample, the same for every shard ...
    duration_s: 635.0      # ... or seconds: round(duration_s / TR) frames per shard, then
                           #     zero-padded (mask False) to the longest of them
    crop: random           # random | start | center (where a longer series is cut)
    targets: []            # index columns returned as float tensors
    group_by_shard: false  # every batch drawn from one shard (e.g. one TR per batch)

``kind: volumes``: model-ready T1 volumes from one or more packed volume shards of the
same box (e.g. one per pretraining dataset), concatenated (``targets``).

``kind: fused``: ``brainharmony.models.harmonizer_data.FusedDataset(index, **rest)``,
imported only then: ``index`` is the token index TSV given as the shard index, every other
key of the block is passed on as a keyword (and ``rows=`` when a split is chosen).

Batch order
-----------
:class:`StreamBatchSampler` defines one global, seeded order of samples: epoch ``e`` is a
permutation of each group (seeded by ``(seed, e, group)``) cut into full global batches
(the last one wrapped round to the group's start), the batches of all groups shuffled
(seeded by ``(seed, e)``). Optimiser step ``s`` consumes global batch ``s``; within it,
micro-batch ``m`` of rank ``r`` is the slice ``(m * world + r) * batch_size`` onwards. A
run therefore sees the same samples whatever its number of processes (for the same global
batch), and a resumed run continues exactly where the checkpoint left off. Each sample is
loaded under a random state seeded by ``(seed, position in the stream)``
(:class:`SeededItems`), so random crops do not depend on workers or on resuming.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from brainharmony.io import InputDataError, PathLike
from brainharmony.packing import (
    PackedSeriesDataset,
    PackedVolumeDataset,
    read_index,
    rows_for_split,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Concatenated",
    "SeededItems",
    "SeriesCollection",
    "StreamBatchSampler",
    "build_dataset",
    "split_rows",
]

_SERIES_KEYS = ("kind", "window", "duration_s", "crop", "targets", "group_by_shard")
_VOLUME_KEYS = ("kind", "targets")
DATA_KINDS = ("series", "volumes", "fused")


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# --------------------------------------------------------------------------- splits


def split_rows(index: pd.DataFrame, splits_path: PathLike, fold: int | None, split: str) -> Any:
    """Rows of a shard index whose subject is in ``split`` of ``fold`` of a splits TSV.

    Parameters
    ----------
    index : pandas.DataFrame
        The shard index (a ``subject`` column).
    splits_path : path-like
        A ``fold-<k>.tsv`` (columns ``subject, fold, split``) or a concatenation of them.
    fold : int or None
        Required when the file holds several folds.
    split : {"train", "val", "test"}
    """

    p = Path(splits_path)
    if not p.is_file():
        raise InputDataError(p, "splits file not found")
    table = pd.read_csv(p, sep="\t", dtype={"subject": str})
    for col in ("subject", "fold", "split"):
        if col not in table.columns:
            raise InputDataError(p, f"splits file has no {col!r} column")
    folds = sorted(int(f) for f in table["fold"].unique())
    if fold is None:
        if len(folds) != 1:
            raise InputDataError(p, f"holds folds {folds}; choose one with --fold")
        fold = folds[0]
    if fold not in folds:
        raise InputDataError(p, f"has no fold {fold} (folds: {folds})")
    if split not in set(table["split"]):
        raise InputDataError(p, f"has no split {split!r} in fold {fold}")
    if "subject" not in index.columns:
        raise InputDataError(None, "the shard index has no 'subject' column to split on")
    return rows_for_split(index, table, fold, split)


# --------------------------------------------------------------------------- datasets


class Concatenated:
    """Several map-style datasets as one; items gain ``source`` (the part's number).

    Attributes
    ----------
    parts : list
    starts : ndarray of int
        First item number of each part (and the total at the end).
    batch_groups : list of ndarray or None
        Item numbers per part when batches must come from a single part.
    """

    def __init__(self, parts: Sequence[Any], *, group_by_part: bool = False) -> None:
        if not parts:
            raise ValueError(f"{type(self).__name__} needs at least one part")
        self.parts = list(parts)
        sizes = [len(p) for p in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._starts = self.starts.tolist()
        self.batch_groups = (
            [np.arange(self.starts[i], self.starts[i + 1]) for i in range(len(sizes)) if sizes[i]]
            if group_by_part
            else None
        )

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        part = bisect.bisect_right(self._starts, i) - 1
        item = self._item(part, i - self._starts[part])
        item["source"] = part
        return item

    def _item(self, part: int, i: int) -> dict[str, Any]:
        return self.parts[part][i]


class SeriesCollection(Concatenated):
    """Several :class:`~brainharmony.packing.PackedSeriesDataset` as one dataset.

    Items are those of the parts, padded to the longest window (rows of zeros in ``x``,
    ``mask`` False), plus ``source``.
    """

    def __init__(self, parts: Sequence[Any], *, group_by_part: bool = False) -> None:
        super().__init__(parts, group_by_part=group_by_part)
        n_rois = {p.n_rois for p in self.parts}
        if len(n_rois) != 1:
            raise InputDataError(
                None,
                "series shards have different ROI counts: "
                + ", ".join(f"{p.shard} ({p.n_rois})" for p in self.parts),
            )
        self.window = max(p.window for p in self.parts)

    def _item(self, part: int, i: int) -> dict[str, Any]:
        item = self.parts[part][i]
        short = self.window - item["x"].shape[0]
        if short > 0:
            item["x"] = torch.cat([item["x"], item["x"].new_zeros(short, item["x"].shape[1])])
            item["mask"] = torch.cat([item["mask"], item["mask"].new_zeros(short)])
        return item


def _single_tr(index: pd.DataFrame, shard: Path) -> float:
    if "tr" not in index.columns:
        raise InputDataError(shard, "index has no 'tr' column (needed by data.duration_s)")
    trs = np.unique(index["tr"].to_numpy(np.float64))
    if trs.size != 1:
        raise InputDataError(shard, f"holds several TRs {trs.tolist()}; one TR per shard needed")
    return float(trs[0])


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], kind: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(
            f"data: unknown key(s) {unknown} for kind {kind!r}; allowed: {list(allowed)}"
        )


def build_dataset(
    data: Mapping[str, Any],
    shards: Sequence[tuple[PathLike | None, PathLike]],
    *,
    scaling: PathLike | None = None,
    rows_from: PathLike | None = None,
    fold: int | None = None,
    split: str = "train",
) -> Any:
    """Build the training dataset described by a ``data:`` block.

    Parameters
    ----------
    data : mapping
        The YAML's ``data:`` block (see the module docstring).
    shards : sequence of (shard, index)
        Packed shards and their index TSVs (``fused``: shard ``None``, index = token index).
    scaling : path-like, optional
        Robust-scaling statistics (``series`` only).
    rows_from, fold, split
        Keep only the rows of subjects in ``split`` of ``fold`` of this splits TSV.

    Returns
    -------
    A map-style dataset (``len`` and integer indexing; optional ``batch_groups``).
    """

    kind = data.get("kind")
    if kind not in DATA_KINDS:
        raise ValueError(f"data.kind must be one of {', '.join(DATA_KINDS)}; got {kind!r}")
    if not shards:
        raise ValueError("no training data given (--shard/--index)")
    if scaling is not None and kind != "series":
        raise ValueError(f"robust-scaling statistics apply to series data, not {kind!r}")

    def rows_of(index: pd.DataFrame) -> Any:
        return None if rows_from is None else split_rows(index, rows_from, fold, split)

    if kind == "fused":
        import importlib

        module = importlib.import_module("brainharmony.models.harmonizer_data")
        extra = {k: v for k, v in data.items() if k != "kind"}
        fused_parts = []
        for _, index in shards:
            index_path = Path(index)
            kwargs = dict(extra)
            if rows_from is not None:
                kwargs["rows"] = rows_of(read_index(index_path))
                if len(kwargs["rows"]) == 0:
                    continue
            fused_parts.append(module.FusedDataset(index_path, **kwargs))
        if not fused_parts:
            raise InputDataError(None, f"no token rows left for training (split {split!r})")
        # One token index per dataset (several pretraining datasets are concatenated).
        return fused_parts[0] if len(fused_parts) == 1 else Concatenated(fused_parts)

    for shard, index in shards:
        if shard is None:
            raise ValueError(f"{kind} data needs a shard for index {index}")
    targets = tuple(data.get("targets", ()))
    if kind == "volumes":
        _check_keys(data, _VOLUME_KEYS, kind)
        volume_parts = []
        for shard, index_path in shards:
            index = read_index(index_path)
            rows = rows_of(index)
            if rows is not None and len(rows) == 0:
                logger.info("%s: no rows in split %s; skipped", index_path, split)
                continue
            volume_parts.append(PackedVolumeDataset(shard, index, rows=rows, targets=targets))
        if not volume_parts:
            raise InputDataError(None, f"no volume rows left for training (split {split!r})")
        shapes = {tuple(np.load(p.shard, mmap_mode="r").shape[1:]) for p in volume_parts}
        if len(shapes) != 1:
            raise InputDataError(None, f"volume shards have different shapes: {sorted(shapes)}")
        return Concatenated(volume_parts)

    _check_keys(data, _SERIES_KEYS, kind)
    window, duration = data.get("window"), data.get("duration_s")
    if (window is None) == (duration is None):
        raise ValueError("series data needs exactly one of data.window (frames) or duration_s")
    stats = None
    if scaling is not None:
        from brainharmony.timeseries.scaling import load_stats

        stats = load_stats(scaling)
    parts = []
    for shard, index_path in shards:
        index = read_index(index_path)
        rows = rows_of(index)
        if rows is not None and len(rows) == 0:
            logger.info("%s: no rows in split %s; skipped", index_path, split)
            continue
        frames = (
            int(window)
            if window is not None
            else max(1, round(float(duration) / _single_tr(index, Path(shard))))
        )
        parts.append(
            PackedSeriesDataset(
                shard,
                index,
                window=frames,
                crop=data.get("crop", "random"),
                rows=rows,
                targets=targets,
                scaling=stats,
            )
        )
    if not parts:
        raise InputDataError(None, f"no series rows left for training (split {split!r})")
    return SeriesCollection(parts, group_by_part=bool(data.get("group_by_shard", False)))


# --------------------------------------------------------------------------- order


class SeededItems:
    """Wrap a dataset so that item ``(position, index)`` loads under a seeded random state.

    The python, numpy and torch (CPU) random states are set from ``(seed, position)``
    while ``dataset[index]`` runs and restored afterwards, so the training process's own
    random streams are untouched.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        position, index = key
        item_seed = _mix(self.seed, 0x5EED, position)
        py_state = random.getstate()
        np_state = np.random.get_state()  # noqa: NPY002 (global state, restored)
        try:
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only: torch.manual_seed would also (lazily) seed every
                # accelerator back end, which fork_rng(devices=[]) does not restore, and
                # on a CPU-only torch it formats a stack trace per back end per item
                # (about 1.6 ms; 6 % of a demo predictor fold).
                torch.default_generator.manual_seed(item_seed)
                random.seed(item_seed)
                np.random.seed(item_seed % (1 << 32))  # noqa: NPY002
                return self.dataset[int(index)]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002


class StreamBatchSampler:
    """Batches of ``(position, index)`` keys for one rank (order in the module docstring).

    Parameters
    ----------
    n_items : int
        Dataset size (ignored when ``groups`` is given).
    batch_size : int
        Samples per micro-batch of one rank.
    seed : int
    start_step, total_steps : int
        Yield the micro-batches of optimiser steps ``start_step .. total_steps - 1``.
    rank, world_size : int
    grad_accum : int
        Micro-batches per optimiser step.
    groups : sequence of array of int, optional
        Item numbers per group; each global batch comes from a single group.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        seed: int,
        start_step: int,
        total_steps: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        groups: Sequence[Any] | None = None,
    ) -> None:
        if groups is None:
            groups = [np.arange(n_items)]
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups if len(g)]
        if not self.groups:
            raise ValueError("the training dataset is empty")
        self.batch_size = int(batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.grad_accum = int(grad_accum)
        self.global_batch = self.batch_size * self.world_size * self.grad_accum
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.total_steps = int(total_steps)
        self.batches_per_epoch = sum(-(-len(g) // self.global_batch) for g in self.groups)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.grad_accum

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches (item numbers) of one epoch, in order."""
        g_size = self.global_batch
        batches: list[np.ndarray] = []
        for gi, group in enumerate(self.groups):
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch, gi))
            perm = group[torch.randperm(len(group), generator=gen).numpy()]
            n_batches = -(-len(perm) // g_size)
            filled = np.resize(perm, n_batches * g_size)  # wraps round to the start
            batches.extend(filled.reshape(n_batches, g_size))
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch))  # 2 values: distinct
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in order]

    def global_batch_at(self, step: int) -> np.ndarray:
        """Item numbers of the global batch consumed by optimiser step ``step``."""
        epoch, within = divmod(step, self.batches_per_epoch)
        return self.epoch_batches(epoch)[within]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cache_epoch, cache = -1, []
        for step in range(self.start_step, self.total_steps):
            epoch, within = divmod(step, self.batches_per_epoch)
            if epoch != cache_epoch:
                cache_epoch, cache = epoch, self.epoch_batches(epoch)
            batch = cache[within]
            for micro in range(self.grad_accum):
                offset = (micro * self.world_size + self.rank) * self.batch_size
                yield [
                    (step * self.global_batch + offset + j, int(batch[offset + j]))
                    for j in range(self.batch_size)
                ]
