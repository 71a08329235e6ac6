"""Laplace-Beltrami eigenmodes: brainharmony vs lapy on the same fsLR-32k hemisphere.

Both solve the same linear-FEM problem (cotangent stiffness, consistent mass) on
brainspace's Conte69 left hemisphere with the medial wall removed (brainspace
cortex mask), for K modes. Timed: matrix assembly plus eigensolver, median of
``--repeats`` runs, the two tools interleaved so that background load hits both
alike. Reported: the time ratio, the largest relative eigenvalue difference
(modes 2..K; mode 1 is zero), and the eigenvector agreement (largest principal
angle between the two mode subspaces of modes 1..K-10, in the mass inner product).

Usage::

    .venv/bin/python benchmarks/bench_lbo.py --modes 200 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import (
    agreement_value,
    comparison,
    environment,
    fact,
    package_version,
    result_document,
    write_result,
)


def _mesh(hemi: str, cortex: str) -> tuple[np.ndarray, np.ndarray]:
    from brainharmony.geometry.lbo import submesh
    from brainharmony.geometry.surfaces import load_template_surface, template_cortex_mask

    surf = load_template_surface("fslr32k", hemi)
    if cortex == "none":
        return surf.vertices, surf.faces
    keep = template_cortex_mask("fslr32k", hemi)
    v, f, _ = submesh(surf.vertices, surf.faces, keep)
    return v, f


def _run_lapy(v: np.ndarray, f: np.ndarray, k: int, cholmod: bool) -> tuple:
    from lapy import Solver, TriaMesh

    t0 = time.perf_counter()
    solver = Solver(TriaMesh(v, f), use_cholmod=cholmod)
    values, vectors = solver.eigs(k=k, rng=0)
    return time.perf_counter() - t0, values, vectors, solver.mass


def _run_ours(v: np.ndarray, f: np.ndarray, k: int, method: str) -> tuple[float, object]:
    from brainharmony.geometry.lbo import eigenmodes

    t0 = time.perf_counter()
    res = eigenmodes(v, f, k, method=method, threads=None)  # threads set by main()
    return time.perf_counter() - t0, res


def _max_angle(a: np.ndarray, b: np.ndarray, mass) -> float:
    """Largest principal angle (radians) between span(a) and span(b), M inner product."""
    cross = a.T @ (mass @ b)
    s = np.linalg.svd(cross, compute_uv=False)
    return float(np.arccos(np.clip(s.min(), -1.0, 1.0)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hemi", choices=("lh", "rh"), default="lh")
    parser.add_argument("--cortex", choices=("mask", "none"), default="mask")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/OpenMP threads for both tools (threadpoolctl); 0 = leave the default",
    )
    args = parser.parse_args(argv)
    import scipy.sparse.linalg  # noqa: F401  (load every BLAS before limiting it)
    from threadpoolctl import threadpool_limits

    limit = threadpool_limits(limits=args.threads) if args.threads > 0 else None

    env = environment(threads=args.threads or "default")
    try:
        import lapy  # noqa: F401
    except ImportError as exc:
        lapy_missing: str | None = f"lapy cannot be imported ({exc})"
    else:
        lapy_missing = None
    v, f = _mesh(args.hemi, args.cortex)
    k = args.modes
    names = (
        ("ours", "ours_arpack") if lapy_missing else ("lapy", "ours", "lapy_cholmod", "ours_arpack")
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, object] = {}
    for _ in range(args.repeats):
        if not lapy_missing:
            t, vals, vecs, mass = _run_lapy(v, f, k, cholmod=False)
            times["lapy"].append(t)
            last["lapy"] = (vals, vecs, mass)
        t, res = _run_ours(v, f, k, "block")
        times["ours"].append(t)
        last["ours"] = res
        if not lapy_missing:
            t, *_ = _run_lapy(v, f, k, cholmod=True)
            times["lapy_cholmod"].append(t)
        t, _res = _run_ours(v, f, k, "arpack")
        times["ours_arpack"].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ours = last["ours"]
    n_sub = max(1, k - 10)
    if lapy_missing:
        result = _report(args, v, f, med, times, ours, None, None, n_sub)
        result["lapy_missing"] = lapy_missing
    else:
        ref_vals, ref_vecs, mass = last["lapy"]
        rel = np.abs(ours.eigenvalues[1:] - ref_vals[1:]) / np.abs(ref_vals[1:])
        angle = _max_angle(ours.modes[:, :n_sub], ref_vecs[:, :k], mass)
        result = _report(args, v, f, med, times, ours, float(rel.max()), angle, n_sub)
    doc = result_document(
        benchmark="lbo",
        title="Geometry: Laplace-Beltrami eigenmodes of fsLR-32k",
        comparisons=comparisons(result, lapy_missing),
        env=env,
        facts=[fact("brainharmony eigenmodes(method='arpack')", med["ours_arpack"], "s")],
        notes=NOTES,
        details=result,
    )
    write_result(args.json, doc)
    if limit is not None:
        limit.restore_original_limits()
    return 0


def _report(
    args: argparse.Namespace,
    v: np.ndarray,
    f: np.ndarray,
    med: dict[str, float],
    times: dict[str, list[float]],
    ours: Any,
    max_rel: float | None,
    angle: float | None,
    n_sub: int,
) -> dict[str, Any]:
    """The benchmark's own JSON fields, and its printed table."""
    k = args.modes
    result: dict[str, Any] = {
        "mesh": f"fsLR-32k Conte69 {args.hemi}, cortex={args.cortex}",
        "n_vertices": int(v.shape[0]),
        "n_faces": int(f.shape[0]),
        "modes": k,
        "repeats": args.repeats,
        "seconds_median": med,
        "seconds_all": times,
        "solver": ours.solver,
        "method": ours.method,
        "max_residual": ours.max_residual,
        "threads": args.threads or "default",
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "n_subspace": n_sub,
    }
    print(
        f"{result['mesh']}: {result['n_vertices']} vertices, K = {k}, median of {args.repeats}, "
        f"threads {result['threads']}"
    )
    if max_rel is None:
        print(f"brainharmony eigenmodes (block): {med['ours']:.2f} s; lapy not available")
        return result
    result["ratio_lapy_over_ours"] = med["lapy"] / med["ours"]
    result["ratio_lapy_cholmod_over_ours"] = med["lapy_cholmod"] / med["ours"]
    result["eigenvalue_max_rel_diff"] = max_rel
    result["subspace_max_angle_rad"] = angle
    rows = [
        ("lapy `Solver(use_cholmod=False).eigs` (default)", med["lapy"]),
        ("lapy `Solver(use_cholmod=True).eigs`", med["lapy_cholmod"]),
        (f"brainharmony `eigenmodes` (block Lanczos, {ours.solver})", med["ours"]),
        (f"brainharmony `eigenmodes(method='arpack')` ({ours.solver})", med["ours_arpack"]),
    ]
    print()
    print("| solver | seconds | lapy default / this |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {med['lapy'] / sec:.2f} |")
    print()
    print(f"max relative eigenvalue difference (modes 2..K): {max_rel:.2e}")
    print(f"largest principal angle, modes 1..{n_sub} vs lapy's 1..{k}: {angle:.2e} rad")
    return result


