"""Ingest and hostile images or implausible values (issue 23, items 2, 4 and 6).

One dataset holds two good subjects and one subject per defect. Each defect must be
an exclusion of that run (BOLD) or of that T1w and then its subject ("no usable T1w
for subject"), with the reason; the good subjects are indexed as usual. A second
dataset uses a real EPI from outside the project (nibabel's ``example4d.nii.gz``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony import cli
from brainharmony.ingest import ingest_dataset
from tests.unit import bids_factory as bf
from tests.unit.test_nifti_checks import EXAMPLE4D, flip_gzip_byte, unoriented, zero_sform

GOOD = ("good1", "good2")
HUGE = 10**400


def _rewrite(path: Path, change: Callable[[nib.Nifti1Image], nib.Nifti1Image]) -> None:
    img = nib.load(path)
    new = change(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header))
    path.unlink()
    nib.save(new, path)


def _bold(change):
    return lambda root, sub: _rewrite(bf.bold_path(root, sub), change)


def _t1w(change):
    return lambda root, sub: _rewrite(bf.t1w_path(root, sub), change)


def _complex(img):
    return nib.Nifti1Image(np.asarray(img.dataobj).astype(np.complex64), img.affine)


def _rgb(img):
    rgb = np.zeros(img.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return nib.Nifti1Image(rgb, img.affine)


def _zooms(*zooms):
    def change(img):
        return nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([*zooms, 1.0]), img.header)

    return change


def _gzip(which, where):
    def breaker(root, sub):
        path = bf.bold_path(root, sub) if which == "bold" else bf.t1w_path(root, sub)
        flip_gzip_byte(path, where)

    return breaker


def _metadata(**values):
    return lambda root, sub: bf.add_bold(root, sub, metadata=values, header_tr=0.0)


BOLD = "bold.nii.gz"
T1W = "T1w.nii.gz"
NO_T1W = "no usable T1w for subject"

#: subject -> (breaker, expected reason (regex), path suffix of the excluded file)
CASES: dict[str, tuple[Callable[[Path, str], None], str, str]] = {
    "noorient": (
        _bold(unoriented),
        r"^no orientation: qform_code and sform_code are both 0",
        BOLD,
    ),
    "zerosform": (_bold(zero_sform), r"^sform \(code 1\) is singular", BOLD),
    "complexbold": (_bold(_complex), r"^voxel type complex64 is complex", BOLD),
    "crcbold": (_gzip("bold", "crc"), r"^cannot read NIfTI data: BadGzipFile: CRC check", BOLD),
    "lenbold": (_gzip("bold", "length"), r"^cannot read NIfTI data: .*Incorrect length", BOLD),
    "bigvoxel": (_bold(_zooms(3.0, 3.0, 40.0)), r"^voxel size 3x3x40 mm is outside", BOLD),
    "tinytr": (
        _metadata(RepetitionTime=1e-6),
        r"^RepetitionTime 1e-06 in sidecar sub-tinytr_task-rest_bold\.json is outside "
        r"the plausible range 0\.1-10 s \(tr_range\)$",
        BOLD,
    ),
    "longtr": (_metadata(RepetitionTime=12.5), r"^RepetitionTime 12\.5 in .* outside", BOLD),
    "listtr": (
        _metadata(RepetitionTime=[2.0]),
        r"^RepetitionTime \[2\.0\] in .* not a number",
        BOLD,
    ),
    "noorientt1w": (_t1w(unoriented), r"^no orientation: qform_code and sform_code", T1W),
    "rgbt1w": (_t1w(_rgb), r"RGB or structured", T1W),
    "crct1w": (_gzip("t1w", "crc"), r"^cannot read NIfTI data: BadGzipFile: CRC check", T1W),
    "tinyvoxelt1w": (_t1w(_zooms(0.01, 1.0, 1.0)), r"^voxel size 0\.01x1x1 mm is outside", T1W),
}


def _excluded_for(result, subject: str) -> pd.DataFrame:
    return result.excluded[result.excluded["subject"] == subject]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = bf.make_dataset(tmp_path_factory.mktemp("hostile") / "ds", subjects=(*GOOD, *CASES))
    for sub, (breaker, _, _) in CASES.items():
        breaker(root, sub)
    return ingest_dataset(root, "hostile")


@pytest.mark.parametrize("sub", list(CASES))
def test_each_hostile_image_or_value_is_excluded_with_its_reason(hostile, sub):
    _, pattern, path_end = CASES[sub]
    rows = _excluded_for(hostile, sub)
    reasons = list(rows["reason"])
    hits = [r for r, p in zip(reasons, rows["path"], strict=True) if re.search(pattern, r)]
    assert hits, reasons
    assert any(str(p).endswith(path_end) for p in rows["path"])
    assert sub not in set(hostile.scans["subject"])
    if path_end == T1W:
        assert NO_T1W in reasons  # the subject goes, with its own row
    else:
        assert len(rows) == 1


def test_hostile_subjects_leave_the_others_alone(hostile):
    assert list(hostile.scans["subject"]) == list(GOOD)
    assert set(hostile.excluded["subject"]) == set(CASES)


def test_huge_integers_in_metadata_are_reasons_not_overflow_errors(tmp_path):
    """The value checks take a 400-digit RepetitionTime or SliceTiming entry (however the
    JSON reader lets it through) without OverflowError."""
    from brainharmony.bids_checks import Rejected, repetition_time, slice_timing_problem

    sidecar = [(tmp_path / "sub-01_task-rest_bold.json", {"RepetitionTime": HUGE})]
    with pytest.raises(Rejected) as info:
        repetition_time({"RepetitionTime": HUGE}, sidecar, "sub-01_task-rest_bold.json")
    assert info.value.reason == (
        "RepetitionTime <integer of 401 digits> in sidecar sub-01_task-rest_bold.json "
        "is not a positive finite number"
    )
    times = bf.slice_times(6, 2.0)
    assert slice_timing_problem([HUGE, *times[1:]], 6, 2.0) == "SliceTiming has non-finite values"
    assert slice_timing_problem([-HUGE, *times[1:]], 6, 2.0) == "SliceTiming has non-finite values"


def test_tr_range_is_configurable(tmp_path):
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    bf.add_bold(root, "02", tr=12.5, header_tr=0.0)
    assert list(ingest_dataset(root, "d").scans["subject"]) == ["01"]
    wide = ingest_dataset(root, "d", tr_range=(0.1, 20.0))
    assert list(wide.scans["subject"]) == ["01", "02"]
    assert wide.parameters["tr_range"] == [0.1, 20.0]
    with pytest.raises(ValueError, match=r"tr_range must satisfy 0 < min < max"):
        ingest_dataset(root, "d", tr_range=(5.0, 1.0))


def test_ingest_cli_tr_range_option(tmp_path, capsys):
    import json

    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02"))
    bf.add_bold(root, "02", tr=0.05, header_tr=0.0)
    out = tmp_path / "out"
    base = ["ingest", "--bids-dir", str(root), "--dataset", "d", "--out-dir", str(out)]
    assert cli.main(base) == 0
    excluded = pd.read_csv(out / "excluded.tsv", sep="\t", dtype=str)
    assert excluded["reason"].str.contains("outside the plausible range 0.1-10 s").any()
    assert cli.main([*base, "--tr-range", "0.01", "10"]) == 0
    scans = pd.read_csv(out / "scans.tsv", sep="\t", dtype={"subject": str})
    assert list(scans["subject"]) == ["01", "02"]
    policy = json.loads((out / "scans.json").read_text())["RepetitionTimePolicy"]
    assert policy["PlausibleRange"] == [0.01, 10.0]


def test_real_epi_intact_is_kept_and_with_a_bad_crc_is_excluded(tmp_path):
    """nibabel's example4d.nii.gz (int16, 128x96x24x2, qform/sform code 1) as a BOLD."""
    root = bf.make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    for sub in ("01", "02", "03"):
        dest = bf.bold_path(root, sub)
        dest.unlink()
        shutil.copy(EXAMPLE4D, dest)
    flip_gzip_byte(bf.bold_path(root, "02"), "crc")
    _rewrite(bf.bold_path(root, "03"), unoriented)
    result = ingest_dataset(root, "real", min_volumes=2)
    assert list(result.scans["subject"]) == ["01"]
    reasons = dict(zip(result.excluded["subject"], result.excluded["reason"], strict=True))
    assert reasons["02"].startswith("cannot read NIfTI data: BadGzipFile: CRC check failed")
    assert reasons["03"].startswith("no orientation: qform_code and sform_code are both 0")
