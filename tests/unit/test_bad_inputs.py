"""Bad-input matrix across the stages after ingestion (docs/reliability.md lists every kind).

Each case damages one input of one stage's command, runs the command the way a workflow
rule does (``brainharmony <stage> ...``, in process) and checks three things: the exit
status is 2 (a clean refusal, not a traceback), the message names the file and the
problem, and the output folder holds nothing afterwards (no partial output). The anatomy
stage instead excludes an unusable T1w: exit 0, every output written with ``Excluded``
and a reason naming the file and the problem, so one bad subject never stops the others. Cases with
documented handling instead of a refusal (non-finite voxels under the limit, parcels
without voxels, a damaged training checkpoint) check that handling.

The ingestion-level kinds (missing/zero/text/millisecond TR, sidecar-header TR conflict,
3D BOLD, missing T1w, truncated and garbage NIfTI, bad or escaping labels, malformed
participants.tsv, duplicate subjects, ...) are in tests/unit/test_ingest.py.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from brainharmony import cli
from tests.unit.func_synthetic import RES_MM, synthetic_bold


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _refused(capsys, argv: list[str], out: Path, path: Path, problem: str) -> str:
    """Run ``brainharmony argv``; check exit 2, file and problem named, nothing written."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert str(path) in err, err
    assert re.search(problem, err), err
    assert "Traceback" not in err
    assert _files(out) == [], _files(out)
    return err


# ---- anatomy --------------------------------------------------------------------------


def _t1w_data(shape=(24, 28, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.uniform(50, 150, shape).astype(np.float32)
    data[6:18, 8:20, 6:18] += 300.0
    return data


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), path
    )
    return path


def _truncated(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _t1w_truncated(p: Path) -> Path:
    return _truncated(_save(_t1w_data(), p))


def _t1w_mostly_nan(p: Path) -> Path:
    data = _t1w_data()
    data[:, :, :12] = np.nan
    return _save(data, p)


def _t1w_four_volumes(p: Path) -> Path:
    return _save(np.stack([_t1w_data()] * 3, axis=-1), p)


def _t1w_constant(p: Path) -> Path:
    return _save(np.full((24, 28, 24), 7.0, np.float32), p)


def _t1w_singular_affine(p: Path) -> Path:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 2] = affine[:3, 1]  # two axes point the same way
    return _save(_t1w_data(), p, affine)


def _t1w_text(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return p


ANAT_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated .nii.gz": (_t1w_truncated, r"not a readable NIfTI image"),
    "NaN voxels over the limit": (_t1w_mostly_nan, r"non-finite \(NaN/Inf\) voxels"),
    "4D image where 3D is expected": (_t1w_four_volumes, r"must be one 3D volume"),
    "constant image": (_t1w_constant, r"the image is constant"),
    "singular affine": (_t1w_singular_affine, r"sform \(code 2\) is singular"),
    "gzip of non-NIfTI bytes": (_t1w_text, r"not a readable NIfTI image"),
}


