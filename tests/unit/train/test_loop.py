"""The training loop: model folder, metrics, resume, non-finite stop, init, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from brainharmony import cli
from brainharmony.train import NonFiniteLossError, load_trained, train
from brainharmony.train.config import config_from_mapping
from brainharmony.train.data import build_dataset
from brainharmony.train.metrics import read_metrics
from brainharmony.train.optim import lr_at

TINY = {
    "name": "tiny_s",
    "kind": "bh_s",
    "model": {
        "img_size": [16, 16, 16],
        "patch": 8,
        "dim": 32,
        "depth": 1,
        "heads": 4,
        "decoder_dim": 32,
        "decoder_depth": 1,
        "decoder_heads": 4,
    },
    "optim": {"lr": 1.0e-3, "min_lr": 1.0e-5, "warmup_steps": 2, "clip_grad": 1.0},
    "train": {"steps": 6, "batch_size": 2, "seed": 1, "log_every": 2, "ckpt_every": 2},
    "data": {"kind": "volumes"},
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def volumes(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    shard, index = tmp_path / "vols.npy", tmp_path / "vols.tsv"
    np.save(shard, rng.standard_normal((5, 16, 16, 16)).astype(np.float16))
    pd.DataFrame({"subject": list("abcde"), "session": "n/a", "offset": range(5)}).to_csv(
        index, sep="\t", index=False
    )
    return shard, index


def _cfg(**train: object):
    doc = json.loads(json.dumps(TINY))
    doc["train"].update(train)
    return config_from_mapping(doc)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_run_writes_the_model_folder(tmp_path: Path, volumes) -> None:
    cfg = _cfg()
    ds = build_dataset(cfg.data, [volumes])
    out, state = tmp_path / "out", tmp_path / "state"
    result = train(cfg, ds, out, state, progress=False, inputs=list(volumes))
    assert result.finished and result.step == 6 and result.resumed_from == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "curves.png",
        "metrics.jsonl",
        "model.safetensors",
    ]
    assert (state / "checkpoint.pt").is_file() and not (out / "checkpoint.pt").exists()
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 4, 6]
    for r in records:
        assert {"step", "loss", "lr", "grad_norm"} <= set(r) and np.isfinite(r["loss"])
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg.optim, 6))
    doc = json.loads((out / "config.json").read_text())
    assert doc["kind"] == "bh_s" and doc["trained_steps"] == 6
    assert doc["provenance"]["Inputs"] == [str(p) for p in volumes]
    # config.json + weights rebuild the model alone.
    model = load_trained(out)
    assert not model.training and model.config.name == "tiny_s"
    saved = _weights(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name])
    feats = model.encode({"x": ds[0]["x"][None]})
    assert feats.shape == (1, 32) and torch.isfinite(feats).all()


def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, volumes) -> None:
    cfg = _cfg(steps=7, ckpt_every=2, log_every=1)
    ds = build_dataset(cfg.data, [volumes])
    train(cfg, ds, tmp_path / "a", tmp_path / "sa", progress=False)
    # Interrupted after 5 steps: the last checkpoint is at step 4, step 5 is redone.
    first = train(cfg, ds, tmp_path / "b", tmp_path / "sb", max_steps_this_call=5, progress=False)
    assert not first.finished and first.step == 5
    assert not (tmp_path / "b").exists()
    assert [r["step"] for r in read_metrics(tmp_path / "sb" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    second = train(cfg, ds, tmp_path / "b", tmp_path / "sb", progress=False)
    assert second.finished and second.resumed_from == 4
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def timeless(folder: Path) -> list[dict]:
        records = read_metrics(folder / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]

    again = timeless(tmp_path / "b")
    assert timeless(tmp_path / "a") == again and [r["step"] for r in again] == list(range(1, 8))
    # A finished run called again does nothing but rewrite its outputs.
    third = train(cfg, ds, tmp_path / "b", tmp_path / "sb", progress=False)
    assert third.finished and third.resumed_from == 7 and third.last_loss is None


class _SeriesModel(nn.Module):
    """Tiny model with dropout and random crops upstream: exercises every random stream."""

    def __init__(self, n_rois: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(n_rois, 8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, 1)
        self.calls: list[tuple[int, int]] = []
        self.fail_at: int | None = None

    def forward_loss(self, batch):
        h = self.drop(torch.tanh(self.proj(batch["x"])))
        pred = self.out(h).squeeze(-1)
        loss = ((pred - batch["x"].mean(-1)) ** 2 * batch["mask"]).sum() / batch["mask"].sum()
        if self.fail_at is not None and len(self.calls) + 1 >= self.fail_at:
            loss = loss * float("nan")
        # The global numpy and torch streams, on purpose: their restoration is tested.
        noise = np.random.rand() + torch.rand(()).item()  # noqa: NPY002
        return loss, {"noise": float(noise)}

    def after_step(self, step: int, total_steps: int) -> None:
        self.calls.append((step, total_steps))


def _series(tmp_path: Path) -> tuple[Path, Path]:
    from brainharmony.packing import pack_series

    rng = np.random.default_rng(2)
    rows = []
    for i in range(5):
        p = tmp_path / f"ser{i}.npy"
        np.save(p, rng.standard_normal((30 + 5 * i, 4)).astype(np.float32))
        rows.append({"subject": f"s{i}", "session": "n/a", "run": "n/a", "tr": 2.0, "path": p})
    pack_series(pd.DataFrame(rows), tmp_path / "ser.npy", tmp_path / "ser.tsv")
    return tmp_path / "ser.npy", tmp_path / "ser.tsv"


def test_resume_with_crops_dropout_and_after_step(tmp_path: Path) -> None:
    doc = {**TINY, "name": "series_toy", "data": {"kind": "series", "window": 12}}
    doc["train"] = {**TINY["train"], "steps": 6, "ckpt_every": 3, "log_every": 1}
    cfg = config_from_mapping(doc)
    ds = build_dataset(cfg.data, [_series(tmp_path)])
    torch.manual_seed(0)
    whole = _SeriesModel()
    train(cfg, ds, tmp_path / "a", tmp_path / "sa", model=whole, progress=False)
    assert whole.calls == [(s, 6) for s in range(1, 7)]
    torch.manual_seed(0)  # a model passed in must start from the same weights
    part = _SeriesModel()
    train(cfg, ds, tmp_path / "b", tmp_path / "sb", model=part, max_steps_this_call=4)
    rest = _SeriesModel()
    train(cfg, ds, tmp_path / "b", tmp_path / "sb", model=rest, progress=False)
    assert rest.calls == [(4, 6), (5, 6), (6, 6)]
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, rest.state_dict()[name]), name
    a = read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["noise"] for r in a] == [r["noise"] for r in b]  # numpy/torch streams restored


def test_non_finite_loss_stops_and_saves_nothing_for_it(tmp_path: Path) -> None:
    doc = {**TINY, "name": "nan_toy", "data": {"kind": "series", "window": 12}}
    doc["train"] = {**TINY["train"], "steps": 6, "ckpt_every": 2}
    cfg = config_from_mapping(doc)
    ds = build_dataset(cfg.data, [_series(tmp_path)])
    model = _SeriesModel()
    model.fail_at = 4
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan .* at step 4"):
        train(cfg, ds, tmp_path / "out", tmp_path / "state", model=model, progress=False)
    assert not (tmp_path / "out").exists()
    state = torch.load(tmp_path / "state" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    assert len(model.calls) == 3  # steps 1-3 applied, step 4 not
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "checkpoint.pt",
        "metrics.jsonl",
    ]


def test_changed_configuration_starts_over(tmp_path: Path, volumes) -> None:
    cfg = _cfg(steps=2)
    ds = build_dataset(cfg.data, [volumes])
    train(cfg, ds, tmp_path / "out", tmp_path / "state", progress=False)
    changed = config_from_mapping({**cfg.to_dict(), "optim": {**cfg.to_dict()["optim"], "lr": 0.1}})
    # The stale state is ignored: the result equals a run from an empty state folder.
    train(changed, ds, tmp_path / "out", tmp_path / "state", progress=False)
    train(changed, ds, tmp_path / "fresh", tmp_path / "fresh_state", progress=False)
    assert _weights(tmp_path / "out").keys() == _weights(tmp_path / "fresh").keys()
    for key, value in _weights(tmp_path / "out").items():
        assert torch.equal(value, _weights(tmp_path / "fresh")[key]), key
    # Logging cadence may change between calls.
    relogged = cfg.with_train(log_every=5)
    assert train(relogged, ds, tmp_path / "out", tmp_path / "state", progress=False).finished


def test_finished_checkpoint_of_other_data_is_not_resumed(tmp_path: Path, volumes) -> None:
    """A rerun after the data changed (e.g. a run excluded upstream) trains afresh: the
    finished checkpoint of the old data would otherwise be 'resumed' at its last step
    and its weights written again. Same bytes under another name still resume."""
    cfg = _cfg(steps=2)
    shard, index = volumes
    ds = build_dataset(cfg.data, [volumes])
    first = train(cfg, ds, tmp_path / "out", tmp_path / "state", progress=False, inputs=[*volumes])
    assert first.finished and first.resumed_from == 0
    again = train(cfg, ds, tmp_path / "out", tmp_path / "state", progress=False, inputs=[*volumes])
    assert again.resumed_from == 2  # same data: the finished state is picked up
    moved = tmp_path / "moved"
    moved.mkdir()
    copies = [moved / shard.name, moved / index.name]
    for src, dst in zip(volumes, copies, strict=True):
        dst.write_bytes(src.read_bytes())
    assert train(cfg, ds, tmp_path / "out", tmp_path / "state", progress=False,
                 inputs=copies).resumed_from == 2  # fmt: skip
    # Other data: the volumes changed.
    np.save(shard, np.load(shard) * np.float16(2))
    ds = build_dataset(cfg.data, [volumes])
    changed = train(
        cfg, ds, tmp_path / "out", tmp_path / "state", progress=False, inputs=[*volumes]
    )
    assert changed.resumed_from == 0
    train(cfg, ds, tmp_path / "fresh", tmp_path / "fresh_state", progress=False, inputs=[*volumes])
    for key, value in _weights(tmp_path / "out").items():
        assert torch.equal(value, _weights(tmp_path / "fresh")[key]), key


def test_init_from_another_model_folder(tmp_path: Path, volumes) -> None:
    cfg = _cfg(steps=2)
    ds = build_dataset(cfg.data, [volumes])
    train(cfg, ds, tmp_path / "first", tmp_path / "s1", progress=False)
    source = _weights(tmp_path / "first")
    other = config_from_mapping({**cfg.to_dict(), "name": "second"})
    from brainharmony.models.registry import build_model

    torch.manual_seed(12345)
    model = build_model("bh_s", other.model)
    assert any(not torch.equal(t, source[n]) for n, t in model.state_dict().items() if n in source)
    result = train(
        other,
        ds,
        tmp_path / "second",
        tmp_path / "s2",
        model=model,
        init_from=tmp_path / "first",
        max_steps_this_call=0,
        progress=False,
    )
    assert result.step == 0
    for name, tensor in model.state_dict().items():
        if name in source:
            assert torch.equal(tensor, source[name]), name


def test_cli_train(tmp_path: Path, volumes) -> None:
    yaml_path = tmp_path / "tiny_s.yaml"
    yaml_path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    shard, index = volumes
    out, state = tmp_path / "models" / "tiny_s", tmp_path / "work" / "tiny_s"
    argv = ["train", "--config", str(yaml_path), "--out", str(out), "--state", str(state)]
    argv += ["--shard", str(shard), "--index", str(index), "--steps", "2", "--threads", "1"]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 2
    assert len(read_metrics(out / "metrics.jsonl")) == 2
    unpaired = ["train", "--config", str(yaml_path), "--out", str(out), "--state", str(state)]
    assert cli.main([*unpaired, "--shard", str(shard)]) == 2


def test_the_same_training_state_gives_the_same_checkpoint_bytes(tmp_path):
    from brainharmony.train.checkpoint import capture_rng, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    rng = [capture_rng()]
    paths = [tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "other-name.pt"]
    for p in paths:
        p.parent.mkdir()
        save_checkpoint(p, model=model, optimizer=opt, scheduler=sched, step=1, rng=rng, digest="d")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert load_checkpoint(paths[1])["step"] == 1
