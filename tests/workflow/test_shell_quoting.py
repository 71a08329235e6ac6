"""Config-derived paths reach the shell quoted (issue 23, item 1: shell injection).

Every path a user can put in the config (a dataset's ``bids_dir``, the demo root, the
model YAMLs, the config file itself, the BIDS files found under ``bids_dir``) here
holds a space, single and double quotes and ``$(touch PWNED)``. The dry-run's printed
shell commands must carry each such value inside one shell word, with no ``$(`` outside
quotes; and the real ingest job on such a folder must index it without running the
command substitution.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, REPO, run_snakemake

pytestmark = pytest.mark.workflow

# A folder name a careless or hostile user may give: a space, both quote kinds, a
# command substitution (which would create a file named PWNED in the job's cwd).
HOSTILE = "my study 'sq' \"dq\" $(touch PWNED)"
ROLES = ("bh_s", "bh_f", "harmonizer", "lmae", "predictor")


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    """A folder whose path holds :data:`HOSTILE`, with the tiny demoA in it (``demoA``)
    and copies of the demo model YAMLs (``models``)."""
    root = tmp_path_factory.mktemp("quoting") / HOSTILE
    root.mkdir()
    out = subprocess.run(
        [str(BIN / "brainharmony"), "demo", "--out", str(root), "--preset", "tiny",
         "--seed", "7", "--datasets", "demoA"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    shutil.rmtree(root / "demoA-truth", ignore_errors=True)
    (root / "models").mkdir()
    for role in ROLES:
        shutil.copy(REPO / "models" / f"{role}_demo.yaml", root / "models" / f"{role}.yaml")
    return root


def _config(root: Path) -> dict:
    return {
        "demo": {"preset": "tiny", "seed": 7, "root": str(root / "demo")},
        "datasets": {
            "study": {"bids_dir": str(root / "demoA")},
            "demoB": {"bids_dir": str(root / "demo" / "demoB"), "demo": True},
        },
        "ingest": {"min_volumes": 10},
        "anat": {"resolution_mm": 2},
        "func": {"resolution_mm": 3},
        "pretrain": {"datasets": ["study"]},
        "train": {"models": {r: str(root / "models" / f"{r}.yaml") for r in ROLES}},
        "evaluate": {
            "tasks": {"study": {"age": {"target": "age", "type": "regression"}}},
            "seeds": [0],
            "n_folds": 2,
        },
    }


def _write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _unquoted_text(command: str) -> str:
    """The characters of ``command`` that a POSIX shell sees outside any quotes."""
    out: list[str] = []
    state = None  # None, "'" or '"'
    i = 0
    while i < len(command):
        ch = command[i]
        if state is None:
            if ch in "'\"":
                state = ch
            elif ch == "\\":
                i += 1  # the escaped character is literal
            else:
                out.append(ch)
        elif state == "'":
            if ch == "'":
                state = None
        else:  # inside double quotes: only \ escapes, and $ and ` stay live there
            if ch == "\\":
                i += 1
            elif ch == '"':
                state = None
            elif ch in "$`":
                out.append(ch)
        i += 1
    assert state is None, f"unbalanced quotes in: {command}"
    return "".join(out)


def _shell_commands(text: str) -> list[str]:
    return [
        line.removeprefix("Shell command: ").strip()
        for line in text.splitlines()
        if line.startswith("Shell command: ")
    ]


def _check_quoted(command: str) -> None:
    """Every occurrence of :data:`HOSTILE` is intact inside one shell word; nothing
    outside quotes can run a command."""
    unquoted = _unquoted_text(command)
    assert "$(" not in unquoted and "`" not in unquoted, command
    head = HOSTILE.split("'")[0]  # "my study ": in the raw text once per occurrence
    raw = command.count(head)
    intact = sum(word.count(HOSTILE) for word in shlex.split(command))
    assert raw == intact, f"{raw} occurrence(s) of the hostile name, {intact} intact: {command}"


def _prepare_workdir(root: Path, workdir: Path, config: dict) -> Path:
    """Config in a hostile folder; the user dataset's ingest outputs written (through an
    argv, no shell) and touched, so that the dry-run plans every later stage too."""
    cfg = _write_config(workdir / HOSTILE, config)
    scans = workdir / "results" / "ingest" / "study"
    out = subprocess.run(
        [str(BIN / "brainharmony"), "ingest", "--dataset", "study", "--bids-dir",
         str(root / "demoA"), "--out-dir", str(scans), "--min-volumes", "10"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    touch = run_snakemake(
        workdir, "--configfile", str(cfg), "--touch",
        *(f"results/ingest/study/{n}" for n in ("scans.tsv", "excluded.tsv", "scans.json")),
    )  # fmt: skip
    assert touch.returncode == 0, touch.stderr[-3000:]
    return cfg


def test_dry_run_commands_quote_every_config_path(hostile_root, tmp_path):
    workdir = tmp_path / "work"
    cfg = _prepare_workdir(hostile_root, workdir, _config(hostile_root))
    out = run_snakemake(workdir, "--configfile", str(cfg), "-n", "-p", "all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    commands = _shell_commands(out.stdout + out.stderr)
    # every stage is planned: demo and ingest (demoB), then the user dataset onwards
    joined = "\n".join(commands)
    for sub in ("demo", "ingest", "anat", "func native", "train", "evaluate", "report"):
        assert f"-m brainharmony -v {sub} " in joined, sub
    hostile_paths = [
        str(hostile_root / "demo"),  # demo.root, demoB's bids_dir
        str(hostile_root / "demoA"),  # bids_dir and every BIDS file path found in it
        str(hostile_root / "models"),  # train.models
        str(workdir / HOSTILE / "config.yaml"),  # the --configfile (report)
    ]
    seen = set()
    for command in commands:
        _check_quoted(command)
        seen.update(p for p in hostile_paths if any(p in w for w in shlex.split(command)))
    assert seen == set(hostile_paths), set(hostile_paths) - seen
    assert not list(workdir.rglob("PWNED"))


def test_ingest_job_runs_on_a_hostile_bids_path(hostile_root, tmp_path):
    """The real ingest job (through Snakemake's shell) on such a folder: indexed, and
    the ``$(touch PWNED)`` in its path never runs."""
    workdir = tmp_path / "work"
    config = {
        "datasets": {"study": {"bids_dir": str(hostile_root / "demoA")}},
        "ingest": {"min_volumes": 10},
    }
    cfg = _write_config(workdir / HOSTILE, config)
    before = set(hostile_root.parent.rglob("PWNED"))
    out = run_snakemake(workdir, "--configfile", str(cfg), "--cores", "1", "ingest_all")
    pwned = [p for base in (workdir, hostile_root.parent) for p in base.rglob("PWNED")]
    pwned += [p for p in (REPO / "PWNED", Path.cwd() / "PWNED") if p.exists()]
    assert not [p for p in pwned if p not in before], pwned
    log = workdir / "logs" / "ingest" / "study.log"
    detail = log.read_text() if log.exists() else ""
    assert out.returncode == 0, out.stderr[-3000:] + detail[-2000:]
    scans = pd.read_csv(workdir / "results" / "ingest" / "study" / "scans.tsv", sep="\t")
    assert sorted(scans["subject"].astype(str).str.zfill(2)) == ["01", "02", "03", "04"]
    assert all(str(p).startswith(str(hostile_root / "demoA")) for p in scans["bold"])
