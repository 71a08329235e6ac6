"""Planning helpers of the evaluation rules: paths and arguments from the settings."""

import json
from types import SimpleNamespace

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
