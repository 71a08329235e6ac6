"""``train.variants``: names, collisions, YAML kinds, the jobs' inputs and options, and the
evaluation rows they add (probe files, T1w needs, row labels)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from brainharmony import planning
from brainharmony.config import validate_config
from brainharmony.evaluate.harness import display_name
from brainharmony.evaluate.settings import settings_from_mapping
from brainharmony.planning import evaluate as E
from brainharmony.planning import train as T
from tests.workflow_config import SCHEMA, with_schema_defaults

REPO = Path(__file__).resolve().parents[3]

VARIANTS = {
    "brain_jepa": {
        "role": "bh_f",
        "model": "models/brain_jepa_demo.yaml",
        "multitr": "native",
        "label": "Brain-JEPA",
    },
    "gradonly": {"role": "bh_f", "set": ["model.use_harmonics=false"]},
    "nomtr": {"role": "bh_f", "multitr": "native", "label": "BrainHarmonix-F (no multi-TR)"},
    "hubs32": {"role": "harmonizer", "set": ["model.n_hubs=32"], "label": "BH (N_H = 32)"},
}


def _config(tmp_path: Path, variants=None, models=None, **over) -> dict:
    config = {
        "datasets": {
            "site": {"bids_dir": str(tmp_path / "bids")},
            "ukb": {"kind": "parcellated", "run_table": str(tmp_path / "runs.tsv")},
        },
        "pretrain": {"datasets": ["site"]},
        "train": {"variants": VARIANTS if variants is None else variants},
        "evaluate": {
            "tasks": {
                "site": {"age": {"target": "age", "type": "regression"}},
                "ukb": {"age": {"target": "age", "type": "regression"}},
            },
            "models": models
            or ["null_model", "probe_bh_f", "probe_brain_jepa", "probe_nomtr", "probe_hubs32"],
        },
        **over,
    }
    return with_schema_defaults(config)


def _plan(tmp_path: Path, **kw):
    return planning.from_config(_config(tmp_path, **kw), str(REPO))


class _Checkpoint:
    def __init__(self, root: Path):
        self.root = root

    def get(self, dataset):
        return SimpleNamespace(output=SimpleNamespace(scans=str(self.root / f"{dataset}.tsv")))


def _scans(path: Path, tr: float) -> None:
    cols = ["dataset", "subject", "session", "run", "t1w", "t1w_session", "bold"]
    cols += ["bold_sidecar", "tr", "n_volumes", "duration_s", "n_slices", "has_slice_timing"]
    rows = [["site", "01", "n/a", "1", "t1.nii.gz", "n/a", "b.nii.gz", "n/a", tr, 490, 360, 0, 0]]
    pd.DataFrame(rows, columns=cols).to_csv(path, sep="\t", index=False)


# --------------------------------------------------------------------------- config


def test_the_schema_takes_variants_and_refuses_unknown_keys(tmp_path):
    validate_config(_config(tmp_path), SCHEMA)
    bad = _config(tmp_path, variants={"x": {"role": "bh_f", "steps": 3}})
    with pytest.raises(Exception, match="steps"):
        validate_config(bad, SCHEMA)


def test_a_variant_defaults_to_its_roles_yaml_and_its_name_as_label(tmp_path):
    plan = _plan(tmp_path).train
    gradonly = plan.variants["gradonly"]
    assert gradonly.model == plan.models["bh_f"] == "models/bh_f_demo.yaml"
    assert (gradonly.label, gradonly.multitr, gradonly.overrides) == (
        "gradonly",
        "all",
        ("model.use_harmonics=false",),
    )
    assert plan.variants["brain_jepa"].model == "models/brain_jepa_demo.yaml"
    assert plan.variant_names("harmonizer") == ["hubs32"]
    assert plan.variant_names("bh_f") == ["brain_jepa", "gradonly", "nomtr"]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"bh_f": {"role": "bh_f"}}, r"train\.variants\.bh_f: 'bh_f' is taken"),
        ({"harmonizer": {"role": "bh_f"}}, r"train\.variants\.harmonizer: 'harmonizer' is taken"),
        ({"tokens": {"role": "bh_f"}}, r"train\.variants\.tokens: 'tokens' is taken"),
        ({"bh_f_roisim": {"role": "bh_f"}}, r"'bh_f_roisim' is taken"),
        ({"Big": {"role": "bh_f"}}, r"train\.variants\.Big: a variant name is lower case"),
        ({"s2": {"role": "bh_s"}}, r"train\.variants\.s2\.role: one of \['bh_f', 'harmonizer'\]"),
        ({"h": {"role": "harmonizer", "multitr": "native"}}, r"h\.multitr: only a bh_f"),
        ({"f": {"role": "bh_f", "set": ["model.dim"]}}, r"f\.set: expected SECTION\.KEY=VALUE"),
        ({"f": {"role": "bh_f", "multitr": "some"}}, r"f\.multitr: one of \['all', 'native'\]"),
    ],
)
def test_bad_variants_stop_the_planning_naming_the_entry(tmp_path, variants, message):
    with pytest.raises(ValueError, match=message):
        _plan(tmp_path, variants=variants, models=["null_model"])


def test_a_variant_yaml_of_the_wrong_kind_or_missing_is_refused(tmp_path):
    wrong = {"h": {"role": "harmonizer", "model": "models/bh_f_demo.yaml"}}
    with pytest.raises(
        ValueError,
        match=r"train\.variants\.h\.model: .*bh_f_demo\.yaml is a "
        r"'bh_f' model; a harmonizer variant needs one of \['harmonizer'\]",
    ):
        _plan(tmp_path, variants=wrong, models=["null_model"])
    missing = {"f": {"role": "bh_f", "model": "models/nowhere.yaml"}}
    with pytest.raises(ValueError, match=r"train\.variants\.f\.model: models/nowhere\.yaml not"):
        _plan(tmp_path, variants=missing, models=["null_model"])


# --------------------------------------------------------------------------- outputs


def test_outputs_pattern_and_train_all_targets(tmp_path):
    plan = _plan(tmp_path).train
    assert plan.variant_outputs("nomtr")["weights"] == "results/models/nomtr/model.safetensors"
    pattern = plan.variant_pattern()
    for name in VARIANTS:
        assert re.fullmatch(pattern, name)
    for other in ("bh_f", "harmonizer", "tokens", "nomtr2"):
        assert not re.fullmatch(pattern, other)
    assert not re.fullmatch(plan.variant_pattern("bh_s"), "bh_s")  # no variant: no match
    targets = plan.variant_targets(["site", "ukb"], ["site"])
    assert "results/embeddings/brain_jepa/ukb.npz" in targets  # F features: every dataset
    assert "results/embeddings/hubs32/site.npz" in targets
    assert "results/embeddings/hubs32/ukb.npz" not in targets  # no T1w: no token files
    assert "results/models/hubs32/config.json" in targets


def test_training_inputs_native_or_every_tr_and_options(tmp_path):
    plan = _plan(tmp_path)
    _scans(tmp_path / "site.tsv", 0.735)
    ckpt = _Checkpoint(tmp_path)
    tokens = "results/embeddings/tokens/{dataset}/index.tsv"
    args = (plan.multitr, plan.geometry, ckpt, tokens)
    every = T.variant_train_inputs(plan.train, "gradonly", *args)
    native = T.variant_train_inputs(plan.train, "nomtr", *args)
    ms = [re.search(r"tr-(\d+)_series", s).group(1) for s in every["shards"]]
    assert ms == ["735", "1470", "2205", "2940"]
    assert native["shards"] == ["results/multitr/site/site_tr-735_series.npy"]
    assert native["indexes"] == ["results/multitr/site/site_tr-735_index.tsv"]
    assert native["scaling"] == plan.multitr.scaling_stats
    box = ([160, 192, 160], 2.0)
    f_opts = T.variant_train_args(plan.train, "gradonly", every, plan.geometry, *box)
    assert f"--set model.harmonics={plan.geometry.harmonics_table}" in f_opts
    assert f_opts.endswith("--set model.use_harmonics=false")  # the variant's own set wins
    assert f_opts.count("--shard ") == 4 and "--scaling " in f_opts
    jepa_in = T.variant_train_inputs(plan.train, "brain_jepa", *args)
    jepa = T.variant_train_args(plan.train, "brain_jepa", jepa_in, plan.geometry, *box)
    assert "model.harmonics" not in jepa  # Brain-JEPA has no harmonics table
    assert f"--set model.gradients={plan.geometry.group_gradients}" in jepa
    h_in = T.variant_train_inputs(plan.train, "hubs32", *args)
    assert h_in == {"tokens": ["results/embeddings/tokens/site/index.tsv"]}
    h_opts = T.variant_train_args(plan.train, "hubs32", h_in, plan.geometry, *box)
    assert h_opts == (
        "--index results/embeddings/tokens/site/index.tsv "
        "--set 'model.s_grid=[5, 6, 5]' --set model.n_hubs=32"
    )


def test_embedding_inputs_and_commands(tmp_path):
    plan = _plan(tmp_path).train
    tokens = "results/embeddings/tokens/{dataset}/index.tsv"
    native = {"series": "s.npy", "index": "s.tsv"}
    f_in = T.variant_embed_inputs(plan, "brain_jepa", "ukb", native, "sc.json", tokens, ["ukb"])
    assert f_in == {"series": "s.npy", "index": "s.tsv", "scaling": "sc.json"}
    assert T.variant_embed_args(plan, "brain_jepa", f_in, "out.npz") == (
        "f --f-model results/models/brain_jepa --series-shard s.npy --series-index s.tsv "
        "--scaling sc.json --out-f out.npz"
    )
    h_in = T.variant_embed_inputs(plan, "hubs32", "site", {}, "sc.json", tokens, ["ukb"])
    assert T.variant_embed_args(plan, "hubs32", h_in, "o.npz") == (
        "harmonizer --model results/models/hubs32 --tokens-index "
        "results/embeddings/tokens/site/index.tsv --out o.npz"
    )
    with pytest.raises(ValueError, match=r"hubs32: a Harmonizer variant .* 'ukb' has no T1w"):
        T.variant_embed_inputs(plan, "hubs32", "ukb", {}, "sc.json", tokens, ["ukb"])


# --------------------------------------------------------------------------- evaluation


def test_rows_get_the_variants_features_and_labels(tmp_path):
    plan = _plan(tmp_path)
    ev = plan.evaluate
    assert ev.embeddings["probe_nomtr"] == "results/embeddings/nomtr/{d}.npz"
    assert "probe_hubs32" in ev.needs_t1 and "probe_nomtr" not in ev.needs_t1
    assert display_name("probe_brain_jepa", ev.settings) == "Brain-JEPA (LP)"
    assert display_name("probe_hubs32", ev.settings) == "BH (N_H = 32) (LP)"
    assert display_name("probe_bh_f", ev.settings) == "BrainHarmonix-F (LP)"  # unchanged
    wc = SimpleNamespace(dataset="site", task="age")
    files = E.model_inputs(ev.settings, wc, embeddings=ev.embeddings, needs_t1=ev.needs_t1)
    assert files["probe_brain_jepa"] == ["results/embeddings/brain_jepa/site.npz"]
    assert files["probe_hubs32"] == ["results/embeddings/hubs32/site.npz"]
    args = E.model_args(ev.settings, files, embeddings=ev.embeddings)
    assert "--embedding probe_nomtr=results/embeddings/nomtr/site.npz" in args
    # a task with only parcellated data leaves the Harmonizer variant's row out
    ukb = SimpleNamespace(dataset="ukb", task="age")
    kept = E.models_for(ev.settings, ukb, plan.ingest.parcellated, ev.needs_t1)
    assert "probe_hubs32" not in kept and "probe_brain_jepa" in kept
    # the labels travel in the commands' settings JSON (tables, report)
    again = settings_from_mapping(ev.settings.to_dict())
    assert display_name("probe_nomtr", again) == "BrainHarmonix-F (no multi-TR) (LP)"


def test_evaluate_labels_win_and_a_probe_without_features_is_refused(tmp_path):
    config = _config(tmp_path)
    config["evaluate"]["labels"] = {"probe_nomtr": "Single-TR F (LP)"}
    plan = planning.from_config(config, str(REPO))
    assert display_name("probe_nomtr", plan.evaluate.settings) == "Single-TR F (LP)"
    with pytest.raises(
        ValueError,
        match=r"evaluate\.models: 'probe_nohubs' has no features .* "
        r"train\.variants entry 'nohubs'",
    ):
        _plan(tmp_path, models=["null_model", "probe_nohubs"])
    with pytest.raises(Exception, match=r"evaluate\.labels"):
        settings_from_mapping({"labels": {"probe_x": ""}})


def test_a_brainlm_variant_reads_native_shards_and_no_geometry_table(tmp_path):
    """BrainLM (kind brainlm, role bh_f): the native-TR shards and the scaling statistics,
    no harmonics or gradients table (its position is the parcels' coordinates), embedded
    by ``embed f``; a Harmonizer variant cannot take its YAML."""
    lm = {"brainlm": {"role": "bh_f", "model": "models/brainlm_demo.yaml",
                      "multitr": "native", "label": "BrainLM"}}  # fmt: skip
    plan = _plan(tmp_path, variants=lm, models=["null_model", "probe_brainlm"])
    _scans(tmp_path / "site.tsv", 0.735)
    tokens = "results/embeddings/tokens/{dataset}/index.tsv"
    args = (plan.multitr, plan.geometry, _Checkpoint(tmp_path), tokens)
    files = T.variant_train_inputs(plan.train, "brainlm", *args)
    assert files == {
        "shards": ["results/multitr/site/site_tr-735_series.npy"],
        "indexes": ["results/multitr/site/site_tr-735_index.tsv"],
        "scaling": plan.multitr.scaling_stats,
    }
    opts = T.variant_train_args(plan.train, "brainlm", files, plan.geometry, [160, 192, 160], 2.0)
    assert opts == (
        "--shard results/multitr/site/site_tr-735_series.npy "
        "--index results/multitr/site/site_tr-735_index.tsv "
        f"--scaling {plan.multitr.scaling_stats}"
    )
    native = {"series": "s.npy", "index": "s.tsv"}
    f_in = T.variant_embed_inputs(plan.train, "brainlm", "ukb", native, "sc.json", tokens, ["ukb"])
    assert T.variant_embed_args(plan.train, "brainlm", f_in, "o.npz") == (
        "f --f-model results/models/brainlm --series-shard s.npy --series-index s.tsv "
        "--scaling sc.json --out-f o.npz"
    )
    assert display_name("probe_brainlm", plan.evaluate.settings) == "BrainLM (LP)"
    wrong = {"h": {"role": "harmonizer", "model": "models/brainlm_demo.yaml"}}
    with pytest.raises(ValueError, match=r"is a 'brainlm' model; a harmonizer variant needs"):
        _plan(tmp_path, variants=wrong, models=["null_model"])
