"""Converters of the official BrainHarmonix checkpoints (hzlab/Brain-Harmony).

Sources
-------
``bh-f`` (``harmonix-f/model.pth``)
    A flat state dict of the JEPA: ``encoder.*`` (context encoder), ``encoder_ema.*`` (the
    EMA target encoder, the weights the official Stage 0 embeds with) and ``decoder.*``
    (the predictor). ``encoder_ema.*`` becomes our ``target_encoder`` (what
    ``encode``/``embed`` use) and ``encoder.*`` our context ``encoder``. The two position
    tables are not in the state dict (the official model reads them from CSV files):
    ``extra`` must name ``harmonics`` (``schaefer400_roi_eigenmodes.csv``, ROI x 200) and
    ``gradients`` (``gradient_mapping_400.csv``, ROI x 30).
``bh-s`` (``harmonix-s/model.pth``)
    ``{"model": state dict, ...}`` of the 3D MAE encoder (``patch_embed``, ``cls_token``,
    ``pos_embed``, ``blocks``, ``norm``).
``harmonizer`` (``harmonizer/model.pth``)
    ``{"model": state dict, ...}`` of the stage-1 ``OneTokRegViT`` (encoder, hub tokens and
    the shared decoder).

Compatibility modes (set in the returned configuration, listed in the notes)
---------------------------------------------------------------------------
* F: TAPE ``interp: bicubic, grid: k`` (the official PI-resize), ``pos_roi_norm: minmax``
  with the official tables stored unscaled (``tables_from_state``), ``tau = k_base x
  0.735 s``, ``min_valid_fraction: 0.01`` (a patch with any real frame is a token, as the
  official ``ceil(T / k)``).
* S: ``cls_token: true``, ``pos_axes: [1, 0, 2]`` (the official sin-cos channel order).
* Harmonizer: ``positions: sequence``, ``cls_token: true``, input maps set to the official
  ones (identity, or the shared ``pre_map``), zero modality embeddings, hub tokens = the
  official hub tokens + their positional embedding (summed once: the same at every use).

What is not imported, and why, is in the notes: the fixed sin-cos tables (recomputed here
and checked against the file), the F predictor and the Harmonizer's shared decoder (their
layouts differ from ours; they are not used to embed, and keep a fresh, seeded
initialisation). Each rule is a pure function of key names and shapes (:func:`plan_bh_f`,
:func:`plan_bh_s`, :func:`plan_harmonizer`), so the tests check the full-size official
inventories without the released files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from brainharmony.io import InputDataError
from brainharmony.models.importers import CheckpointMismatch, ImportedModel
from brainharmony.models.posemb import read_roi_table
from brainharmony.models.registry import build_model

__all__ = [
    "Plan",
    "Rule",
    "config_bh_f",
    "config_bh_s",
    "config_harmonizer",
    "convert_bh_f",
    "convert_bh_s",
    "convert_harmonizer",
    "guess_source",
    "plan_bh_f",
    "plan_bh_s",
    "plan_harmonizer",
    "state_dict_of",
]

#: UK Biobank TR (s) at which the official base kernel is learned: tau = k_base x 0.735.
OFFICIAL_BASE_TR = 0.735
#: Largest difference allowed between a file's fixed sin-cos table and ours (the values
#: lie in [-1, 1]; a wrong layout differs by O(1)).
FIXED_TABLE_TOL = 1e-3
#: Seed of the parts that keep a fresh initialisation (predictor, decoders).
INIT_SEED = 0

FIXED = "fixed sin-cos table: recomputed by our model and checked equal to the file's"
F_PREDICTOR = (
    "the JEPA predictor: its position embedding is built differently here (a projection "
    "of the encoder's ROI embedding officially, its own table projections here); not used "
    "to embed, our predictor keeps a fresh initialisation"
)
H_DECODER = (
    "the shared stage-1 decoder: our Harmonizer has one decoder per modality; not used to "
    "embed, our decoders keep a fresh initialisation"
)
S_DECODER = (
    "the MAE decoder: not part of the official encoder code; our decoder keeps a fresh "
    "initialisation"
)
STAGE2_HEAD = "a stage-2 fine-tuning head: not part of the pretrained Harmonizer"


def _same(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Rule:
    """Our key ``target`` = ``fn(*official tensors at sources)``."""

    target: str
    sources: tuple[str, ...]
    fn: Callable[..., Tensor] = _same


@dataclass
class Plan:
    """How an official state dict becomes ours."""

    rules: list[Rule] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def covered(self) -> set[str]:
        """Official keys that feed a rule."""
        return {s for rule in self.rules for s in rule.sources}


# --------------------------------------------------------------------------- checkpoint


def state_dict_of(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint: its ``"model"`` entry when it has one, else itself.

    Raises
    ------
    CheckpointMismatch
        When no mapping of names to tensors is found.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatch(f"is a {type(checkpoint).__name__}, not a checkpoint mapping")
    inner = checkpoint.get("model") if "model" in checkpoint else checkpoint
    if not isinstance(inner, Mapping) or not inner:
        raise CheckpointMismatch("holds no state dict (no 'model' mapping of tensors)")
    bad = [k for k, v in inner.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointMismatch(
            f"holds no state dict: entries {[str(b) for b in bad[:5]]} are not named tensors"
        )
    return dict(inner)


def guess_source(keys: Sequence[str]) -> str | None:
    """Which official BrainHarmonix file these state-dict keys look like (or ``None``)."""
    names = set(keys)
    if any(k.startswith("encoder_ema.") for k in names):
        return "bh-f"
    if "latent_tokens" in names:
        return "harmonizer"
    if "patch_embed.proj.weight" in names and "cls_token" in names:
        return "bh-s"
    return None


def _expect(source: str, keys: Sequence[str], ok: bool, what: str) -> None:
    if ok:
        return
    guess = guess_source(keys)
    hint = f"; its keys look like a {guess!r} checkpoint" if guess and guess != source else ""
    raise CheckpointMismatch(f"is not a {source} checkpoint: {what}{hint}")


def _blocks(keys: Sequence[str], prefix: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _heads(dim: int, overrides: Mapping[str, Any], key: str = "heads") -> int:
    """Heads are not stored in a state dict: the ViT convention of 64 per head."""
    return int(overrides.get(key, max(1, dim // 64)))


def _dropped_notes(plan: Plan) -> list[str]:
    by_reason: dict[str, list[str]] = {}
    for key, reason in sorted(plan.dropped.items()):
        by_reason.setdefault(reason, []).append(key)
    return [
        f"dropped {len(keys)} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}): "
        f"{reason}"
        for reason, keys in by_reason.items()
    ]


def _unknown(plan: Plan, keys: Sequence[str], source: str) -> None:
    left = sorted(set(keys) - plan.covered() - set(plan.dropped))
    if left:
        raise CheckpointMismatch(
            f"has {len(left)} key(s) the {source} importer does not know: {left[:5]}"
            f"{' ...' if len(left) > 5 else ''}"
        )


def _check_table(name: str, official: Tensor, ours: Tensor) -> float:
    official = official.detach().double().reshape(ours.shape)
    diff = float((official - ours.detach().double()).abs().max()) if ours.numel() else 0.0
    if diff > FIXED_TABLE_TOL:
        raise CheckpointMismatch(
            f"its fixed table {name} differs from the sin-cos table the importer assumes "
            f"(max abs difference {diff:.3g} > {FIXED_TABLE_TOL:g})"
        )
    return diff


def _build(kind: str, cfg: Mapping[str, Any]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return build_model(kind, cfg)


def _assemble(
    model: nn.Module,
    plan: Plan,
    official: Mapping[str, Tensor],
    extra_state: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Our complete state dict: the plan's tensors over the fresh model's."""
    own = model.state_dict()
    mapped: dict[str, Tensor] = dict(extra_state or {})
    for rule in plan.rules:
        mapped[rule.target] = rule.fn(*(official[s] for s in rule.sources))
    wrong = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    )
    absent = sorted(k for k in mapped if k not in own)
    if wrong or absent:
        raise CheckpointMismatch(f"does not fit the derived model: {(wrong + absent)[:5]}")
    for key, value in mapped.items():
        own[key] = value.detach().to(own[key].dtype).clone()
    model.load_state_dict(own, strict=True)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- bh-f


