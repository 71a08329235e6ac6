"""benchmarks/gpu_check.py in its CPU mode: every check runs, passes on the real code, and a
disagreement makes the command exit non-zero (the GPU-only parts report why they skip)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass needs the module registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cpu_mode_passes_and_writes_rows(gc, tmp_path, capsys) -> None:
    out = tmp_path / "rows.json"
    args = ["--cpu", "--quick", "--batch", "1", "--models", "lmae,predictor", "--json", str(out)]
    assert gc.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    checks = {r["check"]: r for r in rows}
    assert {"attention out", "attention dq", "selective_scan out", "selective_scan dA"} <= set(
        checks
    )
    assert {"train lmae", "train predictor", "ddp gloo x2"} <= set(checks)
    assert all(r["status"] == "pass" for r in rows)
    assert "| train lmae | cpu | pass |" in capsys.readouterr().out


def test_a_disagreeing_scan_fails_the_run(gc, monkeypatch) -> None:
    import brainharmony.models.ssm_scan as ssm_scan

    real = ssm_scan.selective_scan_chunked

    def off_by_a_little(*args, **kwargs):
        return real(*args, **kwargs) * 1.01

    monkeypatch.setattr(ssm_scan, "selective_scan_chunked", off_by_a_little)
    assert gc.main(["--cpu", "--skip", "attention,train,ddp"]) == 1


def test_a_disagreeing_attention_fails_the_run(gc, monkeypatch) -> None:
    import brainharmony.models.attention as attention

    real = attention.attention

    def shifted(q, k, v, valid=None):
        return real(q, k, v, valid) + 1e-3

    monkeypatch.setattr(attention, "attention", shifted)
    assert gc.main(["--cpu", "--skip", "scan,train,ddp"]) == 1


def test_without_cuda_it_asks_for_cpu_mode(gc, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gc.main([]) == 2
    assert "--cpu" in capsys.readouterr().err


def test_paper_shapes_match_the_flop_model(gc) -> None:
    """The random batches of the paper YAMLs have the token counts scripts/gpu_hours.py
    counts, so the MFU it reports uses the right FLOPs."""
    gen = torch.Generator().manual_seed(0)
    doc = gc.model_config("bh_f", paper=True, quick=False)
    batch = gc.random_batch("bh_f", doc, 1, gen)
    assert batch["x"].shape == (1, 18 * 48, 400)  # 18 patches of k = round(35.28 / 0.735)
    doc = gc.model_config("harmonizer", paper=True, quick=False)
    batch = gc.random_batch("harmonizer", doc, 1, gen)
    assert batch["f_tokens"].shape == (1, 400 * 18, 768)
    assert batch["s_tokens"].shape == (1, 10 * 12 * 10, 768)
    doc = gc.model_config("bh_s", paper=True, quick=False)
    assert tuple(doc["model"]["img_size"]) == (160, 192, 160)
