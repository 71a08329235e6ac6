"""LMAE: a masked autoencoder of ROI time series with *local* (HRF-length) masking.

The first stage of the LMAE -> RWMoE -> SSM predictor (arXiv 2508.16597). The paper gives
no recipe; every choice below is documented, with its reason, in ``docs/predictor.md``.

Public API
----------
* :func:`window_frames`: the masking window in frames, ``max(1, round(window_s / tr))``.
* :func:`sample_local_mask`: contiguous masked windows of exactly that many frames, per
  ROI or shared by all ROIs, never touching padded or censored frames.
* :func:`unpack_series`: validated ``x``/``mask``/``roi_mask``/``tr`` of a series batch.
* :func:`zscore_series`: per-series, per-ROI z-scoring over the valid frames.
* :func:`time_embedding`: fixed sin-cos features of the time in seconds.
* :class:`LMAEConfig`, :class:`FrameEncoder`, :class:`LMAE`, :func:`build`.
* :func:`load_lmae_folder`: a trained LMAE folder (``config.json`` + ``model.safetensors``)
  as (config, state dict); the predictor uses it to initialise its encoder.

Tokens
------
One token per frame: the frame's ROI vector, with hidden entries set to 0, concatenated
with a 0/1 "hidden" indicator per ROI (masked, or no data for that ROI), projected to
``dim``, plus a fixed sin-cos embedding of the frame's time in seconds (so series at
different TRs share one time axis). A transformer encoder (:class:`~brainharmony.models.
blocks.Encoder`, padded and censored frames masked out as keys) mixes the frames; a small
transformer decoder and a linear layer map every token back to the ``n_rois`` values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from brainharmony.io import InputDataError, PathLike
from brainharmony.models.blocks import Encoder, init_vit_weights

__all__ = [
    "LMAE",
    "FrameEncoder",
    "LMAEConfig",
    "build",
    "load_lmae_folder",
    "masked_mean",
    "reconstruction_loss",
    "sample_local_mask",
    "time_embedding",
    "unpack_series",
    "window_frames",
    "zscore_series",
]

MaskMode = Literal["per_roi", "shared"]
LossOn = Literal["masked", "all"]
InputNorm = Literal["zscore", "none"]

#: Keys of :class:`LMAEConfig` that define the encoder (what a predictor inherits).
ENCODER_KEYS = ("n_rois", "dim", "depth", "heads", "mlp_ratio", "drop_path", "input_norm")


# --------------------------------------------------------------------------------------
# Batch handling
# --------------------------------------------------------------------------------------


def unpack_series(
    batch: Mapping[str, Any], n_rois: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validated tensors of a ROI-series batch.

    Parameters
    ----------
    batch : mapping
        ``x`` (B, T, R) float; ``mask`` (B, T) bool, optional (all frames valid);
        ``roi_mask`` (B, R) bool, optional (all ROIs present); ``tr`` (B,) seconds.
    n_rois : int, optional
        Expected ``R``.

    Returns
    -------
    x : Tensor of shape (B, T, R), float32
        With every invalid frame, absent ROI or non-finite value set to 0.
    valid : Tensor of shape (B, T), bool
    roi_mask : Tensor of shape (B, R), bool
    tr : Tensor of shape (B,), float32
        Repetition times in seconds.

    Raises
    ------
    ValueError
        Missing keys, wrong shapes, a non-positive or non-finite TR.

    Notes
    -----
    A sample without any valid frame (e.g. a crop inside a censored stretch) is allowed:
    it is masked everywhere, contributes nothing to the LMAE loss and is left out of the
    predictor's loss.
    """
    if "x" not in batch:
        raise ValueError("batch has no 'x' (ROI series of shape (B, T, R))")
    x = torch.as_tensor(batch["x"])
    if x.dim() != 3:
        raise ValueError(f"batch 'x' must have shape (B, T, R); got {tuple(x.shape)}")
    b, t, r = x.shape
    if n_rois is not None and r != n_rois:
        raise ValueError(f"batch 'x' has {r} ROIs; the model was built for n_rois={n_rois}")
    valid = batch.get("mask")
    valid = (
        torch.ones(b, t, dtype=torch.bool, device=x.device)
        if valid is None
        else torch.as_tensor(valid, device=x.device).bool()
    )
    if valid.shape != (b, t):
        raise ValueError(f"batch 'mask' must have shape {(b, t)}; got {tuple(valid.shape)}")
    roi_mask = batch.get("roi_mask")
    roi_mask = (
        torch.ones(b, r, dtype=torch.bool, device=x.device)
        if roi_mask is None
        else torch.as_tensor(roi_mask, device=x.device).bool()
    )
    if roi_mask.shape != (b, r):
        raise ValueError(f"batch 'roi_mask' must have shape {(b, r)}; got {tuple(roi_mask.shape)}")
    if "tr" not in batch:
        raise ValueError("batch has no 'tr' (repetition time in seconds, shape (B,))")
    tr = torch.as_tensor(batch["tr"], device=x.device).reshape(-1).float()
    if tr.shape != (b,):
        raise ValueError(f"batch 'tr' must have shape ({b},); got {tuple(tr.shape)}")
    if not bool(torch.isfinite(tr).all()) or bool((tr <= 0).any()):
        raise ValueError(f"batch 'tr' must be finite and positive seconds; got {tr.tolist()}")
    x = x.float()
    keep = valid[:, :, None] & roi_mask[:, None, :] & torch.isfinite(x)
    x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x, valid, roi_mask, tr


