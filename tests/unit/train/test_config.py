"""Model YAMLs parsed into frozen dataclasses; clear errors naming the file and the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from brainharmony.train.config import (
    ModelConfig,
    ModelConfigError,
    OptimConfig,
    TrainConfig,
    config_from_mapping,
    load_config,
)

REPO = Path(__file__).resolve().parents[3]
BASE = {
    "name": "tiny",
    "kind": "bh_s",
    "model": {"img_size": [16, 16, 16], "patch": 8, "dim": 32},
    "optim": {"lr": 1.0e-3, "min_lr": 1.0e-5, "warmup_steps": 2, "betas": [0.9, 0.95]},
    "train": {"steps": 10, "batch_size": 2},
    "data": {"kind": "volumes"},
}


def _write(tmp_path: Path, doc: dict, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["bh_s_demo", "bh_s_paper"])
def test_shipped_yamls_parse_and_round_trip(name: str) -> None:
    cfg = load_config(REPO / "models" / f"{name}.yaml")
    assert cfg.name == name and cfg.kind == "bh_s"
    assert isinstance(cfg.optim, OptimConfig) and isinstance(cfg.train, TrainConfig)
    again = config_from_mapping(json.loads(cfg.to_json()))
    assert again == cfg


def test_config_is_frozen_and_read_only(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.model["dim"] = 64  # type: ignore[index]
    assert cfg.model["img_size"] == (16, 16, 16)  # lists become tuples
    assert cfg.to_dict()["model"]["img_size"] == [16, 16, 16]
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.lr == 1.0e-3
    assert cfg.train.precision == "auto"  # default


def test_defaults_and_override(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"name": "x", "kind": "bh_s"}))
    assert cfg.optim == OptimConfig() and cfg.train == TrainConfig()
    short = cfg.with_train(steps=3)
    assert short.train.steps == 3 and cfg.train.steps == TrainConfig().steps
    with pytest.raises(ModelConfigError, match=r"train\.steps must be >= 1"):
        cfg.with_train(steps=0)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("optim", "lrr", 1.0, r"unknown key\(s\) optim.lrr; allowed in 'optim': lr, min_lr"),
        ("train", "epochs", 3, r"unknown key\(s\) train.epochs"),
        ("train", "steps", "ten", "train.steps must be int, got 'ten'"),
        ("train", "steps", 2.5, "train.steps must be int"),
        ("train", "precision", "fp16", "train.precision must be one of auto, fp32, bf16"),
        ("optim", "min_lr", 1.0, r"optim.min_lr must be in \[0, lr="),
        ("optim", "betas", [0.9], r"optim.betas must be tuple\[float, float\]"),
        ("optim", "warmup_steps", -1, "optim.warmup_steps must be >= 0"),
        ("train", "grad_accum", 0, "train.grad_accum must be >= 1"),
        ("optim", "clip_grad", True, "optim.clip_grad must be float | None"),
    ],
)
def test_section_errors_name_key_and_file(
    tmp_path: Path, section: str, key: str, value: object, message: str
) -> None:
    doc = json.loads(json.dumps(BASE))
    doc[section][key] = value
    path = _write(tmp_path, doc)
    with pytest.raises(ModelConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"kind": "vit"},
            "unknown kind 'vit'; known kinds: bh_f, bh_s, brain_jepa, brainlm, harmonizer",
        ),
        ({"name": "bad name"}, "name must match"),
        ({"name": "tiny\n"}, "name must match"),  # re.match's $ allowed a final newline
        ({"extra": 1}, "unknown top-level key"),
        ({"model": [1, 2]}, "'model' must be a mapping"),
        ({"optim": 3}, "'optim' must be a mapping"),
    ],
)
def test_top_level_errors(tmp_path: Path, change: dict, message: str) -> None:
    path = _write(tmp_path, {**BASE, **change})
    with pytest.raises(ModelConfigError, match=message):
        load_config(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ModelConfigError, match="cannot be parsed"):
        load_config(bad)
    no_kind = _write(tmp_path, {"name": "x"}, "nokind.yaml")
    with pytest.raises(ModelConfigError, match="missing required key 'kind'"):
        load_config(no_kind)


def test_config_json_with_provenance_parses(tmp_path: Path) -> None:
    cfg = config_from_mapping(BASE)
    doc = {**cfg.to_dict(), "format": "brainharmony-model/1", "provenance": {"Step": "train"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_config(path) == cfg
    assert isinstance(cfg, ModelConfig)


def test_overrides_set_nested_values_and_are_validated():
    from brainharmony.train.config import ModelConfigError, load_config, with_overrides

    cfg = load_config(REPO / "models" / "predictor_demo.yaml")
    out = with_overrides(
        cfg,
        [
            "model.target=diagnosis",
            "model.task=classification",
            "model.n_classes=2",
            "data.targets=[diagnosis]",
            "train.steps=7",
            "model.spatial.experts=2",
        ],
    )
    assert out.model["target"] == "diagnosis" and out.model["n_classes"] == 2
    assert list(out.data["targets"]) == ["diagnosis"] and out.train.steps == 7
    assert out.model["spatial"]["experts"] == 2 and cfg.model["target"] == "age"
    with pytest.raises(ModelConfigError, match=r"section\.key=value"):
        with_overrides(cfg, ["steps=3"])
    with pytest.raises(ModelConfigError, match="unknown section"):
        with_overrides(cfg, ["modle.target=age"])
    with pytest.raises(ModelConfigError):
        with_overrides(cfg, ["train.stepz=3"])


def test_planning_refuses_a_bh_s_size_that_is_not_the_anatomy_box() -> None:
    from brainharmony.planning.train import check_volume_shape

    box = (160, 192, 160)
    auto = str(REPO / "models" / "bh_s_demo.yaml")  # img_size: auto fits any resolution
    assert check_volume_shape(auto, box, 1) == check_volume_shape(auto, box, 2) == auto
    paper = str(REPO / "models" / "bh_s_paper.yaml")
    assert check_volume_shape(paper, box, 1) == paper
    with pytest.raises(ValueError, match=r"\[160, 192, 160\] differs .* \[80, 96, 80\]"):
        check_volume_shape(paper, box, 2)
