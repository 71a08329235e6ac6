"""Ground-truth files written beside each demo dataset (``<name>-truth/``).

The layout and conventions are described in :data:`README_TEMPLATE` (copied into
each truth folder as ``README.md``) and in ``docs/demo-data.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from brainharmony._version import __version__
from brainharmony.atlas import schaefer400_labels, schaefer400_provenance
from brainharmony.demo.motion import MOTION_COLUMNS, framewise_displacement
from brainharmony.io import write_json, write_npy, write_text, write_tsv

if TYPE_CHECKING:  # pragma: no cover
    from brainharmony.demo.acquisition import DatasetSpec
    from brainharmony.demo.dynamics import RunSeries
    from brainharmony.demo.modelset import Models

README_TEMPLATE = """\
# Ground truth of the demo dataset `{name}`

Written by `brainharmony demo` (brainharmony {version}), preset `{preset}`, seed {seed}.
Everything here is what the simulator used to make `../{name}/`; nothing in the BIDS
folder refers to it. World coordinates are NIfTI RAS+ millimetres. Paths mirror the
BIDS folder: `sub-<label>/[ses-<label>/]`.

## Dataset-level files
- `generation.json`: seed, preset, package version, the dataset's acquisition
  protocol and every model constant (dynamics, BOLD formation, ageing, pose, motion).
- `effects.json`: the planted phenotype effects: sizes, the networks and edges they act
  on, the rules, the z-score constants, and the confounds built in on purpose.
- `phenotypes.tsv`: the true phenotypes of every participant (including values shown
  as 'n/a' in `participants.tsv`; `withheld_<column>` says which), the z-scores
  through which they act (`z_age`, `z_fi`, `is_patient`), the motion class, the
  applied atrophy (`thinning_mm`, `ventricle_growth_mm`, tissue volumes).
- `runs.tsv`: one row per BOLD run: subject, session, run, motion class, mean
  framewise displacement, number of volumes with FD > 0.5 mm, relative file stems.
- `atlas_labels.tsv`, `atlas.json`: the Schaefer-400 labels (index, name, network,
  hemisphere) and the provenance of the atlas the signals were placed with (the
  3 mm grid of `brainharmony.atlas.schaefer400_volume`).

## Per session: `<stem>_desc-anat_truth.json`
- `head_pose_mni_to_scanner`: 4x4 `P`, `x_scanner = P @ x_mni` (homogeneous mm). The
  subject's anatomy is the MNI152 (ICBM 2009a asymmetric) template, so `P` maps
  template space into this session's scanner space; registering the T1w to MNI should
  find `inv(P)`.
- `t1w_affine`: the T1w voxel-to-world (scanner) affine, as in its NIfTI header.
- `anatomy`: atrophy and head-shape parameters.

## Per BOLD run (`<stem>` = `sub-.._[ses-.._]task-rest[_run-..]`)
- `<stem>_desc-neural_timeseries.npy` (float32, n_fine x 400): latent neural
  activity of the 400 parcels (Schaefer order) on a fine grid: sample `n` at
  `t0 + n * dt` seconds from the first volume's onset (`t0` is negative: HRF
  burn-in); `t0`, `dt` in `<stem>_desc-timing_truth.json`.
- `<stem>_desc-bold_timeseries.npy` (float32, n_volumes x 400): the noise-free BOLD
  of each parcel in percent signal change, sampled at each volume's onset
  (`t = v * RepetitionTime`). This is the reference for denoised parcel series.
- `<stem>_desc-timing_truth.json`: `t0`, `dt`, the HRF (SPM-style canonical double
  gamma, unit area, length), `bold_scale`, `RepetitionTime`, `SliceTiming`. The BOLD
  of any slice is `brainharmony.demo.dynamics.sample_at(scale * hrf_convolve(neural,
  dt), t0, dt, v * TR + SliceTiming[k])`: `brainharmony.demo.truth.load_run_series`
  rebuilds it, so the per-slice version need not be stored.
