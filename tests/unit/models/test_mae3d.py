"""BrainHarmonix-S: the 3D masked autoencoder."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from brainharmony.models.mae3d import (
    MAE3D,
    build,
    patchify,
    sincos_pos_embed_1d,
    sincos_pos_embed_3d,
)
from brainharmony.train.config import load_config, thaw
from brainharmony.train.optim import build_optimizer

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {
    "img_size": [16, 24, 16],
    "patch": 8,
    "dim": 32,
    "depth": 1,
    "heads": 4,
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 4,
}


def test_patchify_order_and_content() -> None:
    x = torch.arange(2 * 1 * 16 * 24 * 16, dtype=torch.float32).reshape(2, 1, 16, 24, 16)
    p = patchify(x, 8)
    assert p.shape == (2, 2 * 3 * 2, 512)
    # token (ix, iy, iz) is the block x[:, :, 8ix:8ix+8, 8iy:..., 8iz:...] flattened (px,py,pz)
    for ix, iy, iz in [(0, 0, 0), (1, 2, 1), (0, 1, 1)]:
        token = (ix * 3 + iy) * 2 + iz
        block = x[1, 0, 8 * ix : 8 * ix + 8, 8 * iy : 8 * iy + 8, 8 * iz : 8 * iz + 8]
        torch.testing.assert_close(p[1, token], block.reshape(-1))
    # Two channels: the channel is the fastest-varying index within a patch.
    x2 = torch.stack([x[:, 0], -x[:, 0]], dim=1)
    p2 = patchify(x2, 8)
    torch.testing.assert_close(p2[..., 0::2], p)
    torch.testing.assert_close(p2[..., 1::2], -p)


def test_sincos_embeddings() -> None:
    e1 = sincos_pos_embed_1d(8, np.arange(5))
    assert e1.shape == (5, 8)
    np.testing.assert_allclose(e1[:, 0], np.sin(np.arange(5)))  # omega_0 = 1
    np.testing.assert_allclose(e1[:, 4], np.cos(np.arange(5)))
    e3 = sincos_pos_embed_3d(32, (2, 3, 4))  # 10 channels per axis, 2 zero channels
    assert e3.shape == (24, 32)
    assert np.all(e3[:, 30:] == 0)
    grid = np.stack(np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    for axis in range(3):
        part = e3[:, axis * 10 : (axis + 1) * 10]
        np.testing.assert_allclose(part, sincos_pos_embed_1d(10, grid[:, axis]))
    # Every token's embedding is distinct.
    assert len({tuple(np.round(r, 8)) for r in e3}) == 24
    with pytest.raises(ValueError, match="too small"):
        sincos_pos_embed_3d(4, (2, 2, 2))


def test_masking_is_per_sample_with_fixed_ratio() -> None:
    torch.manual_seed(0)
    model = MAE3D(**TINY, mask_ratio=0.75)
    keep, masked = model.random_masking(4, torch.device("cpu"))
    n = model.num_tokens
    assert keep.shape == (4, 3) and masked.shape == (4, n - 3)  # round(12 * 0.25) = 3
    for b in range(4):
        assert sorted(keep[b].tolist() + masked[b].tolist()) == list(range(n))
    assert len({tuple(sorted(k.tolist())) for k in keep}) > 1  # differs between samples


def test_loss_only_from_masked_patches() -> None:
    """The loss is the mean squared error of normalised targets over masked patches only."""
    torch.manual_seed(0)
    model = MAE3D(**TINY, mask_ratio=0.5)
    x = torch.randn(2, 1, 16, 24, 16)
    captured: dict[str, torch.Tensor] = {}

    def keep_input(module, inputs, output) -> None:
        captured["decoded"] = inputs[0]

    handle = model.decoder_pred.register_forward_hook(keep_input)
    torch.manual_seed(3)
    _, masked = model.random_masking(2, torch.device("cpu"))
    torch.manual_seed(3)
    loss, logs = model.forward_loss({"x": x})
    handle.remove()
    assert logs == {} and loss.ndim == 0
    assert captured["decoded"].shape[1] == masked.shape[1] == 6  # predictions: masked only
    target = torch.gather(patchify(x, 8), 1, masked[..., None].expand(-1, -1, 512))
    mu = target.mean(-1, keepdim=True)
    sd = torch.sqrt(target.var(-1, unbiased=False, keepdim=True) + 1e-6)
    pred = model.decoder_pred(captured["decoded"])
    torch.testing.assert_close(loss, ((pred - (target - mu) / sd) ** 2).mean())
    # Normalised targets are invariant to a per-patch affine change of intensity.
    patches = patchify(x, 8)
    t = model.target_patches(patches)
    torch.testing.assert_close(model.target_patches(3.0 * patches + 7.0), t, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(t.mean(-1), torch.zeros(t.shape[:2]), rtol=0, atol=1e-5)
    raw = MAE3D(**TINY, norm_pix_loss=False)
    assert raw.target_patches(patches) is patches


def test_masked_voxels_do_not_reach_the_encoder() -> None:
    torch.manual_seed(0)
    model = MAE3D(**TINY, mask_ratio=0.75)
    x = torch.randn(2, 1, 16, 24, 16)
    latents: list[torch.Tensor] = []

    def keep_output(module, inputs, output) -> None:
        latents.append(output)

    model.encoder.register_forward_hook(keep_output)
    torch.manual_seed(5)
    _, masked = model.random_masking(2, torch.device("cpu"))
    # Overwrite every masked patch's voxels.
    p = patchify(x, 8).clone()
    p.scatter_(1, masked[..., None].expand(-1, -1, 512), 100.0)
    y = p.reshape(2, 2, 3, 2, 8, 8, 8, 1).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape)
    torch.testing.assert_close(patchify(y, 8), p)  # the inverse of patchify
    torch.manual_seed(5)
    model.forward_loss({"x": x})
    torch.manual_seed(5)
    model.forward_loss({"x": y})
    torch.testing.assert_close(latents[0], latents[1])


def test_encode_and_tokens() -> None:
    torch.manual_seed(0)
    model = MAE3D(**TINY).eval()
    x = torch.randn(3, 1, 16, 24, 16)
    tokens, valid = model.encode_tokens({"x": x})
    assert tokens.shape == (3, 12, 32) and valid.shape == (3, 12) and bool(valid.all())
    feats = model.encode({"x": x})
    torch.testing.assert_close(feats, tokens.mean(1))
    torch.testing.assert_close(model.encode({"x": x}), feats)  # no randomness
    torch.testing.assert_close(model.encode({"x": x[:1]}), feats[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"expects volumes of shape \(B, 1, 16, 24, 16\)"):
        model.encode({"x": torch.zeros(1, 1, 16, 16, 16)})


def test_build_validates() -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        build({**TINY, "depthh": 2})
    with pytest.raises(ValueError, match="whole number"):
        build({**TINY, "img_size": [20, 24, 16]})
    with pytest.raises(ValueError, match="mask_ratio"):
        build({**TINY, "mask_ratio": 1.0})
    assert build(TINY).no_weight_decay() == {"mask_token"}


def test_one_batch_overfit() -> None:
    """One fixed batch and mask are memorised: the loss falls by more than 10x."""
    torch.manual_seed(0)
    model = MAE3D(**{**TINY, "dim": 64, "decoder_dim": 64, "depth": 2}, mask_ratio=0.5)
    cfg = load_config(REPO / "models" / "bh_s_demo.yaml")
    optimizer = build_optimizer(model, replace(cfg.optim, lr=3e-3, weight_decay=0.0))
    x = torch.randn(2, 1, 16, 24, 16)
    losses = []
    for _ in range(100):
        torch.manual_seed(123)  # the same mask every step
        loss, _ = model.forward_loss({"x": x})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first / 10, (first, last)


def _paper_cfg() -> dict:
    cfg = load_config(REPO / "models" / "bh_s_paper.yaml")
    return thaw(cfg.model)


def test_paper_yaml_is_the_published_size() -> None:
    m = _paper_cfg()
    assert (m["img_size"], m["patch"]) == ([160, 192, 160], 16)
    assert (m["dim"], m["depth"], m["heads"]) == (768, 12, 12)
    assert (m["decoder_dim"], m["decoder_depth"], m["decoder_heads"]) == (512, 8, 16)
    assert m["mask_ratio"] == 0.75
    grid = [s // m["patch"] for s in m["img_size"]]
    assert grid == [10, 12, 10]


def test_paper_model_one_step_on_a_reduced_box() -> None:
    """ViT-B width and depth and the 512/8/16 decoder, on a 32^3 box (8 tokens).

    About 7 s here (building ~110M parameters and one AdamW step dominate).
    """
    began = time.perf_counter()
    torch.manual_seed(0)
    cfg = load_config(REPO / "models" / "bh_s_paper.yaml")
    model = build({**_paper_cfg(), "img_size": [32, 32, 32]})
    n_params = sum(p.numel() for p in model.encoder.parameters())
    assert 84e6 < n_params < 87e6  # ViT-B blocks: ~85M
    optimizer = build_optimizer(model, cfg.optim)
    before = model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    loss, _ = model.forward_loss({"x": torch.randn(1, 1, 32, 32, 32)})
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.encoder.blocks[0].attn.qkv.weight)
    assert time.perf_counter() - began < 120
