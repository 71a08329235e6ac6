"""Functional stage: brainharmony vs peers on the same data, as ratios from one run.

Every side runs with the same threads (``--threads``, default 1: BLAS / OpenMP pools
pinned with threadpoolctl, torch's intra-op threads, ITK's threads), the same untimed
warm-up call and the same ``--repeats`` timed calls, interleaved round by round with the
order rotated (``benchlib.interleaved_times``), on identical inputs; the median is
reported. A target is met only when the speed ratio and the accuracy criterion hold.

1. **Parcellation** of a 4-D float32 image on the 2 mm Schaefer-400 grid:
   ``brainharmony.func.parcellate.parcel_means`` vs ``nilearn.maskers.NiftiLabelsMasker``
   (strategy mean) and vs *one numpy pass over the same data* (the mean of every
   volume, ``data.mean(axis=(0, 1, 2))``: the cost of reading the array once).
   Targets: >= 5x faster than nilearn (accuracy: largest relative difference from
   nilearn's parcel means <= 1e-5, float32 rounding), <= 2x one pass (a cost floor: no
   accuracy to compare).
2. **Denoising** with 27 confounds, censoring and a 0.01-0.1 Hz Butterworth band-pass:
   ``brainharmony.func.denoise.denoise`` (``order="filter-regress"``, configured as
   nilearn) vs ``nilearn.signal.clean``, at the shape the pipeline denoises (490 volumes
   x 400 parcel series: the demo / paper run length at TR 0.735 s) and, as a further
   figure without a target, at 490 volumes x 50,000 voxels. Target (parcel shape):
   >= 2x, accuracy: largest absolute difference <= 1e-6 of the largest magnitude of
   nilearn's output.
3. **Motion correction** of a synthetic moving head: ``estimate_motion`` (all volumes
   at once) vs one SimpleITK rigid registration per volume (Euler3D, mean squares,
   regular-step gradient, two resolution levels), both scored against the planted
   motion (median absolute error). Warm-up: one untimed call of each on the first
   volumes. Target: >= 10x; accuracy: our median error no more than 1.5x the peer's
   or below 0.05 mm (translation) and 0.05 deg (rotation), each. A side whose median
   error exceeds 0.5 mm or 0.5 deg failed: a failed peer gives no ratio.

Usage::

    .venv/bin/python benchmarks/bench_func.py --json benchmarks/results/func.json
    .venv/bin/python benchmarks/bench_func.py --quick      # smaller sizes, seconds
"""

from __future__ import annotations

import argparse
import platform
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import (
    agreement_pair,
    agreement_value,
    comparison,
    environment,
    interleaved_times,
    markdown_table,
    package_version,
    pin_threads,
    result_document,
    write_result,
)

WARMUP = 1
#: Accuracy criteria (see the module docstring).
PARCEL_MAX_REL = 1e-5
DENOISE_MAX_REL = 1e-6
MOTION_FACTOR = 1.5
MOTION_BOUND = {"trans_mm": 0.05, "rot_deg": 0.05}
MOTION_FAILED = {"trans_mm": 0.5, "rot_deg": 0.5}


