"""Config validation: defaults, unknown keys named, wrong types named."""

from pathlib import Path

import pytest
import yaml

from brainharmony.config import ConfigError, load_config, load_yaml, validate_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_points_at_demo_data():
    config = load_config(REPO / "config" / "demo.yaml")
    assert set(config["datasets"]) == {"demoA", "demoB", "demoC"}
    assert all(ds["demo"] for ds in config["datasets"].values())
    assert config["demo"]["preset"] == "default"


def test_minimal_config_gets_every_default():
    config = validate_config({"datasets": {"study": {"bids_dir": "/data/study"}}})
    ds = config["datasets"]["study"]
    assert ds == {
        "bids_dir": "/data/study",
        "kind": "bids",
        "n_rois": 400,
        "demo": False,
        "task": "rest",
        "site_column": None,
        "phenotypes": {
            "age": "number",
            "sex": "category",
            "fluid_intelligence": "number",
            "diagnosis": "category",
        },
        "exclude_subjects": [],
        "participant_label": None,
    }
    assert config["ingest"] == {
        "min_volumes": 50,
        "tr_tolerance": 0.01,
        "tr_conflict": "warn",
        "tr_range": [0.1, 10.0],
    }
    assert config["demo"]["preset"] == "default"


def test_defaults_are_not_shared_between_datasets():
    config = validate_config({"datasets": {"a": {"bids_dir": "x"}, "b": {"bids_dir": "y"}}})
    config["datasets"]["a"]["phenotypes"]["iq"] = "number"
    assert "iq" not in config["datasets"]["b"]["phenotypes"]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"datasets": {"s": {"bids_dir": "x", "tsk": "rest"}}},
            r"unknown key 'tsk' in datasets\.s",
        ),
        ({"datasets": {"s": {"bids_dir": "x", "tsk": "rest"}}}, r"did you mean 'task'"),
        ({"datsets": {"s": {"bids_dir": "x"}}}, r"unknown key 'datsets'"),
        ({"datasets": {"s": {"bids_dir": "x"}}, "ingest": {"min_vols": 3}}, r"'min_vols'"),
        ({"datasets": {"s": {"bids_dir": 3}}}, r"key 'bids_dir' at datasets\.s\.bids_dir"),
        ({"datasets": {"s": {"bids_dir": "x"}}, "ingest": {"min_volumes": "ten"}}, r"min_volumes"),
        ({"datasets": {"s": {}}}, r"'bids_dir' is a required property"),
        ({"datasets": {"a/b": {"bids_dir": "x"}}}, r"invalid name 'a/b'"),
        ({"datasets": {"s": {"bids_dir": "x", "task": "rest/../x"}}}, r"task"),
        ({"datasets": {}}, r"datasets"),
        ({"datasets": {"s": {"bids_dir": "x"}}, "demo": {"preset": "huge"}}, r"preset"),
    ],
)
def test_bad_config_names_the_key(config, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config(config)


def test_load_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: file not found"):
        load_config(tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"datasets": {"s": {"bids_dir": "x"}}, "ingset": {}}))
    with pytest.raises(ConfigError, match=r"(?s)typo\.yaml: .*unknown key 'ingset'"):
        load_config(typo)


