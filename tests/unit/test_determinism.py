"""Determinism across repeats and thread counts (tolerances stated in docs/determinism.md).

Same inputs and the same thread count give the same bytes; another thread count changes
only the order of floating-point sums, within the tolerances pinned here. The workflow-level
check (the tiny demo's training and evaluation computed twice, tables byte-identical) is
tests/workflow/test_workflow.py::test_kill_during_training_resumes_to_identical_weights_and_tables.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from brainharmony.func.denoise import DenoiseSettings, censor_mask, denoise

#: Stated tolerances (docs/determinism.md).
DENOISE_RTOL = 1e-12  # of the largest value; float64 operator products (measured 2e-14)
WEIGHTS_ATOL = 1e-6  # trained weights, 6 steps of the tiny BrainHarmonix-S (measured 2e-9)
LOSS_RTOL = 1e-6


def _run_denoise(threads: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    n, v, k = 300, 400, 24
    y = rng.normal(size=(n, v)).cumsum(0) * 0.1 + rng.normal(size=(n, v)) + 100.0
    c = rng.normal(size=(n, k)).cumsum(0)
    fd = np.abs(rng.normal(0, 0.2, n))
    keep = censor_mask(fd, 0.5, min_segment=5)
    with threadpool_limits(threads):
        return denoise(y, 0.8, confounds=c, keep=keep, settings=DenoiseSettings()).interpolated


def test_denoising_repeats_exactly_and_agrees_across_blas_threads():
    one, two, again = _run_denoise(1), _run_denoise(2), _run_denoise(1)
    assert np.array_equal(one, again, equal_nan=True)
    finite = np.isfinite(one)
    assert np.array_equal(finite, np.isfinite(two))
    scale = np.abs(one[finite]).max()
    assert np.abs(one[finite] - two[finite]).max() <= DENOISE_RTOL * scale


def _train(tmp_path, threads: int, tag: str):
    from safetensors.torch import load_file

    from brainharmony.train import train
    from brainharmony.train.config import config_from_mapping
    from brainharmony.train.data import build_dataset
    from brainharmony.train.metrics import read_metrics
    from tests.unit.train.test_loop import TINY

    rng = np.random.default_rng(0)
    shard, index = tmp_path / "vols.npy", tmp_path / "vols.tsv"
    if not shard.exists():
        np.save(shard, rng.standard_normal((6, 16, 16, 16)).astype(np.float16))
        pd.DataFrame({"subject": list("abcdef"), "session": "n/a", "offset": range(6)}).to_csv(
            index, sep="\t", index=False
        )
    cfg = config_from_mapping(json.loads(json.dumps(TINY)))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = tmp_path / tag
        train(cfg, build_dataset(cfg.data, [(shard, index)]), out, tmp_path / f"st-{tag}",
              progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return (
        (out / "model.safetensors").read_bytes(),
        load_file(str(out / "model.safetensors")),
        read_metrics(out / "metrics.jsonl")[-1]["loss"],
    )


def test_training_repeats_exactly_and_agrees_across_torch_threads(tmp_path):
    raw_one, one, loss_one = _train(tmp_path, 1, "one")
    raw_again, _, _ = _train(tmp_path, 1, "again")
    # Same thread count: the same file, byte for byte.
    assert raw_one == raw_again
    _, two, loss_two = _train(tmp_path, 2, "two")
    assert one.keys() == two.keys()
    worst = max(float((one[k].double() - two[k].double()).abs().max()) for k in one)
    assert worst <= WEIGHTS_ATOL, worst
    assert loss_two == pytest.approx(loss_one, rel=LOSS_RTOL)


def test_native_functional_pipeline_repeats_exactly(tmp_path):
    """Motion and slice-timing correction, confounds, parcellation and denoising of one
    run, twice: the same arrays bit for bit (the rule runs it on one thread)."""
    from brainharmony.atlas import schaefer400_volume
    from brainharmony.func.pipeline import NativeSettings, RunInputs, preprocess_run
    from tests.unit.func_synthetic import RES_MM, synthetic_bold

    atlas, _ = schaefer400_volume(RES_MM)
    path, meta, _ = synthetic_bold(tmp_path / "sub-01" / "func", n_volumes=40, seed=3)
    inputs = RunInputs(
        bold=path, t_r=meta["RepetitionTime"], metadata=meta, t1w_to_template=np.eye(4)
    )
    with threadpool_limits(1):
        first = preprocess_run(inputs, atlas, NativeSettings(coreg="header"))
        second = preprocess_run(inputs, atlas, NativeSettings(coreg="header"))
    assert np.array_equal(first.params, second.params)
    assert np.array_equal(first.raw_series, second.raw_series, equal_nan=True)
    assert np.array_equal(first.denoised, second.denoised, equal_nan=True)
    assert np.array_equal(first.samples, second.samples, equal_nan=True)
    pd.testing.assert_frame_equal(first.confounds, second.confounds)
