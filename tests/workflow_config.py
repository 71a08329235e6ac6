"""Workflow configs as the Snakefile's planning sees them: the schema's defaults filled in.

``workflow/rules/common.smk`` validates the config (``brainharmony.config.
validate_config``, which fills every schema default) before it builds the plan, so the
planning package indexes config keys directly. Tests that call the planning functions
with a partial config pass it through :func:`with_schema_defaults` first.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from brainharmony.config import _Validator, load_yaml

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def with_schema_defaults(partial: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``partial`` with every schema default filled in.

    Unlike ``validate_config`` this does not refuse invalid values: the tests that pass
    one check the planning's own refusal of it.
    """
    config = copy.deepcopy(partial)
    config.setdefault("datasets", {})
    for _ in _Validator(load_yaml(SCHEMA)).iter_errors(config):
        pass
    return config
