"""Labels that become output names are BIDS labels (issue 23, items 5 and 6).

``brainharmony func`` and ``brainharmony anat`` build output file names from
``--subject``, ``--session``, ``--task`` and ``--run``: a value such as ``../x`` once
wrote outside ``--out-dir``. Every such value is now refused by argparse (exit status
2, the option and the value named) before anything runs; an ``--out-dir`` that is an
existing file is refused the same way, not with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from brainharmony import cli
from brainharmony.cli_types import bids_label, output_dir

BAD_LABELS = ["../x", "re st", "a\nb", "sub-01", "x/y", "", "é1"]


def _func_native(tmp_path: Path, **override: str) -> list[str]:
    args = {
        "--bold": str(tmp_path / "bold.nii.gz"),
        "--t1w-to-template": str(tmp_path / "xfm.txt"),
        "--atlas": str(tmp_path / "atlas.nii.gz"),
        "--atlas-labels": str(tmp_path / "atlas.tsv"),
        "--subject": "01",
        "--out-dir": str(tmp_path / "out"),
        **override,
    }
    return ["func", "native", *(x for kv in args.items() for x in kv)]


def _func_derivatives(tmp_path: Path, **override: str) -> list[str]:
    args = {
        "--fmriprep-dir": str(tmp_path / "fmriprep"),
        "--atlas": str(tmp_path / "atlas.nii.gz"),
        "--atlas-labels": str(tmp_path / "atlas.tsv"),
        "--subject": "01",
        "--out-dir": str(tmp_path / "out"),
        **override,
    }
    return ["func", "derivatives", *(x for kv in args.items() for x in kv)]


def _anat(tmp_path: Path, **override: str) -> list[str]:
    args = {
        "--t1w": str(tmp_path / "sub-01_T1w.nii.gz"),
        "--out-dir": str(tmp_path / "out"),
        "--subject": "01",
        **override,
    }
    return ["anat", *(x for kv in args.items() for x in kv)]


def _refused(argv: list[str], capsys, option: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err, err
    assert "Traceback" not in err
    return err


def _written(tmp_path: Path) -> list[Path]:
    return sorted(p for p in tmp_path.rglob("*") if p.name != "existing")


@pytest.mark.parametrize("value", BAD_LABELS)
@pytest.mark.parametrize("option", ["--subject", "--session", "--task", "--run"])
@pytest.mark.parametrize("build", [_func_native, _func_derivatives], ids=["native", "derivs"])
def test_func_refuses_a_label_that_is_not_bids(tmp_path, capsys, build, option, value):
    if option in ("--session", "--run") and value == "":
        pytest.skip("an empty session or run means none (as n/a)")
    err = _refused(build(tmp_path, **{option: value}), capsys, option)
    assert repr(value) in err or value == "", err
    assert _written(tmp_path) == []


@pytest.mark.parametrize("value", BAD_LABELS)
@pytest.mark.parametrize("option", ["--subject", "--session"])
def test_anat_refuses_a_label_that_is_not_bids(tmp_path, capsys, option, value):
    err = _refused(_anat(tmp_path, **{option: value}), capsys, option)
    assert "letters and digits" in err or "invalid" in err, err
    assert _written(tmp_path) == []


def test_the_message_names_the_value_and_the_rule(tmp_path, capsys):
    err = _refused(_func_native(tmp_path, **{"--task": "re st"}), capsys, "--task")
    assert "task label 're st' is not alphanumeric" in err
    assert "ASCII letters and digits only" in err
    err = _refused(_func_native(tmp_path, **{"--run": "1a"}), capsys, "--run")
    assert "run index '1a' is not a non-negative integer" in err


def test_valid_labels_and_none_spellings_parse():
    check = bids_label("ses", optional=True)
    assert [check(v) for v in ("1", "pre", "n/a", "none", "")] == ["1", "pre", "n/a", "none", ""]
    assert bids_label("run", optional=True)("02") == "02"
    assert bids_label("sub")("ABC123") == "ABC123"


def test_fmriprep_participant_label_is_checked(tmp_path, capsys):
    base = ["func", "fmriprep", "--bids-dir", str(tmp_path), "--fmriprep-dir", str(tmp_path),
            "--work-dir", str(tmp_path), "--print-only", "--participant-label"]  # fmt: skip
    assert cli.main([*base, "01"]) == 0
    assert "--participant-label 01" in capsys.readouterr().out
    _refused([*base, "../01"], capsys, "--participant-label")
    # with its prefix: refused by the parser (was a ValueError traceback when run)
    _refused([*base, "sub-01"], capsys, "--participant-label")


def test_group_qc_refuses_unsafe_dataset_and_task(tmp_path, capsys):
    base = ["group-qc", "--scans", "s.tsv", "--anat-dir", "a", "--func-dir", "f",
            "--out-dir", str(tmp_path / "qc")]  # fmt: skip
    _refused([*base, "--dataset", "../x"], capsys, "--dataset")
    _refused([*base, "--dataset", "ds", "--task", "a b"], capsys, "--task")


@pytest.mark.parametrize(
    "build",
    [
        _func_native,
        _func_derivatives,
        _anat,
        lambda tmp, **o: ["func", "atlas", "--resolution", "3", "--out-dir", o["--out-dir"]],
        lambda tmp, **o: ["templates", "--out-dir", o["--out-dir"]],
    ],
    ids=["native", "derivs", "anat", "atlas", "templates"],
)
@pytest.mark.parametrize("below", [False, True], ids=["is-file", "under-file"])
def test_out_dir_that_is_a_file_is_refused(tmp_path, capsys, build, below):
    existing = tmp_path / "existing"
    existing.write_text("not a folder\n")
    target = existing / "sub" if below else existing
    err = _refused(build(tmp_path, **{"--out-dir": str(target)}), capsys, "--out-dir")
    assert str(target) in err and "is not a folder" in err, err
    assert existing.read_text() == "not a folder\n"


def test_output_dir_accepts_absent_and_existing_folders(tmp_path):
    assert output_dir(str(tmp_path)) == tmp_path
    assert output_dir(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"


def test_ingest_refuses_unsafe_dataset_task_and_out_dir(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.write_text("not a folder\n")
    base = ["ingest", "--bids-dir", str(tmp_path)]
    ok = ["--dataset", "ds", "--out-dir", str(tmp_path / "out")]
    _refused([*base, "--dataset", "../x", "--out-dir", str(tmp_path / "out")], capsys, "--dataset")
    _refused([*base, *ok, "--task", "re st"], capsys, "--task")
    _refused([*base, "--dataset", "ds", "--out-dir", str(existing)], capsys, "--out-dir")
    assert not (tmp_path / "out").exists()
