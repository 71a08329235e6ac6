"""Planning with a ``parcellated`` dataset (released parcel series, no images).

Its series come from rule ``parcel_series`` where the func stage's would; the
anatomy and functional stages plan nothing for it; the steps that need T1w refuse a
pretraining set without T1w, and evaluation leaves the T1w models out of its tasks.
"""

from types import SimpleNamespace

import pandas as pd
import pytest

from brainharmony import planning
from brainharmony.config import validate_config
from brainharmony.planning import evaluate as E
from brainharmony.planning import func as F
from brainharmony.planning import multitr as M
from tests.workflow_config import SCHEMA, with_schema_defaults

MODELS = ["null_model", "fc_ridge", "probe_bh_f", "probe_harmonizer", "finetune_bh_f"]


def _config(tmp_path, **over):
    config = {
        "datasets": {
            "site": {"bids_dir": str(tmp_path / "bids")},
            "ukb": {"kind": "parcellated", "run_table": str(tmp_path / "runs.tsv")},
        },
        "evaluate": {
            "cohorts": {"both": ["site", "ukb"]},
            "tasks": {
                "ukb": {"age": {"target": "age", "type": "regression"}},
                "both": {"age": {"target": "age", "type": "regression"}},
            },
            "models": MODELS,
        },
        **over,
    }
    return with_schema_defaults(config)


class _Checkpoint:
    def __init__(self, root):
        self.root = root

    def get(self, dataset):
        return SimpleNamespace(output=SimpleNamespace(scans=str(self.root / f"{dataset}.tsv")))


def _scans(path, rows):
    cols = ["dataset", "subject", "session", "run", "t1w", "t1w_session", "bold"]
    cols += ["bold_sidecar", "tr", "n_volumes", "duration_s", "n_slices", "has_slice_timing"]
    frame = pd.DataFrame([[*r, "n/a", 0.735, 490, 360.15, 0, False] for r in rows], columns=cols)
    frame.to_csv(path, sep="\t", index=False)


def test_schema_needs_run_table_for_parcellated_and_bids_dir_otherwise(tmp_path):
    ok = {"datasets": {"ukb": {"kind": "parcellated", "run_table": "runs.tsv"}}}
    validated = validate_config(ok, SCHEMA)
    assert validated["datasets"]["ukb"]["n_rois"] == 400
    with pytest.raises(Exception, match="run_table"):
        validate_config({"datasets": {"ukb": {"kind": "parcellated"}}}, SCHEMA)
    with pytest.raises(Exception, match="bids_dir"):
        validate_config({"datasets": {"d": {"task": "rest"}}}, SCHEMA)


def test_plan_routes_the_parcellated_series_and_skips_anat_and_func(tmp_path):
    plan = planning.from_config(_config(tmp_path))
    assert plan.ingest.parcellated == ["ukb"] and plan.ingest.bids_datasets == ["site"]
    assert plan.ingest.source_option("ukb") == f"--run-table {tmp_path}/runs.tsv --n-rois 400"
    assert plan.ingest.source_option("site") == f"--bids-dir {tmp_path}/bids"
    assert plan.ingest.source_path("ukb") == f"{tmp_path}/runs.tsv"
    ckpt = _Checkpoint(tmp_path)
    _scans(tmp_path / "ukb.tsv", [["ukb", "1001", "2", "n/a", "n/a", "n/a", "/d/a.npy"]])
    _scans(tmp_path / "site.tsv", [["site", "01", "n/a", "1", "/b/t1.nii.gz", "n/a", "/b/b.nii"]])
    tasks = plan.ingest.tasks
    assert M.denoised_series("ukb", ckpt, plan.func, tasks) == [
        "results/ingest/ukb/series/sub-1001/ses-2/func/"
        "sub-1001_ses-2_task-rest_atlas-Schaefer400_desc-released_timeseries.tsv"
    ]
    (site,) = M.denoised_series("site", ckpt, plan.func, tasks)
    assert site.startswith("results/func/site/sub-01/func/sub-01_task-rest_run-1_space-")
    func_targets = F.targets(["site", "ukb"], ckpt, plan.func, tasks)
    assert func_targets and not any("ukb" in t for t in func_targets)
    assert plan.multitr.t1_pretrain == ("site",)
    assert plan.multitr.volume_shards == ["results/multitr/site/site_T1w_volumes.npy"]


def test_t1_steps_refuse_a_pretraining_set_without_t1(tmp_path):
    plan = planning.from_config(_config(tmp_path, pretrain={"datasets": ["ukb"]}))
    with pytest.raises(ValueError, match=r"BrainHarmonix-S needs T1w images.*\(ukb\) is of kind"):
        plan.multitr.volume_shards  # noqa: B018 (the property raises)
    with pytest.raises(ValueError, match="The Harmonizer needs T1w"):
        M.require_t1_pretrain(plan.multitr, "The Harmonizer")
    # the series shards of BrainHarmonix-F, the LMAE and the scaling statistics stay
    assert plan.multitr.pretrain == ("ukb",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_rois": 200}, r"datasets.ukb.n_rois is 200, but the workflow's atlas is Schaefer-400"),
        ({"demo": True}, "demo: true makes a BIDS dataset"),
        ({"bids_dir": "x"}, "bids_dir is for kind bids"),
    ],
)
def test_impossible_parcellated_settings_are_refused(tmp_path, change, message):
    config = _config(tmp_path)
    config["datasets"]["ukb"].update(change)
    with pytest.raises(ValueError, match=message):
        planning.from_config(config)


def test_evaluation_leaves_the_t1_models_out_where_no_dataset_has_t1(tmp_path):
    plan = planning.from_config(_config(tmp_path))
    settings, parc = plan.evaluate.settings, plan.ingest.parcellated
    only = SimpleNamespace(dataset="ukb", task="age")
    kept = ["null_model", "fc_ridge", "probe_bh_f", "finetune_bh_f"]
    assert E.models_for(settings, only, parc) == kept
    # the models left out go to `evaluate --not-run` with the reason the tables quote
    left = E.models_not_run(settings, only, parc)
    assert list(left) == [m for m in MODELS if m not in kept]
    assert all("needs T1w images" in r and "ukb/age (ukb)" in r for r in left.values())
    args = E.not_run_args(left)
    assert args.count("--not-run ") == len(left)
    assert "--not-run 'probe_harmonizer=needs T1w images" in args
    inputs = E.model_inputs(settings, only, native_ms=lambda d: 735, parcellated=parc)
    assert set(inputs) == {
        "probe_bh_f", "finetune_bh_f", "finetune_bh_f__shards", "finetune_bh_f__scaling"
    }  # fmt: skip
    assert inputs["probe_bh_f"] == ["results/embeddings/bh_f/ukb.npz"]
    assert "results/multitr/ukb/ukb_tr-735_series.npy" in inputs["finetune_bh_f__shards"]
    # a cohort with a BIDS dataset keeps them, on that dataset's embeddings only
    both = SimpleNamespace(dataset="both", task="age")
    assert E.models_for(settings, both, parc) == MODELS
    assert E.models_not_run(settings, both, parc) == {}
    inputs = E.model_inputs(settings, both, native_ms=lambda d: 735, parcellated=parc)
    assert inputs["probe_harmonizer"] == ["results/embeddings/harmonizer/site.npz"]
    assert inputs["probe_bh_f"] == [f"results/embeddings/bh_f/{d}.npz" for d in ("site", "ukb")]
    assert len(inputs["finetune_bh_f__shards"]) == 4
