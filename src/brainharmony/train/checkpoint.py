"""Resumable training state and trained model folders.

Training state (``<state_dir>/checkpoint.pt``, outside the workflow's declared outputs):
model, optimiser and scheduler state, the step, and the python/numpy/torch(/CUDA) random
states of every process, written atomically by rank 0 and read back with
``torch.load(weights_only=True)`` (only tensors and plain containers, no pickled code).

A trained model folder holds ``model.safetensors`` (the unwrapped model's state dict),
``config.json`` (the model configuration plus provenance: enough to rebuild the model
alone), ``metrics.jsonl`` and ``curves.png``. :func:`load_trained` rebuilds the model.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainharmony.io import InputDataError, PathLike, atomic_path, provenance, write_json
from brainharmony.train.config import ModelConfig, load_config

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_NAME",
    "STATE_FORMAT",
    "capture_rng",
    "load_checkpoint",
    "load_trained",
    "load_weights",
    "restore_rng",
    "save_checkpoint",
    "save_weights",
    "write_model_config",
]

CHECKPOINT_NAME = "checkpoint.pt"
STATE_FORMAT = "brainharmony-train-state/1"
MODEL_FORMAT = "brainharmony-model/1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) random states as tensors and plain values."""
    version, py_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002 (global state)
    state: dict[str, Any] = {
        "python_version": int(version),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore the random states captured by :func:`capture_rng`."""
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python"].tolist()),
            state["python_gauss"],
        )
    )
    np.random.set_state(  # noqa: NPY002 (restoring the global state)
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- state


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    # LambdaLR stores its callable's __dict__ (our schedule object); the schedule is
    # rebuilt from the configuration, so only the counters are kept.
    state = dict(scheduler.state_dict())
    state.pop("lr_lambdas", None)
    return state


def save_checkpoint(
    path: PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    rng: Sequence[Mapping[str, Any]],
    digest: str,
) -> Path:
    """Write the resumable state atomically.

    Parameters
    ----------
    path : path-like
        Destination (``<state_dir>/checkpoint.pt``).
    model : nn.Module
        The unwrapped model.
    optimizer, scheduler
        Their ``state_dict`` is stored.
    step : int
        Optimiser steps completed.
    rng : sequence of mapping
        One :func:`capture_rng` result per process, by rank.
    digest : str
        Digest of the configuration that must match on resume.
    """
    payload = {
        "format": STATE_FORMAT,
        "step": int(step),
        "digest": digest,
        "world_size": len(rng),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": _scheduler_state(scheduler),
        "rng": list(rng),
    }
    # Through a file handle: given a path, torch.save names the zip records after the
    # file (here the temporary name), so the same state gave different bytes each time.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a state file written by :func:`save_checkpoint` (tensors on the CPU)."""
    p = Path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise InputDataError(p, f"cannot read the training checkpoint: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise InputDataError(p, f"not a {STATE_FORMAT} checkpoint")
    return payload


def restore_scheduler(scheduler: Any, state: Mapping[str, Any]) -> None:
    """Load counters saved by :func:`save_checkpoint` into a freshly built scheduler."""
    full = dict(state)
    full["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(full)


# --------------------------------------------------------------------------- model folder


def save_weights(path: PathLike, model: nn.Module, metadata: Mapping[str, str] | None = None):
    """Write the model's state dict as safetensors, atomically.

    Tensors are copied to contiguous CPU memory first (safetensors refuses shared or
    strided storage).
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
        _sort_metadata(tmp)
    return Path(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted, in place.

    safetensors serialises the metadata from a hash map, so the key order (and with it
    the file's bytes) changes from run to run; sorted, equal weights give equal files.
    The header keeps its length (same keys and values), so only those bytes change.
    """
    import struct

    with open(path, "r+b") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        raw = handle.read(size)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not meta:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > size or json.loads(text) != json.loads(raw):  # pragma: no cover
            return  # not the layout expected: leave the file as safetensors wrote it
        handle.seek(8)
        handle.write(text.ljust(size, b" "))


def load_weights(
    model: nn.Module, path: PathLike, *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load a safetensors state dict into ``model``.

    With ``strict=False`` only the tensors whose name and shape match are loaded.

    Returns
    -------
    missing, unexpected : list of str
        Model keys not found in the file; file keys not used.

    Raises
    ------
    InputDataError
        Missing file; with ``strict``, any mismatch of names or shapes.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "model weights not found")
    try:
        tensors = load_file(str(p), device="cpu")
    except Exception as err:  # truncated, empty or not a safetensors file
        raise InputDataError(
            p, f"cannot read the model weights (truncated or not safetensors): {err}"
        ) from None
    own = model.state_dict()
    shape_bad = sorted(
        k for k, v in tensors.items() if k in own and tuple(own[k].shape) != tuple(v.shape)
    )
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if strict and (missing or unexpected or shape_bad):
        raise InputDataError(
            p,
            "weights do not fit the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"shape mismatch {shape_bad[:5]}",
        )
    usable = {k: v for k, v in tensors.items() if k in own and k not in shape_bad}
    model.load_state_dict(usable, strict=False)
    return missing + shape_bad, unexpected + shape_bad


def write_model_config(
    path: PathLike,
    cfg: ModelConfig,
    *,
    trained_steps: int,
    inputs: Sequence[PathLike] = (),
    step: str = "train",
    parameters: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``config.json``: the configuration, the steps trained and provenance.

    ``step`` and ``parameters`` name the step that made the folder (``train``, or
    ``import-weights`` with its source and notes) in the provenance block.
    """
    document = cfg.to_dict()
    document["format"] = MODEL_FORMAT
    document["trained_steps"] = int(trained_steps)
    document["provenance"] = provenance(
        step=step,
        inputs=inputs,
        parameters={"name": cfg.name, "kind": cfg.kind, **dict(parameters or {})},
    )
    return write_json(path, document)


def load_trained(model_dir: PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from its folder (``config.json`` + ``model.safetensors``).

    Parameters
    ----------
    model_dir : path-like
        A folder written by :func:`brainharmony.train.loop.train`.
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    nn.Module
        The model in eval mode, with ``model.config`` set to its :class:`ModelConfig`.
    """
    from brainharmony.models.registry import build_model

    folder = Path(model_dir)
    cfg = load_config(folder / CONFIG_NAME)
    model = build_model(cfg.kind, cfg.model)
    load_weights(model, folder / WEIGHTS_NAME, strict=True)
    model.config = cfg  # type: ignore[assignment]
    return model.to(map_location).eval()
