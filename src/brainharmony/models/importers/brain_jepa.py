"""Brain-JEPA's released checkpoints (Eric-LRL/Brain-JEPA) -> ``brain_jepa`` models.

What the official checkpoint holds
----------------------------------
``src/train.py`` saves ``{'encoder', 'predictor', 'target_encoder', 'opt', 'scaler',
'epoch', ...}``; the three modules are wrapped in ``DistributedDataParallel`` when saved,
so their keys start with ``module.`` (stripped here when present). The downstream code
(``downstream_tasks/main_finetune.py``) loads ``target_encoder``, which is therefore what
:meth:`~brainharmony.models.brain_jepa.BrainJepa.encode` uses. A bare encoder state dict
(keys ``patch_embed.proj.weight``, ...) is read as the target encoder.

What comes from elsewhere
-------------------------
The brain-gradient table (``data/gradient_mapping_450.csv``, 450 x 30) is a plain
attribute of the official modules, not part of their state dicts: it must be given as
``extra["gradient"]`` (a CSV/TSV/NPY path) and is stored as a buffer of the converted
model. Attention heads leave no trace in the weights: the official sizes (``vit_small``
384 / 6, ``vit_base`` 768 / 12, ``vit_large`` 1024 / 16) all use 64-wide heads, which
is what is assumed for those widths; any other width needs ``extra["config"]``, a JSON or
YAML mapping of ``brain_jepa`` build keys (e.g. ``{heads: 4, pred_heads: 4}``) that
overrides what is inferred.

Key mapping (official -> ours; ``<m>`` = ``encoder`` or ``target_encoder``)
-------------------------------------------------------------------------
====================================================  ==================================
``patch_embed.proj.weight`` (D, 1, 1, p)              ``<m>.patch_embed.weight`` (D, p)
``patch_embed.proj.bias``                             ``<m>.patch_embed.bias``
``pos_embed_proj.predictor_pos_embed_proj.*``          ``<m>.pos.proj.gradients.*``
``pos_embed_proj.emb_h``                              dropped: the fixed sin-cos time
                                                      table, recomputed (checked equal)
``blocks.<i>.*``, ``norm.*``                          ``<m>.blocks.blocks.<i>.*``,
                                                      ``<m>.blocks.norm.*``
``predictor_embed.*``, ``mask_token``                 ``predictor.embed.*``,
                                                      ``predictor.mask_token``
``predictor_2dpe_proj.predictor_pos_embed_proj.*``     ``predictor.pos.proj.gradients.*``
``predictor_2dpe_proj.emb_h``                         dropped (as ``emb_h`` above)
``predictor_blocks.<i>.*``, ``predictor_norm.*``       ``predictor.blocks.blocks.<i>.*``,
                                                      ``predictor.blocks.norm.*``
``predictor_proj.*``                                  ``predictor.head.*``
(gradient table, ``extra["gradient"]``)               ``<m>.pos.gradients``,
                                                      ``predictor.pos.gradients``
====================================================  ==================================

A checkpoint without ``encoder`` gets the target encoder's weights for it; one without
``predictor`` gets a freshly initialised predictor (seed 0) of the configured size; both
are said in the notes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainharmony.config import load_yaml
from brainharmony.io import InputDataError
from brainharmony.models.brain_jepa import DEFAULTS, build
from brainharmony.models.importers import ImportedModel
from brainharmony.models.posemb import read_roi_table, sincos_1d

__all__ = ["convert", "map_key"]

KIND = "brain_jepa"
#: Official widths and their head counts (``src/models/vision_transformer.py``).
OFFICIAL_HEADS = {384: 6, 768: 12, 1024: 16}
PARTS = ("encoder", "predictor", "target_encoder")

_ENCODER_RULES: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"),
    (r"pos_embed_proj\.predictor_pos_embed_proj\.(weight|bias)", r"pos.proj.gradients.\1"),
    (r"blocks\.(\d+)\.(.+)", r"blocks.blocks.\1.\2"),
    (r"norm\.(weight|bias)", r"blocks.norm.\1"),
)
_PREDICTOR_RULES: tuple[tuple[str, str], ...] = (
    (r"predictor_embed\.(weight|bias)", r"embed.\1"),
    (r"mask_token", r"mask_token"),
    (
        r"predictor_2dpe_proj\.predictor_pos_embed_proj\.(weight|bias)",
        r"pos.proj.gradients.\1",
    ),
    (r"predictor_blocks\.(\d+)\.(.+)", r"blocks.blocks.\1.\2"),
    (r"predictor_norm\.(weight|bias)", r"blocks.norm.\1"),
    (r"predictor_proj\.(weight|bias)", r"head.\1"),
)
#: Official keys left out on purpose, and why.
DROPPED = {
    "pos_embed_proj.emb_h": "fixed sin-cos of the time-patch index; recomputed (checked equal)",
    "predictor_2dpe_proj.emb_h": "fixed sin-cos of the time-patch index; recomputed "
    "(checked equal)",
}


def map_key(part: str, key: str) -> str | None:
    """Our key for official ``key`` of ``part`` (no ``module.``); ``None`` if dropped.

    Raises
    ------
    KeyError
        A key that no rule knows.
    """
    if key in DROPPED:
        return None
    rules = _PREDICTOR_RULES if part == "predictor" else _ENCODER_RULES
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            return f"{part}." + re.sub(pattern, target, key)
    raise KeyError(key)


def _as_tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.asarray(value, dtype=np.float32))
    raise ValueError(f"Brain-JEPA checkpoint: {where} is a {type(value).__name__}, not a tensor")


def _strip(state: Mapping[str, Any], part: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise ValueError(f"Brain-JEPA checkpoint: '{part}' is not a state dict")
    return {
        (k[len("module.") :] if k.startswith("module.") else k): _as_tensor(v, f"{part}/{k}")
        for k, v in state.items()
    }


def _parts(checkpoint: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    if "target_encoder" in checkpoint:
        parts = {p: _strip(checkpoint[p], p) for p in PARTS if p in checkpoint}
    elif any(str(k).removeprefix("module.") == "patch_embed.proj.weight" for k in checkpoint):
        parts = {"target_encoder": _strip(checkpoint, "target_encoder")}
    else:
        shown = ", ".join(sorted(map(str, checkpoint))[:8])
        raise ValueError(
            "not a Brain-JEPA checkpoint: expected the keys 'target_encoder' (and "
            "'encoder', 'predictor') that src/train.py saves, or a bare encoder state dict; "
            f"found {shown or 'no keys'}"
        )
    if "pos_embed_proj.emb_w" in parts["target_encoder"]:
        raise ValueError(
            "Brain-JEPA checkpoint trained with add_w: origin (sin-cos ROI positions) is not "
            "supported; only add_w: mapping (brain-gradient positions), the published model"
        )
    return parts


def _require(state: Mapping[str, torch.Tensor], key: str, part: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"Brain-JEPA checkpoint: '{part}' has no '{key}' (truncated checkpoint?)")
    return state[key]


def _read_overrides(path: Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "Brain-JEPA import config not found")
    if p.suffix == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputDataError(p, f"cannot parse: {err}") from None
    else:
        doc = load_yaml(p)
    if not isinstance(doc, dict):
        raise InputDataError(p, "expected a mapping of brain_jepa build keys")
    unknown = sorted(set(doc) - set(DEFAULTS))
    if unknown:
        raise InputDataError(p, f"unknown brain_jepa key(s) {unknown}")
    return doc


def _infer_cfg(
    parts: Mapping[str, Mapping[str, torch.Tensor]], n_rois: int, overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    enc = parts["target_encoder"]
    w = _require(enc, "patch_embed.proj.weight", "target_encoder")
    if w.dim() != 4 or w.shape[1] != 1 or w.shape[2] != 1:
        raise ValueError(
            f"Brain-JEPA checkpoint: patch_embed.proj.weight has shape {tuple(w.shape)}; "
            "expected (dim, 1, 1, patch)"
        )
    dim, patch = int(w.shape[0]), int(w.shape[3])
    depth = 1 + max(
        (int(m.group(1)) for k in enc if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    if depth < 1:
        raise ValueError("Brain-JEPA checkpoint: 'target_encoder' has no transformer blocks")
    fc1 = _require(enc, "blocks.0.mlp.fc1.weight", "target_encoder")
    emb_h = _require(enc, "pos_embed_proj.emb_h", "target_encoder")
    if emb_h.shape[0] % n_rois:
        raise ValueError(
            f"Brain-JEPA checkpoint: its position table has {emb_h.shape[0]} rows, not a "
            f"multiple of the gradient table's {n_rois} ROIs (wrong gradient file?)"
        )
    gproj = _require(enc, "pos_embed_proj.predictor_pos_embed_proj.weight", "target_encoder")
    cfg: dict[str, Any] = {
        "n_rois": n_rois,
        "n_patches": emb_h.shape[0] // n_rois,
        "patch": patch,
        "dim": dim,
        "depth": depth,
        "mlp_ratio": fc1.shape[0] / dim,
        "n_gradients": int(gproj.shape[1]),
    }
    pred = parts.get("predictor")
    if pred is not None:
        pe = _require(pred, "predictor_embed.weight", "predictor")
        cfg["pred_dim"] = int(pe.shape[0])
        cfg["pred_depth"] = 1 + max(
            (int(m.group(1)) for k in pred if (m := re.match(r"predictor_blocks\.(\d+)\.", k))),
            default=-1,
        )
    if "heads" not in overrides:
        if dim not in OFFICIAL_HEADS:
            raise ValueError(
                f"Brain-JEPA checkpoint of width {dim}: the number of attention heads is not "
                f"stored in the weights and {dim} is not an official width "
                f"({sorted(OFFICIAL_HEADS)}); give it in extra['config'] (e.g. heads: 8)"
            )
        cfg["heads"] = OFFICIAL_HEADS[dim]
        notes.append(f"heads = {cfg['heads']} (the official model of width {dim})")
    if "pred_heads" not in overrides:
        # The official predictor uses the encoder's head count (src/helper.py).
        cfg["pred_heads"] = overrides.get("heads", cfg.get("heads"))
    cfg.update(overrides)
    cfg.update({"gradients": None, "tables_from_state": True})
    return cfg, notes


def _check_time_table(emb_h: torch.Tensor, n_rois: int, n_patches: int, where: str) -> None:
    width = emb_h.shape[1]
    ours = sincos_1d(np.arange(n_patches), width).repeat(n_rois, 1)
    if emb_h.shape != ours.shape or not torch.allclose(emb_h, ours, atol=1e-5):
        raise ValueError(
            f"Brain-JEPA checkpoint: {where} is not the sin-cos table of {n_patches} time "
            f"patches x {n_rois} ROIs that this model computes"
        )


def convert(checkpoint: Mapping[str, Any], *, extra: Mapping[str, Path]) -> ImportedModel:
    """Convert an official Brain-JEPA checkpoint (module docstring) to a ``brain_jepa`` model.

    Parameters
    ----------
    checkpoint : mapping
        What ``torch.load`` returns for the official ``jepa-ep*.pth.tar`` (or a bare
        encoder state dict).
    extra : mapping of str to Path
        ``"gradient"`` (required): the official ``gradient_mapping_450.csv`` (or any R x G
        table the model was trained with). ``"config"`` (optional): JSON/YAML build keys
        overriding the inferred ones (``heads`` for a non-official width).

    Returns
    -------
    ImportedModel
        ``kind="brain_jepa"``, the ``build`` mapping (``tables_from_state: true``: the
        gradient table travels in the weights), the complete state dict of our model and
        notes on what was assumed or filled in.

    Raises
    ------
    ValueError
        Not a Brain-JEPA checkpoint, missing or unknown keys, shapes that do not fit.
    InputDataError
        The gradient table or the config file is missing or unreadable.
    """
    if "gradient" not in extra:
        raise ValueError(
            "Brain-JEPA import needs the gradient table the model was trained with "
            "(extra['gradient']: Brain-JEPA's data/gradient_mapping_450.csv); it is not "
            "stored in the checkpoint"
        )
    parts = _parts(checkpoint)
    overrides = _read_overrides(extra["config"]) if "config" in extra else {}
    table = read_roi_table(extra["gradient"])
    cfg, notes = _infer_cfg(parts, table.shape[0], overrides)
    n_grad = int(cfg["n_gradients"])
    if table.shape[1] != n_grad:
        raise InputDataError(
            Path(extra["gradient"]),
            f"has {table.shape[1]} columns; the checkpoint's gradient projection takes {n_grad}",
        )
    if cfg["n_patches"] != 10:
        notes.append(f"{cfg['n_patches']} time patches: the official GradTs_2dPE only runs with 10")
    torch.manual_seed(0)
    model = build(cfg)
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    if "encoder" not in parts:
        parts["encoder"] = parts["target_encoder"]
        notes.append("no 'encoder' in the checkpoint: the context encoder copies target_encoder")
    if "predictor" not in parts:
        notes.append("no 'predictor' in the checkpoint: the predictor is freshly initialised")
    for part, state in parts.items():
        for key, value in state.items():
            try:
                ours = map_key(part, key)
            except KeyError:
                raise ValueError(
                    f"Brain-JEPA checkpoint: unknown key '{key}' in '{part}' (not the official "
                    "ViT with add_w: mapping?)"
                ) from None
            if ours is None:
                n_patches = int(cfg["n_patches"])
                _check_time_table(value, int(cfg["n_rois"]), n_patches, f"{part}/{key}")
                continue
            if ours.endswith("patch_embed.weight"):
                value = value.reshape(value.shape[0], -1)
            if ours not in target:
                raise ValueError(
                    f"Brain-JEPA checkpoint: '{part}/{key}' maps to '{ours}', which the "
                    "configured model lacks (inconsistent depth or override?)"
                )
            if tuple(value.shape) != tuple(target[ours].shape):
                raise ValueError(
                    f"Brain-JEPA checkpoint: '{part}/{key}' has shape {tuple(value.shape)}; "
                    f"'{ours}' needs {tuple(target[ours].shape)}"
                )
            out[ours] = value.clone()
    grad = torch.as_tensor(table, dtype=torch.float32)
    for ours in target:
        if ours.endswith("pos.gradients"):
            out[ours] = grad.clone()
    needed = [k for k in target if not k.startswith("predictor.") or "predictor" in parts]
    missing = sorted(set(needed) - set(out))
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise ValueError(
            f"Brain-JEPA checkpoint is missing {len(missing)} weight(s) of the model: {shown}"
        )
    for key, value in target.items():
        out.setdefault(key, value.clone())
    notes.append(
        f"{cfg['n_rois']} ROIs x {cfg['n_patches']} patches of {cfg['patch']} frames "
        f"({cfg['n_patches'] * cfg['patch']} frames per input), width {cfg['dim']}, "
        f"{cfg['depth']} blocks; encode() uses target_encoder, as the official downstream code"
    )
    if math.isclose(float(cfg["mlp_ratio"]), round(float(cfg["mlp_ratio"]))):
        cfg["mlp_ratio"] = float(round(float(cfg["mlp_ratio"])))
    return ImportedModel(kind=KIND, model_cfg=cfg, state_dict=out, notes=notes)
