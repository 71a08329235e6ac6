"""Harmonizer: padding invariance, modality weights, ablations, overfit, token files, YAMLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.models.harmonizer import build, normalise_tokens
from brainharmony.models.harmonizer_data import (
    FusedDataset,
    read_token_file,
    read_token_index,
    write_token_file,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**extra: object) -> torch.nn.Module:
    cfg = {
        "f_dim": 16,
        "s_dim": 24,
        "f_grid": [6, 3],
        "s_grid": [2, 2, 2],
        "dim": 32,
        "depth": 2,
        "heads": 2,
        "dec_dim": 32,
        "dec_depth": 1,
        "dec_heads": 2,
        "n_hubs": 4,
        **extra,
    }
    return build(cfg)


def _batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, 18, dtype=torch.bool)
    valid[0, 9:] = False  # item 0: 3 of 6 ROIs' tokens padded
    valid[1, 2::3] = False  # item 1: the last time patch padded
    f = torch.randn(b, 18, 16, generator=gen)
    f[~valid] = 0.0
    return {"f_tokens": f, "f_valid": valid, "s_tokens": torch.randn(b, 8, 24, generator=gen)}


def test_padded_f_tokens_never_change_outputs_or_loss() -> None:
    torch.manual_seed(0)
    model = _tiny()
    batch = _batch()
    noisy = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["f_valid"]
    noisy["f_tokens"][pad] = 1e4 * torch.randn(int(pad.sum()), 16)
    loss_a, logs_a = model.forward_loss(batch)
    loss_b, logs_b = model.forward_loss(noisy)
    assert torch.equal(loss_a, loss_b) and logs_a == logs_b
    assert torch.equal(model.encode(batch), model.encode(noisy))
    # Padding costs nothing: the item alone (same valid tokens) gives the same features.
    alone = model.encode({k: v[:1] for k, v in batch.items()})
    torch.testing.assert_close(model.encode(batch)[:1], alone, rtol=1e-5, atol=1e-6)


def test_loss_weights_are_explicit() -> None:
    torch.manual_seed(1)
    batch = _batch()
    base = _tiny()
    loss, logs = base.forward_loss(batch)
    assert loss.item() == pytest.approx(logs["loss_f"] + logs["loss_s"], rel=1e-6)
    weighted = _tiny(weight_f=0.25, weight_s=2.0)
    weighted.load_state_dict(base.state_dict())
    loss_w, logs_w = weighted.forward_loss(batch)
    assert logs_w == pytest.approx(logs)
    assert loss_w.item() == pytest.approx(0.25 * logs["loss_f"] + 2.0 * logs["loss_s"], rel=1e-6)


def test_f_loss_is_a_mean_over_valid_tokens_only() -> None:
    """Reconstruct by hand: MSE against normalised targets at valid tokens, per item."""
    torch.manual_seed(2)
    model = _tiny(use_s=False)
    batch = _batch()
    _, logs = model.forward_loss(batch)
    hubs, _ = model.encode_tokens(batch)
    per_item = []
    for i in range(3):
        idx = torch.nonzero(batch["f_valid"][i]).flatten()[None]
        pred = model.f_decoder(hubs[i : i + 1], idx, torch.ones_like(idx, dtype=torch.bool))
        target = normalise_tokens(batch["f_tokens"][i, idx[0]])[None]
        per_item.append(((pred - target) ** 2).mean())
    assert logs["loss_f"] == pytest.approx(torch.stack(per_item).mean().item(), rel=1e-5)


def test_ablations_and_errors() -> None:
    batch = _batch()
    f_only = _tiny(use_s=False)
    assert not hasattr(f_only, "s_decoder")
    loss, logs = f_only.forward_loss({k: batch[k] for k in ("f_tokens", "f_valid")})
    assert set(logs) == {"loss_f"} and torch.isfinite(loss)
    s_only = _tiny(use_f=False, n_hubs=2)
    _, logs = s_only.forward_loss({"s_tokens": batch["s_tokens"]})
    assert set(logs) == {"loss_s"}
    assert s_only.encode_tokens(batch)[0].shape == (3, 2, 32)
    with pytest.raises(ValueError, match="both false"):
        _tiny(use_f=False, use_s=False)
    with pytest.raises(ValueError, match=r"f_tokens must have shape \(B, 18, 16\)"):
        _tiny().forward_loss({**batch, "f_tokens": batch["f_tokens"][:, :10]})
    with pytest.raises(ValueError, match="no 's_tokens'"):
        _tiny().forward_loss({k: batch[k] for k in ("f_tokens", "f_valid")})
    with pytest.raises(ValueError, match="unknown key"):
        _tiny(mask_ratio=0.75)
    assert {"hubs", "f_modality", "f_decoder.mask_token"} <= _tiny().no_weight_decay()


def test_reconstruction_depends_on_inputs_only_through_hubs() -> None:
    """Decoders take the hubs alone: with hubs fixed, the inputs cannot matter."""
    torch.manual_seed(3)
    model = _tiny()
    batch = _batch()
    hubs, _ = model.encode_tokens(batch)
    hubs = hubs.detach().requires_grad_(True)
    idx = torch.arange(18).expand(3, -1)
    pred = model.f_decoder(hubs, idx, batch["f_valid"])
    pred[batch["f_valid"]].sum().backward()
    assert hubs.grad is not None and hubs.grad.abs().sum() > 0
    # Encoder outputs at the hubs do depend on both modalities.
    other = {**batch, "s_tokens": batch["s_tokens"] + 1.0}
    assert not torch.allclose(model.encode(batch), model.encode(other))


def test_one_batch_overfit() -> None:
    torch.manual_seed(0)
    model = _tiny()
    batch = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss, _ = model.forward_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, losses[::10]


# ----------------------------------------------------------------------------- data


def _write_files(tmp_path: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        valid = np.ones(18, dtype=bool)
        valid[12:] = i != 1
        name = f"sub-{i:02d}_tokens.npz"
        write_token_file(
            tmp_path / "tok" / name,
            f_tokens=rng.normal(size=(18, 16)),
            f_valid=valid,
            s_tokens=rng.normal(size=(8, 24)),
        )
        rows.append(
            {
                "subject": f"{i:02d}",
                "session": "n/a",
                "path": name,
                "f_run": "1",
                "f_tr": 2.0,
                "f_valid_tokens": int(valid.sum()),
                "s_session": "n/a",
                "age": 20.0 + i if i != 2 else np.nan,
            }
        )
    index = tmp_path / "tok" / "index.tsv"
    pd.DataFrame(rows).to_csv(index, sep="\t", index=False, na_rep="n/a")
    return index


def test_token_files_round_trip_into_batches(tmp_path: Path) -> None:
    index = _write_files(tmp_path)
    data = read_token_file(tmp_path / "tok" / "sub-01_tokens.npz")
    assert data["f_tokens"].dtype == np.float16 and data["f_valid"].sum() == 12
    assert (data["f_tokens"][~data["f_valid"]] == 0).all()
    frame = read_token_index(index)
    assert frame["subject"].tolist() == ["00", "01", "02"] and Path(frame["path"][0]).is_absolute()
    ds = FusedDataset(index, rows=[0, 1, 2], targets=["age"])
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch["f_tokens"].shape == (3, 18, 16) and batch["f_tokens"].dtype == torch.float32
    assert batch["s_tokens"].shape == (3, 8, 24)
    assert batch["f_valid"].sum(1).tolist() == [18, 12, 18]
    assert batch["age"][:2].tolist() == [20.0, 21.0] and torch.isnan(batch["age"][2])
    loss, _ = _tiny().forward_loss(batch)
    assert torch.isfinite(loss)


def test_trainer_builds_the_fused_dataset(tmp_path: Path) -> None:
    from brainharmony.train.data import build_dataset

    index = _write_files(tmp_path)
    ds = build_dataset({"kind": "fused", "targets": ["age"]}, [(None, index)])
    assert isinstance(ds, FusedDataset) and len(ds) == 3 and "age" in ds[0]


def test_token_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not finite in float16"):
        write_token_file(
            tmp_path / "x.npz",
            f_tokens=np.full((2, 3), 1e6),
            f_valid=np.ones(2, bool),
            s_tokens=np.zeros((1, 3)),
        )
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(ValueError, match="token shapes"):
        write_token_file(
            tmp_path / "x.npz", f_tokens=np.zeros((2, 3)), f_valid=np.ones(3), s_tokens=np.zeros(3)
        )
    np.savez(tmp_path / "bad.npz", f_tokens=np.zeros((2, 3)))
    with pytest.raises(InputDataError, match="lacks array"):
        read_token_file(tmp_path / "bad.npz")
    with pytest.raises(InputDataError, match="not found"):
        FusedDataset(tmp_path / "missing.tsv")
    index = _write_files(tmp_path)
    with pytest.raises(InputDataError, match="no target column 'iq'"):
        FusedDataset(index, targets=["iq"])


# ----------------------------------------------------------------------------- YAMLs


def _model_cfg(name: str) -> dict:
    from brainharmony.train.config import load_config, thaw

    cfg = load_config(REPO / "models" / name)
    assert cfg.kind == "harmonizer" and cfg.data["kind"] == "fused"
    return thaw(cfg.model)


def test_paper_yaml_builds_at_vit_b_size() -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build(_model_cfg("harmonizer_paper.yaml"))
    assert model.n_f == 7200 and model.n_s == 1200 and model.n_hubs == 128
    n = sum(p.numel() for p in model.encoder.parameters())
    assert 84e6 < n < 87e6  # ViT-B
    assert len(model.f_decoder.blocks.blocks) == 8 and model.f_decoder.head.in_features == 512


def test_demo_yaml_matches_the_demo_encoders() -> None:
    from brainharmony.train.config import load_config

    harm = _model_cfg("harmonizer_demo.yaml")
    f_cfg = load_config(REPO / "models" / "bh_f_demo.yaml").model
    s_cfg = load_config(REPO / "models" / "bh_s_demo.yaml").model
    assert harm["f_dim"] == f_cfg["dim"]
    assert harm["f_grid"] == [f_cfg["n_rois"], f_cfg["n_patches"]]
    assert harm["s_dim"] == s_cfg["dim"]
    # Both follow the anatomy stage's box: the workflow passes the grid for s_grid: auto.
    assert s_cfg["img_size"] == "auto" and harm["s_grid"] == "auto"
    from brainharmony.planning.train import harmonizer_sets, plan_from_config, volume_grid
    from tests.workflow_config import with_schema_defaults

    plan = plan_from_config(with_schema_defaults({}), str(REPO))
    box = (160, 192, 160)
    assert volume_grid(plan.yaml("bh_s"), box, 2) == [5, 6, 5]
    assert volume_grid(plan.yaml("bh_s"), box, 1) == [10, 12, 10]
    assert harmonizer_sets(plan, box, 1) == "--set 'model.s_grid=[10, 12, 10]'"
    assert build({**harm, "s_grid": [5, 6, 5]}).n_hubs == 16


@pytest.mark.slow
def test_paper_yaml_one_step_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = build(_model_cfg("harmonizer_paper.yaml"))
    valid = torch.zeros(1, 7200, dtype=torch.bool)
    valid[0, :36] = True  # 36 valid F tokens: padding is dropped before the encoder
    batch = {
        "f_tokens": torch.randn(1, 7200, 768),
        "f_valid": valid,
        "s_tokens": torch.randn(1, 1200, 768),
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss, logs = model.forward_loss(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and set(logs) == {"loss_f", "loss_s"}
