"""Model YAMLs parsed into frozen dataclasses.

A model YAML (``models/<name>.yaml``) has exactly these top-level keys::

    name: bh_s_demo            # letters, digits, '_' and '-'
    kind: bh_s                 # a key of brainharmony.models.registry.KINDS
    model: {...}               # keyword arguments of the kind's build()
    optim: {...}               # OptimConfig
    train: {...}               # TrainConfig
    data: {...}                # read by brainharmony.train.data (kind: series | volumes | fused)

``optim`` and ``train`` are checked key by key (an unknown key is an error naming it and
the file); ``model`` is checked by the model's ``build``; ``data`` by the data builder.
``model`` and ``data`` are kept as read-only mappings (nested dicts become read-only,
lists become tuples). :meth:`ModelConfig.to_dict` gives plain JSON-ready data back; the
``config.json`` of a trained model folder is that dict plus provenance, and
:func:`load_config` reads it as well as the YAML.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from brainharmony.io import InputDataError, PathLike

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "OptimConfig",
    "TrainConfig",
    "config_from_mapping",
    "freeze",
    "load_config",
    "resolve_grad_accum",
    "thaw",
]

PRECISIONS = ("auto", "fp32", "bf16")
TOP_KEYS = ("name", "kind", "model", "optim", "train", "data")
#: Keys a model folder's config.json carries besides the YAML's (ignored when parsing).
EXTRA_JSON_KEYS = ("format", "provenance", "trained_steps")
_NAME = re.compile(r"[A-Za-z0-9_-]+")


class ModelConfigError(InputDataError):
    """A model configuration file is invalid; the message names the file and the key."""


def freeze(value: Any) -> Any:
    """Read-only deep copy: mappings -> ``MappingProxyType``, lists -> tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain JSON-ready copy of a frozen value: mappings -> dict, tuples -> list."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule.

    Attributes
    ----------
    lr : float
        Peak learning rate (reached at the end of warmup).
    min_lr : float
        Learning rate at the last step (cosine floor).
    weight_decay : float
        Decoupled weight decay of the decayed group (at the first step).
    weight_decay_end : float or None
        ``None`` (the default): the weight decay stays ``weight_decay`` throughout. A
        value: a cosine from ``weight_decay`` (step 0) to ``weight_decay_end`` (the last
        step), as in the MAE/I-JEPA code family (I-JEPA ramps 0.04 -> 0.4).
    betas : tuple of 2 float
    eps : float
    warmup_steps : int
        Linear warmup steps (``lr * (step + 1) / warmup_steps``).
    clip_grad : float or None
        Clip the global gradient L2 norm to this value; ``None`` or 0: no clipping.
    """

    lr: float = 1.0e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1.0e-8
    warmup_steps: int = 0
    clip_grad: float | None = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings.

    Attributes
    ----------
    steps : int
        Optimiser steps in total.
    batch_size : int
        Samples per process per micro-batch (global batch =
        ``batch_size * world_size * grad_accum``).
    global_batch : int or None
        Samples per optimiser step over all processes. When set, the accumulation is
        derived from the number of processes: ``grad_accum = global_batch / (batch_size *
        world_size)`` (:func:`resolve_grad_accum`), so the optimiser steps, and the
        learning-rate and weight-decay schedules over them, do not depend on the GPU
        count; ``grad_accum`` must then be left at 1. ``None`` (the default):
        ``grad_accum`` as given, and the global batch grows with the processes.
    seed : int
        Seeds python, numpy, torch, data order and crops.
    precision : {"auto", "fp32", "bf16"}
        ``auto``: bf16 autocast on a CUDA device that supports it, fp32 otherwise.
        ``bf16`` needs CUDA.
    log_every : int
        Write a metrics line every this many steps (and at the first and last step).
    ckpt_every : int
        Write a resumable checkpoint every this many steps (and at the last step).
    num_workers : int
        DataLoader worker processes.
    grad_accum : int
        Micro-batches accumulated per optimiser step.
    """

    steps: int = 100
    batch_size: int = 8
    seed: int = 0
    precision: str = "auto"
    log_every: int = 10
    ckpt_every: int = 100
    num_workers: int = 0
    grad_accum: int = 1
    global_batch: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """One model YAML: what to build, how to optimise it, what data to feed it."""

    name: str
    kind: str
    model: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict with the YAML's layout.

        The optional keys added later (``optim.weight_decay_end``, ``train.global_batch``)
        are left out while ``None``, so a configuration that does not use them has the
        same ``config.json`` (and checkpoint digest) as before they existed.
        """
        return {
            "name": self.name,
            "kind": self.kind,
            "model": thaw(self.model),
            "optim": _without_unset(thaw(dataclasses.asdict(self.optim)), _OPTIONAL_OPTIM),
            "train": _without_unset(thaw(dataclasses.asdict(self.train)), _OPTIONAL_TRAIN),
            "data": thaw(self.data),
        }

    def to_json(self) -> str:
        """The configuration as JSON text (sorted keys)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def with_train(self, **changes: Any) -> ModelConfig:
        """A copy with some :class:`TrainConfig` fields replaced (validated)."""
        train = _parse_section(
            TrainConfig, {**dataclasses.asdict(self.train), **changes}, "train", "<override>"
        )
        return dataclasses.replace(self, train=train)


