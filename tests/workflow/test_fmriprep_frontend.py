"""fMRIPrep front end with stand-in ``fmriprep-docker`` / ``apptainer`` executables.

The stand-ins are small Python programs put on PATH under the real tools' names. Each
appends its argv to a JSON-lines log, finds the BIDS and output folders the way the
real tool would (positional arguments; Apptainer bind mounts), and writes
fMRIPrep-shaped outputs (``brainharmony.func.fmriprep_fixture``, with two
non-steady-state volumes per run). The tests check the command lines, the outputs'
discovery, and the denoise/parcellate step on them, through the command line and
(when the workflow includes ``func.smk``) Snakemake. The reader's tests on real
fMRIPrep confounds files are in ``tests/unit/func/test_fmriprep.py``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, run_snakemake

pytestmark = pytest.mark.workflow

STANDIN = r"""
import json, os, subprocess, sys
from pathlib import Path

tool = Path(sys.argv[0]).name
args = sys.argv[1:]
with open(os.environ["FMRIPREP_STANDIN_LOG"], "a") as log:
    log.write(json.dumps({"tool": tool, "argv": args}) + "\n")
if tool == "fmriprep-docker":
    bids, out = args[0], args[1]
else:  # apptainer / singularity: run [opts] IMAGE /data /out participant ...
    binds = {}
    for i, a in enumerate(args):
        if a in ("-B", "--bind"):
            host, inside = args[i + 1].split(":")[:2]
            binds[inside] = host
    bids, out = binds["/data"], binds["/out"]
