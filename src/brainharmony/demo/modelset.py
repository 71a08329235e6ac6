"""The model constants of one demo generation, in one record.

Its own module so that :mod:`brainharmony.demo.truth` (which writes it to the truth
folder) and :mod:`brainharmony.demo.generate` (which uses it) both import it from
below, without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brainharmony.demo.anatomy import AgeingModel, T1Intensities
from brainharmony.demo.bold import BoldModel
from brainharmony.demo.dynamics import DynamicsParams, EffectSizes
from brainharmony.demo.motion import PoseModel
from brainharmony.demo.phenotypes import PopulationModel


@dataclass(frozen=True)
class Models:
    """All model constants of a generation (written to the truth folder)."""

    dynamics: DynamicsParams = field(default_factory=DynamicsParams)
    effects: EffectSizes = field(default_factory=EffectSizes)
    population: PopulationModel = field(default_factory=PopulationModel)
    bold: BoldModel = field(default_factory=BoldModel)
    ageing: AgeingModel = field(default_factory=AgeingModel)
    t1: T1Intensities = field(default_factory=T1Intensities)
    pose: PoseModel = field(default_factory=PoseModel)