_OPTIONAL_OPTIM = ("weight_decay_end",)
_OPTIONAL_TRAIN = ("global_batch",)


def _without_unset(doc: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not (k in keys and v is None)}


def resolve_grad_accum(train: TrainConfig, world_size: int, source: PathLike | str) -> int:
    """Micro-batches per optimiser step for ``world_size`` processes.

    ``train.grad_accum`` when ``train.global_batch`` is unset, else ``global_batch /
    (batch_size * world_size)``.

    Raises
    ------
    ModelConfigError
        ``global_batch`` is not a multiple of ``batch_size * world_size`` (naming
        ``source``, the model YAML, and the process counts that would work).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if train.global_batch is None:
        return train.grad_accum
    per_step = train.batch_size * world_size
    if train.global_batch % per_step:
        fits = [
            n
            for n in range(1, train.global_batch // train.batch_size + 1)
            if train.global_batch % (train.batch_size * n) == 0
        ]
        raise ModelConfigError(
            source,
            f"train.global_batch {train.global_batch} is not a multiple of train.batch_size "
            f"{train.batch_size} x {world_size} processes = {per_step}, so no whole number "
            f"of accumulation steps gives it; with this batch_size it works with "
            f"{', '.join(map(str, fits))} processes (or change train.batch_size)",
        )
    return train.global_batch // per_step


def _type_ok(value: Any, annotation: str) -> bool:
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation == "float | None":
        return value is None or _type_ok(value, "float")
    if annotation == "int | None":
        return value is None or _type_ok(value, "int")
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "tuple[float, float]":
        return (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(_type_ok(v, "float") for v in value)
        )
    raise AssertionError(f"unhandled annotation {annotation}")  # pragma: no cover


def _parse_section(cls: type, raw: Any, section: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ModelConfigError(source, f"'{section}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ModelConfigError(
            source,
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
            f"allowed in '{section}': {', '.join(fields)}",
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        annotation = str(fields[name].type)
        if not _type_ok(value, annotation):
            raise ModelConfigError(source, f"{section}.{name} must be {annotation}, got {value!r}")
        if annotation == "float":
            value = float(value)
        elif annotation == "tuple[float, float]":
            value = (float(value[0]), float(value[1]))
        elif annotation == "float | None" and value is not None:
            value = float(value)
        values[name] = value
    obj = cls(**values)
    _validate(obj, section, source)
    return obj


def _validate(obj: Any, section: str, source: str) -> None:
    def fail(key: str, problem: str) -> None:
        raise ModelConfigError(source, f"{section}.{key} {problem}")

    if isinstance(obj, OptimConfig):
        if obj.lr <= 0:
            fail("lr", f"must be > 0, got {obj.lr}")
        if not 0 <= obj.min_lr <= obj.lr:
            fail("min_lr", f"must be in [0, lr={obj.lr}], got {obj.min_lr}")
        if obj.weight_decay < 0:
            fail("weight_decay", f"must be >= 0, got {obj.weight_decay}")
        if obj.weight_decay_end is not None and obj.weight_decay_end < 0:
            fail("weight_decay_end", f"must be >= 0 or null, got {obj.weight_decay_end}")
        if not all(0 <= b < 1 for b in obj.betas):
            fail("betas", f"must both be in [0, 1), got {list(obj.betas)}")
        if obj.eps <= 0:
            fail("eps", f"must be > 0, got {obj.eps}")
        if obj.warmup_steps < 0:
            fail("warmup_steps", f"must be >= 0, got {obj.warmup_steps}")
        if obj.clip_grad is not None and obj.clip_grad < 0:
            fail("clip_grad", f"must be >= 0 or null, got {obj.clip_grad}")
    elif isinstance(obj, TrainConfig):
        for key in ("steps", "batch_size", "log_every", "ckpt_every", "grad_accum"):
            if getattr(obj, key) < 1:
                fail(key, f"must be >= 1, got {getattr(obj, key)}")
        if obj.num_workers < 0:
            fail("num_workers", f"must be >= 0, got {obj.num_workers}")
        if obj.seed < 0:
            fail("seed", f"must be >= 0, got {obj.seed}")
        if obj.global_batch is not None:
            if obj.global_batch < 1:
                fail("global_batch", f"must be >= 1 or null, got {obj.global_batch}")
            if obj.global_batch % obj.batch_size:
                fail(
                    "global_batch",
                    f"{obj.global_batch} must be a multiple of train.batch_size {obj.batch_size}",
                )
            if obj.grad_accum != 1:
                fail(
                    "grad_accum",
                    f"is derived from train.global_batch ({obj.global_batch}) and the number "
                    f"of processes; remove it (got {obj.grad_accum})",
                )
        if obj.precision not in PRECISIONS:
            fail("precision", f"must be one of {', '.join(PRECISIONS)}; got {obj.precision!r}")


def config_from_mapping(raw: Any, source: PathLike | str = "<mapping>") -> ModelConfig:
    """Parse and validate a model configuration mapping.

    Parameters
    ----------
    raw : mapping
        The YAML (or config.json) content.
    source : path-like or str
        Where it came from, for error messages.

    Raises
    ------
    ModelConfigError
        Unknown or missing keys, wrong types, values out of range, unknown kind.
    """
    from brainharmony.models.registry import KINDS

    if not isinstance(raw, Mapping):
        raise ModelConfigError(source, "a model configuration must be a mapping")
    unknown = sorted(set(raw) - set(TOP_KEYS) - set(EXTRA_JSON_KEYS))
    if unknown:
        raise ModelConfigError(
            source, f"unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(TOP_KEYS)}"
        )
    for key in ("name", "kind"):
        if key not in raw:
            raise ModelConfigError(source, f"missing required key '{key}'")
    name, kind = raw["name"], raw["kind"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ModelConfigError(source, f"name must match [A-Za-z0-9_-]+, got {name!r}")
    if kind not in KINDS:
        raise ModelConfigError(
            source, f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}"
        )
    for key in ("model", "data"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ModelConfigError(source, f"'{key}' must be a mapping")
    return ModelConfig(
        name=name,
        kind=kind,
        model=freeze(raw.get("model") or {}),
        optim=_parse_section(OptimConfig, raw.get("optim"), "optim", str(source)),
        train=_parse_section(TrainConfig, raw.get("train"), "train", str(source)),
        data=freeze(raw.get("data") or {}),
    )


def with_overrides(cfg: ModelConfig, assignments: Sequence[str]) -> ModelConfig:
    """A copy of ``cfg`` with ``section.key[.sub]=value`` assignments applied (validated).

    Values are parsed as YAML scalars/flow collections (``model.n_classes=2``,
    ``model.target=age``, ``data.targets=[age]``, ``model.init_encoder=null``). The
    workflow uses this to point one YAML at a task, a target or the geometry tables
    without copying the file. Sections: ``model``, ``optim``, ``train``, ``data``.

    Raises
    ------
    ModelConfigError
        A malformed assignment, an unknown section, or an invalid result.
    """
    import yaml

    raw = cfg.to_dict()
    for item in assignments:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ModelConfigError("<override>", f"expected section.key=value, got {item!r}")
        if parts[0] not in ("model", "optim", "train", "data"):
            raise ModelConfigError(
                "<override>", f"unknown section {parts[0]!r} in {item!r} (model/optim/train/data)"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ModelConfigError(
                "<override>", f"cannot parse the value of {item!r}: {err}"
            ) from None
        node = raw.setdefault(parts[0], {})
        for part in parts[1:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ModelConfigError("<override>", f"{key}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return config_from_mapping(raw, "<override>")


def load_config(path: PathLike) -> ModelConfig:
    """Read a model YAML (or a model folder's ``config.json``) into a :class:`ModelConfig`.

    Raises
    ------
    ModelConfigError
        Missing file, invalid YAML/JSON, or an invalid configuration (naming file and key).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ModelConfigError(p, "model configuration not found")
    text = p.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ModelConfigError(p, f"cannot be parsed: {err}") from None
    return config_from_mapping(raw, p)
