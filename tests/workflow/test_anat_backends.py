"""The fsl / freesurfer anat backends with stand-in executables, and planning-time refusal.

The stand-ins (:mod:`tests.workflow.anat_standins`) are put on PATH under the real tools'
names. Each parses its argv against the real tool's option list (read from the tool's
source, cited there) and fails with the real tool's usage error on anything the tool
would reject; otherwise it appends its argv to a JSON-lines log and writes plausible
outputs: reoriented copies, a brain mask, and a registration that is the *true* pose of
a synthetic head, written in the tool's own convention (FLIRT scaled-voxel matrix,
``mri_coreg``'s voxel-to-voxel LTA). So the tests check that the command lines are ones
the real tools accept, the wiring between steps, and the conversion of each tool's
transform into the outputs' world matrices.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from brainharmony.anat import nipype_backends
from brainharmony.anat.nipype_backends import BackendUnavailableError, check_backend
from brainharmony.anat.phantom import make_phantom
from brainharmony.anat.pipeline import run_anat
from brainharmony.anat.settings import AnatSettings
from tests.conftest import REPO, snakemake_exe
from tests.workflow.anat_standins import SOURCES, TOOLS, UsageError, install_standins, parse_args


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    """A small synthetic head (3 mm voxels, stored LPS) with its true pose."""
    folder = tmp_path_factory.mktemp("anat-backends")
    ph = make_phantom(
        zooms_mm=(3.0, 3.0, 3.0),
        rotation_deg=(6.0, -4.0, 5.0),
        translation_mm=(3.0, -6.0, 9.0),
        noise=0.01,
        seed=3,
    )
    path = folder / "sub-01_T1w.nii.gz"
    nib.save(ph.image, path)
    return path, ph.mni_to_t1w


@pytest.fixture
def standins(tmp_path, monkeypatch, phantom_file):
    bin_dir = tmp_path / "bin"
    install_standins(bin_dir)
    log = tmp_path / "standin.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ANAT_STANDIN_LOG", str(log))
    t1w_to_mni = np.linalg.inv(phantom_file[1])
    monkeypatch.setenv("ANAT_STANDIN_WORLD", json.dumps(t1w_to_mni.tolist()))
    return log


#: The stand-ins' skull strips return the phantom's whole head (about 2.8 L), not a brain:
#: the QC gate's volume range is widened for them; its other thresholds still apply.
STANDIN_VOLUME_ML = (100.0, 10000.0)


def _sidecar(paths):
    return json.loads(
        paths.preproc.with_name(paths.preproc.name.replace(".nii.gz", ".json")).read_text()
    )


def _assert_pose(paths, mni_to_t1w):
    side = _sidecar(paths)
    # A tool that refused its command line would leave the T1w excluded (run_anat turns
    # ExternalToolError into an exclusion): every backend test fails then.
    assert not side.get("Excluded"), side.get("ExclusionReason")
    est = np.asarray(side["Transforms"]["TemplateToT1wRAS"])
    np.testing.assert_allclose(est, mni_to_t1w, atol=1e-4)
    return side


def test_fsl_backend_commands_and_wiring(standins, phantom_file, tmp_path):
    t1w, mni_to_t1w = phantom_file
    settings = AnatSettings(
        backend="fsl",
        resolution_mm=2,
        model_box_mm=(160, 192, 160),
        qc_brain_volume_ml=STANDIN_VOLUME_ML,
    )
    paths = run_anat(t1w, tmp_path / "out", "01", settings=settings, work_dir=tmp_path / "work")
    calls = read_log(standins)
    assert [c["tool"] for c in calls] == ["fslreorient2std", "bet", "flirt"]
    assert all(c["accepted"] for c in calls)
    reorient, bet, flirt = (c["argv"] for c in calls)
    assert reorient[0].endswith("t1w.nii.gz")
    assert bet[0].endswith("t1w_n4.nii.gz") and {"-m", "-R"} <= set(bet)
    assert bet[bet.index("-f") + 1] == "0.50"
    # FLIRT registers the BET brain to the template brain, 12 dof, correlation ratio.
    assert flirt[flirt.index("-in") + 1] == bet[1]
    assert "desc-brain_T1w" in flirt[flirt.index("-ref") + 1]
    assert flirt[flirt.index("-dof") + 1] == "12"
    assert flirt[flirt.index("-cost") + 1] == "corratio"
    side = _assert_pose(paths, mni_to_t1w)
    assert side["Backend"] == "fsl"
    assert [c["Command"].split()[0] for c in side["Steps"]["Commands"]] == [
        "fslreorient2std",
        "bet",
        "flirt",
    ]
    for path in paths.files():
        assert path.is_file(), path
    # The brain mask in template space comes from BET's mask, carried by the FLIRT matrix.
    mask = np.asarray(nib.load(paths.mask).dataobj) > 0
    assert 0.5 < side["Metrics"]["MaskDiceWithTemplateMask"] <= 1.0
    assert mask.sum() > 1000
    model = nib.load(paths.model)
    assert model.shape == (80, 96, 80) and model.get_data_dtype() == np.float32


def test_fsl_nonlinear_uses_fnirt_applywarp_invwarp(standins, phantom_file, tmp_path):
    t1w, mni_to_t1w = phantom_file
    settings = AnatSettings(
        backend="fsl", resolution_mm=2, nonlinear=True, qc_brain_volume_ml=STANDIN_VOLUME_ML
    )
    paths = run_anat(t1w, tmp_path / "out", "01", settings=settings, work_dir=tmp_path / "work")
    tools = [c["tool"] for c in read_log(standins)]
    assert tools == [
        "fslreorient2std",
        "bet",
        "flirt",
        "fnirt",
        "applywarp",
        "invwarp",
        "applywarp",
    ]
    calls = read_log(standins)
    assert all(c["accepted"] for c in calls)
    fnirt = calls[3]["argv"]
    flirt_mat = calls[2]["argv"][calls[2]["argv"].index("-omat") + 1]
    assert f"--aff={flirt_mat}" in fnirt
    assert any(a.startswith("--refmask=") for a in fnirt)
    warp_t1w, warp_mask = calls[4]["argv"], calls[6]["argv"]
    assert "--interp=spline" in warp_t1w and "--interp=nn" in warp_mask
    _assert_pose(paths, mni_to_t1w)
    assert paths.nonlinear_to_template.name.endswith("_desc-fnirt_xfm.nii.gz")
    assert paths.nonlinear_to_template.is_file() and paths.nonlinear_from_template.is_file()


def test_freesurfer_backend_commands_and_wiring(standins, phantom_file, tmp_path):
    t1w, mni_to_t1w = phantom_file
    settings = AnatSettings(
        backend="freesurfer", resolution_mm=2, qc_brain_volume_ml=STANDIN_VOLUME_ML
    )
    paths = run_anat(
        t1w, tmp_path / "out", "01", "1", settings=settings, work_dir=tmp_path / "work"
    )
    calls = read_log(standins)
    assert [c["tool"] for c in calls] == ["mri_convert", "mri_synthstrip", "mri_coreg"]
    assert all(c["accepted"] for c in calls)
    # SynthStrip's threads go through the environment (FreeSurfer 7.3/7.4 have no flag).
    assert calls[1]["OMP_NUM_THREADS"] == "1"
    convert, strip, coreg = (c["argv"] for c in calls)
    assert strip[strip.index("-m") + 1].endswith("t1w_brain_mask.nii.gz")
    assert convert[convert.index("--out_orientation") + 1] == "RAS"
    assert strip[strip.index("-i") + 1].endswith("t1w_n4.nii.gz")
    assert coreg[coreg.index("--mov") + 1] == strip[strip.index("-o") + 1]
    assert coreg[coreg.index("--dof") + 1] == "12"
    assert "desc-brain_T1w" in coreg[coreg.index("--ref") + 1]
    _assert_pose(paths, mni_to_t1w)
    assert paths.preproc.name.startswith("sub-01_ses-1_space-MNI152NLin2009aAsym")
    for path in paths.files():
        assert path.is_file(), path


def test_check_backend_names_missing_tools(tmp_path):
    bin_dir = tmp_path / "bin"
    install_standins(bin_dir, tools=("bet",))
    with pytest.raises(BackendUnavailableError, match=r"not on PATH: fslreorient2std, flirt;"):
        check_backend("fsl", nonlinear=False, path=str(bin_dir))
    install_standins(bin_dir)
    assert set(check_backend("fsl", nonlinear=True, path=str(bin_dir))) == {
        "fslreorient2std",
        "bet",
        "flirt",
        "fnirt",
        "applywarp",
        "invwarp",
    }
    with pytest.raises(BackendUnavailableError, match="nonlinear: true is not available"):
        check_backend("freesurfer", nonlinear=True, path=str(bin_dir))


# --- the stand-ins bite --------------------------------------------------------------

#: Command lines each real tool rejects (per the sources cited in anat_standins), with
#: the exit status it ends with. The first is the bug this suite once let through.
REJECTED = [
    ("mri_synthstrip", ["-i", "in.nii.gz", "-o", "out.nii.gz", "-n", "1"], 2),
    ("mri_synthstrip", ["-i", "in.nii.gz", "-o", "out.nii.gz", "-t", "1"], 2),  # not in 7.3/7.4
    ("mri_synthstrip", ["-o", "out.nii.gz"], 2),  # -i/--image is required
    ("mri_synthstrip", ["-i", "in.nii.gz"], 1),  # neither -o nor -m
    ("bet", ["in.nii.gz", "out.nii.gz", "-Q"], 1),
    ("bet", ["in.nii.gz", "out.nii.gz", "-f"], 1),  # -f without its value
    ("bet", ["in.nii.gz"], 1),  # no output operand
    ("flirt", ["-in", "a.nii.gz", "-ref", "b.nii.gz", "-bogus", "1"], 255),
    ("flirt", ["-in", "a.nii.gz", "-ref", "b.nii.gz", "-displayinit"], 255),
    ("flirt", ["-in", "a.nii.gz", "-ref", "b.nii.gz", "-cost", "ssd"], 255),
    ("flirt", ["-ref", "b.nii.gz", "-omat", "m.mat"], 2),  # no -in
    ("fnirt", ["--ref=b.nii.gz", "--in=a.nii.gz", "--bogus=1"], 1),
    ("fnirt", ["--ref", "b.nii.gz", "--in=a.nii.gz"], 1),  # long options need '='
    ("fnirt", ["--ref=b.nii.gz", "--in=a.nii.gz", "--basis=dct"], 1),  # declared, not added
    ("fnirt", ["--in=a.nii.gz"], 1),  # no --ref
    ("applywarp", ["-i", "a.nii.gz", "-r", "b.nii.gz", "-o", "c.nii.gz", "--usesqform"], 1),
    ("applywarp", ["-i", "a.nii.gz", "-r", "b.nii.gz"], 1),  # no -o
    ("invwarp", ["-w", "w.nii.gz", "-o", "i.nii.gz"], 1),  # no -r
    ("fslreorient2std", ["-m", "x.mat", "a.nii.gz", "b.nii.gz"], 2),
    ("mri_convert", ["--bogus", "a.nii.gz", "b.nii.gz"], 1),
    ("mri_convert", ["--out_orientation", "RAX", "a.nii.gz", "b.nii.gz"], 1),
    ("mri_convert", ["a.nii.gz", "b.nii.gz", "c.nii.gz"], 1),
    ("mri_convert", ["--out_orientation", "RAS", "a.nii.gz"], 1),  # no output
    ("mri_coreg", ["--mov", "a.nii.gz", "--ref", "b.nii.gz", "--lta", "r.lta", "--bogus"], 255),
    ("mri_coreg", ["--mov", "a.nii.gz", "--ref", "b.nii.gz"], 1),  # no --reg/--lta
]


def test_every_standin_cites_its_source():
    assert set(SOURCES) == set(TOOLS)
    for tool, source in SOURCES.items():
        assert source.startswith("https://github.com/"), (tool, source)


@pytest.mark.parametrize(("tool", "argv", "status"), REJECTED)
def test_standin_parser_rejects_what_the_tool_rejects(tool, argv, status):
    with pytest.raises(UsageError) as err:
        parse_args(tool, argv)
    assert err.value.status == status


def test_standin_executables_exit_with_usage_errors(tmp_path):
    """The installed executables, run as nipype runs them, fail before writing anything."""
    bin_dir = tmp_path / "bin"
    install_standins(bin_dir)
    log = tmp_path / "log.jsonl"
    env = dict(os.environ, ANAT_STANDIN_LOG=str(log))
    cases = [("mri_synthstrip", ["-i", "in.nii.gz", "-o", "out.nii.gz", "-n", "1"], 2)]
    cases += [("bet", ["in.nii.gz", "out.nii.gz", "-Q"], 1)]
    cases += [("flirt", ["-in", "a.nii.gz", "-ref", "b.nii.gz", "-bogus", "1"], 255)]
    for tool, argv, status in cases:
        out = subprocess.run(
            [str(bin_dir / tool), *argv], capture_output=True, text=True, env=env, check=False
        )
        assert out.returncode == status, (tool, out.stderr)
        assert out.stderr.strip(), tool
    assert [entry["accepted"] for entry in read_log(log)] == [False] * len(cases)
    assert list(tmp_path.glob("*.nii.gz")) == []


@pytest.mark.parametrize(
    ("backend", "tool", "extra"),
    [("freesurfer", "mri_synthstrip", "-n 1"), ("fsl", "flirt", "-bogus 1")],
)
def test_backend_fails_when_a_command_line_has_a_bad_option(
    standins, phantom_file, tmp_path, monkeypatch, backend, tool, extra
):
    """Give one command an option its tool rejects: the backend fails there with
    ExternalToolError, which run_anat turns into the subject's exclusion (the reason
    names the command, the exit status and the tool's usage error)."""
    run = nipype_backends._run

    def run_with_extra(interface, work, log):
        if interface.cmd == tool:
            interface.inputs.args = extra
        return run(interface, work, log)

    monkeypatch.setattr(nipype_backends, "_run", run_with_extra)
    settings = AnatSettings(backend=backend, resolution_mm=2, qc_brain_volume_ml=STANDIN_VOLUME_ML)
    bad = rf"(?is){tool} .*{re.escape(extra)}.* failed \(exit status (2|255)\):.*unrecogni[sz]ed"
    paths = run_anat(
        phantom_file[0], tmp_path / "out", "01", settings=settings, work_dir=tmp_path / "w"
    )
    side = _sidecar(paths)
    assert side["Excluded"] is True
    assert re.search(bad, side["ExclusionReason"]), side["ExclusionReason"]
    with pytest.raises(AssertionError, match=r"failed \(exit status"):
        _assert_pose(paths, phantom_file[1])
    calls = read_log(standins)
    assert calls[-1]["tool"] == tool and not calls[-1]["accepted"]
    assert all(c["accepted"] for c in calls[:-1])


