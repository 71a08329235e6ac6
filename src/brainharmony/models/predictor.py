"""The LMAE -> RWMoE -> SSM phenotype predictor (arXiv 2508.16597, reconstructed).

Data flow for a batch of ROI series ``x`` (B, T, R) with frame mask (B, T), ROI mask
(B, R) and TR (B,) (every step padding-aware; see ``docs/predictor.md`` for the reasons)::

    x -> per-series z-score -> LMAE frame encoder -> frame tokens Z (B, T, D)
    ROI tokens   H_i = W (1/n) sum_t x_ti Z_t + e_i                       (B, R, D)
    spatial RWMoE on H, graph = per-subject FC (or a group FC)       -> H', gates (B, R, Es)
    Z_t <- Z_t + W' (1/R) sum_i x_ti H'_i          (ROI experts back onto the frames)
    temporal RWMoE: frames grouped into windows of ``window_s`` seconds; windows routed on
      the graph of windowed-FC similarity; every frame mixed by its window's gates
    Mamba stack over the valid frames (compacted to the front, so the causal scan never
      sees a padded frame before a real one) -> mean over valid frames   f_t (B, D)
    spatial read-out: gate-weighted mean of H' per expert, projected     f_s (B, D)
    head(LayerNorm([f_t, f_s])) -> regression value or class logits

Public API
----------
:class:`PredictorConfig` (with :class:`RWMoEConfig`, :class:`SSMConfig`),
:class:`Predictor` (``forward_loss``, ``predict``, ``encode``, ``encode_tokens``,
``predict_with_gates``, ``spatial_gates``), :func:`build`, :func:`export_expert_weights`,
:func:`write_gate_table`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainharmony.io import InputDataError, PathLike
from brainharmony.models.blocks import init_vit_weights
from brainharmony.models.lmae import (
    ENCODER_KEYS,
    FrameEncoder,
    load_lmae_folder,
    masked_mean,
    zscore_series,
)
from brainharmony.models.rwmoe import (
    WALKS,
    RWMoE,
    correlation_affinity,
    expert_weight_table,
    load_balancing_loss,
    sparsify_affinity,
    token_affinity,
    transition_matrix,
    window_assignment,
    window_dfc_affinity,
    write_expert_weights,
)
from brainharmony.models.ssm import MambaBlock

__all__ = [
    "Predictor",
    "PredictorConfig",
    "RWMoEConfig",
    "SSMConfig",
    "build",
    "export_expert_weights",
    "write_gate_table",
]

Task = Literal["regression", "classification"]
LossName = Literal["mse", "huber", "cross_entropy"]

#: Encoder settings a predictor uses when neither its YAML nor an LMAE folder gives them.
ENCODER_DEFAULTS: dict[str, Any] = {
    "dim": 64,
    "depth": 2,
    "heads": 4,
    "mlp_ratio": 4.0,
    "drop_path": 0.0,
    "input_norm": "zscore",
}


#: Keys an ``encoder:`` section may hold.
ENCODER_SECTION_KEYS = tuple(ENCODER_DEFAULTS)


def _check_keys(section: str, cfg: Mapping[str, Any], known_from: type | Iterable[str]) -> None:
    """Raise naming every key of ``cfg`` that is not a field (or member) of ``known_from``."""
    known = (
        {f.name for f in fields(known_from)} if isinstance(known_from, type) else set(known_from)
    )
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"predictor: unknown {section} keys {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class RWMoEConfig:
    """One RWMoE layer (the ``spatial:`` or ``temporal:`` section).

    Attributes
    ----------
    experts : int
        Number of experts.
    steps, walk, alpha
        Diffusion (see :func:`brainharmony.models.rwmoe.diffusion_features`).
    top_k : int, optional
        Sparse gating (top-k gates per node); ``None``: dense softmax.
    temperature : float
        Gate softmax temperature.
    hidden_ratio : float
        Expert hidden width / token width.
    threshold : float
        Similarities at or below it are no edge.
    top_k_edges : int, optional
        Keep the strongest edges per node.
    graph : str, optional
        Spatial: ``"subject"`` (FC of each series, default) or ``"group"`` (``group_fc``).
        Temporal: ``"dfc"`` (windowed-FC similarity, default) or ``"tokens"`` (cosine of
        the window tokens).
    group_fc : str, optional
        ``.npy`` file of an (R, R) group FC (spatial ``graph: group``).
    window_s : float
        Temporal window length in seconds.
    """

    experts: int = 4
    steps: int = 3
    walk: str = "power"
    alpha: float = 0.15
    top_k: int | None = None
    temperature: float = 1.0
    hidden_ratio: float = 2.0
    threshold: float = 0.0
    top_k_edges: int | None = None
    graph: str | None = None
    group_fc: str | None = None
    window_s: float = 30.0

    def __post_init__(self) -> None:
        if self.experts < 1:
            raise ValueError(f"predictor: experts must be >= 1; got {self.experts}")
        if self.walk not in WALKS:
            raise ValueError(f"predictor: walk must be one of {WALKS}; got {self.walk!r}")
        if self.walk != "ppr" and self.steps < 1:
            raise ValueError(f"predictor: steps must be >= 1; got {self.steps}")
        if not self.window_s > 0:
            raise ValueError(f"predictor: window_s must be > 0 s; got {self.window_s}")


@dataclass(frozen=True)
class SSMConfig:
    """The Mamba stack (the ``ssm:`` section): ``depth`` :class:`MambaBlock` s."""

    depth: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm: str = "layernorm"
    dropout: float = 0.0
    scan: str = "auto"

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"predictor: ssm depth must be >= 1; got {self.depth}")


@dataclass(frozen=True)
class PredictorConfig:
    """Hyperparameters of :class:`Predictor` (the ``model:`` mapping of its YAML).

    Attributes
    ----------
    target : str
        Batch key (phenotype column) to predict.
    task : {"regression", "classification"}
    n_classes : int, optional
        Required for classification (targets are 0 .. n_classes - 1).
    loss : {"mse", "huber", "cross_entropy"}, optional
        Default: ``mse`` for regression, ``cross_entropy`` for classification.
    huber_delta : float
        Huber threshold in units of the normalised target.
    target_norm : "batch", "none" or mapping ``{loc, scale}``
        Regression targets are learnt as ``(y - loc) / scale``. ``"batch"``: ``loc`` and
        ``scale`` are the mean and standard deviation of the first training batch's
        targets (stored in the state dict, so a reloaded model predicts the same).
    n_rois : int, optional
        ROIs (default 400, or the LMAE folder's).
    encoder : mapping
        Frame-encoder settings (``dim, depth, heads, mlp_ratio, drop_path, input_norm``).
    init_encoder : str, optional
        A trained LMAE folder (``config.json`` + ``model.safetensors``); its encoder
        settings are used and its encoder weights loaded.
    freeze_encoder : bool
        Keep the encoder fixed (no gradients, evaluation mode).
    spatial, temporal : RWMoEConfig
    aux_weight : float
        Weight of the load-balancing losses (spatial + temporal).
    ssm : SSMConfig
    head_dropout : float
        Dropout before the output layer.
    """

    target: str = "age"
    task: Task = "regression"
    n_classes: int | None = None
    loss: LossName | None = None
    huber_delta: float = 1.0
    target_norm: Any = "batch"
    n_rois: int | None = None
    encoder: Mapping[str, Any] = field(default_factory=dict)
    init_encoder: str | None = None
    freeze_encoder: bool = False
    spatial: RWMoEConfig = field(default_factory=RWMoEConfig)
    temporal: RWMoEConfig = field(default_factory=RWMoEConfig)
    aux_weight: float = 0.01
    ssm: SSMConfig = field(default_factory=SSMConfig)
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in ("regression", "classification"):
            raise ValueError(f"predictor: task must be regression or classification; {self.task}")
        if self.task == "classification":
            if self.n_classes is None or self.n_classes < 2:
                raise ValueError("predictor: classification needs n_classes >= 2")
            if self.loss not in (None, "cross_entropy"):
                raise ValueError(f"predictor: classification uses cross_entropy, not {self.loss}")
        elif self.loss not in (None, "mse", "huber"):
            raise ValueError(f"predictor: regression loss must be mse or huber; got {self.loss}")
        if not self.huber_delta > 0:
            raise ValueError(f"predictor: huber_delta must be > 0; got {self.huber_delta}")
        tn = self.target_norm
        if isinstance(tn, Mapping):
            if set(tn) != {"loc", "scale"} or not float(tn["scale"]) > 0:
                raise ValueError(f"predictor: target_norm mapping needs loc and scale > 0; {tn}")
        elif tn not in ("batch", "none", None):
            raise ValueError(f"predictor: target_norm must be batch, none or {{loc, scale}}; {tn}")
        _check_keys("encoder", self.encoder, ENCODER_SECTION_KEYS)
        spatial_graph = self.spatial.graph or "subject"
        if spatial_graph not in ("subject", "group"):
            raise ValueError(f"predictor: spatial graph must be subject or group; {spatial_graph}")
        if spatial_graph == "group" and not self.spatial.group_fc:
            raise ValueError("predictor: spatial graph 'group' needs group_fc (an .npy file)")
        if (self.temporal.graph or "dfc") not in ("dfc", "tokens"):
            raise ValueError(f"predictor: temporal graph must be dfc or tokens; {self.temporal}")
        if self.aux_weight < 0:
            raise ValueError(f"predictor: aux_weight must be >= 0; got {self.aux_weight}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"predictor: head_dropout must be in [0, 1); {self.head_dropout}")

    @property
    def loss_name(self) -> str:
        """The loss in use (default filled in)."""
        if self.loss is not None:
            return self.loss
        return "cross_entropy" if self.task == "classification" else "mse"

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> PredictorConfig:
        """Build from a (YAML) mapping, naming any unknown key."""
        _check_keys("model", cfg, cls)
        kw = dict(cfg)
        for name, sub in (("spatial", RWMoEConfig), ("temporal", RWMoEConfig), ("ssm", SSMConfig)):
            if name in kw and not isinstance(kw[name], sub):
                section = kw[name] or {}
                _check_keys(name, section, sub)
                kw[name] = sub(**section)
        if "encoder" in kw:
            kw["encoder"] = dict(kw["encoder"] or {})
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        out = asdict(self)
        out["encoder"] = dict(self.encoder)
        return out


def _resolve_encoder(
    config: PredictorConfig,
) -> tuple[PredictorConfig, dict[str, Any], dict[str, Tensor] | None]:
    """Encoder settings (and weights) from the YAML and, when given, the LMAE folder."""
    enc = {**ENCODER_DEFAULTS, **config.encoder}
    n_rois = config.n_rois if config.n_rois is not None else 400
    state: dict[str, Tensor] | None = None
    if config.init_encoder:
        folder = Path(config.init_encoder)
        lmae_cfg, full = load_lmae_folder(folder)
        pretrained = {k: getattr(lmae_cfg, k) for k in ENCODER_KEYS}
        asked = dict(config.encoder)
        if config.n_rois is not None:
            asked["n_rois"] = config.n_rois
        clash = {
            k: (v, pretrained[k])
            for k, v in asked.items()
            if k != "drop_path" and k in pretrained and v != pretrained[k]
        }
        if clash:
            detail = ", ".join(f"{k}: {a!r} here, {b!r} there" for k, (a, b) in clash.items())
            raise ValueError(
                f"predictor: encoder settings differ from the LMAE in {folder} ({detail})"
            )
        n_rois = int(pretrained.pop("n_rois"))
        enc = {**pretrained, "drop_path": asked.get("drop_path", pretrained["drop_path"])}
        state = {k[len("encoder.") :]: v for k, v in full.items() if k.startswith("encoder.")}
        if not state:
            raise InputDataError(folder / "model.safetensors", "holds no 'encoder.*' weights")
    return replace(config, n_rois=n_rois, encoder=enc), enc, state


def _load_group_fc(path: str, n_rois: int) -> Tensor:
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "group FC file not found")
    try:
        fc = np.load(p, allow_pickle=False)
    except ValueError as err:
        raise InputDataError(p, f"cannot be read as .npy ({err})") from err
    if fc.shape != (n_rois, n_rois):
        raise InputDataError(p, f"group FC must have shape ({n_rois}, {n_rois}); got {fc.shape}")
    if not np.isfinite(fc).all():
        raise InputDataError(p, "group FC has non-finite values")
    return torch.as_tensor(np.asarray(fc, dtype=np.float32))


class Predictor(nn.Module):
    """LMAE encoder -> spatial and temporal RWMoE -> Mamba stack -> head.

    Parameters
    ----------
    config : PredictorConfig
    """

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        config, enc, state = _resolve_encoder(config)
        self.hparams = config
        c = config
        n_rois = int(c.n_rois or 400)
        dim = int(enc["dim"])
        self.n_rois, self.dim = n_rois, dim
        self.encoder = FrameEncoder(n_rois=n_rois, **enc)
        self.roi_embed = nn.Parameter(torch.zeros(n_rois, dim))
        self.roi_proj = nn.Linear(dim, dim)
        self.spatial = self._moe(c.spatial, dim)
        self.roi_to_frame = nn.Linear(dim, dim)
        self.temporal = self._moe(c.temporal, dim)
        s = c.ssm
        self.ssm = nn.ModuleList(
            MambaBlock(
                dim,
                norm=s.norm,  # type: ignore[arg-type]
                dropout=s.dropout,
                layer_idx=i,
                d_state=s.d_state,
                d_conv=s.d_conv,
                expand=s.expand,
                scan=s.scan,
            )
            for i in range(s.depth)
        )
        self.ssm_norm = nn.LayerNorm(dim)
        self.readout = nn.Linear(c.spatial.experts * dim, dim)
        self.head_norm = nn.LayerNorm(2 * dim)
        self.head_drop = nn.Dropout(c.head_dropout)
        self.head = nn.Linear(2 * dim, c.n_classes if c.task == "classification" else 1)

        for module in (self.roi_proj, self.spatial, self.roi_to_frame, self.temporal):
            module.apply(init_vit_weights)
        for module in (self.ssm_norm, self.readout, self.head_norm, self.head):
            module.apply(init_vit_weights)
        nn.init.trunc_normal_(self.roi_embed, std=0.02, a=-0.04, b=0.04)
        with torch.no_grad():  # mamba_ssm's rescaling of the residual output projections
            for block in self.ssm:
                block.mixer.out_proj.weight.div_(math.sqrt(s.depth))
        if state is None:
            self.encoder.apply(init_vit_weights)
        else:
            try:
                self.encoder.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise InputDataError(
                    Path(str(c.init_encoder)) / "model.safetensors",
                    f"encoder weights do not fit the encoder: {err}",
                ) from err
        if c.freeze_encoder:
            self.encoder.requires_grad_(False)

        if (c.spatial.graph or "subject") == "group":
            self.register_buffer("group_fc", _load_group_fc(str(c.spatial.group_fc), n_rois))
        else:
            self.group_fc = None
        tn = c.target_norm
        loc, scale = (float(tn["loc"]), float(tn["scale"])) if isinstance(tn, Mapping) else (0, 1)
        self.register_buffer("target_loc", torch.tensor(loc, dtype=torch.float64))
        self.register_buffer("target_scale", torch.tensor(scale, dtype=torch.float64))
        ready = c.task == "classification" or tn != "batch"
        self.register_buffer("target_ready", torch.tensor(ready))

    @staticmethod
    def _moe(cfg: RWMoEConfig, dim: int) -> RWMoE:
        return RWMoE(
            dim,
            cfg.experts,
            steps=cfg.steps,
            walk=cfg.walk,  # type: ignore[arg-type]
            alpha=cfg.alpha,
            top_k=cfg.top_k,
            temperature=cfg.temperature,
            hidden_ratio=cfg.hidden_ratio,
        )

    def train(self, mode: bool = True) -> Predictor:
        """Set training mode; a frozen encoder always stays in evaluation mode."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.encoder.eval()
        return self

    # ----------------------------------------------------------------------------------
    # Forward pieces
    # ----------------------------------------------------------------------------------

    def _run(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Everything up to the pooled features (see the module docstring)."""
        c = self.hparams
        x, valid, roi_mask, tr = self.encoder.prepare(batch)
        frames = self.encoder(x, valid, roi_mask, tr)  # (B, T, D)
        zero = frames.new_zeros(())
        frames = torch.where(valid[..., None], frames, zero)
        xz = x if self.encoder.input_norm == "zscore" else zscore_series(x, valid, roi_mask)
        n_frames = valid.sum(dim=1).clamp(min=1).to(frames.dtype)[:, None, None]

        # ROI tokens: loadings of each ROI's series on the frame tokens, plus its identity.
        loading = torch.einsum("btr,btd->brd", xz, frames) / n_frames
        rois = self.roi_proj(loading) + self.roi_embed
        with torch.autocast(x.device.type, enabled=False):  # graphs in float32
            if self.group_fc is not None:
                sim = self.group_fc.float().expand(x.shape[0], -1, -1)
            else:
                sim = correlation_affinity(xz, valid, roi_mask)
            adj = sparsify_affinity(sim, roi_mask, c.spatial.threshold, c.spatial.top_k_edges)
            p_s = transition_matrix(adj, roi_mask)
        rois, gates_s = self.spatial(rois, p_s, roi_mask)
        rois = torch.where(roi_mask[..., None], rois, zero)

        # ROI experts back onto the frames.
        n_rois = roi_mask.sum(dim=1).clamp(min=1).to(frames.dtype)[:, None, None]
        frames = frames + self.roi_to_frame(torch.einsum("btr,brd->btd", xz, rois) / n_rois)

        # Temporal experts, routed per window.
        assign = window_assignment(valid, tr, c.temporal.window_s).to(frames.dtype)
        counts = assign.sum(dim=1)  # (B, K)
        win_valid = counts > 0
        windows = torch.einsum("btk,btd->bkd", assign, frames) / counts.clamp(min=1)[..., None]
        with torch.autocast(x.device.type, enabled=False):
            if (c.temporal.graph or "dfc") == "dfc":
                sim_t = window_dfc_affinity(xz, assign.float())
            else:
                sim_t = token_affinity(windows, win_valid)
            tc = c.temporal
            adj_t = sparsify_affinity(sim_t, win_valid, tc.threshold, tc.top_k_edges)
            p_t = transition_matrix(adj_t, win_valid)
        gates_t = self.temporal.route(windows, p_t, win_valid)
        frame_gates = torch.einsum("btk,bke->bte", assign, gates_t)
        frames = self.temporal.mix(frames, frame_gates)

        # Mamba over the valid frames, moved to the front (stable: time order kept).
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
        seq_valid = torch.gather(valid, 1, order)
        seq = torch.gather(frames, 1, order[..., None].expand(-1, -1, self.dim))
        seq = torch.where(seq_valid[..., None], seq, zero)
        for block in self.ssm:
            seq = block(seq)
        seq = self.ssm_norm(seq)
        pooled_t = masked_mean(seq, seq_valid)

        # Spatial read-out: per expert, the gate-weighted mean of the ROI tokens.
        g = gates_s * roi_mask[..., None].to(gates_s.dtype)
        clusters = torch.einsum("bre,brd->bed", g, rois) / g.sum(dim=1).clamp(min=1e-6)[..., None]
        pooled_s = self.readout(clusters.flatten(1))
        return {
            "features": torch.cat([pooled_t, pooled_s], dim=-1),
            "seq": seq,
            "seq_valid": seq_valid,
            "order": order,
            "valid": valid,
            "gates_spatial": gates_s,
            "roi_mask": roi_mask,
            "gates_temporal": gates_t,
            "window_valid": win_valid,
        }

    def _logits(self, features: Tensor) -> Tensor:
        return self.head(self.head_drop(self.head_norm(features)))

    # ----------------------------------------------------------------------------------
    # Contract methods
    # ----------------------------------------------------------------------------------

    def _targets(self, batch: Mapping[str, Any], like: Tensor) -> Tensor:
        name = self.hparams.target
        if name not in batch:
            raise ValueError(f"batch has no target column {name!r} (model target)")
        y = torch.as_tensor(batch[name], device=like.device).reshape(-1).double()
        if y.shape[0] != like.shape[0]:
            raise ValueError(f"target {name!r} has {y.shape[0]} values for {like.shape[0]} rows")
        return y

    def forward_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Supervised loss (task + ``aux_weight`` x load balancing) on the finite targets
        of samples with at least one valid frame and ROI.

        Returns
        -------
        loss : Tensor
        logs : dict
            ``loss``, ``task_loss``, ``aux_loss``, ``n_targets`` and ``mae`` (regression,
            target units) or ``accuracy`` (classification).
        """
        c = self.hparams
        out = self._run(batch)
        logits = self._logits(out["features"])
        y = self._targets(batch, logits)
        # A sample without a valid frame or ROI has no data: left out like a missing target.
        finite = torch.isfinite(y) & out["valid"].any(dim=1) & out["roi_mask"].any(dim=1)
        n = int(finite.sum())
        logs: dict[str, float] = {"n_targets": float(n)}
        if c.task == "classification":
            labels = torch.where(finite, y, torch.zeros_like(y))
            if bool((labels != labels.round()).any()) or bool(
                ((labels < 0) | (labels >= int(c.n_classes or 0))).any()
            ):
                raise ValueError(
                    f"target {c.target!r} must hold integers 0..{c.n_classes - 1}; "
                    f"got {y[finite].unique().tolist()}"
                )
            per = F.cross_entropy(logits.float(), labels.long(), reduction="none")
            with torch.no_grad():
                hit = (logits.argmax(dim=-1) == labels.long()) & finite
                logs["accuracy"] = float(hit.sum()) / max(n, 1)
        else:
            self._maybe_init_target_norm(y[finite])
            yn = ((y - self.target_loc) / self.target_scale).float()
            yn = torch.where(finite, yn, torch.zeros_like(yn))
            pred = logits[:, 0].float()
            if c.loss_name == "huber":
                per = F.huber_loss(pred, yn, reduction="none", delta=c.huber_delta)
            else:
                per = F.mse_loss(pred, yn, reduction="none")
            with torch.no_grad():
                value = pred.double() * self.target_scale + self.target_loc
                err = (value - y).abs()
                logs["mae"] = float(torch.where(finite, err, torch.zeros_like(err)).sum()) / max(
                    n, 1
                )
        per = torch.where(finite, per, torch.zeros_like(per))
        task_loss = per.sum() / max(n, 1)
        aux = load_balancing_loss(out["gates_spatial"], out["roi_mask"]) + load_balancing_loss(
            out["gates_temporal"], out["window_valid"]
        )
        loss = task_loss + c.aux_weight * aux
        logs.update(
            {
                "loss": float(loss.detach()),
                "task_loss": float(task_loss.detach()),
                "aux_loss": float(aux.detach()),
            }
        )
        return loss, logs

    @torch.no_grad()
    def _maybe_init_target_norm(self, y: Tensor) -> None:
        """Set ``target_loc``/``target_scale`` from the first batch (``target_norm: batch``)."""
        if bool(self.target_ready) or y.numel() == 0:
            return
        loc = y.mean()
        scale = y.std(unbiased=False) if y.numel() > 1 else torch.ones_like(loc)
        if not bool(scale > 1e-8):
            scale = torch.ones_like(loc)
        self.target_loc.copy_(loc)
        self.target_scale.copy_(scale)
        self.target_ready.fill_(True)

    def predict(self, batch: Mapping[str, Any]) -> Tensor:
        """Predictions: (B,) values in target units, or (B, n_classes) probabilities."""
        return self._prediction(self._run(batch))

    def predict_with_gates(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`predict` and :meth:`spatial_gates` from one forward pass."""
        out = self._run(batch)
        return self._prediction(out), out["gates_spatial"], out["roi_mask"]

    def _prediction(self, out: Mapping[str, Tensor]) -> Tensor:
        logits = self._logits(out["features"])
        if self.hparams.task == "classification":
            return logits.softmax(dim=-1)
        value = logits[:, 0].double() * self.target_scale + self.target_loc
        return value.to(logits.dtype)

    def encode(self, batch: Mapping[str, Any]) -> Tensor:
        """Pooled features before the head, (B, 2 * dim): [Mamba mean; spatial read-out]."""
        return self._run(batch)["features"]

    def encode_tokens(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Frame tokens after the Mamba stack, in the original frame order, and validity."""
        out = self._run(batch)
        seq, order = out["seq"], out["order"]
        tokens = torch.zeros_like(seq).scatter(1, order[..., None].expand_as(seq), seq)
        return tokens, out["valid"]

    def spatial_gates(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Per-ROI spatial expert weights (B, R, E) and the ROI mask (B, R)."""
        out = self._run(batch)
        return out["gates_spatial"], out["roi_mask"]

    def no_weight_decay(self) -> set[str]:
        """Parameters marked ``_no_weight_decay`` (Mamba's ``A_log`` and ``D``, the stacked
        expert biases) and the ROI identity embedding."""
        names = {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}
        return names | {"roi_embed"}


def build(cfg: Mapping[str, Any]) -> Predictor:
    """Build a :class:`Predictor` from the ``model:`` mapping of its YAML."""
    return Predictor(PredictorConfig.from_mapping(cfg))


@torch.no_grad()
def export_expert_weights(
    model: Predictor,
    batches: Iterable[Mapping[str, Any]],
    path: PathLike,
    *,
    roi_names: Sequence[str] | None = None,
    inputs: Sequence[PathLike] = (),
) -> Path:
    """Average the spatial gates over ``batches`` and write ``roi, expert, weight`` TSV.

    Parameters
    ----------
    model : Predictor
        Put in evaluation mode for the duration of the call.
    batches : iterable of mapping
        Series batches (e.g. a DataLoader over the subjects to summarise).
    path : path-like
        Output TSV (with a JSON provenance sidecar).
    roi_names : sequence of str, optional
    inputs : sequence of path-like
        Recorded in the sidecar.
    """
    was_training = model.training
    model.eval()
    gates, masks = [], []
    try:
        for batch in batches:
            g, m = model.spatial_gates(batch)
            gates.append(g.float().cpu())
            masks.append(m.cpu())
    finally:
        model.train(was_training)
    if not gates:
        raise ValueError("export_expert_weights: no batch given")
    return write_gate_table(model, gates, masks, path, roi_names=roi_names, inputs=inputs)


def write_gate_table(
    model: Predictor,
    gates: Sequence[Tensor],
    masks: Sequence[Tensor],
    path: PathLike,
    *,
    roi_names: Sequence[str] | None = None,
    inputs: Sequence[PathLike] = (),
) -> Path:
    """Write the mean of spatial gates already computed (batches of
    :meth:`Predictor.spatial_gates` / :meth:`Predictor.predict_with_gates`) as
    :func:`export_expert_weights` does."""
    table = expert_weight_table(
        torch.cat([g.float().cpu() for g in gates]), torch.cat([m.cpu() for m in masks]), roi_names
    )
    params = {"graph": model.hparams.spatial.graph or "subject", "walk": model.hparams.spatial.walk}
    return write_expert_weights(path, table, inputs=inputs, parameters=params)