@pytest.mark.parametrize("kind", list(ANAT_CASES))
def test_anat_excludes_bad_t1w_naming_it(tmp_path, capsys, kind):
    """An unusable T1w costs its subject, not the workflow: the command succeeds and
    writes every output flagged Excluded, the reason naming the file and the problem
    (the later stages leave the subject out; docs/anat.md)."""
    from brainharmony.anat.derivatives import anat_paths

    make, problem = ANAT_CASES[kind]
    t1w = make(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    out = tmp_path / "anat"
    argv = ["anat", "--t1w", str(t1w), "--out-dir", str(out), "--subject", "01"]
    argv += ["--resolution-mm", "2"]  # the demo grid (the default is the paper's 1 mm)
    capsys.readouterr()
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    paths = anat_paths(out, "01", None)
    assert all(p.exists() for p in paths.files())
    for data in (paths.preproc, paths.mask, paths.model, paths.native_preproc):
        doc = json.loads(data.with_name(data.name.replace(".nii.gz", ".json")).read_text())
        assert doc["Excluded"] is True
        assert str(t1w) in doc["ExclusionReason"], doc["ExclusionReason"]
        assert re.search(problem, doc["ExclusionReason"]), doc["ExclusionReason"]


# ---- function -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def func_env(tmp_path_factory):
    """A good synthetic run (on the 6 mm atlas grid), the atlas and an identity transform."""
    root = tmp_path_factory.mktemp("func-env")
    atlas_dir = root / "atlas"
    assert (
        cli.main(["func", "atlas", "--resolution", str(RES_MM), "--out-dir", str(atlas_dir)]) == 0
    )
    eye = root / "eye.npy"
    np.save(eye, np.eye(4))
    bold, meta, _ = synthetic_bold(root / "good" / "sub-01" / "func", n_volumes=40)
    return {
        "image": next(atlas_dir.glob("*_dseg.nii.gz")),
        "labels": next(atlas_dir.glob("*_dseg.tsv")),
        "tissues": next(atlas_dir.glob("*_desc-tissues_mask.nii.gz")),
        "eye": eye,
        "bold": bold,
        "meta": meta,
    }


@dataclass
class FuncCase:
    """How to damage the good run (returns the BOLD path, extra CLI options and the
    file the message must name; None = the BOLD)."""

    make: Callable[[dict, Path], tuple[Path, list[str], Path | None]]
    problem: str


def _copy_bold(env: dict, folder: Path, data: np.ndarray | None = None) -> Path:
    img = nib.load(env["bold"])
    path = folder / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(img.dataobj, dtype=np.float32) if data is None else data
    nib.save(nib.Nifti1Image(arr, img.affine), path)
    return path


def _good_data(env: dict) -> np.ndarray:
    return np.asarray(nib.load(env["bold"]).dataobj, dtype=np.float32)


def _tr(env: dict) -> list[str]:
    return ["--tr", str(env["meta"]["RepetitionTime"])]


def _bold_truncated(env, folder):
    return _truncated(_copy_bold(env, folder)), _tr(env), None


def _bold_3d(env, folder):
    return _copy_bold(env, folder, _good_data(env)[..., 0]), _tr(env), None


def _bold_no_tr(env, folder):
    return _copy_bold(env, folder), [], None


def _bold_zero_tr(env, folder):
    path = _copy_bold(env, folder)
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
    sidecar.write_text(json.dumps({**env["meta"], "RepetitionTime": 0}))
    return path, ["--bold-sidecar", str(sidecar)], sidecar


def _bold_bad_sidecar(env, folder):
    path = _copy_bold(env, folder)
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
    sidecar.write_text('{"RepetitionTime": 2.0,')
    return path, ["--bold-sidecar", str(sidecar)], sidecar


def _bold_mostly_nan(env, folder):
    data = _good_data(env)
    data[:, :, : data.shape[2] // 2] = np.nan
    return _copy_bold(env, folder, data), _tr(env), None


def _bold_zero(env, folder):
    return _copy_bold(env, folder, np.zeros_like(_good_data(env))), _tr(env), None


def _bold_too_short(env, folder):
    return _copy_bold(env, folder, _good_data(env)[..., :8]), _tr(env), None


def _bad_transform(env, folder):
    folder.mkdir(parents=True, exist_ok=True)
    xfm = folder / "xfm.npy"
    np.save(xfm, np.eye(3))
    return _copy_bold(env, folder), [*_tr(env), "--t1w-to-template", str(xfm)], xfm


def _tissues_of_another_grid(env, folder):
    # The atlas grid's tissue masks, one voxel short in x: another grid.
    img = nib.load(env["tissues"])
    path = folder / "tissues" / env["tissues"].name
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[1:], img.affine), path)
    sidecar = env["tissues"].with_name(env["tissues"].name.replace(".nii.gz", ".json"))
    (path.parent / sidecar.name).write_text(sidecar.read_text())
    return _copy_bold(env, folder), [*_tr(env), "--tissue-masks", str(path)], path


