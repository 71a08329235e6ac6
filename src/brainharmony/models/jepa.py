"""BrainHarmonix-F: a ViT over ROI x time tokens trained with a JEPA objective.

Pipeline of one training step (:meth:`BrainHarmonixF.forward_loss`)
-------------------------------------------------------------------
1. **Tokens.** :class:`~brainharmony.models.tape.TAPE` cuts each item's ROI series
   (B, T, R) into time patches of ``k = round(tau / TR)`` frames *with the item's own TR*
   (items of different TRs may share a batch: TAPE groups them by ``k`` and returns one
   common R x P grid), projects them with the PI-resized kernel, and marks padded patches
   invalid. The position embedding (geometric harmonics + gradients per ROI, sin-cos per
   time patch; :class:`~brainharmony.models.posemb.RoiTimePosEmbed`) is added. Tokens are
   ROI-major: token ``roi * P + t``.
2. **Masks.** :func:`~brainharmony.models.masks.sample_jepa_masks` picks context and
   target tokens among the valid ones (Brain-JEPA's cross-ROI / cross-time / double-cross
   blocks).
3. **Context encoder.** The ViT (:class:`~brainharmony.models.blocks.Encoder`) sees only
   the context tokens (padded per item with a key mask).
4. **Targets.** The target encoder, an exponential moving average (EMA) of the context
   encoder (patch embedding and position projections included), encodes *all* valid
   tokens without gradient; its outputs are layer-normed (no affine) and gathered at the
   target positions.
5. **Predictor.** A narrow ViT maps the context outputs to its width, adds its own
   position embedding, appends a learned mask token (plus position) per target, runs its
   blocks over [context | targets] with the validity mask and maps the target outputs back
   to the encoder width.
6. **Loss.** Smooth-L1 between predictions and targets, averaged over features, then over
   each item's valid target tokens, then over the batch. Padded tokens are never keys in
   any attention and never enter the loss.

After each optimiser step the training loop calls :meth:`BrainHarmonixF.after_step`,
which moves the target encoder towards the context encoder with momentum rising linearly
from ``ema[0]`` to ``ema[1]`` over the run.

``encode`` returns the mean of the valid tokens of the (EMA) target encoder, the weights
the official Stage 0 uses; ``encode_with: context`` uses the context encoder instead.
``encode_tokens`` returns all R x P tokens and their validity.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from brainharmony.models.blocks import Encoder, init_vit_weights
from brainharmony.models.masks import JepaMaskConfig, mask_to_index, sample_jepa_masks
from brainharmony.models.posemb import RoiTimePosEmbed, read_roi_table
from brainharmony.models.tape import DEFAULT_TAU, TAPE

__all__ = ["BrainHarmonixF", "FEncoder", "JepaPredictor", "assemble", "build", "gather_tokens"]

logger = logging.getLogger(__name__)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """``tokens[b, index[b, j]]`` for tokens (B, N, D) and index (B, M) -> (B, M, D)."""
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def masked_mean(tokens: Tensor, valid: Tensor) -> Tensor:
    """Mean over the valid tokens of each item, (B, N, D) -> (B, D); zeros when none."""
    w = valid.to(tokens.dtype)[..., None]
    return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def _rescale_residual_branches(encoder: Encoder) -> None:
    """Divide each block's output projections by sqrt(2 * layer) (I-JEPA / BEiT init)."""
    for layer, block in enumerate(encoder.blocks, start=1):
        with torch.no_grad():
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def run_encoder(
    encoder: Encoder, x: Tensor, valid: Tensor | None, grad_checkpoint: bool = False
) -> Tensor:
    """Apply an :class:`Encoder`, optionally checkpointing each block (mask passed on)."""
    if not (grad_checkpoint and torch.is_grad_enabled() and encoder.training):
        return encoder(x, valid)
    for block in encoder.blocks:
        x = checkpoint(block, x, valid, use_reentrant=False)
    return encoder.norm(x)