def comparisons(result: dict[str, Any], lapy_missing: str | None) -> list[dict[str, Any]]:
    """Our block eigensolver vs lapy, without and with CHOLMOD (see :mod:`benchlib`)."""
    med = result["seconds_median"]
    size = f"{result['n_vertices']:,} vertices, K = {result['modes']}"
    version = package_version("lapy")
    agreement = []
    if lapy_missing is None:
        agreement = [
            agreement_value("max rel eigenvalue diff", result["eigenvalue_max_rel_diff"]),
            agreement_value(
                f"largest principal angle (modes 1-{result['n_subspace']})",
                result["subspace_max_angle_rad"],
                "rad",
            ),
        ]
    ours_label = f"brainharmony.geometry.lbo.eigenmodes (block Lanczos, {result['solver']})"
    out = []
    for key, label, agree in (
        ("lapy", "lapy Solver(use_cholmod=False).eigs (lapy's default)", agreement),
        ("lapy_cholmod", "lapy Solver(use_cholmod=True).eigs", []),
    ):
        out.append(
            comparison(
                key=f"eigenmodes_{key}",
                what="Laplace-Beltrami eigenmodes (FEM assembly + eigensolver), "
                + ("lapy default" if key == "lapy" else "lapy with CHOLMOD"),
                ours_label=ours_label,
                ours_value=med["ours"],
                unit="s",
                peer_label=label,
                peer_package="lapy",
                peer_version=version,
                peer_value=med.get(key),
                peer_status=lapy_missing,
                size=size,
                repeats=result["repeats"],
                threads=result["threads"],
                target=(">=", 1.0),
                target_source="issue 5 (no slower than lapy)",
                agreement=agree,
            )
        )
    return out


NOTES = [
    "Mesh: brainspace's Conte69 fsLR-32k left hemisphere with the medial wall removed "
    "(brainspace cortex mask). Both tools solve the same linear-FEM problem (cotangent "
    "stiffness, consistent mass).",
    "The tools alternate within each repeat (interleaved); BLAS/OpenMP threads are limited "
    "with threadpoolctl for both.",
    "Agreement: largest relative eigenvalue difference over modes 2..K (mode 1 is zero) and "
    "the largest principal angle between the two mode subspaces in the mass inner product.",
]


if __name__ == "__main__":
    raise SystemExit(main())