FUNC_CASES: dict[str, FuncCase] = {
    "truncated BOLD .nii.gz": FuncCase(_bold_truncated, r"cannot read the BOLD image"),
    "3D BOLD where 4D is expected": FuncCase(_bold_3d, r"BOLD must be 4-D"),
    "no RepetitionTime anywhere": FuncCase(_bold_no_tr, r"RepetitionTime unknown"),
    "zero RepetitionTime": FuncCase(_bold_zero_tr, r"RepetitionTime .* 0 is not a positive"),
    "unparseable JSON sidecar": FuncCase(_bold_bad_sidecar, r"cannot read JSON sidecar"),
    "NaN voxels over the limit": FuncCase(_bold_mostly_nan, r"hold NaN or"),
    "all-zero BOLD": FuncCase(_bold_zero, r"BOLD holds no signal"),
    "too few volumes for the filter": FuncCase(_bold_too_short, r"volumes are too few"),
    "transform of the wrong shape": FuncCase(_bad_transform, r"expected a 4 x 4 matrix"),
    "tissue masks of another grid": FuncCase(
        _tissues_of_another_grid, r"do not match the atlas grid"
    ),
}


@pytest.mark.parametrize("kind", list(FUNC_CASES))
def test_func_refuses_bad_run_naming_it_and_writes_nothing(func_env, tmp_path, capsys, kind):
    case = FUNC_CASES[kind]
    bold, extra, named = case.make(func_env, tmp_path / "bids")
    out = tmp_path / "func"
    argv = [
        "func", "native", "--bold", str(bold), "--coreg", "header", "--subject", "01",
        "--t1w-to-template", str(func_env["eye"]),
        "--atlas", str(func_env["image"]), "--atlas-labels", str(func_env["labels"]),
        "--out-dir", str(out), "--threads", "1", *extra,
    ]  # fmt: skip
    _refused(capsys, argv, out, named or bold, case.problem)


def _func_argv(env: dict, bold: Path, subject: str, out: Path, *extra: str) -> list[str]:
    return [
        "func", "native", "--bold", str(bold), "--coreg", "header", "--subject", subject,
        "--t1w-to-template", str(env["eye"]),
        "--atlas", str(env["image"]), "--atlas-labels", str(env["labels"]),
        "--out-dir", str(out), "--threads", "1", *_tr(env), *extra,
    ]  # fmt: skip


