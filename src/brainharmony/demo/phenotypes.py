"""Phenotypes of the simulated participants (age, sex, fluid intelligence, diagnosis).

The population constants below define the z-scores through which the phenotypes act
on the simulated connectivity (:mod:`brainharmony.demo.dynamics`); they are fixed, not
estimated per sample, so an effect means the same thing in every dataset and preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

#: Diagnosis levels: control and patient.
DIAGNOSIS_LEVELS: tuple[str, str] = ("CN", "PT")


@dataclass(frozen=True)
class PopulationModel:
    """How phenotypes are drawn and standardised.

    Attributes
    ----------
    age_min, age_max : float
        Ages are uniform on this range (years; Cam-CAN spans 18-88).
    age_mean, age_sd : float
        Constants of the age z-score.
    fi_mean, fi_sd : float
        Mean and SD of the fluid-intelligence score (Cattell-like total, 0-46).
    fi_age_corr : float
        Correlation of the fluid-intelligence z-score with the age z-score
        (Cam-CAN reports a strong decline with age).
    patient_fraction : float
        Fraction of patients (``PT``); the rest are controls (``CN``).
    """

    age_min: float = 18.0
    age_max: float = 88.0
    age_mean: float = 53.0
    age_sd: float = 20.2
    fi_mean: float = 32.0
    fi_sd: float = 6.0
    fi_age_corr: float = -0.65
    patient_fraction: float = 0.5

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_phenotypes(
    n_subjects: int, rng: np.random.Generator, model: PopulationModel | None = None
) -> pd.DataFrame:
    """Draw the true phenotypes of ``n_subjects`` participants.

    Parameters
    ----------
    n_subjects : int
        Number of participants (>= 2).
    rng : numpy.random.Generator
        Source of randomness.
    model : PopulationModel, optional
        Population constants; the default is :class:`PopulationModel` ().

    Returns
    -------
    pandas.DataFrame
        ``n_subjects`` rows with columns ``age`` (years, one decimal), ``sex``
        (``M``/``F``), ``fluid_intelligence`` (integer score), ``diagnosis``
        (``CN``/``PT``), and the z-scores ``z_age``, ``z_fi``, ``is_patient`` (0/1)
        through which they act on the dynamics. Ages are stratified (one draw per
        equal-width age bin, shuffled) and diagnoses are exactly balanced up to
        rounding, so small cohorts still span the range and cross-validate.
    """
    if not isinstance(n_subjects, int | np.integer) or n_subjects < 2:
        raise ValueError(f"n_subjects must be an integer >= 2, got {n_subjects!r}")
    model = model or PopulationModel()
    width = (model.age_max - model.age_min) / n_subjects
    ages = model.age_min + width * (np.arange(n_subjects) + rng.uniform(size=n_subjects))
    ages = np.round(rng.permutation(ages), 1)
    z_age = (ages - model.age_mean) / model.age_sd
    rho = model.fi_age_corr
    z_fi_latent = rho * z_age + np.sqrt(1.0 - rho**2) * rng.standard_normal(n_subjects)
    fi = np.clip(np.round(model.fi_mean + model.fi_sd * z_fi_latent), 0, 46).astype(int)
    z_fi = (fi - model.fi_mean) / model.fi_sd
    n_pt = round(model.patient_fraction * n_subjects)
    is_patient = rng.permutation(np.r_[np.ones(n_pt, int), np.zeros(n_subjects - n_pt, int)])
    sex = rng.permutation(np.where(np.arange(n_subjects) % 2 == 0, "F", "M"))
    return pd.DataFrame(
        {
            "age": ages,
            "sex": sex,
            "fluid_intelligence": fi,
            "diagnosis": np.where(is_patient == 1, DIAGNOSIS_LEVELS[1], DIAGNOSIS_LEVELS[0]),
            "z_age": z_age,
            "z_fi": z_fi,
            "is_patient": is_patient,
        }
    )