# --- the workflow ---------------------------------------------------------------------

SCHEMA_FRAGMENT = """
anat:
  type: object
  additionalProperties: false
  default: {}
  properties:
    backend: {enum: [native, fsl, freesurfer], default: native}
    template: {enum: [MNI152NLin2009aAsym, MNI152NLin2009cAsym], default: MNI152NLin2009aAsym}
    resolution_mm: {enum: [1, 2], default: 1}
    nonlinear: {type: boolean, default: false}
    model_box_mm:
      type: array
      items: {type: integer, minimum: 1}
      minItems: 3
      maxItems: 3
      default: [160, 192, 160]
    normalisation: {enum: [zscore_brain, zscore_volume, none], default: zscore_brain}
    max_nonfinite_fraction: {type: number, minimum: 0, exclusiveMaximum: 1, default: 0.02}
"""

ANAT_ALL = """

rule anat_all:
    input:
        get_anat_targets,
"""


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    """The repository's workflow with the anat stage wired in.

    Until the lead merges them, the Snakefile's include, the anat_all target and the
    schema's anat block are added here exactly as docs/anat.md says; once merged, the
    repository's own files are used as they are.
    """
    root = tmp_path_factory.mktemp("anat-workflow")
    (root / "workflow" / "schemas").mkdir(parents=True)
    shutil.copytree(REPO / "workflow" / "rules", root / "workflow" / "rules")
    (root / "envs").symlink_to(REPO / "envs")
    snakefile = (REPO / "Snakefile").read_text()
    if "workflow/rules/anat.smk" not in snakefile:
        snakefile = snakefile.replace(
            'include: "workflow/rules/targets.smk"',
            'include: "workflow/rules/anat.smk"\ninclude: "workflow/rules/targets.smk"',
        )
    (root / "Snakefile").write_text(snakefile)
    targets = root / "workflow" / "rules" / "targets.smk"
    if "rule anat_all" not in targets.read_text():
        targets.write_text(targets.read_text() + ANAT_ALL)
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    schema["properties"].setdefault("anat", yaml.safe_load(SCHEMA_FRAGMENT)["anat"])
    (root / "workflow/schemas/config.schema.yaml").write_text(yaml.safe_dump(schema))
    return root


