"""scripts/gpu_hours.py: the FLOP arithmetic, and the presets carry its current output."""

from __future__ import annotations

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def gh():
    return load_script("gpu_hours")


def test_layer_and_linear_flops(gh) -> None:
    # d = 2, n = 3, MLP ratio 4: 12 d^2 = 48 weights -> 2 * 48 * 3 = 288 matmul FLOPs,
    # attention 4 n^2 d = 72; forward 360, training 3 x 360.
    assert gh.layer_flops(2, 3, 4.0, train=False) == 360
    assert gh.layer_flops(2, 3, 4.0) == 1080
    assert gh.stack_flops(2, 5, 3) == 5 * 1080
    assert gh.linear_flops(4, 5, 6) == 6 * 4 * 5 * 6  # the 6 N T rule
    assert gh.linear_flops(4, 5, 6, train=False) == 2 * 4 * 5 * 6


def test_samples_and_hours(gh) -> None:
    assert gh.samples({"steps": 10, "global_batch": 512, "batch_size": 16}) == 5120
    assert gh.samples({"steps": 10, "batch_size": 16, "grad_accum": 2}) == 320
    # 1 GPU-hour at 1 FLOP/s and 100 % utilisation is 3600 FLOPs.
    assert gh.gpu_hours(7200.0, peak=1.0, mfu=1.0) == pytest.approx(2.0)
    assert gh.gpu_hours(gh.PEAK_FLOPS * gh.MFU * 3600) == pytest.approx(1.0)


def test_bh_s_flops_by_hand(gh) -> None:
    model = {
        "img_size": [16, 16, 16],
        "patch": 8,
        "dim": 4,
        "depth": 1,
        "decoder_dim": 2,
        "decoder_depth": 1,
        "mask_ratio": 0.75,
    }
    # 8 tokens, 2 visible; patch 512 values.
    expected = (
        6 * 512 * 4 * 2
        + 3 * (2 * 12 * 16 * 2 + 4 * 4 * 4)
        + 6 * 4 * 2 * 2
        + 3 * (2 * 12 * 4 * 8 + 4 * 64 * 2)
        + 6 * 2 * 512 * 6
    )
    assert gh.flops_per_sample("bh_s", model, {}) == expected


def test_estimates_of_the_paper_yamls_are_ordered(gh, repo) -> None:
    est = {r: gh.estimate(repo / "models" / f"{r}_paper.yaml") for r in gh.ROLES}
    assert est["bh_f"]["samples"] == 100_000 * 512
    assert est["bh_f"]["gpu_hours"] > est["harmonizer"]["gpu_hours"] > est["bh_s"]["gpu_hours"]
    assert est["bh_s"]["gpu_hours"] > est["lmae"]["gpu_hours"] > 0


def test_presets_carry_the_current_estimate(gh) -> None:
    assert gh.main(["--check"]) == 0, "run: python scripts/gpu_hours.py --write"


def test_render_inserts_once_and_is_idempotent(gh) -> None:
    text = "datasets: {}\ntrain:\n  models: {}\n  gpus: 2\n"
    once = gh.render(text)
    assert once.count(gh.BEGIN) == 1 and once.endswith(text.split("datasets: {}\n")[1])
    assert "train.gpus (2 here)" in once
    assert gh.render(once) == once