def test_run_empty_after_censoring_is_excluded_and_left_out_downstream(
    func_env, tmp_path, capsys, caplog
):
    """Censoring that leaves fewer than min_kept frames is a data-quality exclusion, not
    a failure: func exits 0 and writes every output, the denoised series with its header
    only and flagged Excluded with the reason. Multi-TR packing, scaling statistics,
    group gradients and the FC features leave the run out and list it; the packer and
    the single-series resampler refuse it by name; the report lists it."""
    import shutil

    from brainharmony.evaluate.data import fc_from_series_files
    from brainharmony.evaluate.report import ReportBuilder
    from brainharmony.io import InputDataError
    from brainharmony.packing import pack_series, read_index
    from brainharmony.series_files import read_series
    from brainharmony.timeseries.multitr import resample_and_pack

    out = tmp_path / "results" / "func" / "demo"
    bolds = {}
    for sub in ("01", "02"):
        bolds[sub] = tmp_path / "bids" / f"sub-{sub}" / "func" / f"sub-{sub}_task-rest_bold.nii.gz"
        bolds[sub].parent.mkdir(parents=True)
        shutil.copy(func_env["bold"], bolds[sub])
    assert cli.main(_func_argv(func_env, bolds["01"], "01", out)) == 0
    # FD never reaches 1e-6 mm on this motion-free run, except frame 0 (0 by
    # definition): every other frame is censored.
    caplog.clear()
    assert cli.main(_func_argv(func_env, bolds["02"], "02", out, "--fd-threshold", "1e-6")) == 0
    assert f"{bolds['02']}: excluded from the later stages" in caplog.text

    good, bad = (
        next((out / f"sub-{s}").rglob("*_desc-denoised_timeseries.tsv")) for s in ("01", "02")
    )
    names_of = {p.name.replace("sub-01", "sub-02") for p in (out / "sub-01").rglob("*.*")}
    assert {p.name for p in (out / "sub-02").rglob("*.*")} == names_of  # every output
    side = json.loads(bad.with_suffix(".json").read_text())
    assert side["Excluded"] is True
    assert re.search(r"only 0 of 40 frames remain after censoring", side["ExclusionReason"])
    assert side["KeptVolumes"] == 0 and side["NumberOfVolumes"] == 40
    table = pd.read_csv(bad, sep="\t")
    assert table.shape == (0, 400)  # the header, no numbers that were not computed
    raw = next((out / "sub-02").rglob("*_desc-preproc_timeseries.tsv"))
    assert pd.read_csv(raw, sep="\t").shape == (40, 400)
    assert read_series(bad, require_finite=False).excluded == side["ExclusionReason"]
    assert read_series(good, require_finite=False).excluded == ""

    # Multi-TR packing: the excluded run is left out and listed.
    manifest = pd.DataFrame(
        {"subject": ["01", "02"], "session": "n/a", "run": "n/a", "tr": 2.0,
         "path": [str(good), str(bad)]}
    )  # fmt: skip
    shard, index = tmp_path / "mt" / "series_tr-4000.npy", tmp_path / "mt" / "index.tsv"
    shard.parent.mkdir()
    resample_and_pack(manifest, 4000, shard, index)
    assert read_index(index)["subject"].tolist() == ["01"]
    listed = json.loads(shard.with_suffix(".json").read_text())["ExcludedSources"]
    assert listed == [{"path": str(bad), "reason": side["ExclusionReason"]}]
    with pytest.raises(InputDataError, match=r"no usable series .* \(1 excluded by func\)"):
        resample_and_pack(manifest.iloc[1:], 4000, shard, index)
    with pytest.raises(InputDataError, match="the func stage excluded this run") as caught:
        pack_series(manifest, tmp_path / "p.npy", tmp_path / "p.tsv")
    assert str(bad) in str(caught.value)

    # Scaling statistics and group gradients from the usable run only (one that covers
    # every parcel: the 6 mm test grid leaves some parcels of the real run empty).
    full = _series(tmp_path, np.random.default_rng(0).standard_normal((60, 400)))
    stats = tmp_path / "scaling.json"
    argv = ["scaling-stats", "--series", str(full), str(bad), "--mode", "all_frames",
            "--out", str(stats)]  # fmt: skip
    assert cli.main(argv) == 0
    doc = json.loads(stats.read_text())
    assert doc["NSeries"] == 1, doc
    assert doc["Provenance"]["Parameters"]["excluded_series"][0]["path"] == str(bad), doc
    grads = tmp_path / "gradients.tsv"
    argv = ["gradients", "--series", str(full), str(bad), "--n-components", "2",
            "--out", str(grads)]  # fmt: skip
    assert cli.main(argv) == 0
    gdoc = json.loads(grads.with_suffix(".json").read_text())
    assert gdoc["NSeries"] == 1 and gdoc["ExcludedSeries"][0]["path"] == str(bad)

    # FC features: the subject without a usable run has no row.
    assert fc_from_series_files([good, bad]).subjects.tolist() == ["01"]

    # Resampling the excluded series alone is refused, naming it.
    _refused(
        capsys,
        ["resample", "--input", str(bad), "--output", str(tmp_path / "r" / "x.tsv"),
         "--tr-out", "4.0"],
        tmp_path / "r", bad, r"the func stage excluded this run: only 0 of 40",
    )  # fmt: skip

    # The report's functional section lists it with the reason.
    html = ReportBuilder(tmp_path / "results").section_func()
    assert "Runs excluded by the functional stage" in html
    assert bad.with_suffix(".json").name in html and "frames remain after censoring" in html