def _snakemake(workflow: Path, workdir: Path, config: dict, *args: str, path: str):
    """Run ``workflow`` in ``workdir`` with ``PATH=path`` (plus the venv's bin)."""
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([path, str(Path(sys.executable).parent)])
    cmd = [
        snakemake_exe(),
        "-s",
        str(workflow / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(cfg),
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=env, cwd=workdir, check=False
    )


def _config(tmp_path: Path, **anat) -> dict:
    """A one-dataset config (a user dataset: no demo generation) with an anat block."""
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    return {"datasets": {"study": {"bids_dir": str(bids)}}, "anat": anat}


SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("anat", "missing"),
    [
        ({"backend": "fsl"}, "fslreorient2std, bet, flirt"),
        ({"backend": "fsl", "nonlinear": True}, "fslreorient2std, bet, flirt, fnirt"),
        ({"backend": "freesurfer"}, "mri_convert, mri_synthstrip, mri_coreg"),
    ],
)
def test_workflow_refuses_missing_backend_at_planning(workflow_copy, tmp_path, anat, missing):
    if any(shutil.which(t, path=SYSTEM_PATH) for t in ("flirt", "mri_coreg")):
        pytest.skip("FSL or FreeSurfer is installed here")
    out = _snakemake(workflow_copy, tmp_path, _config(tmp_path, **anat), "-n", path=SYSTEM_PATH)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "BackendUnavailableError" in text and missing in text, text[-3000:]
    # Refused while planning: no job was scheduled, nothing was written.
    assert "Job stats" not in text
    assert not (tmp_path / "results").exists()


