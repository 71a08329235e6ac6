"""The native functional pipeline against the tiny demo's planted truth.

Checks (issue 4 acceptance, on the ``tiny`` preset):

* head motion recovered within 0.1 mm / 0.1 deg (median absolute error, per run);
* denoised parcel series (default strategy ``18P``) correlate with the
  planted HRF-convolved parcel BOLD at median r >= 0.9 on clean and moderate-motion
  runs, and above a measured floor on high-motion runs after censoring; the series
  without denoising correlate clearly less;
* fMRIPrep-derivatives mode on fMRIPrep-shaped files written from the native run
  gives the native result.

The reference for the denoised series is the planted BOLD passed through *the same
linear denoising operator* as the data (same censored frames, same confound
regression with the betas fitted on the run's own confounds, same band-pass): the
correlation then measures how much of what remains is the planted signal. The
planted BOLD band-passed and censored only (no confound regression) is printed
beside it; it is lower because the regression also removes part of the planted
signal (the global signal and slow motion regressors overlap it on runs of a few
minutes). See docs/func.md, "What the demo allows".

Run as a script on a generated preset, this module prints that section's table for
every run: ``python tests/unit/func/test_demo_data.py DIR`` after
``brainharmony demo --out DIR --preset tiny --seed 7``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

DEFAULT_STRATEGY = "18P"
#: (dataset, motion class): the first such run in the truth's runs.tsv. demoA: TR 0.735 s,
#: 5 mm, LAS-stored; demoB: TR 2.0 s, 6 mm, LPS-stored, sessions.
RUNS = [(ds, level) for ds in ("demoA", "demoB") for level in ("clean", "moderate", "high")]
#: The fMRIPrep-derivatives comparison runs on two of them.
DERIVATIVE_RUNS = [("demoA", "high"), ("demoB", "clean")]
#: Least median r (denoised vs planted through the same operator), default strategy.
#: 0.9 is the issue's requirement; the high-motion floor is the worst case measured on
#: this preset over seeds 7, 1, 2 and the tests' seed (0.83), less a margin.
FLOOR = {"clean": 0.9, "moderate": 0.9, "high": 0.8}
#: Without denoising (raw parcel means against the unfiltered truth) r is lower by at
#: least this much (measured: 0.25 or more).
DENOISING_GAIN = 0.2
#: Strategies and orders of the docs table (script mode).
TABLE_COLUMNS = (
    ("2P", "regress-filter"),
    ("3P", "regress-filter"),
    (DEFAULT_STRATEGY, "regress-filter"),
    ("24P+WM+CSF+GS", "regress-filter"),
    ("36P", "regress-filter"),
    (DEFAULT_STRATEGY, "filter-regress"),
)

_CACHE: dict[tuple[str, str, str], dict] = {}


def _median_r(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.all(np.isfinite(a), 0) & np.all(np.isfinite(b), 0)
    a = a[:, ok] - a[:, ok].mean(0)
    b = b[:, ok] - b[:, ok].mean(0)
    return float(np.median((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))


def _preprocess(demo: Path, dataset: str, sub: str, ses: str | None, atlas_image: Any) -> dict:
    """Native preprocessing of one demo run, with the truth's head pose as the anatomy."""
    from brainharmony.func.pipeline import (
        NativeSettings,
        RunInputs,
        bold_metadata,
        preprocess_run,
    )

    rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "")
    prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
    stem = f"{prefix}_task-rest"
    truth = demo / f"{dataset}-truth" / rel
    pose = np.array(
        json.loads((truth / f"{prefix}_desc-anat_truth.json").read_text())[
            "head_pose_mni_to_scanner"
        ]
    )
    bold = demo / dataset / rel / "func" / f"{stem}_bold.nii.gz"
    meta = bold_metadata(bold)
    inputs = RunInputs(
        bold=bold,
        t_r=meta["RepetitionTime"],
        metadata=meta,
        t1w_to_template=np.linalg.inv(pose),  # the anatomy stage's job, from the truth
        t1w=demo / dataset / rel / "anat" / f"{prefix}_T1w.nii.gz",
    )
    # The demo's T1w and BOLD share the scanner world exactly and no anatomy-stage brain
    # mask is at hand here: the header is the truth (registration: test_func_register).
    result = preprocess_run(inputs, atlas_image, NativeSettings(coreg="header"))
    return {"result": result, "truth": truth, "stem": stem, "prefix": prefix}


def _motion_errors(run: dict) -> tuple[float, float]:
    """Median absolute error of the translations (mm) and rotations (deg)."""
    from brainharmony.func.motion import matrices_to_params

    res, truth, stem = run["result"], run["truth"], run["stem"]
    planted = np.load(truth / f"{stem}_desc-motion_xfm.npy")
    center = np.array(
        json.loads((truth / f"{stem}_desc-bold_truth.json").read_text())["motion_center"]
    )
    # Ours are relative to the boldref; the truth to volume 0: re-reference ours.
    rel = res.matrices @ np.linalg.inv(res.matrices[0])
    err = np.abs(matrices_to_params(rel, center) - matrices_to_params(planted, center))
    return float(np.median(err[:, :3])), float(np.degrees(np.median(err[:, 3:])))