def _f_encoder_rules(plan: Plan, keys: Sequence[str], off: str, ours: str) -> None:
    for key in keys:
        if not key.startswith(off):
            continue
        rest = key[len(off) :]
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)", rest):
            plan.rules.append(Rule(f"{ours}blocks.blocks.{m.group(1)}.{m.group(2)}", (key,)))
        elif rest in ("norm.weight", "norm.bias"):
            plan.rules.append(Rule(f"{ours}blocks.{rest}", (key,)))
        elif rest == "patch_embed.proj.weight":
            plan.rules.append(
                Rule(f"{ours}tape.weight", (key,), lambda w: w.reshape(w.shape[0], -1))
            )
        elif rest == "patch_embed.proj.bias":
            plan.rules.append(Rule(f"{ours}tape.bias", (key,)))
        elif m := re.fullmatch(r"pos_embed\.(geo_harm|grad)_proj\.(weight|bias)", rest):
            table = "harmonics" if m.group(1) == "geo_harm" else "gradients"
            plan.rules.append(Rule(f"{ours}pos.proj.{table}.{m.group(2)}", (key,)))
        elif rest == "pos_embed.emb_h_encoder":
            plan.dropped[key] = FIXED
        elif rest == "pos_embed.emb_h_decoder" or rest.startswith("pos_embed.decoder_pos_embed_"):
            plan.dropped[key] = F_PREDICTOR