def _median_times(funcs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    times = interleaved_times(funcs, repeats, warmup=WARMUP)
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------------------
def bench_parcellation(volumes: int, resolution: float, repeats: int) -> dict[str, Any]:
    import nibabel as nib

    from brainharmony.atlas import schaefer400_volume
    from brainharmony.func.parcellate import parcel_means

    try:
        from nilearn.maskers import NiftiLabelsMasker
    except ImportError as exc:  # the peer is optional: report it missing
        NiftiLabelsMasker, missing = None, f"nilearn cannot be imported ({exc})"

    atlas, _ = schaefer400_volume(resolution)
    labels = np.asarray(atlas.dataobj)
    rng = np.random.default_rng(0)
    data = np.empty((*labels.shape, volumes), dtype=np.float32, order="F")
    for v in range(volumes):
        data[..., v] = 1000 + 10 * rng.standard_normal(labels.shape, dtype=np.float32)
    img = nib.Nifti1Image(data, atlas.affine)
    values = np.arange(1, 401)

    def ours():
        return parcel_means(data, labels, label_values=values).series

    def nilearn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return NiftiLabelsMasker(atlas, strategy="mean").fit_transform(img)

    def one_pass():
        return data.mean(axis=(0, 1, 2))

    funcs = {"ours": ours, "one_pass": one_pass}
    if NiftiLabelsMasker is not None:
        funcs["nilearn"] = nilearn
    t = _median_times(funcs, repeats)
    out: dict[str, Any] = {
        "shape": list(data.shape),
        "dtype": "float32",
        "seconds": t,
        "repeats": repeats,
        "nilearn_repeats": repeats,
        "warmup": WARMUP,
        "ratio_to_one_pass": t["ours"] / t["one_pass"],
        "note": "nilearn returns float32 for float32 images; ours accumulates in float64",
    }
    if NiftiLabelsMasker is None:
        out["nilearn_missing"] = missing
        return out
    a, b = ours(), nilearn()
    out["speedup_vs_nilearn"] = t["nilearn"] / t["ours"]
    out["max_abs_diff"] = float(np.abs(a - b).max())
    out["max_rel_diff"] = float((np.abs(a - b) / np.abs(b)).max())
    return out


# --------------------------------------------------------------------------------------
def bench_denoising(volumes: int, voxels: int, repeats: int) -> dict[str, Any]:
    from brainharmony.func.denoise import DenoiseSettings, censor_mask, denoise

    try:
        from nilearn.signal import clean
    except ImportError as exc:
        clean, missing = None, f"nilearn cannot be imported ({exc})"

    rng = np.random.default_rng(1)
    t_r = 0.735
    y = rng.standard_normal((volumes, voxels)).cumsum(0) * 0.1 + 1000
    conf = rng.standard_normal((volumes, 27)).cumsum(0)
    fd = np.abs(rng.normal(0, 0.15, volumes))
    fd[rng.choice(volumes, 8, replace=False)] = 1.0
    fd[0] = 0
    keep = censor_mask(fd, 0.5, min_segment=5)
    settings = DenoiseSettings(
        strategy="none",
        order="filter-regress",
        detrend=True,
        edges="extrapolate",
        filter_order=2,
    )

    def ours():
        return denoise(y, t_r, confounds=conf, keep=keep, settings=settings).denoised[keep]

    def nilearn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return clean(
                y.copy(),
                detrend=True,
                standardize=False,
                confounds=conf,
                sample_mask=np.flatnonzero(keep),
                filter="butterworth",
                low_pass=0.1,
                high_pass=0.01,
                t_r=t_r,
                extrapolate=True,
                butterworth__order=2,
            )

    out: dict[str, Any] = {
        "shape": [volumes, voxels],
        "confounds": 27,
        "censored": int((~keep).sum()),
        "repeats": repeats,
    }
    if clean is None:
        out["seconds"] = _median_times({"ours": ours}, repeats)
        out["nilearn_missing"] = missing
        return out
    t = _median_times({"ours": ours, "nilearn": nilearn}, repeats)
    a, b = ours(), nilearn()
    out["seconds"] = t
    out["warmup"] = WARMUP
    out["speedup_vs_nilearn"] = t["nilearn"] / t["ours"]
    out["max_abs_diff"] = float(np.abs(a - b).max())
    out["max_rel_diff"] = out["max_abs_diff"] / float(np.abs(b).max())
    return out


# --------------------------------------------------------------------------------------
def _moving_head(shape: tuple[int, int, int], n_volumes: int, seed: int = 0):
    from scipy import ndimage

    from brainharmony.func.motion import params_to_matrices

    rng = np.random.default_rng(seed)
    ii = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt((((ii.T - c) / (np.array(shape) / 2.6)) ** 2).sum(-1)).T
    head = (r < 1).astype(float)
    head += 0.6 * ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) * (r < 1)
    head = ndimage.gaussian_filter(head, 1.0) * 1000
    affine = np.diag([3.5, 3.5, 3.5, 1.0])
    affine[:3, 3] = -3.5 * c
    center = affine[:3, :3] @ c + affine[:3, 3]
    params = np.cumsum(
        np.c_[rng.normal(0, 0.08, (n_volumes, 3)), rng.normal(0, 0.0015, (n_volumes, 3))], 0
    )
    params -= params[0]
    mats = params_to_matrices(params, center)
    coef = ndimage.spline_filter(head, order=3)
    grid = np.indices(shape).reshape(3, -1)
    pts = np.r_[grid, np.ones((1, grid.shape[1]))]
    data = np.empty((*shape, n_volumes), dtype=np.float32)
    inv_a = np.linalg.inv(affine)
    for v in range(n_volumes):
        m = inv_a @ np.linalg.inv(mats[v]) @ affine
        data[..., v] = ndimage.map_coordinates(
            coef, (m @ pts)[:3], order=3, prefilter=False
        ).reshape(shape)
    data += rng.normal(0, 10.0, data.shape).astype(np.float32)
    return data, affine, params, center