@pytest.mark.workflow
def test_workflow_plans_with_backend_present(workflow_copy, tmp_path):
    bin_dir = tmp_path / "bin"
    install_standins(bin_dir)
    config = _config(tmp_path, backend="fsl", resolution_mm=2)
    path = os.pathsep.join([str(bin_dir), SYSTEM_PATH])
    out = _snakemake(workflow_copy, tmp_path, config, "-n", "anat_all", path=path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ingest" in out.stdout


@pytest.mark.workflow
def test_workflow_anat_jobs_follow_scans_tsv(workflow_copy, tmp_path):
    """After ingestion, one anat job per T1w: per session when the T1w is per session."""
    config = _config(tmp_path, resolution_mm=2, nonlinear=True)
    scans = tmp_path / "results" / "ingest" / "study"
    scans.mkdir(parents=True)
    rows = [
        # subject, session, t1w_session: sub-01 has one T1w per session, sub-02 none.
        ("01", "1", "1"),
        ("01", "2", "2"),
        ("01", "2", "2"),
        ("02", "n/a", "n/a"),
    ]
    lines = ["dataset\tsubject\tsession\trun\tt1w\tt1w_session\tbold"]
    for sub, ses, t1_ses in rows:
        name = f"sub-{sub}" + (f"_ses-{t1_ses}" if t1_ses != "n/a" else "") + "_T1w.nii.gz"
        t1 = tmp_path / "bids" / name
        t1.write_bytes(b"")
        lines.append(f"study\t{sub}\t{ses}\tn/a\t{t1}\t{t1_ses}\tbold.nii.gz")
    (scans / "scans.tsv").write_text("\n".join(lines) + "\n")
    (scans / "excluded.tsv").write_text("path\treason\n")
    (scans / "scans.json").write_text("{}")
    # Mark the ingest outputs as up to date so that only anat jobs are planned.
    _snakemake(workflow_copy, tmp_path, config, "--touch", "ingest_all", path=SYSTEM_PATH)
    out = _snakemake(workflow_copy, tmp_path, config, "-n", "-p", "anat_all", path=SYSTEM_PATH)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    # Three distinct T1ws: sub-01 ses-1, sub-01 ses-2 (two rows, one job), sub-02.
    assert text.count("rule anat_session:") == 2, text
    assert text.count("rule anat:") == 1, text
    assert "--subject 01 --session 1 " in text and "--subject 01 --session 2 " in text
    assert re.search(r"--subject 02 +--backend native", text)
    assert "--resolution-mm 2" in text and "--nonlinear" in text
    assert "results/anat/study/sub-01/ses-2/anat/" in text
    assert "desc-nonlinear_xfm.h5" in text