def masked_mean(tokens: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``tokens`` (B, N, D) over the positions where ``valid`` (B, N) is True."""
    w = valid.to(tokens.dtype).unsqueeze(-1)
    total = torch.where(valid.unsqueeze(-1), tokens, torch.zeros_like(tokens)).sum(dim=1)
    return total / w.sum(dim=1).clamp(min=1.0)


def zscore_series(x: Tensor, valid: Tensor, roi_mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Z-score every ROI of every series over its valid frames.

    Parameters
    ----------
    x : Tensor of shape (B, T, R)
    valid : Tensor of shape (B, T), bool
    roi_mask : Tensor of shape (B, R), bool
    eps : float
        A ROI whose standard deviation is below ``eps`` becomes 0 (not divided).

    Returns
    -------
    Tensor of shape (B, T, R)
        Zero mean and unit (population) variance over valid frames; 0 at invalid frames and
        absent ROIs.
    """
    w = (valid[:, :, None] & roi_mask[:, None, :]).to(x.dtype)
    n = w.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=1, keepdim=True) / n
    centred = (x - mean) * w
    std = (centred.square().sum(dim=1, keepdim=True) / n).sqrt()
    scale = torch.where(std > eps, 1.0 / std.clamp(min=eps), torch.zeros_like(std))
    return centred * scale


# --------------------------------------------------------------------------------------
# Local masking
# --------------------------------------------------------------------------------------


