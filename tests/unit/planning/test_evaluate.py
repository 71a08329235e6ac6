"""Planning helpers of the evaluation rules: paths and arguments from the settings."""

import json
from types import SimpleNamespace

import pytest

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
