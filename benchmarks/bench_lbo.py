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
    pin_threads,
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

    try:
        import lapy  # noqa: F401  (its pools exist before the pinning)
    except ImportError as exc:
        lapy_missing: str | None = f"lapy cannot be imported ({exc})"
    else:
        lapy_missing = None
    pinned = pin_threads(args.threads, torch_threads=False) if args.threads > 0 else None
    env = environment(threads=args.threads or "default", pinned=pinned)
    v, f = _mesh(args.hemi, args.cortex)
    k = args.modes
    names = (
        ("ours", "ours_arpack") if lapy_missing else ("lapy", "ours", "lapy_cholmod", "ours_arpack")
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, object] = {}
    warm_k = min(k, WARMUP_MODES)  # one untimed call of every method (imports, caches)
    if not lapy_missing:
        _run_lapy(v, f, warm_k, cholmod=False)
        _run_lapy(v, f, warm_k, cholmod=True)
    _run_ours(v, f, warm_k, "block")
    _run_ours(v, f, warm_k, "arpack")
    runs = {
        "lapy": lambda: _run_lapy(v, f, k, cholmod=False),
        "ours": lambda: _run_ours(v, f, k, "block"),
        "lapy_cholmod": lambda: _run_lapy(v, f, k, cholmod=True),
        "ours_arpack": lambda: _run_ours(v, f, k, "arpack"),
    }
    for r in range(args.repeats):  # interleaved, the order rotated each round
        j = r % len(names)
        for name in names[j:] + names[:j]:
            t, *out = runs[name]()
            times[name].append(t)
            if name == "lapy":
                last["lapy"] = tuple(out)
            elif name == "ours":
                last["ours"] = out[0]
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


#: Modes of the untimed warm-up call of every method.
WARMUP_MODES = 10
#: Accuracy criterion against lapy's default solver.
MAX_EIGENVALUE_REL = 1e-8
MAX_ANGLE_RAD = 1e-4


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
    accuracy_ok = None
    if lapy_missing is None:
        accuracy_ok = (
            result["eigenvalue_max_rel_diff"] <= MAX_EIGENVALUE_REL
            and result["subspace_max_angle_rad"] <= MAX_ANGLE_RAD
        )
    criterion = (
        f"against lapy's default solver: max rel eigenvalue diff <= {MAX_EIGENVALUE_REL:g} and "
        f"largest principal angle <= {MAX_ANGLE_RAD:g} rad"
    )
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
                warmup=1,
                target=(">=", 1.0),
                target_source="issue 5 (no slower than lapy)",
                accuracy_criterion=criterion,
                accuracy_ok=accuracy_ok,
                agreement=agree,
            )
        )
    return out


NOTES = [
    "Mesh: brainspace's Conte69 fsLR-32k left hemisphere with the medial wall removed "
    "(brainspace cortex mask). Both tools solve the same linear-FEM problem (cotangent "
    "stiffness, consistent mass).",
    "Every method first runs once untimed (K = 10: imports, caches); the timed repeats then "
    "alternate, the order rotated each round; BLAS/OpenMP threads are pinned with "
    "threadpoolctl for both.",
    "Agreement: largest relative eigenvalue difference over modes 2..K (mode 1 is zero) and "
    "the largest principal angle between the two mode subspaces in the mass inner product.",
]


if __name__ == "__main__":
    raise SystemExit(main())