def window_frames(tr: Tensor, window_s: float) -> Tensor:
    """Masking window length in frames: ``max(1, round(window_s / tr))``.

    Parameters
    ----------
    tr : Tensor of shape (B,)
        Repetition times in seconds.
    window_s : float
        Window length in seconds.

    Returns
    -------
    Tensor of shape (B,), int64
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be positive seconds; got {window_s}")
    return torch.round(window_s / tr.double()).long().clamp(min=1)


def sample_local_mask(
    valid: Tensor,
    tr: Tensor,
    n_rois: int,
    *,
    window_s: float = 16.0,
    ratio: float = 0.5,
    mode: MaskMode = "per_roi",
    roi_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw contiguous masked windows of ``L = window_frames(tr, window_s)`` frames.

    A jittered grid: the time axis of each masked sequence is cut into slots of
    ``S = max(L + 1, ceil(L / ratio))`` frames, starting at a random phase; each slot holds
    one window of exactly ``L`` frames at a random offset that leaves the slot's last frame
    unmasked. Windows therefore never touch (every masked run is exactly ``L`` frames
    long), and the masked fraction of a long, fully valid series is ``L / S`` (``ratio``
    when ``L / ratio`` is an integer, slightly below otherwise). A window that would cover
    a padded or censored frame, or fall off either end, is dropped, never shortened, so
    series shorter than about ``S`` frames may get no window at all.

    Parameters
    ----------
    valid : Tensor of shape (B, T), bool
        Real, uncensored frames.
    tr : Tensor of shape (B,)
        Repetition time of each sample in seconds.
    n_rois : int
        ``R``.
    window_s : float
        Window length in seconds (about one HRF: 16 s by default).
    ratio : float
        Target masked fraction, in (0, 1).
    mode : {"per_roi", "shared"}
        ``"per_roi"``: every ROI draws its own windows; ``"shared"``: one draw per sample,
        applied to all ROIs (whole frames are hidden).
    roi_mask : Tensor of shape (B, R), bool, optional
        ROIs without data are never masked.
    generator : torch.Generator, optional
        Random source (default: torch's global generator).

    Returns
    -------
    Tensor of shape (B, T, R), bool
        True where the value is hidden from the encoder (and scored by the loss).
    """
    if valid.dim() != 2:
        raise ValueError(f"valid must have shape (B, T); got {tuple(valid.shape)}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1); got {ratio}")
    if mode not in ("per_roi", "shared"):
        raise ValueError(f"mask mode must be 'per_roi' or 'shared'; got {mode!r}")
    b, t = valid.shape
    device = valid.device
    tr = torch.as_tensor(tr, device=device).reshape(-1)
    if tr.shape != (b,):
        raise ValueError(f"tr must have shape ({b},); got {tuple(tr.shape)}")
    length = window_frames(tr, window_s).to(device)  # (B,)
    slot = torch.maximum(length + 1, torch.ceil(length.double() / ratio).long())  # (B,)
    n_seq = n_rois if mode == "per_roi" else 1
    n_slots = int(((t + slot - 1) // slot).max().item()) + 1

    def uniform_int(high: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Integers uniform in [0, high) with ``high`` broadcast over ``shape``."""
        u = torch.rand(shape, generator=generator, device="cpu").to(device)
        return torch.minimum((u * high).long(), high - 1)

    phase = uniform_int(slot[:, None, None], (b, n_seq, 1))
    offset = uniform_int((slot - length)[:, None, None], (b, n_seq, n_slots))
    j = torch.arange(n_slots, device=device)[None, None, :]
    start = j * slot[:, None, None] - phase + offset  # (B, n_seq, n_slots)
    end = start + length[:, None, None]
    # A window is kept when it lies inside [0, T) and covers only valid frames.
    csum = torch.nn.functional.pad(valid.long().cumsum(dim=1), (1, 0))  # (B, T + 1)
    inside = (start >= 0) & (end <= t)
    s_idx = start.clamp(0, t).reshape(b, -1)
    e_idx = end.clamp(0, t).reshape(b, -1)
    covered = (torch.gather(csum, 1, e_idx) - torch.gather(csum, 1, s_idx)).reshape(start.shape)
    keep = inside & (covered == length[:, None, None])
    # Difference array: +1 at each kept start, -1 at its end; the running sum marks frames.
    diff = torch.zeros(b, n_seq, t + 1, dtype=torch.long, device=device)
    diff.scatter_add_(2, start.clamp(0, t), keep.long())
    diff.scatter_add_(2, end.clamp(0, t), -keep.long())
    masked = diff.cumsum(dim=2)[:, :, :t] > 0  # (B, n_seq, T)
    masked = masked.transpose(1, 2).expand(b, t, n_rois)
    masked = masked & valid[:, :, None]
    if roi_mask is not None:
        masked = masked & roi_mask[:, None, :].to(device)
    return masked.contiguous()


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def time_embedding(
    seconds: Tensor, dim: int, min_period: float = 2.0, max_period: float = 2000.0
) -> Tensor:
    """Fixed sin-cos features of a time in seconds.

    Parameters
    ----------
    seconds : Tensor of shape (...)
    dim : int
        Even output width; ``dim / 2`` periods geometrically spaced in
        ``[min_period, max_period]`` seconds.

    Returns
    -------
    Tensor of shape (..., dim)
    """
    if dim % 2 != 0:
        raise ValueError(f"time embedding width must be even; got {dim}")
    half = dim // 2
    periods = torch.logspace(
        math.log10(min_period),
        math.log10(max_period),
        half,
        dtype=torch.float32,
        device=seconds.device,
    )
    angle = seconds.float().unsqueeze(-1) * (2.0 * math.pi / periods)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


@dataclass(frozen=True)
class LMAEConfig:
    """Hyperparameters of :class:`LMAE` (the ``model:`` mapping of an ``lmae`` YAML).

    Attributes
    ----------
    n_rois : int
        ROIs per frame (400 for Schaefer-400).
    dim, depth, heads, mlp_ratio, drop_path
        Encoder width, blocks, attention heads, MLP ratio, stochastic depth.
    decoder_dim, decoder_depth, decoder_heads
        Decoder transformer (``decoder_depth=0``: a linear head on the encoder tokens).
    mask_window_s : float
        Masked window length in seconds (about one HRF).
    mask_ratio : float
        Target masked fraction in (0, 1).
    mask_mode : {"per_roi", "shared"}
        Independent windows per ROI, or the same windows for all ROIs.
    loss_on : {"masked", "all"}
        Score the masked entries only, or every valid entry.
    input_norm : {"zscore", "none"}
        Z-score each series per ROI over its valid frames before anything else (the
        reconstruction target is then the z-scored series).
    """

    n_rois: int = 400
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    decoder_dim: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 4
    mask_window_s: float = 16.0
    mask_ratio: float = 0.5
    mask_mode: MaskMode = "per_roi"
    loss_on: LossOn = "masked"
    input_norm: InputNorm = "zscore"

    def __post_init__(self) -> None:
        for name in ("n_rois", "dim", "depth", "heads", "decoder_dim", "decoder_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"lmae: {name} must be >= 1; got {getattr(self, name)}")
        if self.decoder_depth < 0:
            raise ValueError(f"lmae: decoder_depth must be >= 0; got {self.decoder_depth}")
        if self.dim % self.heads or self.dim % 2:
            raise ValueError(f"lmae: dim={self.dim} must be even and divisible by heads")
        if self.decoder_depth and (self.decoder_dim % self.decoder_heads or self.decoder_dim % 2):
            raise ValueError(
                f"lmae: decoder_dim={self.decoder_dim} must be even and divisible by "
                f"decoder_heads={self.decoder_heads}"
            )
        if not self.mask_window_s > 0:
            raise ValueError(f"lmae: mask_window_s must be > 0 s; got {self.mask_window_s}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"lmae: mask_ratio must be in (0, 1); got {self.mask_ratio}")
        if self.mask_mode not in ("per_roi", "shared"):
            raise ValueError(f"lmae: mask_mode must be per_roi or shared; got {self.mask_mode}")
        if self.loss_on not in ("masked", "all"):
            raise ValueError(f"lmae: loss_on must be masked or all; got {self.loss_on!r}")
        if self.input_norm not in ("zscore", "none"):
            raise ValueError(f"lmae: input_norm must be zscore or none; got {self.input_norm}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> LMAEConfig:
        """Build from a mapping, naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"lmae: unknown model keys {unknown}; known: {sorted(known)}")
        return cls(**dict(cfg))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)


class FrameEncoder(nn.Module):
    """Per-frame tokens of an ROI series, mixed by a transformer encoder.

    Parameters
    ----------
    n_rois, dim, depth, heads, mlp_ratio, drop_path
        See :class:`LMAEConfig`.
    input_norm : {"zscore", "none"}
        Applied by :meth:`prepare`.
    """

    def __init__(
        self,
        n_rois: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        input_norm: InputNorm = "zscore",
    ) -> None:
        super().__init__()
        self.n_rois = n_rois
        self.dim = dim
        self.input_norm = input_norm
        self.embed = nn.Linear(2 * n_rois, dim)
        self.encoder = Encoder(dim, depth, heads, mlp_ratio=mlp_ratio, drop_path=drop_path)

    def prepare(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:func:`unpack_series` then the configured input normalisation."""
        x, valid, roi_mask, tr = unpack_series(batch, self.n_rois)
        if self.input_norm == "zscore":
            x = zscore_series(x, valid, roi_mask)
        return x, valid, roi_mask, tr

    def forward(
        self,
        x: Tensor,
        valid: Tensor,
        roi_mask: Tensor,
        tr: Tensor,
        hidden: Tensor | None = None,
    ) -> Tensor:
        """Encode frames.

        Parameters
        ----------
        x : Tensor of shape (B, T, R)
            Prepared series (see :meth:`prepare`).
        valid : Tensor of shape (B, T), bool
        roi_mask : Tensor of shape (B, R), bool
        tr : Tensor of shape (B,)
        hidden : Tensor of shape (B, T, R), bool, optional
            Entries hidden from the encoder (masked); their values are never read.

        Returns
        -------
        Tensor of shape (B, T, dim)
            Tokens; positions where ``valid`` is False are meaningless.
        """
        b, t, _ = x.shape
        unseen = (~roi_mask[:, None, :]).expand(b, t, self.n_rois)
        if hidden is not None:
            unseen = unseen | hidden
        seen = torch.where(unseen, torch.zeros((), dtype=x.dtype, device=x.device), x)
        feats = torch.cat([seen, unseen.to(x.dtype)], dim=-1)
        seconds = torch.arange(t, device=x.device, dtype=torch.float32)[None, :] * tr[:, None]
        tokens = self.embed(feats) + time_embedding(seconds, self.dim)
        return self.encoder(tokens, valid)


class LMAE(nn.Module):
    """Local masked autoencoder (see the module docstring and ``docs/predictor.md``).

    Parameters
    ----------
    config : LMAEConfig
    """

    def __init__(self, config: LMAEConfig) -> None:
        super().__init__()
        self.hparams = config
        c = config
        self.encoder = FrameEncoder(
            c.n_rois, c.dim, c.depth, c.heads, c.mlp_ratio, c.drop_path, c.input_norm
        )
        if c.decoder_depth > 0:
            self.decoder_embed: nn.Module = nn.Linear(c.dim, c.decoder_dim)
            self.decoder: nn.Module | None = Encoder(
                c.decoder_dim, c.decoder_depth, c.decoder_heads, mlp_ratio=c.mlp_ratio
            )
            self.head = nn.Linear(c.decoder_dim, c.n_rois)
        else:
            self.decoder_embed = nn.Identity()
            self.decoder = None
            self.head = nn.Linear(c.dim, c.n_rois)
        self.apply(init_vit_weights)

    def reconstruct(
        self, x: Tensor, valid: Tensor, roi_mask: Tensor, tr: Tensor, hidden: Tensor
    ) -> Tensor:
        """Predict every entry of the (prepared) series with ``hidden`` entries unseen.

        Returns
        -------
        Tensor of shape (B, T, R)
        """
        tokens = self.encoder(x, valid, roi_mask, tr, hidden)
        if self.decoder is not None:
            t = x.shape[1]
            seconds = torch.arange(t, device=x.device, dtype=torch.float32)[None, :] * tr[:, None]
            dec = self.decoder_embed(tokens) + time_embedding(seconds, self.hparams.decoder_dim)
            tokens = self.decoder(dec, valid)
        return self.head(tokens)

    def sample_mask(
        self,
        valid: Tensor,
        roi_mask: Tensor,
        tr: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """:func:`sample_local_mask` with this model's settings."""
        c = self.hparams
        return sample_local_mask(
            valid,
            tr,
            c.n_rois,
            window_s=c.mask_window_s,
            ratio=c.mask_ratio,
            mode=c.mask_mode,
            roi_mask=roi_mask,
            generator=generator,
        )

    def score_weights(self, valid: Tensor, roi_mask: Tensor, hidden: Tensor) -> Tensor:
        """Entries the loss scores: valid frame, present ROI, and masked if ``loss_on`` is
        ``"masked"`` (B, T, R) bool."""
        present = valid[:, :, None] & roi_mask[:, None, :]
        return present & hidden if self.hparams.loss_on == "masked" else present

    def forward_loss(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Masked reconstruction loss of a series batch.

        Returns
        -------
        loss : Tensor
            Mean squared error over the scored entries (see :meth:`score_weights`).
        logs : dict
            ``loss``, ``mask_ratio`` (hidden / valid entries), ``mse_masked``,
            ``mse_visible``.
        """
        x, valid, roi_mask, tr = self.encoder.prepare(batch)
        hidden = self.sample_mask(valid, roi_mask, tr, generator)
        pred = self.reconstruct(x, valid, roi_mask, tr, hidden)
        weights = self.score_weights(valid, roi_mask, hidden)
        loss = reconstruction_loss(pred, x, weights)
        with torch.no_grad():
            present = valid[:, :, None] & roi_mask[:, None, :]
            err = (pred.detach() - x).square()
            n_hidden = hidden.sum().clamp(min=1)
            n_visible = (present & ~hidden).sum().clamp(min=1)
            logs = {
                "loss": float(loss.detach()),
                "mask_ratio": float(hidden.sum() / present.sum().clamp(min=1)),
                "mse_masked": float((err * hidden).sum() / n_hidden),
                "mse_visible": float((err * (present & ~hidden)).sum() / n_visible),
            }
        return loss, logs

    def encode_tokens(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Unmasked frame tokens (B, T, dim) and their validity (B, T)."""
        x, valid, roi_mask, tr = self.encoder.prepare(batch)
        return self.encoder(x, valid, roi_mask, tr), valid

    def encode(self, batch: Mapping[str, Any]) -> Tensor:
        """Mean of the valid, unmasked frame tokens (B, dim)."""
        tokens, valid = self.encode_tokens(batch)
        return masked_mean(tokens, valid)

    def no_weight_decay(self) -> set[str]:
        """No parameter is exempt beyond what the trainer exempts by default."""
        return set()


def reconstruction_loss(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean squared error over the entries where ``weights`` is True.

    Entries outside ``weights`` contribute nothing (not even through NaN: they are
    selected out, not multiplied). With no scored entry the loss is an exact 0 that keeps
    the graph.
    """
    diff = torch.where(weights, pred - target, pred.new_zeros(()))
    return diff.square().sum() / weights.sum().clamp(min=1).to(pred.dtype)


def build(cfg: Mapping[str, Any]) -> LMAE:
    """Build an :class:`LMAE` from the ``model:`` mapping of its YAML."""
    return LMAE(LMAEConfig.from_mapping(cfg))


def _model_mapping(config: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """The LMAE ``model:`` mapping inside a saved ``config.json`` (several layouts)."""
    if "model" in config and isinstance(config["model"], Mapping):
        kind = config.get("kind")
        if kind is not None and kind != "lmae":
            raise InputDataError(path, f"is a {kind!r} model, not an 'lmae' one")
        return config["model"]
    return config


def load_lmae_folder(folder: PathLike) -> tuple[LMAEConfig, dict[str, Tensor]]:
    """Read a trained LMAE folder.

    Parameters
    ----------
    folder : path-like
        Holds ``config.json`` (the resolved model YAML, ``{"kind": "lmae", "model": {...}}``,
        or the ``model:`` mapping itself) and ``model.safetensors`` (the state dict).

    Returns
    -------
    config : LMAEConfig
    state : dict of str to Tensor
        The full LMAE state dict.

    Raises
    ------
    InputDataError
        A missing or unreadable file, or a config that is not an LMAE's.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    weights = folder / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise InputDataError(p, "not found (an LMAE folder needs config.json and weights)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputDataError(cfg_path, f"is not valid JSON ({err})") from err
    if not isinstance(raw, Mapping):
        raise InputDataError(cfg_path, "must hold a JSON object")
    try:
        config = LMAEConfig.from_mapping(_model_mapping(raw, cfg_path))
    except (TypeError, ValueError) as err:
        raise InputDataError(cfg_path, f"is not an LMAE config: {err}") from err
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises several error types for bad files
        raise InputDataError(weights, f"cannot be read as safetensors ({err})") from err
    return config, state
