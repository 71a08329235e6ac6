"""LMAE: local (HRF-length) masking, the masked reconstruction loss, padding, folders."""

from __future__ import annotations

import json

import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.models.lmae import (
    LMAE,
    LMAEConfig,
    build,
    load_lmae_folder,
    reconstruction_loss,
    sample_local_mask,
    unpack_series,
    window_frames,
    zscore_series,
)
from brainharmony.models.registry import build_model

TINY = {
    "n_rois": 12,
    "dim": 32,
    "depth": 1,
    "heads": 4,
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 4,
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: intra-op threads only add stalls on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of every run of True in a 1-D bool tensor."""
    out, start = [], None
    values = row.tolist()
    for i, v in enumerate([*values, False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


def series_batch(
    b: int = 3, t: int = 80, r: int = 12, trs: tuple[float, ...] = (0.8, 2.0, 1.47), seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, t, r, generator=g),
        "mask": torch.ones(b, t, dtype=torch.bool),
        "roi_mask": torch.ones(b, r, dtype=torch.bool),
        "tr": torch.tensor(trs[:b], dtype=torch.float64),
    }


def test_window_frames_converts_seconds_with_each_tr() -> None:
    tr = torch.tensor([0.735, 0.8, 1.47, 2.0, 2.94, 40.0])
    assert window_frames(tr, 16.0).tolist() == [22, 20, 11, 8, 5, 1]
    with pytest.raises(ValueError, match="window_s"):
        window_frames(tr, 0.0)


@pytest.mark.parametrize("mode", ["per_roi", "shared"])
@pytest.mark.parametrize("window_s", [16.0, 10.0])
def test_masked_windows_are_contiguous_and_of_the_configured_length(
    mode: str, window_s: float
) -> None:
    trs = torch.tensor([0.735, 0.8, 1.47, 2.0, 2.94], dtype=torch.float64)
    b, t, r = trs.numel(), 600, 7
    valid = torch.ones(b, t, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    masked = sample_local_mask(valid, trs, r, window_s=window_s, ratio=0.5, mode=mode, generator=g)
    assert masked.shape == (b, t, r) and masked.dtype == torch.bool
    expected = [max(1, round(window_s / float(tr))) for tr in trs]
    for i in range(b):
        for j in range(r):
            found = runs(masked[i, :, j])
            assert found, f"no masked window for TR {float(trs[i])}"
            assert {length for _, length in found} == {expected[i]}
        frac = masked[i].float().mean().item()
        slot = max(expected[i] + 1, -(-expected[i] // 0.5))
        assert expected[i] / slot - 0.12 < frac <= expected[i] / slot + 1e-6
    if mode == "shared":
        assert torch.equal(masked, masked[:, :, :1].expand_as(masked))
    else:
        assert not torch.equal(masked[:, :, 0], masked[:, :, 1])


def test_no_padded_or_censored_frame_or_absent_roi_is_masked() -> None:
    b, t, r = 4, 300, 9
    trs = torch.tensor([0.8, 2.0, 0.735, 1.47], dtype=torch.float64)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[0, 200:] = False  # padding
    valid[1, 100:] = False
    valid[2, 50:53] = False  # censored frames inside the series
    valid[2, 140] = False
    valid[3, ::37] = False
    roi_mask = torch.ones(b, r, dtype=torch.bool)
    roi_mask[1, 4] = False
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        masked = sample_local_mask(
            valid, trs, r, window_s=16.0, ratio=0.6, roi_mask=roi_mask, generator=g
        )
        assert not (masked & ~valid[:, :, None]).any()
        assert not masked[1, :, 4].any()
        length = window_frames(trs, 16.0)
        for i in range(b):
            for j in range(r):
                for start, n in runs(masked[i, :, j]):
                    # Windows are dropped, never shortened, around invalid frames.
                    assert n == int(length[i])
                    assert valid[i, start : start + n].all()
    assert masked[0].any() and masked[2].any()


def test_mask_is_reproducible_and_validated() -> None:
    valid = torch.ones(2, 100, dtype=torch.bool)
    tr = torch.tensor([1.0, 2.0])
    a = sample_local_mask(valid, tr, 5, generator=torch.Generator().manual_seed(3))
    b = sample_local_mask(valid, tr, 5, generator=torch.Generator().manual_seed(3))
    c = sample_local_mask(valid, tr, 5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="ratio"):
        sample_local_mask(valid, tr, 5, ratio=1.0)
    with pytest.raises(ValueError, match="mode"):
        sample_local_mask(valid, tr, 5, mode="random")  # type: ignore[arg-type]


def _prepared(model: LMAE, batch: dict[str, torch.Tensor], seed: int = 0):
    x, valid, roi_mask, tr = model.encoder.prepare(batch)
    hidden = model.sample_mask(valid, roi_mask, tr, torch.Generator().manual_seed(seed))
    return x, valid, roi_mask, tr, hidden


def test_loss_ignores_unmasked_targets_when_configured() -> None:
    torch.manual_seed(0)
    batch = series_batch()
    batch["mask"][0, 60:] = False
    model = build({**TINY, "loss_on": "masked"}).eval()
    x, valid, roi_mask, tr, hidden = _prepared(model, batch)
    assert hidden.any() and (~hidden & valid[:, :, None]).any()
    with torch.no_grad():
        pred = model.reconstruct(x, valid, roi_mask, tr, hidden)
    weights = model.score_weights(valid, roi_mask, hidden)
    base = reconstruction_loss(pred, x, weights)
    changed = torch.where(hidden, x, x + 5.0 * torch.randn_like(x))
    changed[~valid] = float("nan")  # padded targets may be anything, even NaN
    assert torch.equal(reconstruction_loss(pred, changed, weights), base)
    masked_changed = torch.where(hidden, x + 1.0, x)
    assert not torch.allclose(reconstruction_loss(pred, masked_changed, weights), base)

    # loss_on: all scores every valid entry, still never a padded one.
    model_all = build({**TINY, "loss_on": "all"})
    w_all = model_all.score_weights(valid, roi_mask, hidden)
    assert torch.equal(w_all, valid[:, :, None] & roi_mask[:, None, :])
    base_all = reconstruction_loss(pred, x, w_all)
    assert not torch.allclose(reconstruction_loss(pred, changed.nan_to_num(0.0), w_all), base_all)
    padded_only = x.clone()
    padded_only[~valid] = 7.0
    assert torch.equal(reconstruction_loss(pred, padded_only, w_all), base_all)


def test_forward_loss_is_the_masked_loss_and_encoder_never_sees_masked_values() -> None:
    torch.manual_seed(1)
    batch = series_batch()
    model = build(TINY).eval()
    loss, logs = model.forward_loss(batch, generator=torch.Generator().manual_seed(5))
    x, valid, roi_mask, tr, hidden = _prepared(model, batch, seed=5)
    pred = model.reconstruct(x, valid, roi_mask, tr, hidden)
    manual = reconstruction_loss(pred, x, model.score_weights(valid, roi_mask, hidden))
    torch.testing.assert_close(loss, manual)
    assert set(logs) == {"loss", "mask_ratio", "mse_masked", "mse_visible"}
    assert 0.2 < logs["mask_ratio"] < 0.55
    loss.backward()
    assert model.encoder.embed.weight.grad is not None

    # Hidden values never reach the encoder: changing them leaves the prediction unchanged.
    with torch.no_grad():
        other = torch.where(hidden, x + 3.0 * torch.randn_like(x), x)
        torch.testing.assert_close(model.reconstruct(other, valid, roi_mask, tr, hidden), pred)


def test_padding_never_changes_the_encoding() -> None:
    torch.manual_seed(2)
    model = build(TINY).eval()
    batch = series_batch(t=50)
    padded = {k: v.clone() for k, v in batch.items()}
    extra = 17
    padded["x"] = torch.cat([batch["x"], 100 * torch.randn(3, extra, 12)], dim=1)
    padded["mask"] = torch.cat([batch["mask"], torch.zeros(3, extra, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(padded), model.encode(batch), atol=1e-5, rtol=1e-5)
        tokens, valid = model.encode_tokens(padded)
    assert tokens.shape == (3, 50 + extra, 32) and not valid[:, 50:].any()


def test_lmae_learns_cross_roi_structure() -> None:
    """Twelve ROIs mixing three slow sources: per-ROI local masking is solvable from the
    other ROIs, so 70 steps bring the masked error well below the variance (1)."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    b, t, r = 8, 64, 12
    src = torch.randn(b, t + 8, 3, generator=g)
    src = torch.nn.functional.avg_pool1d(src.transpose(1, 2), 9, stride=1).transpose(1, 2)
    mix = torch.randn(3, r, generator=g)
    batch = {
        "x": src @ mix + 0.05 * torch.randn(b, t, r, generator=g),
        "mask": torch.ones(b, t, dtype=torch.bool),
        "roi_mask": torch.ones(b, r, dtype=torch.bool),
        "tr": torch.full((b,), 1.0, dtype=torch.float64),
    }
    model = build({**TINY, "mask_window_s": 8.0})
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for _ in range(70):
        loss, _ = model.forward_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < 0.35 * first


def test_unpack_series_validates_and_cleans() -> None:
    batch = series_batch(b=2)
    batch["x"][0, 3, 2] = float("nan")
    batch["roi_mask"][1, 5] = False
    x, _, _, tr = unpack_series(batch, 12)
    assert torch.isfinite(x).all() and x[0, 3, 2] == 0 and (x[1, :, 5] == 0).all()
    assert tr.dtype == torch.float32
    with pytest.raises(ValueError, match="n_rois=10"):
        unpack_series(batch, 10)
    with pytest.raises(ValueError, match="'tr'"):
        unpack_series({k: v for k, v in batch.items() if k != "tr"})
    with pytest.raises(ValueError, match="positive"):
        unpack_series({**batch, "tr": torch.tensor([float("nan"), 1.0])})
    empty = unpack_series({**batch, "mask": torch.zeros(2, 80, dtype=torch.bool)})[0]
    assert (empty == 0).all()  # allowed: such a sample is simply all padding
    z = zscore_series(*unpack_series(batch)[:3])
    torch.testing.assert_close(z[0].mean(0), torch.zeros(12), atol=1e-5, rtol=0)


def test_config_checks_and_registry() -> None:
    with pytest.raises(ValueError, match="unknown model keys"):
        build({**TINY, "mask_windw_s": 16.0})
    with pytest.raises(ValueError, match="mask_ratio"):
        LMAEConfig(mask_ratio=0.0)
    with pytest.raises(ValueError, match="loss_on"):
        LMAEConfig(loss_on="visible")  # type: ignore[arg-type]
    model = build_model("lmae", TINY)
    assert isinstance(model, LMAE)
    assert model.hparams == LMAEConfig(**TINY)


def test_load_lmae_folder_round_trip(tmp_path) -> None:
    from safetensors.torch import save_file

    model = build(TINY)
    folder = tmp_path / "lmae"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"name": "x", "kind": "lmae", "model": TINY, "format": "f"})
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    config, state = load_lmae_folder(folder)
    assert config == LMAEConfig(**TINY)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)

    (folder / "config.json").write_text(json.dumps({"kind": "bh_s", "model": {}}))
    with pytest.raises(InputDataError, match="not an 'lmae'"):
        load_lmae_folder(folder)
    with pytest.raises(InputDataError, match=r"config\.json"):
        load_lmae_folder(tmp_path / "missing")
