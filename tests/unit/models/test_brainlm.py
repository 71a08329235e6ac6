"""BrainLM: shapes, determinism, masking, the masked-only loss, coordinates, training, YAMLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.models.brainlm import build, read_coordinates, reconstruction_loss
from brainharmony.models.posemb import sincos_1d
from brainharmony.models.registry import build_model
from brainharmony.train.config import load_config

REPO = Path(__file__).resolve().parents[3]
R, P, K = 12, 4, 5  # parcels, patches a parcel, frames a patch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def coords(tmp_path: Path) -> Path:
    """A coordinate table as the atlas writes it: names first, then x, y, z (mm)."""
    xyz = np.random.default_rng(0).uniform(-60, 60, size=(R, 3))
    lines = ["index\tname\tx\ty\tz"]
    lines += [f"{i + 1}\tP{i}\t{a:.3f}\t{b:.3f}\t{c:.3f}" for i, (a, b, c) in enumerate(xyz)]
    path = tmp_path / "coords.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tiny(coords: Path, seed: int = 0, **extra: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = {"n_rois": R, "n_patches": P, "patch": K, "dim": 32, "depth": 2, "heads": 4,
           "dec_dim": 16, "dec_depth": 1, "dec_heads": 2, "coords": str(coords)}  # fmt: skip
    cfg.update(extra)
    return build(cfg).eval()


def test_shapes_pooling_and_registry(coords: Path) -> None:
    model = _tiny(coords)
    x = torch.randn(3, P * K, R)
    tokens, valid = model.encode_tokens(x)
    assert tokens.shape == (3, R * P, 32) and bool(valid.all())
    feats = model.encode(x)
    assert feats.shape == (3, 32)
    torch.testing.assert_close(feats, model.encode({"x": x}))
    torch.testing.assert_close(feats, model(x))
    assert not torch.allclose(feats, tokens.mean(dim=1))  # CLS, not the mean
    mean = _tiny(coords, pool="mean")
    torch.testing.assert_close(mean.encode(x), mean.encode_tokens(x)[0].mean(dim=1))
    via_registry = build_model("brainlm", {"n_rois": R, "n_patches": P, "patch": K, "dim": 16,
                                           "depth": 1, "heads": 2, "dec_dim": 8, "dec_depth": 1,
                                           "dec_heads": 2, "coords": str(coords)})  # fmt: skip
    assert via_registry.encode(x).shape == (3, 16)
    with pytest.raises(ValueError, match=r"expects ROI series of shape \(B, 20, 12\)"):
        model.encode(torch.randn(1, 21, R))


def test_same_seed_same_model_same_output(coords: Path) -> None:
    x = torch.randn(2, P * K, R)
    a, b, c = _tiny(coords, seed=5), _tiny(coords, seed=5), _tiny(coords, seed=6)
    torch.testing.assert_close(a.encode(x), b.encode(x), rtol=0, atol=0)
    assert not torch.allclose(a.encode(x), c.encode(x))
    for m in (a, b):
        m.train()
    torch.manual_seed(1)
    la, _ = a.forward_loss({"x": x})
    torch.manual_seed(1)
    lb, _ = b.forward_loss({"x": x})
    assert la.item() == lb.item() and la.requires_grad


@pytest.mark.parametrize(("ratio", "n_masked"), [(0.2, 10), (0.75, 36), (0.5, 24)])
def test_the_masking_ratio_is_exact(coords: Path, ratio: float, n_masked: int) -> None:
    """``floor(N (1 - r))`` tokens kept per item (N = 48), the rest masked, whatever noise."""
    model = _tiny(coords, mask_ratio=ratio)
    x = torch.randn(4, P * K, R)
    torch.manual_seed(0)
    pred, target, masked, valid = model.reconstruct(x)
    assert pred.shape == target.shape == (4, R * P, K) and bool(valid.all())
    assert masked.sum(dim=1).tolist() == [n_masked] * 4
    assert len({tuple(m.nonzero().flatten().tolist()) for m in masked}) == 4  # per item
    torch.testing.assert_close(target, x.transpose(1, 2).reshape(4, R * P, K))  # parcel-major
    _, logs = model.forward_loss({"x": x})
    assert logs == {"visible_tokens": R * P - n_masked, "masked_tokens": n_masked}


def test_invalid_tokens_are_never_kept_nor_in_the_loss(coords: Path) -> None:
    model = _tiny(coords)
    x = torch.randn(2, P * K, R)
    frames_ok = torch.ones(2, P * K, dtype=torch.bool)
    frames_ok[1, -K:] = False  # item 1: its last patch is padding
    batch = {"x": x, "mask": frames_ok}
    torch.manual_seed(0)
    _, _, masked, valid = model.reconstruct(batch)
    assert int((~valid[1]).sum()) == R and not bool(masked[1][~valid[1]].any())
    assert masked.sum(dim=1).tolist() == [48 - 38, 36 - 28]  # of the valid tokens
    torch.manual_seed(0)
    loss, _ = model.forward_loss(batch)
    padded = x.clone()
    padded[1, -K:] += 1e4
    torch.manual_seed(0)
    again, _ = model.forward_loss({"x": padded, "mask": frames_ok})
    assert loss.item() == again.item()


def test_the_loss_reads_the_masked_tokens_targets_only(coords: Path) -> None:
    """Changing the visible tokens' targets leaves the loss unchanged; changing a masked
    token's target changes it; the loss is the mean squared error of the masked frames."""
    model = _tiny(coords)
    x = torch.randn(2, P * K, R)
    noise = torch.rand(2, R * P)
    with torch.no_grad():
        pred, target, masked, valid = model.reconstruct(x, noise)
    loss = reconstruction_loss(pred, target, masked & valid)
    want = ((pred - target) ** 2)[masked].mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(model.forward_loss({"x": x}, noise)[0], loss)
    moved = target.clone()
    moved[~masked] += 100.0
    assert float(reconstruction_loss(pred, moved, masked & valid)) == float(loss)
    one = target.clone()
    one[masked.nonzero()[0].tolist()[0], masked.nonzero()[0].tolist()[1]] += 1.0
    assert float(reconstruction_loss(pred, one, masked & valid)) != float(loss)