def plan_bh_f(shapes: Mapping[str, Sequence[int]]) -> Plan:
    """Key plan of a ``harmonix-f/model.pth`` state dict (names and shapes only)."""
    keys = list(shapes)
    _expect(
        "bh-f", keys, any(k.startswith("encoder_ema.") for k in keys), "no 'encoder_ema.*' weights"
    )
    plan = Plan()
    _f_encoder_rules(plan, keys, "encoder_ema.", "target_encoder.")
    if any(k.startswith("encoder.") for k in keys):
        _f_encoder_rules(plan, keys, "encoder.", "encoder.")
    else:
        ema_rules = list(plan.rules)
        plan.rules += [
            Rule("encoder." + r.target[len("target_encoder.") :], r.sources, r.fn)
            for r in ema_rules
        ]
        plan.notes.append(
            "no 'encoder.*' weights: the context encoder is a copy of the EMA encoder"
        )
    for key in keys:
        if key.startswith("decoder."):
            plan.dropped[key] = F_PREDICTOR
    return plan


def config_bh_f(
    shapes: Mapping[str, Sequence[int]], n_rois: int, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Our ``bh_f`` model configuration reproducing the official encoder."""
    over = dict(overrides or {})
    w = shapes["encoder_ema.patch_embed.proj.weight"]
    dim, k_base = int(w[0]), int(w[-1])
    time_rows = int(shapes["encoder_ema.pos_embed.emb_h_encoder"][0])
    if time_rows % n_rois:
        raise CheckpointMismatch(
            f"its time table has {time_rows} rows, not a multiple of the {n_rois} ROIs of the "
            "position tables"
        )
    heads = _heads(dim, over)
    pred_dim = int(shapes.get("decoder.predictor_embed.weight", [384])[0])
    cfg: dict[str, Any] = {
        "n_rois": n_rois,
        "n_patches": time_rows // n_rois,
        "dim": dim,
        "depth": _blocks(list(shapes), "encoder_ema.blocks."),
        "heads": heads,
        "mlp_ratio": int(shapes["encoder_ema.blocks.0.mlp.fc1.weight"][0]) / dim,
        "drop_path": 0.0,
        "tau": round(k_base * OFFICIAL_BASE_TR, 6),
        "k_base": k_base,
        "min_valid_fraction": 0.01,
        "interp": "bicubic",
        "grid": "k",
        "overflow": "crop",
        "n_harmonics": int(shapes["encoder_ema.pos_embed.geo_harm_proj.weight"][1]),
        "n_gradients": int(shapes["encoder_ema.pos_embed.grad_proj.weight"][1]),
        "use_harmonics": True,
        "use_gradients": True,
        "pos_combine": "concat",
        "pos_roi_norm": "minmax",
        "tables_from_state": True,
        "pred_dim": pred_dim,
        "pred_depth": _blocks(list(shapes), "decoder.predictor_blocks.") or 6,
        "pred_heads": heads if pred_dim % heads == 0 else 1,
        "encode_with": "target",
    }
    cfg.update(over)
    return cfg


def _f_tables(extra: Mapping[str, Path], k: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    missing = [n for n in ("harmonics", "gradients") if n not in extra]
    if missing:
        raise CheckpointMismatch(
            "the official BrainHarmonix-F reads its position tables from files, not from the "
            f"checkpoint: give {', '.join(f'--extra {n}=PATH' for n in missing)} "
            "(brainharmony_pos_embed/schaefer400_roi_eigenmodes.csv as harmonics, "
            "brainharmony_pos_embed/gradient_mapping_400.csv as gradients)"
        )
    tables = []
    for name, width in (("harmonics", k), ("gradients", g)):
        path = Path(extra[name])
        table = read_roi_table(path)
        if table.shape[1] != width:
            raise InputDataError(
                path,
                f"has {table.shape[1]} columns; the checkpoint's {name} projection takes {width}",
            )
        tables.append(table)
    if tables[0].shape[0] != tables[1].shape[0]:
        raise InputDataError(
            Path(extra["gradients"]),
            f"has {tables[1].shape[0]} ROI rows; the harmonics table has {tables[0].shape[0]}",
        )
    return tables[0], tables[1]


def convert_bh_f(
    checkpoint: Mapping[str, Any],
    *,
    extra: Mapping[str, Path],
    overrides: Mapping[str, Any] | None = None,
) -> ImportedModel:
    """``harmonix-f/model.pth`` -> our ``bh_f`` (module docstring)."""
    sd = state_dict_of(checkpoint)
    shapes = {k: list(v.shape) for k, v in sd.items()}
    plan = plan_bh_f(shapes)
    _unknown(plan, list(sd), "bh-f")
    k = int(shapes["encoder_ema.pos_embed.geo_harm_proj.weight"][1])
    g = int(shapes["encoder_ema.pos_embed.grad_proj.weight"][1])
    harmonics, gradients = _f_tables(extra, k, g)
    cfg = config_bh_f(shapes, harmonics.shape[0], overrides)
    model = _build("bh_f", cfg)
    tables = {}
    for module in ("encoder", "target_encoder", "predictor"):
        tables[f"{module}.pos.harmonics"] = torch.as_tensor(harmonics, dtype=torch.float32)
        tables[f"{module}.pos.gradients"] = torch.as_tensor(gradients, dtype=torch.float32)
    state = _assemble(model, plan, sd, tables)
    pos = model.target_encoder.pos  # type: ignore[union-attr]
    ours = pos.time_table[None].expand(pos.n_rois, -1, -1).reshape(-1, pos.time_dim)
    diff = _check_table("pos_embed.emb_h_encoder", sd["encoder_ema.pos_embed.emb_h_encoder"], ours)
    notes = [
        "TAPE interp=bicubic, grid=k: the official PI-resize (our default: lanczos3 on the "
        "TR grid)",
        f"tau = k_base x {OFFICIAL_BASE_TR} s = {cfg['tau']} s (the official standard_time)",
        "min_valid_fraction=0.01: a time patch with any real frame is a token, as the official "
        "ceil(T / k)",
        "pos_roi_norm=minmax, official position tables stored unscaled in the state dict "
        "(tables_from_state): the official min-max rescaling of the ROI embedding",
        f"heads={cfg['heads']} (not stored in the checkpoint: 64 per head unless overridden)",
        f"time table checked against the file (max abs difference {diff:.2g})",
        *plan.notes,
        *_dropped_notes(plan),
    ]
    return ImportedModel("bh_f", cfg, state, notes)


# --------------------------------------------------------------------------- bh-s


def _conv3d_to_linear(w: Tensor) -> Tensor:
    """Conv3d kernel (D, C, p, p, p) -> our patch map (D, p*p*p*C), patch order (x, y, z, C)."""
    return w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1)


def plan_bh_s(shapes: Mapping[str, Sequence[int]]) -> Plan:
    """Key plan of a ``harmonix-s/model.pth`` state dict (names and shapes only)."""
    keys = list(shapes)
    w = shapes.get("patch_embed.proj.weight")
    _expect(
        "bh-s",
        keys,
        w is not None and len(w) == 5 and "cls_token" in shapes and "latent_tokens" not in shapes,
        "no 5-D 'patch_embed.proj.weight' with a 'cls_token'",
    )
    plan = Plan()
    for key in keys:
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
            plan.rules.append(Rule(f"encoder.blocks.{m.group(1)}.{m.group(2)}", (key,)))
        elif key in ("norm.weight", "norm.bias"):
            plan.rules.append(Rule(f"encoder.{key}", (key,)))
        elif key == "patch_embed.proj.weight":
            plan.rules.append(Rule("patch_embed.weight", (key,), _conv3d_to_linear))
        elif key == "patch_embed.proj.bias":
            plan.rules.append(Rule("patch_embed.bias", (key,)))
        elif key == "cls_token":
            plan.rules.append(Rule("cls_token", (key,)))
        elif key == "pos_embed":
            plan.dropped[key] = FIXED
        elif key.startswith("decoder_") or key == "mask_token":
            plan.dropped[key] = S_DECODER
    return plan


def config_bh_s(
    shapes: Mapping[str, Sequence[int]], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Our ``bh_s`` configuration reproducing the official encoder (grid 10 x 12 x 10)."""
    over = dict(overrides or {})
    w = shapes["patch_embed.proj.weight"]
    dim, chans, patch = int(w[0]), int(w[1]), int(w[2])
    if int(shapes["pos_embed"][1]) != 1 + 10 * 12 * 10:
        raise CheckpointMismatch(
            f"its pos_embed has {shapes['pos_embed'][1]} rows; the official encoder's grid is "
            "10 x 12 x 10 (+ CLS)"
        )
    cfg: dict[str, Any] = {
        "img_size": [10 * patch, 12 * patch, 10 * patch],
        "patch": patch,
        "in_chans": chans,
        "dim": dim,
        "depth": _blocks(list(shapes), "blocks."),
        "heads": _heads(dim, over),
        "mlp_ratio": int(shapes["blocks.0.mlp.fc1.weight"][0]) / dim,
        "cls_token": True,
        "pos_axes": [1, 0, 2],
    }
    cfg.update(over)
    return cfg


def convert_bh_s(
    checkpoint: Mapping[str, Any],
    *,
    extra: Mapping[str, Path],
    overrides: Mapping[str, Any] | None = None,
) -> ImportedModel:
    """``harmonix-s/model.pth`` -> our ``bh_s`` (module docstring)."""
    del extra  # the S encoder needs no file besides its checkpoint
    sd = state_dict_of(checkpoint)
    shapes = {k: list(v.shape) for k, v in sd.items()}
    plan = plan_bh_s(shapes)
    _unknown(plan, list(sd), "bh-s")
    cfg = config_bh_s(shapes, overrides)
    model = _build("bh_s", cfg)
    state = _assemble(model, plan, sd)
    official = sd["pos_embed"][0]
    diff = max(
        _check_table("pos_embed[CLS]", official[0], torch.zeros_like(official[0])),
        _check_table("pos_embed", official[1:], model.pos_embed[0]),  # type: ignore[index]
    )
    notes = [
        "cls_token=true: the official CLS token (position zero) joins the encoder and is "
        "dropped at its output",
        "pos_axes=[1, 0, 2]: the official sin-cos channel order (second grid axis first)",
        f"heads={cfg['heads']} (not stored in the checkpoint: 64 per head unless overridden)",
        f"pos_embed checked against our sin-cos table (max abs difference {diff:.2g})",
        "the decoder (pretraining only) is ours, freshly initialised",
        *_dropped_notes(plan),
    ]
    return ImportedModel("bh_s", cfg, state, notes)


# --------------------------------------------------------------------------- harmonizer


def _hubs(tokens: Tensor, pos: Tensor) -> Tensor:
    return (tokens + pos)[None]


def plan_harmonizer(shapes: Mapping[str, Sequence[int]]) -> Plan:
    """Key plan of a ``harmonizer/model.pth`` (stage-1) state dict (names and shapes only)."""
    keys = list(shapes)
    _expect("harmonizer", keys, "latent_tokens" in shapes, "no 'latent_tokens' (hub tokens)")
    _expect(
        "harmonizer",
        keys,
        "norm.weight" in shapes,
        "no final 'norm' (a stage-2 fine-tuned file? give the stage-1 harmonizer/model.pth)",
    )
    plan = Plan()
    for key in keys:
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
            plan.rules.append(Rule(f"encoder.blocks.{m.group(1)}.{m.group(2)}", (key,)))
        elif key in ("norm.weight", "norm.bias"):
            plan.rules.append(Rule(f"encoder.{key}", (key,)))
        elif key == "cls_token":
            plan.rules.append(Rule("cls_token", (key,)))
        elif key in ("pre_map.weight", "pre_map.bias"):
            part = key.split(".")[1]
            plan.rules += [Rule(f"f_in.{part}", (key,)), Rule(f"s_in.{part}", (key,))]
        elif key == "pos_embed":
            plan.dropped[key] = FIXED
        elif key.startswith(("decoder_", "dec_")) or key == "mask_token":
            plan.dropped[key] = H_DECODER
        elif key.startswith(("head.", "fc_norm.")):
            plan.dropped[key] = STAGE2_HEAD
    if "latent_tokens" in shapes and "enc_latent_token_positional_embedding" in shapes:
        plan.rules.append(
            Rule("hubs", ("latent_tokens", "enc_latent_token_positional_embedding"), _hubs)
        )
    return plan


def config_harmonizer(
    shapes: Mapping[str, Sequence[int]], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Our ``harmonizer`` configuration reproducing the official encoder (8400 tokens)."""
    over = dict(overrides or {})
    dim = int(shapes["latent_tokens"][1])
    in_dim = int(shapes["pre_map.weight"][1]) if "pre_map.weight" in shapes else dim
    if int(shapes["pos_embed"][1]) != 1 + 400 * 18 + 1200:
        raise CheckpointMismatch(
            f"its pos_embed has {shapes['pos_embed'][1]} rows; the official Harmonizer takes "
            "400 x 18 F tokens + 1200 S tokens (+ CLS)"
        )
    dec_dim = int(shapes.get("decoder_embed.weight", [512])[0])
    cfg: dict[str, Any] = {
        "f_dim": in_dim,
        "s_dim": in_dim,
        "f_grid": [400, 18],
        "s_grid": [10, 12, 10],
        "dim": dim,
        "depth": _blocks(list(shapes), "blocks."),
        "heads": _heads(dim, over),
        "mlp_ratio": int(shapes["blocks.0.mlp.fc1.weight"][0]) / dim,
        "dec_dim": dec_dim,
        "dec_depth": _blocks(list(shapes), "decoder_blocks.") or 8,
        "dec_heads": int(over.get("dec_heads", max(1, dec_dim // 32))),
        "n_hubs": int(shapes["latent_tokens"][0]),
        "positions": "sequence",
        "cls_token": True,
    }
    cfg.update(over)
    return cfg


def convert_harmonizer(
    checkpoint: Mapping[str, Any],
    *,
    extra: Mapping[str, Path],
    overrides: Mapping[str, Any] | None = None,
) -> ImportedModel:
    """``harmonizer/model.pth`` (stage 1) -> our ``harmonizer`` (module docstring)."""
    del extra  # the Harmonizer needs no file besides its checkpoint
    sd = state_dict_of(checkpoint)
    shapes = {k: list(v.shape) for k, v in sd.items()}
    plan = plan_harmonizer(shapes)
    _unknown(plan, list(sd), "harmonizer")
    cfg = config_harmonizer(shapes, overrides)
    model = _build("harmonizer", cfg)
    fixed: dict[str, Tensor] = {
        "f_modality": torch.zeros(1, 1, cfg["dim"]),
        "s_modality": torch.zeros(1, 1, cfg["dim"]),
    }
    if "pre_map.weight" not in sd:
        if cfg["f_dim"] != cfg["dim"]:
            raise CheckpointMismatch("has no pre_map but its width differs from the tokens'")
        for name in ("f_in", "s_in"):
            fixed[f"{name}.weight"] = torch.eye(cfg["dim"])
            fixed[f"{name}.bias"] = torch.zeros(cfg["dim"])
    state = _assemble(model, plan, sd, fixed)
    official = sd["pos_embed"][0]
    n_f = 400 * 18
    diff = max(
        _check_table("pos_embed[CLS]", official[0], torch.zeros_like(official[0])),
        _check_table("pos_embed[F]", official[1 : 1 + n_f], model.f_pos),  # type: ignore[arg-type]
        _check_table("pos_embed[S]", official[1 + n_f :], model.s_pos),  # type: ignore[arg-type]
    )
    notes = [
        "positions=sequence: the official 1-D sin-cos over the F | S sequence",
        "cls_token=true: the official CLS token (position zero) takes part in attention",
        "f_in/s_in: "
        + ("the official shared pre_map" if "pre_map.weight" in sd else "identity")
        + "; modality embeddings zero (the official model has none)",
        "hubs = latent_tokens + enc_latent_token_positional_embedding (summed once)",
        f"heads={cfg['heads']} (not stored in the checkpoint: 64 per head unless overridden)",
        f"pos_embed checked against our sin-cos table (max abs difference {diff:.2g})",
        "fc_norm (the pooled representation's LayerNorm) is fresh: identity at import; the "
        "official stage 2 also adds a fresh one",
        *_dropped_notes(plan),
    ]
    return ImportedModel("harmonizer", cfg, state, notes)
