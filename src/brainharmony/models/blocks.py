"""Transformer building blocks shared by every ViT-style model in the package.

Public API
----------
* :class:`Attention`: multi-head self-attention (fused qkv projection) over
  :func:`brainharmony.models.attention.attention`, with a key-padding mask.
* :class:`Mlp`: two-layer GELU MLP.
* :class:`DropPath`: per-sample stochastic depth.
* :class:`Block`: pre-norm residual block ``x + attn(norm(x)); x + mlp(norm(x))``.
* :class:`Encoder`: ``depth`` blocks (linearly increasing drop-path) and a final LayerNorm.
* :func:`init_vit_weights`: truncated-normal(0.02) Linear weights, zero biases, unit norms.

Padding contract: every operation except attention acts on each token alone, and attention
gives padded keys zero weight, so padded tokens never influence the outputs at valid
positions. Outputs at padded positions are computed but meaningless.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brainharmony.models.attention import attention

__all__ = ["Attention", "Block", "DropPath", "Encoder", "Mlp", "init_vit_weights"]

#: LayerNorm epsilon used throughout (ViT/MAE convention).
LN_EPS = 1e-6


class DropPath(nn.Module):
    """Drop the whole residual branch of a sample with probability ``p`` (training only).

    Parameters
    ----------
    p : float
        Drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``Linear(dim, hidden) -> GELU -> Linear(hidden, dim)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    Parameters
    ----------
    dim : int
        Token width; must be divisible by ``heads``.
    heads : int
        Number of heads.
    qkv_bias : bool
        Bias in the qkv projection.
    attn_drop : float
        Dropout on attention weights (training only).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"Attention: dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = float(attn_drop)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Self-attention over ``x`` of shape (B, N, D); ``valid`` (B, N) bool key mask."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = attention(q, k, v, valid, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block.

    Parameters
    ----------
    dim : int
        Token width.
    heads : int
        Attention heads.
    mlp_ratio : float
        MLP hidden width as a multiple of ``dim``.
    qkv_bias : bool
        Bias in the qkv projection.
    drop_path : float
        Stochastic-depth probability of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, round(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Apply the block to ``x`` (B, N, D); ``valid`` (B, N) bool marks real tokens."""
        x = x + self.drop_path(self.attn(self.norm1(x), valid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    """A stack of :class:`Block` and a final LayerNorm.

    Parameters
    ----------
    dim, heads, mlp_ratio : see :class:`Block`
    depth : int
        Number of blocks.
    drop_path : float
        Stochastic depth of the last block; block ``i`` uses ``drop_path * i / (depth - 1)``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"Encoder: depth must be >= 1, got {depth}")
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Encode ``x`` (B, N, D); ``valid`` (B, N) bool marks real tokens."""
        for block in self.blocks:
            x = block(x, valid)
        return self.norm(x)


def init_vit_weights(module: nn.Module) -> None:
    """ViT initialisation, for ``model.apply``: trunc-normal(0.02) Linear, unit LayerNorm.

    Linear weights are drawn from a normal with std 0.02 truncated at +-2 std, biases are
    zero; LayerNorm weights are one and biases zero.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
