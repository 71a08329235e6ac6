"""Generate the demo BIDS datasets and their ground truth.

Each dataset ``<name>`` is written to a temporary sibling folder and moved into place
with :func:`os.replace` only when complete (``dataset_description.json`` is its last
file), so an interrupted generation never leaves a half dataset under the final name.
Every random draw comes from a seed sequence keyed by (seed, dataset, subject,
purpose), so the bytes do not depend on the number of worker processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.atlas import schaefer400_volume
from brainharmony.demo import anatomy, bold, dynamics, motion, truth
from brainharmony.demo import bids as bidsmeta
from brainharmony.demo.acquisition import (
    DatasetSpec,
    oriented_affine,
    presets,
    rotation_matrix,
    slice_timing,
)
from brainharmony.demo.modelset import Models
from brainharmony.demo.phenotypes import sample_phenotypes
from brainharmony.io import write_json, write_nifti, write_text, write_tsv

logger = logging.getLogger(__name__)

DEFAULT_SEED = 20251122
PRESETS = ("tiny", "default")
#: MNI point the operator centres the T1w and BOLD fields of view on.
T1_FOV_CENTER_MNI = np.array([0.0, -15.0, 5.0])
BOLD_FOV_CENTER_MNI = np.array([0.0, -18.0, 8.0])


def _rng(seed: int, dataset: str, *key: int) -> np.random.Generator:
    code = zlib.crc32(dataset.encode()) & 0x7FFFFFFF
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code, *key)))


# Purposes of the per-subject random streams.
_ANAT, _POSE, _DYN, _BOLD_SRC = 1, 2, 3, 4
_SESSION_BASE, _RUN_BASE = 100, 1000


@dataclass(frozen=True)
class SubjectPlan:
    """What to acquire for one subject."""

    index: int
    label: str
    sessions: tuple[str | None, ...]
    runs: tuple[int | None, ...]
    motion_level: str


def plan_dataset(
    spec: DatasetSpec, seed: int, models: Models
) -> tuple[pd.DataFrame, list[SubjectPlan]]:
    """Phenotypes (true and withheld) and the acquisition plan of every subject.

    Returns
    -------
    phenotypes : pandas.DataFrame
        One row per subject: ``participant_id``, the true phenotypes, their z-scores,
        ``withheld_<column>`` flags (shown as 'n/a' in ``participants.tsv``),
        ``motion_level``, ``n_sessions``, ``n_runs``.
    plans : list of SubjectPlan
    """
    rng = _rng(seed, spec.name, 0)
    n = spec.n_subjects
    table = sample_phenotypes(n, rng, models.population)
    width = 3 if n > 99 else 2
    labels = [f"{i + 1:0{width}d}" for i in range(n)]
    table.insert(0, "participant_id", [f"sub-{lab}" for lab in labels])

    # Motion: older participants and patients move more (a realistic confound).
    n_high = max(1, round(0.2 * n))
    n_clean = max(1, round(0.4 * n))
    propensity = 0.5 * table["z_age"] + 0.5 * table["is_patient"] + rng.standard_normal(n)
    order = np.argsort(-propensity.to_numpy(), kind="stable")
    level = np.full(n, "moderate", dtype=object)
    level[order[:n_high]] = "high"
    level[order[n - n_clean :]] = "clean"
    table["motion_level"] = level

    def pick(fraction: float) -> np.ndarray:
        chosen = np.zeros(n, dtype=bool)
        if fraction > 0:
            k = max(1, round(fraction * n))
            chosen[rng.choice(n, size=k, replace=False)] = True
        return chosen

    second_session = pick(spec.second_session_fraction)
    second_run = pick(spec.second_run_fraction)
    table["n_sessions"] = np.where(second_session, 2, 1)
    table["n_runs"] = np.where(second_run, 2, 1)

    # Values withheld in participants.tsv (as real archives have gaps).
    for column in ("age", "sex", "fluid_intelligence", "diagnosis"):
        table[f"withheld_{column}"] = False
    if n >= 3:
        k = max(1, round(0.06 * n))
        table.loc[rng.choice(n, size=k, replace=False), "withheld_fluid_intelligence"] = True
    if n >= 20:
        table.loc[int(rng.integers(n)), "withheld_sex"] = True
    if n >= 25:
        table.loc[int(rng.integers(n)), "withheld_age"] = True

    plans = []
    for i, lab in enumerate(labels):
        sessions: tuple[str | None, ...] = (None,)
        if spec.uses_sessions:
            sessions = ("1", "2") if second_session[i] else ("1",)
        runs: tuple[int | None, ...] = (None,)
        if spec.uses_runs:
            runs = (1, 2) if second_run[i] else (1,)
        plans.append(SubjectPlan(i, lab, sessions, runs, str(level[i])))
    return table, plans


def _save_nifti(path: Path, image: Any) -> None:
    """:func:`brainharmony.io.write_nifti` with fast gzip (level 1, Huffman coding only).

    Level 1 compresses these noisy int16 images to within 2 % of level 6's size at
    about four times the speed; Huffman-only coding halves the time again and is as
    small for the BOLD series (3 % larger for the T1w images).
    """
    write_nifti(path, image, compresslevel=1, huffman_only=True)


def _pitch(pose: np.ndarray) -> float:
    r = pose[:3, :3]
    return float(np.arctan2(r[2, 1], r[2, 2]))


def _simulate_subject(
    spec: DatasetSpec,
    seed: int,
    models: Models,
    row: dict[str, Any],
    plan: SubjectPlan,
    bids_root: Path,
    truth_root: Path,
) -> dict[str, Any]:
    """Simulate and write every session and run of one subject.

    Returns
    -------
    dict
        ``runs``: one ``runs.tsv`` row per run; ``anatomy``: atrophy summary.
    """
    key = (plan.index,)
    anat = anatomy.subject_anatomy(row["age"], _rng(seed, spec.name, *key, _ANAT), models.ageing)
    t1_src = anatomy.t1_sources(anat, models.t1)
    source = bold.bold_source(
        anatomy.bold_tissues(anat), _rng(seed, spec.name, *key, _BOLD_SRC), models.bold
    )
    w = dynamics.coupling_matrix(
        row["z_age"],
        row["z_fi"],
        int(row["is_patient"]),
        _rng(seed, spec.name, *key, _DYN),
        models.dynamics,
        models.effects,
    )
    anat_summary = anat.summary()
    del anat
    rows = []
    for s_idx, session in enumerate(plan.sessions):
        rng = _rng(seed, spec.name, *key, _SESSION_BASE + s_idx)
        pose = motion.sample_pose(rng, models.pose)
        _acquire_t1(spec, plan, session, pose, t1_src, anat_summary, rng, bids_root, truth_root)
        for r_idx, run in enumerate(plan.runs):
            rrng = _rng(seed, spec.name, *key, _RUN_BASE + 10 * s_idx + r_idx)
            run_pose = pose if r_idx == 0 else motion.small_reposition(rrng) @ pose
            rows.append(
                _acquire_run(
                    spec,
                    models,
                    plan,
                    session,
                    run,
                    session_pose=pose,
                    run_pose=run_pose,
                    source=source,
                    w=w,
                    rng=rrng,
                    bids_root=bids_root,
                    truth_root=truth_root,
                )
            )
    return {"runs": rows, "anatomy": anat_summary}


def _acquire_t1(
    spec: DatasetSpec,
    plan: SubjectPlan,
    session: str | None,
    pose: np.ndarray,
    t1_src: tuple[np.ndarray, np.ndarray],
    anat_summary: dict[str, float],
    rng: np.random.Generator,
    bids_root: Path,
    truth_root: Path,
) -> None:
    """Write one session's T1w (+ sidecar) and its anatomy truth record."""
    center = pose[:3, :3] @ T1_FOV_CENTER_MNI + pose[:3, 3] + rng.uniform(-5, 5, 3)
    affine = oriented_affine(spec.t1_orientation, spec.t1_voxel_mm, spec.t1_shape, center)
    t1 = anatomy.render_t1(t1_src, pose, affine, spec.t1_shape, rng)
    sub_dir = bidsmeta.subject_dir(bids_root, plan.label, session)
    ent = bidsmeta.entities(plan.label, session)
    _save_nifti(sub_dir / "anat" / f"{ent}_T1w.nii.gz", bidsmeta.nifti_image(t1, affine))
    write_json(sub_dir / "anat" / f"{ent}_T1w.json", bidsmeta.t1_sidecar(spec))
    write_json(
        bidsmeta.subject_dir(truth_root, plan.label, session) / f"{ent}_desc-anat_truth.json",
        truth.anat_record(pose, affine, anat_summary),
    )


