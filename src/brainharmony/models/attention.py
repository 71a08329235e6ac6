"""Multi-head attention with a key-padding mask, behind one small function.

Public API
----------
* :func:`attention`: ``softmax(q k^T / sqrt(Dh) + mask) v`` with a per-sample boolean key
  mask. On CPU (and on CUDA without flash-attn) it is
  :func:`torch.nn.functional.scaled_dot_product_attention`; on CUDA with ``flash_attn``
  importable and half-precision inputs it uses flash-attn's variable-length kernel on the
  unpadded keys, which computes the same thing.
* :func:`attention_reference`: the slow, obviously-correct twin (explicit masked softmax),
  used by the tests to check both paths.

Semantics shared by every path
------------------------------
* ``valid[b, j]`` is ``True`` when key/value token ``j`` of sample ``b`` is real. Padded
  keys receive zero attention weight, so changing padded inputs never changes any output
  row computed from valid keys (every query row; padded *query* rows are computed too and
  are meaningless but finite; callers ignore them).
* A sample with no valid key at all gets an all-zero output (instead of the NaN a fully
  masked softmax would produce).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DISABLE_FLASH_ENV",
    "attention",
    "attention_reference",
    "flash_attn_varlen_fn",
]

#: Set this environment variable to ``1`` to never use flash-attn (read at the first call
#: of :func:`flash_attn_varlen_fn`).
DISABLE_FLASH_ENV = "BRAINHARMONY_DISABLE_FLASH_ATTN"


@functools.cache
def flash_attn_varlen_fn() -> Callable[..., Any] | None:
    """Return ``flash_attn.flash_attn_varlen_func`` or ``None`` when unavailable.

    The import is attempted once, only when CUDA is available (the result is cached;
    ``flash_attn_varlen_fn.cache_clear()`` forces a retry). Any exception while importing
    disables the fast path.
    """
    if os.environ.get(DISABLE_FLASH_ENV, "").strip() not in ("", "0"):
        return None
    if not torch.cuda.is_available():
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # any import-time failure (missing package, ABI mismatch) disables it
        return None
    return flash_attn_varlen_func


def _check(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attention: q, k, v must have shape (B, H, N, Dh); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, H or Dh"
        )
    if valid is not None:
        if valid.dtype != torch.bool:
            raise ValueError(f"attention: valid must be a bool tensor, got {valid.dtype}")
        if valid.shape != (k.shape[0], k.shape[2]):
            raise ValueError(
                f"attention: valid has shape {tuple(valid.shape)}, expected "
                f"(B, N_keys) = {(k.shape[0], k.shape[2])}"
            )


def attention_reference(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None) -> Tensor:
    """Masked multi-head attention written out explicitly (float64-safe, slow).

    Parameters
    ----------
    q : Tensor of shape (B, H, Nq, Dh)
    k, v : Tensor of shape (B, H, Nk, Dh)
    valid : bool Tensor of shape (B, Nk), optional
        ``True`` for real keys.

    Returns
    -------
    Tensor of shape (B, H, Nq, Dh)
    """
    _check(q, k, v, valid)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if valid is None:
        return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(dim=-1), v)
    keymask = valid[:, None, None, :]
    scores = scores.masked_fill(~keymask, float("-inf"))
    has_any = valid.any(dim=-1)[:, None, None, None]
    scores = torch.where(has_any, scores, torch.zeros_like(scores))
    weights = scores.softmax(dim=-1) * has_any
    return torch.einsum("bhqk,bhkd->bhqd", weights, v)


def _flash_usable(q: Tensor, k: Tensor) -> bool:
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.dtype == k.dtype
        and q.shape[-1] <= 256
        and q.shape[-1] % 8 == 0
        and flash_attn_varlen_fn() is not None
    )


def _flash_varlen(
    fn: Callable[..., Any], q: Tensor, k: Tensor, v: Tensor, valid: Tensor, dropout_p: float
) -> Tensor:
    """All queries attend to the valid keys of their sample via flash-attn varlen."""
    b, h, nq, dh = q.shape
    nk = k.shape[2]
    lengths = valid.sum(dim=-1, dtype=torch.int32)
    cu_k = F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(0, (b + 1) * nq, nq, dtype=torch.int32, device=q.device)
    q_packed = q.transpose(1, 2).reshape(b * nq, h, dh)
    flat_valid = valid.reshape(b * nk)
    k_packed = k.transpose(1, 2).reshape(b * nk, h, dh)[flat_valid]
    v_packed = v.transpose(1, 2).reshape(b * nk, h, dh)[flat_valid]
    out = fn(
        q_packed.contiguous(),
        k_packed.contiguous(),
        v_packed.contiguous(),
        cu_q,
        cu_k,
        nq,
        max(int(lengths.max().item()), 1),
        dropout_p=dropout_p,
        softmax_scale=1.0 / math.sqrt(dh),
        causal=False,
    )
    return out.reshape(b, nq, h, dh).transpose(1, 2)


def attention(
    q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """Multi-head scaled dot-product attention with a per-sample key mask.

    Parameters
    ----------
    q : Tensor of shape (B, H, Nq, Dh)
    k, v : Tensor of shape (B, H, Nk, Dh)
    valid : bool Tensor of shape (B, Nk), optional
        ``True`` for real key tokens; padded keys get zero weight. ``None``: all real.
    dropout_p : float
        Attention-weight dropout; pass 0 at evaluation time.

    Returns
    -------
    Tensor of shape (B, H, Nq, Dh)
        Samples without any valid key get zeros.
    """
    _check(q, k, v, valid)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if valid is None:
        if _flash_usable(q, k):
            b, _, nk = k.shape[:3]
            all_valid = torch.ones(b, nk, dtype=torch.bool, device=k.device)
            fn = flash_attn_varlen_fn()
            assert fn is not None
            return _flash_varlen(fn, q, k, v, all_valid, dropout_p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    has_any = valid.any(dim=-1)
    # Samples with no valid key attend to everything (finite) and are zeroed below; done
    # unconditionally so that no host-device synchronisation is needed.
    eff = valid | ~has_any[:, None]
    if _flash_usable(q, k):
        fn = flash_attn_varlen_fn()
        assert fn is not None
        out = _flash_varlen(fn, q, k, v, eff, dropout_p)
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=eff[:, None, None, :], dropout_p=dropout_p
        )
    return out * has_any[:, None, None, None].to(out.dtype)
