"""Naming, planning (config -> rule options) and the atlas resource."""

import json

import numpy as np
import pandas as pd
import pytest

from brainharmony.func.naming import res_label, run_outputs, run_stem
from brainharmony.planning import func as planning
from tests.workflow_config import with_schema_defaults


def settings_from_config(partial):
    """The func plan of a partial config (the schema's defaults filled in)."""
    return planning.settings_from_config(with_schema_defaults(partial))


def test_names():
    assert run_stem("01", None, "rest", None) == "sub-01_task-rest"
    assert run_stem("01", "2", "rest", "1") == "sub-01_ses-2_task-rest_run-1"
    assert run_stem("01", "n/a", "rest", "n/a") == "sub-01_task-rest"
    assert res_label(2) == "2" and res_label(2.5) == "2p5"
    out = run_outputs("results/func/ds", "01", "1", "rest", None, space="S", resolution_mm=3)
    assert str(out.timeseries) == (
        "results/func/ds/sub-01/ses-1/func/"
        "sub-01_ses-1_task-rest_space-S_atlas-Schaefer400_desc-denoised_timeseries.tsv"
    )
    assert out.preproc_bold.name.endswith("_space-S_res-3_desc-preproc_bold.nii.gz")


def test_settings_from_config_defaults_and_options():
    plan = settings_from_config({"datasets": {}})
    assert plan.backend == "native" and plan.strategy == "18P"
    assert plan.band == (0.01, 0.1) and plan.coreg == planning.DEFAULT_COREG == "bbr"
    assert "--coreg bbr" in planning.native_options(plan)
    assert settings_from_config({"func": {"coreg": "rigid"}}).coreg == "mi"
    with pytest.raises(ValueError, match="coreg"):
        settings_from_config({"func": {"coreg": "flirt"}})
    opts = planning.denoise_options(plan)
    assert "--strategy 18P" in opts and "--high-pass 0.01" in opts
    plan = settings_from_config(
        {"func": {"band": [None, 0.08], "fd_threshold": None, "strategy": "36P", "detrend": False}}
    )
    opts = planning.denoise_options(plan)
    assert "--high-pass none" in opts and "--fd-threshold none" in opts
    assert "--no-detrend" in opts
    with pytest.raises(ValueError, match="strategy"):
        settings_from_config({"func": {"strategy": "48P"}})
    with pytest.raises(ValueError, match="backend"):
        settings_from_config({"func": {"backend": "afni"}})
    with pytest.raises(ValueError, match="band"):
        settings_from_config({"func": {"band": [0.01]}})


def test_coreg_defaults_are_defined_once():
    """Schema, plan, NativeSettings, CoregSettings and CLI defaults of the coregistration."""
    from pathlib import Path

    import yaml

    from brainharmony.func.pipeline import NativeSettings
    from brainharmony.func.register import CoregSettings
    from brainharmony.pipelines import func as cli

    schema = yaml.safe_load(
        (Path(__file__).parents[3] / "workflow/schemas/config.schema.yaml").read_text()
    )
    block = schema["properties"]["func"]["properties"]
    plan, native, coreg = planning.FuncPlan(), NativeSettings(), CoregSettings()
    assert block["coreg"]["default"] == plan.coreg == native.coreg == planning.DEFAULT_COREG
    for key, attr in (
        ("coreg_min_dice", "min_dice"),
        ("coreg_max_bbr_cost", "max_bbr_cost"),
        ("coreg_min_nmi", "min_nmi"),
    ):
        assert block[key]["default"] == getattr(plan, key) == getattr(native, key)
        assert getattr(native.coreg_settings(), attr) == getattr(coreg, attr)
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    required = ["--bold", "b", "--t1w-to-template", "x", "--subject", "01", "--out-dir", "o"]
    args = parser.parse_args(["native", *required, "--atlas", "a", "--atlas-labels", "l"])
    assert args.coreg == plan.coreg and args.coreg_min_dice == plan.coreg_min_dice
    assert args.coreg_max_bbr_cost == plan.coreg_max_bbr_cost
    assert args.coreg_min_nmi == plan.coreg_min_nmi


def test_fmriprep_options_and_paths():
    plan = settings_from_config(
        {
            "func": {
                "backend": "fmriprep",
                "fmriprep": {
                    "runner": "apptainer",
                    "image": "/x/fmriprep.sif",
                    "license": "/x/license.txt",
                    "extra_args": "--dummy-scans 2",
                },
            }
        }
    )
    opts = planning.fmriprep_options(plan)
    assert "--runner apptainer" in opts and "--image /x/fmriprep.sif" in opts
    assert "--output-spaces MNI152NLin2009cAsym:res-2" in opts
    assert "--extra '--dummy-scans 2'" in opts
    assert plan.space == "MNI152NLin2009cAsym"
    deriv = settings_from_config(
        {
            "func": {
                "backend": "fmriprep-derivatives",
                "fmriprep": {"derivatives": {"ds": "/data/fmriprep"}},
            }
        }
    )
    assert planning.fmriprep_root(deriv, "ds", {}) == "/data/fmriprep"
    assert planning.fmriprep_root(deriv, "other", {}) == "results/fmriprep/other"


