"""Anatomy stage: the native registration vs SimpleITK's and ANTsPy's defaults, as ratios.

All three register the *same* whole-head T1w (a synthetic head with a known pose, 1 mm
voxels, bias-corrected once by the native N4) to the *same* brain-only template
(nilearn's MNI152 2009a, 2 mm), single-threaded unless ``--threads`` says otherwise:

* **native**: :func:`brainharmony.anat.register.register_to_template` (head-mask
  initialisation, coarse search, rigid -> affine, masked refinement).
* **SimpleITK default**: what its documentation's examples do: geometric-centre
  initialisation, ``AffineTransform``, Mattes MI (50 bins, 1% random sampling),
  plain gradient descent (learning rate 1, 100 iterations), scales from physical
  shift, shrink 4/2/1 with smoothing 2/1/0 voxels.
* **ANTsPy default**: ``ants.registration(fixed, moving, type_of_transform="Affine")``
  (antspyx 0.6.3, which pins numpy < 2.4: it runs in its own virtual environment,
  ``benchmarks/results/venv-ants`` by default, created on first use with
  ``python -m venv`` + ``pip install -r benchmarks/requirements-ants.txt``, the frozen
  list of that environment; timed inside that subprocess, around the registration call
  only). With ``--no-ants-install`` a missing environment is reported as "peer not
  available" instead of being created (``run_all.py`` does this).

Accuracy: mean distance (mm) between where the fitted and the true transforms send
the template's brain voxels. Also measured: the native backend end to end (head mask,
N4, registration) and the peak memory (max RSS) of one subject processed at 1 mm by
``run_anat`` in a fresh subprocess.

Usage::

    .venv/bin/python benchmarks/bench_anat.py --json benchmarks/results/anat.json
    .venv/bin/python benchmarks/bench_anat.py --skip-ants --skip-memory   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import (
    agreement_pair,
    comparison,
    environment,
    fact,
    result_document,
    write_result,
)

REPO = Path(__file__).resolve().parents[1]
ANTS_VERSION = "0.6.3"
DEFAULT_ANTS_VENV = REPO / "benchmarks" / "results" / "venv-ants"
ANTS_REQUIREMENTS = REPO / "benchmarks" / "requirements-ants.txt"
FLIP = np.diag([-1.0, -1.0, 1.0])

ANTS_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import ants
    fixed = ants.image_read(sys.argv[1])
    moving = ants.image_read(sys.argv[2])
    t0 = time.perf_counter()
    out = ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine")
    seconds = time.perf_counter() - t0
    json.dump({"seconds": seconds, "fwdtransforms": out["fwdtransforms"],
               "version": ants.__version__}, open(sys.argv[3], "w"))
    """
)

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from brainharmony.anat.pipeline import run_anat
    from brainharmony.anat.settings import AnatSettings
    t0 = time.perf_counter()
    run_anat(sys.argv[1], sys.argv[2], "01", settings=AnatSettings(resolution_mm=1))
    seconds = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({"seconds": seconds, "max_rss_mb": rss_kb / 1024}, open(sys.argv[3], "w"))
    """
)


def error_mm(template_to_t1w, true_mni_to_t1w: np.ndarray, points_ras: np.ndarray) -> float:
    """Mean distance (mm) between a fitted ITK transform (template -> T1w, LPS) and the truth."""
    fitted = np.array([template_to_t1w.TransformPoint(tuple(FLIP @ p)) for p in points_ras])
    truth = points_ras @ true_mni_to_t1w[:3, :3].T + true_mni_to_t1w[:3, 3]
    return float(np.linalg.norm(fitted @ FLIP - truth, axis=1).mean())


def sitk_default(fixed, moving):
    """SimpleITK's documented affine registration recipe, as one would copy it."""
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.01, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsGradientDescent(
        learningRate=1.0,
        numberOfIterations=100,
        convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))


def ensure_ants_venv(path: Path, install: bool = True) -> Path:
    """The ANTsPy environment's python, creating the environment on first use.

    Raises
    ------
    FileNotFoundError
        When the environment is missing and ``install`` is False.
    """
    python = path / "bin" / "python"
    if python.exists():
        return python
    if not install:
        raise FileNotFoundError(
            f"no ANTsPy environment at {path} (create it with bench_anat.py without "
            "--no-ants-install, which runs pip install -r benchmarks/requirements-ants.txt)"
        )
    print(f"creating {path} (antspyx=={ANTS_VERSION}; a one-off download)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(ANTS_REQUIREMENTS)],
        check=True,
    )
    return python


def run_ants(python: Path, fixed: Path, moving: Path, work: Path, threads: int) -> dict:
    script = work / "ants_affine.py"
    script.write_text(ANTS_SCRIPT)
    out = work / "ants.json"
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
    subprocess.run(
        [str(python), str(script), str(fixed), str(moving), str(out)], check=True, env=env
    )
    return json.loads(out.read_text())