# ---- time series, multi-TR ------------------------------------------------------------


def _series(tmp_path: Path, data: np.ndarray, tr: float = 2.0) -> Path:
    path = tmp_path / "in" / "sub-01_task-rest_desc-denoised_timeseries.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"ROI_{i + 1}" for i in range(data.shape[1])]
    pd.DataFrame(data, columns=names).to_csv(path, sep="\t", index=False, na_rep="n/a")
    path.with_suffix(".json").write_text(json.dumps({"RepetitionTime": tr}))
    return path


def test_resample_refuses_unreadable_series(tmp_path, capsys):
    path = tmp_path / "in" / "series.npy"
    path.parent.mkdir()
    path.write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "out"
    argv = ["resample", "--input", str(path), "--output", str(out / "x.npy"), "--tr-out", "1.0",
            "--tr-in", "2.0"]  # fmt: skip
    _refused(capsys, argv, out, path, r"cannot read time series")


def test_resample_refuses_a_series_sidecar_that_is_not_json(tmp_path, capsys):
    path = _series(tmp_path, np.random.default_rng(0).standard_normal((50, 4)))
    path.with_suffix(".json").write_text("RepetitionTime: 2")
    out = tmp_path / "out"
    argv = ["resample", "--input", str(path), "--output", str(out / "x.tsv"), "--tr-out", "1.0"]
    _refused(capsys, argv, out, path.with_suffix(".json"), r"not valid JSON")


def test_parcels_without_voxels_stay_empty_through_packing(tmp_path):
    """Documented handling: a parcel the run does not cover is an all-NaN column in the
    denoised series; resampling keeps it NaN and packing marks it invalid (never a
    fabricated signal)."""
    from brainharmony.packing import PackedSeriesDataset, pack_series

    rng = np.random.default_rng(1)
    data = rng.standard_normal((60, 5))
    data[:, 3] = np.nan  # parcel 4: no voxels in this run
    src = _series(tmp_path, data)
    resampled = tmp_path / "res" / "sub-01_series.tsv"
    argv = ["resample", "--input", str(src), "--output", str(resampled), "--tr-out", "4.0"]
    assert cli.main(argv) == 0
    back = pd.read_csv(resampled, sep="\t", na_values="n/a").to_numpy()
    assert back.shape == (30, 5)
    assert np.isnan(back[:, 3]).all() and np.isfinite(np.delete(back, 3, axis=1)).all()
    shard, index = tmp_path / "pack" / "s.npy", tmp_path / "pack" / "s.tsv"
    manifest = pd.DataFrame(
        {
            "subject": ["01"],
            "session": ["n/a"],
            "run": ["n/a"],
            "path": [str(resampled)],
            "tr": [4.0],
        }
    )
    pack_series(manifest, shard, index)
    item = PackedSeriesDataset(shard, index, window=30)[0]
    assert np.isfinite(np.asarray(item["x"])).all()
    roi_ok = np.asarray(item["roi_mask"])
    assert not roi_ok[3] and roi_ok[[0, 1, 2, 4]].all()
    assert np.asarray(item["mask"]).all()  # the frames themselves are all usable


# ---- configuration, models, checkpoints -----------------------------------------------


def test_workflow_config_with_a_wrong_type_names_key_and_file(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"datasets": {"x": {"bids_dir": "x"}}, "train": {"steps": "four"}})
    )
    capsys.readouterr()
    assert cli.main(["validate-config", str(path)]) != 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert str(path) in text and "train.steps" in text and "'four'" in text, text


