"""Planning helpers of the evaluation rules: paths and arguments from the settings."""

import json
from types import SimpleNamespace

import pytest

from brainharmony.evaluate.harness import display_name
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.planning import evaluate as P

SETTINGS = settings_from_mapping(
    {
        "cohorts": {"abide1": ["abide1NYU", "abide1UCLA1"]},
        "tasks": {
            "abide1": {
                "asd": {
                    "target": "DX_GROUP",
                    "type": "classification",
                    "positive": "ASD",
                    "map": {"1": "ASD", "2": "TD"},
                }
            },
            "camcan": {"age": {"target": "age", "type": "regression"}},
        },
        "models": ["null_model", "fc_ridge", "probe_bh_f", "predictor"],
        "seeds": [0, 3],
    }
)


class _Checkpoint:
    def get(self, dataset):
        return SimpleNamespace(output=SimpleNamespace(scans=f"results/ingest/{dataset}/scans.tsv"))


def test_paths_follow_the_task_and_its_pooled_datasets():
    w = SimpleNamespace(dataset="abide1", task="asd")
    assert P.tasks(SETTINGS) == [("abide1", "asd"), ("camcan", "age")]
    assert P.scans(SETTINGS, w, _Checkpoint()) == [
        "results/ingest/abide1NYU/scans.tsv",
        "results/ingest/abide1UCLA1/scans.tsv",
    ]
    metas = P.split_metas(SETTINGS, w)
    assert metas == [
        "results/splits/abide1/asd/seed-0/splits.json",
        "results/splits/abide1/asd/seed-3/splits.json",
    ]
    assert (
        P.split_dirs(metas) == "results/splits/abide1/asd/seed-0 results/splits/abide1/asd/seed-3"
    )
    inputs = P.model_inputs(SETTINGS, w)
    assert inputs == {
        "probe_bh_f": [
            "results/embeddings/bh_f/abide1NYU.npz",
            "results/embeddings/bh_f/abide1UCLA1.npz",
        ],
        "predictor": ["results/eval/abide1/asd/predictor/predictions.tsv"],
    }
    args = P.model_args(SETTINGS, inputs)
    assert args == (
        "--embedding probe_bh_f=results/embeddings/bh_f/abide1NYU.npz "
        "--embedding probe_bh_f=results/embeddings/bh_f/abide1UCLA1.npz "
        "--external predictor=results/eval/abide1/asd/predictor/predictions.tsv"
    )
    assert P.predictions(SETTINGS) == [
        "results/eval/abide1/asd/predictions.tsv",
        "results/eval/camcan/age/predictions.tsv",
    ]
    again = settings_from_mapping(json.loads(P.settings_json(SETTINGS)))
    assert again.task("abide1", "asd").datasets == ("abide1NYU", "abide1UCLA1")


def test_predictor_lmae_is_per_fold_unless_shared():
    assert SETTINGS.predictor_lmae == "per_fold"
    yaml = "models/lmae demo.yaml"
    assert P.predictor_lmae_inputs(SETTINGS, yaml) == {"lmae_yaml": yaml}
    assert P.predictor_lmae_args(SETTINGS, yaml) == "--lmae-config 'models/lmae demo.yaml'"
    trans = settings_from_mapping({"predictor_lmae": "shared"})
    assert P.predictor_lmae_inputs(trans, yaml) == {"lmae": "results/models/lmae/model.safetensors"}
    assert P.predictor_lmae_args(trans, yaml) == "--init results/models/lmae"


def test_finetune_entries_get_their_model_folder_and_data():
    settings = settings_from_mapping(
        {
            "tasks": SETTINGS.to_dict()["tasks"],
            "cohorts": {"abide1": ["abide1NYU", "abide1UCLA1"]},
            "models": ["null_model", "finetune_harmonizer", "finetune_bh_f"],
        }
    )
    w = SimpleNamespace(dataset="abide1", task="asd")
    ms = {"abide1NYU": 2000, "abide1UCLA1": 3000}
    inputs = P.model_inputs(settings, w, native_ms=ms.__getitem__)
    assert inputs == {
        "finetune_harmonizer": [
            "results/models/harmonizer/model.safetensors",
            "results/models/harmonizer/config.json",
        ],
        "finetune_harmonizer__tokens": [
            "results/embeddings/tokens/abide1NYU/index.tsv",
            "results/embeddings/tokens/abide1UCLA1/index.tsv",
        ],
        "finetune_bh_f": [
            "results/models/bh_f/model.safetensors",
            "results/models/bh_f/config.json",
        ],
        "finetune_bh_f__shards": [
            "results/multitr/abide1NYU/abide1NYU_tr-2000_series.npy",
            "results/multitr/abide1NYU/abide1NYU_tr-2000_index.tsv",
            "results/multitr/abide1UCLA1/abide1UCLA1_tr-3000_series.npy",
            "results/multitr/abide1UCLA1/abide1UCLA1_tr-3000_index.tsv",
        ],
        "finetune_bh_f__scaling": ["results/multitr/atlas-Schaefer400_desc-robust_scaling.json"],
    }
    assert P.model_args(settings, inputs) == (
        "--finetune finetune_harmonizer=results/models/harmonizer "
        "--finetune finetune_bh_f=results/models/bh_f "
        "--ft-shard results/multitr/abide1NYU/abide1NYU_tr-2000_series.npy "
        "results/multitr/abide1NYU/abide1NYU_tr-2000_index.tsv "
        "--ft-shard results/multitr/abide1UCLA1/abide1UCLA1_tr-3000_series.npy "
        "results/multitr/abide1UCLA1/abide1UCLA1_tr-3000_index.tsv "
        "--scaling results/multitr/atlas-Schaefer400_desc-robust_scaling.json "
        "--ft-tokens results/embeddings/tokens/abide1NYU/index.tsv "
        "results/embeddings/tokens/abide1UCLA1/index.tsv"
    )
    other = settings_from_mapping({**settings.to_dict(), "models": ["finetune_bh_s"]})
    with pytest.raises(ValueError, match="outside it"):
        P.model_inputs(other, w, native_ms=ms.__getitem__)


