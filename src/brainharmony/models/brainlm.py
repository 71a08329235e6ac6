"""BrainLM (Caro et al., ICLR 2024): a masked autoencoder over parcel x time-patch tokens.

Written from a reading of the official code (vandijklab/BrainLM, Apache-2.0, commit
b591d88: ``brainlm_mae/modeling_brainlm.py``, ``brainlm_mae/configuration_brainlm.py``,
``train.py``, ``utils/metrics.py``,
``pretrained_models/2023-06-06-22_15_00-checkpoint-1400/config.json``); no code is taken
from it. Facts: /work/shared/reference/lmae_rwmoe_ssm.md section 3.2 (outside the repo).

Tokens and positions
--------------------
Input ROI series ``x`` of shape (B, T, R) (this package's layout; the official
``signal_vectors`` are (B, R, T)) with ``T = n_patches * patch`` frames. Each parcel's
series is cut into ``n_patches`` windows of ``patch`` frames (official: 200 frames, 20 a
patch), each mapped by one ``Linear(patch, dim)`` (``signal_embedding_projection``).
Tokens are parcel-major (token ``roi * n_patches + t``). Position = ``Linear(3, dim)`` of
the parcel's 3-D coordinates (``xyz_embedding_projection``; the official model feeds raw
MNI millimetres from ``A424_Coordinates.dat``, here divided by ``coords_scale_mm``,
default 1) plus a fixed sin-cos code of the patch index; then dropout (``dropout``, the
official ``PositionalEncoding``'s 0.1). The coordinates are a buffer
(``encoder.coords``), so saved weights carry them.

Pretraining (:meth:`BrainLM.forward_loss`)
------------------------------------------
Per item, the tokens are ranked by uniform noise and the first
``floor(N * (1 - mask_ratio))`` are kept (the official ``random_masking``); with invalid
tokens (padding, dropped ROIs), ``N`` counts the valid ones and the invalid rank last.
The encoder (a learned CLS token + the kept tokens, pre-norm ViT, final LayerNorm) sees
only the kept tokens. The decoder maps them
to its width, puts a learned mask token at every other place, adds its own coordinate
projection and the time code, runs a small ViT over ``[CLS | all tokens]`` and predicts
each token's ``patch`` frames through ``Linear(d, d/2)``, LeakyReLU(0.1),
``Linear(d/2, patch)``. Loss: the mean squared error over the masked (valid) tokens'
frames, one mean over the whole batch as the official ``forward_loss``.

Features (:meth:`BrainLM.encode`)
---------------------------------
Every token, unmasked, through the encoder; ``pool: cls`` (default) returns the CLS
token (the official downstream notebooks and ``utils/metrics.py`` take
``last_hidden_state[:, 0]``), ``pool: mean`` the mean of the valid parcel tokens.

Departures from the official code (docs/models.md, "BrainLM")
-------------------------------------------------------------
* Attention is exact (this package's pre-norm :class:`~brainharmony.models.blocks.Encoder`,
  SDPA or flash-attn); the official layers are post-norm ``NystromformerLayer`` (Nystrom
  approximation with 64 landmarks and a depthwise-convolution skip on the values) and
  have attention-probability dropout 0.1.
* The sin-cos time code concatenates the sine and cosine halves; the official one
  interleaves them (a fixed permutation of channels of a learned sum).
* Invalid tokens (zero-padded frames, ROIs without signal) are never attention keys and
  never in the loss; the official data has none.
* Feature extraction uses all tokens (no masking).
* ``coords_scale_mm`` (the YAMLs: 100, coordinates in decimetres): with raw millimetres
  (+-70) the coordinate projection outweighs the signal projection of robust-scaled
  series (~1) by over an order of magnitude, and in ``tests/unit/models/test_brainlm.py``
  a small model did not learn the structured-series reconstruction in 400 steps with
  them, while it did with the scaled coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from brainharmony.io import InputDataError
from brainharmony.models.blocks import Encoder
from brainharmony.models.jepa import masked_mean
from brainharmony.models.posemb import sincos_1d

__all__ = ["BrainLM", "BrainLMDecoder", "BrainLMEncoder", "build", "read_coordinates"]

#: ``coords`` value that means the Schaefer-400 parcel centroids of
#: :func:`brainharmony.atlas.schaefer400_centroids` (MNI mm, the pipeline's parcel order).
SCHAEFER400 = "schaefer400"

#: ``build`` keys and their defaults: the released checkpoint's configuration
#: (``pretrained_models/2023-06-06-22_15_00-checkpoint-1400/config.json``: 424 A424
#: parcels, 200 frames in patches of 20, width 256, 4 layers, 4 heads, MLP 1024, decoder
#: 256 x 2 layers x 4 heads, MLP 1024, mask ratio 0.2).
DEFAULTS: dict[str, Any] = {
    "n_rois": 424,
    "n_patches": 10,
    "patch": 20,
    "dim": 256,
    "depth": 4,
    "heads": 4,
    "mlp_ratio": 4.0,
    "dec_dim": 256,
    "dec_depth": 2,
    "dec_heads": 4,
    "dec_mlp_ratio": 4.0,
    "mask_ratio": 0.2,
    "dropout": 0.1,
    "coords": None,
    "coords_scale_mm": 1.0,
    "tables_from_state": False,
    "pool": "cls",
    "grad_checkpoint": False,
}
POOLS = ("cls", "mean")


# --------------------------------------------------------------------------- coordinates


def _split(line: str) -> list[str]:
    if "\t" in line:
        return [c.strip() for c in line.split("\t")]
    if "," in line:
        return [c.strip() for c in line.split(",")]
    return line.split()


def read_coordinates(source: str | Path, n_rois: int) -> np.ndarray:
    """Parcel coordinates (R, 3) in mm.

    ``source`` is :data:`SCHAEFER400` (the centroids of
    :func:`brainharmony.atlas.schaefer400_centroids`), a ``.npy`` array (R, >= 3: the last
    three columns), or a text table (tab, comma or white-space separated): with a header
    naming ``x``, ``y``, ``z`` columns (any case; e.g. that function's table), or all
    numeric without header, the last three columns (e.g. BrainLM's
    ``toolkit/atlases/A424_Coordinates.dat``: index, X, Y, Z).

    Raises
    ------
    InputDataError
        Missing or unreadable file, no x/y/z columns, non-finite values, not ``n_rois`` rows.
    """
    if str(source) == SCHAEFER400 and not Path(source).exists():
        from brainharmony.atlas import N_PARCELS, schaefer400_centroids

        if n_rois != N_PARCELS:
            raise ValueError(
                f"brainlm model: coords {SCHAEFER400!r} gives {N_PARCELS} parcels; the model "
                f"has n_rois {n_rois} (give a coordinate table with {n_rois} rows instead)"
            )
        return schaefer400_centroids()[["x", "y", "z"]].to_numpy(np.float64)
    p = Path(source)
    if not p.is_file():
        raise InputDataError(p, f"parcel coordinate table not found (or use {SCHAEFER400!r})")
    if p.suffix == ".npy":
        try:
            values = np.asarray(np.load(p, allow_pickle=False), dtype=np.float64)
        except (ValueError, OSError) as err:
            raise InputDataError(p, f"unreadable coordinate array: {err}") from None
        if values.ndim != 2 or values.shape[1] < 3:
            raise InputDataError(p, f"expected a (parcel x >= 3) array; got {values.shape}")
        values = values[:, -3:]
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise InputDataError(p, f"not a text coordinate table: {err}") from None
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise InputDataError(p, "empty coordinate table")
        rows = [_split(ln) for ln in lines]
        head = [c.lower() for c in rows[0]]
        if {"x", "y", "z"} <= set(head):
            cols = [head.index(a) for a in ("x", "y", "z")]
            rows = rows[1:]
        else:
            cols = None
        try:
            if cols is None:
                values = np.array([[float(c) for c in r[-3:]] for r in rows], dtype=np.float64)
            else:
                values = np.array([[float(r[i]) for i in cols] for r in rows], dtype=np.float64)
        except (ValueError, IndexError) as err:
            raise InputDataError(
                p,
                f"expected x, y, z columns (a header naming them, or the last three "
                f"numeric columns): {err}",
            ) from None
        if values.ndim != 2 or values.shape[1] != 3:
            raise InputDataError(p, "rows need three coordinates")
    if not np.isfinite(values).all():
        raise InputDataError(p, "non-finite coordinate")
    if values.shape[0] != n_rois:
        raise InputDataError(p, f"has {values.shape[0]} parcel rows; the model expects {n_rois}")
    return values


# --------------------------------------------------------------------------- modules


def _time_code(n_patches: int, dim: int) -> Tensor:
    return sincos_1d(np.arange(n_patches, dtype=np.float64), dim)


class _Positions(nn.Module):
    """``Linear(3, dim)`` of the parcel coordinates + sin-cos of the patch index, (R*P, D)."""

    def __init__(self, n_patches: int, dim: int) -> None:
        super().__init__()
        self.xyz = nn.Linear(3, dim)
        self.register_buffer("time", _time_code(n_patches, dim), persistent=False)
        self.n_patches = int(n_patches)

    def forward(self, coords: Tensor) -> Tensor:
        space = self.xyz(coords.float())  # (R, D)
        return (space[:, None, :] + self.time[None]).reshape(-1, space.shape[-1])


class BrainLMEncoder(nn.Module):
    """Patch projection + coordinate/time positions + CLS + ViT (module docstring).

    Parameters
    ----------
    coords : Tensor of shape (R, 3)
        Parcel coordinates (mm); stored as the buffer ``coords``.
    n_patches, patch : int
        Patches per parcel and frames per patch.
    dim, depth, heads, mlp_ratio
        The ViT (:class:`~brainharmony.models.blocks.Encoder`, with its final LayerNorm).
    dropout : float
        Dropout on the embedded tokens (training only).
    grad_checkpoint : bool
        Recompute block activations in the backward pass.
    """

    def __init__(
        self,
        coords: Tensor,
        *,
        n_patches: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if coords.dim() != 2 or coords.shape[1] != 3:
            raise ValueError(f"BrainLMEncoder: coords must be (R, 3); got {tuple(coords.shape)}")
        if patch < 1 or n_patches < 1:
            raise ValueError(
                f"BrainLMEncoder: patch and n_patches must be >= 1; got {patch}, {n_patches}"
            )
        self.register_buffer("coords", coords.float().clone())
        self.n_rois, self.n_patches, self.patch = int(coords.shape[0]), int(n_patches), int(patch)
        self.n_frames = self.n_patches * self.patch
        self.dim = int(dim)
        self.patch_embed = nn.Linear(self.patch, dim)
        self.pos = _Positions(self.n_patches, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.drop = nn.Dropout(float(dropout))
        self.blocks = Encoder(dim, depth, heads, mlp_ratio=mlp_ratio)
        self.grad_checkpoint = bool(grad_checkpoint)

    def patches(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The series as tokens' frames (B, R*P, patch) and the tokens' validity (B, R*P).

        ``batch["x"]``: (B, T, R); optional ``batch["mask"]`` (B, T) real frames (a patch
        is valid when all its frames are) and ``batch["roi_mask"]`` (B, R).
        """
        x = batch["x"]
        r, p, k = self.n_rois, self.n_patches, self.patch
        if x.dim() != 3 or x.shape[1] != self.n_frames or x.shape[2] != r:
            raise ValueError(
                f"BrainLM expects ROI series of shape (B, {self.n_frames}, {r}) ({p} patches "
                f"of {k} frames x {r} parcels); got {tuple(x.shape)}"
            )
        b = x.shape[0]
        frames = x.float().transpose(1, 2).reshape(b, r, p, k)
        valid = torch.ones(b, r, p, dtype=torch.bool, device=x.device)
        mask = batch.get("mask")
        if mask is not None:
            valid = valid & mask.to(device=x.device, dtype=torch.bool).reshape(b, 1, p, k).all(-1)
        roi_mask = batch.get("roi_mask")
        if roi_mask is not None:
            valid = valid & roi_mask.to(device=x.device, dtype=torch.bool)[:, :, None]
        return frames.reshape(b, r * p, k), valid.reshape(b, r * p)

    def embed(self, frames: Tensor) -> Tensor:
        """Tokens with positions (B, R*P, D) from frames (B, R*P, patch), after dropout."""
        return self.drop(self.patch_embed(frames) + self.pos(self.coords).to(frames.dtype))

    def forward(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """``[CLS | tokens]`` (B, 1+N, D) through the ViT; ``valid`` (B, N) key mask."""
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        ok = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=valid.device), valid], dim=1)
        if not (self.grad_checkpoint and torch.is_grad_enabled() and self.training):
            return self.blocks(x, ok)
        from torch.utils.checkpoint import checkpoint

        for block in self.blocks.blocks:
            x = checkpoint(block, x, ok, use_reentrant=False)
        return self.blocks.norm(x)


