"""Laplace-Beltrami eigenmodes of a triangle mesh by linear finite elements.

The operator is discretised with piecewise-linear (P1) finite elements on the
triangles, which gives the generalised symmetric eigenproblem

    A phi = lambda M phi

with ``A`` the cotangent stiffness matrix and ``M`` the mass matrix. Both are
assembled exactly as the linear FEM of lapy's ``Solver`` (cotangent weights
``-cot(theta)/2`` off the diagonal, rows summing to zero; *consistent* mass with
``area/6`` on the diagonal and ``area/12`` off it per triangle), so that the
spectra agree with lapy's to rounding. A lumped (diagonal, ``area/3`` per
incident triangle) mass matrix is available with ``lump=True`` but is not the
default. An open mesh (the cortex with its medial wall cut out) gets natural
(Neumann) boundary conditions, as in lapy.

The smallest eigenpairs are found by shift-invert Lanczos around a shift
``sigma`` slightly below zero, with ``A - sigma M`` factorised once: by CHOLMOD
through ``cholespy`` when it is importable (it is in the lock file), otherwise by
SuperLU (:func:`scipy.sparse.linalg.splu`). Two eigensolvers share that factor:
block Lanczos (:mod:`brainharmony.geometry.block_lanczos`, the default, about
twice as fast for 200 modes) and ARPACK (:func:`scipy.sparse.linalg.eigsh`, what
lapy uses; the reference the fast path is tested against, and its fallback).
Start vectors come from a seeded generator, so a run is reproducible.

Conventions of the returned modes
---------------------------------
* **Mass-normalised**: ``Phi.T @ M @ Phi == I`` (checked, and re-normalised).
  The first mode of a connected mesh is therefore the constant
  ``1 / sqrt(area)``.
* **Deterministic sign**: each mode is flipped so that its entry of largest
  absolute value is positive (the convention BrainSpace uses for gradients). A
  mass-weighted sum cannot serve: every mode but the first is M-orthogonal to
  the constant, so that sum is zero up to rounding. Within an exactly
  degenerate eigenspace (e.g. the sphere's ``2l+1`` multiplets) the basis itself
  is arbitrary; the sign rule does not fix a rotation.
* Ascending eigenvalues; the first is zero (to rounding) on a closed or
  Neumann mesh.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from brainharmony.geometry.block_lanczos import block_lanczos

logger = logging.getLogger(__name__)

Solver = Literal["auto", "cholmod", "splu"]
Method = Literal["block", "arpack"]
#: Largest accepted relative residual of a returned eigenpair (see Eigenmodes).
RESIDUAL_LIMIT = 1e-8


@dataclass(frozen=True)
class Eigenmodes:
    """Laplace-Beltrami eigenpairs of one mesh.

    Attributes
    ----------
    eigenvalues : ndarray of shape (n_modes,)
        Ascending eigenvalues (units: 1 / length^2 of the mesh coordinates).
    modes : ndarray of shape (n_vertices, n_modes)
        Mass-normalised eigenvectors, sign-fixed (see the module notes).
    vertex_area : ndarray of shape (n_vertices,)
        Lumped vertex area (row sums of the mass matrix; one third of the area
        of the incident triangles).
    solver : str
        Factorisation actually used (``"cholmod"`` or ``"splu"``).
    method : str
        Eigensolver actually used (``"block"`` or ``"arpack"``).
    max_residual : float
        Largest relative residual ``||A x - lambda M x|| / (||A||_1 ||x||)``.
    """

    eigenvalues: np.ndarray
    modes: np.ndarray
    vertex_area: np.ndarray
    solver: str
    method: str = "arpack"
    max_residual: float = float("nan")


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (n_vertices, 3); got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must have shape (n_faces, 3); got {f.shape}")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must hold integer vertex indices; got dtype {f.dtype}")
    if f.size == 0:
        raise ValueError("faces is empty: the mesh has no triangles")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise ValueError(
            f"faces index vertices {f.min()}..{f.max()}, but there are {v.shape[0]} vertices"
        )
    if not np.isfinite(v).all():
        raise ValueError("vertices contain NaN or infinite coordinates")
    return v, f.astype(np.int64, copy=False)


def fem_matrices(
    vertices: np.ndarray, faces: np.ndarray, *, lump: bool = False
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """Linear-FEM stiffness and mass matrices of a triangle mesh.

    Parameters
    ----------
    vertices : ndarray of shape (n_vertices, 3)
        Vertex coordinates.
    faces : ndarray of shape (n_faces, 3)
        Triangles as vertex indices (any consistent or inconsistent orientation).
    lump : bool
        Lumped (diagonal) mass matrix instead of the consistent one.

    Returns
    -------
    stiffness : scipy.sparse.csr_matrix of shape (n_vertices, n_vertices)
        Symmetric positive semi-definite cotangent matrix (rows sum to zero).
    mass : scipy.sparse.csr_matrix of shape (n_vertices, n_vertices)
        Symmetric positive definite mass matrix (entries sum to the mesh area).

    Raises
    ------
    ValueError
        Malformed arrays, or triangles of zero area (their cotangents are
        undefined; remove them first).
    """
    v, f = _check_mesh(vertices, faces)
    p0, p1, p2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    # Edge vectors opposite each corner: e0 = p2 - p1 (opposite p0), etc.
    e0, e1, e2 = p2 - p1, p0 - p2, p1 - p0
    double_area = np.linalg.norm(np.cross(e0, e1), axis=1)
    area = 0.5 * double_area
    tiny = np.finfo(np.float64).eps * max(float(area.mean()), np.finfo(np.float64).tiny)
    degenerate = area <= tiny
    if degenerate.any():
        first = np.flatnonzero(degenerate)[:5].tolist()
        raise ValueError(
            f"{int(degenerate.sum())} of {len(f)} triangles have zero area (first: {first}); "
            "remove degenerate triangles before computing eigenmodes"
        )
    # Half-cotangent of the angle at each corner. At p0 the angle lies between
    # p1 - p0 = e2 and p2 - p0 = -e1, so cot(theta_0) = -(e1 . e2) / |e1 x e2|.
    # The stiffness entry between the two other vertices is -cot(theta)/2.
    w0 = -0.5 * np.einsum("ij,ij->i", e1, e2) / double_area
    w1 = -0.5 * np.einsum("ij,ij->i", e2, e0) / double_area
    w2 = -0.5 * np.einsum("ij,ij->i", e0, e1) / double_area
    n = v.shape[0]
    i1, i2, i0 = f[:, 1], f[:, 2], f[:, 0]
    rows = np.concatenate([i1, i2, i2, i0, i0, i1])
    cols = np.concatenate([i2, i1, i0, i2, i1, i0])
    off = -np.concatenate([w0, w0, w1, w1, w2, w2])
    stiff = sparse.coo_matrix((off, (rows, cols)), shape=(n, n)).tocsr()
    stiff.sum_duplicates()
    stiff = stiff - sparse.diags(np.asarray(stiff.sum(axis=1)).ravel())
    stiff = sparse.csr_matrix(stiff)
    stiff.sum_duplicates()
    stiff.sort_indices()

    corners = np.concatenate([i0, i1, i2])
    if lump:
        mass = sparse.csr_matrix((np.tile(area / 3.0, 3), (corners, corners)), shape=(n, n))
    else:
        mrows = np.concatenate([rows, corners])
        mcols = np.concatenate([cols, corners])
        mdata = np.concatenate([np.tile(area / 12.0, 6), np.tile(area / 6.0, 3)])
        mass = sparse.coo_matrix((mdata, (mrows, mcols)), shape=(n, n)).tocsr()
    mass.sum_duplicates()
    mass.sort_indices()
    return stiff, mass


def submesh(
    vertices: np.ndarray, faces: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sub-mesh of the triangles whose three vertices are all kept.

    Kept vertices left without any triangle are dropped too (they would make the
    mass matrix singular), with a warning.

    Parameters
    ----------
    vertices : ndarray of shape (n_vertices, 3)
    faces : ndarray of shape (n_faces, 3)
    keep : ndarray of shape (n_vertices,), bool
        Vertices to keep (e.g. the cortex, medial wall excluded).

    Returns
    -------
    sub_vertices : ndarray of shape (n_sub, 3)
    sub_faces : ndarray of shape (n_sub_faces, 3)
        Re-indexed into ``sub_vertices``.
    index : ndarray of shape (n_sub,), int
        Index of each sub-mesh vertex in the original mesh.
    """
    v, f = _check_mesh(vertices, faces)
    keep = np.asarray(keep)
    if keep.shape != (v.shape[0],) or keep.dtype != np.bool_:
        raise ValueError(
            f"keep must be a boolean array of shape ({v.shape[0]},); "
            f"got {keep.dtype} of shape {keep.shape}"
        )
    kept_faces = f[keep[f].all(axis=1)]
    if kept_faces.size == 0:
        raise ValueError("no triangle has all three vertices kept")
    used = np.zeros(v.shape[0], dtype=bool)
    used[kept_faces.ravel()] = True
    orphans = int((keep & ~used).sum())
    if orphans:
        logger.warning("dropping %d kept vertices that belong to no kept triangle", orphans)
    index = np.flatnonzero(used)
    new = np.full(v.shape[0], -1, dtype=np.int64)
    new[index] = np.arange(index.size)
    return v[index], new[kept_faces], index


