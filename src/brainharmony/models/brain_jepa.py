"""Brain-JEPA (Dong et al., NeurIPS 2024): a ViT over ROI x time-patch tokens.

Written from a reading of the official code (Eric-LRL/Brain-JEPA, commit b1dfa93eb331:
``src/models/vision_transformer.py``, ``src/helper.py``, ``src/train.py``,
``downstream_tasks/models_vit.py``, ``configs/ukb_vitb_ep300.yaml``); no code is taken
from it. :mod:`brainharmony.models.importers.brain_jepa` loads its released weights.

Encoder (:class:`BrainJepaEncoder`)
-----------------------------------
* **Input.** ROI series ``x`` of shape (B, T, R) (this package's layout; the official
  code takes (B, 1, R, T)) with ``T = n_patches * patch`` frames. The published model:
  R = 450 ROIs (Tian S3 subcortex, 50, then Schaefer-400), T = 160 frames at TR 2.205 s
  (UK Biobank's 0.735 s decimated by 3), patch 16, hence 450 x 10 = 4500 tokens.
* **Patches.** Each ROI's series is cut into ``n_patches`` non-overlapping windows of
  ``patch`` frames, each mapped by one linear layer to the width ``dim`` (the official
  ``Conv2d(1, dim, (1, patch), stride (1, patch))``). Tokens are ROI-major: token
  ``roi * n_patches + t``.
* **Brain-gradient position embedding** (the official ``GradTs_2dPE`` with
  ``add_w: mapping``; :class:`~brainharmony.models.posemb.RoiTimePosEmbed` with
  ``table_scaling="none"``, ``roi_rescale="minmax"``): the first ``dim / 2`` channels are
  the fixed sin-cos of the time-patch index, the other ``dim / 2`` a learned
  ``Linear(G, dim / 2)`` of the ROI's row of the group gradient table (R x G, G = 30),
  min-max rescaled to [-1, 1] over the whole table at every forward pass. The gradient
  table is a buffer (``encoder.pos.gradients``), so saved weights carry it.
* **ViT.** Pre-norm blocks (:class:`~brainharmony.models.blocks.Encoder`: LayerNorm eps
  1e-6, qkv bias, GELU MLP) and a final LayerNorm; no CLS token.

JEPA pretraining
----------------
:class:`BrainJepa` is :class:`~brainharmony.models.jepa.BrainHarmonixF`'s JEPA machinery
(context encoder, EMA target encoder, narrow predictor with its own gradient position
embedding, Brain-JEPA's cross-ROI / cross-time / double-cross masks from
:mod:`brainharmony.models.masks`, smooth-L1 on layer-normed targets) around this encoder
instead of TAPE. It trains with ``brainharmony train`` like the other kinds.

Features
--------
:meth:`BrainJepa.encode` returns the mean of all output tokens of the EMA target encoder,
(B, dim): the official downstream code loads ``target_encoder`` and pools this mean
(``global_pool``) before its freshly initialised ``fc_norm`` and head, which are not part
of the pretrained weights. ``encode_with: context`` uses the context encoder instead.

What the published weights need from data
-----------------------------------------
450 ROIs in the official order (Tian S3's 50 subcortical parcels, then Schaefer-400 in
its 17-network order), 160 frames at TR 2.205 s, robust-scaled per ROI. This package's
pipeline parcellates Schaefer-400 (7-network order) only: see docs/models.md,
"Brain-JEPA", for what a user must add.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from brainharmony.models.blocks import Encoder, init_vit_weights
from brainharmony.models.jepa import BrainHarmonixF, assemble, run_encoder
from brainharmony.models.posemb import RoiTimePosEmbed, read_roi_table

__all__ = ["BrainJepa", "BrainJepaEncoder", "build", "gradient_pos_embed"]

#: ``build`` keys and their defaults: the official ViT-B (``configs/ukb_vitb_ep300.yaml``).
DEFAULTS: dict[str, Any] = {
    "n_rois": 450,
    "n_patches": 10,
    "patch": 16,
    "dim": 768,
    "depth": 12,
    "heads": 12,
    "mlp_ratio": 4.0,
    "drop_path": 0.0,
    "gradients": None,
    "n_gradients": 30,
    "tables_from_state": False,
    "pred_dim": 384,
    "pred_depth": 6,
    "pred_heads": 12,
    "ema": (0.996, 1.0),
    "loss_beta": 1.0,
    "masks": None,
    "encode_with": "target",
    "grad_checkpoint": False,
}


def gradient_pos_embed(
    dim: int, n_rois: int, n_patches: int, gradients: Any | None, n_gradients: int
) -> RoiTimePosEmbed:
    """Brain-JEPA's brain-gradient position embedding of width ``dim`` (module docstring).

    ``gradients`` is the R x G table, or ``None`` for a zero placeholder of width
    ``n_gradients`` to be filled by ``load_state_dict``.
    """
    if dim % 4:
        raise ValueError(f"Brain-JEPA: width {dim} must be a multiple of 4 (two even halves)")
    return RoiTimePosEmbed(
        dim,
        n_rois,
        n_patches,
        gradients=gradients,
        use_harmonics=False,
        use_gradients=True,
        combine="concat",
        time_dim=dim // 2,
        placeholder_shapes=(0, n_gradients) if gradients is None else None,
        table_scaling="none",
        roi_rescale="minmax",
    )


class BrainJepaEncoder(nn.Module):
    """Patch embedding + brain-gradient position embedding + ViT.

    Parameters
    ----------
    pos : RoiTimePosEmbed
        Of width ``dim``; its grid gives ``n_rois`` x ``n_patches``.
    patch : int
        Frames per time patch.
    dim, depth, heads, mlp_ratio, drop_path
        The ViT (:class:`~brainharmony.models.blocks.Encoder`).
    grad_checkpoint : bool
        Recompute block activations in the backward pass.
    """

    def __init__(
        self,
        pos: RoiTimePosEmbed,
        *,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if pos.dim != dim:
            raise ValueError(f"BrainJepaEncoder: position width {pos.dim} != dim {dim}")
        if patch < 1:
            raise ValueError(f"BrainJepaEncoder: patch must be >= 1; got {patch}")
        self.patch_embed = nn.Linear(int(patch), dim)
        init_vit_weights(self.patch_embed)
        self.pos = pos
        self.blocks = Encoder(dim, depth, heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.grad_checkpoint = bool(grad_checkpoint)
        self.n_rois, self.n_patches, self.dim = pos.n_rois, pos.n_patches, int(dim)
        self.patch = int(patch)
        self.n_frames = self.n_patches * self.patch

    def embed(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Tokens with positions (B, R*P, D) and their validity (B, R*P).

        ``batch["x"]``: (B, T, R) series; optional ``batch["mask"]`` (B, T) real frames (a
        patch is valid when all its frames are) and ``batch["roi_mask"]`` (B, R).
        """
        x = batch["x"]
        r, p, k = self.n_rois, self.n_patches, self.patch
        if x.dim() != 3 or x.shape[1] != self.n_frames or x.shape[2] != r:
            raise ValueError(
                f"Brain-JEPA expects ROI series of shape (B, {self.n_frames}, {r}) "
                f"({p} patches of {k} frames x {r} ROIs); got {tuple(x.shape)}"
            )
        b = x.shape[0]
        patches = x.float().transpose(1, 2).reshape(b, r, p, k)
        tokens = self.patch_embed(patches) + self.pos().to(patches.dtype)
        valid = torch.ones(b, r, p, dtype=torch.bool, device=x.device)
        mask = batch.get("mask")
        if mask is not None:
            valid = valid & mask.to(device=x.device, dtype=torch.bool).reshape(b, 1, p, k).all(-1)
        roi_mask = batch.get("roi_mask")
        if roi_mask is not None:
            valid = valid & roi_mask.to(device=x.device, dtype=torch.bool)[:, :, None]
        return tokens.reshape(b, r * p, self.dim), valid.reshape(b, r * p)

    def forward(self, tokens: Tensor, valid: Tensor | None) -> Tensor:
        """Encode embedded tokens (B, N, D) with key mask ``valid`` (B, N)."""
        return run_encoder(self.blocks, tokens, valid, self.grad_checkpoint)


