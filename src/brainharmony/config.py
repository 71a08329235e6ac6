"""Workflow configuration: loading, JSON-Schema validation with defaults, clear errors.

The schema lives in ``workflow/schemas/config.schema.yaml``. Validation fills in
every default the schema declares (nested ones included), and an unknown or
mistyped key fails with a message that names the key, where it is, what was
allowed and, when one is close, what was probably meant.

YAML is read strictly (:func:`load_yaml`, for configs and model YAMLs alike): a
duplicate mapping key is an error naming the file, line and key (PyYAML would keep the
last value silently), and aliases may not expand the document beyond
:data:`MAX_ALIAS_EXPANSION` extra values (a "billion laughs" alias bomb is refused at
once instead of exhausting memory when validated). Schema ``pattern`` keywords are
matched as JSON Schema (ECMA-262) means them: ``$`` is the end of the text, so a name
with a trailing newline does not match ``^[a-zA-Z0-9]+$`` (Python's ``re`` would let
it).
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
import reprlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from brainharmony.scans_table import phenotype_name_problem

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not satisfy the schema."""


#: Values that aliases (``*name``) may add to a YAML document, beyond its own nodes.
MAX_ALIAS_EXPANSION = 100_000
#: Values a configuration may hold in all (validation walks each one).
MAX_CONFIG_VALUES = 2_000_000


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate mapping keys (errors name line and key)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges may be overridden: that is their purpose
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it below
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConfigError(
                    f"{self.name}: line {line}: duplicate key {reprlib.repr(key)} "
                    f"(first at line {first}); YAML keeps only one, so remove or rename one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes of ``root`` with every alias expanded, counting up to ``limit`` (then stops).

    A node reached through an alias counts again each time (what a consumer walking the
    loaded data visits); an alias cycle counts as unbounded.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            return limit + 1  # an alias inside its own anchor: infinite
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        active.discard(key)
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(root)


def _distinct_nodes(root: yaml.Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
    return len(seen)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file strictly with the safe loader; errors name the file.

    Raises
    ------
    ConfigError
        The file is missing, is not valid YAML, has a duplicate mapping key (naming
        the line and key), or its aliases expand it by more than
        :data:`MAX_ALIAS_EXPANSION` values (an alias bomb).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            loader = _StrictLoader(handle)
            try:
                node = loader.get_single_node()
                if node is None:
                    return None
                own = _distinct_nodes(node)
                limit = own + MAX_ALIAS_EXPANSION
                if _expanded_size(node, limit) > limit:
                    raise ConfigError(
                        f"{path}: YAML aliases (*name) expand the document by more than "
                        f"{MAX_ALIAS_EXPANSION} values (an alias bomb or an alias cycle); "
                        "write the values out instead"
                    )
                return loader.construct_document(node)
            finally:
                loader.dispose()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
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

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not _ecma_search(patrn, instance):
            yield jsonschema.ValidationError(f"{reprlib.repr(instance)} does not match {patrn!r}")

    return jsonschema.validators.extend(
        validator_class, {"properties": set_defaults, "pattern": pattern}
    )


_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)((?:\\\\)*)\$")


def _ecma_search(pattern: str, text: str) -> bool:
    """``pattern`` searched in ``text`` as JSON Schema (ECMA-262) means it: ``$`` is the
    very end of the text (Python's ``$`` also matches before a final newline)."""
    return re.search(_UNESCAPED_DOLLAR.sub(r"\1\\Z", pattern), text) is not None


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
        return f"invalid name {reprlib.repr(error.instance)} in {where}: names must be alphanumeric"
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
    _check_size(config)
    schema = load_yaml(schema_path)
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = [_shorten(_explain(e)) for e in errors]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines))
    problems = _phenotype_problems(config) + _range_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return config


def _check_size(config: Any) -> None:
    """Refuse a configuration of more than :data:`MAX_CONFIG_VALUES` values (counting a
    shared object once per place it appears, as validation visits it): the data of a
    YAML alias bomb that Snakemake's own loader expanded, for example."""
    count = 0
    stack = [config]
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"the configuration holds more than {MAX_CONFIG_VALUES} values (YAML aliases "
                "expanding it, an alias bomb?); write the values out instead"
            )
        if isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)


def _shorten(line: str, limit: int = 500) -> str:
    return line if len(line) <= limit else line[: limit - 25] + f" ... ({len(line)} characters)"


def _range_problems(config: Mapping[str, Any]) -> list[str]:
    """``[min, max]`` settings whose order JSON Schema cannot check."""
    low, high = config.get("ingest", {}).get("tr_range", (0.1, 10.0))
    if not 0 < low < high:
        return [f"ingest.tr_range: must satisfy 0 < min < max; got [{low}, {high}]"]
    return []


def _phenotype_problems(config: Mapping[str, Any]) -> list[str]:
    """Phenotype names that ingest cannot carry: a fixed scans.tsv column's name, or
    the separators of its ``--phenotypes NAME:KIND,...`` argument."""
    problems = []
    for dataset, settings in config.get("datasets", {}).items():
        for name in settings.get("phenotypes") or {}:
            where = f"datasets.{dataset}.phenotypes"
            problem = phenotype_name_problem(name)
            if problem is not None:
                problems.append(f"{where}: {problem}")
            elif not name or any(c in name for c in ",:") or not name.isprintable():
                problems.append(
                    f"{where}: phenotype name {reprlib.repr(name)} must be non-empty and "
                    "printable, without ',' or ':'"
                )
    return problems


def load_config(path: str | Path, schema_path: str | Path = DEFAULT_SCHEMA) -> dict[str, Any]:
    """Load a YAML config file and validate it (defaults filled)."""
    config = load_yaml(path)
    try:
        return validate_config(config if config is not None else {}, schema_path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