def _sitk_per_volume(data: np.ndarray, affine: np.ndarray, center: np.ndarray) -> np.ndarray:
    """One SimpleITK rigid registration per volume onto volume 0; world matrices."""
    import nibabel as nib
    import SimpleITK as sitk

    from brainharmony.anat.images import nib_to_sitk
    from brainharmony.func.register import FLIP4

    def _to_sitk(volume: np.ndarray, affine: np.ndarray) -> sitk.Image:
        return nib_to_sitk(nib.Nifti1Image(np.asarray(volume, np.float32), affine))

    fixed = _to_sitk(data[..., 0], affine)
    out = np.tile(np.eye(4), (data.shape[3], 1, 1))
    for v in range(1, data.shape[3]):
        moving = _to_sitk(data[..., v], affine)
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0,
            minStep=1e-4,
            numberOfIterations=200,
            gradientMagnitudeTolerance=1e-8,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([2, 1])
        reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
        init = sitk.Euler3DTransform()
        init.SetCenter([float(x) for x in FLIP4[:3, :3] @ center])
        reg.SetInitialTransform(init, inPlace=False)
        reg.SetNumberOfThreads(1)
        tx = sitk.Euler3DTransform(
            sitk.CompositeTransform(reg.Execute(fixed, moving)).GetNthTransform(0)
        )
        m = np.eye(4)
        m[:3, :3] = np.array(tx.GetMatrix()).reshape(3, 3)
        cc = np.array(tx.GetCenter())
        m[:3, 3] = np.array(tx.GetTranslation()) + cc - m[:3, :3] @ cc
        # ITK maps fixed (volume 0) points to moving (volume v) points: that is M_v.
        out[v] = FLIP4 @ m @ FLIP4
    return out


def bench_motion(
    shape: tuple[int, int, int], volumes: int, threads: int, repeats: int
) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    from brainharmony.func.motion import estimate_motion, matrices_to_params

    # estimate_motion runs its numpy backend on the CPU (BLAS threads); SimpleITK and a
    # torch backend use their own pools.
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
    data, affine, params, center = _moving_head(shape, volumes)

    def score(mats: np.ndarray) -> dict[str, float]:
        rel = mats @ np.linalg.inv(mats[0])
        err = np.abs(matrices_to_params(rel, center) - params)
        return {
            "trans_mm": float(np.median(err[:, :3])),
            "rot_deg": float(np.degrees(np.median(err[:, 3:]))),
        }

    funcs: dict[str, Callable[[], Any]] = {"ours": lambda: estimate_motion(data, affine)}
    warm: dict[str, Callable[[], Any]] = {"ours": lambda: estimate_motion(data[..., :4], affine)}
    out: dict[str, Any] = {
        "shape": [*shape, volumes],
        "threads": threads,
        "repeats": repeats,
        "warmup": "one untimed call of each on the first 4 volumes",
    }
    try:
        import SimpleITK  # noqa: F401
    except ImportError as exc:
        out["simpleitk_missing"] = f"SimpleITK cannot be imported ({exc})"
    else:
        funcs["simpleitk_per_volume"] = lambda: _sitk_per_volume(data, affine, center)
        warm["simpleitk_per_volume"] = lambda: _sitk_per_volume(data[..., :4], affine, center)
    interleaved_times(warm, 1, warmup=0)  # warm-up on a short series, untimed
    results: dict[str, Any] = {}

    def keep(name: str) -> Callable[[], None]:
        def run() -> None:
            r = funcs[name]()
            results[name] = r.matrices if name == "ours" else r

        return run

    times = interleaved_times({n: keep(n) for n in funcs}, repeats, warmup=0)
    out["seconds"] = {n: statistics.median(v) for n, v in times.items()}
    out["median_abs_error"] = {"ours": score(results["ours"])}
    if "simpleitk_per_volume" in results:
        out["median_abs_error"]["simpleitk"] = score(results["simpleitk_per_volume"])
        out["speedup_vs_simpleitk"] = (
            out["seconds"]["simpleitk_per_volume"] / out["seconds"]["ours"]
        )
    return out