def _acquire_run(
    spec: DatasetSpec,
    models: Models,
    plan: SubjectPlan,
    session: str | None,
    run: int | None,
    *,
    session_pose: np.ndarray,
    run_pose: np.ndarray,
    source: bold.BoldSource,
    w: np.ndarray,
    rng: np.random.Generator,
    bids_root: Path,
    truth_root: Path,
) -> dict[str, Any]:
    """Simulate and write one BOLD run (+ sidecar) and its truth; return its runs.tsv row."""
    bm = models.bold
    slice_times = slice_timing(spec.bold_shape[2], spec.tr, spec.multiband, spec.slice_order)
    offsets, slice_group = np.unique(slice_times, return_inverse=True)
    center = (
        session_pose[:3, :3] @ BOLD_FOV_CENTER_MNI + session_pose[:3, 3] + rng.uniform(-3, 3, 3)
    )
    tilt = rotation_matrix(_pitch(session_pose), 0.0, 0.0) if spec.oblique else None
    affine = oriented_affine(
        spec.bold_orientation, spec.bold_voxel_mm, spec.bold_shape, center, tilt
    )
    params = motion.simulate_motion(spec.n_volumes, spec.tr, plan.motion_level, rng)
    mats = motion.motion_matrices(params, center)
    to_source = (
        np.linalg.inv(source.affine) @ np.linalg.inv(run_pose) @ np.linalg.inv(mats) @ affine
    )
    duration = spec.n_volumes * spec.tr + 1.0
    series = dynamics.simulate_run(w, duration, rng, models.dynamics)
    # Acquisition time of every (volume, distinct slice offset).
    times = np.arange(spec.n_volumes)[:, None] * spec.tr + offsets[None, :]
    table = bold.label_table(series.at(times))
    signals = bold.simulate_physiology(duration, rng).evaluate(times)
    scalars, drift = bold.tissue_scalars(bm, signals, times / duration, rng)
    clean = bold.render_volumes(source, to_source, spec.bold_shape, slice_group, table, scalars)
    fd = motion.framewise_displacement(params)
    clean *= bold.spin_history(fd, spec.bold_shape[2], bm.spin_history)[:, None, None, :]
    clean *= bold.coil_profile(affine, spec.bold_shape, rng, bm.coil_sd)[None]
    data = bold.add_noise(clean, rng, bm, voxel_mm=spec.bold_voxel_mm, tr=spec.tr)
    del clean
    stem = bidsmeta.bold_stem(plan.label, session, run)
    func_dir = bidsmeta.subject_dir(bids_root, plan.label, session) / "func"
    _save_nifti(func_dir / f"{stem}_bold.nii.gz", bidsmeta.nifti_image(data, affine, tr=spec.tr))
    write_json(func_dir / f"{stem}_bold.json", bidsmeta.bold_sidecar(spec, slice_times))
    del data
    row = truth.write_run(
        bidsmeta.subject_dir(truth_root, plan.label, session),
        stem,
        spec=spec,
        series=series,
        params=params,
        matrices=mats,
        center=center,
        run_pose=run_pose,
        session_pose=session_pose,
        bold_affine=affine,
        slice_times=slice_times,
        physio=signals,
        drift=drift[:, 0],
    )
    row.update(
        {
            "participant_id": f"sub-{plan.label}",
            "session": session if session is not None else "n/a",
            "run": run if run is not None else "n/a",
            "motion_level": plan.motion_level,
        }
    )
    return row