def _planted(run: dict) -> np.ndarray:
    """The planted parcel BOLD at each volume's reference time (StartTime)."""
    from brainharmony.demo.dynamics import sample_at
    from brainharmony.demo.truth import load_run_series

    res = run["result"]
    fine, timing = load_run_series(run["truth"], run["stem"])
    times = np.arange(res.raw_series.shape[0]) * res.t_r + res.start_time
    return sample_at(fine, timing["t0"], timing["dt"], times)


def _correlations(
    run: dict, columns: Sequence[tuple[str, str]] = ((DEFAULT_STRATEGY, "regress-filter"),)
) -> dict[str, Any]:
    """Median parcel correlations of one run with its planted BOLD.

    Returns
    -------
    dict
        ``raw`` (no denoising vs the unfiltered truth), ``bandpass`` (censoring and
        band-pass only vs the band-passed truth) and, per ``(strategy, order)``, the pair
        (a) vs the planted BOLD censored and band-passed, (b) vs the planted BOLD through
        the same operator.
    """
    from brainharmony.func.denoise import DenoiseSettings, confound_matrix, denoise

    res = run["result"]
    planted = _planted(run)
    keep = res.keep
    none = DenoiseSettings(strategy="none")
    band = denoise(planted, res.t_r, keep=keep, settings=none).denoised
    bandpass_only = denoise(res.raw_series, res.t_r, keep=keep, settings=none).denoised
    out: dict[str, Any] = {
        "raw": _median_r(res.raw_series, planted),
        "bandpass": _median_r(bandpass_only[keep], band[keep]),
    }
    for strategy, order in columns:
        conf, _ = confound_matrix(res.confounds, strategy)
        settings = DenoiseSettings(strategy=strategy, order=order)
        data = denoise(res.raw_series, res.t_r, confounds=conf, keep=keep, settings=settings)
        same = denoise(planted, res.t_r, confounds=conf, keep=keep, settings=settings)
        out[(strategy, order)] = (
            _median_r(data.denoised[keep], band[keep]),
            _median_r(data.denoised[keep], same.denoised[keep]),
        )
    return out


@pytest.fixture(scope="module")
def atlas3():
    from brainharmony.atlas import schaefer400_volume

    return schaefer400_volume(3.0)


