"""train.global_batch: accumulation from the process count, schedules independent of it;
the cosine weight-decay schedule."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from torch import nn

from brainharmony.train.config import (
    ModelConfigError,
    OptimConfig,
    config_from_mapping,
    load_config,
    resolve_grad_accum,
)
from brainharmony.train.optim import (
    build_optimizer,
    decay_exempt_names,
    plan_schedule,
    set_weight_decay,
    wd_at,
)

REPO = Path(__file__).resolve().parents[3]
PAPER = sorted(p.name for p in (REPO / "models").glob("*_paper.yaml"))
BASE = {
    "name": "tiny",
    "kind": "bh_s",
    "optim": {"lr": 1.0e-3, "warmup_steps": 2},
    "train": {"steps": 10, "batch_size": 2},
    "data": {"kind": "volumes"},
}


def _cfg(optim: dict | None = None, **train: object):
    doc = json.loads(json.dumps(BASE))
    doc["optim"].update(optim or {})
    doc["train"].update(train)
    return config_from_mapping(doc, "m.yaml")


def _short(cfg, steps: int = 300):
    """The same recipe over fewer steps (warmup scaled), to keep the test fast."""
    warm = max(1, cfg.optim.warmup_steps * steps // cfg.train.steps)
    return dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, warmup_steps=warm),
        train=dataclasses.replace(cfg.train, steps=steps),
    )


def test_every_paper_yaml_declares_a_global_batch() -> None:
    assert len(PAPER) == 7
    for name in PAPER:
        assert load_config(REPO / "models" / name).train.global_batch is not None, name


@pytest.mark.parametrize("name", PAPER)
def test_paper_schedules_are_the_same_on_1_2_and_8_gpus(name: str) -> None:
    cfg = _short(load_config(REPO / "models" / name))
    worlds = (1, 2, 8) if not name.startswith("predictor") else (1,)
    plans = [plan_schedule(cfg, w) for w in worlds]
    for plan in plans:
        assert plan.global_batch == cfg.train.global_batch
        assert plan.grad_accum * plan.world_size * cfg.train.batch_size == plan.global_batch
        assert plan.steps == plans[0].steps and plan.samples == plans[0].samples
        assert plan.lr == plans[0].lr  # exactly: functions of the optimiser step
        assert plan.weight_decay == plans[0].weight_decay


def test_paper_accumulation_per_gpu_count() -> None:
    f = load_config(REPO / "models" / "bh_f_paper.yaml")
    assert [plan_schedule(f, w).grad_accum for w in (1, 2, 8)] == [32, 16, 4]
    s = load_config(REPO / "models" / "bh_s_paper.yaml")
    assert [plan_schedule(s, w).grad_accum for w in (1, 2, 8)] == [8, 4, 1]


def test_without_global_batch_the_global_batch_grows_with_the_gpus() -> None:
    # What the key prevents: the old behaviour (kept when it is absent).
    cfg = _cfg(grad_accum=2)
    assert [plan_schedule(cfg, w).global_batch for w in (1, 2, 8)] == [4, 8, 32]
    assert [plan_schedule(cfg, w).grad_accum for w in (1, 2, 8)] == [2, 2, 2]


def test_indivisible_global_batch_names_the_yaml() -> None:
    cfg = _cfg(global_batch=12, batch_size=2)
    assert resolve_grad_accum(cfg.train, 3, "m.yaml") == 2
    with pytest.raises(ModelConfigError, match=r"models/x\.yaml.*global_batch 12.*1, 2, 3, 6"):
        resolve_grad_accum(cfg.train, 4, "models/x.yaml")


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"global_batch": 7, "batch_size": 2}, "train.global_batch 7 must be a multiple"),
        ({"global_batch": 0}, "train.global_batch must be >= 1"),
        ({"global_batch": 8, "grad_accum": 2}, "train.grad_accum is derived"),
        ({"global_batch": 8.0}, "train.global_batch must be int"),
    ],
)
def test_bad_global_batch(train: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        _cfg(**train)


def test_unset_new_keys_leave_the_config_json_unchanged() -> None:
    plain = _cfg()
    doc = plain.to_dict()
    assert "global_batch" not in doc["train"] and "weight_decay_end" not in doc["optim"]
    both = _cfg({"weight_decay_end": 0.4}, global_batch=8)
    doc = both.to_dict()
    assert doc["train"]["global_batch"] == 8 and doc["optim"]["weight_decay_end"] == 0.4
    assert config_from_mapping(doc) == both  # round trip


def test_cosine_weight_decay_values() -> None:
    cfg = OptimConfig(weight_decay=0.04, weight_decay_end=0.4)
    total = 11
    assert wd_at(0, cfg, total) == pytest.approx(0.04)
    assert wd_at(10, cfg, total) == pytest.approx(0.4)
    assert wd_at(5, cfg, total) == pytest.approx(0.22)  # half way
    mid = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 3 / 10))
    assert wd_at(3, cfg, total) == pytest.approx(mid)
    assert wd_at(0, cfg, 1) == pytest.approx(0.4)  # one step: the end value
    constant = OptimConfig(weight_decay=0.05)
    assert {wd_at(s, constant, total) for s in range(total)} == {0.05}


def test_set_weight_decay_touches_the_decayed_group_only() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    cfg = OptimConfig(weight_decay=0.04, weight_decay_end=0.4)
    opt = build_optimizer(model, cfg)
    exempt = decay_exempt_names(model)
    assert set_weight_decay(opt, exempt, cfg, 4, 5) == pytest.approx(0.4)
    decayed, no_decay = opt.param_groups
    assert decayed["weight_decay"] == pytest.approx(0.4) and no_decay["weight_decay"] == 0.0
    # After a checkpoint round trip the groups are still told apart by their names.
    state = opt.state_dict()
    opt2 = build_optimizer(model, cfg)
    opt2.load_state_dict(state)
    set_weight_decay(opt2, exempt, cfg, 0, 5)
    assert [g["weight_decay"] for g in opt2.param_groups] == [pytest.approx(0.04), 0.0]
    # The constant schedule touches nothing.
    const = build_optimizer(model, OptimConfig(weight_decay=0.05))
    assert set_weight_decay(const, exempt, OptimConfig(weight_decay=0.05), 3, 5) is None
    assert [g["weight_decay"] for g in const.param_groups] == [0.05, 0.0]


def test_cli_refuses_a_global_batch_the_process_count_cannot_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from brainharmony import cli

    path = tmp_path / "gb.yaml"
    doc = {**BASE, "train": {"steps": 2, "batch_size": 2, "global_batch": 4}}
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    monkeypatch.setenv("WORLD_SIZE", "3")  # checked before any process group or data
    argv = ["train", "--config", str(path), "--out", str(tmp_path / "o")]
    argv += ["--state", str(tmp_path / "s"), "--shard", "x.npy", "--index", "x.tsv"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "gb.yaml" in err and "global_batch 4" in err and "3 processes" in err
