"""Reading fMRIPrep's confounds: real fMRIPrep files, non-steady-state volumes, nilearn.

The confounds files are the real fMRIPrep outputs that nilearn ships with its
``load_confounds`` tests (read from the installed package, never copied into the
repository):

* ``test-v21_desc-confounds_timeseries.tsv`` (+ ``.json``): fMRIPrep 21 naming and
  columns; 30 volumes, ``non_steady_state_outlier00-02`` (volumes 0-2), fMRIPrep's own
  ``motion_outlier00-22``;
* ``test_desc-confounds_regressors.tsv``: the ``desc-confounds_regressors`` name of
  fMRIPrep 1.2 to 20.1, same column names; ``non_steady_state_outlier00`` (volume 0);
* ``no_nonsteady_desc-confounds_regressors.tsv``: the same run without that column.

No fMRIPrep 1.0/1.1 (camel-case ``X``, ``RotX``, ``FramewiseDisplacement``) file ships
with the installed packages: the refusal test writes one to ``tmp_path`` by renaming
the real 1.x file's columns to those names. nilearn pairs a confounds file with a
``*_desc-preproc_bold.nii.gz`` path by BIDS entities; the v21 file pairs in place
(``test-v21_desc-preproc_bold.nii.gz``), the two ``test_``/``no_nonsteady_`` files are
copied to ``tmp_path`` under a BIDS name for nilearn.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony.func.confounds import outlier_frames
from brainharmony.func.denoise import STRATEGIES, DenoiseSettings, confound_matrix
from brainharmony.func.fmriprep import FmriprepRun, process_derivatives, read_confounds
from brainharmony.io import InputDataError, sidecar_path

fmriprep_interface = pytest.importorskip("nilearn.interfaces.fmriprep")
DATA = Path(fmriprep_interface.__file__).parent / "data"
V21 = DATA / "test-v21_desc-confounds_timeseries.tsv"
V1X = DATA / "test_desc-confounds_regressors.tsv"
V1X_NO_DUMMY = DATA / "no_nonsteady_desc-confounds_regressors.tsv"
REAL_FILES = {"v21": V21, "v1x": V1X, "v1x-no-dummy": V1X_NO_DUMMY}
DUMMIES = {"v21": [0, 1, 2], "v1x": [0], "v1x-no-dummy": []}

#: Each strategy and the ``nilearn.interfaces.fmriprep.load_confounds`` arguments that
#: select the same columns (docs/func.md has the same table).
NILEARN_EQUIVALENT = {
    "2P": {"strategy": ("wm_csf",), "wm_csf": "basic"},
    "3P": {
        "strategy": ("wm_csf", "global_signal"),
        "wm_csf": "basic",
        "global_signal": "basic",
    },
    "9P": {
        "strategy": ("motion", "wm_csf", "global_signal"),
        "motion": "basic",
        "wm_csf": "basic",
        "global_signal": "basic",
    },
    "18P": {
        "strategy": ("motion", "wm_csf", "global_signal"),
        "motion": "derivatives",
        "wm_csf": "derivatives",
        "global_signal": "derivatives",
    },
    "24P": {"strategy": ("motion",), "motion": "full"},
    "24P+WM+CSF+GS": {
        "strategy": ("motion", "wm_csf", "global_signal"),
        "motion": "full",
        "wm_csf": "basic",
        "global_signal": "basic",
    },
    "36P": {
        "strategy": ("motion", "wm_csf", "global_signal"),
        "motion": "full",
        "wm_csf": "full",
        "global_signal": "full",
    },
}


def _nilearn_image(tmp_path: Path, key: str) -> str:
    """A ``desc-preproc_bold`` path from which nilearn finds the real confounds file."""
    if key == "v21":
        return str(DATA / "test-v21_desc-preproc_bold.nii.gz")  # pairs in place
    shutil.copy(REAL_FILES[key], tmp_path / "sub-01_task-rest_desc-confounds_regressors.tsv")
    return str(tmp_path / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")


def _load_confounds(image: str, **kwargs):
    from nilearn.interfaces.fmriprep import load_confounds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_confounds(image, **kwargs)


def _nilearn_keep(sample_mask, n: int) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    keep[np.arange(n) if sample_mask is None else np.asarray(sample_mask)] = True
    return keep


# --------------------------------------------------------------------------------------
# Real files: columns per strategy, non-steady-state volumes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(REAL_FILES))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_real_files_give_each_strategy_its_columns(key, strategy):
    path = REAL_FILES[key]
    table = read_confounds(path, required=STRATEGIES[strategy])
    assert len(table) == 30
    matrix, names = confound_matrix(table, strategy)
    assert names == list(STRATEGIES[strategy])
    assert matrix.shape == (30, len(names)) and np.isfinite(matrix).all()
    # The values are the file's, its n/a (first row of derivatives) read as 0.
    raw = pd.read_csv(path, sep="\t", na_values=["n/a"])
    np.testing.assert_array_equal(matrix, np.nan_to_num(raw[names].to_numpy(float), nan=0.0))
    assert np.isnan(table["framewise_displacement"].iloc[0])


@pytest.mark.parametrize("key", sorted(REAL_FILES))
def test_real_files_non_steady_state_volumes(key):
    table = read_confounds(REAL_FILES[key])
    dummies = outlier_frames(table)
    assert np.flatnonzero(dummies).tolist() == DUMMIES[key]
    keep = DenoiseSettings(fd_threshold=None).keep(
        table["framewise_displacement"].to_numpy(float), exclude=dummies
    )
    np.testing.assert_array_equal(keep, ~dummies)


def test_old_formats_are_refused_naming_the_file_and_columns(tmp_path):
    # fMRIPrep 1.0/1.1: camel-case names, no expansions (written here: see the module doc).
    real = pd.read_csv(V1X, sep="\t", na_values=["n/a"])
    old_names = {
        "trans_x": "X",
        "trans_y": "Y",
        "trans_z": "Z",
        "rot_x": "RotX",
        "rot_y": "RotY",
        "rot_z": "RotZ",
        "framewise_displacement": "FramewiseDisplacement",
        "global_signal": "GlobalSignal",
        "white_matter": "WhiteMatter",
        "csf": "CSF",
        "std_dvars": "stdDVARS",
        "dvars": "non-stdDVARS",
        "a_comp_cor_00": "aCompCor00",
        "cosine00": "Cosine00",
        "non_steady_state_outlier00": "NonSteadyStateOutlier00",
    }
    old = real[list(old_names)].rename(columns=old_names)
    old_path = tmp_path / "sub-01_task-rest_bold_confounds.tsv"
    old.to_csv(old_path, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(InputDataError, match=r"fMRIPrep 1\.0/1\.1") as err:
        read_confounds(old_path, required=STRATEGIES["9P"])
    message = str(err.value)
    assert str(old_path) in message
    assert "'framewise_displacement'" in message and "'trans_x'" in message
    assert "'RotX'" in message

    # No header row: a real realignment-parameter file of another tool (SPM rp_*.txt).
    spm = Path(fmriprep_interface.__file__).parents[2] / "datasets" / "data" / "spm_confounds.txt"
    with pytest.raises(InputDataError, match="no header row") as err:
        read_confounds(spm)
    assert str(spm) in str(err.value)

    # The real 1.x file without its expansion columns: the base strategies still read,
    # the ones that need derivatives or squares name what is missing.
    base = real[[c for c in real.columns if not c.endswith(("_derivative1", "_power2"))]]
    base_path = tmp_path / "sub-01_task-rest_desc-confounds_regressors.tsv"
    base.to_csv(base_path, sep="\t", index=False, na_rep="n/a")
    assert read_confounds(base_path, required=STRATEGIES["9P"]).shape == base.shape
    with pytest.raises(InputDataError, match=r"lacks columns \['trans_x_derivative1'") as err:
        read_confounds(base_path, required=STRATEGIES["18P"])
    assert str(base_path) in str(err.value)
    assert "camel-case" not in str(err.value)


# --------------------------------------------------------------------------------------
# The same columns and frames as nilearn's load_confounds
# --------------------------------------------------------------------------------------
def test_every_strategy_has_a_nilearn_equivalent():
    assert set(NILEARN_EQUIVALENT) == set(STRATEGIES) - {"none"}


@pytest.mark.parametrize("key", sorted(REAL_FILES))
@pytest.mark.parametrize("strategy", sorted(NILEARN_EQUIVALENT))
def test_strategies_choose_the_columns_nilearn_load_confounds_chooses(tmp_path, key, strategy):
    image = _nilearn_image(tmp_path, key)
    conf, sample_mask = _load_confounds(image, **NILEARN_EQUIVALENT[strategy])
    table = read_confounds(REAL_FILES[key], required=STRATEGIES[strategy])
    _, names = confound_matrix(table, strategy)
    assert sorted(conf.columns) == sorted(names)
    # nilearn drops the non-steady-state volumes (sample_mask); they are censored here.
    keep = DenoiseSettings(fd_threshold=None).keep(
        table["framewise_displacement"].to_numpy(float), exclude=outlier_frames(table)
    )
    np.testing.assert_array_equal(_nilearn_keep(sample_mask, len(table)), keep)


@pytest.mark.parametrize(
    ("key", "threshold"),
    [("v21", 3.0), ("v21", 4.0), ("v21", 5.0), ("v1x", 0.15), ("v1x-no-dummy", 0.15)],
)
def test_censoring_keeps_the_frames_nilearn_scrub_keeps(tmp_path, key, threshold):
    # nilearn's "scrub" also censors std_dvars above a threshold; this package censors on
    # framewise displacement only, so nilearn's DVARS rule is switched off.
    image = _nilearn_image(tmp_path, key)
    _, sample_mask = _load_confounds(
        image,
        strategy=("motion", "scrub"),
        scrub=5,
        fd_threshold=threshold,
        std_dvars_threshold=np.inf,
    )
    table = read_confounds(REAL_FILES[key])
    keep = DenoiseSettings(fd_threshold=threshold, min_segment=5).keep(
        table["framewise_displacement"].to_numpy(float), exclude=outlier_frames(table)
    )
    assert 0 < keep.sum() < len(table)
    np.testing.assert_array_equal(_nilearn_keep(sample_mask, len(table)), keep)


@pytest.mark.parametrize(
    ("preset", "options", "strategy"),
    [
        ("simple", {"global_signal": "basic"}, "24P+WM+CSF+GS"),
        ("scrubbing", {"global_signal": "full", "std_dvars_threshold": np.inf}, "36P"),
    ],
)
@pytest.mark.parametrize("key", ["v21", "v1x"])
def test_nilearn_presets(tmp_path, preset, options, strategy, key):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    fd_threshold = 4.0 if key == "v21" else 0.5  # the v21 run moves a lot
    if preset == "scrubbing":
        options = {**options, "fd_threshold": fd_threshold}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conf, sample_mask = load_confounds_strategy(
            _nilearn_image(tmp_path, key), preset, **options
        )
    # The presets add fMRIPrep's cosine (high-pass) columns: the band-pass replaces them.
    cosines = [c for c in conf.columns if c.startswith("cosine")]
    assert cosines
    assert sorted(set(conf.columns) - set(cosines)) == sorted(STRATEGIES[strategy])
    table = read_confounds(REAL_FILES[key])
    settings = DenoiseSettings(
        strategy=strategy, fd_threshold=fd_threshold if preset == "scrubbing" else None
    )
    keep = settings.keep(
        table["framewise_displacement"].to_numpy(float), exclude=outlier_frames(table)
    )
    np.testing.assert_array_equal(_nilearn_keep(sample_mask, len(table)), keep)


# --------------------------------------------------------------------------------------
# Through process_derivatives and the writers, on the real v21 confounds
# --------------------------------------------------------------------------------------
def _derivatives(
    folder: Path, confounds: Path, *, dummy_value: float | None = None
) -> tuple[FmriprepRun, nib.Nifti1Image]:
    """A 30-volume BOLD (8 parcels) with bright dummy volumes, beside a copy of ``confounds``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    i, j, k = np.indices((6, 6, 6))
    labels = 1 + (i // 3) * 4 + (j // 3) * 2 + k // 3
    signals = rng.standard_normal((30, 9)).cumsum(axis=0)
    data = 1000.0 + 5.0 * signals[:, labels].transpose(1, 2, 3, 0)
    data += rng.standard_normal(data.shape)
    data[..., :3] *= np.array([1.6, 1.3, 1.1])  # non-steady-state: T1 not yet settled
    if dummy_value is not None:
        data[..., :3] = dummy_value
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    bold = folder / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), bold)
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    sidecar.write_text(json.dumps({"RepetitionTime": 2.0}))
    target = folder / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    if confounds != target:
        shutil.copy(confounds, target)
    atlas = nib.Nifti1Image(labels.astype(np.int16), affine)
    return FmriprepRun(bold, target, None, sidecar), atlas


