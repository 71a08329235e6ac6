"""Native pipeline on a small synthetic run: outputs, bad-input handling, CLI."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony.func.pipeline import NativeSettings, RunInputs, load_bold, preprocess_run
from brainharmony.io import InputDataError
from tests.unit.func_synthetic import RES_MM, synthetic_bold

FAST = NativeSettings(coreg="header")


@pytest.fixture(scope="module")
def atlas():
    from brainharmony.atlas import schaefer400_volume

    img, table = schaefer400_volume(RES_MM)
    return img, table


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic") / "sub-01" / "func"
    return synthetic_bold(folder)


def _inputs(path, meta):
    return RunInputs(
        bold=path, t_r=meta["RepetitionTime"], metadata=meta, t1w_to_template=np.eye(4)
    )


@pytest.fixture(scope="module")
def result(run, atlas):
    path, meta, _ = run
    return preprocess_run(_inputs(path, meta), atlas[0], FAST)


def test_synthetic_run_recovers_planted_parcels(result, run):
    _, _, planted = run
    assert result.slice_timing_corrected
    assert result.raw_series.shape == (60, 400)
    assert np.abs(result.params[:, :3]).max() < 0.2  # no motion was planted
    good = np.isfinite(result.raw_series).all(axis=0)
    assert good.sum() > 300
    r = [np.corrcoef(result.raw_series[:, i], planted[:, i])[0, 1] for i in np.flatnonzero(good)]
    assert np.median(r) > 0.9
    for name in ("trans_x", "framewise_displacement", "global_signal", "csf", "white_matter"):
        assert name in result.confounds.columns


def test_outputs_are_written(result, atlas, tmp_path):
    from brainharmony.func.naming import run_outputs
    from brainharmony.func.outputs import write_native_outputs

    out = run_outputs(tmp_path, "01", None, "rest", None, resolution_mm=RES_MM)
    files = write_native_outputs(
        result,
        out,
        atlas[1],
        inputs=[],
        parameters={"min_parcel_voxels": 3},
        keep_bold=True,
    )
    assert all(Path(f).exists() for f in files)
    series = pd.read_csv(out.timeseries, sep="\t")
    assert series.shape == (60, 400)
    assert series.columns[0] == "7Networks_LH_Vis_1"
    import json

    side = json.loads(out.timeseries.with_suffix(".json").read_text())
    assert side["RepetitionTime"] == 2.0
    assert side["CensoredVolumes"] == np.flatnonzero(~result.keep).tolist()
    assert "SmallParcels" in side and "Provenance" in side
    bold = nib.load(out.preproc_bold)
    assert bold.shape == (*result.grid_shape, 60)


def test_a_few_nan_voxels_are_excluded_and_reported(tmp_path, atlas):
    path, meta, _ = synthetic_bold(
        tmp_path / "sub-02" / "func", n_volumes=40, seed=1, name="sub-02_task-rest_bold.nii.gz"
    )
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    data[16, 20, 15, :] = np.nan
    data[17, 20, 15, 3] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), path)
    res = preprocess_run(_inputs(path, meta), atlas[0], FAST)
    assert res.report["Bold"]["NonFiniteVoxels"] == 2
    assert np.isfinite(res.raw_series[:, np.isfinite(res.raw_series).all(0)]).all()


def test_mostly_nan_bold_is_refused_naming_the_file(tmp_path, atlas):
    path, meta, _ = synthetic_bold(
        tmp_path / "sub-03" / "func", n_volumes=40, name="sub-03_task-rest_bold.nii.gz"
    )
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    data[:, :, :20] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)
    with pytest.raises(InputDataError, match=r"sub-03_task-rest_bold\.nii\.gz.*NaN"):
        preprocess_run(_inputs(path, meta), atlas[0], FAST)


def test_zero_variance_voxels_are_excluded(tmp_path):
    path, _, _ = synthetic_bold(
        tmp_path / "sub-04" / "func", n_volumes=20, name="sub-04_task-rest_bold.nii.gz"
    )
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    data[10:14, 10:14, 10:14, :] = 700.0
    nib.save(nib.Nifti1Image(data, img.affine), path)
    bold = load_bold(path)
    assert bold.report["ConstantVoxels"] >= 64
    assert not bold.valid[10:14, 10:14, 10:14].any()


def test_too_few_volumes_is_refused_naming_the_file(tmp_path, atlas):
    path, meta, _ = synthetic_bold(
        tmp_path / "sub-05" / "func", n_volumes=12, name="sub-05_task-rest_bold.nii.gz"
    )
    with pytest.raises(InputDataError, match=r"sub-05_task-rest_bold\.nii\.gz: 12 volumes"):
        preprocess_run(_inputs(path, meta), atlas[0], FAST)


def test_cutoff_above_nyquist_is_refused_naming_the_file(run, atlas):
    from brainharmony.func.denoise import DenoiseSettings

    path, meta, _ = run
    settings = NativeSettings(coreg="header", denoise=DenoiseSettings(low_pass=0.3))
    with pytest.raises(InputDataError, match=r"sub-01_task-rest_bold.*0.3 Hz.*0.25 Hz"):
        preprocess_run(_inputs(path, meta), atlas[0], settings)


def test_cli_native_writes_everything(run, tmp_path):
    from brainharmony.pipelines.func import main

    path, meta, _ = run
    atlas_dir = tmp_path / "atlas"
    assert main(["atlas", "--resolution", str(RES_MM), "--out-dir", str(atlas_dir)]) == 0
    image = next(atlas_dir.glob("*_dseg.nii.gz"))
    labels = next(atlas_dir.glob("*_dseg.tsv"))
    np.save(tmp_path / "eye.npy", np.eye(4))
    import json

    (path.parent / path.name.replace(".nii.gz", ".json")).write_text(json.dumps(meta))
    code = main(
        [
            "native",
            "--bold",
            str(path),
            "--t1w-to-template",
            str(tmp_path / "eye.npy"),
            "--coreg",
            "header",
            "--subject",
            "01",
            "--out-dir",
            str(tmp_path / "out"),
            "--atlas",
            str(image),
            "--atlas-labels",
            str(labels),
            "--strategy",
            "24P",
        ]
    )
    assert code == 0
    func = tmp_path / "out" / "sub-01" / "func"
    names = {p.name for p in func.iterdir()}
    assert "sub-01_task-rest_desc-confounds_timeseries.tsv" in names
    # The censoring as fMRIPrep's one-hot motion_outlierNN columns of the confounds.
    import pandas as pd

    conf = pd.read_csv(func / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t")
    series_json = next(func.glob("*_desc-denoised_timeseries.json"))
    censored = json.loads(series_json.read_text())["CensoredVolumes"]
    onehot = conf[[c for c in conf.columns if c.startswith("motion_outlier")]].to_numpy()
    assert onehot.shape[1] == len(censored)
    assert np.flatnonzero(onehot.sum(axis=1)).tolist() == censored
    conf_json = json.loads((func / "sub-01_task-rest_desc-confounds_timeseries.json").read_text())
    assert conf_json["Censoring"]["MotionOutlierColumns"] == len(censored)
    assert any(n.endswith("_desc-denoised_timeseries.tsv") for n in names)
    assert any(n.endswith("_desc-carpetplot_bold.png") for n in names)
    assert not any("desc-preproc_bold" in n for n in names)  # not kept by default
    # A missing BOLD is a clean error (exit 2), not a traceback.
    code = main(
        [
            "native",
            "--bold",
            str(tmp_path / "nope.nii.gz"),
            "--tr",
            "2",
            "--t1w-to-template",
            str(tmp_path / "eye.npy"),
            "--coreg",
            "header",
            "--subject",
            "01",
            "--out-dir",
            str(tmp_path / "out"),
            "--atlas",
            str(image),
            "--atlas-labels",
            str(labels),
        ]
    )
    assert code == 2


# ------------------------------------------------- hostile images and TRs (issue 23)


def _hostile_bold(tmp_path, sub, change, *, n_volumes=20):
    """A synthetic run rewritten by ``change`` (an image -> image function)."""
    path, meta, _ = synthetic_bold(
        tmp_path / f"sub-{sub}" / "func",
        n_volumes=n_volumes,
        name=f"sub-{sub}_task-rest_bold.nii.gz",
    )
    img = nib.load(path)
    new = change(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header))
    path.unlink()
    nib.save(new, path)
    return path, meta


def _huge(values):
    def change(img):
        data = np.asarray(img.dataobj).copy()
        for index, value in values:
            data[index] = value
        return nib.Nifti1Image(data, img.affine)

    return change


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("unoriented", r"BOLD image: no orientation: qform_code and sform_code are both 0"),
        ("zero sform", r"BOLD image: sform \(code 1\) is singular"),
        ("complex", r"BOLD image: voxel type complex64 is complex"),
        ("bad crc", r"BOLD image: the compressed data is damaged \(BadGzipFile: CRC check"),
    ],
)
def test_bold_with_unusable_orientation_dtype_or_gzip_is_refused(tmp_path, case, problem):
    from tests.unit.test_nifti_checks import flip_gzip_byte, unoriented, zero_sform

    change = {
        "unoriented": unoriented,
        "zero sform": zero_sform,
        "complex": lambda img: nib.Nifti1Image(
            np.asarray(img.dataobj).astype(np.complex64), img.affine
        ),
        "bad crc": lambda img: img,
    }[case]
    path, _ = _hostile_bold(tmp_path, "09", change)
    if case == "bad crc":
        flip_gzip_byte(path, "crc")
    with pytest.raises(InputDataError, match=problem) as info:
        load_bold(path)
    assert info.value.path == path


def test_a_few_huge_voxels_are_excluded_like_nan(tmp_path, atlas):
    """1e30 in two voxels (some volumes) was a traceback in motion estimation."""
    path, meta = _hostile_bold(
        tmp_path, "10", _huge([((16, 20, 15, 5), 1e30), ((17, 20, 15, 7), -1e30)]), n_volumes=40
    )
    res = preprocess_run(_inputs(path, meta), atlas[0], FAST)
    assert res.report["Bold"]["NonFiniteVoxels"] == 2
    assert res.report["Bold"]["ImplausibleVoxels"] == 2
    assert np.isfinite(res.raw_series[:, np.isfinite(res.raw_series).all(0)]).all()


def test_many_huge_voxels_are_refused_like_nan(tmp_path):
    path, _ = _hostile_bold(
        tmp_path, "11", _huge([((slice(None), slice(None), slice(0, 20), 3), 1e30)])
    )
    with pytest.raises(InputDataError, match=r"values beyond \+-1e\+10") as info:
        load_bold(path)
    assert info.value.path == path


def _native_argv(bold, out, *extra):
    # The TR is checked before the atlas or the transform is read: placeholders suffice.
    return [
        "native", "--bold", str(bold), "--t1w-to-template", str(out / "eye.npy"),
        "--coreg", "header", "--subject", "01", "--out-dir", str(out),
        "--atlas", str(out / "atlas.nii.gz"), "--atlas-labels", str(out / "atlas.tsv"), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("sidecar", "extra", "named", "problem"),
    [
        (
            {"RepetitionTime": [2.0]},
            [],
            "sidecar",
            r"RepetitionTime in the sidecar is \[2\.0\], not a number",
        ),
        ({"RepetitionTime": "2"}, [], "sidecar", r"is '2', not a number"),
        (
            {"RepetitionTime": 1e-6},
            [],
            "sidecar",
            r"RepetitionTime in the sidecar 1e-06 s is outside the plausible range 0\.1-10 s",
        ),
        ({"RepetitionTime": 2.0}, ["--tr", "1e-6"], "bold", r"--tr 1e-06 s is outside"),
        ({"RepetitionTime": 2.0}, ["--tr", "nan"], "bold", r"--tr nan is not a positive"),
        (
            {"RepetitionTime": 15.0},
            ["--tr-range", "0.1", "12"],
            "sidecar",
            r"15\.0 s is outside the plausible range 0\.1-12 s",
        ),
        ({"RepetitionTime": 2.0}, ["--tr-range", "5", "1"], None, r"--tr-range: tr_range must"),
    ],
    ids=["list", "string", "1e-6", "cli-1e-6", "cli-nan", "range-option", "bad-range"],
)
def test_func_cli_refuses_an_unusable_tr_naming_its_source(
    run, tmp_path, capsys, sidecar, extra, named, problem
):
    import json

    from brainharmony.pipelines.func import main

    folder = tmp_path / "bids" / "sub-01" / "func"
    folder.mkdir(parents=True)
    bold = folder / "sub-01_task-rest_bold.nii.gz"
    bold.symlink_to(run[0])
    side = folder / "sub-01_task-rest_bold.json"
    side.write_text(json.dumps(sidecar))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(_native_argv(bold, out, *extra)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(problem, err), err
    if named is not None:
        assert str(side if named == "sidecar" else bold) in err, err
    assert not out.exists() or not any(out.rglob("*.tsv"))


def test_resolve_repetition_time_accepts_a_plain_value(tmp_path):
    from brainharmony.func.pipeline import resolve_repetition_time

    bold = tmp_path / "b.nii.gz"
    assert resolve_repetition_time(bold, None, {"RepetitionTime": 2}, tmp_path / "b.json") == 2.0
    assert resolve_repetition_time(bold, 0.8, {"RepetitionTime": [2.0]}) == 0.8  # --tr wins
    assert resolve_repetition_time(bold, None, {"RepetitionTime": 15}, None, (0.1, 20.0)) == 15.0


def test_sidecar_in_invalid_utf8_is_refused_naming_it(tmp_path):
    from brainharmony.func.pipeline import bold_metadata

    bold = tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    bold.parent.mkdir(parents=True)
    side = bold.with_name("sub-01_task-rest_bold.json")
    side.write_bytes(b'{"RepetitionTime": 2.0, "Name": "\xff\xfe"}')
    with pytest.raises(InputDataError, match=r"cannot read JSON sidecar") as info:
        bold_metadata(bold)
    assert info.value.path == side
