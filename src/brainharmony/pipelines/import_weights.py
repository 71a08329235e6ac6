"""``brainharmony import-weights``: a released checkpoint -> a model folder.

Converts an official checkpoint (``SOURCE``: ``bh-f``, ``bh-s``, ``harmonizer``,
``brain-jepa``) into the folder training writes (``model.safetensors`` + ``config.json``),
which ``brainharmony embed``, the evaluation harness and ``train.pretrained`` use. The
file is read with ``torch.load(weights_only=True)``: tensors, plain containers and
``argparse.Namespace`` (the official training arguments) only; anything else is refused.
The converters are :mod:`brainharmony.models.importers`; what each sets and drops is
printed and kept in ``config.json``'s provenance (docs/training.md, "Released weights").
"""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainharmony.cli_types import output_dir
from brainharmony.io import InputDataError
from brainharmony.models.importers import SOURCES

EPILOG = """extra files (--extra NAME=PATH):
  bh-f        harmonics=brainharmony_pos_embed/schaefer400_roi_eigenmodes.csv (ROI x 200)
              gradients=brainharmony_pos_embed/gradient_mapping_400.csv (ROI x 30)
              (the official model reads its position tables from these files)
  bh-s, harmonizer   none
model overrides (--set KEY=VALUE, YAML values): keys of the model's configuration, e.g.
  heads=12 (attention heads are not stored in a checkpoint; default: width / 64)
"""

#: The ``data:`` section of an imported model's configuration, per kind.
DATA: Mapping[str, Mapping[str, Any]] = {
    "bh_f": {"kind": "series", "crop": "random"},
    "bh_s": {"kind": "volumes"},
    "harmonizer": {"kind": "fused"},
}


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony import-weights``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "source",
        choices=list(SOURCES),
        help="which released checkpoint: " + ", ".join(SOURCES),
    )
    parser.add_argument("checkpoint", type=Path, help="the official .pth file")
    parser.add_argument("out_dir", type=output_dir, help="model folder to write")
    parser.add_argument(
        "--extra",
        type=_pair,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a file the official model reads besides its checkpoint (see below)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the derived model configuration",
    )
    parser.add_argument(
        "--name", default=None, help="model name in config.json (default <source>_official)"
    )


def load_checkpoint_file(path: Path) -> Mapping[str, Any]:
    """Read a checkpoint safely (tensors, containers, argparse.Namespace only).

    Raises
    ------
    InputDataError
        Missing, unreadable or corrupt file; pickled objects beyond the allow-list; a
        file that is not a mapping.
    """
    import torch

    if not path.is_file():
        raise InputDataError(path, "checkpoint not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's weights_only refusal, matched by its message so that this module never
        # imports pickle (tests/unit/test_safe_loading.py)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found or "Weights only load failed" in str(err):
            what = f" ({found.group(1)})" if found else ""
            raise InputDataError(
                path,
                "refused: it holds pickled objects other than tensors, plain containers and "
                f"argparse.Namespace{what}; only weights are loaded",
            ) from None
        # truncated, not a zip/pickle, not torch at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputDataError(path, f"cannot be read as a PyTorch checkpoint: {first}") from None
    if not isinstance(obj, Mapping):
        raise InputDataError(path, f"holds a {type(obj).__name__}, not a checkpoint mapping")
    return obj


def _overrides(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    import yaml

    return {key: yaml.safe_load(value) for key, value in pairs}


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony import-weights``."""
    from brainharmony.models.importers import (
        CheckpointMismatch,
        SourceUnavailable,
        converter,
    )
    from brainharmony.models.registry import build_model
    from brainharmony.train.checkpoint import (
        CONFIG_NAME,
        WEIGHTS_NAME,
        load_trained,
        save_weights,
        write_model_config,
    )
    from brainharmony.train.config import config_from_mapping

    extra = {name: Path(value) for name, value in args.extra}
    for name, path in extra.items():
        if not path.is_file():
            raise InputDataError(path, f"--extra {name}: file not found")
    try:
        convert = converter(args.source)
    except SourceUnavailable as err:
        raise InputDataError(
            args.checkpoint, f"cannot import source {args.source!r}: {err}"
        ) from None
    checkpoint = load_checkpoint_file(args.checkpoint)
    kwargs: dict[str, Any] = {"extra": extra}
    overrides = _overrides(args.overrides)
    if "overrides" in inspect.signature(convert).parameters:
        kwargs["overrides"] = overrides
    elif overrides:
        raise InputDataError(args.checkpoint, f"source {args.source!r} takes no --set overrides")
    try:
        imported = convert(checkpoint, **kwargs)
    except CheckpointMismatch as err:
        raise InputDataError(args.checkpoint, f"{err} (source {args.source})") from None
    except ValueError as err:  # a derived or overridden configuration our model refuses
        raise InputDataError(
            args.checkpoint, f"cannot build the {args.source} model: {err}"
        ) from None
    data = dict(DATA.get(imported.kind, {}))
    if imported.kind == "bh_f":
        data["duration_s"] = round(imported.model_cfg["n_patches"] * imported.model_cfg["tau"], 6)
    name = args.name or f"{args.source.replace('-', '_')}_official"
    cfg = config_from_mapping(
        {"name": name, "kind": imported.kind, "model": imported.model_cfg, "data": data},
        f"import-weights {args.source}",
    )
    model = build_model(imported.kind, imported.model_cfg)
    model.load_state_dict(imported.state_dict, strict=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / WEIGHTS_NAME, model, metadata={"source": args.source})
    write_model_config(
        out / CONFIG_NAME,
        cfg,
        trained_steps=0,
        inputs=[args.checkpoint, *extra.values()],
        step="import-weights",
        parameters={"source": args.source, "notes": list(imported.notes)},
    )
    load_trained(out)  # the folder rebuilds alone
    print(f"imported {args.source} -> {out} ({imported.kind})")
    for note in imported.notes:
        print(f"  - {note}")
    return 0
