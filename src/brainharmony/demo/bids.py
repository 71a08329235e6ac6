"""BIDS naming, NIfTI headers and metadata of the demo datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony._version import __version__
from brainharmony.demo.acquisition import DatasetSpec

BIDS_VERSION = "1.10.0"


def entities(subject: str, session: str | None) -> str:
    """``sub-<s>[_ses-<x>]``."""
    out = f"sub-{subject}"
    if session is not None:
        out += f"_ses-{session}"
    return out


def subject_dir(root: Path, subject: str, session: str | None) -> Path:
    """``root/sub-<s>[/ses-<x>]``."""
    path = root / f"sub-{subject}"
    return path / f"ses-{session}" if session is not None else path


def bold_stem(subject: str, session: str | None, run: int | None) -> str:
    """File stem of a BOLD run without the suffix (``..._task-rest[_run-n]``)."""
    stem = entities(subject, session) + "_task-rest"
    if run is not None:
        stem += f"_run-{run}"
    return stem


def nifti_image(
    data: np.ndarray, affine: np.ndarray, *, tr: float | None = None, slice_axis: int = 2
) -> Any:
    """A NIfTI-1 image as a scanner converter would write it.

    int16 data with ``scl_slope = 1``, ``scl_inter = 0``; qform and sform code 1
    (scanner); units mm (and s with ``pixdim[4] = tr`` for 4D); ``dim_info`` naming
    the frequency (i), phase (j) and slice (k) axes.
    """
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_slope_inter(1.0, 0.0)
    if data.ndim == 4:
        if tr is None:
            raise ValueError("a 4D image needs tr")
        zooms = [*hdr.get_zooms()[:3], float(tr)]
        hdr.set_zooms(zooms)
        hdr.set_xyzt_units("mm", "sec")
        hdr.set_dim_info(freq=0, phase=1, slice=slice_axis)
    else:
        hdr.set_xyzt_units("mm")
    hdr["descrip"] = b"brainharmony demo (simulated)"
    return img


def bold_sidecar(spec: DatasetSpec, slice_times: np.ndarray) -> dict[str, Any]:
    """Per-run BOLD JSON sidecar."""
    meta: dict[str, Any] = {
        "TaskName": "rest",
        "RepetitionTime": float(spec.tr),
        "SliceTiming": [float(t) for t in slice_times],
        "SliceEncodingDirection": "k",
        "PhaseEncodingDirection": spec.phase_encoding,
        "EchoTime": float(spec.echo_time),
        "FlipAngle": 52 if spec.tr < 1.5 else 78,
        "MagneticFieldStrength": 3,
        "Manufacturer": "brainharmony simulator",
        "ManufacturersModelName": f"demo-{spec.name}",
        "PulseSequenceType": "Gradient Echo EPI",
    }
    if spec.multiband > 1:
        meta["MultibandAccelerationFactor"] = int(spec.multiband)
    return meta


def t1_sidecar(spec: DatasetSpec) -> dict[str, Any]:
    """T1w JSON sidecar (MPRAGE-like parameters)."""
    return {
        "RepetitionTime": 2.3,
        "EchoTime": 0.00298,
        "InversionTime": 0.9,
        "FlipAngle": 9,
        "MagneticFieldStrength": 3,
        "Manufacturer": "brainharmony simulator",
        "ManufacturersModelName": f"demo-{spec.name}",
        "PulseSequenceType": "MPRAGE",
    }


def dataset_description(spec: DatasetSpec, preset: str, seed: int) -> dict[str, Any]:
    return {
        "Name": f"brainharmony demo dataset {spec.name} (simulated)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["brainharmony demo generator"],
        "GeneratedBy": [
            {
                "Name": "brainharmony",
                "Version": __version__,
                "Description": f"brainharmony demo --preset {preset} --seed {seed}",
            }
        ],
    }


def participants_sidecar() -> dict[str, Any]:
    return {
        "participant_id": {"Description": "Participant label"},
        "age": {"Description": "Age at the (first) scan", "Units": "year"},
        "sex": {
            "Description": "Sex",
            "Levels": {"M": "male", "F": "female"},
        },
        "fluid_intelligence": {
            "Description": "Fluid intelligence total score (Cattell-like, 0-46)",
            "Units": "score",
        },
        "diagnosis": {
            "Description": "Diagnostic group",
            "Levels": {"CN": "control", "PT": "patient"},
        },
    }


def task_sidecar(spec: DatasetSpec) -> dict[str, Any]:
    return {"TaskName": "rest", "TaskDescription": "Resting state, eyes open (simulated)"}


def readme(spec: DatasetSpec, preset: str, seed: int, n_runs: int) -> str:
    sessions = (
        "- Every subject has `ses-1`; some also `ses-2` (a second visit, new head pose).\n"
        if spec.uses_sessions
        else ""
    )
    runs = "- Some subjects have two BOLD runs (`run-1`, `run-2`).\n" if spec.uses_runs else ""
    vx = "x".join(f"{v:g}" for v in spec.bold_voxel_mm)
    t1 = "x".join(f"{v:g}" for v in spec.t1_voxel_mm)
    return (
        f"# {spec.name}: simulated resting-state dataset\n\n"
        "Generated by `brainharmony demo` (preset "
        f"`{preset}`, seed {seed}). Not real data: T1w and BOLD images are simulated "
        "from the MNI152 template and a model of resting-state dynamics on the "
        "Schaefer-400 parcels, with planted effects of age, diagnosis and fluid "
        "intelligence. The ground truth lives outside this folder, in "
        f"`../{spec.name}-truth/`.\n\n"
        f"- {spec.n_subjects} participants, {n_runs} BOLD runs\n"
        f"- BOLD: TR {spec.tr:g} s, {spec.n_volumes} volumes, {vx} mm voxels, "
        f"{spec.bold_shape[2]} slices (multiband {spec.multiband}, "
        f"{spec.slice_order}), stored {spec.bold_orientation}"
        f"{', oblique' if spec.oblique else ''}\n"
        f"- T1w: {t1} mm voxels, stored {spec.t1_orientation}\n"
        f"{sessions}{runs}"
        "- `participants.tsv`: age, sex, fluid_intelligence, diagnosis (CN control, "
        "PT patient); 'n/a' marks values withheld on purpose.\n"
    )


def participants_table(phenotypes: pd.DataFrame) -> pd.DataFrame:
    """The public ``participants.tsv`` columns, with withheld values as NaN."""
    table = phenotypes[["participant_id", "age", "sex", "fluid_intelligence", "diagnosis"]].copy()
    table["fluid_intelligence"] = table["fluid_intelligence"].astype("Int64")
    for column in ("age", "sex", "fluid_intelligence", "diagnosis"):
        mask = phenotypes[f"withheld_{column}"].to_numpy(dtype=bool)
        if mask.any():
            table[column] = table[column].astype(object)
            table.loc[mask, column] = np.nan
    return table