def test_visible_inputs_reach_the_predictions_of_masked_tokens(coords: Path) -> None:
    """The masked tokens' predictions depend on the visible tokens (through the encoder)
    and not on the masked tokens' own frames (the encoder never sees them)."""
    model = _tiny(coords)
    x = torch.randn(1, P * K, R)
    noise = torch.rand(1, R * P)
    pred, _, masked, _ = model.reconstruct(x, noise)
    frames = x.transpose(1, 2).reshape(1, R * P, K).clone()
    frames[masked] += 50.0
    hidden = frames.reshape(1, R, P * K).transpose(1, 2)
    again, _, _, _ = model.reconstruct(hidden, noise)
    torch.testing.assert_close(pred, again, rtol=0, atol=0)
    frames[~masked] += 1.0
    moved = frames.reshape(1, R, P * K).transpose(1, 2)
    assert not torch.allclose(model.reconstruct(moved, noise)[0][masked], pred[masked])


def test_positions_coordinates_and_time(coords: Path) -> None:
    """Position = Linear(3) of the parcel's coordinates + sin-cos of the patch index: the
    same parcel in two patches differs by the time code only."""
    model = _tiny(coords)
    enc = model.encoder
    want = read_coordinates(coords, R)
    np.testing.assert_allclose(enc.coords.numpy(), want, rtol=1e-6)
    pos = enc.pos(enc.coords).reshape(R, P, -1)
    time = sincos_1d(np.arange(P), 32)
    torch.testing.assert_close(pos[3, 2] - pos[3, 0], time[2] - time[0])
    space = enc.pos.xyz(enc.coords)
    torch.testing.assert_close(pos[:, 1] - space, time[1].expand(R, -1))
    assert "encoder.coords" in model.state_dict()  # saved weights carry the coordinates


