"""A new user's path: their own BIDS folder, their own config, the README's commands.

The dataset is a copy of the tiny demo's demoA under a name and path the project does
not know, with no ``demo: true`` and nothing else in the config: what a user with only
``bids_dir`` gets from the schema defaults.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, REPO, run_snakemake
from tests.slurm.conftest import job_stats

pytestmark = pytest.mark.workflow

README_SECTION = "## Running on your own data"


def _rename_subject(folder: Path, old: str, new: str) -> None:
    """Move ``sub-<old>`` to ``sub-<new>``, renaming every file inside."""
    target = folder.parent / f"sub-{new}"
    folder.rename(target)
    for path in sorted(target.rglob(f"sub-{old}_*")):
        path.rename(path.with_name(path.name.replace(f"sub-{old}_", f"sub-{new}_", 1)))


@pytest.fixture(scope="module")
def own_bids(tmp_path_factory) -> Path:
    """A raw BIDS folder outside the project: two tiny demoA draws (seeds 7 and 8)
    merged into one dataset of 8 distinct subjects (5-fold CV needs more than the 4
    subjects of one draw), named and placed where the project does not know it."""
    root = tmp_path_factory.mktemp("own-data")
    for seed in (7, 8):
        out = subprocess.run(
            [str(BIN / "brainharmony"), "demo", "--out", str(root / f"gen{seed}"), "--preset",
             "tiny", "--seed", str(seed), "--datasets", "demoA"],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    bids = root / "mystudy"
    shutil.copytree(root / "gen7" / "demoA", bids)
    second = root / "gen8" / "demoA"
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    more = pd.read_csv(second / "participants.tsv", sep="\t", dtype=str)
    for folder in sorted(second.glob("sub-*")):
        label = folder.name.removeprefix("sub-")
        _rename_subject(folder, label, f"1{label}")
        shutil.move(second / f"sub-1{label}", bids / f"sub-1{label}")
    more["participant_id"] = more["participant_id"].str.replace("sub-", "sub-1", regex=False)
    pd.concat([table, more]).to_csv(bids / "participants.tsv", sep="\t", index=False)
    for seed in (7, 8):
        shutil.rmtree(root / f"gen{seed}")
    return bids


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_a_user_config_plans_no_demo_job(own_bids, tmp_path):
    cfg = _write(tmp_path / "my.yaml", {"datasets": {"mystudy": {"bids_dir": str(own_bids)}}})
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n")
    assert out.returncode == 0, out.stderr[-3000:]
    stats = job_stats(out.stdout + out.stderr)
    assert "demo" not in stats and stats.get("ingest") == 1, stats
    # Every stage but evaluation is planned from the schema defaults; `all` says why
    # evaluation is left out.
    for rule in ("train_bh_s", "train_bh_f", "train_harmonizer", "train_lmae"):
        assert stats.get(rule) == 1, (rule, stats)
    assert "evaluate" not in stats and "report" not in stats
    assert "evaluate.tasks is empty" in out.stdout + out.stderr


def test_without_a_configfile_the_demo_runs(tmp_path):
    out = run_snakemake(tmp_path, "-n")
    assert out.returncode == 0, out.stderr[-3000:]
    stats = job_stats(out.stdout + out.stderr)
    assert stats.get("demo") == 3 and stats.get("ingest") == 3, stats


def test_evaluate_all_without_tasks_stops_with_a_message(own_bids, tmp_path):
    cfg = _write(tmp_path / "my.yaml", {"datasets": {"mystudy": {"bids_dir": str(own_bids)}}})
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n", "evaluate_all")
    assert out.returncode != 0
    assert "evaluate.tasks is empty" in out.stdout + out.stderr


def test_the_bids_app_processes_exactly_the_labelled_participants(own_bids, tmp_path):
    out_dir = tmp_path / "out"
    # A faster anatomy (the registration route) is the config's business, not the
    # entry point's: the entry point must carry the user's config through.
    cfg = _write(tmp_path / "fast.yaml", {"anat": {"brain_extraction": "template"}})
    run = subprocess.run(
        [str(BIN / "brainharmony"), "run", str(own_bids), str(out_dir), "participant",
         "--participant-label", "01", "sub-02", "--config", str(cfg), "--cores", "2"],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = out_dir / "results"
    scans = pd.read_csv(res / "ingest" / "mystudy" / "scans.tsv", sep="\t", dtype=str)
    assert sorted(set(scans["subject"])) == ["01", "02"]
    excluded = pd.read_csv(res / "ingest" / "mystudy" / "excluded.tsv", sep="\t", dtype=str)
    assert set(excluded["reason"]) == {"subject not in participant_label"}
    assert len(excluded) == 6
    for stage, pattern in (("anat", "*_desc-model_T1w.nii.gz"), ("func", "*_timeseries.tsv")):
        found = {p.name.split("_")[0] for p in (res / stage / "mystudy").rglob(pattern)}
        assert found == {"sub-01", "sub-02"}, (stage, found)
    written = yaml.safe_load((out_dir / "config" / "brainharmony.yaml").read_text())
    assert written["anat"] == {"brain_extraction": "template"}
    assert written["datasets"]["mystudy"]["participant_label"] == ["01", "02"]
    assert not (REPO / "results" / "ingest" / "mystudy").exists()  # all under OUTPUT_DIR


def test_the_bids_app_refuses_a_label_that_names_nobody(own_bids, tmp_path):
    run = subprocess.run(
        [str(BIN / "brainharmony"), "run", str(own_bids), str(tmp_path / "out"), "participant",
         "--participant-label", "011", "--cores", "1", "--", "ingest_all"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert run.returncode != 0
    log = (tmp_path / "out" / "logs" / "ingest" / "mystudy.log").read_text()
    assert "participant_label names sub-011, which has no folder (closest: sub-01" in log


def _readme_commands() -> tuple[str, list[str]]:
    """The config and the commands of the README's own-data section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    section = text[start : end if end != -1 else None]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    configs = [body for lang, body in blocks if lang == "yaml"]
    commands = [
        line.split("  #")[0].strip()
        for lang, body in blocks
        if lang == "bash"
        for line in body.splitlines()
        if line.strip().startswith(".venv/bin/")
    ]
    assert len(configs) == 1 and commands, "the README's own-data section lost its examples"
    return configs[0], commands