- `<stem>_desc-motion_timeseries.tsv`: `trans_x, trans_y, trans_z` (mm), `rot_x,
  rot_y, rot_z` (rad), `framewise_displacement` (Power, 50 mm radius). Convention:
  the rigid transform `M_v` taking the head from its position at volume 0 to its
  position during volume `v`, in scanner world coordinates:
  `x_v = R (x_0 - c) + c + t`, `R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)` (right-handed
  about the world axes), `c` = `motion_center` (the BOLD field-of-view centre).
  Volume 0 is all zeros. Registration tools report the inverse (volume -> reference),
  so their signs may be flipped.
- `<stem>_desc-motion_xfm.npy` (n_volumes x 4 x 4): the matrices `M_v` themselves.
- `<stem>_desc-physio_timeseries.tsv`: respiration, cardiac and slow white-matter /
  CSF / global signals and the scanner drift, at each volume's onset.
- `<stem>_desc-bold_truth.json`: `bold_affine` (voxel-to-world of the BOLD NIfTI),
  `bold_pose_mni_to_scanner` (the head pose at volume 0 of this run: the session pose,
  times a small repositioning for a second run), `session_pose_mni_to_scanner` (the
  T1w's), `bold_to_t1w_world` (= bold pose @ inv(session pose): identity for first
  runs), `motion_center`, and summary motion statistics.

## Image formation, briefly
Voxel signals come from the parcels' BOLD at each slice's own acquisition time,
mixed by trilinear interpolation from a 3 mm MNI source through the head pose and
per-volume motion; plus white-matter/CSF physiology (leaking into grey matter), a
global signal, scanner drift, spin-history dips after movements, a receive-coil
profile fixed in the scanner, spatially smooth noise and Rician thermal noise. See
`docs/demo-data.md` in the package repository.
"""


def _mat(m: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(m)]


def anat_record(pose: np.ndarray, t1_affine: np.ndarray, summary: dict[str, float]) -> dict:
    """Content of ``<stem>_desc-anat_truth.json``."""
    return {
        "head_pose_mni_to_scanner": _mat(pose),
        "t1w_affine": _mat(t1_affine),
        "template_space": "MNI152NLin2009aAsym (nilearn ICBM152 2009a asymmetric)",
        "anatomy": summary,
    }


def write_run(
    truth_dir: Path,
    stem: str,
    *,
    spec: DatasetSpec,
    series: RunSeries,
    params: np.ndarray,
    matrices: np.ndarray,
    center: np.ndarray,
    run_pose: np.ndarray,
    session_pose: np.ndarray,
    bold_affine: np.ndarray,
    slice_times: np.ndarray,
    physio: dict[str, np.ndarray],
    drift: np.ndarray,
) -> dict[str, Any]:
    """Write one run's truth files; return its ``runs.tsv`` row."""
    from brainharmony.demo.dynamics import DynamicsParams

    times = np.arange(spec.n_volumes) * spec.tr
    write_npy(truth_dir / f"{stem}_desc-neural_timeseries.npy", series.neural)
    write_npy(truth_dir / f"{stem}_desc-bold_timeseries.npy", series.at(times).astype(np.float32))
    hrf_length = DynamicsParams().hrf_length_s
    write_json(
        truth_dir / f"{stem}_desc-timing_truth.json",
        {
            "t0": series.t0_s,
            "dt": series.dt_s,
            "bold_scale": series.scale,
            "hrf": {
                "model": "SPM canonical double gamma: gamma(6,1) - gamma(16,1)/6",
                "normalisation": "unit area (sum(h) * dt == 1)",
                "length_s": hrf_length,
            },
            "RepetitionTime": spec.tr,
            "SliceTiming": [float(t) for t in slice_times],
            "n_volumes": spec.n_volumes,
            "bold_timeseries_times": "v * RepetitionTime (volume onsets)",
            "units": "percent signal change",
        },
    )
    fd = framewise_displacement(params)
    motion = pd.DataFrame(params, columns=list(MOTION_COLUMNS))
    motion["framewise_displacement"] = fd
    write_tsv(truth_dir / f"{stem}_desc-motion_timeseries.tsv", motion, float_format="%.8g")
    write_npy(truth_dir / f"{stem}_desc-motion_xfm.npy", matrices)
    phys = pd.DataFrame({k: np.asarray(v)[:, 0] for k, v in physio.items()})
    phys["drift"] = drift
    write_tsv(truth_dir / f"{stem}_desc-physio_timeseries.tsv", phys, float_format="%.8g")
    stats = {
        "mean_fd": float(fd[1:].mean()),
        "max_fd": float(fd.max()),
        "n_fd_over_0p5": int((fd > 0.5).sum()),
    }
    write_json(
        truth_dir / f"{stem}_desc-bold_truth.json",
        {
            "bold_affine": _mat(bold_affine),
            "bold_pose_mni_to_scanner": _mat(run_pose),
            "session_pose_mni_to_scanner": _mat(session_pose),
            "bold_to_t1w_world": _mat(run_pose @ np.linalg.inv(session_pose)),
            "motion_center": [float(c) for c in center],
            "motion": stats,
        },
    )
    return {"stem": stem, "n_volumes": spec.n_volumes, **stats}


