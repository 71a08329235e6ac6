"""Ingestion of raw BIDS datasets: usable pairs, exclusions and their reasons."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainharmony import cli
from brainharmony.bids_names import BadName, parse_name
from brainharmony.ingest import (
    SCAN_COLUMNS,
    NoUsableScansError,
    ingest_dataset,
    read_scans,
    write_outputs,
)
from brainharmony.io import InputDataError
from tests.unit import bids_factory as bf

GOOD = ("good1", "good2")


def _excluded_for(result, subject: str) -> pd.DataFrame:
    return result.excluded[result.excluded["subject"] == subject]


# --------------------------------------------------------------------------- good data


def test_good_dataset_gives_one_row_per_run_with_typed_phenotypes(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    result = ingest_dataset(root, "demoA")

    scans = result.scans
    assert list(scans.columns) == [
        *SCAN_COLUMNS,
        "age",
        "sex",
        "fluid_intelligence",
        "diagnosis",
    ]
    assert list(scans["subject"]) == ["01", "02", "03"]
    assert set(scans["session"]) == {"n/a"} and set(scans["run"]) == {"n/a"}
    assert set(scans["dataset"]) == {"demoA"} and set(scans["site"]) == {"demoA"}
    assert np.allclose(scans["tr"], 2.0)
    assert list(scans["n_volumes"]) == [60, 60, 60]
    assert np.allclose(scans["duration_s"], 120.0)
    assert list(scans["n_slices"]) == [6, 6, 6]
    assert scans["has_slice_timing"].all()
    for column in ("t1w", "bold", "bold_sidecar"):
        paths = [Path(p) for p in scans[column]]
        assert all(p.is_absolute() and p.is_file() for p in paths), column
    assert scans.loc[0, "bold"].endswith("sub-01/func/sub-01_task-rest_bold.nii.gz")
    assert scans.loc[0, "t1w"].endswith("sub-01/anat/sub-01_T1w.nii.gz")
    assert scans.loc[0, "bold_sidecar"].endswith("sub-01_task-rest_bold.json")

    assert pd.api.types.is_float_dtype(scans["age"])
    assert pd.api.types.is_float_dtype(scans["fluid_intelligence"])
    assert pd.api.types.is_string_dtype(scans["sex"])
    assert pd.api.types.is_string_dtype(scans["diagnosis"])
    assert list(scans["age"]) == [25.0, 61.5, 43.0]
    assert list(scans["sex"]) == ["F", "M", "F"]
    assert math.isnan(scans.loc[2, "fluid_intelligence"])
    assert result.excluded.empty
    assert result.warnings == []


def test_outputs_are_written_with_sidecar_and_byte_identical_on_rerun(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    bf.add_bold(root, "04", n_volumes=20)  # one exclusion, so excluded.tsv has a row
    first = write_outputs(ingest_dataset(root, "demoA"), tmp_path / "a")
    second = write_outputs(ingest_dataset(root, "demoA"), tmp_path / "b")

    for key in ("scans", "excluded"):
        assert first[key].read_bytes() == second[key].read_bytes(), key
    text = first["scans"].read_text()
    assert "\tn/a\t" in text  # missing fluid_intelligence, session, run
    assert "nan" not in text.lower().replace("n/a", "")
    excluded = first["excluded"].read_text().splitlines()
    assert excluded[0].split("\t") == ["dataset", "subject", "session", "run", "path", "reason"]
    assert len(excluded) == 2 and "fewer volumes (20)" in excluded[1]

    sidecar = json.loads(first["sidecar"].read_text())
    assert sidecar["Counts"]["scans"] == 3
    assert sidecar["Counts"]["excluded_rows"] == 1
    assert sidecar["RepetitionTimePolicy"]["OnConflict"] == "warn"
    assert sidecar["RepetitionTimePolicy"]["RelativeTolerance"] == 0.01
    assert sidecar["Phenotypes"]["age"] == "number"
    assert set(SCAN_COLUMNS) <= set(sidecar["Columns"])
    assert sidecar["Provenance"]["Step"] == "ingest"
    assert sidecar["Provenance"]["Inputs"] == [str(root)]
    assert "Created" not in sidecar["Provenance"]

    back = read_scans(first["scans"])
    assert list(back["subject"]) == ["01", "02", "03"]  # labels stay strings
    assert pd.api.types.is_float_dtype(back["age"])
    assert back["has_slice_timing"].dtype == bool
    assert back["n_volumes"].dtype == np.int64
    assert list(back["session"]) == ["n/a"] * 3


# ---------------------------------------------------------------------- broken data

Breaker = Callable[[Path, str], None]


def _no_tr(root: Path, sub: str) -> None:
    bf.add_bold(root, sub, drop=("RepetitionTime",))


def _no_sidecar(root: Path, sub: str) -> None:
    bf.add_bold(root, sub, sidecar=False)
    bf.bold_path(root, sub).with_name(f"sub-{sub}_task-rest_bold.json").unlink()


def _tr(value) -> Breaker:
    def breaker(root: Path, sub: str) -> None:
        bf.add_bold(root, sub, metadata={"RepetitionTime": value}, header_tr=0.0)

    return breaker


def _three_d(root: Path, sub: str) -> None:
    bf.add_bold(root, sub, n_volumes=0)


def _short(root: Path, sub: str) -> None:
    bf.add_bold(root, sub, n_volumes=30)


def _no_t1w(root: Path, sub: str) -> None:
    bf.t1w_path(root, sub).unlink()
    bf.t1w_path(root, sub).with_name(f"sub-{sub}_T1w.json").unlink()


def _truncated_gz(root: Path, sub: str) -> None:
    bf.truncate_file(bf.bold_path(root, sub), 0.6)


def _truncated_nii(root: Path, sub: str) -> None:
    bf.bold_path(root, sub).unlink()
    bf.truncate_file(bf.add_bold(root, sub, ext=".nii"), 0.8)


def _garbage(root: Path, sub: str) -> None:
    bf.bold_path(root, sub).write_bytes(b"this is not an image" * 10)


def _t1w_4d(root: Path, sub: str) -> None:
    bf.add_t1w(root, sub, shape=(10, 10, 8, 3))


def _t1w_truncated(root: Path, sub: str) -> None:
    bf.truncate_file(bf.t1w_path(root, sub), 0.5)


def _bad_json(root: Path, sub: str) -> None:
    bf.bold_path(root, sub).with_name(f"sub-{sub}_task-rest_bold.json").write_text("{oops")


def _bold_in_anat(root: Path, sub: str) -> None:
    path = bf.bold_path(root, sub)
    bf.add_bold(root, sub, path=path.parent.parent / "anat" / path.name)
    path.unlink()
    path.with_name(f"sub-{sub}_task-rest_bold.json").unlink()


def _other_subject_in_name(root: Path, sub: str) -> None:
    path = bf.bold_path(root, sub)
    bf.add_bold(root, sub, path=path.with_name("sub-zz_task-rest_bold.nii.gz"))
    path.unlink()


def _renamed(new_name: str) -> Breaker:
    def breaker(root: Path, sub: str) -> None:
        path = bf.bold_path(root, sub)
        bf.add_bold(root, sub, path=path.with_name(new_name.format(sub=sub)))
        path.unlink()

    return breaker


BOLD = "bold.nii.gz"
RENAMED_MALFORMED = "malformed file name: 'b' is not a key-value entity"

#: subject label -> (how to break it, expected reason (regex), expected path suffix)
BROKEN: dict[str, tuple[Breaker, str, str]] = {
    "notr": (
        _no_tr,
        r"^RepetitionTime missing in sidecar sub-notr_task-rest_bold\.json$",
        BOLD,
    ),
    "nosidecar": (
        _no_sidecar,
        r"^RepetitionTime missing: no JSON sidecar "
        r"\(expected sub-nosidecar_task-rest_bold\.json\)$",
        BOLD,
    ),
    "zerotr": (
        _tr(0),
        r"^RepetitionTime 0 in sidecar sub-zerotr_task-rest_bold\.json "
        r"is not a positive finite number$",
        BOLD,
    ),
    "negtr": (_tr(-2.0), r"^RepetitionTime -2\.0 in sidecar \S+ is not a positive finite", BOLD),
    "texttr": (_tr("2.0"), r"^RepetitionTime '2\.0' in sidecar \S+ is not a number$", BOLD),
    "nulltr": (_tr(None), r"^RepetitionTime is null in sidecar \S+$", BOLD),
    "mstr": (_tr(2000), r"^RepetitionTime 2000 in sidecar \S+ is over 60 s \(milliseconds", BOLD),
    "threed": (_three_d, r"^BOLD is 3D \(shape 8x8x6\); expected 4D$", BOLD),
    "short": (_short, r"^fewer volumes \(30\) than min_volumes \(50\)$", BOLD),
    "not1w": (_no_t1w, r"^no T1w for subject$", "sub-not1w"),
    "truncgz": (_truncated_gz, r"^cannot read NIfTI data: EOFError: ", BOLD),
    "truncnii": (_truncated_nii, r"^cannot read NIfTI data: ", "bold.nii"),
    "garbage": (_garbage, r"^cannot read NIfTI: ", BOLD),
    "anatfourd": (_t1w_4d, r"^T1w is 4D \(shape 10x10x8x3\); expected 3D$", "T1w.nii.gz"),
    "anattrunc": (_t1w_truncated, r"^cannot read NIfTI data: ", "T1w.nii.gz"),
    "badjson": (
        _bad_json,
        r"^cannot parse sidecar sub-badjson_task-rest_bold\.json: JSONDecodeError",
        BOLD,
    ),
    "inanat": (
        _bold_in_anat,
        r"^file belongs in sub-inanat/func/ but is in sub-inanat/anat/$",
        BOLD,
    ),
    "wrongname": (
        _other_subject_in_name,
        r"^file belongs in sub-zz/func/ but is in sub-wrongname/func/$",
        BOLD,
    ),
    "runx": (
        _renamed("sub-{sub}_task-rest_run-x_bold.nii.gz"),
        r"^run index 'x' is not a non-negative integer$",
        BOLD,
    ),
    "runrange": (
        _renamed("sub-{sub}_task-rest_run-1-2_bold.nii.gz"),
        r"^run index '1-2' is not a non-negative integer$",
        BOLD,
    ),
    "badacq": (
        _renamed("sub-{sub}_task-rest_acq-a+b_bold.nii.gz"),
        r"^acq label 'a\+b' is not alphanumeric$",
        BOLD,
    ),
    "loose": (
        _renamed("sub-{sub}_task-rest_acq-a_b_bold.nii.gz"),
        "^" + re.escape(RENAMED_MALFORMED) + "$",
        BOLD,
    ),
    "unknownent": (
        _renamed("sub-{sub}_task-rest_foo-1_bold.nii.gz"),
        r"^entity 'foo' is not allowed in a bold file name$",
        BOLD,
    ),
    "notask": (_renamed("sub-{sub}_bold.nii.gz"), r"^BOLD file name has no task entity$", BOLD),
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """One dataset: two good subjects and one subject per broken case."""
    root = bf.make_dataset(tmp_path_factory.mktemp("broken") / "ds", subjects=(*GOOD, *BROKEN))
    for sub, (breaker, _, _) in BROKEN.items():
        breaker(root, sub)
    return ingest_dataset(root, "broken")


@pytest.mark.parametrize("sub", list(BROKEN))
def test_each_broken_case_is_excluded_with_its_reason(broken, sub):
    _, pattern, path_end = BROKEN[sub]
    rows = _excluded_for(broken, sub)
    reasons = list(rows["reason"])
    assert any(re.search(pattern, reason) for reason in reasons), reasons
    assert any(str(p).endswith(path_end) for p in rows["path"])
    assert sub not in set(broken.scans["subject"])
    assert set(rows["dataset"]) == {"broken"}


def test_broken_cases_leave_the_good_subjects_alone(broken):
    assert list(broken.scans["subject"]) == list(GOOD)
    # a rejected T1w gives two rows (the file, then the subject); the others one each
    counts = broken.excluded["subject"].value_counts()
    assert set(counts.index) == set(BROKEN)
    assert counts.drop(["anattrunc", "anatfourd"]).eq(1).all(), counts
    for sub in ("anattrunc", "anatfourd"):
        assert "no usable T1w for subject" in set(_excluded_for(broken, sub)["reason"])


def test_path_escaping_and_unicode_labels_are_rejected_not_read(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    escaping = root / "sub-.."
    bf.add_t1w(root, "x", path=escaping / "anat" / "sub-.._T1w.nii.gz")
    bf.add_bold(root, "x", path=escaping / "func" / "sub-.._task-rest_bold.nii.gz")
    bf.add_t1w(root, "0é")
    bf.add_bold(root, "0é")
    bf.add_t1w(root, "03", "a.b")
    bf.add_bold(root, "03", "a.b")
    (escaping / "func" / "sub-.._task-rest_bold.json").write_text("{not json")

    result = ingest_dataset(root, "labels")

    assert list(result.scans["subject"]) == ["01", "02"]
    reasons = dict(zip(result.excluded["path"], result.excluded["reason"], strict=True))
    assert reasons[str(escaping)] == "sub label '..' is not alphanumeric"
    assert reasons[str(root / "sub-0é")] == "sub label '0é' is not alphanumeric"
    assert reasons[str(root / "sub-03" / "ses-a.b")] == "ses label 'a.b' is not alphanumeric"
    assert reasons[str(root / "sub-03")] == "no BOLD for task 'rest'"
    # nothing inside a rejected folder is reported or used
    assert not any("/sub-../" in p or "/sub-0é/" in p for p in result.excluded["path"])


def test_label_parser_rejects_separators_and_non_ascii():
    for name, problem in [
        ("sub-a/b_T1w.nii.gz", "sub label 'a/b' is not alphanumeric"),
        ("sub-0é_T1w.nii.gz", "sub label '0é' is not alphanumeric"),
        ("sub-01_ses-.._T1w.nii.gz", "ses label '..' is not alphanumeric"),
        ("sub-01_run-01_run-02_T1w.nii.gz", "entity 'run' appears twice in the file name"),
    ]:
        with pytest.raises(BadName) as info:
            parse_name(name)
        assert info.value.reason == problem
    parsed = parse_name("sub-01_ses-pre_task-rest_run-02_bold.nii.gz")
    assert parsed.entities == {"sub": "01", "ses": "pre", "task": "rest", "run": "02"}
    assert (parsed.suffix, parsed.extension) == ("bold", ".nii.gz")


# ------------------------------------------------------------------ participants.tsv


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("subject\tage\nsub-01\t30\n", r"no participant_id column \(columns: subject, age\)$"),
        ("participant_id,age\nsub-01,30\n", r"no participant_id column .*commas: BIDS requires"),
        (
            "participant_id\tage\nsub-01\t30\nsub-02\t31\nsub-01\t32\n",
            r"duplicate participant_id values: sub-01$",
        ),
        ("participant_id\tage\nsub-01\t30\t7\n", r"line 2 has 3 fields but the header has 2"),
        ("", r"is empty"),
    ],
    ids=["no-id-column", "comma-separated", "duplicate-ids", "ragged-row", "empty"],
)
def test_malformed_participants_tsv_fails_naming_the_file(tmp_path, text, problem):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    bf.write_participants(root, text=text)
    with pytest.raises(InputDataError, match=problem) as info:
        ingest_dataset(root, "demoA")
    assert info.value.path == root / "participants.tsv"
    assert str(root / "participants.tsv") in str(info.value)


def test_participants_tsv_that_is_not_text_fails(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01",))
    (root / "participants.tsv").write_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")
    with pytest.raises(InputDataError, match=r"participants\.tsv: not UTF-8 text"):
        ingest_dataset(root, "demoA")


def test_non_numeric_phenotype_becomes_nan_with_a_warning(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"), participants=False)
    bf.write_participants(
        root,
        [
            {"participant_id": "sub-01", "age": "about 30", "sex": "F", "site": "siteA"},
            {"participant_id": "sub-02", "age": "n/a", "sex": "n/a", "site": "siteB"},
            {"participant_id": "sub-03", "age": "40", "sex": "M", "site": "siteA"},
            {"participant_id": "sub-a/b", "age": "41", "sex": "M", "site": "siteA"},
        ],
    )
    result = ingest_dataset(root, "demoA", site_column="site")

    scans = result.scans.set_index("subject")
    assert math.isnan(scans.loc["01", "age"]) and math.isnan(scans.loc["02", "age"])
    assert scans.loc["01", "sex"] == "F" and pd.isna(scans.loc["02", "sex"])
    assert list(scans["site"]) == ["siteA", "siteB"]
    warnings = "\n".join(result.warnings)
    assert "participants.tsv: sub-01 column 'age' value 'about 30' is not a number" in warnings
    assert "sub-02 column 'age'" not in warnings  # n/a is missing, not malformed
    assert "participants.tsv lists sub-03, which has no folder" in warnings
    assert "participant_id 'sub-a/b' ignored (sub label 'a/b' is not alphanumeric)" in warnings
    assert "participants.tsv has no column 'fluid_intelligence'" in warnings
    assert pd.api.types.is_float_dtype(result.scans["fluid_intelligence"])


def test_missing_participants_tsv_is_a_warning_and_data_without_rows_is_reported(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"), participants=False)
    (root / "dataset_description.json").unlink()
    result = ingest_dataset(root, "demoA")
    assert len(result.scans) == 2
    assert "dataset_description.json is missing (required by BIDS)" in result.warnings
    assert result.scans["age"].isna().all()
    assert any("participants.tsv is missing" in w for w in result.warnings)

    bf.write_participants(root, [{"participant_id": "sub-01", "age": "30"}])
    result = ingest_dataset(root, "demoA", phenotypes={"age": "number"})
    assert list(result.scans.columns[-1:]) == ["age"]
    assert "sub-02 has data but no row in participants.tsv" in result.warnings
    assert list(result.scans["subject"]) == ["01", "02"]  # reported, not excluded


def test_requested_site_column_must_exist(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01",))
    with pytest.raises(InputDataError, match=r"participants.tsv: site_column 'scanner' is not"):
        ingest_dataset(root, "demoA", site_column="scanner")


# ------------------------------------------------------------------------ TR policy


def _one_subject_with_header_tr(tmp_path, header_tr, time_units="sec") -> Path:
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    bf.add_bold(root, "02", tr=2.0, header_tr=header_tr, time_units=time_units)
    return root


def test_header_tr_conflict_warns_and_keeps_the_sidecar_value(tmp_path):
    root = _one_subject_with_header_tr(tmp_path, 2.5)
    result = ingest_dataset(root, "demoA", tr_conflict="warn")
    assert list(result.scans["subject"]) == ["01", "02"]
    assert result.scans.loc[1, "tr"] == 2.0
    assert result.warnings == [
        "sub-02_task-rest_bold.nii.gz: header TR 2.5 s disagrees with sidecar "
        "RepetitionTime 2 s (25.0% apart, tolerance 1.0%); using the sidecar value"
    ]


def test_header_tr_conflict_excludes_the_run_when_asked(tmp_path):
    root = _one_subject_with_header_tr(tmp_path, 2.5)
    result = ingest_dataset(root, "demoA", tr_conflict="exclude")
    assert list(result.scans["subject"]) == ["01"]
    (reason,) = _excluded_for(result, "02")["reason"]
    assert reason.startswith("header TR 2.5 s disagrees with sidecar RepetitionTime 2 s")
    assert reason.endswith("; tr_conflict=exclude")


@pytest.mark.parametrize(
    ("header_tr", "units"),
    [(0.0, "sec"), (1.0, "sec"), (2000.0, "msec"), (2.015, "sec"), (2.0e6, "usec"), (1.0, "msec")],
)
def test_header_placeholders_units_and_small_differences_are_not_conflicts(
    tmp_path, header_tr, units
):
    root = _one_subject_with_header_tr(tmp_path, header_tr, units)
    result = ingest_dataset(root, "demoA", tr_conflict="exclude", tr_tolerance=0.01)
    assert list(result.scans["subject"]) == ["01", "02"]
    assert result.warnings == []


def test_repetition_time_is_inherited_from_a_top_level_sidecar(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"), tr=0.735)
    for sub in ("01", "02"):
        bf.add_bold(root, sub, tr=0.735, drop=("RepetitionTime",))
    bf.write_json_file(root / "task-rest_bold.json", {"RepetitionTime": 0.735})
    result = ingest_dataset(root, "demoA")
    assert list(result.scans["tr"]) == [0.735, 0.735]
    assert list(result.scans["duration_s"]) == [44.1, 44.1]
    assert result.scans.loc[0, "bold_sidecar"].endswith("sub-01_task-rest_bold.json")

    bf.write_json_file(root / "task-rest_bold.json", {"RepetitionTime": -1})
    with pytest.raises(NoUsableScansError, match=r"task-rest_bold\.json is not a positive"):
        ingest_dataset(root, "demoB")


# ---------------------------------------------------------------------- slice timing


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"SliceTiming": [0.0, 0.5, 1.0]}, "SliceTiming has 3 values but the image has 6 slices"),
        ({"SliceTiming": [0, 0.4, 0.8, 1.2, 1.6, 2.0]}, "outside [0, TR=2 s)"),
        ({"SliceTiming": [0.0] * 6}, "all SliceTiming values are equal"),
        ({"SliceTiming": "0 0.5"}, "SliceTiming is not a non-empty list"),
    ],
    ids=["wrong-count", "out-of-range", "all-equal", "not-a-list"],
)
def test_bad_slice_timing_keeps_the_run_without_slice_timing(tmp_path, metadata, problem):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    bf.add_bold(root, "02", metadata=metadata)
    result = ingest_dataset(root, "demoA")
    assert list(result.scans["has_slice_timing"]) == [True, False]
    (warning,) = result.warnings
    assert warning.startswith("sub-02_task-rest_bold.nii.gz: SliceTiming ignored (")
    assert problem in warning


def test_slice_count_follows_slice_encoding_direction(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"), shape=(8, 7, 6))
    bf.add_bold(
        root,
        "02",
        shape=(8, 7, 6),
        metadata={"SliceEncodingDirection": "j", "SliceTiming": bf.slice_times(7, 2.0)},
    )
    bf.add_bold(root, "01", shape=(8, 7, 6), drop=("SliceTiming",))
    result = ingest_dataset(root, "demoA")
    assert list(result.scans["n_slices"]) == [6, 7]
    assert list(result.scans["has_slice_timing"]) == [False, True]
    assert result.warnings == []


# ------------------------------------------------------------- sessions, runs, pairs


def test_sessions_and_runs_pair_with_the_right_t1w(tmp_path):
    root = bf.make_dataset(
        tmp_path / "ds", subjects=("01", "02"), sessions=("pre", "post"), runs=("1", "2")
    )
    bf.add_bold(root, "01", "pre", "10")
    # sub-02 has no T1w in ses-post: its ses-post runs use the ses-pre T1w
    bf.t1w_path(root, "02", "post").unlink()
    # sub-01 has two T1w in ses-pre: the first (run-1) is used, with a warning
    bf.add_t1w(root, "01", "pre", "1")
    bf.add_t1w(root, "01", "pre", "2")
    bf.t1w_path(root, "01", "pre").unlink()

    result = ingest_dataset(root, "demoA")
    scans = result.scans
    keys = list(zip(scans["subject"], scans["session"], scans["run"], strict=True))
    assert keys == [
        ("01", "post", "1"),
        ("01", "post", "2"),
        ("01", "pre", "1"),
        ("01", "pre", "2"),
        ("01", "pre", "10"),
        ("02", "post", "1"),
        ("02", "post", "2"),
        ("02", "pre", "1"),
        ("02", "pre", "2"),
    ]
    t1w = dict(zip(zip(scans["subject"], scans["session"], strict=True), scans["t1w"], strict=True))
    assert t1w[("01", "pre")].endswith("sub-01/ses-pre/anat/sub-01_ses-pre_run-1_T1w.nii.gz")
    assert t1w[("01", "post")].endswith("sub-01/ses-post/anat/sub-01_ses-post_T1w.nii.gz")
    assert t1w[("02", "post")].endswith("sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz")
    assert list(scans.loc[scans["subject"] == "02", "t1w_session"]) == ["pre"] * 4
    assert list(scans.loc[scans["subject"] == "01", "t1w_session"]) == [
        "post",
        "post",
        "pre",
        "pre",
        "pre",
    ]
    assert result.warnings == [
        "sub-01 ses-pre: 2 usable T1w images; using sub-01_ses-pre_run-1_T1w.nii.gz"
    ]


def test_two_bold_variants_of_one_run_keep_the_first(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01",))
    bold = bf.bold_path(root, "01")
    bf.add_bold(root, "01", path=bold.with_name("sub-01_task-rest_acq-mb4_bold.nii.gz"))
    result = ingest_dataset(root, "demoA")
    assert list(result.scans["bold"]) == [
        str(bold.with_name("sub-01_task-rest_acq-mb4_bold.nii.gz"))
    ]
    (reason,) = result.excluded["reason"]
    assert reason.startswith("same subject/session/run as sub-01_task-rest_acq-mb4_bold.nii.gz")


def test_other_tasks_are_ignored_and_exclude_subjects_is_honoured(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    bf.add_bold(root, "01", task="motor")
    for ext in (".nii.gz", ".json"):
        bf.bold_path(root, "03", ext=ext).rename(bf.bold_path(root, "03", task="motor", ext=ext))
    result = ingest_dataset(root, "demoA", exclude_subjects=["sub-02"])
    assert list(result.scans["subject"]) == ["01"]
    assert dict(zip(result.excluded["subject"], result.excluded["reason"], strict=True)) == {
        "02": "subject listed in exclude_subjects",
        "03": "no BOLD for task 'rest'",
    }
    motor = ingest_dataset(root, "demoA", task="motor")
    assert list(motor.scans["subject"]) == ["01", "03"]


def test_participant_label_keeps_only_those_subjects(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03", "10"))
    result = ingest_dataset(root, "demoA", participant_label=["01", "sub-10"])
    assert list(result.scans["subject"]) == ["01", "10"]
    assert dict(zip(result.excluded["subject"], result.excluded["reason"], strict=True)) == {
        "02": "subject not in participant_label",
        "03": "subject not in participant_label",
    }
    assert result.parameters["participant_label"] == ["01", "10"]
    both = ingest_dataset(root, "demoA", participant_label=["01", "02"], exclude_subjects=["02"])
    assert list(both.scans["subject"]) == ["01"]
    assert ingest_dataset(root, "demoA", participant_label=[]).scans["subject"].tolist() == [
        "01",
        "02",
        "03",
        "10",
    ]


@pytest.mark.parametrize("option", ["participant_label", "exclude_subjects"])
def test_a_label_that_names_nobody_is_an_error_with_the_closest_labels(tmp_path, option):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "103"))
    with pytest.raises(InputDataError) as info:
        ingest_dataset(root, "demoA", **{option: ["01", "013"]})
    message = str(info.value)
    assert f"{option} names sub-013, which has no folder" in message
    assert "closest: sub-01" in message and "sub-103" in message
    assert str(root) in message


def test_cli_participant_label(tmp_path, ingest_cli):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    out = tmp_path / "out"
    base = ["ingest", "--bids-dir", str(root), "--dataset", "demoA", "--out-dir", str(out)]
    assert ingest_cli([*base, "--participant-label", "01", "sub-03"]) == 0
    assert list(read_scans(out / "scans.tsv")["subject"]) == ["01", "03"]
    assert ingest_cli([*base, "--participant-label", "04"]) == 2


# -------------------------------------------------------------- nothing usable, CLI


def _nothing_usable(tmp_path) -> Path:
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    bf.add_bold(root, "01", n_volumes=0)
    bf.add_bold(root, "02", drop=("RepetitionTime",))
    shutil.rmtree(root / "sub-03" / "anat")
    return root


def test_dataset_with_nothing_usable_fails_naming_dataset_and_reasons(tmp_path):
    root = _nothing_usable(tmp_path)
    with pytest.raises(InputDataError) as info:
        ingest_dataset(root, "demoA")
    message = str(info.value)
    assert isinstance(info.value, NoUsableScansError)
    assert info.value.path == root
    assert "dataset 'demoA' has nothing usable" in message
    assert "BOLD is 3D (shape 8x8x6); expected 4D" in message
    assert "RepetitionTime missing in sidecar sub-02_task-rest_bold.json" in message
    assert "no T1w for subject" in message
    assert len(info.value.result.excluded) == 3


@pytest.fixture
def ingest_cli(monkeypatch):
    """``brainharmony`` with only the ingest sub-command (others may be work in progress)."""
    monkeypatch.setattr(cli, "COMMANDS", {"ingest": cli.COMMANDS["ingest"]})
    return cli.main


def test_cli_exits_2_and_still_writes_excluded_tsv(tmp_path, capsys, ingest_cli):
    root = _nothing_usable(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "scans.tsv").write_text("stale\n")
    code = cli.main(
        ["ingest", "--bids-dir", str(root), "--dataset", "demoA", "--out-dir", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "dataset 'demoA' has nothing usable" in err and "no T1w for subject" in err
    assert str(out / "excluded.tsv") in err
    excluded = pd.read_csv(out / "excluded.tsv", sep="\t", dtype=str)
    assert len(excluded) == 3
    assert not (out / "scans.tsv").exists()


def test_cli_writes_the_three_outputs(tmp_path, ingest_cli):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    out = tmp_path / "out"
    code = ingest_cli(
        [
            "ingest",
            "--bids-dir",
            str(root),
            "--dataset",
            "demoA",
            "--out-dir",
            str(out),
            "--phenotypes",
            "age:number,diagnosis:category",
            "--exclude-subjects",
            "02,sub-03",
            "--min-volumes",
            "60",
            "--tr-conflict",
            "exclude",
        ]
    )
    assert code == 0
    scans = read_scans(out / "scans.tsv")
    assert list(scans["subject"]) == ["01"]
    assert list(scans.columns[-2:]) == ["age", "diagnosis"]
    assert sorted(pd.read_csv(out / "excluded.tsv", sep="\t", dtype=str)["subject"]) == ["02", "03"]
    sidecar = json.loads((out / "scans.json").read_text())
    assert sidecar["Provenance"]["Parameters"]["tr_conflict"] == "exclude"
    assert sidecar["Provenance"]["Parameters"]["min_volumes"] == 60


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--min-volumes", "0", "must be >= 1; got 0"),
        ("--tr-tolerance", "-1", "must be a finite number >= 0"),
        ("--phenotypes", "age:float", "is not NAME:number or NAME:category"),
        ("--exclude-subjects", "../x", "sub label '../x' is not alphanumeric"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, ingest_cli, option, value, message):
    args = ["ingest", "--bids-dir", str(tmp_path), "--dataset", "d", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as info:
        ingest_cli([*args, option, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_parameters_and_missing_folder_are_named(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01",))
    for kwargs, match in [
        ({"min_volumes": 0}, "min_volumes must be an integer >= 1; got 0"),
        ({"tr_conflict": "ignore"}, "tr_conflict must be 'warn' or 'exclude'; got 'ignore'"),
        ({"task": "a/b"}, "task must be an alphanumeric BIDS label; got 'a/b'"),
        ({"tr_tolerance": -0.1}, "tr_tolerance must be a finite number >= 0"),
        ({"phenotypes": {"age": "float"}}, "type of 'age' must be one of"),
        ({"phenotypes": {"tr": "number"}}, "clashes with a scans.tsv column"),
        ({"exclude_subjects": "01"}, "not one string"),
    ]:
        with pytest.raises(ValueError, match=re.escape(match)):
            ingest_dataset(root, "demoA", **kwargs)
    with pytest.raises(InputDataError, match="dataset 'demoB': the BIDS folder does not exist"):
        ingest_dataset(tmp_path / "nowhere", "demoB")


# ------------------------------------------------------------------------ demo data


def test_demo_datasets_ingest_with_every_subject_usable(request):
    try:
        demo = request.getfixturevalue("tiny_demo")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_demo fixture is not provided by tests/unit/conftest.py yet")
    for name in ("demoA", "demoB"):
        root = Path(demo) / name
        subjects = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
        assert subjects, f"{root} has no subjects"
        # the volume threshold is a config choice; the tiny preset may have short runs
        result = ingest_dataset(root, name, min_volumes=1)
        assert result.excluded.empty, result.excluded.to_dict("records")
        assert sorted(set(result.scans["subject"])) == subjects
        assert result.scans["tr"].gt(0).all()
        assert result.scans["has_slice_timing"].all()
        assert result.scans["age"].notna().any()
        problems = [w for w in result.warnings if "TR" in w or "SliceTiming" in w]
        assert problems == [], problems