@pytest.mark.slow
def test_readme_own_data_commands_run_through_to_the_report(own_bids, tmp_path):
    """The README's own-data section, run as written (paths and cores substituted):
    its config holds only ``bids_dir`` and tasks, so every other setting is the
    schema's default, and `all` goes through training and evaluation to the report."""
    config_text, commands = _readme_commands()
    work = tmp_path / "clone"
    work.mkdir()
    # A clone's layout (the README's commands run from the repository root), minus the
    # folders a run writes to (results, logs, resources, benchmarks, work).
    for name in ("Snakefile", "workflow", "models", "config", "envs", "src", "slurm", ".venv"):
        (work / name).symlink_to(REPO / name)
    substitute = {"/data/mystudy": str(own_bids), "/scratch/mystudy-out": str(tmp_path / "app")}
    for old, new in substitute.items():
        config_text = config_text.replace(old, new)
    config = yaml.safe_load(config_text)
    assert set(config) == {"datasets", "evaluate"}, "the README config should stay minimal"
    (work / "my-config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    ran = []
    for command in commands:
        argv = shlex.split(command)
        for old, new in substitute.items():
            argv = [a.replace(old, new) for a in argv]
        if argv[0].endswith("brainharmony") and argv[1:2] == ["run"]:
            # The BIDS-App commands: planned here (test_the_bids_app_* runs one).
            argv += ["--", "--dry-run"]
        argv = [
            "2" if prev == "--cores" else a for prev, a in zip(["", *argv[:-1]], argv, strict=True)
        ]
        out = subprocess.run(
            argv, cwd=work, env=env, capture_output=True, text=True, check=False, timeout=3600
        )
        assert out.returncode == 0, (command, out.stdout[-3000:], out.stderr[-3000:])
        ran.append(command)
    assert any("snakemake" in c and " -n" not in c for c in ran), ran
    report = work / "results" / "report" / "index.html"
    assert report.is_file()
    assert not list((work / "results" / "ingest").glob("demo*"))
