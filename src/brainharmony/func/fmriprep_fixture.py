"""fMRIPrep-shaped derivatives for tests of the ``fmriprep`` / ``fmriprep-derivatives`` modes.

Two writers, both producing fMRIPrep's file names, JSON fields and confound columns
(including columns this package does not use, as fMRIPrep's table has them):

* :func:`write_from_native`: from a native-backend run (:class:`~.pipeline.RunResult`):
  its template-grid BOLD, coverage mask and confounds, so derivatives mode can be
  checked against the native result and the demo truth.
* :func:`write_synthetic`: planted parcel signals plus noise on the atlas grid, for
  the stand-in ``fmriprep-docker`` / ``apptainer`` executables of the tests; optionally
  with bright leading non-steady-state volumes flagged as fMRIPrep flags them
  (``non_steady_state_outlierNN``).

Both add fMRIPrep's ``motion_outlierNN`` columns (framewise displacement > 0.5 mm or
``std_dvars`` > 1.5, fMRIPrep's defaults), which the reader replaces by its own censoring.

``python -m brainharmony.func.fmriprep_fixture BIDS_DIR OUT_DIR --participant-label L``
writes synthetic outputs for every BOLD run of one participant (what the stand-ins run).

These files are test fixtures: the images are *named* MNI152NLin2009cAsym but lie on
the atlas' MNI152 2009a grid.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.atlas import schaefer400_volume
from brainharmony.bids_names import parse_name
from brainharmony.func.confounds import build_confounds, outlier_columns
from brainharmony.func.fmriprep import DEFAULT_SPACE
from brainharmony.func.naming import run_folder, run_stem
from brainharmony.io import PathLike, write_json, write_nifti, write_tsv

logger = logging.getLogger(__name__)

#: Columns of fMRIPrep's confounds table that this package does not use (a subset).
EXTRA_COLUMNS: tuple[str, ...] = (
    "rmsd",
    "tcompcor",
    "a_comp_cor_00",
    "a_comp_cor_01",
    "cosine00",
    "cosine01",
)


def _paths(
    root: Path,
    subject: str,
    session: str | None,
    task: str,
    run: str | None,
    space: str,
    res: str | None,
) -> dict[str, Path]:
    folder = run_folder(root, subject, session)
    stem = run_stem(subject, session, task, run)
    sp = f"space-{space}" + (f"_res-{res}" if res else "")
    return {
        "bold": folder / f"{stem}_{sp}_desc-preproc_bold.nii.gz",
        "bold_json": folder / f"{stem}_{sp}_desc-preproc_bold.json",
        "mask": folder / f"{stem}_{sp}_desc-brain_mask.nii.gz",
        "confounds": folder / f"{stem}_desc-confounds_timeseries.tsv",
        "confounds_json": folder / f"{stem}_desc-confounds_timeseries.json",
    }


def _description(root: Path) -> None:
    path = root / "dataset_description.json"
    if not path.exists():
        write_json(
            path,
            {
                "Name": "fMRIPrep - fMRI PREProcessing workflow (test fixture)",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "fMRIPrep", "Version": "fixture"}],
            },
        )


def _with_extras(table: pd.DataFrame, rng: np.random.Generator, n_dummies: int = 0) -> pd.DataFrame:
    """fMRIPrep's further columns: unused ones, non-steady-state and motion outliers."""

    out = table.copy()
    n = len(out)
    for col in EXTRA_COLUMNS:
        if col.startswith("cosine"):
            k = int(col[-2:]) + 1
            out[col] = np.sqrt(2.0 / n) * np.cos(np.pi * (np.arange(n) + 0.5) * k / n)
        else:
            out[col] = rng.standard_normal(n) * 0.01
    dummies = np.arange(n) < n_dummies
    outliers = np.nan_to_num(out["framewise_displacement"].to_numpy(float)) > 0.5
    if "std_dvars" in out.columns:
        outliers |= np.nan_to_num(out["std_dvars"].to_numpy(float)) > 1.5
    parts = [out, outlier_columns(dummies, "non_steady_state_outlier")]
    parts.append(outlier_columns(outliers, "motion_outlier"))
    return pd.concat([p.set_index(out.index) for p in parts], axis=1)


