"""Masked attention, transformer blocks and the padded-token invariance they promise."""

from __future__ import annotations

import pytest
import torch

from brainharmony.models.attention import attention, attention_reference
from brainharmony.models.blocks import Block, DropPath, Encoder, init_vit_weights


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _qkv(b: int, h: int, nq: int, nk: int, dh: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, dh, generator=g, dtype=dtype)
    k = torch.randn(b, h, nk, dh, generator=g, dtype=dtype)
    v = torch.randn(b, h, nk, dh, generator=g, dtype=dtype)
    return q, k, v


def _valid(b: int, n: int, seed: int = 1) -> torch.Tensor:
    """Scattered (not only trailing) padding; every sample keeps at least one token."""
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(b, n, generator=g) > 0.4
    valid[:, 0] = True
    return valid


@pytest.mark.parametrize("nq", [7, 11])
def test_attention_matches_reference(nq: int) -> None:
    q, k, v = _qkv(3, 2, nq, 11, 8)
    valid = _valid(3, 11)
    torch.testing.assert_close(attention(q, k, v, valid), attention_reference(q, k, v, valid))
    torch.testing.assert_close(attention(q, k, v), attention_reference(q, k, v))
    # valid=None is the all-valid mask.
    ones = torch.ones(3, 11, dtype=torch.bool)
    torch.testing.assert_close(attention(q, k, v, ones), attention(q, k, v))


def test_reference_is_the_textbook_formula() -> None:
    q, k, v = _qkv(1, 1, 2, 3, 4)
    valid = torch.tensor([[True, False, True]])
    scores = (q[0, 0] @ k[0, 0].T) / 2.0  # sqrt(Dh) = 2
    scores[:, 1] = float("-inf")
    expected = scores.softmax(-1) @ v[0, 0]
    torch.testing.assert_close(attention_reference(q, k, v, valid)[0, 0], expected)


def test_padded_keys_never_change_outputs() -> None:
    q, k, v = _qkv(4, 2, 9, 9, 8)
    valid = _valid(4, 9)
    out = attention(q, k, v, valid)
    # Overwrite padded keys/values with large random values.
    noise = torch.randn_like(k) * 100
    pad = ~valid[:, None, :, None].expand_as(k)
    k2 = torch.where(pad, noise, k)
    v2 = torch.where(pad, -noise, v)
    out2 = attention(q, k2, v2, valid)
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-12)


def test_sample_without_valid_keys_gives_zeros() -> None:
    q, k, v = _qkv(2, 2, 5, 5, 4)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1] = False
    out = attention(q, k, v, valid)
    assert torch.isfinite(out).all()
    assert torch.all(out[1] == 0)
    torch.testing.assert_close(out[0:1], attention(q[0:1], k[0:1], v[0:1]))
    torch.testing.assert_close(out, attention_reference(q, k, v, valid))


def test_attention_validates_inputs() -> None:
    q, k, v = _qkv(2, 2, 5, 5, 4)
    with pytest.raises(ValueError, match="bool"):
        attention(q, k, v, torch.ones(2, 5))
    with pytest.raises(ValueError, match="expected"):
        attention(q, k, v, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, H, N, Dh\)"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=1.0)


def _perturb_padded(x: torch.Tensor, valid: torch.Tensor, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype) * 50
    return torch.where(valid[..., None], x, noise)


@pytest.mark.parametrize("module_kind", ["block", "encoder"])
def test_padded_tokens_never_change_valid_outputs(module_kind: str) -> None:
    torch.manual_seed(0)
    dim = 32
    if module_kind == "block":
        model = Block(dim, heads=4)
    else:
        model = Encoder(dim, depth=2, heads=4)
    model.apply(init_vit_weights)
    model.eval()
    x = torch.randn(3, 10, dim)
    valid = _valid(3, 10, seed=3)
    out = model(x, valid)
    out2 = model(_perturb_padded(x, valid), valid)
    torch.testing.assert_close(out2[valid], out[valid], rtol=0, atol=1e-5)
    # Padding changes nothing compared with running each sample's valid tokens alone.
    for b in range(3):
        alone = model(x[b : b + 1, valid[b]])
        torch.testing.assert_close(out[b, valid[b]], alone[0], rtol=1e-5, atol=1e-5)


def test_padded_tokens_get_no_gradient_from_valid_outputs() -> None:
    torch.manual_seed(0)
    model = Encoder(32, depth=2, heads=4)
    x = torch.randn(2, 8, 32, requires_grad=True)
    valid = _valid(2, 8, seed=9)
    out = model(x, valid)
    out[valid].square().sum().backward()
    assert x.grad is not None
    assert torch.all(x.grad[~valid] == 0)
    assert torch.any(x.grad[valid] != 0)


def test_encoder_drop_path_schedule_and_eval_identity() -> None:
    enc = Encoder(32, depth=3, heads=4, drop_path=0.2)
    rates = [blk.drop_path.p for blk in enc.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    enc.eval()
    x = torch.randn(2, 4, 32)
    torch.testing.assert_close(enc(x), enc(x))
    dp = DropPath(0.5).train()
    torch.manual_seed(1)
    y = dp(torch.ones(1000, 3))
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.4 < kept < 0.6
    assert torch.all((y == 0) | (y == 2.0))
    with pytest.raises(ValueError, match="divisible"):
        Block(30, heads=4)


def _varlen_twin(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None,
                 causal=False):  # fmt: skip
    """flash_attn_varlen_func's documented contract in plain torch: packed (total, H, Dh)
    tokens, sequence i = rows cu[i]:cu[i+1]; each query attends to its sequence's keys."""
    assert dropout_p == 0.0 and not causal
    out = torch.empty_like(q)
    for i in range(cu_q.numel() - 1):
        qs, ks = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        assert qs.stop - qs.start <= max_q and ks.stop - ks.start <= max_k
        scores = torch.einsum("qhd,khd->hqk", q[qs], k[ks]) * softmax_scale
        out[qs] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v[ks])
    return out


def test_flash_varlen_packing_matches_the_reference(monkeypatch) -> None:
    """The CUDA fast path's own code (packing the valid keys, cumulative lengths, unpacking)
    run on CPU with a plain-torch twin of the flash-attn kernel in its place."""
    from brainharmony.models import attention as attn_mod

    q, k, v = _qkv(3, 2, 5, 9, 8)
    valid = _valid(3, 9)
    valid[2] = False  # a sample without any valid key: zeros, as on the SDPA path
    monkeypatch.setattr(attn_mod, "_flash_usable", lambda q, k: True)
    monkeypatch.setattr(attn_mod, "flash_attn_varlen_fn", lambda: _varlen_twin)
    torch.testing.assert_close(attention(q, k, v, valid), attention_reference(q, k, v, valid))
    torch.testing.assert_close(attention(q, k, v), attention_reference(q, k, v))
    got = attention(q, k, v, valid)
    assert torch.equal(got[2], torch.zeros_like(got[2]))