def test_coordinate_tables_and_errors(tmp_path: Path, coords: Path) -> None:
    dat = tmp_path / "A.dat"  # as BrainLM's A424_Coordinates.dat: index X Y Z, no header
    dat.write_text("1\t14\t-78\t4\n2\t44\t-64\t4\n")
    np.testing.assert_array_equal(read_coordinates(dat, 2), [[14, -78, 4], [44, -64, 4]])
    npy = tmp_path / "c.npy"
    np.save(npy, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(read_coordinates(npy, 2), [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(InputDataError, match="has 12 parcel rows; the model expects 424"):
        build({"coords": str(coords)})
    with pytest.raises(InputDataError, match="not found"):
        read_coordinates(tmp_path / "none.tsv", 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,z\n1,2,zz\n")
    with pytest.raises(InputDataError, match="expected x, y, z columns"):
        read_coordinates(bad, 1)
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not numpy")
    with pytest.raises(InputDataError, match="unreadable coordinate array"):
        read_coordinates(broken, 1)
    with pytest.raises(ValueError, match="gives 400 parcels; the model has n_rois 12"):
        read_coordinates("schaefer400", 12)
    with pytest.raises(ValueError, match="no 'coords' is given"):
        build({"n_rois": R})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['gradients'\]"):
        build({"gradients": "g.tsv"})
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        _tiny(coords, mask_ratio=1.0)
    with pytest.raises(ValueError, match="pool must be one of"):
        _tiny(coords, pool="max")
    from_state = build({"n_rois": R, "n_patches": P, "patch": K, "dim": 32, "depth": 2,
                        "heads": 4, "dec_dim": 16, "dec_depth": 1, "dec_heads": 2,
                        "tables_from_state": True})  # fmt: skip
    trained = _tiny(coords)
    from_state.load_state_dict(trained.state_dict())
    x = torch.randn(2, P * K, R)
    torch.testing.assert_close(from_state.eval().encode(x), trained.encode(x))


def _structured(n: int, rng: np.random.Generator) -> torch.Tensor:
    """Series with structure: every parcel carries the item's sinusoid (random phase and
    frequency per item) plus a little noise, so a masked patch is predictable from the
    visible patches of the same time (and from its parcel's other patches)."""
    t = np.arange(P * K)[None, :, None]
    freq = rng.uniform(0.05, 0.2, size=(n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    x = np.sin(2 * np.pi * freq * t + phase) + 0.05 * rng.standard_normal((n, P * K, R))
    return torch.from_numpy(x.astype(np.float32))


def test_a_tiny_pretraining_run_lowers_the_reconstruction_loss(coords: Path) -> None:
    """Held-out masked MSE (fixed masks) falls to below half its start and below the MSE of
    predicting zeros (the series' variance, ~0.5): the model learned the structure.
    Coordinates in decimetres (``coords_scale_mm: 100``, as the YAMLs): with raw
    millimetres this model stays at the zero predictor's loss for these 300 steps."""
    rng = np.random.default_rng(0)
    train_x, held_x = _structured(64, rng), _structured(16, rng)
    model = _tiny(coords, mask_ratio=0.5, dropout=0.0, coords_scale_mm=100.0)
    noise = torch.rand(16, R * P, generator=torch.Generator().manual_seed(9))

    def held_out() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            pred, target, masked, valid = model.reconstruct(held_x, noise)
            zeros = reconstruction_loss(torch.zeros_like(pred), target, masked & valid)
            return float(reconstruction_loss(pred, target, masked & valid)), float(zeros)

    before, zero_mse = held_out()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    for _ in range(300):
        model.train()
        idx = torch.from_numpy(rng.choice(64, size=16, replace=False))
        loss, _ = model.forward_loss({"x": train_x[idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, _ = held_out()
    print(f"held-out masked MSE {before:.4f} -> {after:.4f} (zeros: {zero_mse:.4f})")
    assert after < 0.5 * before and after < 0.85 * zero_mse, (before, after, zero_mse)


def test_yamls_build(tmp_path: Path) -> None:
    paper = load_config(REPO / "models" / "brainlm_paper.yaml")
    assert paper.kind == "brainlm" and paper.train.global_batch == 256
    assert paper.data["window"] == paper.model["n_patches"] * paper.model["patch"] == 200
    big = build_model("brainlm", {**paper.model, "tables_from_state": True})
    assert (big.encoder.dim, len(big.encoder.blocks.blocks), big.mask_ratio) == (256, 4, 0.2)
    assert big.encoder.blocks.blocks[0].mlp.fc1.out_features == 1024
    assert len(big.decoder.blocks.blocks) == 2 and big.decoder.embed.out_features == 256
    demo = load_config(REPO / "models" / "brainlm_demo.yaml")
    assert demo.model["coords"] == "schaefer400" and demo.model["n_rois"] == 400
    model = build_model("brainlm", {**demo.model, "tables_from_state": True})
    assert model.encode(torch.randn(1, demo.data["window"], 400)).shape == (1, demo.model["dim"])


def test_the_trainer_runs_the_kind_on_packed_series(coords: Path, tmp_path: Path) -> None:
    import pandas as pd

    from brainharmony.packing import pack_series
    from brainharmony.train.checkpoint import load_trained
    from brainharmony.train.config import config_from_mapping
    from brainharmony.train.data import build_dataset
    from brainharmony.train.loop import train
    from brainharmony.train.metrics import read_metrics

    rng = np.random.default_rng(3)
    rows = []
    for i, n in enumerate((20, 26, 17, 23)):  # 17 < 20 frames: the last patch is padding
        path = tmp_path / f"s{i}.npy"
        np.save(path, rng.standard_normal((n, R)).astype(np.float32))
        rows.append({"subject": f"s{i}", "session": "n/a", "run": "n/a", "tr": 2.0, "path": path})
    pack_series(pd.DataFrame(rows), tmp_path / "ser.npy", tmp_path / "ser.tsv")
    model = {"n_rois": R, "n_patches": P, "patch": K, "dim": 16, "depth": 1, "heads": 2,
             "dec_dim": 8, "dec_depth": 1, "dec_heads": 2, "coords": str(coords)}  # fmt: skip
    cfg = config_from_mapping(
        {
            "name": "lm_toy",
            "kind": "brainlm",
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
    assert load_trained(tmp_path / "out").encode(torch.randn(1, P * K, R)).shape == (1, 16)
