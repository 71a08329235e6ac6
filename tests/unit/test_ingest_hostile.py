"""Ingest under hostile or damaged input: bounded walks and reads, one subject per failure.

Each test builds a small dataset (``bids_factory``), breaks one subject (``sub-02``)
and checks the exact outcome: that subject's file or folder excluded with a reason
naming it and the problem, or the dataset stopped with a message naming a
dataset-level file; the other subjects' rows identical to a run on the intact
dataset; never a traceback and never a hang. Cases that hung before the walk was
bounded (symlink loops, ``/dev/zero``, named pipes) run ingest in a subprocess with
a timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from brainharmony import bids_tree, cli, participants, scan_pairing
from brainharmony.ingest import SCANS_COLUMNS, ingest_dataset
from brainharmony.io import InputDataError
from brainharmony.participants import read_participants
from tests.unit import bids_factory as bf

SUBJECTS = ("01", "02", "03")
#: Seconds a subprocess ingest may take before it counts as a hang.
HANG_S = 60

_RUNNER = textwrap.dedent(
    """
    import json, sys
    from brainharmony.ingest import ingest_dataset
    from brainharmony.io import InputDataError
    try:
        r = ingest_dataset(sys.argv[1], "d")
    except InputDataError as err:
        print(json.dumps({"error": str(err)}))
    else:
        print(json.dumps({
            "scans": r.scans.to_csv(sep="\\t", index=False),
            "excluded": r.excluded.astype(str).to_dict("records"),
            "warnings": r.warnings,
        }))
    """
)


def _dataset(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A clean three-subject dataset and its scans (sub-02 left out) for comparison."""
    root = bf.make_dataset(tmp_path / "ds", subjects=SUBJECTS)
    clean = ingest_dataset(root, "d").scans
    return root, _without_02(clean)


def _without_02(scans: pd.DataFrame) -> pd.DataFrame:
    return scans[scans["subject"] != "02"].reset_index(drop=True)


def _tsv(scans: pd.DataFrame) -> str:
    return scans.to_csv(sep="\t", index=False)


def _sidecar(root: Path) -> Path:
    return bf.subject_dir(root, "02") / "func" / "sub-02_task-rest_bold.json"


def _ingest_subprocess(root: Path) -> dict:
    """Ingest in a child process; a hang fails the test after :data:`HANG_S` seconds."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(root)],
            capture_output=True,
            text=True,
            timeout=HANG_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"ingest did not finish within {HANG_S} s (hang)")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _only_02_excluded(excluded: pd.DataFrame | list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(excluded)
    assert set(frame["subject"]) == {"02"}, frame.to_dict("records")
    return frame


# ----------------------------------------------------------------------- symlinks


def test_two_symlink_loops_in_one_subject_do_not_hang(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=SUBJECTS)
    clean = _tsv(ingest_dataset(root, "d").scans)
    anat = bf.subject_dir(root, "02") / "anat"
    os.symlink(".", anat / "a")
    os.symlink(".", anat / "b")  # two loops: pybids walked 2**40 paths

    out = _ingest_subprocess(root)
    assert out["scans"] == clean  # sub-02's own files are fine and kept
    excluded = _only_02_excluded(out["excluded"])
    assert list(excluded["path"]) == [str(anat / "a"), str(anat / "b")]
    assert set(excluded["reason"]) == {
        "symbolic link loop: points back to sub-02/anat/, which contains it; not followed"
    }


def test_mutual_symlink_loop_and_broken_link_are_warnings(tmp_path):
    root, _ = _dataset(tmp_path)
    anat = bf.subject_dir(root, "02") / "anat"
    os.symlink("y", anat / "x")
    os.symlink("x", anat / "y")
    os.symlink("gone", anat / "notes.txt")
    result = ingest_dataset(root, "d")
    assert list(result.scans["subject"]) == list(SUBJECTS)
    assert result.excluded.empty
    assert [w for w in result.warnings if "sub-02/anat" in w] == [
        "sub-02/anat/notes.txt: broken symbolic link (its target gone does not exist)",
        "sub-02/anat/x: symbolic link loop (y leads back to itself)",
        "sub-02/anat/y: symbolic link loop (x leads back to itself)",
    ]


def test_folder_link_to_a_folder_walked_anyway_is_not_followed_twice(tmp_path):
    root, _ = _dataset(tmp_path)
    link = bf.subject_dir(root, "02") / "anat" / "copy"
    os.symlink("../func", link)
    result = ingest_dataset(root, "d")
    assert list(result.scans["subject"]) == list(SUBJECTS)
    row = _only_02_excluded(result.excluded).iloc[0]
    assert row["path"] == str(link)
    assert row["reason"] == "symbolic link to sub-02/func/, a folder walked anyway; not followed"


def test_image_linked_out_of_the_dataset_is_excluded(tmp_path):
    root, clean = _dataset(tmp_path)
    bold = bf.bold_path(root, "02")
    outside = tmp_path / "elsewhere" / "bold.nii.gz"
    outside.parent.mkdir()
    shutil.move(bold, outside)
    os.symlink(outside, bold)

    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    excluded = _only_02_excluded(result.excluded)
    assert excluded.to_dict("records") == [
        {
            "dataset": "d",
            "subject": "02",
            "session": "n/a",
            "run": "n/a",
            "path": str(bold),
            "reason": f"symbolic link to {outside}, outside the dataset; not followed",
        }
    ]


def test_folder_linked_out_of_the_dataset_is_excluded(tmp_path):
    root, clean = _dataset(tmp_path)
    func = bf.subject_dir(root, "02") / "func"
    outside = tmp_path / "elsewhere"
    shutil.move(func, outside)
    os.symlink(outside, func)

    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    excluded = _only_02_excluded(result.excluded)
    assert list(excluded["path"]) == [str(bf.subject_dir(root, "02")), str(func)]
    assert list(excluded["reason"]) == [
        "no BOLD for task 'rest'",
        f"symbolic link to {outside}, outside the dataset; not followed",
    ]


def test_subject_folder_linked_out_of_the_dataset_is_that_subjects_exclusion(tmp_path):
    root, clean = _dataset(tmp_path)
    folder = bf.subject_dir(root, "02")
    outside = tmp_path / "elsewhere"
    shutil.move(folder, outside)
    os.symlink(outside, folder)

    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    row = _only_02_excluded(result.excluded).iloc[0]
    assert (row["path"], row["reason"]) == (
        str(folder),
        f"subject folder is a symbolic link to {outside}, outside the dataset; not followed",
    )


def test_links_inside_the_dataset_are_followed_like_datalad_annex(tmp_path):
    """DataLad keeps file content in the dataset's own .git/annex and links to it."""
    root, _ = _dataset(tmp_path)
    clean = ingest_dataset(root, "d").scans
    bold = bf.bold_path(root, "02")
    store = root / ".git" / "annex" / "objects" / "MD5E-s1--x.nii.gz"
    store.parent.mkdir(parents=True)
    shutil.move(bold, store)
    os.symlink(os.path.relpath(store, bold.parent), bold)

    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    assert result.excluded.empty
    assert result.warnings == []