class BrainLMDecoder(nn.Module):
    """Mask tokens + coordinate/time positions + small ViT + two-layer frame head.

    Parameters
    ----------
    in_dim : int
        Encoder width.
    n_patches, patch : int
    dim, depth, heads, mlp_ratio
        The decoder ViT.
    dropout : float
        Dropout on the embedded tokens (training only).
    """

    def __init__(
        self,
        in_dim: int,
        *,
        n_patches: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"BrainLMDecoder: dim must be >= 2; got {dim}")
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = _Positions(n_patches, dim)
        self.drop = nn.Dropout(float(dropout))
        self.blocks = Encoder(dim, depth, heads, mlp_ratio=mlp_ratio)
        self.head = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.LeakyReLU(0.1), nn.Linear(dim // 2, int(patch))
        )

    def forward(
        self, latent: Tensor, keep: Tensor, slot_ok: Tensor, valid: Tensor, coords: Tensor
    ) -> Tensor:
        """Predicted frames (B, N, patch) of every token.

        ``latent`` (B, 1+K, D): the encoder's output on ``[CLS | kept tokens]``; ``keep``
        (B, K): the kept tokens' places and ``slot_ok`` (B, K) which slots hold one (the
        others get the mask token); ``valid`` (B, N): every token's validity.
        """
        h = self.embed(latent)
        b, n = valid.shape
        mask_token = self.mask_token.to(h.dtype)
        seen = torch.where(slot_ok[..., None], h[:, 1:], mask_token)
        full = mask_token.expand(b, n, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, h.shape[-1]), seen)
        full = self.drop(full + self.pos(coords).to(h.dtype))
        x = torch.cat([h[:, :1], full], dim=1)
        ok = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=valid.device), valid], dim=1)
        return self.head(self.blocks(x, ok))[:, 1:]