def peak_memory(t1w: Path, work: Path, threads: int) -> dict:
    script = work / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    out = work / "memory.json"
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
    subprocess.run(
        [sys.executable, str(script), str(t1w), str(work / "memory-run"), str(out)],
        check=True,
        env=env,
    )
    return json.loads(out.read_text())


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Registration time, native vs each peer's default recipe (see :mod:`benchlib`)."""
    shape = "x".join(map(str, results["input"]["shape"]))
    size = f"T1w {shape} at {results['input']['voxel_mm'][0]:g} mm to the 2 mm template"
    nat = results["native"]
    out = []
    peers = (
        (
            "simpleitk",
            "SimpleITK",
            results["simpleitk_default"],
            None,
            "SimpleITK",
            results["machine"]["simpleitk"],
            "SimpleITK documented affine recipe (geometry centre, Mattes MI, gradient descent)",
        ),
        (
            "antspy",
            "ANTsPy",
            results.get("antspy_default"),
            results.get("antspy_missing"),
            "antspyx",
            (results.get("antspy_default") or {}).get("version"),
            'ants.registration(type_of_transform="Affine") in its own environment',
        ),
    )
    for key, name, peer, missing, package, version, label in peers:
        out.append(
            comparison(
                key=f"registration_{key}",
                what=f"affine registration of a whole head vs {name}'s default recipe",
                ours_label="brainharmony.anat.register.register_to_template",
                ours_value=nat["registration_s"],
                unit="s",
                peer_label=label,
                peer_package=package,
                peer_version=version,
                peer_value=None if peer is None else peer["registration_s"],
                peer_status=missing,
                size=size,
                repeats=1,
                threads=results["threads"],
                agreement=[
                    agreement_pair(
                        "mean error vs planted pose",
                        nat["error_mm"],
                        None if peer is None else peer["error_mm"],
                        "mm",
                    )
                ],
            )
        )
    return out


def facts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """End-to-end time of the native backend and one subject's peak memory."""
    nat = results["native"]
    out = [
        fact("native head mask + N4 bias correction", nat["headmask_n4_s"], "s"),
        fact("native backend end to end (head mask, N4, registration)", nat["backend_s"], "s"),
    ]
    if "run_anat_1mm" in results:
        mem = results["run_anat_1mm"]
        out.append(fact("one subject through run_anat at 1 mm, wall time", mem["seconds"], "s"))
        out.append(
            fact(
                "one subject through run_anat at 1 mm, peak memory (max RSS)",
                mem["max_rss_mb"],
                "MB",
            )
        )
    return out


NOTES = [
    "All three register the same N4-corrected synthetic whole head (known pose, stored LPS) "
    "to the same brain-only template (nilearn's MNI152 2009a, 2 mm); one timed run each.",
    "Accuracy: mean distance between where the fitted and the true transforms send the "
    "template's brain voxels. SimpleITK's geometric-centre and ANTs' centre-of-mass "
    "initialisations put the whole head's centre (neck and face included) on the brain's; "
    "a peer's time is for what it did, so read it next to its error.",
    "ANTs samples its metric with an unseeded random generator: its time and error vary "
    "between runs (it sometimes recovers from that start, sometimes not).",
]