def test_dataset_description_with_a_syntax_error_is_one_warning(tmp_path):
    root, _ = _dataset(tmp_path)
    (root / "dataset_description.json").write_text("{")
    result = ingest_dataset(root, "d")
    assert list(result.scans["subject"]) == list(SUBJECTS)
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("dataset_description.json cannot be parsed: JSONDecode")


def test_dataset_description_nested_too_deep_stops_the_dataset_naming_it(tmp_path):
    root, _ = _dataset(tmp_path)
    description = root / "dataset_description.json"
    description.write_text('{"Name": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(InputDataError) as info:
        ingest_dataset(root, "d")
    assert str(info.value) == f"{description}: dataset 'd': nested more than 100 levels deep"


# ---------------------------------------------------------------- bounded reading


def test_sidecar_linked_to_dev_zero_is_not_read(tmp_path):
    root, clean = _dataset(tmp_path)
    sidecar = _sidecar(root)
    sidecar.unlink()
    os.symlink("/dev/zero", sidecar)

    out = _ingest_subprocess(root)
    assert out["scans"] == _tsv(clean)
    row = _only_02_excluded(out["excluded"]).iloc[0]
    assert row["path"] == str(bf.bold_path(root, "02"))
    assert row["reason"] == (
        "cannot read sidecar sub-02_task-rest_bold.json: symbolic link to /dev/zero, "
        "outside the dataset; not followed"
    )


def test_named_pipe_sidecar_is_refused_without_blocking(tmp_path):
    root, clean = _dataset(tmp_path)
    sidecar = _sidecar(root)
    sidecar.unlink()
    os.mkfifo(sidecar)

    out = _ingest_subprocess(root)
    assert out["scans"] == _tsv(clean)
    row = _only_02_excluded(out["excluded"]).iloc[0]
    assert row["reason"] == (
        "cannot read sidecar sub-02_task-rest_bold.json: a named pipe (FIFO), "
        "not a regular file; not read"
    )


def test_named_pipe_bold_is_excluded_without_opening_it(tmp_path):
    root, clean = _dataset(tmp_path)
    bold = bf.bold_path(root, "02")
    bold.unlink()
    os.mkfifo(bold)

    out = _ingest_subprocess(root)
    assert out["scans"] == _tsv(clean)
    row = _only_02_excluded(out["excluded"]).iloc[0]
    assert (row["path"], row["reason"]) == (
        str(bold),
        "a named pipe (FIFO), not a regular file; not read",
    )


def test_oversized_sidecar_is_not_read(tmp_path, monkeypatch):
    root, clean = _dataset(tmp_path)
    monkeypatch.setattr(bids_tree, "MAX_JSON_BYTES", 200)
    sidecar = _sidecar(root)
    sidecar.write_text(json.dumps({"RepetitionTime": 2.0, "Pad": "x" * 300}))

    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    row = _only_02_excluded(result.excluded).iloc[0]
    size = sidecar.stat().st_size
    assert row["reason"] == (
        f"cannot read sidecar sub-02_task-rest_bold.json: {size} bytes, over the 200 bytes "
        "limit; not read"
    )


def test_read_capped_stops_at_the_cap_on_an_endless_file():
    with pytest.raises(bids_tree.ReadRefused, match="a character device, not a regular file"):
        bids_tree.read_capped("/dev/zero", 1024)


def test_dataset_description_linked_to_dev_zero_stops_the_dataset_naming_it(tmp_path):
    root, _ = _dataset(tmp_path)
    description = root / "dataset_description.json"
    description.unlink()
    os.symlink("/dev/zero", description)

    out = _ingest_subprocess(root)
    assert out["error"] == (
        f"{description}: dataset 'd': symbolic link to /dev/zero, outside the dataset; not followed"
    )


def test_participants_tsv_as_named_pipe_stops_the_dataset_naming_it(tmp_path):
    root, _ = _dataset(tmp_path)
    table = root / "participants.tsv"
    table.unlink()
    os.mkfifo(table)

    out = _ingest_subprocess(root)
    assert out["error"] == f"{table}: a named pipe (FIFO), not a regular file; not read"


def test_participants_tsv_linked_out_of_the_dataset_stops_it_naming_it(tmp_path):
    root, _ = _dataset(tmp_path)
    table = root / "participants.tsv"
    outside = tmp_path / "participants.tsv"
    shutil.move(table, outside)
    os.symlink(outside, table)
    with pytest.raises(InputDataError) as info:
        ingest_dataset(root, "d")
    assert str(info.value) == (
        f"{table}: dataset 'd': symbolic link to {outside}, outside the dataset; not followed"
    )


def test_oversized_participants_tsv_is_refused(tmp_path, monkeypatch):
    root, _ = _dataset(tmp_path)
    monkeypatch.setattr(participants, "MAX_TABLE_BYTES", 50)
    table = root / "participants.tsv"
    size = table.stat().st_size
    with pytest.raises(InputDataError) as info:
        ingest_dataset(root, "d")
    assert str(info.value) == f"{table}: {size} bytes, over the 50 bytes limit; not read"


# ------------------------------------------------------------------ JSON content


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            b'{"RepetitionTime": ' + b"9" * 400 + b"}",
            "an integer with 400 digits, too large to be a number",
        ),
        (
            b'{"RepetitionTime": 2.0, "SliceTiming": [0, ' + b"1" * 400 + b"]}",
            "an integer with 400 digits, too large to be a number",
        ),
        (
            b'{"RepetitionTime": ' + b"7" * 5000 + b"}",
            "an integer with 5000 digits, too large to be a number",
        ),
        (
            b'{"RepetitionTime": 2.0, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "nested more than 100 levels deep",
        ),
        (
            b'{"RepetitionTime": 2.0, "x": ' + b"[" * 200 + b"]" * 200 + b"}",
            "nested more than 100 levels deep",
        ),
        (
            b'{"RepetitionTime": 2.0, "TaskName": "r\xff\xfe"}',
            "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 38: "
            "invalid start byte",
        ),
    ],
    ids=["int400", "int400_slicetiming", "int5000", "deep100k", "deep200", "utf8"],
)
def test_hostile_sidecar_excludes_only_its_run(tmp_path, content, problem):
    root, clean = _dataset(tmp_path)
    _sidecar(root).write_bytes(content)

    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    excluded = _only_02_excluded(result.excluded)
    assert excluded[["path", "reason"]].to_dict("records") == [
        {
            "path": str(bf.bold_path(root, "02")),
            "reason": f"cannot parse sidecar sub-02_task-rest_bold.json: {problem}",
        }
    ]
    assert (
        f"sub-02/func/sub-02_task-rest_bold.json cannot be parsed: {problem}; "
        "left out of the pybids index"
    ) in result.warnings