def n_components(faces: np.ndarray, n_vertices: int) -> tuple[int, np.ndarray]:
    """Connected components of a mesh's edge graph.

    Returns
    -------
    n : int
        Number of components.
    labels : ndarray of shape (n_vertices,), int
        Component of each vertex.
    """
    f = np.asarray(faces, dtype=np.int64)
    rows = f[:, [0, 1, 2]].ravel()
    cols = f[:, [1, 2, 0]].ravel()
    graph = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n_vertices,) * 2)
    n, labels = connected_components(graph, directed=False)
    return int(n), labels


def orient_modes(modes: np.ndarray) -> np.ndarray:
    """Flip each column so that its entry of largest magnitude is positive.

    Parameters
    ----------
    modes : ndarray of shape (n_vertices, n_modes)

    Returns
    -------
    ndarray of shape (n_vertices, n_modes)
        A sign-flipped copy.
    """
    m = np.array(modes, dtype=np.float64, copy=True)
    peak = m[np.abs(m).argmax(axis=0), np.arange(m.shape[1])]
    m *= np.where(peak < 0, -1.0, 1.0)
    return m


def _thread_limit(threads: int | None) -> contextlib.AbstractContextManager[Any]:
    if threads is None:
        return contextlib.nullcontext()
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def _cholmod_available() -> bool:
    try:
        import cholespy  # noqa: F401
    except ImportError:
        return False
    return True