def _pick(tiny_demo: Path, dataset: str, level: str) -> tuple[str, str | None]:
    import pandas as pd

    runs = pd.read_csv(
        tiny_demo / f"{dataset}-truth" / "runs.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    row = runs[runs["motion_level"] == level].iloc[0]
    session = None if row["session"] == "n/a" else row["session"]
    return row["participant_id"].removeprefix("sub-"), session


def _run(tiny_demo: Path, atlas3, dataset: str, level: str) -> dict:
    """Preprocess the first ``level`` run of ``dataset`` once per test module."""
    key = (str(tiny_demo), dataset, level)
    if key not in _CACHE:
        sub, ses = _pick(tiny_demo, dataset, level)
        run = _preprocess(tiny_demo, dataset, sub, ses, atlas3[0])
        if (dataset, level) not in DERIVATIVE_RUNS:  # the 4-D samples are only needed there
            run["result"] = dataclasses.replace(
                run["result"], samples=np.zeros((0, 0), dtype=np.float32)
            )
        run.update(level=level, id=f"{dataset}/{run['stem']} ({level})")
        _CACHE[key] = run
    return _CACHE[key]


@pytest.fixture(scope="module", params=RUNS, ids=lambda r: f"{r[0]}-{r[1]}")
def demo_run(request, tiny_demo, atlas3):
    return _run(tiny_demo, atlas3, *request.param)


@pytest.fixture(scope="module", params=DERIVATIVE_RUNS, ids=lambda r: f"{r[0]}-{r[1]}")
def derivative_run(request, tiny_demo, atlas3):
    return _run(tiny_demo, atlas3, *request.param)


def test_motion_recovered_within_a_tenth(demo_run):
    res, truth, stem = demo_run["result"], demo_run["truth"], demo_run["stem"]
    center = np.array(
        json.loads((truth / f"{stem}_desc-bold_truth.json").read_text())["motion_center"]
    )
    np.testing.assert_allclose(res.motion_center, center, atol=1e-3)
    trans_mm, rot_deg = _motion_errors(demo_run)
    assert trans_mm < 0.1, demo_run["id"]
    assert rot_deg < 0.1, demo_run["id"]


def test_denoised_series_track_the_planted_bold(demo_run):
    from brainharmony.func.denoise import confound_matrix, denoise
    from brainharmony.func.pipeline import NativeSettings

    res = demo_run["result"]
    settings = NativeSettings().denoise
    assert settings.strategy == DEFAULT_STRATEGY  # the default this test is about
    assert settings.order == "regress-filter"
    keep = res.keep
    r = _correlations(demo_run)
    r_band, r_same = r[(DEFAULT_STRATEGY, "regress-filter")]
    # The pipeline's own output (percent scaling does not change r) against the planted
    # BOLD through the same operator: the same number as recomputed above.
    conf, _ = confound_matrix(res.confounds, settings.strategy)
    same = denoise(_planted(demo_run), res.t_r, confounds=conf, keep=keep, settings=settings)
    r_own = _median_r(res.denoised[keep], same.denoised[keep])
    assert r_own == pytest.approx(r_same, abs=1e-6), demo_run["id"]
    print(
        f"{demo_run['id']}: median r, {DEFAULT_STRATEGY}: (b) {r_own:.3f} vs planted through "
        f"the same operator, (a) {r_band:.3f} vs planted band-passed; band-pass only "
        f"{r['bandpass']:.3f}; raw (no denoising) {r['raw']:.3f}; kept {int(keep.sum())}/"
        f"{keep.size}"
    )
    assert r_own >= FLOOR[demo_run["level"]], demo_run["id"]
    assert r_own > r["raw"] + DENOISING_GAIN, demo_run["id"]
    # NaN where censored, finite elsewhere (parcels with data).
    assert np.isfinite(res.denoised[keep][:, np.isfinite(res.raw_series).all(0)]).all()
    assert np.isnan(res.denoised[~keep]).all()


def test_derivatives_mode_reproduces_the_native_result(derivative_run, atlas3, tmp_path):
    from brainharmony.func.fmriprep import find_run_files, process_derivatives
    from brainharmony.func.fmriprep_fixture import write_from_native
    from brainharmony.func.pipeline import NativeSettings

    res = derivative_run["result"]
    stem = derivative_run["stem"]
    sub = stem.split("_")[0].removeprefix("sub-")
    ses = stem.split("_")[1].removeprefix("ses-") if "_ses-" in stem else None
    write_from_native(res, tmp_path / "fmriprep", sub, ses)
    files = find_run_files(tmp_path / "fmriprep", sub, ses, "rest", None)
    assert files.mask is not None and files.bold_sidecar is not None
    out = process_derivatives(files, atlas3[0], denoise_settings=NativeSettings().denoise)
    np.testing.assert_array_equal(out.keep, res.keep)
    both = np.isfinite(res.denoised) & np.isfinite(out.denoised)
    assert both.sum() > 0.9 * np.isfinite(res.denoised).sum()
    np.testing.assert_allclose(out.denoised[both], res.denoised[both], atol=1e-3)
    # A threshold no frame passes: the run is excluded (reason, no frames), not refused.
    import dataclasses

    strict = dataclasses.replace(NativeSettings().denoise, fd_threshold=1e-6)
    out = process_derivatives(files, atlas3[0], denoise_settings=strict)
    assert "frames remain after censoring" in out.excluded
    assert out.denoised.shape == (0, res.denoised.shape[1])
    assert out.raw_series.shape == res.raw_series.shape


def _table(demo: Path) -> None:
    """Print the docs/func.md table for every run of a generated demo preset."""
    import pandas as pd

    from brainharmony.atlas import schaefer400_volume

    atlas_image = schaefer400_volume(3.0)[0]
    names = [f"{s}, {o}" if o != "regress-filter" else s for s, o in TABLE_COLUMNS]
    print(
        "| run (motion) | kept | trans err (mm) | rot err (deg) | raw | band-pass only (a) | "
        + " | ".join(names)
        + " |"
    )
    print("|" + "---|" * (6 + len(names)))
    for dataset in sorted(p.name for p in demo.iterdir() if (p / "participants.tsv").exists()):
        runs = pd.read_csv(
            demo / f"{dataset}-truth" / "runs.tsv", sep="\t", dtype=str, keep_default_na=False
        )
        for _, row in runs.iterrows():
            session = None if row["session"] == "n/a" else row["session"]
            sub = row["participant_id"].removeprefix("sub-")
            run = _preprocess(demo, dataset, sub, session, atlas_image)
            r = _correlations(run, TABLE_COLUMNS)
            keep = run["result"].keep
            trans_mm, rot_deg = _motion_errors(run)
            motion = row["motion_level"]
            if not keep.all():
                motion += f", {int((~keep).sum())} censored"
            cells = [f"{r[c][0]:.2f} / {r[c][1]:.2f}" for c in TABLE_COLUMNS]
            print(
                f"| {dataset} {run['prefix'].replace('_', ' ')} ({motion}) | "
                f"{int(keep.sum())}/{keep.size} | {trans_mm:.3f} | {rot_deg:.3f} | "
                f"{r['raw']:.2f} | {r['bandpass']:.2f} | " + " | ".join(cells) + " |",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/unit/func/test_demo_data.py DEMO_DIR")
    _table(Path(sys.argv[1]))