def motion_failed(err: dict[str, float]) -> str | None:
    """Why a motion estimate counts as failed (None: it did not)."""
    bad = [
        f"median {k.split('_')[0]} error {err[k]:.3g} > {MOTION_FAILED[k]:g}"
        for k in MOTION_FAILED
        if err[k] > MOTION_FAILED[k]
    ]
    return "; ".join(bad) or None


def motion_accuracy_ok(ours: dict[str, float], peer: dict[str, float] | None) -> bool | None:
    """Our error within MOTION_FACTOR x the peer's, or below MOTION_BOUND, for each of
    translation and rotation (None without a working peer)."""
    if peer is None or motion_failed(peer):
        return None
    return all(ours[k] <= max(MOTION_FACTOR * peer[k], MOTION_BOUND[k]) for k in MOTION_BOUND)


# --------------------------------------------------------------------------------------
def comparisons(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The side-by-side records of issue 4 (see :mod:`benchlib`)."""
    p, m = res["parcellation"], res["motion"]
    nilearn_v = package_version("nilearn")
    sitk_v = package_version("SimpleITK")
    numpy_v = package_version("numpy")
    source = "issue 4"
    n = res["machine"]["threads"]
    threads = f"{n} (both; threadpoolctl, torch)"
    p_size = f"{'x'.join(map(str, p['shape']))} float32, Schaefer-400"
    out = [
        comparison(
            key="parcellation_nilearn",
            what="parcellation: parcel means of a 4-D image",
            ours_label="brainharmony.func.parcellate.parcel_means",
            ours_value=p["seconds"]["ours"],
            unit="s",
            peer_label="nilearn.maskers.NiftiLabelsMasker(strategy='mean').fit_transform",
            peer_package="nilearn",
            peer_version=nilearn_v,
            peer_value=p["seconds"].get("nilearn"),
            peer_status=p.get("nilearn_missing"),
            size=p_size,
            repeats=p["repeats"],
            warmup=WARMUP,
            threads=threads,
            target=(">=", 5.0),
            target_source=source,
            accuracy_criterion=f"max rel diff from nilearn <= {PARCEL_MAX_REL:g}",
            accuracy_ok=(p["max_rel_diff"] <= PARCEL_MAX_REL) if "max_rel_diff" in p else None,
            agreement=(
                [agreement_value("max rel diff", p["max_rel_diff"])] if "max_rel_diff" in p else []
            ),
        ),
        comparison(
            key="parcellation_one_pass",
            what="parcellation vs one numpy pass over the same array (target: within 2x of it)",
            ours_label="brainharmony.func.parcellate.parcel_means",
            ours_value=p["seconds"]["ours"],
            unit="s",
            peer_label="data.mean(axis=(0, 1, 2)) (reads the array once)",
            peer_package="numpy",
            peer_version=numpy_v,
            peer_value=p["seconds"]["one_pass"],
            size=p_size,
            repeats=p["repeats"],
            warmup=WARMUP,
            threads=threads,
            target=(">=", 0.5),
            target_source=source + " (<= 2x one pass)",
            accuracy_criterion="none: a cost floor that computes something else",
        ),
    ]
    for key, d, target in (
        ("denoising_nilearn", res["denoising"], (">=", 2.0)),
        ("denoising_nilearn_voxels", res.get("denoising_voxels"), None),
    ):
        if d is None:
            continue
        rel = d.get("max_rel_diff")
        out.append(
            comparison(
                key=key,
                what="denoising: detrend, 27 confounds, censoring, 0.01-0.1 Hz band-pass"
                + (", per parcel (the pipeline's shape)" if target else ", per voxel"),
                ours_label="brainharmony.func.denoise.denoise(order='filter-regress')",
                ours_value=d["seconds"]["ours"],
                unit="s",
                peer_label="nilearn.signal.clean (butterworth, same settings)",
                peer_package="nilearn",
                peer_version=nilearn_v,
                peer_value=d["seconds"].get("nilearn"),
                peer_status=d.get("nilearn_missing"),
                size=f"{d['shape'][0]} volumes x {d['shape'][1]} "
                f"{'parcels' if target else 'voxels'}, {d['censored']} censored",
                repeats=d["repeats"],
                warmup=WARMUP,
                threads=threads,
                target=target,
                target_source=source if target else None,
                accuracy_criterion=(
                    f"max abs diff <= {DENOISE_MAX_REL:g} x max abs of nilearn's output"
                ),
                accuracy_ok=None if rel is None else rel <= DENOISE_MAX_REL,
                agreement=(
                    [
                        agreement_value("max abs diff", d["max_abs_diff"]),
                        agreement_value("relative", rel),
                    ]
                    if rel is not None
                    else []
                ),
            )
        )
    err = m["median_abs_error"]
    peer_err = err.get("simpleitk")
    peer_failed = None if peer_err is None else motion_failed(peer_err)
    ours_failed = motion_failed(err["ours"])
    accuracy_ok = False if ours_failed else motion_accuracy_ok(err["ours"], peer_err)
    agreement = [
        agreement_pair(
            "median error, translation",
            err["ours"]["trans_mm"],
            None if peer_err is None else peer_err["trans_mm"],
            "mm",
        ),
        agreement_pair(
            "rotation",
            err["ours"]["rot_deg"],
            None if peer_err is None else peer_err["rot_deg"],
            "deg",
        ),
    ]
    peer_time = m["seconds"].get("simpleitk_per_volume")
    status = m.get("simpleitk_missing")
    if peer_failed:
        agreement.append(agreement_value("peer failed; its time (no ratio)", peer_time, "s"))
        status, peer_time = f"SimpleITK failed on this input ({peer_failed})", None
    bound = MOTION_BOUND
    out.append(
        comparison(
            key="motion_simpleitk",
            what="motion correction of a moving synthetic head, scored on the planted motion",
            ours_label="brainharmony.func.motion.estimate_motion (all volumes at once)",
            ours_value=m["seconds"]["ours"],
            unit="s",
            peer_label="SimpleITK rigid registration per volume (Euler3D, mean squares, 2 levels)",
            peer_package="SimpleITK",
            peer_version=sitk_v,
            peer_value=peer_time,
            peer_status=status,
            size=f"{'x'.join(map(str, m['shape']))} float32",
            repeats=m["repeats"],
            warmup=WARMUP,
            threads=f"{m['threads']} (both; torch, ITK)",
            target=(">=", 10.0),
            target_source=source,
            accuracy_criterion=(
                f"our median error <= {MOTION_FACTOR:g}x the peer's or <= "
                f"{bound['trans_mm']:g} mm / {bound['rot_deg']:g} deg, translation and "
                "rotation each"
            ),
            accuracy_ok=accuracy_ok,
            agreement=agreement,
        )
    )
    return out


NOTES = [
    "Every side: the same threads (BLAS / OpenMP pools pinned with threadpoolctl, torch "
    "intra-op threads, ITK threads), one untimed warm-up call, then the same number of "
    "timed calls, interleaved round by round with the order rotated; medians reported.",
    "Parcellation: nilearn returns float32 for a float32 image; ours accumulates in float64.",
    "Denoising: the target applies to the shape the pipeline denoises (parcel series of a "
    "demo / paper-length run); the per-voxel row is a further figure without a target.",
    "Motion: the warm-up runs each side once on the first 4 volumes; both are scored by the "
    "median absolute error of the recovered rigid parameters against the planted motion, "
    "and a side beyond 0.5 mm or 0.5 deg counts as failed (a failed peer gives no ratio).",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads for every side")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        p_args, d_args, v_args, m_args = (30, 4.0), (200, 400), (200, 5000), ((32, 32, 24), 12)
    else:
        p_args, d_args, v_args, m_args = (200, 2.0), (490, 400), (490, 50000), ((48, 48, 32), 100)
    try:  # the peers' pools exist before the pinning, so it covers them too
        import nilearn.maskers
        import nilearn.signal  # noqa: F401
    except ImportError:
        pass
    pinned = pin_threads(args.threads)
    env = environment(platform=platform.platform(), threads=args.threads, pinned=pinned)
    res = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "threads": args.threads,
        },
        "parcellation": bench_parcellation(*p_args, repeats=args.repeats),
        "denoising": bench_denoising(*d_args, repeats=args.repeats),
        "denoising_voxels": bench_denoising(*v_args, repeats=args.repeats),
        "motion": bench_motion(*m_args, threads=args.threads, repeats=args.repeats),
    }
    records = comparisons(res)
    table = markdown_table(records)
    res["markdown"] = table
    print(table)
    doc = result_document(
        benchmark="func",
        title="Functional stage: parcellation, denoising, motion correction",
        comparisons=records,
        env=env,
        notes=NOTES,
        details=res,
    )
    write_result(args.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
