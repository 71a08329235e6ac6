"""One broken subject costs one subject: a ``--keep-going`` run over a dataset where half
the subjects carry a hostile defect finishes the other half, byte for byte as a run
that never saw the broken subjects.

The dataset is the tiny demo's demoA (4 subjects) under a name the project does not
know. Two subjects are damaged with defects from issue 23 that used to give silent
wrong output or stop the whole dataset:

* ``sub-02``: a BOLD with 1e30 in every voxel of three volumes in the middle of the run
  (ingestion reads only the last volume, so this reaches the ``func`` job, which
  refuses it: a failed job that ``--keep-going`` steps past; it used to end in a
  traceback);
* ``sub-04``: a BOLD sidecar whose ``RepetitionTime`` is a 400-digit integer (an
  ``OverflowError`` stopped ingestion for every subject).

Both runs use the same raw-data path (provenance records it), one after the other, from
the same checkout (provenance records the git commit: do not commit while it runs).
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

GOOD = ("01", "03")
BROKEN = {"02": r"1e\+?10|implausible|corrupt", "04": r"sidecar.*(digits|too large)"}


def _huge_volumes(bold: Path) -> None:
    img = nib.load(bold)
    data = img.get_fdata(dtype="float32")
    middle = data.shape[3] // 2
    data[..., middle - 1 : middle + 2] = 1e30
    header = img.header.copy()
    header.set_data_dtype("float32")
    out = nib.Nifti1Image(data, img.affine, header)
    tmp = bold.with_name("tmp_" + bold.name)
    nib.save(out, tmp)
    tmp.replace(bold)


def _huge_tr(sidecar: Path) -> None:
    text = sidecar.read_text(encoding="utf-8")
    import json

    meta = json.loads(text)
    meta.pop("RepetitionTime", None)
    body = json.dumps(meta)[:-1]
    sidecar.write_text(body + ', "RepetitionTime": 1' + "0" * 400 + "}", encoding="utf-8")


def _snapshot(results: Path, subjects: tuple[str, ...]) -> dict[str, Path]:
    """Every result file that belongs to ``subjects`` (subject folders and figures)."""
    files: dict[str, Path] = {}
    for stage in ("anat", "func"):
        base = results / stage / "mystudy"
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(results).as_posix()
            if path.is_file() and any(f"sub-{s}" in rel for s in subjects):
                files[rel] = path
    return files


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keep-going")
    out = subprocess.run(
        [str(BIN / "brainharmony"), "demo", "--out", str(root / "gen"), "--preset", "tiny",
         "--seed", "7", "--datasets", "demoA"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    broken = root / "broken"
    shutil.copytree(root / "gen" / "demoA", broken)
    _huge_volumes(broken / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz")
    _huge_tr(broken / "sub-04" / "func" / "sub-04_task-rest_bold.json")
    clean = root / "clean"
    shutil.copytree(root / "gen" / "demoA", clean)
    for label in BROKEN:
        shutil.rmtree(clean / f"sub-{label}")
    table = pd.read_csv(clean / "participants.tsv", sep="\t", dtype=str)
    keep = table["participant_id"].isin([f"sub-{s}" for s in GOOD])
    table[keep].to_csv(clean / "participants.tsv", sep="\t", index=False)
    return {"root": root, "broken": broken, "clean": clean}


def _run(datasets: dict[str, Path], which: str, workdir: Path):
    """Run ingest, anat and func over ``which`` placed at the shared raw-data path."""
    raw = datasets["root"] / "mystudy"
    if raw.exists():
        shutil.rmtree(raw)
    shutil.copytree(datasets[which], raw)
    workdir.mkdir(parents=True)
    cfg = workdir / "my.yaml"
    config = {
        "datasets": {"mystudy": {"bids_dir": str(raw)}},
        "anat": {"brain_extraction": "template"},
    }
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    return run_snakemake(
        workdir, "--configfile", str(cfg), "--cores", "2", "--keep-going",
        "anat_all", "func_all", timeout=1800,
    )  # fmt: skip


def test_half_broken_dataset_finishes_the_good_half_byte_identical(datasets, tmp_path):
    clean_run = _run(datasets, "clean", tmp_path / "clean")
    assert clean_run.returncode == 0, clean_run.stderr[-3000:]
    broken_run = _run(datasets, "broken", tmp_path / "broken")
    # sub-02's func job fails; --keep-going finishes everything else.
    assert broken_run.returncode != 0
    log = broken_run.stdout + broken_run.stderr
    assert "Traceback" not in log, log[-3000:]

    work = tmp_path / "broken"
    results = work / "results"
    excluded = pd.read_csv(results / "ingest" / "mystudy" / "excluded.tsv", sep="\t", dtype=str)
    scans = pd.read_csv(results / "ingest" / "mystudy" / "scans.tsv", sep="\t", dtype=str)
    assert sorted(set(scans["subject"])) == ["01", "02", "03"]
    reasons = " | ".join(excluded.loc[excluded["subject"] == "04", "reason"])
    assert re.search(BROKEN["04"], reasons, flags=re.IGNORECASE), reasons
    (log_path,) = (work / "logs" / "func" / "mystudy").rglob("sub-02_task-rest*.log")
    func_log = log_path.read_text()
    assert "sub-02_task-rest_bold.nii.gz" in func_log, func_log[-2000:]
    assert re.search(BROKEN["02"], func_log, flags=re.IGNORECASE), func_log[-2000:]
    assert "Traceback" not in func_log, func_log[-3000:]

    want = _snapshot(tmp_path / "clean" / "results", GOOD)
    got = _snapshot(results, GOOD)
    assert want, "the clean run wrote nothing"
    assert sorted(got) == sorted(want)
    differ = [rel for rel in want if not filecmp.cmp(want[rel], got[rel], shallow=False)]
    assert differ == [], differ
    # No func output for the broken subjects, nothing at all for the excluded one.
    assert not [rel for rel in _snapshot(results, ("02",)) if rel.startswith("func/")]
    assert _snapshot(results, ("04",)) == {}