def test_deep_json_that_is_no_sidecar_is_a_warning_only(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=SUBJECTS)
    clean = ingest_dataset(root, "d").scans
    notes = bf.subject_dir(root, "02") / "anat" / "notes.json"
    notes.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")

    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    assert result.excluded.empty
    assert result.warnings == [
        "sub-02/anat/notes.json cannot be parsed: nested more than 100 levels deep; "
        "left out of the pybids index"
    ]


def test_json_parser_bounds():
    assert bids_tree.loads_json(b'{"a": [1, 2.5, "x"], "b": {"c": 1e999}}')["a"] == [1, 2.5, "x"]
    assert bids_tree.loads_json(b'{"n": ' + b"9" * 300 + b"}")["n"] == int("9" * 300)
    for bad in (b"9" * 301, b"[" * 101 + b"]" * 101, b'"\xc3"'):
        with pytest.raises(ValueError):
            bids_tree.loads_json(bad)


# ------------------------------------------------------------- subject isolation


def test_unreadable_subject_folder_excludes_that_subject(tmp_path, monkeypatch):
    """Simulated with a patched ``os.scandir`` (root can read a chmod 000 folder)."""
    root, clean = _dataset(tmp_path)
    func = bf.subject_dir(root, "02") / "func"
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(func):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    excluded = _only_02_excluded(result.excluded)
    assert excluded[["path", "reason"]].to_dict("records") == [
        {
            "path": str(bf.subject_dir(root, "02")),
            "reason": (
                "cannot read folder sub-02/func: PermissionError: [Errno 13] "
                f"Permission denied: '{func}'"
            ),
        }
    ]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root reads a chmod 000 folder; covered by the simulated test above",
)
def test_chmod_000_subject_folder_excludes_that_subject(tmp_path):
    root, clean = _dataset(tmp_path)
    func = bf.subject_dir(root, "02") / "func"
    func.chmod(0)
    try:
        result = ingest_dataset(root, "d")
    finally:
        func.chmod(0o755)
    pd.testing.assert_frame_equal(result.scans, clean)
    row = _only_02_excluded(result.excluded).iloc[0]
    assert row["reason"].startswith("cannot read folder sub-02/func: PermissionError")


