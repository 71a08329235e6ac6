"""The Harmonizer: hub tokens fusing frozen BrainHarmonix-F and -S latents.

Inputs are precomputed token files (:mod:`brainharmony.models.harmonizer_data`): the
frozen F encoder's ROI x time tokens ``f_tokens`` (B, Nf, Df) with their validity
``f_valid`` (B, Nf), and the frozen S encoder's volume tokens ``s_tokens`` (B, Ns, Ds).

Encoder
    Each modality's tokens are mapped to the Harmonizer width by a linear layer and get a
    fixed sin-cos position of their own grid (F: ROI x time patch, ROI-major; S: the 3-D
    patch grid) plus a learned modality embedding. ``n_hubs`` learned hub tokens are
    appended and a ViT runs over ``[F tokens | S tokens | hubs]`` with a key mask: padded F
    tokens are dropped before the encoder (each item keeps only its valid F tokens, padded
    to the batch's longest with a mask), so they are never attended to.
Decoders
    One per modality (the paper's D_F and D_S), MAE-style: a narrow ViT over
    ``[projected hubs | mask token + fixed position for every token to reconstruct]``,
    then a linear map to the modality's latent width. The only content a decoder sees is
    the hubs: every modality token is reconstructed from the hubs alone. The F decoder
    reconstructs the valid F tokens only.
Loss
    Mean squared error per token (features averaged), against targets normalised per token
    (``norm_targets``: zero mean, unit variance over the features, as MAE's
    ``norm_pix_loss``), averaged over each item's valid tokens, then over the batch, per
    modality: ``loss = weight_f * L_F + weight_s * L_S``. The official code averaged one
    shared decoder's error over all 8400 tokens, padded fMRI tokens included, so fMRI
    outweighed T1 6 : 1 by token count; here the weights are explicit.
Features
    :meth:`Harmonizer.encode` = LayerNorm(mean of the hub outputs), the pooled
    representation the downstream heads use; :meth:`Harmonizer.encode_tokens` returns the
    hub outputs.

Official layout (``brainharmony import-weights harmonizer``; docs/training.md):
``positions: sequence`` gives each token the 1-D sin-cos of its place in the concatenated
sequence (F token ``i`` at ``i``, S token ``j`` at ``n_f + j``) instead of its grid position,
and ``cls_token: true`` adds a learned token at position zero that takes part in attention
(its output is not used). With the input maps set to the official ones (identity, or the
shared ``pre_map``) and zero modality embeddings, the encoder's hub outputs equal the
official ``OneTokRegViT.forward_encoder``'s.

Ablations: ``n_hubs``; ``use_f: false`` or ``use_s: false`` (one modality only: no fusion).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainharmony.models.blocks import LN_EPS, Encoder, init_vit_weights
from brainharmony.models.jepa import gather_tokens, run_encoder
from brainharmony.models.masks import mask_to_index
from brainharmony.models.posemb import sincos_1d, sincos_nd

__all__ = ["Harmonizer", "ModalityDecoder", "build", "normalise_tokens"]


def normalise_tokens(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-token standardisation over the feature axis (population variance)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _token(dim: int) -> nn.Parameter:
    p = nn.Parameter(torch.zeros(1, 1, dim))
    nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
    return p


class ModalityDecoder(nn.Module):
    """Reconstruct one modality's tokens from the hub tokens alone.

    Parameters
    ----------
    dim : int
        Harmonizer width (hub tokens).
    dec_dim, depth, heads, mlp_ratio
        The decoder ViT.
    grid : sequence of int
        Token grid of the modality (fixed sin-cos positions of width ``dec_dim``).
    out_dim : int
        Width of the modality's latent tokens.
    """

    def __init__(
        self,
        dim: int,
        dec_dim: int,
        depth: int,
        heads: int,
        grid: Sequence[int],
        out_dim: int,
        mlp_ratio: float = 4.0,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.hub_proj = nn.Linear(dim, dec_dim)
        self.mask_token = _token(dec_dim)
        self.register_buffer("pos", sincos_nd(grid, dec_dim), persistent=False)
        self.blocks = Encoder(dec_dim, depth, heads, mlp_ratio=mlp_ratio)
        self.head = nn.Linear(dec_dim, out_dim)
        self.grad_checkpoint = bool(grad_checkpoint)

    def forward(self, hubs: Tensor, index: Tensor, valid: Tensor) -> Tensor:
        """Predict tokens at grid positions ``index`` (B, M) (``valid`` marks real ones).

        Returns
        -------
        Tensor of shape (B, M, out_dim)
        """
        b, n_h, _ = hubs.shape
        h = self.hub_proj(hubs)
        queries = self.mask_token.to(h.dtype) + self.pos.to(h.dtype)[index]
        x = torch.cat([h, queries], dim=1)
        ok = torch.cat([torch.ones(b, n_h, dtype=torch.bool, device=h.device), valid], dim=1)
        out = run_encoder(self.blocks, x, ok, self.grad_checkpoint)
        return self.head(out[:, n_h:])


class Harmonizer(nn.Module):
    """Hub-token fusion of F and S latents (module docstring). Build with :func:`build`.

    Parameters
    ----------
    f_dim, s_dim : int
        Widths of the F and S latent tokens.
    f_grid : (int, int)
        (n_rois, n_patches) of the F tokens (ROI-major).
    s_grid : (int, int, int)
        Patch grid of the S tokens.
    dim, depth, heads, mlp_ratio, drop_path
        Encoder ViT.
    dec_dim, dec_depth, dec_heads
        Each decoder's ViT.
    n_hubs : int
        Number of hub tokens.
    use_f, use_s : bool
        Modalities fed to the Harmonizer (at least one).
    weight_f, weight_s : float
        Loss weights of the modalities.
    norm_targets : bool
        Standardise each target token over its features.
    grad_checkpoint : bool
        Recompute block activations in the backward pass.
    positions : {"grid", "sequence"}
        Encoder positions: each modality's own grid (default) or the official 1-D index in
        the concatenated F | S sequence.
    cls_token : bool
        A learned token (position zero) joins the encoder's sequence (official layout).
    """

    def __init__(
        self,
        *,
        f_dim: int,
        s_dim: int,
        f_grid: Sequence[int],
        s_grid: Sequence[int],
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        dec_dim: int = 512,
        dec_depth: int = 8,
        dec_heads: int = 16,
        n_hubs: int = 128,
        use_f: bool = True,
        use_s: bool = True,
        weight_f: float = 1.0,
        weight_s: float = 1.0,
        norm_targets: bool = True,
        grad_checkpoint: bool = False,
        positions: str = "grid",
        cls_token: bool = False,
    ) -> None:
        super().__init__()
        if positions not in ("grid", "sequence"):
            raise ValueError(
                f"Harmonizer: positions must be 'grid' or 'sequence'; got {positions!r}"
            )
        if not (use_f or use_s):
            raise ValueError("Harmonizer: use_f and use_s are both false; nothing to fuse")
        if n_hubs < 1:
            raise ValueError(f"Harmonizer: n_hubs must be >= 1; got {n_hubs}")
        if len(f_grid) != 2 or len(s_grid) != 3:
            raise ValueError(
                f"Harmonizer: f_grid must be (n_rois, n_patches) and s_grid (gx, gy, gz); got "
                f"{list(f_grid)}, {list(s_grid)}"
            )
        for name, w, used in (("weight_f", weight_f, use_f), ("weight_s", weight_s, use_s)):
            if used and not w > 0:
                raise ValueError(f"Harmonizer: {name} must be > 0 for a modality in use; got {w}")
        self.use_f, self.use_s = bool(use_f), bool(use_s)
        self.weight_f, self.weight_s = float(weight_f), float(weight_s)
        self.norm_targets = bool(norm_targets)
        self.f_dim, self.s_dim = int(f_dim), int(s_dim)
        self.f_grid = tuple(int(g) for g in f_grid)
        self.s_grid = tuple(int(g) for g in s_grid)
        self.n_f = self.f_grid[0] * self.f_grid[1]
        self.n_s = self.s_grid[0] * self.s_grid[1] * self.s_grid[2]
        self.dim, self.n_hubs = int(dim), int(n_hubs)
        self.grad_checkpoint = bool(grad_checkpoint)
        self.positions = positions
        self.hubs = nn.Parameter(torch.zeros(1, self.n_hubs, self.dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim)) if cls_token else None
        if positions == "sequence":
            seq = sincos_1d(np.arange(self.n_f + self.n_s), self.dim)
            f_pos, s_pos = seq[: self.n_f], seq[self.n_f :]
        else:
            f_pos, s_pos = sincos_nd(self.f_grid, dim), sincos_nd(self.s_grid, dim)
        self.encoder = Encoder(dim, depth, heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.fc_norm = nn.LayerNorm(dim, eps=LN_EPS)
        if self.use_f:
            self.f_in = nn.Linear(f_dim, dim)
            self.f_modality = _token(dim)
            self.register_buffer("f_pos", f_pos, persistent=False)
            self.f_decoder = ModalityDecoder(
                dim, dec_dim, dec_depth, dec_heads, self.f_grid, f_dim, mlp_ratio, grad_checkpoint
            )
        if self.use_s:
            self.s_in = nn.Linear(s_dim, dim)
            self.s_modality = _token(dim)
            self.register_buffer("s_pos", s_pos, persistent=False)
            self.s_decoder = ModalityDecoder(
                dim, dec_dim, dec_depth, dec_heads, self.s_grid, s_dim, mlp_ratio, grad_checkpoint
            )
        self._init_weights()

    def _init_weights(self) -> None:
        self.apply(init_vit_weights)
        # Hubs at the 0.02 scale of every other learned token (the official std-1 init
        # dwarfs the projected inputs).
        nn.init.trunc_normal_(self.hubs, std=0.02, a=-0.04, b=0.04)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)
        for name in ("f_modality", "s_modality"):
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=0.02, a=-0.04, b=0.04)
        for dec in (getattr(self, "f_decoder", None), getattr(self, "s_decoder", None)):
            if dec is not None:
                nn.init.trunc_normal_(dec.mask_token, std=0.02, a=-0.04, b=0.04)

    def no_weight_decay(self) -> set[str]:
        """Learned tokens (besides biases and norms)."""
        return {
            name
            for name, _ in self.named_parameters()
            if name in ("hubs", "cls_token")
            or name.endswith("mask_token")
            or name.endswith("_modality")
        }

    # ------------------------------------------------------------------ inputs
    def _f_inputs(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Valid F tokens (B, M, Df) (padded per item), their grid index and validity."""
        f = batch.get("f_tokens")
        if f is None:
            raise ValueError("Harmonizer: use_f is true but the batch has no 'f_tokens'")
        if f.dim() != 3 or f.shape[1:] != (self.n_f, self.f_dim):
            raise ValueError(
                f"Harmonizer: f_tokens must have shape (B, {self.n_f}, {self.f_dim}) for grid "
                f"{self.f_grid}; got {tuple(f.shape)}"
            )
        valid = batch.get("f_valid")
        if valid is None:
            valid = torch.ones(f.shape[:2], dtype=torch.bool, device=f.device)
        if valid.shape != f.shape[:2]:
            raise ValueError(f"Harmonizer: f_valid {tuple(valid.shape)} != {tuple(f.shape[:2])}")
        index, ok = mask_to_index(valid.bool())
        return gather_tokens(f, index), index, ok

    def _s_inputs(self, batch: Mapping[str, Tensor]) -> Tensor:
        s = batch.get("s_tokens")
        if s is None:
            raise ValueError("Harmonizer: use_s is true but the batch has no 's_tokens'")
        if s.dim() != 3 or s.shape[1:] != (self.n_s, self.s_dim):
            raise ValueError(
                f"Harmonizer: s_tokens must have shape (B, {self.n_s}, {self.s_dim}) for grid "
                f"{self.s_grid}; got {tuple(s.shape)}"
            )
        return s

    def _encode(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Hub outputs (B, n_hubs, dim) and the inputs the loss needs."""
        parts: list[Tensor] = []
        oks: list[Tensor] = []
        inputs: dict[str, Any] = {}
        if self.use_f:
            f, f_idx, f_ok = self._f_inputs(batch)
            x = self.f_in(f.float()) + self.f_pos[f_idx] + self.f_modality
            parts.append(x)
            oks.append(f_ok)
            inputs["f"] = (f, f_idx, f_ok)
        if self.use_s:
            s = self._s_inputs(batch)
            parts.append(self.s_in(s.float()) + self.s_pos + self.s_modality)
            oks.append(torch.ones(s.shape[:2], dtype=torch.bool, device=s.device))
            inputs["s"] = s
        b = parts[0].shape[0]
        if self.cls_token is not None:  # position zero: no position added
            parts.insert(0, self.cls_token.to(parts[0].dtype).expand(b, -1, -1))
            oks.insert(0, torch.ones(b, 1, dtype=torch.bool, device=parts[0].device))
        parts.append(self.hubs.expand(b, -1, -1).to(parts[0].dtype))
        oks.append(torch.ones(b, self.n_hubs, dtype=torch.bool, device=parts[0].device))
        x = torch.cat(parts, dim=1)
        ok = torch.cat(oks, dim=1)
        out = run_encoder(self.encoder, x, ok, self.grad_checkpoint)
        return out[:, -self.n_hubs :], inputs

    # ------------------------------------------------------------------ API
    def forward_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction loss of both modalities' latents from the hubs (module docstring)."""
        hubs, inputs = self._encode(batch)
        total = hubs.new_zeros(())
        logs: dict[str, float] = {}
        if self.use_f:
            f, f_idx, f_ok = inputs["f"]
            pred = self.f_decoder(hubs, f_idx, f_ok).float()
            target = normalise_tokens(f.float()) if self.norm_targets else f.float()
            per_token = F.mse_loss(pred, target, reduction="none").mean(dim=-1)
            w = f_ok.to(per_token.dtype)
            loss_f = ((per_token * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)).mean()
            total = total + self.weight_f * loss_f
            logs["loss_f"] = float(loss_f.detach())
        if self.use_s:
            s = inputs["s"]
            idx = torch.arange(self.n_s, device=s.device).expand(s.shape[0], -1)
            ok = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
            pred = self.s_decoder(hubs, idx, ok).float()
            target = normalise_tokens(s.float()) if self.norm_targets else s.float()
            loss_s = F.mse_loss(pred, target)
            total = total + self.weight_s * loss_s
            logs["loss_s"] = float(loss_s.detach())
        return total, logs

    def encode_tokens(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Hub outputs (B, n_hubs, dim) and an all-True validity mask."""
        hubs, _ = self._encode(batch)
        return hubs, torch.ones(hubs.shape[:2], dtype=torch.bool, device=hubs.device)

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """LayerNorm of the mean hub output, (B, dim)."""
        hubs, _ = self._encode(batch)
        return self.fc_norm(hubs.mean(dim=1))

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Same as :meth:`encode`."""
        return self.encode(batch)


_KEYS = frozenset(inspect.signature(Harmonizer.__init__).parameters) - {"self"}


def build(cfg: Mapping[str, Any]) -> Harmonizer:
    """Build a :class:`Harmonizer` from the ``model:`` mapping of a model YAML.

    Keys are the keyword arguments of :class:`Harmonizer` (``f_dim``, ``s_dim``,
    ``f_grid``, ``s_grid`` required).

    Raises
    ------
    ValueError
        Unknown or missing keys, inconsistent sizes.
    """
    unknown = sorted(set(cfg) - _KEYS)
    if unknown:
        raise ValueError(f"harmonizer model: unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
    missing = sorted({"f_dim", "s_dim", "f_grid", "s_grid"} - set(cfg))
    if missing:
        raise ValueError(f"harmonizer model: missing key(s) {missing}")
    kwargs = dict(cfg)
    kwargs["f_grid"] = tuple(kwargs["f_grid"])
    kwargs["s_grid"] = tuple(kwargs["s_grid"])
    return Harmonizer(**kwargs)
