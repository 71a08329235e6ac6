"""scripts/pooling_diagnostics.py: sign split, token variance, network amplitude."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.io import InputDataError, write_npy, write_tsv
from brainharmony.models.harmonizer_data import write_token_file
from brainharmony.pipelines.embed import read_features
from tests.conftest import load_script
from tests.unit.pipelines.test_embed import F_MODEL, N_ROIS, _save_model, _tables


@pytest.fixture(scope="module")
def diag():
    return load_script("pooling_diagnostics")


def _shard(folder: Path, n_series: int, frames: int, n_rois: int, rng) -> tuple[Path, Path]:
    data = rng.normal(size=(n_series * frames, n_rois)).astype(np.float32)
    write_npy(folder / "series.npy", data)
    index = pd.DataFrame(
        {
            "subject": [f"{i + 1:02d}" for i in range(n_series)],
            "session": "1",
            "run": "1",
            "tr": 2.0,
            "frames": frames,
            "offset": np.arange(n_series) * frames,
        }
    )
    write_tsv(folder / "series.tsv", index)
    return folder / "series.npy", folder / "series.tsv"


def test_sign_split_parts_and_the_odd_part_averages_out(diag, tmp_path):
    h, g = _tables(tmp_path)
    raw = {
        "name": "f",
        "kind": "bh_f",
        "model": {**F_MODEL, "harmonics": str(h), "gradients": str(g)},
    }
    model = _save_model(tmp_path / "f", raw, seed=0).eval()
    shard, index = _shard(
        tmp_path, n_series=200, frames=12, n_rois=N_ROIS, rng=np.random.default_rng(3)
    )
    out = tmp_path / "split"
    argv = ["sign-split", "--model", str(tmp_path / "f"), "--shard", str(shard),
            "--index", str(index), "--out", str(out), "--batch-size", "64"]  # fmt: skip
    assert diag.main(argv) == 0
    parts = {n: read_features(out / f"{n}.npz") for n in ("pooled", "even", "odd")}
    pooled, even, odd = (parts[n]["features"].astype(np.float64) for n in ("pooled", "even", "odd"))
    assert pooled.shape == (200, F_MODEL["dim"]) and parts["odd"]["subject"][0] == "01"
    np.testing.assert_allclose(even + odd, pooled, atol=1e-5)
    # pooled is the model's encode of the series (its first n_patches * k frames: all 12).
    x = torch.from_numpy(np.load(shard)[:12][None].copy())
    batch = {"x": x, "mask": torch.ones(1, 12, dtype=torch.bool),
             "roi_mask": torch.ones(1, N_ROIS, dtype=torch.bool),
             "tr": torch.tensor([2.0], dtype=torch.float64)}  # fmt: skip
    with torch.no_grad():
        first = model.encode(batch)[0].numpy()
        negated = model.encode({**batch, "x": -x})[0].numpy()
    np.testing.assert_allclose(pooled[0], first, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(odd[0], (first - negated) / 2, rtol=1e-4, atol=1e-5)
    # Over series drawn from a sign-symmetric distribution the odd part averages to zero
    # (standard error 1/sqrt(200) of its spread), the even part does not.
    odd_mean = np.abs(odd.mean(axis=0)).max()
    assert odd_mean < 4 * odd.std(axis=0).max() / np.sqrt(200)
    assert np.abs(even.mean(axis=0)).max() > 10 * odd_mean


def test_sign_split_refuses_another_model_kind(diag, tmp_path):
    from tests.unit.pipelines.test_embed import S_MODEL

    _save_model(tmp_path / "s", {"name": "s", "kind": "bh_s", "model": S_MODEL}, seed=0)
    shard, index = _shard(tmp_path, 2, 12, N_ROIS, np.random.default_rng(0))
    with pytest.raises(InputDataError, match="expected 'bh_f'"):
        diag.sign_split(tmp_path / "s", shard, index)


def test_token_variance_separates_template_from_subject_variation(diag, tmp_path):
    rng = np.random.default_rng(0)
    template = rng.normal(size=(6, 4))
    rows = []
    for i in range(10):
        valid = np.ones(8, bool)
        f_tokens = rng.normal(size=(8, 3))
        if i == 0:
            valid[7] = False  # a position invalid in one item is left out for all
        name = f"sub-{i}_tokens.npz"
        s_tokens = template + 0.01 * rng.normal(size=template.shape)
        write_token_file(tmp_path / name, f_tokens=f_tokens, f_valid=valid, s_tokens=s_tokens,
                         dtype=np.float32)  # fmt: skip
        rows.append({"subject": str(i), "session": "n/a", "path": name})
    write_tsv(tmp_path / "index.tsv", pd.DataFrame(rows))
    share = diag.token_variance(tmp_path / "index.tsv")
    assert share["f_tokens"] == pytest.approx(0.9, abs=0.1)  # ddof: (n - 1) / n of it
    assert share["s_tokens"] < 1e-3


def test_network_amplitude_reads_each_networks_mean_signal(diag, tmp_path, capsys):
    from brainharmony.atlas import NETWORKS, schaefer400_centroids

    labels = schaefer400_centroids()["network"].to_numpy()
    rng = np.random.default_rng(1)
    frames, n_series = 60, 2
    data = 0.01 * rng.normal(size=(n_series * frames, 400))
    shared = rng.normal(size=frames)
    shared = 3.0 * (shared - shared.mean()) / shared.std()
    data[:frames, labels == "Default"] += shared[:, None]  # series 1: Default SD 3
    data[frames + 5] = np.nan  # a censored frame of series 2
    write_npy(tmp_path / "s.npy", data.astype(np.float32))
    index = pd.DataFrame({"subject": ["01", "02"], "session": ["1", "1"], "frames": frames,
                          "offset": [0, frames], "tr": 2.0})  # fmt: skip
    write_tsv(tmp_path / "s.tsv", index)
    _, feats = diag.network_amplitude(tmp_path / "s.npy", tmp_path / "s.tsv", frames=40)
    assert feats.shape == (2, len(NETWORKS)) and np.isfinite(feats).all()
    dmn = list(NETWORKS).index("Default")
    assert feats[0, dmn] == pytest.approx(np.std(shared[:40]), rel=1e-3)
    assert feats[1].max() < 0.01 and np.delete(feats[0], dmn).max() < 0.01
    out = tmp_path / "amp.npz"
    argv = ["network-amplitude", "--shard", str(tmp_path / "s.npy"), "--index",
            str(tmp_path / "s.tsv"), "--frames", "40", "--out", str(out)]  # fmt: skip
    assert diag.main(argv) == 0 and read_features(out)["features"].shape == (2, 7)
    write_npy(tmp_path / "bad.npy", data[:, :12].astype(np.float32))
    with pytest.raises(InputDataError, match="expected"):
        diag.network_amplitude(tmp_path / "bad.npy", tmp_path / "s.tsv", frames=40)