def test_any_exception_in_one_subject_becomes_its_exclusion(tmp_path, monkeypatch):
    root, clean = _dataset(tmp_path)
    real_check = scan_pairing.check_t1w

    def check_t1w(path, *args, **kwargs):
        if "sub-02" in str(path):
            raise OverflowError("int too large to convert to float")
        return real_check(path, *args, **kwargs)

    monkeypatch.setattr(scan_pairing, "check_t1w", check_t1w)
    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    excluded = _only_02_excluded(result.excluded)
    assert excluded[["path", "reason"]].to_dict("records") == [
        {
            "path": str(bf.subject_dir(root, "02")),
            "reason": "error while reading the subject's files: OverflowError: "
            "int too large to convert to float",
        }
    ]


def test_an_exception_while_walking_one_subject_becomes_its_exclusion(tmp_path, monkeypatch):
    root, clean = _dataset(tmp_path)
    real = bids_tree._add_json

    def add_json(tree, path):
        if "sub-02" in str(path):
            raise RecursionError("maximum recursion depth exceeded")
        return real(tree, path)

    monkeypatch.setattr(bids_tree, "_add_json", add_json)
    result = ingest_dataset(root, "d")
    pd.testing.assert_frame_equal(result.scans, clean)
    row = _only_02_excluded(result.excluded).iloc[0]
    assert row["reason"] == (
        "error while walking the subject folder: RecursionError: maximum recursion depth exceeded"
    )


# ---------------------------------------------------------------- phenotypes


def test_phenotype_named_like_a_scans_column_is_refused_by_the_cli(tmp_path, monkeypatch, capsys):
    root, _ = _dataset(tmp_path)
    monkeypatch.setattr(cli, "COMMANDS", {"ingest": cli.COMMANDS["ingest"]})
    args = ["ingest", "--bids-dir", str(root), "--dataset", "d", "--out-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--phenotypes", "age:number,tr:number"])
    assert info.value.code == 2
    assert (
        "argument --phenotypes: phenotype 'tr' clashes with a scans.tsv column: scans.tsv "
        "already has the fixed column 'tr'"
    ) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_phenotype_named_like_a_scans_column_is_refused_by_the_api(tmp_path):
    root, _ = _dataset(tmp_path)
    assert {"tr", "site", "subject", "n_volumes"} <= SCANS_COLUMNS
    with pytest.raises(ValueError, match=re.escape("phenotype 'site' clashes with a scans.tsv")):
        ingest_dataset(root, "d", phenotypes={"site": "category"})


# ------------------------------------------------------------ participants.tsv


def test_participants_duplicate_check_is_linear(tmp_path):
    """30,000 rows took ~35 s with the quadratic ``labels.count`` check."""
    rows = "".join(f"sub-{i}\t{20 + i % 50}\n" for i in range(30_000))
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\n" + rows + "sub-7\t30\nsub-29999\t31\n")
    start = time.perf_counter()
    with pytest.raises(InputDataError, match="duplicate participant_id values: sub-29999, sub-7"):
        read_participants(path, phenotypes={"age": "number"})
    assert time.perf_counter() - start < 10