def _external_config(external, models=("null_model", "fc_ridge", "external_svm")):
    return {
        "datasets": {"abide1NYU": {}, "abide1UCLA1": {}, "camcan": {}},
        "evaluate": {
            "cohorts": {"abide1": ["abide1NYU", "abide1UCLA1"]},
            "tasks": SETTINGS.to_dict()["tasks"],
            "models": list(models),
            "external": external,
            "labels": {"external_svm": "SVM on FC (mine)"},
        },
    }


def test_external_entries_plan_their_file_and_flag():
    plan = P.plan_from_config(
        _external_config(
            {"svm": "mine/{dataset}_{task}/pred.tsv", "knn": "all preds.tsv"},
            models=("null_model", "external_svm", "external_knn", "predictor"),
        )
    )
    # the workflow's own predictor file stays; each entry becomes external_<name>
    assert plan.external == {
        "predictor": "results/eval/{dataset}/{task}/predictor/predictions.tsv",
        "external_svm": "mine/{dataset}_{task}/pred.tsv",
        "external_knn": "all preds.tsv",
    }
    w = SimpleNamespace(dataset="abide1", task="asd")
    inputs = P.model_inputs(plan.settings, w, external=plan.external)
    assert inputs == {
        "external_svm": ["mine/abide1_asd/pred.tsv"],
        "external_knn": ["all preds.tsv"],  # no placeholder: one file for every task
        "predictor": ["results/eval/abide1/asd/predictor/predictions.tsv"],
    }
    assert P.model_args(plan.settings, inputs, external=plan.external) == (
        "--external external_svm=mine/abide1_asd/pred.tsv "
        "--external 'external_knn=all preds.tsv' "
        "--external predictor=results/eval/abide1/asd/predictor/predictions.tsv"
    )
    # the settings reach the command intact (its --settings JSON), with no brace that
    # Snakemake would fill with wildcards
    assert "{dataset}" not in plan.settings_json and "{task}" not in plan.settings_json
    again = settings_from_mapping(json.loads(plan.settings_json))
    assert again.external == {"svm": "mine/{dataset}_{task}/pred.tsv", "knn": "all preds.tsv"}
    # row labels: evaluate.labels if given, else the prefix rule's "<name> (ext)"
    assert display_name("external_svm", plan.settings) == "SVM on FC (mine)"
    assert display_name("external_knn", plan.settings) == "knn (ext)"


@pytest.mark.parametrize(
    ("external", "models", "message"),
    [
        # an external_<x> row without its file
        (
            {},
            ("null_model", "external_svm"),
            r"'external_svm' needs its predictions file under evaluate\.external\.svm",
        ),
        (
            {"sv": "p.tsv"},
            ("external_svm", "external_sv"),
            r"evaluate\.external\.svm .*evaluate\.external has \['sv'\]",
        ),
        # an entry nobody listed in models (refused, not ignored: likely a typo)
        (
            {"svm": "p.tsv", "smv": "q.tsv"},
            ("null_model", "external_svm"),
            r"evaluate\.external\.smv: model 'external_smv' is not in evaluate\.models",
        ),
        # placeholders other than {dataset} and {task}
        (
            {"svm": "preds/{dataset}/{seed}.tsv"},
            ("external_svm",),
            r"evaluate\.external\.svm: unknown placeholder\(s\) \['\{seed\}'\]",
        ),
        ({"svm": "preds/{}.tsv"}, ("external_svm",), r"evaluate\.external\.svm: unknown"),
        ({"svm": "preds/{task.tsv"}, ("external_svm",), r"evaluate\.external\.svm: .*not a valid"),
        ({"SVM": "p.tsv"}, ("external_svm",), r"evaluate\.external\.SVM: the name must be"),
    ],
)
def test_external_entries_are_refused_naming_the_key(external, models, message):
    with pytest.raises(ValueError, match=message):
        P.plan_from_config(_external_config(external, models))


def test_external_row_without_a_file_is_refused_by_the_input_function():
    settings = settings_from_mapping({**SETTINGS.to_dict(), "models": ["external_svm"]})
    w = SimpleNamespace(dataset="abide1", task="asd")
    with pytest.raises(ValueError, match=r"evaluate\.external\.svm"):
        P.model_inputs(settings, w)