def outcome_notes(results: dict[str, Any]) -> list[str]:
    """Whether each method reached one voxel of the truth in this run (from the errors)."""
    voxel = results["input"]["voxel_mm"][0]
    names = (
        ("native", "The native registration"),
        ("simpleitk_default", "SimpleITK's default recipe"),
        ("antspy_default", "ANTsPy's default recipe"),
    )
    out = []
    for key, label in names:
        if key in results:
            ok = results[key]["error_mm"] <= voxel
            out.append(
                f"{label} {'reached' if ok else 'did not reach'} one voxel of the planted pose "
                "in this run."
            )
    return [" ".join(out)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--threads", type=int, default=1, help="threads for every tool")
    parser.add_argument("--voxel-mm", type=float, default=1.0, help="T1w voxel size")
    parser.add_argument("--ants-venv", type=Path, default=DEFAULT_ANTS_VENV)
    parser.add_argument("--skip-ants", action="store_true")
    parser.add_argument(
        "--no-ants-install",
        action="store_true",
        help="report ANTsPy as not available instead of creating its environment",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    import nibabel as nib
    import SimpleITK as sitk

    from brainharmony.anat.bias import n4_correct
    from brainharmony.anat.images import itk_threads, load_t1w, nib_to_sitk, sitk_to_nib
    from brainharmony.anat.phantom import make_phantom
    from brainharmony.anat.register import RegistrationSettings, register_to_template
    from brainharmony.anat.skullstrip import head_mask
    from brainharmony.anat.templates import load_template

    env = environment(platform=platform.platform(), threads=args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-anat-"))
    work.mkdir(parents=True, exist_ok=True)
    zooms = (args.voxel_mm,) * 3
    t0 = time.perf_counter()
    phantom = make_phantom(
        zooms_mm=zooms,
        rotation_deg=(9.0, -6.0, 7.0),
        translation_mm=(5.0, -12.0, 16.0),
        canvas_mm=1,
        seed=11,
    )
    t1w_path = work / "sub-01_T1w.nii.gz"
    nib.save(phantom.image, t1w_path)
    print(
        f"phantom {phantom.image.shape} at {zooms} mm: {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    template = load_template(resolution_mm=2)
    fixed = nib_to_sitk(template.image)
    fixed_mask = sitk.Cast(nib_to_sitk(template.mask, np.uint8), sitk.sitkUInt8)
    pts = nib.affines.apply_affine(
        template.affine, np.argwhere(np.asarray(template.mask.dataobj) > 0)
    )[::5]
    results: dict[str, Any] = {
        "input": {
            "shape": list(phantom.image.shape),
            "voxel_mm": list(zooms),
            "orientation": "LPS",
            "template": "MNI152NLin2009aAsym 2 mm (nilearn)",
        },
        "threads": args.threads,
    }

    with itk_threads(args.threads):
        t1w = load_t1w(t1w_path)
        image = nib_to_sitk(t1w.image)
        t0 = time.perf_counter()
        mask, _ = head_mask(image)
        corrected, _, _ = n4_correct(image, mask, threads=args.threads)
        prep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = register_to_template(
            corrected, mask, fixed, fixed_mask, RegistrationSettings(threads=args.threads)
        )
        ours_s = time.perf_counter() - t0
        results["native"] = {
            "registration_s": ours_s,
            "headmask_n4_s": prep_s,
            "backend_s": ours_s + prep_s,
            "error_mm": error_mm(ours.affine, phantom.mni_to_t1w, pts),
        }
        moving_path = work / "moving_n4.nii.gz"
        fixed_path = work / "template_2mm.nii.gz"
        nib.save(sitk_to_nib(corrected), moving_path)
        nib.save(template.image, fixed_path)
        t0 = time.perf_counter()
        default = sitk_default(fixed, corrected)
        results["simpleitk_default"] = {
            "registration_s": time.perf_counter() - t0,
            "error_mm": error_mm(default, phantom.mni_to_t1w, pts),
        }

    if args.skip_ants:
        results["antspy_missing"] = "skipped (--skip-ants)"
    else:
        try:
            python = ensure_ants_venv(args.ants_venv, install=not args.no_ants_install)
            ants = run_ants(python, fixed_path, moving_path, work, args.threads)
        except (OSError, subprocess.CalledProcessError) as exc:
            results["antspy_missing"] = str(exc)
            print(f"ANTsPy not available: {exc}", file=sys.stderr)
        else:
            # ANTs writes an ITK transform: fixed (template) -> moving (T1w) points, LPS.
            tx = sitk.ReadTransform(ants["fwdtransforms"][0])
            results["antspy_default"] = {
                "registration_s": ants["seconds"],
                "error_mm": error_mm(tx, phantom.mni_to_t1w, pts),
                "version": ants["version"],
            }
    if not args.skip_memory:
        results["run_anat_1mm"] = peak_memory(t1w_path, work, args.threads)

    for name in ("simpleitk_default", "antspy_default"):
        if name in results:
            other = results[name]
            other["time_ratio_vs_native"] = other["registration_s"] / ours_s
            other["error_ratio_vs_native"] = other["error_mm"] / results["native"]["error_mm"]
    results["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "simpleitk": sitk.Version_VersionString(),
    }

    lines = [
        f"Machine: {results['machine']['platform']}, {os.cpu_count()} CPUs, "
        f"{args.threads} thread(s); SimpleITK {sitk.Version_VersionString()}"
        + (
            f", antspyx {results['antspy_default']['version']}"
            if "antspy_default" in results
            else ""
        ),
        f"Input: synthetic head {tuple(phantom.image.shape)} at {args.voxel_mm} mm (LPS), "
        "to the 2 mm brain-only template",
        "",
        "| method | registration time (s) | error (mm) | time / native | error / native |",
        "|---|---|---|---|---|",
    ]
    nat = results["native"]
    lines.append(
        f"| native (this package) | {nat['registration_s']:.1f} | {nat['error_mm']:.3f} | 1 | 1 |"
    )
    for name, label in (
        ("simpleitk_default", "SimpleITK default"),
        ("antspy_default", "ANTsPy default (Affine)"),
    ):
        if name in results:
            r = results[name]
            lines.append(
                f"| {label} | {r['registration_s']:.1f} | {r['error_mm']:.3f} | "
                f"{r['time_ratio_vs_native']:.2f} | {r['error_ratio_vs_native']:.1f} |"
            )
    lines.append("")
    lines.append(
        f"Native backend end to end (head mask + N4 + registration): {nat['backend_s']:.1f} s"
    )
    if "run_anat_1mm" in results:
        mem = results["run_anat_1mm"]
        lines.append(
            f"One subject through run_anat at 1 mm: {mem['seconds']:.1f} s, "
            f"peak memory {mem['max_rss_mb']:.0f} MB"
        )
    print("\n".join(lines))
    write_result(
        args.json,
        result_document(
            benchmark="anat",
            title="Anatomy stage: affine registration to the MNI152 template",
            comparisons=comparisons(results),
            env=env,
            facts=facts(results),
            notes=NOTES + outcome_notes(results),
            details=results,
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