def _tiny_s(folder: Path):
    """The tiny BrainHarmonix-S config (2 steps) and a 4-volume dataset for it in ``folder``."""
    from brainharmony.train.config import config_from_mapping
    from brainharmony.train.data import build_dataset
    from tests.unit.train.test_loop import TINY

    rng = np.random.default_rng(0)
    shard, index = folder / "vols.npy", folder / "vols.tsv"
    np.save(shard, rng.standard_normal((4, 16, 16, 16)).astype(np.float16))
    pd.DataFrame({"subject": list("abcd"), "session": "n/a", "offset": range(4)}).to_csv(
        index, sep="\t", index=False
    )
    doc = json.loads(json.dumps(TINY))
    doc["train"].update(steps=2)
    cfg = config_from_mapping(doc)
    return cfg, build_dataset(cfg.data, [(shard, index)])


def _model_folder(tmp_path: Path) -> Path:
    """A trained (2-step) tiny BrainHarmonix-S folder."""
    from brainharmony.train import train

    cfg, dataset = _tiny_s(tmp_path)
    train(cfg, dataset, tmp_path / "m", tmp_path / "st", progress=False)
    return tmp_path / "m"


@pytest.mark.parametrize("damage", ["missing", "truncated", "not safetensors"])
def test_damaged_model_weights_are_refused_naming_the_file(tmp_path, damage):
    from brainharmony.io import InputDataError
    from brainharmony.pipelines.embed import load_frozen

    folder = _model_folder(tmp_path)
    weights = folder / "model.safetensors"
    if damage == "missing":
        weights.unlink()
        problem = "model weights not found"
    elif damage == "truncated":
        _truncated(weights)
        problem = "cannot read the model weights"
    else:
        weights.write_bytes(b"PK\x03\x04 a zip file, not tensors")
        problem = "cannot read the model weights"
    with pytest.raises(InputDataError, match=re.escape(str(weights)) + ": " + problem):
        load_frozen(folder)


def test_damaged_model_config_is_refused_naming_the_file(tmp_path):
    from brainharmony.io import InputDataError
    from brainharmony.pipelines.embed import load_frozen

    folder = _model_folder(tmp_path)
    (folder / "config.json").write_text('{"name": "tiny_s", "kind": ')
    with pytest.raises(InputDataError, match=r"config\.json: cannot be parsed"):
        load_frozen(folder)


def test_model_yaml_with_unknown_key_or_missing_file_is_refused(tmp_path, capsys):
    from tests.unit.train.test_loop import TINY

    doc = json.loads(json.dumps(TINY))
    doc["train"]["stepz"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    argv = ["train", "--config", str(path), "--out", str(out), "--state", str(tmp_path / "st"),
            "--shard", "x.npy", "--index", "x.tsv"]  # fmt: skip
    _refused(capsys, argv, out, path, r"train\.stepz")
    argv[2] = str(tmp_path / "nope.yaml")
    _refused(capsys, argv, out, tmp_path / "nope.yaml", r"model configuration not found")


def test_damaged_checkpoint_is_set_aside_and_training_starts_over(tmp_path, caplog):
    """Documented handling: checkpoints are written atomically, so a damaged one was
    damaged afterwards; it is moved to checkpoint.pt.corrupt and the run starts over,
    ending with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from brainharmony.train import train

    (tmp_path / "ref").mkdir()
    folder = _model_folder(tmp_path / "ref")
    cfg, dataset = _tiny_s(tmp_path)
    state = tmp_path / "st"
    state.mkdir()
    (state / "checkpoint.pt").write_bytes(b"\x00" * 100)
    with caplog.at_level("WARNING"):
        result = train(cfg, dataset, tmp_path / "m", state, progress=False)
    assert result.finished and result.resumed_from == 0
    assert (state / "checkpoint.pt.corrupt").read_bytes() == b"\x00" * 100
    assert "cannot read the training checkpoint" in caplog.text
    got, ref = (
        load_file(str(tmp_path / "m" / "model.safetensors")),
        load_file(str(folder / "model.safetensors")),
    )
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
