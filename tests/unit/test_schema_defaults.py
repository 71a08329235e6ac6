"""Every workflow default in the config schema equals the library default it configures.

The schema (``workflow/schemas/config.schema.yaml``) holds the workflow's defaults and
fills them in at validation; the settings dataclasses and the stage functions hold the
library's. The two are written separately, so this test keeps them equal field by field:
a value changed in one place and not the other fails here, naming the key.

Each schema key with a default is either mapped to the library default it sets
(``LIBRARY``) or listed as a workflow-only setting with the reason (``WORKFLOW_ONLY``);
a new schema key that is neither fails too.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from brainharmony.anat.settings import AnatSettings
from brainharmony.demo.generate import generate_demo
from brainharmony.evaluate.settings import (
    BNTSettings,
    BrainGNNSettings,
    BrainNetCNNSettings,
    EvalSettings,
    FineTuneSettings,
)
from brainharmony.func.fmriprep import DEFAULT_SPACE, FmriprepSettings
from brainharmony.ingest import ingest_dataset
from brainharmony.parcellated import ingest_parcellated
from brainharmony.planning.func import FuncPlan
from brainharmony.planning.geometry import GeometryPlan
from brainharmony.planning.multitr import MultiTRPlan
from brainharmony.planning.train import TrainPlan
from brainharmony.scan_pairing import CheckSettings

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def field_default(cls: type, name: str) -> Callable[[], Any]:
    """The default of dataclass field ``cls.name`` (its factory's value for mutable ones)."""

    def get() -> Any:
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        if f.default is not dataclasses.MISSING:
            return f.default
        assert f.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{name} has no default"
        return f.default_factory()

    get.__qualname__ = f"{cls.__name__}.{name}"
    return get


def parameter_default(func: Callable[..., Any], name: str) -> Callable[[], Any]:
    """The default of parameter ``name`` of ``func``."""

    def get() -> Any:
        default = inspect.signature(func).parameters[name].default
        assert default is not inspect.Parameter.empty, f"{func.__qualname__}({name}) has no default"
        return default

    get.__qualname__ = f"{func.__qualname__}({name}=)"
    return get


def fmriprep_res() -> str | None:
    """``func.fmriprep.res``: the ``res-`` of the library's default output space."""
    (space,) = field_default(FmriprepSettings, "output_spaces")()
    return space.partition(":res-")[2] or None


def _same_fields(
    cls: type, block: str, renames: Mapping[str, str] = {}, skip: tuple[str, ...] = ()
) -> dict[str, Callable]:
    """``block.<key>`` -> ``cls.<field>`` for every field (same name unless renamed)."""
    inverse = {field: key for key, field in renames.items()}
    return {
        f"{block}.{inverse.get(f.name, f.name)}": field_default(cls, f.name)
        for f in dataclasses.fields(cls)
        if f.name not in skip
    }


#: Schema key -> the library default it configures.
LIBRARY: dict[str, Callable[[], Any]] = {
    "demo.preset": parameter_default(generate_demo, "preset"),
    "demo.seed": parameter_default(generate_demo, "seed"),
    **_same_fields(CheckSettings, "ingest", skip=("task",)),
    "datasets.<name>.task": field_default(CheckSettings, "task"),
    **{
        f"datasets.<name>.{name}": parameter_default(ingest_dataset, name)
        for name in ("site_column", "exclude_subjects", "participant_label")
    },
    "datasets.<name>.n_rois": parameter_default(ingest_parcellated, "n_rois"),
    **_same_fields(AnatSettings, "anat"),
    **_same_fields(
        FuncPlan,
        "func",
        {"atlas.source": "atlas_source", "atlas.path": "atlas_path", "atlas.space": "atlas_space"},
    ),
    "func.fmriprep.runner": field_default(FmriprepSettings, "runner"),
    "func.fmriprep.fs_no_reconall": field_default(FmriprepSettings, "fs_no_reconall"),
    "func.fmriprep.space": lambda: DEFAULT_SPACE,
    "func.fmriprep.res": fmriprep_res,
    **_same_fields(GeometryPlan, "geometry"),
    **_same_fields(MultiTRPlan, "multitr", {"scaling": "scaling_mode"}),
    **_same_fields(TrainPlan, "train"),
    **_same_fields(EvalSettings, "evaluate", skip=("tasks", "grids", "finetune", "graphs")),
    **_same_fields(FineTuneSettings, "evaluate.finetune"),
    **_same_fields(BrainNetCNNSettings, "evaluate.graphs.brainnetcnn"),
    **_same_fields(BrainGNNSettings, "evaluate.graphs.braingnn"),
    **_same_fields(BNTSettings, "evaluate.graphs.bnt"),
}

#: Schema keys that set no library default, and why.
WORKFLOW_ONLY: dict[str, str] = {
    "demo.root": "where the workflow writes the demo datasets",
    "datasets.<name>.demo": "whether the workflow generates the dataset",
    "datasets.<name>.kind": "which ingestion the workflow runs (BIDS folder or run table)",
    "datasets.<name>.phenotypes": "the columns the workflow carries (the library: none)",
    "func.fmriprep.output_root": "where the workflow puts fMRIPrep's derivatives",
    "func.fmriprep.work_root": "where the workflow puts fMRIPrep's working folders",
    "pretrain.datasets": "null = every configured dataset (a workflow-level choice)",
    "evaluate.tasks": "{} = no task; tasks name workflow datasets",
    "evaluate.grids": "{} = brainharmony.evaluate.settings.Grids' defaults",
    "evaluate.finetune": "{}: its keys' defaults are FineTuneSettings' (checked above)",
}

#: Dataclass fields that have no config key (filled from elsewhere), and why.
NOT_CONFIG_KEYS: dict[str, str] = {
    "func.anat_template": "FuncPlan takes it from anat.template",
    "func.fmriprep": "the func.fmriprep block, checked key by key above",
    "multitr.pretrain": "MultiTRPlan takes it from pretrain.datasets",
    "func.parcellated": "FuncPlan takes it from datasets.<name>.kind",
    "multitr.parcellated": "MultiTRPlan takes it from datasets.<name>.kind",
    "train.basedir": "the workflow's folder, not a setting",
}


def schema_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted key -> default of every schema property that has one, below the blocks.

    An object with sub-properties and an empty default (``{}``: the block may be left
    out) is described by its leaves; one with a filled-in default is one value.
    """
    found: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for key, sub in node.get("properties", {}).items():
            here = (*path, key)
            if "properties" in sub and not sub.get("default"):
                walk(sub, here)
            elif "default" in sub and len(here) > 1:
                found[".".join(here)] = sub["default"]

    walk(schema, ())
    walk(schema["$defs"]["dataset"], ("datasets", "<name>"))
    return found


def schema_keys(schema: Mapping[str, Any]) -> set[str]:
    """Dotted key of every schema property below the blocks, with a default or not."""
    keys: set[str] = set()

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for key, sub in node.get("properties", {}).items():
            here = (*path, key)
            if len(here) > 1:
                keys.add(".".join(here))
            walk(sub, here)

    walk(schema, ())
    walk(schema["$defs"]["dataset"], ("datasets", "<name>"))
    return keys


def normalise(value: Any) -> Any:
    """YAML lists and Python tuples compare equal; so do 2 and 2.0."""
    if isinstance(value, list | tuple):
        return tuple(normalise(v) for v in value)
    if isinstance(value, Mapping):
        return {k: normalise(v) for k, v in value.items()}
    return value


def disagreements(schema: Mapping[str, Any]) -> list[str]:
    """One line per schema default that differs from its library default."""
    lines = []
    for key, default in sorted(schema_defaults(schema).items()):
        if key in WORKFLOW_ONLY:
            continue
        library = LIBRARY[key]()
        if normalise(default) != normalise(library):
            lines.append(
                f"{key}: schema default {default!r} != {LIBRARY[key].__qualname__} = {library!r}"
            )
    return lines


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def test_every_schema_default_is_mapped_or_workflow_only(schema):
    keys = set(schema_defaults(schema))
    unmapped = sorted(keys - set(LIBRARY) - set(WORKFLOW_ONLY))
    assert not unmapped, f"schema keys with a default but no library counterpart: {unmapped}"
    both = sorted(set(LIBRARY) & set(WORKFLOW_ONLY))
    assert not both, both


def test_every_settings_field_is_a_schema_key(schema):
    """A settings field without a schema key cannot be set from the workflow config."""
    keys = schema_keys(schema)
    missing = sorted(set(LIBRARY) - keys - set(NOT_CONFIG_KEYS))
    assert not missing, f"settings fields with no schema default: {missing}"


def test_schema_defaults_equal_library_defaults(schema):
    problems = disagreements(schema)
    assert not problems, "\n".join(problems)


def test_a_changed_default_is_caught(schema):
    """The comparison can fail: a schema default moved away from the library's is named."""
    doctored = copy.deepcopy(schema)
    doctored["properties"]["func"]["properties"]["min_segment"]["default"] = 6
    doctored["properties"]["anat"]["properties"]["model_box_mm"]["default"] = [160, 192, 161]
    problems = disagreements(doctored)
    assert len(problems) == 2, problems
    assert problems[0].startswith("anat.model_box_mm: schema default [160, 192, 161]")
    assert problems[1].startswith("func.min_segment: schema default 6 != FuncPlan.min_segment")