def reconstruction_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean squared error over the frames of the tokens with ``weight`` true, one mean over
    the whole batch (the official ``forward_loss`` with ``loss_fn: mse``).

    ``pred``, ``target``: (B, N, patch); ``weight``: (B, N) bool (masked and valid).
    """
    w = weight.to(pred.dtype)[..., None]
    n = w.sum() * pred.shape[-1]
    return (((pred.float() - target.float()) ** 2) * w).sum() / n.clamp_min(1.0)


class BrainLM(nn.Module):
    """BrainLM: :class:`BrainLMEncoder` + :class:`BrainLMDecoder`, masked reconstruction.

    Built by :func:`build`. ``encode`` and ``encode_tokens`` take a batch mapping or the
    series tensor (B, T, R) itself.
    """

    def __init__(
        self,
        encoder: BrainLMEncoder,
        decoder: BrainLMDecoder,
        *,
        mask_ratio: float,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"BrainLM: mask_ratio must be in (0, 1); got {mask_ratio}")
        if pool not in POOLS:
            raise ValueError(f"BrainLM: pool must be one of {list(POOLS)}; got {pool!r}")
        self.encoder, self.decoder = encoder, decoder
        self.mask_ratio, self.pool = float(mask_ratio), str(pool)
        self.apply(_init_weights)
        for token in (encoder.cls_token, decoder.mask_token):
            nn.init.normal_(token, std=0.02)  # the official initializer_range

    def no_weight_decay(self) -> set[str]:
        """The CLS and mask tokens (besides biases and norms)."""
        return {"encoder.cls_token", "decoder.mask_token"}

    def n_keep(self, n_valid: Tensor) -> Tensor:
        """Tokens the encoder sees during pretraining, per item: ``floor(n (1 -
        mask_ratio))`` of its ``n`` valid tokens (at least one when it has any)."""
        kept = torch.floor(n_valid.double() * (1.0 - self.mask_ratio) + 1e-9).long()
        return torch.minimum(kept.clamp_min(1), n_valid.long())

    def sample_keep(self, valid: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The kept tokens: their places (B, K) and which of the K slots hold one (B, K).

        Each item's tokens are ranked by ``noise`` (B, N) in [0, 1) (drawn when not given),
        invalid tokens last, and its first :meth:`n_keep` are kept; ``K`` is the largest
        count of the batch (all items alike when every token is valid, as the official
        ``random_masking``).
        """
        b, n = valid.shape
        if noise is None:
            noise = torch.rand(b, n, device=valid.device)
        if noise.shape != valid.shape:
            raise ValueError(
                f"noise must have shape {tuple(valid.shape)}; got {tuple(noise.shape)}"
            )
        counts = self.n_keep(valid.sum(dim=1))
        k = max(int(counts.max()), 1)
        score = noise.float() + (~valid).float() * 2.0
        keep = torch.argsort(score, dim=1)[:, :k]
        slot_ok = torch.arange(k, device=valid.device)[None, :] < counts[:, None]
        return keep, slot_ok

    def reconstruct(
        self, batch: Mapping[str, Tensor] | Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One masked pass: predictions (B, N, patch), targets (B, N, patch), the masked
        tokens (B, N) bool and the valid tokens (B, N) bool."""
        batch = _as_batch(batch)
        frames, valid = self.encoder.patches(batch)
        keep, slot_ok = self.sample_keep(valid, noise)
        tokens = self.encoder.embed(frames)
        d = tokens.shape[-1]
        kept = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, d))
        latent = self.encoder(kept, slot_ok)
        pred = self.decoder(latent, keep, slot_ok, valid, self.encoder.coords)
        seen = torch.zeros_like(valid).scatter(1, keep, slot_ok)
        return pred, frames, valid & ~seen, valid

    def forward_loss(
        self, batch: Mapping[str, Tensor], noise: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Masked reconstruction loss of a batch of ROI series (module docstring)."""
        pred, target, masked, valid = self.reconstruct(batch, noise)
        weight = masked & valid
        loss = reconstruction_loss(pred, target, weight)
        b = valid.shape[0]
        logs = {
            "visible_tokens": float((~masked & valid).sum()) / b,
            "masked_tokens": float(weight.sum()) / b,
        }
        return loss, logs

    def encode_tokens(self, batch: Mapping[str, Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """All parcel tokens (B, R*P, D), parcel-major, unmasked, and their validity."""
        frames, valid = self.encoder.patches(_as_batch(batch))
        out = self.encoder(self.encoder.embed(frames), valid)[:, 1:]
        return out * valid[..., None].to(out.dtype), valid

    def encode(self, batch: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Features (B, D): the CLS token (``pool: cls``) or the mean valid parcel token."""
        frames, valid = self.encoder.patches(_as_batch(batch))
        out = self.encoder(self.encoder.embed(frames), valid)
        if self.pool == "cls":
            return out[:, 0]
        return masked_mean(out[:, 1:], valid)

    def forward(self, batch: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(batch)


def _init_weights(module: nn.Module) -> None:
    """The official ``_init_weights``: Xavier-uniform Linear weights, zero biases, unit
    LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _as_batch(batch: Mapping[str, Tensor] | Tensor) -> Mapping[str, Tensor]:
    return {"x": batch} if isinstance(batch, Tensor) else batch


def build(cfg: Mapping[str, Any]) -> BrainLM:
    """Build BrainLM from the ``model:`` mapping of a model YAML.

    Keys (defaults: :data:`DEFAULTS`, the released checkpoint's configuration):
    ``n_rois``, ``n_patches``, ``patch``; ``dim``, ``depth``, ``heads``, ``mlp_ratio``;
    the decoder's ``dec_dim``, ``dec_depth``, ``dec_heads``, ``dec_mlp_ratio``;
    ``mask_ratio``, ``dropout``; ``coords`` (:data:`SCHAEFER400` or a coordinate table:
    :func:`read_coordinates`), ``coords_scale_mm`` (the coordinates are divided by it
    before the projection and stored so; 1 = the official raw millimetres) and
    ``tables_from_state`` (zero coordinates to be filled by a state dict, e.g. a trained
    model's); ``pool`` (``cls`` | ``mean``) and
    ``grad_checkpoint``.

    Raises
    ------
    ValueError
        Unknown keys, inconsistent sizes, no coordinates.
    InputDataError
        An unreadable coordinate table, or one without ``n_rois`` rows.
    """
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"brainlm model: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    c = {**DEFAULTS, **dict(cfg)}
    n_rois = int(c["n_rois"])
    if c["tables_from_state"]:
        coords = torch.zeros(n_rois, 3)
    else:
        if c["coords"] is None:
            raise ValueError(
                "brainlm model: no 'coords' is given (the parcels' 3-D coordinates in mm: "
                f"{SCHAEFER400!r} for the pipeline's Schaefer-400 parcels, or a table path), "
                "and tables_from_state is false"
            )
        coords = torch.from_numpy(read_coordinates(str(c["coords"]), n_rois)).float()
    scale = float(c["coords_scale_mm"])
    if not scale > 0:
        raise ValueError(f"brainlm model: coords_scale_mm must be > 0; got {scale}")
    dim, dec_dim = int(c["dim"]), int(c["dec_dim"])
    for name, width in (("dim", dim), ("dec_dim", dec_dim)):
        if width % 2:
            raise ValueError(f"brainlm model: {name} {width} must be even (sin-cos time code)")
    encoder = BrainLMEncoder(
        coords / scale,
        n_patches=int(c["n_patches"]),
        patch=int(c["patch"]),
        dim=dim,
        depth=int(c["depth"]),
        heads=int(c["heads"]),
        mlp_ratio=float(c["mlp_ratio"]),
        dropout=float(c["dropout"]),
        grad_checkpoint=bool(c["grad_checkpoint"]),
    )
    decoder = BrainLMDecoder(
        dim,
        n_patches=int(c["n_patches"]),
        patch=int(c["patch"]),
        dim=dec_dim,
        depth=int(c["dec_depth"]),
        heads=int(c["dec_heads"]),
        mlp_ratio=float(c["dec_mlp_ratio"]),
        dropout=float(c["dropout"]),
    )
    return BrainLM(encoder, decoder, mask_ratio=float(c["mask_ratio"]), pool=str(c["pool"]))
