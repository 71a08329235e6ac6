"""Training data: datasets from the YAML data block, seeded items, resumable batch order."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.packing import pack_series, pack_volumes
from brainharmony.timeseries.scaling import RobustScalingStats, save_stats
from brainharmony.train.data import (
    SeededItems,
    SeriesCollection,
    StreamBatchSampler,
    build_dataset,
)


def _series_shard(tmp: Path, name: str, tr: float, lengths: list[int], n_rois: int = 5):
    rng = np.random.default_rng(len(name) + len(lengths))
    rows = []
    for i, n in enumerate(lengths):
        path = tmp / f"{name}_{i}.npy"
        np.save(path, rng.standard_normal((n, n_rois)).astype(np.float32) + 10 * i)
        rows.append({"subject": f"s{i}", "session": "n/a", "run": "n/a", "tr": tr, "path": path})
    shard, index = tmp / f"{name}.npy", tmp / f"{name}.tsv"
    pack_series(pd.DataFrame(rows), shard, index)
    return shard, index


def _flatten(sampler: StreamBatchSampler) -> list[list[tuple[int, int]]]:
    return list(iter(sampler))


def test_batches_do_not_depend_on_world_size_or_resume() -> None:
    single = StreamBatchSampler(10, 4, seed=3, start_step=0, total_steps=7)
    ranks = [
        StreamBatchSampler(10, 2, seed=3, start_step=0, total_steps=7, rank=r, world_size=2)
        for r in range(2)
    ]
    per_rank = [_flatten(s) for s in ranks]
    for step, batch in enumerate(_flatten(single)):
        assert batch == per_rank[0][step] + per_rank[1][step]
    # Gradient accumulation: two micro-batches of 2 are the same global batch of 4.
    accum = _flatten(StreamBatchSampler(10, 2, seed=3, start_step=0, total_steps=7, grad_accum=2))
    assert [a + b for a, b in zip(accum[::2], accum[1::2], strict=True)] == _flatten(single)
    # Resuming at step 4 continues the same stream.
    resumed = _flatten(StreamBatchSampler(10, 4, seed=3, start_step=4, total_steps=7))
    assert resumed == _flatten(single)[4:]
    assert len(StreamBatchSampler(10, 4, seed=3, start_step=4, total_steps=7)) == 3
    # Another seed, another order.
    assert _flatten(StreamBatchSampler(10, 4, seed=4, start_step=0, total_steps=7)) != _flatten(
        single
    )


def test_every_item_is_seen_each_epoch_and_positions_are_unique() -> None:
    sampler = StreamBatchSampler(10, 4, seed=0, start_step=0, total_steps=6)
    assert sampler.batches_per_epoch == 3  # ceil(10 / 4), the last batch wrapped round
    batches = _flatten(sampler)
    for epoch in range(2):
        items = [i for b in batches[3 * epoch : 3 * epoch + 3] for _, i in b]
        assert set(items) == set(range(10)) and len(items) == 12
    positions = [p for b in batches for p, _ in b]
    assert positions == list(range(24))


def test_grouped_batches_stay_within_one_group() -> None:
    groups = [np.arange(0, 5), np.arange(5, 12)]
    sampler = StreamBatchSampler(0, 3, seed=1, start_step=0, total_steps=8, groups=groups)
    assert sampler.batches_per_epoch == 2 + 3
    seen = Counter()
    for batch in _flatten(sampler):
        ids = {i for _, i in batch}
        assert ids <= set(range(5)) or ids <= set(range(5, 12))
        seen.update(ids)
    assert set(seen) == set(range(12))


def test_seeded_items_are_reproducible_and_leave_global_rng_alone(tmp_path: Path) -> None:
    shard, index = _series_shard(tmp_path, "a", 2.0, [40, 40, 40])
    ds = build_dataset({"kind": "series", "window": 10, "crop": "random"}, [(shard, index)])
    view = SeededItems(ds, seed=7)
    torch.manual_seed(0)
    random.seed(0)
    before = (torch.get_rng_state(), random.getstate())
    a = view[(5, 1)]
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    torch.manual_seed(999)  # the item does not depend on the global state either
    b = view[(5, 1)]
    assert torch.equal(a["x"], b["x"])
    crops = {float(view[(p, 1)]["x"][0, 0]) for p in range(20)}
    assert len(crops) > 3  # different stream positions, different random crops
    assert not torch.equal(SeededItems(ds, seed=8)[(5, 1)]["x"], a["x"])


def test_series_from_several_trs_by_duration(tmp_path: Path) -> None:
    fast = _series_shard(tmp_path, "fast", 1.0, [50, 30])
    slow = _series_shard(tmp_path, "slow", 2.5, [20, 20, 12])
    ds = build_dataset(
        {"kind": "series", "duration_s": 40.0, "crop": "start", "group_by_shard": True},
        [fast, slow],
    )
    assert isinstance(ds, SeriesCollection)
    assert [p.window for p in ds.parts] == [40, 16] and ds.window == 40
    assert len(ds) == 5
    item = ds[3]  # second item of the slow shard: 16 frames, padded to 40
    assert item["x"].shape == (40, 5) and item["source"] == 1 and item["tr"] == 2.5
    assert item["mask"][:16].all() and not item["mask"][16:].any()
    assert torch.all(item["x"][16:] == 0)
    short = ds[4]  # 12 frames only
    assert int(short["mask"].sum()) == 12
    assert [g.tolist() for g in ds.batch_groups] == [[0, 1], [2, 3, 4]]
    batch = torch.utils.data.default_collate([ds[0], ds[3]])
    assert batch["x"].shape == (2, 40, 5) and batch["tr"].dtype == torch.float64


def test_series_scaling_and_split_rows(tmp_path: Path) -> None:
    shard, index = _series_shard(tmp_path, "a", 2.0, [12, 12, 12])
    stats = RobustScalingStats(
        np.full(5, 10.0), np.full(5, 2.0), [f"r{i}" for i in range(5)], "all", 3, 3, 36
    )
    save_stats(tmp_path / "stats.json", stats)
    splits = tmp_path / "fold-0.tsv"
    pd.DataFrame(
        {"subject": ["s0", "s1", "s2"], "fold": [0, 0, 0], "split": ["train", "test", "train"]}
    ).to_csv(splits, sep="\t", index=False)
    plain = build_dataset({"kind": "series", "window": 12}, [(shard, index)])
    ds = build_dataset(
        {"kind": "series", "window": 12},
        [(shard, index)],
        scaling=tmp_path / "stats.json",
        rows_from=splits,
        split="train",
    )
    assert len(ds) == 2 and [ds[i]["row"] for i in range(2)] == [0, 2]
    torch.testing.assert_close(ds[1]["x"], (plain[2]["x"] - 10.0) / 2.0)
    with pytest.raises(InputDataError, match="no split 'val'"):
        build_dataset(
            {"kind": "series", "window": 12}, [(shard, index)], rows_from=splits, split="val"
        )


def _volume_shard(tmp: Path, name: str, values: list[float], shape=(8, 8, 8)):
    paths = []
    for i, value in enumerate(values):
        p = tmp / f"{name}{i}.npy"
        np.save(p, np.full(shape, value, dtype=np.float32))
        paths.append(p)
    subjects = [f"{name}{i}" for i in range(len(values))]
    manifest = pd.DataFrame({"subject": subjects, "session": "n/a", "path": paths})
    pack_volumes(manifest, tmp / f"{name}.npy", tmp / f"{name}.tsv")
    return tmp / f"{name}.npy", tmp / f"{name}.tsv"


def test_volumes_from_several_shards(tmp_path: Path) -> None:
    a = _volume_shard(tmp_path, "a", [0.0, 1.0, 2.0])
    b = _volume_shard(tmp_path, "b", [5.0, 6.0])
    ds = build_dataset({"kind": "volumes"}, [a, b])
    assert len(ds) == 5 and ds.batch_groups is None
    item = ds[3]
    assert item["x"].shape == (1, 8, 8, 8) and float(item["x"].max()) == 5.0
    assert item["source"] == 1 and item["row"] == 0
    odd = _volume_shard(tmp_path, "c", [1.0], shape=(8, 8, 4))
    with pytest.raises(InputDataError, match="different shapes"):
        build_dataset({"kind": "volumes"}, [a, odd])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "graphs"}, "data.kind must be one of"),
        ({"kind": "series", "window": 4, "duration_s": 3.0}, "exactly one of"),
        ({"kind": "series"}, "exactly one of"),
        ({"kind": "series", "window": 4, "windw": 3}, r"unknown key\(s\) \['windw'\]"),
        ({"kind": "volumes", "window": 4}, r"unknown key\(s\) \['window'\]"),
    ],
)
def test_data_block_errors(tmp_path: Path, data: dict, message: str) -> None:
    shard, index = _series_shard(tmp_path, "a", 2.0, [12])
    with pytest.raises(ValueError, match=message):
        build_dataset(data, [(shard, index)])


def test_duration_needs_one_tr_per_shard(tmp_path: Path) -> None:
    shard, index = _series_shard(tmp_path, "a", 2.0, [12, 12])
    frame = pd.read_csv(index, sep="\t")
    frame.loc[1, "tr"] = 1.0
    frame.to_csv(index, sep="\t", index=False)
    with pytest.raises(InputDataError, match="several TRs"):
        build_dataset({"kind": "series", "duration_s": 10.0}, [(shard, index)])


def test_seeded_item_is_the_item_loaded_after_a_full_manual_seed(tmp_path: Path) -> None:
    """Seeding only the CPU generator gives the item ``torch.manual_seed`` gave."""
    import numpy as np

    from brainharmony.train.data import _mix

    shard, index = _series_shard(tmp_path, "a", 2.0, [40, 40, 40])
    ds = build_dataset({"kind": "series", "window": 10, "crop": "random"}, [(shard, index)])
    for position in range(5):
        seed = _mix(7, 0x5EED, position)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (1 << 32))  # noqa: NPY002
            expected = ds[2]["x"]
        assert torch.equal(SeededItems(ds, seed=7)[(position, 2)]["x"], expected)
