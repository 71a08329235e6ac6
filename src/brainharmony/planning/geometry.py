"""Planning of the geometry rules (``workflow/rules/geometry.smk``): settings and paths.

Geometric harmonics of the population surface and functional gradients of the
pretraining set's group FC; nothing here reads imaging data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ATLAS = "Schaefer400"
#: The group FC matrix written beside the group gradients.
GROUP_FC = f"results/geometry/atlas-{ATLAS}_desc-group_fc.npy"


@dataclass(frozen=True)
class GeometryPlan:
    """The ``geometry:`` config block (the library's defaults; the workflow's come from
    the schema, applied by validation)."""

    surface: str = "fslr32k"
    n_modes: int = 200
    n_gradients: int = 30
    kernel: str = "normalized_angle"
    sparsity: float = 0.9

    @property
    def harmonics_table(self) -> str:
        return harmonics_table(self)

    @property
    def harmonics_figure(self) -> str:
        return harmonics_figure(self)

    @property
    def group_gradients(self) -> str:
        return group_gradients(self)

    @property
    def group_fc(self) -> str:
        return GROUP_FC

    @property
    def dataset_gradients(self) -> str:
        return dataset_gradients(self)


def geometry_from_config(config: Mapping[str, Any]) -> GeometryPlan:
    """The geometry settings of a validated workflow config."""
    block = config["geometry"]
    return GeometryPlan(
        surface=str(block["surface"]),
        n_modes=int(block["n_modes"]),
        n_gradients=int(block["n_gradients"]),
        kernel=str(block["kernel"]),
        sparsity=float(block["sparsity"]),
    )


def harmonics_table(plan: GeometryPlan) -> str:
    return f"results/geometry/atlas-{ATLAS}_surf-{plan.surface}_k-{plan.n_modes}_harmonics.tsv"


def harmonics_figure(plan: GeometryPlan) -> str:
    return (
        f"results/geometry/figures/atlas-{ATLAS}_surf-{plan.surface}_k-{plan.n_modes}_harmonics.png"
    )


def group_gradients(plan: GeometryPlan) -> str:
    """Gradients of the pretraining set's group FC (the reference)."""
    return f"results/geometry/atlas-{ATLAS}_g-{plan.n_gradients}_gradients.tsv"


def dataset_gradients(plan: GeometryPlan) -> str:
    """Per-dataset gradients, Procrustes-aligned to the group reference."""
    stem = f"{{dataset}}_atlas-{ATLAS}_g-{plan.n_gradients}_gradients.tsv"
    return f"results/geometry/{{dataset}}/{stem}"