label = args[args.index("--participant-label") + 1]
sys.exit(subprocess.call([
    os.environ["FMRIPREP_STANDIN_PYTHON"], "-m", "brainharmony.func.fmriprep_fixture",
    bids, out, "--participant-label", label, "--res", "2", "--dummies", "2",
    "--atlas-cache", os.environ["FMRIPREP_STANDIN_ATLAS"],
]))
"""


def _bids(root: Path, subjects=("01", "02"), n_volumes: int = 60, t_r: float = 2.0) -> Path:
    """A raw BIDS folder whose BOLD runs have the right shape and sidecars."""
    from brainharmony.io import write_json

    rng = np.random.default_rng(0)
    write_json(root / "dataset_description.json", {"Name": "fmriprep test", "BIDSVersion": "1.9.0"})
    (root / "participants.tsv").write_text(
        "participant_id\tage\n" + "".join(f"sub-{s}\t{30 + i}\n" for i, s in enumerate(subjects))
    )
    for s in subjects:
        func = root / f"sub-{s}" / "func"
        anat = root / f"sub-{s}" / "anat"
        func.mkdir(parents=True)
        anat.mkdir(parents=True)
        affine = np.diag([4.0, 4.0, 4.0, 1.0])
        data = (100 + rng.standard_normal((16, 16, 12, n_volumes))).astype(np.float32)
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = t_r
        nib.save(img, func / f"sub-{s}_task-rest_bold.nii.gz")
        write_json(
            func / f"sub-{s}_task-rest_bold.json", {"RepetitionTime": t_r, "TaskName": "rest"}
        )
        nib.save(
            nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)),
            anat / f"sub-{s}_T1w.nii.gz",
        )
    return root


@pytest.fixture(scope="module")
def atlas6(tmp_path_factory):
    """The 6 mm MNI152NLin2009cAsym atlas resource, a file cache of the volume the
    fMRIPrep stand-in plants signal with, and the TemplateFlow home (built once).

    fMRIPrep's BOLD is in MNI152NLin2009cAsym, so its atlas must be too: with no
    official volume at 6 mm, the rebuild on the home's 2009cAsym grey matter (a
    stand-in, ``tests/atlas_standins.py``).
    """
    from brainharmony.atlas import schaefer400_volume
    from brainharmony.func.atlas_lookup import AtlasChoice
    from brainharmony.func.atlas_resource import build_atlas
    from tests.atlas_standins import C_ASYM, grey_matter_2009c

    root = tmp_path_factory.mktemp("atlas6")
    schaefer400_volume(6.0, cache_dir=root / "cache")
    gm = grey_matter_2009c(root / "templateflow")
    choice = AtlasChoice("rebuild", C_ASYM, 6.0, grey_matter=gm)
    return build_atlas(root / "resource", 6.0, choice=choice), root / "cache", root / "templateflow"


@pytest.fixture
def standins(tmp_path, monkeypatch, atlas6):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("fmriprep-docker", "apptainer"):
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\n{STANDIN}")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "standin.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FMRIPREP_STANDIN_LOG", str(log))
    monkeypatch.setenv("FMRIPREP_STANDIN_PYTHON", sys.executable)
    monkeypatch.setenv("FMRIPREP_STANDIN_ATLAS", str(atlas6[1]))
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))
    return log


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainharmony.pipelines.func", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_command_lines():
    from brainharmony.func.fmriprep import FmriprepSettings, fmriprep_command

    docker = fmriprep_command(
        "bids",
        "out",
        "work",
        "01",
        FmriprepSettings(license="lic.txt", nthreads=3, extra_args=("--dummy-scans", "0")),
    )
    assert Path(docker[0]).name == "fmriprep-docker"
    assert docker[1:4] == [str(Path("bids").absolute()), str(Path("out").absolute()), "participant"]
    joined = " ".join(docker)
    for piece in (
        "--participant-label 01",
        "-i nipreps/fmriprep:",
        "--fs-license-file",
        "--output-spaces MNI152NLin2009cAsym:res-2",
        "--nthreads 3",
        "--skip-bids-validation",
        "--fs-no-reconall",
        "--dummy-scans 0",
        f"-w {Path('work').absolute()}",
    ):
        assert piece in joined
    app = fmriprep_command(
        "bids",
        "out",
        "work",
        "01",
        FmriprepSettings(runner="apptainer", image="/images/fmriprep.sif", license="lic.txt"),
    )
    assert app[:3] == ["apptainer", "run", "--cleanenv"]
    assert f"{Path('bids').absolute()}:/data:ro" in app
    assert f"{Path('lic.txt').absolute()}:/opt/freesurfer/license.txt:ro" in app
    image_at = app.index("/images/fmriprep.sif")
    assert app[image_at + 1 : image_at + 4] == ["/data", "/out", "participant"]
    with pytest.raises(ValueError, match="without 'sub-'"):
        fmriprep_command("b", "o", "w", "sub-01", FmriprepSettings())
    with pytest.raises(ValueError, match="runner"):
        FmriprepSettings(runner="podman")


def test_missing_runner_is_a_clear_error(tmp_path):
    from brainharmony.func.fmriprep import FmriprepSettings, check_runner

    with pytest.raises(FileNotFoundError, match="not found on PATH"):
        check_runner(FmriprepSettings(executable=str(tmp_path / "nowhere" / "fmriprep-docker")))


@pytest.mark.parametrize("runner", ["docker", "apptainer"])
def test_run_then_denoise_through_the_cli(tmp_path, standins, atlas6, runner):
    bids = _bids(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "fmriprep"
    lic = tmp_path / "license.txt"
    lic.write_text("fake\n")
    done = tmp_path / "done.txt"
    res = _cli(
        "fmriprep",
        "--bids-dir",
        str(bids),
        "--fmriprep-dir",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
        "--participant-label",
        "01",
        "--runner",
        runner,
        "--image",
        "img.sif" if runner == "apptainer" else "nipreps/x:1",
        "--license",
        str(lic),
        "--nthreads",
        "2",
        "--done",
        str(done),
    )
    assert res.returncode == 0, res.stderr
    calls = _calls(standins)
    assert len(calls) == 1
    argv = calls[0]["argv"]
    assert "--participant-label" in argv and "01" in argv
    assert "--nthreads" in argv and argv[argv.index("--nthreads") + 1] == "2"
    assert done.exists() and "--participant-label 01" in done.read_text()
    func = out / "sub-01" / "func"
    assert (func / "sub-01_task-rest_desc-confounds_timeseries.tsv").exists()

    if runner == "apptainer":
        binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-B"]
        assert f"{lic}:/opt/freesurfer/license.txt:ro" in binds
        assert argv[argv.index("img.sif") + 1 : argv.index("img.sif") + 3] == ["/data", "/out"]
        return  # the denoising step is the same as for docker
    image, labels = atlas6[0].image, atlas6[0].labels
    res = _cli(
        "derivatives",
        "--fmriprep-dir",
        str(out),
        "--subject",
        "01",
        "--session",
        "n/a",
        "--run",
        "n/a",
        "--out-dir",
        str(tmp_path / "results"),
        "--atlas",
        str(image),
        "--atlas-labels",
        str(labels),
        "--strategy",
        "36P",
        "--no-qc",
    )
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "results" / "sub-01" / "func"
    series = pd.read_csv(
        run_dir / "sub-01_task-rest_space-MNI152NLin2009cAsym_atlas-Schaefer400"
        "_desc-denoised_timeseries.tsv",
        sep="\t",
    )
    assert series.shape == (60, 400)
    side = json.loads(
        (
            run_dir / "sub-01_task-rest_space-MNI152NLin2009cAsym_atlas-"
            "Schaefer400_desc-denoised_timeseries.json"
        ).read_text()
    )
    assert side["RepetitionTime"] == 2.0
    # The atlas used is named: the rebuild in fMRIPrep's own space.
    assert side["AtlasSource"] == "rebuild" and side["AtlasFile"] == image.name
    assert "offline rebuild" in side["Atlas"] and "MNI152NLin2009cAsym" in side["Atlas"]
    assert side["AtlasResampling"].startswith("nearest neighbour")  # 6 mm atlas, 2 mm BOLD
    assert side["Denoising"]["Strategy"] == "36P"
    assert len(side["Denoising"]["Confounds"]) == 36
    # The two non-steady-state volumes are censored and recorded.
    assert side["NonSteadyStateVolumes"]["Count"] == 2
    assert side["CensoredVolumes"][:2] == [0, 1]
    assert series.iloc[:2].isna().all().all()
    # The confounds copy: the censoring as fMRIPrep-style one-hot columns.
    conf = pd.read_csv(run_dir / "sub-01_task-rest_desc-confounds_timeseries.tsv", sep="\t")
    onehot = [c for c in conf.columns if c.startswith(("motion_outlier", "non_steady_state"))]
    censored = np.flatnonzero(conf[onehot].to_numpy().sum(axis=1) > 0).tolist()
    assert censored == side["CensoredVolumes"]
    assert sum(c.startswith("non_steady_state") for c in onehot) == 2


def test_derivatives_refuse_an_atlas_in_another_space(tmp_path, standins):
    """A 2009a atlas is never put on fMRIPrep's 2009cAsym BOLD (no nearest-neighbour
    shortcut between template spaces)."""
    from brainharmony.func.atlas_resource import build_atlas

    bids = _bids(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "fmriprep"
    res = _cli(
        "fmriprep",
        "--bids-dir",
        str(bids),
        "--fmriprep-dir",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
        "--participant-label",
        "01",
    )
    assert res.returncode == 0, res.stderr
    files = build_atlas(tmp_path / "atlas", 6.0, source="rebuild", space="MNI152NLin2009aAsym")
    res = _cli(
        "derivatives",
        "--fmriprep-dir",
        str(out),
        "--subject",
        "01",
        "--out-dir",
        str(tmp_path / "results"),
        "--atlas",
        str(files.image),
        "--atlas-labels",
        str(files.labels),
        "--no-qc",
    )
    assert res.returncode == 2
    assert "MNI152NLin2009aAsym but the BOLD is in MNI152NLin2009cAsym" in res.stderr
    assert not (tmp_path / "results").exists()


def test_derivatives_mode_refuses_missing_files(tmp_path):
    from brainharmony.func.fmriprep import find_run_files
    from brainharmony.io import InputDataError

    with pytest.raises(InputDataError, match="not found"):
        find_run_files(tmp_path, "01", None, "rest", None)
    folder = tmp_path / "sub-01" / "func"
    folder.mkdir(parents=True)
    (folder / "sub-01_task-rest_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz").touch()
    with pytest.raises(InputDataError, match="confounds"):
        find_run_files(tmp_path, "01", None, "rest", None)


def _wired() -> bool:
    snakefile = (REPO / "Snakefile").read_text()
    schema = (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
    return "func.smk" in snakefile and "\n  func:" in schema


@pytest.mark.slow
@pytest.mark.skipif(not _wired(), reason="Snakefile does not include func.smk yet")
def test_workflow_runs_the_fmriprep_backend(tmp_path, standins, atlas6, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(atlas6[2]))  # 2009cAsym grey matter
    bids = _bids(tmp_path / "bids")
    lic = tmp_path / "license.txt"
    lic.write_text("fake\n")
    config = {
        "datasets": {"study": {"bids_dir": str(bids), "phenotypes": {"age": "number"}}},
        "ingest": {"min_volumes": 20},
        "func": {
            "backend": "fmriprep",
            "resolution_mm": 6,
            "fmriprep": {"runner": "docker", "license": str(lic)},
        },
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "--cores", "2", "func_all")
    assert out.returncode == 0, out.stderr[-4000:]
    calls = _calls(standins)
    assert sorted(c["argv"][c["argv"].index("--participant-label") + 1] for c in calls) == [
        "01",
        "02",
    ]
    for s in ("01", "02"):
        run_dir = tmp_path / "results" / "func" / "study" / f"sub-{s}" / "func"
        assert (
            run_dir / f"sub-{s}_task-rest_space-MNI152NLin2009cAsym_atlas-Schaefer400"
            "_desc-denoised_timeseries.tsv"
        ).exists()
        side = json.loads(
            (
                run_dir / f"sub-{s}_task-rest_space-MNI152NLin2009cAsym_atlas-Schaefer400"
                "_desc-denoised_timeseries.json"
            ).read_text()
        )
        assert side["AtlasSource"] == "rebuild"
        assert side["AtlasFile"] == (
            "tpl-MNI152NLin2009cAsym_res-6_atlas-Schaefer400rebuilt_desc-7Networks_dseg.nii.gz"
        )
