"""Workflow configuration: loading, JSON-Schema validation with defaults, clear errors.

The schema lives in ``workflow/schemas/config.schema.yaml``. Validation fills in
every default the schema declares (nested ones included), and an unknown or
mistyped key fails with a message that names the key, where it is, what was
allowed and, when one is close, what was probably meant.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not satisfy the schema."""


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with the safe loader; errors name the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills ``default`` values before validating properties."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(
        validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any
    ) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _where(path: Any) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _explain(error: jsonschema.ValidationError) -> str:
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = [k for k in error.instance if k not in allowed]
        parts = []
        for key in unknown:
            guess = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            parts.append(f"unknown key '{key}' in {where}{hint}")
        if allowed:
            parts.append(f"allowed keys there: {', '.join(allowed)}")
        return "; ".join(parts)
    if "propertyNames" in error.schema_path:
        return f"invalid name '{error.instance}' in {where}: names must be alphanumeric"
    if error.validator == "required":
        return f"{where}: {error.message}"
    key = error.absolute_path[-1] if error.absolute_path else None
    label = f"key '{key}' at {where}" if key is not None else where
    return f"{label}: {error.message}"


def validate_config(
    config: dict[str, Any], schema_path: str | Path = DEFAULT_SCHEMA
) -> dict[str, Any]:
    """Validate ``config`` in place against the schema, filling defaults.

    Parameters
    ----------
    config : dict
        The configuration as loaded from YAML (modified in place: defaults added).
    schema_path : path-like
        The JSON-Schema file (YAML syntax).

    Returns
    -------
    dict
        The same ``config`` object, with defaults.

    Raises
    ------
    ConfigError
        Listing every problem found, each naming the offending key.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration must be a mapping, got {type(config).__name__}")
    schema = load_yaml(schema_path)
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = [_explain(e) for e in errors]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines))
    return config


def load_config(path: str | Path, schema_path: str | Path = DEFAULT_SCHEMA) -> dict[str, Any]:
    """Load a YAML config file and validate it (defaults filled)."""
    config = load_yaml(path)
    try:
        return validate_config(config if config is not None else {}, schema_path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# --- CLI ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML configuration file")
    parser.add_argument(
        "--print", action="store_true", help="print the configuration with defaults filled in"
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err)
        return 1
    if args.print:
        print(yaml.safe_dump(config, sort_keys=False))
    else:
        print(f"{args.config}: valid")
    return 0