def _inverse_operator(matrix: sparse.csr_matrix, solver: str) -> sparse.linalg.LinearOperator:
    from scipy.sparse.linalg import LinearOperator, splu

    n = matrix.shape[0]
    if solver == "cholmod":
        import cholespy

        # CSR of a symmetric matrix: CHOLMOD reads it as CSC of the same matrix.
        factor = cholespy.CholeskySolverD(
            n,
            matrix.indptr.astype(np.int32),
            matrix.indices.astype(np.int32),
            matrix.data.astype(np.float64),
            cholespy.MatrixType.CSR,
        )

        def solve(b: np.ndarray) -> np.ndarray:
            rhs = np.ascontiguousarray(b, dtype=np.float64)
            out = np.empty_like(rhs)
            factor.solve(rhs, out)
            return out

    else:
        lu = splu(matrix.tocsc())

        def solve(b: np.ndarray) -> np.ndarray:
            return lu.solve(np.asarray(b, dtype=np.float64))

    return LinearOperator((n, n), matvec=solve, matmat=solve, dtype=np.float64)


def eigenmodes(
    vertices: np.ndarray,
    faces: np.ndarray,
    n_modes: int,
    *,
    lump: bool = False,
    sigma: float = -0.01,
    solver: Solver = "auto",
    method: Method = "block",
    tol: float | None = None,
    seed: int = 0,
    n_guard: int | None = None,
    check_connected: bool = True,
    threads: int | None = 1,
) -> Eigenmodes:
    """The ``n_modes`` smallest Laplace-Beltrami eigenpairs of a triangle mesh.

    Parameters
    ----------
    vertices : ndarray of shape (n_vertices, 3)
        Vertex coordinates (e.g. mm).
    faces : ndarray of shape (n_faces, 3)
        Triangles; every vertex must belong to at least one.
    n_modes : int
        Number of eigenpairs, ``1 <= n_modes < n_vertices``.
    lump : bool
        Lumped mass matrix (default: consistent, as lapy).
    sigma : float
        Shift of the shift-invert mode; must be negative so that
        ``A - sigma M`` is positive definite. lapy's default, -0.01, suits
        meshes in mm and the unit sphere alike.
    solver : {"auto", "cholmod", "splu"}
        Factorisation of ``A - sigma M``. ``"auto"`` takes CHOLMOD (cholespy)
        when importable, else SuperLU.
    method : {"block", "arpack"}
        ``"block"`` (default): shift-invert block Lanczos
        (:mod:`brainharmony.geometry.block_lanczos`), about twice as fast as
        ARPACK for 200 modes; falls back to ARPACK if it does not converge.
        ``"arpack"``: :func:`scipy.sparse.linalg.eigsh` in shift-invert mode,
        the algorithm lapy uses (the reference the fast path is tested against).
    tol : float, optional
        Convergence tolerance. ARPACK: relative, 0 = machine precision (lapy's
        choice, the default). Block: relative residual of the shift-inverted
        Ritz pairs, default 1e-10 (eigenvalues then agree with ARPACK's to
        ~1e-13 relative on fsLR-32k).
    seed : int
        Seed of the Lanczos start vector (block).
    n_guard : int, optional
        ARPACK only: extra eigenpairs computed and discarded. Single-vector
        Lanczos can miss one copy of an exactly repeated eigenvalue when the
        requested count ends inside or at the edge of a degenerate cluster (seen
        on an icosphere); asking for a few more makes that unlikely. Default:
        ``max(5, ceil(n_modes / 20))``, capped by the mesh size. (A block start
        captures repeated eigenvalues up to the block size, so the block method
        needs no guard.)
    check_connected : bool
        Raise when the mesh has several connected components (each adds a zero
        eigenvalue and the first modes would only label components).
    threads : int or None
        Cap on BLAS/OpenMP threads during the factorisation and the solve
        (through threadpoolctl); None leaves the process setting. Default 1:
        ARPACK's work is memory-bound level-2 BLAS that gains little from
        threads, while oversubscribed BLAS threads on a busy machine made the
        same solve 4-10x slower here (docs/geometry.md).

    Returns
    -------
    Eigenmodes
        Eigenvalues (ascending), mass-normalised and sign-fixed modes, vertex areas.

    Raises
    ------
    ValueError
        Bad arguments, a degenerate or disconnected mesh, a vertex in no triangle.
    """
    v, f = _check_mesh(vertices, faces)
    n = v.shape[0]
    if not isinstance(n_modes, int | np.integer) or not 1 <= n_modes < n:
        raise ValueError(f"n_modes must be an integer in [1, {n - 1}]; got {n_modes!r}")
    if not sigma < 0:
        raise ValueError(f"sigma must be negative (A - sigma M must be definite); got {sigma}")
    if solver not in ("auto", "cholmod", "splu"):
        raise ValueError(f"solver must be 'auto', 'cholmod' or 'splu'; got {solver!r}")
    if method not in ("block", "arpack"):
        raise ValueError(f"method must be 'block' or 'arpack'; got {method!r}")
    used = np.zeros(n, dtype=bool)
    used[f.ravel()] = True
    if not used.all():
        raise ValueError(
            f"{int((~used).sum())} vertices belong to no triangle; use submesh() to drop them first"
        )
    if check_connected:
        n_comp, labels = n_components(f, n)
        if n_comp > 1:
            sizes = np.bincount(labels)
            raise ValueError(
                f"the mesh has {n_comp} connected components (sizes {sorted(sizes)[::-1][:5]}"
                "...); keep only the largest (see submesh) or pass check_connected=False"
            )
    if solver == "auto":
        solver = "cholmod" if _cholmod_available() else "splu"
    elif solver == "cholmod" and not _cholmod_available():
        raise ValueError("solver='cholmod' needs the cholespy package, which is not installed")

    stiff, mass = fem_matrices(v, f, lump=lump)
    shifted = sparse.csr_matrix(stiff - sigma * mass)
    shifted.sum_duplicates()
    shifted.sort_indices()
    k = int(n_modes)
    logger.info("LBO: %d vertices, %d modes, %s with %s, sigma %g", n, k, method, solver, sigma)
    used_method = method
    with _thread_limit(threads):
        op_inv = _inverse_operator(shifted, solver)
        result = None
        if method == "block" and k + 16 < n:
            result = block_lanczos(
                stiff,
                mass,
                k,
                sigma,
                op_inv.matmat,
                tol=1e-10 if tol is None else tol,
                seed=seed,
            )
        if result is not None:
            values, vectors = result.eigenvalues, result.vectors
        else:
            used_method = "arpack"
            values, vectors = _arpack(stiff, mass, k, sigma, op_inv, tol, seed, n_guard)
    # Normalise again so the contract Phi^T M Phi = I holds to rounding.
    norms = np.sqrt(np.einsum("ij,ij->j", vectors, mass @ vectors))
    vectors = vectors / norms
    gram = vectors.T @ (mass @ vectors)
    err = float(np.abs(gram - np.eye(gram.shape[0])).max())
    if err > 1e-8:
        logger.warning("eigenvectors are M-orthonormal only to %.2e", err)
    a_norm = float(abs(stiff).sum(axis=1).max())
    resid = np.linalg.norm(stiff @ vectors - (mass @ vectors) * values, axis=0) / (
        a_norm * np.linalg.norm(vectors, axis=0)
    )
    max_resid = float(resid.max())
    if max_resid > RESIDUAL_LIMIT:
        if used_method == "block":
            logger.warning("block Lanczos residual %.1e; recomputing with ARPACK", max_resid)
            return eigenmodes(
                v, f, n_modes, lump=lump, sigma=sigma, solver=solver, method="arpack",
                seed=seed, n_guard=n_guard, check_connected=False, threads=threads,
            )  # fmt: skip
        logger.warning("eigenpair residual %.1e exceeds %.0e", max_resid, RESIDUAL_LIMIT)
    area = np.asarray(mass.sum(axis=1)).ravel()
    return Eigenmodes(
        eigenvalues=values,
        modes=orient_modes(vectors),
        vertex_area=area,
        solver=solver,
        method=used_method,
        max_residual=max_resid,
    )


def _arpack(
    stiff: sparse.csr_matrix,
    mass: sparse.csr_matrix,
    k: int,
    sigma: float,
    op_inv: Any,
    tol: float | None,
    seed: int,
    n_guard: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """ARPACK shift-invert (as lapy), with ``n_guard`` extra pairs discarded."""
    from scipy.sparse.linalg import eigsh

    n = stiff.shape[0]
    if n_guard is None:
        n_guard = max(5, -(-k // 20))
    if n_guard < 0:
        raise ValueError(f"n_guard must be >= 0; got {n_guard}")
    n_request = min(k + int(n_guard), n - 1)
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
    values, vectors = eigsh(
        stiff,
        k=n_request,
        M=mass,
        sigma=sigma,
        which="LM",
        OPinv=op_inv,
        tol=0.0 if tol is None else tol,
        v0=v0,
    )
    order = np.argsort(values)[:k]
    return values[order], vectors[:, order]