class FEncoder(nn.Module):
    """TAPE + ROI x time position embedding + ViT encoder.

    Parameters
    ----------
    tape : TAPE
    pos : RoiTimePosEmbed
        Of width ``dim`` and grid ``n_rois x tape.n_patches``.
    dim, depth, heads, mlp_ratio, drop_path
        The ViT (:class:`~brainharmony.models.blocks.Encoder`).
    grad_checkpoint : bool
        Recompute block activations in the backward pass (saves memory at paper scale).
    """

    def __init__(
        self,
        tape: TAPE,
        pos: RoiTimePosEmbed,
        *,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if pos.dim != dim or pos.n_patches != tape.n_patches or tape.dim != dim:
            raise ValueError("FEncoder: TAPE, position embedding and encoder widths/grids differ")
        self.tape = tape
        self.pos = pos
        self.blocks = Encoder(dim, depth, heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.grad_checkpoint = bool(grad_checkpoint)
        self.n_rois, self.n_patches, self.dim = pos.n_rois, pos.n_patches, dim

    def embed(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Tokens with positions (B, R*P, D) and their validity (B, R*P)."""
        x = batch["x"]
        if x.dim() != 3 or x.shape[-1] != self.n_rois:
            raise ValueError(
                f"BrainHarmonix-F expects ROI series of shape (B, T, {self.n_rois}); "
                f"got {tuple(x.shape)}"
            )
        if "tr" not in batch:
            raise ValueError("BrainHarmonix-F needs the batch's repetition times ('tr')")
        tokens, valid = self.tape(x.float(), batch["tr"], batch.get("mask"), batch.get("roi_mask"))
        tokens = tokens + self.pos().to(tokens.dtype)
        b = tokens.shape[0]
        return tokens.reshape(b, -1, self.dim), valid.reshape(b, -1)

    def forward(self, tokens: Tensor, valid: Tensor | None) -> Tensor:
        """Encode embedded tokens (B, N, D) with key mask ``valid`` (B, N)."""
        return run_encoder(self.blocks, tokens, valid, self.grad_checkpoint)


class JepaPredictor(nn.Module):
    """Narrow ViT predicting target-encoder features at target positions.

    Parameters
    ----------
    dim : int
        Encoder width (input and output).
    pos : RoiTimePosEmbed
        The predictor's own position embedding (width ``pred_dim``).
    pred_dim, depth, heads, mlp_ratio
        The predictor ViT.
    """

    def __init__(
        self,
        dim: int,
        pos: RoiTimePosEmbed,
        *,
        pred_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if pos.dim != pred_dim:
            raise ValueError(f"JepaPredictor: position width {pos.dim} != pred_dim {pred_dim}")
        self.pos = pos
        self.embed = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.blocks = Encoder(pred_dim, depth, heads, mlp_ratio=mlp_ratio)
        self.head = nn.Linear(pred_dim, dim)
        self.grad_checkpoint = bool(grad_checkpoint)

    def forward(
        self,
        context: Tensor,
        ctx_index: Tensor,
        ctx_valid: Tensor,
        tgt_index: Tensor,
        tgt_valid: Tensor,
    ) -> Tensor:
        """Predict (B, Mt, dim) from context outputs (B, Mc, dim) and token positions."""
        pos = self.pos().reshape(-1, self.pos.dim).to(context.dtype)
        x_ctx = self.embed(context) + pos[ctx_index]
        x_tgt = self.mask_token.to(context.dtype) + pos[tgt_index]
        x = torch.cat([x_ctx, x_tgt], dim=1)
        valid = torch.cat([ctx_valid, tgt_valid], dim=1)
        out = run_encoder(self.blocks, x, valid, self.grad_checkpoint)
        return self.head(out[:, context.shape[1] :])


class BrainHarmonixF(nn.Module):
    """BrainHarmonix-F (module docstring). Build it with :func:`build`.

    Parameters
    ----------
    encoder : FEncoder
        The context encoder; the target encoder is a frozen deep copy, updated by EMA.
    predictor : JepaPredictor
    masks : JepaMaskConfig
    ema : (float, float)
        EMA momentum at the first and at the last step.
    loss_beta : float
        Smooth-L1 transition point.
    encode_with : {"target", "context"}
        Encoder used by :meth:`encode` / :meth:`encode_tokens`.
    """

    def __init__(
        self,
        encoder: FEncoder,
        predictor: JepaPredictor,
        *,
        masks: JepaMaskConfig | None = None,
        ema: tuple[float, float] = (0.996, 1.0),
        loss_beta: float = 1.0,
        encode_with: str = "target",
    ) -> None:
        super().__init__()
        m0, m1 = (float(v) for v in ema)
        if not 0.0 <= m0 <= m1 <= 1.0:
            raise ValueError(f"BrainHarmonix-F: ema must satisfy 0 <= start <= end <= 1; got {ema}")
        if encode_with not in ("target", "context"):
            raise ValueError(f"encode_with must be 'target' or 'context'; got {encode_with!r}")
        if loss_beta <= 0:
            raise ValueError(f"loss_beta must be > 0; got {loss_beta}")
        self.encoder = encoder
        self.predictor = predictor
        self.masks = masks or JepaMaskConfig()
        self.ema = (m0, m1)
        self.loss_beta = float(loss_beta)
        self.encode_with = encode_with
        self._init_weights()
        self.target_encoder = copy.deepcopy(encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.target_encoder.eval()
        self.momentum = m0

    def _init_weights(self) -> None:
        for module in (self.encoder.blocks, self.encoder.pos, self.predictor):
            module.apply(init_vit_weights)
        _rescale_residual_branches(self.encoder.blocks)
        _rescale_residual_branches(self.predictor.blocks)
        nn.init.trunc_normal_(self.predictor.mask_token, std=0.02, a=-0.04, b=0.04)

    def train(self, mode: bool = True) -> BrainHarmonixF:
        """Set training mode; the target encoder always stays in eval mode."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """Learned tokens and free position tables (besides biases and norms)."""
        return {
            name
            for name, param in self.named_parameters()
            if param.requires_grad and (name.endswith("mask_token") or name.endswith("roi_table"))
        }

    @property
    def grid(self) -> tuple[int, int]:
        """(n_rois, n_patches) of the token grid."""
        return self.encoder.n_rois, self.encoder.n_patches

    # ------------------------------------------------------------------ training
    def forward_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """JEPA loss of a batch of ROI series (module docstring)."""
        tokens, valid = self.encoder.embed(batch)
        b, n, _ = tokens.shape
        r, p = self.grid
        ctx, tgt = sample_jepa_masks(valid.reshape(b, r, p), self.masks)
        ctx_idx, ctx_ok = mask_to_index(ctx.reshape(b, n))
        tgt_idx, tgt_ok = mask_to_index(tgt.reshape(b, n))
        z = self.encoder(gather_tokens(tokens, ctx_idx), ctx_ok)
        with torch.no_grad():
            h, _, compact, _ = self._encode_valid(self.target_encoder, batch)
            h = F.layer_norm(h.float(), (h.shape[-1],))
            # Targets are valid tokens: their place among the compacted valid tokens.
            target = gather_tokens(h, torch.gather(compact, 1, tgt_idx))
        pred = self.predictor(z, ctx_idx, ctx_ok, tgt_idx, tgt_ok)
        per_token = F.smooth_l1_loss(
            pred.float(), target, reduction="none", beta=self.loss_beta
        ).mean(dim=-1)
        w = tgt_ok.to(per_token.dtype)
        per_item = (per_token * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        loss = per_item.mean()
        with torch.no_grad():
            sel = target[tgt_ok]
            logs = {
                "context_tokens": float(ctx_ok.sum()) / b,
                "target_tokens": float(tgt_ok.sum()) / b,
                "pred_std": float(pred.float()[tgt_ok].std(dim=0).mean()) if sel.numel() else 0.0,
                "ema_momentum": float(self.momentum),
            }
        return loss, logs

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA update of the target encoder with the momentum scheduled for ``step``."""
        m0, m1 = self.ema
        frac = min(max(step, 0) / max(total_steps, 1), 1.0)
        self.momentum = m0 + (m1 - m0) * frac
        online = [p.detach() for p in self.encoder.parameters()]
        target = list(self.target_encoder.parameters())
        torch._foreach_mul_(target, self.momentum)
        torch._foreach_add_(target, online, alpha=1.0 - self.momentum)

    # ------------------------------------------------------------------ features
    @staticmethod
    def _encode_valid(
        enc: FEncoder, batch: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encode only the valid tokens of each item (padding costs nothing).

        Returns
        -------
        out : Tensor of shape (B, M, D)
            Encoder outputs of the valid tokens, in grid order, padded to the longest item.
        ok : bool Tensor of shape (B, M)
        compact : LongTensor of shape (B, N)
            For each grid token, its place in ``out`` (meaningful for valid tokens only).
        valid : bool Tensor of shape (B, N)
            Validity of the grid tokens.
        """
        tokens, valid = enc.embed(batch)
        index, ok = mask_to_index(valid)
        out = enc(gather_tokens(tokens, index), ok)
        compact = (valid.long().cumsum(dim=1) - 1).clamp_min(0)
        return out, ok, compact, valid

    def _feature_encoder(self) -> FEncoder:
        return self.target_encoder if self.encode_with == "target" else self.encoder

    def encode_tokens(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """All tokens (B, R*P, D), ROI-major, zero where invalid, and their validity."""
        enc = self._feature_encoder()
        out, _, compact, valid = self._encode_valid(enc, batch)
        full = gather_tokens(out, compact)
        return full * valid[..., None].to(full.dtype), valid

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Mean of the valid encoder tokens, (B, D) (zeros for an item without any)."""
        tokens, valid = self.encode_tokens(batch)
        return masked_mean(tokens, valid)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(batch)


# ---------------------------------------------------------------------- build

_DEFAULTS: dict[str, Any] = {
    "n_rois": 400,
    "n_patches": 18,
    "dim": 768,
    "depth": 12,
    "heads": 12,
    "mlp_ratio": 4.0,
    "drop_path": 0.0,
    "tau": DEFAULT_TAU,
    "k_base": 48,
    "min_valid_fraction": 1.0,
    "interp": "lanczos3",
    "grid": "tr",
    "overflow": "error",
    "harmonics": None,
    "gradients": None,
    "n_harmonics": 200,
    "n_gradients": 30,
    "use_harmonics": True,
    "use_gradients": True,
    "pos_combine": "concat",
    "pos_roi_norm": "none",
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


def _pos(
    cfg: Mapping[str, Any], width: int, tables: dict[str, Any], placeholder: bool
) -> RoiTimePosEmbed:
    return RoiTimePosEmbed(
        width,
        int(cfg["n_rois"]),
        int(cfg["n_patches"]),
        harmonics=tables.get("harmonics"),
        gradients=tables.get("gradients"),
        use_harmonics=bool(cfg["use_harmonics"]),
        use_gradients=bool(cfg["use_gradients"]),
        combine=cfg["pos_combine"],
        roi_rescale=cfg["pos_roi_norm"],
        placeholder_shapes=(int(cfg["n_harmonics"]), int(cfg["n_gradients"]))
        if placeholder
        else None,
    )


def build(cfg: Mapping[str, Any]) -> BrainHarmonixF:
    """Build BrainHarmonix-F from the ``model:`` mapping of a model YAML.

    Keys (defaults: the paper's ViT-B): ``n_rois``, ``n_patches``; ``dim``, ``depth``,
    ``heads``, ``mlp_ratio``, ``drop_path``; TAPE's ``tau``, ``k_base``,
    ``min_valid_fraction``, ``interp``, ``grid``, ``overflow``; the position tables
    ``harmonics`` / ``gradients`` (paths of the geometry stage's ROI tables), how many of
    their columns to use (``n_harmonics``, ``n_gradients``), ``use_harmonics``,
    ``use_gradients``, ``pos_combine``, ``pos_roi_norm`` (``"minmax"``: the official
    rescaling of the ROI part) and ``tables_from_state`` (zero tables to be filled
    by a state dict: rebuilding a saved model without its table files); the predictor's
    ``pred_dim``, ``pred_depth``, ``pred_heads``; ``ema`` (start, end), ``loss_beta``,
    ``masks`` (:class:`~brainharmony.models.masks.JepaMaskConfig` fields),
    ``encode_with`` and ``grad_checkpoint``.

    Raises
    ------
    ValueError
        Unknown keys, inconsistent sizes.
    InputDataError
        Unreadable position tables.
    """
    unknown = sorted(set(cfg) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"bh_f model: unknown key(s) {unknown}; allowed: {sorted(_DEFAULTS)}")
    c = {**_DEFAULTS, **dict(cfg)}
    placeholder = bool(c["tables_from_state"])
    tables: dict[str, Any] = {}
    if not placeholder:
        for name, count in (("harmonics", "n_harmonics"), ("gradients", "n_gradients")):
            if not c[f"use_{name}"]:
                continue
            if c[name] is None:
                raise ValueError(
                    f"bh_f model: use_{name} is true but no '{name}' table path is given "
                    f"(or set use_{name}: false)"
                )
            tables[name] = read_roi_table(c[name], n_columns=int(c[count]), n_rois=int(c["n_rois"]))
    dim, pred_dim = int(c["dim"]), int(c["pred_dim"])
    tape = TAPE(
        dim,
        k_base=int(c["k_base"]),
        tau=float(c["tau"]),
        n_patches=int(c["n_patches"]),
        min_valid_fraction=float(c["min_valid_fraction"]),
        interp=c["interp"],
        grid=c["grid"],
        overflow=c["overflow"],
    )
    encoder = FEncoder(
        tape,
        _pos(c, dim, tables, placeholder),
        dim=dim,
        depth=int(c["depth"]),
        heads=int(c["heads"]),
        mlp_ratio=float(c["mlp_ratio"]),
        drop_path=float(c["drop_path"]),
        grad_checkpoint=bool(c["grad_checkpoint"]),
    )
    return assemble(BrainHarmonixF, c, encoder, _pos(c, pred_dim, tables, placeholder))


def assemble(
    cls: type[BrainHarmonixF], c: Mapping[str, Any], encoder: nn.Module, pred_pos: nn.Module
) -> BrainHarmonixF:
    """The JEPA model ``cls`` around a built ``encoder``: its predictor (position embedding
    ``pred_pos`` at width ``pred_dim``), masks, EMA and loss, from the full ``model:``
    mapping ``c`` (shared by BrainHarmonix-F and :mod:`brainharmony.models.brain_jepa`)."""
    predictor = JepaPredictor(
        int(c["dim"]),
        pred_pos,
        pred_dim=int(c["pred_dim"]),
        depth=int(c["pred_depth"]),
        heads=int(c["pred_heads"]),
        mlp_ratio=float(c["mlp_ratio"]),
        grad_checkpoint=bool(c["grad_checkpoint"]),
    )
    return cls(
        encoder,
        predictor,
        masks=JepaMaskConfig.from_mapping(c["masks"]),
        ema=tuple(c["ema"]),  # type: ignore[arg-type]
        loss_beta=float(c["loss_beta"]),
        encode_with=str(c["encode_with"]),
    )
