"""``train.pretrained``: a given model folder replaces a role's training (dry runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_snakemake
from tests.workflow.test_workflow import TINY

pytestmark = pytest.mark.workflow


def _folder(path: Path, kind: str, files=("model.safetensors", "config.json")) -> Path:
    path.mkdir(parents=True)
    if "model.safetensors" in files:
        (path / "model.safetensors").write_bytes(b"\0" * 16)
    if "config.json" in files:
        (path / "config.json").write_text(json.dumps({"name": "x", "kind": kind}))
    return path


def _dry(workdir: Path, pretrained: dict[str, str]):
    config = {**TINY, "train": {**TINY["train"], "pretrained": pretrained}}
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return run_snakemake(workdir, "--configfile", str(cfg), "-n", "train_all", timeout=300)


def _jobs(text: str) -> dict[str, int]:
    block = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_pretrained_roles_are_not_trained_and_their_folders_are_read(tmp_path):
    f_dir = _folder(tmp_path / "imported" / "bh_f", "bh_f")
    h_dir = _folder(tmp_path / "imported" / "harmonizer", "harmonizer")
    base = _dry(tmp_path, {})
    assert base.returncode == 0, base.stderr[-3000:]
    assert {"train_bh_f", "train_harmonizer"} <= set(_jobs(base.stdout))
    out = _dry(tmp_path, {"bh_f": str(f_dir), "harmonizer": str(h_dir)})
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = _jobs(out.stdout)
    assert "train_bh_f" not in jobs and "train_harmonizer" not in jobs
    assert jobs["train_bh_s"] == 1 and jobs["embed_encoders"] == 2 and jobs["embed_harmonizer"] == 2
    assert f"{f_dir}/model.safetensors" in out.stdout  # embed_encoders reads the given folder
    assert f"{h_dir}/model.safetensors" in out.stdout


@pytest.mark.parametrize(
    ("kind", "files", "expected"),
    [
        ("bh_f", ("model.safetensors",), "has no config.json"),
        ("bh_f", ("config.json",), "has no model.safetensors"),
        (
            "bh_s",
            ("model.safetensors", "config.json"),
            "holds a 'bh_s' model; the role needs 'bh_f'",
        ),
    ],
)
def test_a_wrong_pretrained_folder_stops_the_planning(tmp_path, kind, files, expected):
    folder = _folder(tmp_path / "given", kind, files)
    out = _dry(tmp_path, {"bh_f": str(folder)})
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "train.pretrained.bh_f" in text and expected in text, text[-3000:]
    assert "Job stats" not in text


def test_a_missing_pretrained_folder_is_named(tmp_path):
    out = _dry(tmp_path, {"harmonizer": str(tmp_path / "nowhere")})
    assert out.returncode != 0
    assert "train.pretrained.harmonizer" in out.stdout + out.stderr
    assert "does not exist" in out.stdout + out.stderr