def write_dataset_truth(
    root: Path,
    *,
    spec: DatasetSpec,
    preset: str,
    seed: int,
    models: Models,
    phenotypes: pd.DataFrame,
    runs: pd.DataFrame,
) -> None:
    """Dataset-level truth files (phenotypes, effects, runs, atlas, README)."""
    from brainharmony.demo.anatomy import BOLD_SOURCE_MM

    write_tsv(root / "phenotypes.tsv", phenotypes, float_format="%.6g")
    cols = ["participant_id", "session", "run", "stem", "n_volumes", "motion_level"]
    cols += ["mean_fd", "max_fd", "n_fd_over_0p5"]
    write_tsv(root / "runs.tsv", runs[cols], float_format="%.6g")
    effects = models.effects
    write_json(
        root / "effects.json",
        {
            "effect_sizes": effects.to_dict(),
            "effects": effects.describe(),
            "z_scores": {
                "z_age": "(age - age_mean) / age_sd",
                "z_fi": "(fluid_intelligence - fi_mean) / fi_sd",
                "is_patient": "1 for diagnosis PT, 0 for CN",
                "constants": models.population.to_dict(),
            },
            "model": (
                "symmetric OU/VAR(1) on 400 parcels, coupling W = within-network graph "
                "+ between-network blocks + local coupling; phenotypes act on W; W is "
                "rescaled per subject to a fixed spectral radius"
            ),
            "anatomy": {
                "age": "cortical thinning and ventricle enlargement grow with age",
                "model": models.ageing.to_dict(),
            },
            "confounds": {
                "motion": (
                    "motion class ranked by 0.5*z_age + 0.5*is_patient + N(0,1): older "
                    "participants and patients move more"
                ),
                "fluid_intelligence_age_correlation": models.population.fi_age_corr,
                "sex": "no planted effect",
            },
        },
    )
    write_json(
        root / "generation.json",
        {
            "seed": seed,
            "preset": preset,
            "software": {"name": "brainharmony", "version": __version__},
            "dataset": spec.to_dict(),
            "models": {
                "dynamics": models.dynamics.to_dict(),
                "bold": models.bold.to_dict(),
                "ageing": models.ageing.to_dict(),
                "t1_intensities": models.t1.to_dict(),
                "pose": models.pose.to_dict(),
                "population": models.population.to_dict(),
            },
        },
    )
    write_tsv(root / "atlas_labels.tsv", schaefer400_labels())
    write_json(root / "atlas.json", schaefer400_provenance(float(BOLD_SOURCE_MM)))
    write_text(
        root / "README.md",
        README_TEMPLATE.format(name=spec.name, version=__version__, preset=preset, seed=seed),
    )


def load_run_series(truth_dir: Path, stem: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Rebuild a run's fine-grid BOLD from its stored neural series.

    Returns
    -------
    bold_fine : ndarray of shape (n_fine, 400)
        Percent signal change on the fine grid (``t0 + n * dt``).
    timing : dict
        The run's ``desc-timing_truth.json``.
    """
    import json

    from brainharmony.demo.dynamics import hrf_convolve

    timing = json.loads((truth_dir / f"{stem}_desc-timing_truth.json").read_text())
    neural = np.load(truth_dir / f"{stem}_desc-neural_timeseries.npy")
    fine = hrf_convolve(neural.astype(np.float64), timing["dt"], timing["hrf"]["length_s"])
    return fine * timing["bold_scale"], timing
