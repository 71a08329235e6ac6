"""``brainharmony run``: the config it writes and the Snakemake command it runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from brainharmony.cli import main
from brainharmony.pipelines import bids_app
from tests.conftest import REPO


def _bids(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9"}))
    return root


def test_a_new_dataset_is_named_after_its_folder(tmp_path):
    config = bids_app.build_config(_bids(tmp_path / "my-study_2"), participant_label=["sub-01"])
    assert config == {
        "datasets": {
            "mystudy2": {"bids_dir": str(tmp_path / "my-study_2"), "participant_label": ["01"]}
        }
    }


def test_the_users_dataset_keeps_its_name_and_settings(tmp_path):
    bids = _bids(tmp_path / "raw")
    base = {
        "datasets": {
            "cohort": {"bids_dir": str(bids), "site_column": "site", "demo": True},
            "other": {"bids_dir": "/elsewhere"},
        },
        "demo": {"preset": "tiny"},
        "pretrain": {"datasets": ["cohort", "other"]},
        "evaluate": {"tasks": {"cohort": {"age": {"target": "age", "type": "regression"}}}},
    }
    config = bids_app.build_config(bids, base=base, exclude_label=["02"])
    assert config["datasets"] == {
        "cohort": {"bids_dir": str(bids), "site_column": "site", "exclude_subjects": ["02"]}
    }
    assert "demo" not in config and config["pretrain"] == {"datasets": ["cohort"]}
    assert config["evaluate"] == base["evaluate"]


def test_one_dataset_in_the_config_lends_its_settings_to_the_bids_dir(tmp_path):
    bids = _bids(tmp_path / "raw")
    base = {"datasets": {"cohort": {"bids_dir": "relative/path", "task": "rest2"}}}
    config = bids_app.build_config(bids, base=base)
    assert config["datasets"] == {"cohort": {"bids_dir": str(bids), "task": "rest2"}}


@pytest.mark.parametrize(("level", "targets"), [("participant", "qc_all"), ("group", "all")])
def test_the_snakemake_command(tmp_path, level, targets):
    cmd = bids_app.snakemake_command(
        tmp_path / "c.yaml", tmp_path / "out", level, extra=["--keep-going"]
    )
    assert cmd[cmd.index("--snakefile") + 1] == str(REPO / "Snakefile")
    assert cmd[cmd.index("--directory") + 1] == str(tmp_path / "out")
    assert cmd[cmd.index("--configfile") + 1] == str(tmp_path / "c.yaml")
    assert "--cores" in cmd and "--keep-going" in cmd and cmd[-1] == targets
    with_profile = bids_app.snakemake_command(
        tmp_path / "c.yaml", tmp_path / "out", level, profile="slurm"
    )
    assert "--cores" not in with_profile and "slurm" in with_profile


def test_run_writes_the_config_and_passes_options_after_the_double_dash(tmp_path, monkeypatch):
    bids = _bids(tmp_path / "raw")
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"anat": {"resolution_mm": 2}}))
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"], seen["cwd"] = cmd, kwargs["cwd"]

        class Done:
            returncode = 0

        return Done()

    monkeypatch.setattr(bids_app.subprocess, "run", fake_run)
    out = tmp_path / "out"
    code = main(
        ["run", str(bids), str(out), "participant", "--participant-label", "01", "--config",
         str(user), "--", "--dry-run", "--forceall"]
    )  # fmt: skip
    assert code == 0
    written = yaml.safe_load((out / "config" / "brainharmony.yaml").read_text())
    assert written == {
        "anat": {"resolution_mm": 2},
        "datasets": {"raw": {"bids_dir": str(bids), "participant_label": ["01"]}},
    }
    assert seen["cmd"][-6:-4] == ["--dry-run", "--forceall"] and seen["cwd"] == REPO


def test_run_refuses_bad_inputs_with_the_file_named(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 2
    assert "not a BIDS dataset" in capsys.readouterr().err
    bids = _bids(tmp_path / "raw")
    assert main(["run", str(bids), str(bids / "out"), "participant"]) == 2
    assert "inside the raw dataset" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"anat": {"resolution": 2}}))
    assert main(["run", str(bids), str(tmp_path / "o"), "group", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "resolution" in err