def _write(
    paths: dict[str, Path],
    bold: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    confounds: pd.DataFrame,
    t_r: float,
    start_time: float,
) -> list[Path]:
    import nibabel as nib

    img = nib.Nifti1Image(bold.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = t_r
    written = [write_nifti(paths["bold"], img)]
    written.append(
        write_json(
            paths["bold_json"],
            {
                "RepetitionTime": float(t_r),
                "StartTime": float(start_time),
                "SkullStripped": False,
                "SliceTimingCorrected": True,
                "TaskName": "rest",
            },
        )
    )
    m = nib.Nifti1Image(mask.astype(np.uint8), affine)
    m.header.set_data_dtype(np.uint8)
    written.append(write_nifti(paths["mask"], m))
    written.append(write_tsv(paths["confounds"], confounds, float_format="%.8g"))
    written.append(
        write_json(
            paths["confounds_json"],
            {c: {"Method": "fixture"} for c in confounds.columns},
        )
    )
    return written


def write_from_native(
    result: Any,
    root: PathLike,
    subject: str,
    session: str | None,
    task: str = "rest",
    run: str | None = None,
    *,
    space: str = DEFAULT_SPACE,
    res: str | None = "2",
    seed: int = 0,
) -> dict[str, Path]:
    """fMRIPrep-shaped files from a native run's in-memory result.

    Parameters
    ----------
    result : RunResult
        :func:`brainharmony.func.pipeline.preprocess_run` output.
    root : path-like
        fMRIPrep output folder (derivatives root).
    subject, session, task, run : str
    space, res : str
        Entities of the file names.
    seed : int
        Seed of the unused extra confound columns.

    Returns
    -------
    dict of str to Path
    """
    root = Path(root)
    paths = _paths(root, subject, session, task, run, space, res)
    n_vol = result.samples.shape[1]
    bold = np.zeros((*result.grid_shape, n_vol), dtype=np.float32)
    bold[tuple(result.points.T)] = result.samples
    mask = np.zeros(result.grid_shape, dtype=bool)
    mask[tuple(result.points[result.coverage].T)] = True
    table = _with_extras(result.confounds, np.random.default_rng(seed))
    _description(root)
    _write(paths, bold, mask, result.grid_affine, table, result.t_r, result.start_time)
    return paths


def write_synthetic(
    root: PathLike,
    subject: str,
    session: str | None,
    task: str,
    run: str | None,
    *,
    n_volumes: int,
    t_r: float,
    resolution_mm: float = 6.0,
    space: str = DEFAULT_SPACE,
    res: str | None = "2",
    seed: int = 0,
    atlas_cache: PathLike | None = None,
    n_dummies: int = 0,
) -> dict[str, Path]:
    """Synthetic fMRIPrep outputs: smooth parcel signals plus noise on the atlas grid.

    ``atlas_cache`` is a folder for :func:`brainharmony.atlas.schaefer400_volume`'s file
    cache (saves rebuilding the atlas in every process). The first ``n_dummies``
    volumes are non-steady-state: brighter (by 50 %, 25 %, ... of the signal, as before
    T1 saturation settles) and flagged by ``non_steady_state_outlierNN`` columns.

    Returns
    -------
    dict of str to Path
        The written files (``bold``, ``mask``, ``confounds``...).
    """

    rng = np.random.default_rng(seed)
    atlas, _ = schaefer400_volume(float(resolution_mm), cache_dir=atlas_cache)
    labels = np.asarray(atlas.dataobj).astype(np.int64)
    n = int(n_volumes)
    signals = np.cumsum(rng.standard_normal((n, 401)), axis=0)
    signals -= signals.mean(axis=0)
    signals /= signals.std(axis=0) + 1e-9
    signals[:, 0] = 0.0
    bold = 1000.0 + 10.0 * signals[:, labels].transpose(1, 2, 3, 0)
    bold += rng.standard_normal(bold.shape) * 2.0
    bold[labels == 0] *= 0.5
    if not 0 <= int(n_dummies) < n:
        raise ValueError(f"n_dummies must be in [0, {n}), got {n_dummies!r}")
    bold[..., : int(n_dummies)] *= 1.0 + 0.5 ** np.arange(1, int(n_dummies) + 1)
    params = np.cumsum(rng.standard_normal((n, 6)) * [0.02, 0.02, 0.02, 3e-4, 3e-4, 3e-4], 0)
    tissue = {
        "global_signal": bold.reshape(-1, n).mean(axis=0),
        "csf": 1000 + rng.standard_normal(n),
        "white_matter": 900 + rng.standard_normal(n),
    }
    table = _with_extras(build_confounds(params, tissue), rng, int(n_dummies))
    root = Path(root)
    paths = _paths(root, subject, session, task, run, space, res)
    _description(root)
    _write(paths, bold, labels > 0, atlas.affine, table, t_r, t_r / 2)
    return paths


def bids_runs(bids_dir: PathLike, participant: str) -> list[dict[str, Any]]:
    """BOLD runs of one participant in a raw BIDS folder (entities, volumes, TR)."""
    import nibabel as nib

    runs = []
    for path in sorted(Path(bids_dir).glob(f"sub-{participant}/**/func/*_bold.nii*")):
        ent = parse_name(path.name).entities
        sidecar = path.with_name(path.name.split(".nii")[0] + ".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        top = Path(bids_dir) / f"task-{ent.get('task', 'rest')}_bold.json"
        if "RepetitionTime" not in meta and top.exists():
            meta = {**json.loads(top.read_text()), **meta}
        runs.append(
            {
                "subject": ent["sub"],
                "session": ent.get("ses"),
                "task": ent.get("task", "rest"),
                "run": ent.get("run"),
                "n_volumes": int(nib.load(path).shape[3]),
                "t_r": float(meta.get("RepetitionTime", 2.0)),
            }
        )
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Write synthetic fMRIPrep outputs for one participant (used by test stand-ins)."""
    parser = argparse.ArgumentParser(prog="python -m brainharmony.func.fmriprep_fixture")
    parser.add_argument("bids_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--participant-label", required=True)
    parser.add_argument("--res", default="2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atlas-cache", default=None, help="atlas file-cache folder")
    parser.add_argument(
        "--dummies", type=int, default=0, help="leading non-steady-state volumes per run"
    )
    args = parser.parse_args(argv)
    runs = bids_runs(args.bids_dir, args.participant_label)
    if not runs:
        parser.error(f"no BOLD runs for sub-{args.participant_label} in {args.bids_dir}")
    for i, r in enumerate(runs):
        write_synthetic(
            args.out_dir,
            r["subject"],
            r["session"],
            r["task"],
            r["run"],
            n_volumes=r["n_volumes"],
            t_r=r["t_r"],
            res=args.res,
            seed=args.seed + i,
            atlas_cache=args.atlas_cache,
            n_dummies=args.dummies,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
