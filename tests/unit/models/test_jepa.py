"""BrainHarmonix-F: JEPA masks, padding invariance, EMA, multi-TR batches, overfit, YAMLs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from brainharmony.models.jepa import build
from brainharmony.models.masks import JepaMaskConfig, mask_to_index, sample_jepa_masks

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one thread avoids oversubscribing the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**extra: object) -> torch.nn.Module:
    cfg = {
        "n_rois": 12,
        "n_patches": 4,
        "dim": 32,
        "depth": 2,
        "heads": 2,
        "pred_dim": 32,
        "pred_depth": 1,
        "pred_heads": 2,
        "k_base": 8,
        "tau": 8.0,  # k = 8 at TR 1 s, 4 at TR 2 s, 16 at TR 0.5 s
        "use_harmonics": False,
        "use_gradients": False,
        "overflow": "crop",
        **extra,
    }
    return build(cfg)


def _batch(b: int = 4, t: int = 32, r: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, 20:] = False  # item 0: 20 real frames, then padding
    roi_mask = torch.ones(b, r, dtype=torch.bool)
    roi_mask[1, 3] = False  # item 1: ROI 3 without data
    trs = [1.0, 1.0, 2.0, 0.5][:b] + [1.0] * max(0, b - 4)
    return {
        "x": torch.randn(b, t, r, generator=gen),
        "mask": mask,
        "roi_mask": roi_mask,
        "tr": torch.tensor(trs, dtype=torch.float64),
    }


# ----------------------------------------------------------------------------- masks


def _random_valid(gen: torch.Generator, b: int, r: int, p: int) -> torch.Tensor:
    n_t = torch.randint(1, p + 1, (b,), generator=gen)
    cols = torch.arange(p)[None, :] < n_t[:, None]
    rois = torch.rand(b, r, generator=gen) > 0.1
    valid = rois[:, :, None] & cols[:, None, :]
    flat = valid.view(b, -1)
    flat[:, 0] = True
    flat[:, -1] = True  # at least two valid tokens
    return valid


@pytest.mark.parametrize(("r", "p"), [(40, 10), (12, 4), (2, 1), (1, 2), (3, 3)])
def test_masks_are_disjoint_nonempty_subsets_of_valid(r: int, p: int) -> None:
    gen = torch.Generator().manual_seed(r * 100 + p)
    for _ in range(15):
        valid = _random_valid(gen, 6, r, p)
        ctx, tgt = sample_jepa_masks(valid, JepaMaskConfig(), gen)
        assert ctx.shape == tgt.shape == valid.shape
        assert not (ctx & ~valid).any() and not (tgt & ~valid).any()
        assert not (ctx & tgt).any()
        assert ctx.flatten(1).any(1).all() and tgt.flatten(1).any(1).all()


def test_masks_have_cross_roi_and_cross_time_targets() -> None:
    """Some target ROIs are absent from the context at every time; some columns too."""
    gen = torch.Generator().manual_seed(0)
    valid = torch.ones(8, 40, 10, dtype=torch.bool)
    cross_roi = cross_time = 0
    for _ in range(10):
        ctx, tgt = sample_jepa_masks(valid, None, gen)
        for c, t in zip(ctx, tgt, strict=True):
            hidden_rois = t.any(1) & ~c.any(1)
            hidden_cols = t.any(0) & ~c.any(0)
            cross_roi += int(hidden_rois.any())
            cross_time += int(hidden_cols.any())
    assert cross_roi == 80  # every item has a cross-ROI block
    assert cross_time > 20  # cross-time columns in most batches (m can be 0)


def test_masks_seeded_and_error_on_empty_item() -> None:
    valid = torch.ones(2, 10, 5, dtype=torch.bool)
    a = sample_jepa_masks(valid, None, torch.Generator().manual_seed(3))
    b = sample_jepa_masks(valid, None, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    valid[1] = False
    valid[1, 0, 0] = True
    with pytest.raises(ValueError, match=r"item\(s\) \[1\] have fewer than 2 valid tokens"):
        sample_jepa_masks(valid)
    with pytest.raises(ValueError, match="unknown key"):
        JepaMaskConfig.from_mapping({"ratio": 0.5})
    with pytest.raises(ValueError, match="cross_roi_scale"):
        JepaMaskConfig.from_mapping({"cross_roi_scale": [0.7, 0.2]})


def test_mask_to_index() -> None:
    mask = torch.tensor([[False, True, False, True], [True, False, False, False]])
    idx, ok = mask_to_index(mask)
    assert idx.shape == (2, 2)
    assert idx[0].tolist() == [1, 3] and idx[1, 0].item() == 0
    assert ok.tolist() == [[True, True], [True, False]]


# ----------------------------------------------------------------------------- model


def test_padded_values_never_change_outputs_or_loss() -> None:
    torch.manual_seed(0)
    model = _tiny()
    batch = _batch()
    noisy = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["mask"]
    noisy["x"][pad] = 1e4 * torch.randn(int(pad.sum()), 12)
    noisy["x"][1, :, 3] = -1e4  # the ROI without data
    torch.manual_seed(5)
    loss_a, _ = model.forward_loss(batch)
    torch.manual_seed(5)
    loss_b, _ = model.forward_loss(noisy)
    assert torch.equal(loss_a, loss_b)
    tok_a, val_a = model.encode_tokens(batch)
    tok_b, val_b = model.encode_tokens(noisy)
    assert torch.equal(val_a, val_b)
    torch.testing.assert_close(tok_a[val_a], tok_b[val_b], rtol=0, atol=0)
    assert (tok_a[~val_a] == 0).all()
    torch.testing.assert_close(model.encode(batch), model.encode(noisy), rtol=0, atol=0)
    # Item 0 has 20 real frames at TR 1 s (k = 8): patches 0, 1 valid; 2 (4 of 8) and 3 not.
    grid = val_a[0].reshape(12, 4)
    assert grid.all(0).tolist() == [True, True, False, False]
    assert not val_a[1].reshape(12, 4)[3].any()


def test_padding_costs_nothing_and_matches_full_encoding() -> None:
    """Encoding only valid tokens equals encoding the padded grid with a key mask."""
    torch.manual_seed(1)
    model = _tiny()
    batch = _batch()
    tokens, valid = model.encode_tokens(batch)
    enc = model.target_encoder
    emb, emb_valid = enc.embed(batch)
    full = enc(emb, emb_valid)
    torch.testing.assert_close(tokens[valid], full[emb_valid], rtol=1e-5, atol=1e-5)


def test_mixed_tr_batch_items_are_independent() -> None:
    torch.manual_seed(2)
    model = _tiny()
    batch = _batch()
    together = model.encode(batch)
    for i in range(4):
        alone = model.encode({k: v[i : i + 1] for k, v in batch.items()})
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)


def test_ema_schedule_and_update() -> None:
    torch.manual_seed(3)
    model = _tiny(ema=[0.9, 1.0])
    online = next(model.encoder.blocks.parameters())
    target = next(model.target_encoder.blocks.parameters())
    assert torch.equal(online, target) and not target.requires_grad
    with torch.no_grad():
        online.add_(1.0)
    before = target.detach().clone()
    model.after_step(5, 10)  # momentum 0.95
    assert model.momentum == pytest.approx(0.95)
    torch.testing.assert_close(target, 0.95 * before + 0.05 * online.detach())
    model.after_step(10, 10)
    assert model.momentum == pytest.approx(1.0)
    # The target encoder never trains (no dropout/drop-path), even in train mode.
    model.train()
    assert not model.target_encoder.training and model.encoder.training
    assert all(not n.startswith("target_encoder") for n in model.no_weight_decay())
    assert "predictor.mask_token" in model.no_weight_decay()


def test_one_batch_overfit() -> None:
    torch.manual_seed(0)
    model = _tiny()
    batch = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(100):
        torch.manual_seed(123)  # the same masks every step: a fixed regression problem
        loss, logs = model.forward_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step(step + 1, 100)
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0] / 6, losses[::10]
    assert logs["target_tokens"] > 0 and logs["context_tokens"] > 0


def _write_tables(tmp_path: Path, n_rois: int, k: int, g: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    h = tmp_path / "harmonics.tsv"
    gr = tmp_path / "gradients.tsv"
    for path, width, stem in ((h, k, "mode"), (gr, g, "gradient")):
        header = "roi\t" + "\t".join(f"{stem}_{i + 1}" for i in range(width))
        rows = [
            f"ROI_{j + 1}\t" + "\t".join(f"{v:.6g}" for v in rng.normal(size=width))
            for j in range(n_rois)
        ]
        path.write_text("\n".join([header, *rows]) + "\n")
    return h, gr


def test_build_reads_tables_and_checks_keys(tmp_path: Path) -> None:
    h, g = _write_tables(tmp_path, 12, 10, 5)
    model = _tiny(
        use_harmonics=True,
        use_gradients=True,
        harmonics=str(h),
        gradients=str(g),
        n_harmonics=8,
        n_gradients=5,
    )
    assert model.encoder.pos.harmonics.shape == (12, 8)
    loss, _ = model.forward_loss(_batch())
    assert torch.isfinite(loss)
    ablated = _tiny(use_harmonics=False, use_gradients=True, gradients=str(g), n_gradients=5)
    assert ablated.encoder.pos.sources == ("gradients",)
    with pytest.raises(ValueError, match="unknown key"):
        _tiny(mask_ratio=0.5)
    with pytest.raises(ValueError, match="no 'harmonics' table path"):
        _tiny(use_harmonics=True)
    # Rebuilt without the table files: placeholders filled from the state dict.
    rebuilt = _tiny(
        use_harmonics=True,
        use_gradients=True,
        n_harmonics=8,
        n_gradients=5,
        tables_from_state=True,
    )
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.encode(_batch()), model.encode(_batch()))


def _paper_config(name: str) -> dict:
    from brainharmony.train.config import load_config, thaw

    cfg = load_config(REPO / "models" / name)
    assert cfg.kind == "bh_f"
    return thaw(cfg.model)


def test_paper_yaml_builds_at_vit_b_size() -> None:
    model_cfg = _paper_config("bh_f_paper.yaml")
    model_cfg["tables_from_state"] = True  # the geometry tables are not built in unit tests
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build(model_cfg)
    assert model.grid == (400, 18)
    assert model.encoder.dim == 768 and len(model.encoder.blocks.blocks) == 12
    assert model.predictor.pos.dim == 384 and len(model.predictor.blocks.blocks) == 6
    n = sum(p.numel() for p in model.encoder.blocks.parameters())
    assert 84e6 < n < 87e6  # ViT-B


def test_demo_yaml_builds() -> None:
    model_cfg = _paper_config("bh_f_demo.yaml")
    model_cfg["tables_from_state"] = True
    model = build(model_cfg)
    assert model.grid[0] == 400


@pytest.mark.slow
def test_paper_yaml_one_step_on_a_tiny_batch() -> None:
    model_cfg = _paper_config("bh_f_paper.yaml")
    model_cfg["tables_from_state"] = True
    torch.manual_seed(0)
    model = build(model_cfg)
    # One item, 2 patches at TR 0.735 s (96 frames) of 400 ROIs: 800 valid tokens.
    batch = {
        "x": torch.randn(1, 96, 400),
        "mask": torch.ones(1, 96, dtype=torch.bool),
        "roi_mask": torch.ones(1, 400, dtype=torch.bool),
        "tr": torch.tensor([0.735], dtype=torch.float64),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss, _ = model.forward_loss(batch)
    loss.backward()
    opt.step()
    model.after_step(1, 10)
    assert torch.isfinite(loss)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(4)
    plain = _tiny()
    ckpt = _tiny(grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    batch = _batch()
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(9)
        loss, _ = model.forward_loss(batch)
        loss.backward()
        grads.append(model.encoder.tape.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
