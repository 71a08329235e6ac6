"""Config validation: defaults, unknown keys named, wrong types named."""

from pathlib import Path

import pytest
import yaml

from brainharmony.config import ConfigError, load_config, validate_config

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
    assert config["ingest"] == {"min_volumes": 50, "tr_tolerance": 0.01, "tr_conflict": "warn"}
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
