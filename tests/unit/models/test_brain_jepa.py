"""Brain-JEPA: shapes, the brain-gradient position embedding, masks, training, YAMLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.models.brain_jepa import build
from brainharmony.models.posemb import RoiTimePosEmbed, sincos_1d
from brainharmony.models.registry import build_model
from brainharmony.train.config import load_config

REPO = Path(__file__).resolve().parents[3]
R, P, K, G = 12, 10, 4, 5


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "gradient.csv"
    np.savetxt(path, np.random.default_rng(0).normal(size=(R, G)), delimiter=",")
    return path


def _tiny(table: Path, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {
        "n_rois": R,
        "n_patches": P,
        "patch": K,
        "dim": 32,
        "depth": 2,
        "heads": 4,
        "gradients": str(table),
        "n_gradients": G,
        "pred_dim": 16,
        "pred_depth": 1,
        "pred_heads": 2,
        **extra,
    }
    return build(cfg).eval()


def test_shapes_and_tensor_or_batch_input(table: Path) -> None:
    model = _tiny(table)
    x = torch.randn(3, P * K, R)
    tokens, valid = model.encode_tokens(x)
    assert tokens.shape == (3, R * P, 32) and bool(valid.all())
    feats = model.encode(x)
    assert feats.shape == (3, 32)
    torch.testing.assert_close(feats, model.encode({"x": x}))
    torch.testing.assert_close(feats, tokens.mean(dim=1))
    cfg = {"n_rois": R, "patch": K, "dim": 32, "depth": 1, "heads": 2, "gradients": str(table)}
    cfg |= {"n_gradients": G, "pred_dim": 16, "pred_heads": 2}
    via_registry = build_model("brain_jepa", cfg)
    assert via_registry.encode(x).shape == (3, 32)


def test_tokens_are_roi_major_patches_of_frames(table: Path) -> None:
    model = _tiny(table)
    enc = model.target_encoder
    x = torch.randn(2, P * K, R)
    tokens, _ = enc.embed({"x": x})
    # Token roi * P + t holds frames t*K .. t*K+K-1 of that ROI.
    roi, t = 7, 3
    expected = enc.patch_embed(x[:, t * K : (t + 1) * K, roi]) + enc.pos()[roi, t]
    torch.testing.assert_close(tokens[:, roi * P + t], expected)


def test_wrong_series_shape_is_refused(table: Path) -> None:
    model = _tiny(table)
    with pytest.raises(ValueError, match=r"shape \(B, 40, 12\).*got \(2, 39, 12\)"):
        model.encode(torch.randn(2, P * K - 1, R))
    with pytest.raises(ValueError, match="got \\(2, 40, 11\\)"):
        model.encode(torch.randn(2, P * K, R - 1))


def test_gradient_position_embedding(table: Path) -> None:
    model = _tiny(table)
    pos = model.encoder.pos
    emb = pos().detach()  # (R, P, D)
    half = 16
    # Time half: the fixed sin-cos of the patch index, the same for every ROI.
    torch.testing.assert_close(emb[:, :, :half], sincos_1d(np.arange(P), half).expand(R, P, half))
    # ROI half: constant over time, min-max rescaled to exactly [-1, 1] over the table.
    roi = emb[:, :, half:]
    torch.testing.assert_close(roi, roi[:, :1].expand(R, P, half))
    assert float(roi.min()) == pytest.approx(-1.0) and float(roi.max()) == pytest.approx(1.0)
    # The gradient table is a buffer, used unscaled, and drives the ROI half.
    grad = np.loadtxt(table, delimiter=",")
    np.testing.assert_allclose(pos.gradients.numpy(), grad, rtol=1e-6)
    raw = pos.proj["gradients"](pos.gradients).detach()
    expected = (raw - raw.min()) / (raw.max() - raw.min()) * 2 - 1
    torch.testing.assert_close(roi[:, 0], expected)
    perm = torch.randperm(R)
    pos.gradients.copy_(pos.gradients[perm])
    torch.testing.assert_close(pos().detach()[:, 0, half:], expected[perm])
    # The predictor has its own projection of the same table.
    assert model.predictor.pos.dim == 16
    np.testing.assert_allclose(model.predictor.pos.gradients.numpy(), grad, rtol=1e-6)


def test_posemb_defaults_unchanged_and_options_checked() -> None:
    table = np.random.default_rng(1).normal(size=(R, G)) * 7.0
    kw = {"use_harmonics": False, "gradients": table}
    plain = RoiTimePosEmbed(16, R, P, **kw)
    assert plain.roi_rescale == "none"
    rms = float(np.sqrt(np.mean(table**2)))
    np.testing.assert_allclose(plain.gradients.numpy(), table / rms, rtol=1e-6)
    with pytest.raises(ValueError, match="roi_rescale must be"):
        RoiTimePosEmbed(16, R, P, roi_rescale="max", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table_scaling must be"):
        RoiTimePosEmbed(16, R, P, table_scaling="z", **kw)  # type: ignore[arg-type]


def test_padded_frames_and_rois_leave_valid_tokens_alone(table: Path) -> None:
    model = _tiny(table)
    x = torch.randn(2, P * K, R)
    mask = torch.ones(2, P * K, dtype=torch.bool)
    mask[0, -3:] = False  # the last patch of item 0 has padded frames
    roi_mask = torch.ones(2, R, dtype=torch.bool)
    roi_mask[1, 4] = False
    tokens, valid = model.encode_tokens({"x": x, "mask": mask, "roi_mask": roi_mask})
    grid = valid.reshape(2, R, P)
    assert not bool(grid[0, :, -1].any()) and bool(grid[0, :, :-1].all())
    assert not bool(grid[1, 4].any()) and int(grid[1].sum()) == (R - 1) * P
    y = x.clone()
    y[0, -3:] = 100.0
    y[1, :, 4] = -50.0
    again, _ = model.encode_tokens({"x": y, "mask": mask, "roi_mask": roi_mask})
    torch.testing.assert_close(again[valid], tokens[valid])
    assert float(again[~valid].abs().max()) == 0.0


def test_jepa_step_trains_and_ema_moves(table: Path) -> None:
    model = _tiny(table).train()
    x = torch.randn(4, P * K, R, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = model.target_encoder.patch_embed.weight.clone()
    for step in range(3):
        torch.manual_seed(step)
        loss, logs = model.forward_loss({"x": x})
        assert torch.isfinite(loss) and logs["target_tokens"] > 0
        opt.zero_grad()
        loss.backward()
        assert model.encoder.pos.proj["gradients"].weight.grad is not None
        opt.step()
        model.after_step(step, 3)
    assert not torch.equal(before, model.target_encoder.patch_embed.weight)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_bad_configs(tmp_path: Path, table: Path) -> None:
    with pytest.raises(ValueError, match="no 'gradients' table path"):
        build({"n_rois": R})
    with pytest.raises(ValueError, match="unknown key"):
        build({"gradients": str(table), "tau": 1.0})
    with pytest.raises(InputDataError, match="has 12 ROI rows; the model expects 450"):
        build({"gradients": str(table), "n_gradients": G})
    with pytest.raises(ValueError, match="multiple of 4"):
        _tiny(table, dim=30, heads=3)


def test_yamls_build(table: Path, tmp_path: Path) -> None:
    paper = load_config(REPO / "models" / "brain_jepa_paper.yaml")
    assert paper.kind == "brain_jepa" and paper.train.global_batch == 512
    with torch.device("meta"):
        big = build_model("brain_jepa", {**paper.model, "tables_from_state": True})
    enc = sum(p.numel() for p in big.encoder.parameters())
    assert 85_000_000 < enc < 87_000_000  # ViT-B
    assert big.grid == (450, 10) and big.encoder.n_frames == 160
    demo = load_config(REPO / "models" / "brain_jepa_demo.yaml")
    wide = tmp_path / "g.npy"
    np.save(wide, np.random.default_rng(2).normal(size=(400, 20)))
    model = build_model("brain_jepa", {**demo.model, "gradients": str(wide)})
    assert model.encode(torch.randn(1, demo.data["window"], 400)).shape == (1, demo.model["dim"])


def test_the_trainer_runs_the_kind_on_packed_series(table: Path, tmp_path: Path) -> None:
    import pandas as pd

    from brainharmony.packing import pack_series
    from brainharmony.train.config import config_from_mapping
    from brainharmony.train.data import build_dataset
    from brainharmony.train.loop import train
    from brainharmony.train.metrics import read_metrics

    rng = np.random.default_rng(3)
    rows = []
    for i, n in enumerate((40, 52, 37, 45)):  # 37 < 40 frames: the last patch is padding
        path = tmp_path / f"s{i}.npy"
        np.save(path, rng.standard_normal((n, R)).astype(np.float32))
        rows.append({"subject": f"s{i}", "session": "n/a", "run": "n/a", "tr": 2.0, "path": path})
    pack_series(pd.DataFrame(rows), tmp_path / "ser.npy", tmp_path / "ser.tsv")
    model = {"n_rois": R, "patch": K, "dim": 32, "depth": 1, "heads": 2, "gradients": str(table),
             "n_gradients": G, "pred_dim": 16, "pred_depth": 1, "pred_heads": 2}  # fmt: skip
    cfg = config_from_mapping(
        {
            "name": "bj_toy",
            "kind": "brain_jepa",
            "model": model,
            "optim": {"lr": 1e-3, "warmup_steps": 1},
            "train": {"steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 2},
            "data": {"kind": "series", "window": P * K},
        }
    )
    ds = build_dataset(cfg.data, [(tmp_path / "ser.npy", tmp_path / "ser.tsv")])
    train(cfg, ds, tmp_path / "out", tmp_path / "state", progress=False)
    logs = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in logs] == [1, 2] and all(np.isfinite(r["loss"]) for r in logs)
    assert (tmp_path / "out" / "model.safetensors").is_file()