def test_runs_from_scans_tsv(tmp_path):
    scans = pd.DataFrame(
        {
            "dataset": ["ds", "ds"],
            "subject": ["01", "02"],
            "session": ["n/a", "1"],
            "run": ["n/a", "2"],
            "t1w": ["/a.nii.gz", "/b.nii.gz"],
            "t1w_session": ["n/a", "1"],
            "bold": ["/a_bold.nii.gz", "/b_bold.nii.gz"],
            "bold_sidecar": ["n/a", "/b.json"],
            "tr": ["2.0", "0.8"],
            "n_volumes": ["100", "200"],
        }
    )
    path = tmp_path / "scans.tsv"
    scans.to_csv(path, sep="\t", index=False)
    rows = planning.runs(path)
    assert [r.fstem for r in rows] == ["sub-01_task-rest", "sub-02_ses-1_task-rest_run-2"]
    assert rows[1].fdir == "sub-02/ses-1" and rows[1].tr == 0.8
    assert rows[0].bold_sidecar is None and rows[0].session is None
    assert planning.run_for(path, "sub-02_ses-1_task-rest_run-2").bold == "/b_bold.nii.gz"
    with pytest.raises(ValueError, match="no BOLD run"):
        planning.run_for(path, "sub-03_task-rest")
    assert "--session 1" in planning.run_options(rows[1])


def test_atlas_resource_offline(tmp_path):
    from brainharmony.func.atlas_resource import build_atlas, read_atlas

    files = build_atlas(tmp_path, 6.0)
    img, table = read_atlas(files.image, files.labels)
    assert sorted(np.unique(np.asarray(img.dataobj))[1:]) == list(range(1, 401))
    assert table.columns.tolist()[:4] == ["index", "name", "network", "hemisphere"]
    side = json.loads(files.sidecar.read_text())
    assert side["NumberOfParcels"] == 400 and "Provenance" in side and "Atlas" in side


def test_atlas_resource_tissue_masks_equal_the_computed_ones(tmp_path):
    """The tissue masks written once with the atlas are what every run would compute."""
    from brainharmony.func.atlas_resource import build_atlas, read_atlas, read_tissue_masks
    from brainharmony.func.confounds import tissue_masks
    from brainharmony.io import InputDataError

    files = build_atlas(tmp_path / "a", 6.0)
    img, _ = read_atlas(files.image, files.labels)
    masks, report = read_tissue_masks(files.tissues, img)
    expected, expected_report = tissue_masks(np.asarray(img.affine, float), img.shape[:3])
    assert report == expected_report
    for name in ("brain", "gm", "wm", "csf"):
        assert masks[name].dtype == bool and masks[name].any()
        np.testing.assert_array_equal(masks[name], expected[name])
    # Another grid's masks, a missing sidecar and a damaged file are refused by name.
    other = build_atlas(tmp_path / "b", 8.0)
    with pytest.raises(InputDataError, match="do not match the atlas grid") as err:
        read_tissue_masks(other.tissues, img)
    assert str(other.tissues) in str(err.value)
    files.tissues_sidecar.unlink()
    with pytest.raises(InputDataError, match="not found"):
        read_tissue_masks(files.tissues, img)
    other.tissues.write_bytes(other.tissues.read_bytes()[:100])
    with pytest.raises(InputDataError, match="cannot read"):
        read_tissue_masks(other.tissues, img)


def test_atlas_lookup_never_downloads(tmp_path, monkeypatch):
    """``auto`` with nothing on disk rebuilds; nilearn's fetcher is never called."""
    import nilearn.datasets

    from brainharmony.func.atlas_resource import build_atlas

    def no_download(*args, **kwargs):
        raise AssertionError("the atlas lookup must not download")

    monkeypatch.setattr(nilearn.datasets, "fetch_atlas_schaefer_2018", no_download)
    for var, sub in (("TEMPLATEFLOW_HOME", "tf"), ("NILEARN_DATA", "nl"), ("HOME", "home")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    files = build_atlas(tmp_path / "out", 6.0)
    assert "atlas-Schaefer400rebuilt" in files.image.name
    with pytest.raises(ValueError, match="source"):
        build_atlas(tmp_path, 6.0, source="nilearn")


def test_run_options_carry_the_configured_tr_range():
    """func gets ingest.tr_range, so a TR ingest accepted is never refused by func."""
    import shlex

    row = planning.RunRow(
        subject="01", session=None, run=None, task="rest", bold="b.nii.gz", bold_sidecar=None,
        t1w="t.nii.gz", t1w_session=None, tr=15.0,
    )  # fmt: skip
    text = planning.run_options(row, [0.1, 20])
    assert shlex.split(text)[-3:] == ["--tr-range", "0.1", "20.0"]
    assert "--tr-range" not in planning.run_options(row)