def test_cli_validate_config(tmp_path, capsys):
    from brainharmony.cli import main

    assert main(["validate-config", str(REPO / "config" / "demo.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {"s": {"bids_dir": "x", "demo": "yes"}}}))
    assert main(["validate-config", str(bad)]) == 1
    assert "demo" in capsys.readouterr().out


# --- strict loading (issue 23, items 6 and 7) ---------------------------------------


def _yaml(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_key_names_file_line_and_key(tmp_path):
    path = _yaml(
        tmp_path,
        "datasets:\n  s:\n    bids_dir: /a\n    task: rest\n    bids_dir: /b\n",
    )
    with pytest.raises(
        ConfigError, match=r"c\.yaml: line 5: duplicate key 'bids_dir' \(first at line 3\)"
    ):
        load_config(path)


def test_duplicate_top_level_and_nested_keys_are_refused(tmp_path):
    path = _yaml(tmp_path, "datasets: {s: {bids_dir: x}}\ningest: {}\ningest: {min_volumes: 3}\n")
    with pytest.raises(ConfigError, match=r"line 3: duplicate key 'ingest'"):
        load_yaml(path)


def test_merge_keys_may_be_overridden(tmp_path):
    path = _yaml(tmp_path, "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert load_yaml(path)["other"] == {"x": 3, "y": 2}


BILLION_LAUGHS = """\
datasets:
  s:
    bids_dir: /data
    phenotypes:
      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_alias_bomb_is_refused_quickly(tmp_path):
    import time

    path = _yaml(tmp_path, BILLION_LAUGHS)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c\.yaml: YAML aliases .* alias bomb") as exc:
        load_config(path)
    assert time.perf_counter() - start < 5
    assert len(str(exc.value)) < 500


def test_alias_cycle_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"alias"):
        load_yaml(_yaml(tmp_path, "a: &x [1, *x]\n"))


def test_modest_aliases_still_load(tmp_path):
    path = _yaml(tmp_path, "base: &b {x: 1}\nuse: [*b, *b, *b]\n")
    assert load_yaml(path)["use"] == [{"x": 1}] * 3


def test_validation_refuses_an_already_expanded_bomb_without_printing_it():
    """A config that another loader (Snakemake's) expanded: refused before validation,
    with a short message (jsonschema would put the whole instance in its message)."""
    import time

    level = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9
    config = {"datasets": {"s": {"bids_dir": "/d", "phenotypes": {"i": level}}}}
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"more than .* values") as exc:
        validate_config(config)
    assert time.perf_counter() - start < 10
    assert len(str(exc.value)) < 500


@pytest.mark.parametrize(
    ("where", "config"),
    [
        ("dataset name", {"datasets": {"study\n": {"bids_dir": "x"}}}),
        ("task", {"datasets": {"s": {"bids_dir": "x", "task": "rest\n"}}}),
        (
            "cohort member",
            {"datasets": {"s": {"bids_dir": "x"}}, "evaluate": {"cohorts": {"c": ["s\n"]}}},
        ),
        (
            "model name",
            {"datasets": {"s": {"bids_dir": "x"}}, "evaluate": {"models": ["fc_ridge\n"]}},
        ),
    ],
)
def test_trailing_newline_does_not_match_a_name_pattern(where, config):
    with pytest.raises(ConfigError, match=r"\\n"):
        validate_config(config)


def test_schema_patterns_match_without_the_newline():
    validate_config({"datasets": {"study1": {"bids_dir": "x", "task": "rest"}}})


@pytest.mark.parametrize("name", ["tr", "subject", "bold", "n_volumes"])
def test_phenotype_named_like_a_scans_column_is_refused(name):
    config = {"datasets": {"s": {"bids_dir": "x", "phenotypes": {name: "number"}}}}
    with pytest.raises(ConfigError, match=rf"datasets\.s\.phenotypes: phenotype '{name}' clashes"):
        validate_config(config)


@pytest.mark.parametrize("name", ["a,b", "a:b", "x\ny"])
def test_phenotype_name_with_argument_separators_is_refused(name):
    config = {"datasets": {"s": {"bids_dir": "x", "phenotypes": {name: "number"}}}}
    with pytest.raises(ConfigError, match=r"datasets\.s\.phenotypes: phenotype name"):
        validate_config(config)


def test_cli_validate_config_reports_duplicates_and_bombs(tmp_path, capsys):
    from brainharmony.cli import main

    dup = _yaml(tmp_path, "datasets: {s: {bids_dir: x}}\ndatasets: {t: {bids_dir: y}}\n", "d.yaml")
    assert main(["validate-config", str(dup)]) == 1
    assert "duplicate key 'datasets'" in capsys.readouterr().out
    bomb = _yaml(tmp_path, BILLION_LAUGHS, "bomb.yaml")
    assert main(["validate-config", str(bomb)]) == 1
    assert "alias bomb" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("evaluate", "expected"),
    [
        ({"tasks": {"s": {"age\n": {"target": "age", "type": "regression"}}}}, "task name"),
        ({"tasks": {"s\n": {"age": {"target": "age", "type": "regression"}}}}, "dataset name"),
        ({"cohorts": {"c\n": ["s"]}}, "evaluate.cohorts"),
        ({"models": ["fc_ridge\n"]}, "evaluate.models"),
    ],
)
def test_evaluate_settings_refuse_a_trailing_newline(evaluate, expected):
    """The evaluation settings' own name checks (used by the workflow and the CLIs)."""
    from brainharmony.evaluate.settings import SettingsError, settings_from_mapping

    with pytest.raises(SettingsError, match=expected):
        settings_from_mapping({"datasets": {"s": {"bids_dir": "x"}}, "evaluate": evaluate})


@pytest.mark.parametrize("bounds", [[10.0, 0.1], [2.0, 2.0]])
def test_tr_range_out_of_order_is_refused_at_validation(bounds):
    config = {"datasets": {"study": {"bids_dir": "/data/study"}}, "ingest": {"tr_range": bounds}}
    with pytest.raises(ConfigError, match=r"ingest\.tr_range: must satisfy 0 < min < max"):
        validate_config(config)