def _as_batch(batch: Mapping[str, Tensor] | Tensor) -> Mapping[str, Tensor]:
    return {"x": batch} if isinstance(batch, Tensor) else batch


class BrainJepa(BrainHarmonixF):
    """Brain-JEPA: :class:`BrainJepaEncoder` trained with the JEPA objective.

    Built by :func:`build`; the constructor is :class:`BrainHarmonixF`'s. ``encode`` and
    ``encode_tokens`` take a batch mapping or the series tensor (B, T, R) itself.
    """

    def encode_tokens(self, batch: Mapping[str, Tensor] | Tensor) -> tuple[Tensor, Tensor]:
        """All tokens (B, R*P, D), ROI-major, zero where invalid, and their validity."""
        return super().encode_tokens(_as_batch(batch))

    def encode(self, batch: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Mean of the valid output tokens, (B, D)."""
        return super().encode(_as_batch(batch))

    def forward(self, batch: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(batch)


def build(cfg: Mapping[str, Any]) -> BrainJepa:
    """Build Brain-JEPA from the ``model:`` mapping of a model YAML.

    Keys (defaults: :data:`DEFAULTS`, the official ViT-B): ``n_rois``, ``n_patches``,
    ``patch``; ``dim``, ``depth``, ``heads``, ``mlp_ratio``, ``drop_path``;
    ``gradients`` (path of the R x G gradient table: the official
    ``data/gradient_mapping_450.csv`` or the geometry stage's ``gradients.tsv``; the first
    ``n_gradients`` columns are used, unscaled) and ``tables_from_state`` (a zero table
    to be filled by a state dict, e.g. an imported model's); the predictor's
    ``pred_dim``, ``pred_depth``, ``pred_heads``; ``ema``, ``loss_beta``, ``masks``
    (:class:`~brainharmony.models.masks.JepaMaskConfig` fields), ``encode_with`` and
    ``grad_checkpoint``.

    Raises
    ------
    ValueError
        Unknown keys, inconsistent sizes, no gradient table.
    InputDataError
        An unreadable gradient table, or one without ``n_rois`` rows.
    """
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"brain_jepa model: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    c = {**DEFAULTS, **dict(cfg)}
    n_rois, n_patches, n_grad = int(c["n_rois"]), int(c["n_patches"]), int(c["n_gradients"])
    table = None
    if not c["tables_from_state"]:
        if c["gradients"] is None:
            raise ValueError(
                "brain_jepa model: no 'gradients' table path is given (the R x G brain "
                "gradient table, e.g. Brain-JEPA's data/gradient_mapping_450.csv), and "
                "tables_from_state is false"
            )
        table = read_roi_table(c["gradients"], n_columns=n_grad, n_rois=n_rois)
    dim, pred_dim = int(c["dim"]), int(c["pred_dim"])
    encoder = BrainJepaEncoder(
        gradient_pos_embed(dim, n_rois, n_patches, table, n_grad),
        patch=int(c["patch"]),
        dim=dim,
        depth=int(c["depth"]),
        heads=int(c["heads"]),
        mlp_ratio=float(c["mlp_ratio"]),
        drop_path=float(c["drop_path"]),
        grad_checkpoint=bool(c["grad_checkpoint"]),
    )
    pred_pos = gradient_pos_embed(pred_dim, n_rois, n_patches, table, n_grad)
    return assemble(BrainJepa, c, encoder, pred_pos)  # type: ignore[return-value]
