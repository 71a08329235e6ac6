"""BrainHarmonix-S: a 3D ViT masked autoencoder on model-ready T1 volumes.

The paper's model takes ``160 x 192 x 160`` voxels (1 mm) in cubic patches of ``16^3``,
giving ``10 x 12 x 10 = 1200`` tokens, and a ViT-B encoder (768 wide, 12 blocks, 12 heads);
the decoder of ``mae_vit_base_patch16_dec512d8b`` is 512 wide, 8 blocks, 16 heads. Input box
and patch are parameters here, so the demo can run at 2 mm (``80 x 96 x 80`` -> 5 x 6 x 5).

Design (MAE, He et al. 2022, in 3D)
-----------------------------------
* Patches are cut in ``(gx, gy, gz)`` row-major order; a patch is flattened as
  ``(px, py, pz, channel)``. The patch embedding is a linear map of the flattened patch
  (identical to a ``Conv3d`` with kernel = stride = patch).
* Fixed 3D sin-cos position embeddings: a third of the width per axis (MAE's 1D formula,
  base 10000), zero-padded when the width is not a multiple of 6.
* Per-sample random masking: uniform noise per token, the ``(1 - mask_ratio)`` lowest are
  kept (drawn from torch's global generator, which the training loop seeds).
* A light decoder (its own width, depth and heads) sees the encoded visible tokens plus a
  shared learned mask token at every masked position, each with the decoder's fixed sin-cos
  position, and predicts every voxel of every patch.
* Loss: mean squared error on **masked patches only**; with ``norm_pix_loss`` each target
  patch is normalised by its own mean and variance (population variance, eps 1e-6).
* ``encode``: the encoder on all tokens (no masking), mean over tokens -> (B, dim);
  ``encode_tokens``: all tokens (B, N, dim) and an all-True validity mask.

Approximations against the official encoder (brainharmonix.md section 6): by default no CLS
token (the official one is prepended and dropped at the output; every token here is a patch),
and the decoder is our own since the released file has none. ``cls_token: true`` and
``pos_axes: [1, 0, 2]`` reproduce the official encoder exactly (``brainharmony
import-weights bh-s`` sets both; docs/training.md): a learned token with a zero position is
prepended to the patch tokens and dropped after the encoder, and the sin-cos channels are
laid out as the official table (second grid axis first).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from brainharmony.models.blocks import Encoder, init_vit_weights

__all__ = ["MAE3D", "build", "patchify", "sincos_pos_embed_1d", "sincos_pos_embed_3d"]


def sincos_pos_embed_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE's 1D sin-cos embedding.

    Parameters
    ----------
    dim : int
        Even output width.
    positions : ndarray of shape (n,)

    Returns
    -------
    ndarray of shape (n, dim)
        ``[sin(p * w_i), cos(p * w_i)]`` with ``w_i = 10000^(-i / (dim / 2))``.
    """
    if dim % 2 != 0:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(np.asarray(positions, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_3d(
    dim: int, grid: Sequence[int], axes: Sequence[int] = (0, 1, 2)
) -> np.ndarray:
    """Fixed 3D sin-cos position embeddings over a ``(gx, gy, gz)`` token grid.

    Each axis gets ``2 * (dim // 6)`` channels, in the order given by ``axes`` (default x
    first, then y, then z; the official BrainHarmonix-S table is ``(1, 0, 2)``); the
    remaining ``dim mod 6`` channels are zero.

    Returns
    -------
    ndarray of shape (gx * gy * gz, dim)
        Row ``(ix * gy + iy) * gz + iz`` belongs to grid cell ``(ix, iy, iz)``.
    """
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"grid must be 3 positive sizes, got {list(grid)}")
    per_axis = 2 * (dim // 6)
    if per_axis == 0:
        raise ValueError(f"width {dim} is too small for a 3D sin-cos embedding (needs >= 6)")
    ix, iy, iz = np.meshgrid(*(np.arange(g) for g in grid), indexing="ij")
    if sorted(int(a) for a in axes) != [0, 1, 2]:
        raise ValueError(f"axes must be a permutation of (0, 1, 2), got {list(axes)}")
    coords = (ix, iy, iz)
    parts = [sincos_pos_embed_1d(per_axis, coords[int(a)].reshape(-1)) for a in axes]
    out = np.zeros((ix.size, dim), dtype=np.float64)
    out[:, : 3 * per_axis] = np.concatenate(parts, axis=1)
    return out


def patchify(x: Tensor, patch: int) -> Tensor:
    """Cut volumes into flattened cubic patches.

    Parameters
    ----------
    x : Tensor of shape (B, C, X, Y, Z)
        Every spatial size a multiple of ``patch``.
    patch : int

    Returns
    -------
    Tensor of shape (B, N, patch**3 * C)
        Tokens in ``(gx, gy, gz)`` row-major order, each flattened as ``(px, py, pz, C)``.
    """
    b, c, sx, sy, sz = x.shape
    gx, gy, gz = sx // patch, sy // patch, sz // patch
    x = x.reshape(b, c, gx, patch, gy, patch, gz, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, gx * gy * gz, patch**3 * c)


def _gather(tokens: Tensor, ids: Tensor) -> Tensor:
    """Tokens (B, N, D) at per-sample indices ``ids`` (B, n) -> (B, n, D)."""
    return torch.gather(tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))


class MAE3D(nn.Module):
    """3D ViT masked autoencoder (BrainHarmonix-S).

    Parameters
    ----------
    img_size : sequence of 3 int
        Input box in voxels, each a multiple of ``patch``.
    patch : int
        Cubic patch edge in voxels.
    in_chans : int
        Input channels.
    dim, depth, heads : int
        Encoder width, blocks and heads.
    decoder_dim, decoder_depth, decoder_heads : int
        Decoder width, blocks and heads.
    mlp_ratio : float
        MLP width multiple in every block.
    mask_ratio : float
        Fraction of tokens masked per sample during pretraining, in [0, 1).
    norm_pix_loss : bool
        Normalise each target patch by its mean and variance.
    drop_path : float
        Stochastic depth of the encoder's last block.
    cls_token : bool
        Prepend a learned token (position zero) to the encoder's input and drop it at its
        output (the official encoder; default off).
    pos_axes : sequence of 3 int
        Channel order of the sin-cos table's axes (``[1, 0, 2]``: the official table).
    """

    def __init__(
        self,
        img_size: Sequence[int] = (160, 192, 160),
        patch: int = 16,
        in_chans: int = 1,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        drop_path: float = 0.0,
        cls_token: bool = False,
        pos_axes: Sequence[int] = (0, 1, 2),
    ) -> None:
        super().__init__()
        size = tuple(int(s) for s in img_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"img_size must be 3 positive sizes, got {list(img_size)}")
        if patch < 1 or any(s % patch for s in size):
            raise ValueError(f"img_size {list(size)} is not a whole number of {patch}^3 patches")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.img_size = size
        self.patch = int(patch)
        self.in_chans = int(in_chans)
        self.grid = tuple(s // self.patch for s in size)
        self.num_tokens = math.prod(self.grid)
        self.patch_dim = self.patch**3 * self.in_chans
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.dim = int(dim)

        self.patch_embed = nn.Linear(self.patch_dim, dim)
        self.pos_axes = tuple(int(a) for a in pos_axes)
        self.register_buffer(
            "pos_embed",
            torch.from_numpy(sincos_pos_embed_3d(dim, self.grid, self.pos_axes)).float()[None],
            persistent=False,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.encoder = Encoder(dim, depth, heads, mlp_ratio=mlp_ratio, drop_path=drop_path)

        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed",
            torch.from_numpy(sincos_pos_embed_3d(decoder_dim, self.grid)).float()[None],
            persistent=False,
        )
        self.decoder = Encoder(decoder_dim, decoder_depth, decoder_heads, mlp_ratio=mlp_ratio)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(init_vit_weights)
        # As MAE: the patch projection is initialised like a Linear of the flattened patch.
        nn.init.xavier_uniform_(self.patch_embed.weight)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameters excluded from weight decay besides biases and norms."""
        return {"mask_token", "cls_token"} if self.cls_token is not None else {"mask_token"}

    # ------------------------------------------------------------------ helpers
    def _volumes(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = batch["x"]
        expected = (self.in_chans, *self.img_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"MAE3D expects volumes of shape (B, {', '.join(map(str, expected))}); "
                f"got {tuple(x.shape)}"
            )
        return x.float()

    def random_masking(self, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Draw a per-sample random mask.

        Returns
        -------
        ids_keep : LongTensor of shape (B, n_keep)
            Visible token indices, in random order.
        ids_masked : LongTensor of shape (B, N - n_keep)
            Masked token indices, in random order.
        """
        n_keep = max(1, round(self.num_tokens * (1.0 - self.mask_ratio)))
        noise = torch.rand(batch_size, self.num_tokens, device=device)
        order = torch.argsort(noise, dim=1)
        return order[:, :n_keep], order[:, n_keep:]

    def _embed(self, patches: Tensor, ids: Tensor | None = None) -> Tensor:
        """Embed flattened patches (B, N, patch_dim), or only those at ``ids`` (B, n)."""
        if ids is None:
            return self.patch_embed(patches) + self.pos_embed
        picked = _gather(patches, ids)
        return self.patch_embed(picked) + _gather(self.pos_embed.expand(ids.shape[0], -1, -1), ids)

    def _run_encoder(self, tokens: Tensor) -> Tensor:
        """The encoder over embedded tokens (B, n, D), with the CLS token when configured."""
        if self.cls_token is None:
            return self.encoder(tokens)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return self.encoder(torch.cat([cls, tokens], dim=1))[:, 1:]

    def _decode(self, latent: Tensor, ids_keep: Tensor, ids_out: Tensor) -> Tensor:
        """Predict the patches at ``ids_out`` from the latents of the visible tokens."""
        b = latent.shape[0]
        visible = self.decoder_embed(latent)
        full = self.mask_token.to(visible.dtype).expand(b, self.num_tokens, -1)
        index = ids_keep[..., None].expand(-1, -1, visible.shape[-1])
        full = full.scatter(1, index, visible)
        decoded = self.decoder(full + self.decoder_pos_embed)
        return self.decoder_pred(_gather(decoded, ids_out))

    def target_patches(self, patches: Tensor) -> Tensor:
        """Reconstruction targets from flattened patches (normalised when ``norm_pix_loss``)."""
        if not self.norm_pix_loss:
            return patches
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, unbiased=False, keepdim=True)
        return (patches - mean) / torch.sqrt(var + 1e-6)

    # ------------------------------------------------------------------ API
    def forward_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Masked-patch reconstruction loss of ``batch["x"]`` (B, C, X, Y, Z).

        The mean over masked patches of the per-patch mean squared error; visible patches
        carry no loss.
        """
        patches = patchify(self._volumes(batch), self.patch)
        ids_keep, ids_masked = self.random_masking(patches.shape[0], patches.device)
        latent = self._run_encoder(self._embed(patches, ids_keep))
        if ids_masked.shape[1] == 0:  # mask_ratio 0: nothing to reconstruct
            return latent.sum() * 0.0, {}
        pred = self._decode(latent, ids_keep, ids_masked)
        target = self.target_patches(_gather(patches, ids_masked))
        loss = (pred.float() - target).square().mean()
        return loss, {}

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(batch)

    def encode_tokens(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Encoder tokens of the whole volume (no masking).

        Returns
        -------
        tokens : Tensor of shape (B, N, dim)
        valid : BoolTensor of shape (B, N), all True
        """
        tokens = self._run_encoder(self._embed(patchify(self._volumes(batch), self.patch)))
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, valid

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mean of the encoder tokens of the whole volume, shape (B, dim)."""
        tokens, _ = self.encode_tokens(batch)
        return tokens.mean(dim=1)


_ALLOWED = frozenset(MAE3D.__init__.__code__.co_varnames[1 : MAE3D.__init__.__code__.co_argcount])


def build(cfg: Mapping[str, Any]) -> MAE3D:
    """Build :class:`MAE3D` from the ``model:`` mapping of a model YAML.

    Raises
    ------
    ValueError
        For a key that is not a parameter of :class:`MAE3D`.
    """
    unknown = sorted(set(cfg) - _ALLOWED)
    if unknown:
        raise ValueError(f"bh_s model: unknown parameter(s) {unknown}; allowed: {sorted(_ALLOWED)}")
    kwargs = dict(cfg)
    if "img_size" in kwargs:
        kwargs["img_size"] = tuple(kwargs["img_size"])
    return MAE3D(**kwargs)