_WORKER_STATE: dict[str, Any] = {}


def _worker(index: int) -> dict[str, Any]:
    state = _WORKER_STATE
    with dynamics.single_thread_blas():
        return _simulate_subject(
            state["spec"],
            state["seed"],
            state["models"],
            state["rows"][index],
            state["plans"][index],
            state["bids"],
            state["truth"],
        )


def _warm_up() -> None:
    """Build the shared models before forking so the workers inherit them."""

    anatomy.head_model()
    schaefer400_volume(float(anatomy.BOLD_SOURCE_MM))
    dynamics.roi_geometry()


def _generate_dataset(
    out_dir: Path,
    spec: DatasetSpec,
    seed: int,
    preset: str,
    models: Models,
    n_jobs: int,
    max_subjects: int | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    for stale in [*out_dir.glob(f".{spec.name}.*.tmp"), *out_dir.glob(f".{spec.name}-truth.*.tmp")]:
        logger.info("removing %s left by an interrupted generation", stale)
        shutil.rmtree(stale, ignore_errors=True)
    phenotypes, plans = plan_dataset(spec, seed, models)
    if max_subjects is not None:
        plans = plans[:max_subjects]
        phenotypes = phenotypes.iloc[:max_subjects].reset_index(drop=True)
    bids_tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=out_dir))
    truth_tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-truth.", suffix=".tmp", dir=out_dir))
    try:
        for tmp in (bids_tmp, truth_tmp):
            os.chmod(tmp, 0o755)
        rows = phenotypes.to_dict(orient="records")
        _WORKER_STATE.update(
            spec=spec,
            seed=seed,
            models=models,
            rows=rows,
            plans=plans,
            bids=bids_tmp,
            truth=truth_tmp,
        )
        indices = list(range(len(plans)))
        if n_jobs > 1 and len(plans) > 1 and "fork" in _start_methods():
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
                results = list(pool.map(_worker, indices))
        else:
            results = [_worker(i) for i in indices]
        run_rows = [r for sub in results for r in sub["runs"]]
        anat_table = pd.DataFrame([sub["anatomy"] for sub in results])
        phenotypes = pd.concat([phenotypes, anat_table], axis=1)
        n_runs = len(run_rows)
        write_tsv(bids_tmp / "participants.tsv", bidsmeta.participants_table(phenotypes))
        write_json(bids_tmp / "participants.json", bidsmeta.participants_sidecar())
        write_json(bids_tmp / "task-rest_bold.json", bidsmeta.task_sidecar(spec))
        write_text(bids_tmp / "README", bidsmeta.readme(spec, preset, seed, n_runs))
        truth.write_dataset_truth(
            truth_tmp,
            spec=spec,
            preset=preset,
            seed=seed,
            models=models,
            phenotypes=phenotypes,
            runs=pd.DataFrame(run_rows),
        )
        write_json(
            bids_tmp / "dataset_description.json",
            bidsmeta.dataset_description(spec, preset, seed),
        )
        final_bids = out_dir / spec.name
        final_truth = out_dir / f"{spec.name}-truth"
        for final in (final_bids, final_truth):
            if final.exists():
                shutil.rmtree(final)
        os.replace(truth_tmp, final_truth)
        os.replace(bids_tmp, final_bids)
    except BaseException:
        for tmp in (bids_tmp, truth_tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _WORKER_STATE.clear()
    elapsed = time.perf_counter() - start
    logger.info("%s: %d subjects, %d runs in %.1f s", spec.name, len(plans), n_runs, elapsed)
    return {
        "bids_dir": str(final_bids),
        "truth_dir": str(final_truth),
        "n_subjects": len(plans),
        "n_runs": n_runs,
        "tr": spec.tr,
        "seconds": round(elapsed, 2),
    }


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def generate_demo(
    out_dir: str | os.PathLike[str],
    preset: str = "default",
    seed: int = DEFAULT_SEED,
    *,
    datasets: Sequence[str] | None = None,
    n_jobs: int | None = None,
    max_subjects: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Write the demo BIDS datasets and their truth under ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Created if needed. Gets ``<name>/`` (raw BIDS) and ``<name>-truth/`` per dataset.
    preset : {"tiny", "default"}
        ``tiny``: demoA and demoB, a few subjects, coarse voxels (for tests);
        ``default``: demoA, demoB, demoC, about 100 subjects (the main job).
    seed : int
        Same seed, same bytes.
    datasets : sequence of str, optional
        Subset of the preset's dataset names (each one's data do not depend on the
        others).
    n_jobs : int, optional
        Worker processes (default: CPU count, at most 4). Output does not depend on it.
    max_subjects : int, optional
        Keep only the first subjects of each dataset (for quick checks). Their files
        are byte-identical to those of the full dataset.

    Returns
    -------
    dict
        Per dataset name: ``bids_dir``, ``truth_dir``, ``n_subjects``, ``n_runs``,
        ``tr``, ``seconds``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    specs = presets()[preset]
    names = [s.name for s in specs]
    if datasets is not None:
        unknown = sorted(set(datasets) - set(names))
        if unknown:
            raise ValueError(f"datasets {unknown} are not in preset {preset!r} (allowed: {names})")
        specs = tuple(s for s in specs if s.name in set(datasets))
    if n_jobs is None:
        n_jobs = min(os.cpu_count() or 1, 4)
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    if max_subjects is not None and max_subjects < 1:
        raise ValueError(f"max_subjects must be >= 1, got {max_subjects}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = Models()
    _warm_up()
    summary = {}
    for spec in specs:
        summary[spec.name] = _generate_dataset(
            out, spec, int(seed), preset, models, n_jobs, max_subjects
        )
    return summary