def test_non_steady_state_volumes_are_censored_and_recorded(tmp_path):
    from brainharmony.func.denoise import describe
    from brainharmony.func.naming import run_outputs
    from brainharmony.func.outputs import write_derivative_outputs

    settings = DenoiseSettings(strategy="18P", fd_threshold=5.0)
    files, atlas = _derivatives(tmp_path / "a", V21)
    out = process_derivatives(files, atlas, denoise_settings=settings)
    # Volumes 0-2 are fMRIPrep's dummies; 11 and 12 move more than 5 mm.
    assert np.flatnonzero(~out.keep).tolist() == [0, 1, 2, 11, 12]
    assert out.report["NonSteadyStateVolumes"]["Count"] == 3
    assert out.report["NonSteadyStateVolumes"]["Volumes"] == [0, 1, 2]
    assert np.isnan(out.denoised[~out.keep]).all()
    assert np.isfinite(out.denoised[out.keep][:, :8]).all()

    # Nothing of a dummy volume reaches a kept frame: replace them by 1e4.
    files_b, _ = _derivatives(tmp_path / "b", V21, dummy_value=1e4)
    out_b = process_derivatives(files_b, atlas, denoise_settings=settings)
    np.testing.assert_allclose(out_b.denoised[out.keep], out.denoised[out.keep], atol=1e-8)
    # ...whereas without the non_steady_state_outlier columns they are kept and do.
    table = pd.read_csv(V21, sep="\t", na_values=["n/a"])
    plain = tmp_path / "c" / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    plain.parent.mkdir()
    table.drop(columns=[c for c in table if c.startswith("non_steady")]).to_csv(
        plain, sep="\t", index=False, na_rep="n/a"
    )
    files_c, _ = _derivatives(tmp_path / "c", plain)
    out_c = process_derivatives(files_c, atlas, denoise_settings=settings)
    assert out_c.keep[:3].all() and out_c.report["NonSteadyStateVolumes"]["Count"] == 0

    # The written confounds: fMRIPrep's 23 motion_outlier columns replaced by the frames
    # censored here for motion; the dummies stay in their own columns.
    outputs = run_outputs(tmp_path / "results", "01", None, "rest", None, space="MNI")
    names = pd.DataFrame({"name": [f"p{i}" for i in range(1, 401)], "network": "Vis"})
    write_derivative_outputs(
        out,
        outputs,
        names,
        inputs=[files.bold, files.confounds],
        parameters={**settings.to_dict(), "denoise_description": describe(settings, [])},
        qc=False,
    )
    written = pd.read_csv(outputs.confounds, sep="\t", na_values=["n/a"])
    motion = [c for c in written.columns if c.startswith("motion_outlier")]
    assert motion == ["motion_outlier00", "motion_outlier01"]
    assert np.flatnonzero(outlier_frames(written, "motion_outlier")).tolist() == [11, 12]
    assert np.flatnonzero(outlier_frames(written)).tolist() == [0, 1, 2]
    # Read the fMRIPrep way (nilearn: the union of the one-hot columns is what is dropped).
    from nilearn.interfaces.fmriprep.load_confounds_scrub import extract_outlier_regressors

    sample_mask, _, _ = extract_outlier_regressors(written)
    np.testing.assert_array_equal(sample_mask, np.flatnonzero(out.keep))
    side = json.loads(sidecar_path(outputs.confounds).read_text())
    assert side["Censoring"]["ReplacedMotionOutlierColumns"] == 23
    assert side["Censoring"]["NonSteadyStateVolumes"] == 3
    assert side["Censoring"]["CensoredVolumes"] == 5
    assert "frame 11" in side["motion_outlier00"]["Description"]
    series = json.loads(sidecar_path(outputs.timeseries).read_text())
    assert series["CensoredVolumes"] == [0, 1, 2, 11, 12]
    assert series["NonSteadyStateVolumes"]["Count"] == 3


