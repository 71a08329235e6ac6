"""Planning of the training rules: the global batch against train.gpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brainharmony.planning.train import check_global_batch, plan_from_config

REPO = Path(__file__).resolve().parents[3]


def _block(gpus: int, **models: str) -> dict:
    return {
        "train": {
            "models": models,
            "steps": None,
            "ckpt_every": None,
            "gpus": gpus,
            "device": "auto",
            "threads": 1,
            "pretrained": {},
            "variants": {},
        }
    }


def _yaml(tmp_path: Path, train: dict) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "kind": "bh_s", "train": train}))
    return str(path)


def test_accumulation_follows_the_gpu_count(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"batch_size": 16, "global_batch": 512})
    assert [check_global_batch(path, n) for n in (1, 2, 4, 8)] == [32, 16, 8, 4]
    plain = _yaml(tmp_path, {"batch_size": 16, "grad_accum": 3})
    assert check_global_batch(plain, 8) == 3  # no global_batch: as given


def test_indivisible_global_batch_stops_the_planning_naming_the_yaml(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"batch_size": 16, "global_batch": 128})
    with pytest.raises(ValueError, match=r"m\.yaml: train\.global_batch 128 .* 3 process"):
        check_global_batch(path, 3)
    with pytest.raises(ValueError, match=r"m\.yaml.*1, 2, 4, 8 GPU"):
        plan_from_config(_block(3, bh_s=path))


def test_paper_yamls_plan_on_1_2_and_8_gpus() -> None:
    models = {role: f"models/{role}_paper.yaml" for role in ("bh_s", "bh_f", "harmonizer")}
    models |= {"lmae": "models/lmae_paper.yaml", "predictor": "models/predictor_paper.yaml"}
    for gpus in (0, 1, 2, 8):
        plan = plan_from_config(_block(gpus, **models), basedir=str(REPO))
        assert plan.grad_accum("bh_f") * 16 * max(gpus, 1) == 512
        assert plan.grad_accum("harmonizer") * 16 * max(gpus, 1) == 128
        assert plan.processes("predictor") == 1 and plan.grad_accum("predictor") == 1


def test_pretrained_folders_replace_the_training_outputs(tmp_path):
    import json

    from brainharmony.planning.train import TrainPlan, check_pretrained

    folder = tmp_path / "bh_f"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0")
    (folder / "config.json").write_text(json.dumps({"kind": "bh_f"}))
    plan = TrainPlan(pretrained={"bh_f": check_pretrained("bh_f", str(folder))})
    assert plan.weights("bh_f") == f"{folder}/model.safetensors"
    assert plan.outputs("bh_f")["config"] == f"{folder}/config.json"
    assert plan.weights("bh_s") == "results/models/bh_s/model.safetensors"
    assert "bh_f" not in plan.trained and "bh_s" in plan.trained
    with pytest.raises(ValueError, match=r"train.pretrained.bh_s: .* holds a 'bh_f' model"):
        check_pretrained("bh_s", str(folder))
    with pytest.raises(ValueError, match="not a role with a model folder"):
        check_pretrained("predictor", str(folder))