def test_a_non_one_hot_non_steady_state_column_is_refused(tmp_path):
    table = pd.read_csv(V1X, sep="\t", na_values=["n/a"])
    table.loc[4, "non_steady_state_outlier00"] = 2
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    path.parent.mkdir(exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    files, atlas = _derivatives(tmp_path, path)
    with pytest.raises(InputDataError, match=r"non_steady_state_outlier00.*one-hot") as err:
        process_derivatives(files, atlas, denoise_settings=DenoiseSettings(fd_threshold=None))
    assert str(path) in str(err.value)


# --------------------------------------------- hostile inputs of the fMRIPrep route (issue 23)


def test_a_list_repetition_time_is_refused_naming_the_sidecar(tmp_path):
    files, atlas = _derivatives(tmp_path, V21)
    files.bold_sidecar.write_text(json.dumps({"RepetitionTime": [2.0]}))
    with pytest.raises(InputDataError, match=r"is \[2\.0\], not a number") as info:
        process_derivatives(files, atlas)
    assert info.value.path == files.bold_sidecar
    files.bold_sidecar.write_text(json.dumps({"RepetitionTime": 1e-6}))
    with pytest.raises(InputDataError, match=r"outside the plausible range 0\.1-10 s"):
        process_derivatives(files, atlas)


def test_an_unoriented_preprocessed_bold_is_refused(tmp_path):
    from tests.unit.test_nifti_checks import unoriented

    files, atlas = _derivatives(tmp_path, V21)
    img = nib.load(files.bold)
    new = unoriented(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header))
    files.bold.unlink()
    nib.save(new, files.bold)
    with pytest.raises(InputDataError, match=r"preprocessed BOLD: no orientation") as info:
        process_derivatives(files, atlas)
    assert info.value.path == files.bold


def test_huge_voxels_are_left_out_like_nan(tmp_path):
    settings = DenoiseSettings(strategy="18P", fd_threshold=5.0)
    files, atlas = _derivatives(tmp_path / "a", V21)
    ref = process_derivatives(files, atlas, denoise_settings=settings)
    img = nib.load(files.bold)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0, 4] = 1e30  # one voxel of parcel 1
    files.bold.unlink()
    nib.save(nib.Nifti1Image(data, img.affine), files.bold)
    out = process_derivatives(files, atlas, denoise_settings=settings)
    assert np.isfinite(out.denoised[out.keep][:, :8]).all()
    assert np.abs(out.denoised[out.keep][:, :8]).max() < 1e3
    assert out.parcel_counts[0] == ref.parcel_counts[0] - 1
