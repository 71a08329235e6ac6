"""Laplace-Beltrami eigenmodes: FEM matrices, unit sphere, fsLR-32k against lapy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from brainharmony.geometry.lbo import (
    eigenmodes,
    fem_matrices,
    n_components,
    orient_modes,
    submesh,
)
from brainharmony.geometry.surfaces import (
    icosphere,
    load_template_surface,
    template_cortex_mask,
)

lapy = pytest.importorskip("lapy")

# brainspace's VTK wrappers warn about deprecated VTK calls when loading surfaces
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated method:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: on a shared 2-core machine oversubscribed BLAS is ~5x slower."""
    import scipy.sparse.linalg  # noqa: F401  (load scipy's BLAS before limiting it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _lapy_solver(vertices, faces, lump=False, use_cholmod=False):
    return lapy.Solver(lapy.TriaMesh(vertices, faces), lump=lump, use_cholmod=use_cholmod)


def _clusters(values: np.ndarray) -> list[tuple[int, int]]:
    """Group eigenvalues by the nearest l(l+1): list of (l, count)."""
    ell = np.round((-1 + np.sqrt(1 + 4 * np.maximum(values, 0))) / 2).astype(int)
    return [(int(v), int((ell == v).sum())) for v in np.unique(ell)]


@pytest.fixture(scope="module")
def sphere4():
    return icosphere(4)


@pytest.fixture(scope="module")
def cortex_lh():
    surf = load_template_surface("fslr32k", "lh")
    v, f, index = submesh(surf.vertices, surf.faces, template_cortex_mask("fslr32k", "lh"))
    return v, f, index


def test_icosphere_counts_and_radius():
    for s, n in ((0, 12), (2, 162), (3, 642)):
        sph = icosphere(s)
        assert sph.vertices.shape == (n, 3)
        assert sph.faces.shape == (20 * 4**s, 3)
        np.testing.assert_allclose(np.linalg.norm(sph.vertices, axis=1), 1.0, atol=1e-12)
        # closed surface: every edge is shared by exactly two triangles
        edges = np.sort(
            np.concatenate([sph.faces[:, [0, 1]], sph.faces[:, [1, 2]], sph.faces[:, [2, 0]]]),
            axis=1,
        )
        _, counts = np.unique(edges, axis=0, return_counts=True)
        assert (counts == 2).all()


@pytest.mark.parametrize("lump", [False, True])
def test_fem_matrices_equal_lapy(sphere4, lump):
    rng = np.random.default_rng(3)
    v = sphere4.vertices * (1 + 0.05 * rng.standard_normal((len(sphere4.vertices), 1)))
    stiff, mass = fem_matrices(v, sphere4.faces, lump=lump)
    ref = _lapy_solver(v, sphere4.faces, lump=lump)
    scale_a = abs(ref.stiffness).max()
    scale_m = abs(ref.mass).max()
    assert abs(stiff - ref.stiffness).max() <= 1e-13 * scale_a
    assert abs(mass - ref.mass).max() <= 1e-13 * scale_m
    # properties: symmetric, rows of the stiffness sum to 0, mass sums to the area
    assert abs(stiff - stiff.T).max() <= 1e-14 * scale_a
    np.testing.assert_allclose(np.asarray(stiff.sum(axis=1)).ravel(), 0.0, atol=1e-12 * scale_a)
    tri = v[sphere4.faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    assert mass.sum() == pytest.approx(area.sum(), rel=1e-12)


def test_unit_sphere_spectrum(sphere4):
    """l(l+1) with multiplicity 2l+1, to the accuracy of a 2,562-vertex mesh; equals lapy."""
    k = 49  # l = 0..6 complete
    res = eigenmodes(sphere4.vertices, sphere4.faces, k)
    ell = np.repeat(np.arange(7), 2 * np.arange(7) + 1)
    exact = ell * (ell + 1.0)
    assert _clusters(res.eigenvalues) == [(v, 2 * v + 1) for v in range(7)]
    assert abs(res.eigenvalues[0]) < 1e-10
    rel = np.abs(res.eigenvalues[1:] - exact[1:]) / exact[1:]
    # linear FEM converges as h^2: ~1.4e-3 for l = 1 here, growing with l(l+1)
    assert rel.max() < 0.02
    assert rel[:3].max() < 2e-3
    ref_vals, _ = _lapy_solver(sphere4.vertices, sphere4.faces).eigs(k + 6, rng=0)
    np.testing.assert_allclose(res.eigenvalues, ref_vals[:k], rtol=1e-9, atol=1e-10)


def test_unit_sphere_refinement_converges():
    """Halving the edge length cuts the l = 1..3 error about fourfold (mesh-limited)."""
    errs = []
    for s in (3, 4):
        sph = icosphere(s)
        vals = eigenmodes(sph.vertices, sph.faces, 16).eigenvalues
        ell = np.repeat(np.arange(4), 2 * np.arange(4) + 1)
        exact = ell * (ell + 1.0)
        errs.append(np.mean(np.abs(vals[1:] - exact[1:]) / exact[1:]))
    assert 3.5 < errs[0] / errs[1] < 4.5


@pytest.mark.parametrize("method", ["block", "arpack"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_degenerate_cluster_at_the_edge_is_complete(sphere4, seed, method):
    """36 modes end exactly at a cluster edge; no copy of a repeated eigenvalue is missed.

    (Plain ARPACK with k = 36 and seed 0 missed one copy of a triple eigenvalue here;
    the guard modes of the ARPACK path and the block start of the block path fix it.)
    """
    res = eigenmodes(sphere4.vertices, sphere4.faces, 36, seed=seed, method=method)
    assert res.method == method
    ref, _ = _lapy_solver(sphere4.vertices, sphere4.faces).eigs(45, rng=0)
    np.testing.assert_allclose(res.eigenvalues, ref[:36], rtol=1e-9, atol=1e-10)


def test_mass_normalised_and_sign_convention(sphere4):
    res = eigenmodes(sphere4.vertices, sphere4.faces, 10)
    _, mass = fem_matrices(sphere4.vertices, sphere4.faces)
    gram = res.modes.T @ (mass @ res.modes)
    np.testing.assert_allclose(gram, np.eye(10), atol=1e-10)
    area = res.vertex_area.sum()
    np.testing.assert_allclose(res.modes[:, 0], 1 / np.sqrt(area), rtol=1e-8)
    peak = res.modes[np.abs(res.modes).argmax(axis=0), np.arange(10)]
    assert (peak > 0).all()
    # residual of the generalised problem
    stiff, _ = fem_matrices(sphere4.vertices, sphere4.faces)
    resid = stiff @ res.modes - (mass @ res.modes) * res.eigenvalues
    assert np.abs(resid).max() < 1e-8 * max(1.0, res.eigenvalues.max())


def test_orient_modes_flips_columns():
    m = np.array([[1.0, -3.0], [-2.0, 1.0]])
    out = orient_modes(m)
    np.testing.assert_array_equal(out, [[-1.0, 3.0], [2.0, -1.0]])


def test_fslr_cortex_matches_lapy(cortex_lh):
    """fsLR-32k left hemisphere, medial wall removed: eigenvalues within 1e-6 of lapy's."""
    v, f, index = cortex_lh
    assert v.shape[0] == 29271 and index.shape == (29271,)
    k = 20
    res = eigenmodes(v, f, k)
    ref_vals, ref_vecs = _lapy_solver(v, f, use_cholmod=True).eigs(k, rng=0)
    rel = np.abs(res.eigenvalues[1:] - ref_vals[1:]) / ref_vals[1:]
    assert rel.max() < 1e-6
    assert abs(res.eigenvalues[0]) < 1e-12
    # same modes up to sign (the cortex spectrum has no exact degeneracy)
    _, mass = fem_matrices(v, f)
    overlap = np.abs(np.einsum("ij,ij->j", res.modes, mass @ ref_vecs))
    assert overlap.min() > 1 - 1e-6


def test_block_lanczos_agrees_with_arpack():
    """The fast path (block Lanczos) against its reference twin (ARPACK, as lapy)."""
    sph = icosphere(4)
    rng = np.random.default_rng(7)  # radial noise: no exact degeneracy, modes well defined
    v = sph.vertices * (1 + 0.03 * rng.standard_normal((len(sph.vertices), 1)))
    fast = eigenmodes(v, sph.faces, 60, method="block")
    slow = eigenmodes(v, sph.faces, 60, method="arpack")
    assert (fast.method, slow.method) == ("block", "arpack")
    np.testing.assert_allclose(fast.eigenvalues[1:], slow.eigenvalues[1:], rtol=1e-10)
    np.testing.assert_allclose(fast.modes, slow.modes, atol=1e-6)
    assert fast.max_residual < 1e-10 and slow.max_residual < 1e-10


def test_block_lanczos_gives_up_and_falls_back(monkeypatch, sphere4):
    from brainharmony.geometry import block_lanczos as bl
    from brainharmony.geometry import lbo
    from brainharmony.geometry.lbo import _inverse_operator

    stiff, mass = fem_matrices(sphere4.vertices, sphere4.faces)
    op = _inverse_operator((stiff + 0.01 * mass).tocsr(), "splu")
    assert bl.block_lanczos(stiff, mass, 40, -0.01, op.matmat, max_dim=64) is None
    monkeypatch.setattr(lbo, "block_lanczos", lambda *a, **k: None)
    res = eigenmodes(sphere4.vertices, sphere4.faces, 10)
    assert res.method == "arpack"


def test_solvers_agree_and_are_deterministic():
    sph = icosphere(4)
    rng = np.random.default_rng(0)  # radial noise breaks the sphere's degeneracies
    v = sph.vertices * (1 + 0.03 * rng.standard_normal((len(sph.vertices), 1)))
    a = eigenmodes(v, sph.faces, 12, solver="splu", seed=0)
    b = eigenmodes(v, sph.faces, 12, solver="auto", seed=5)
    c = eigenmodes(v, sph.faces, 12, seed=5, threads=1)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.modes, b.modes, atol=1e-7)  # the sign convention holds
    np.testing.assert_array_equal(b.modes, c.modes)


def test_submesh_drops_orphans_and_maps_indices():
    sph = icosphere(2)
    keep = sph.vertices[:, 2] > -0.2
    v, f, index = submesh(sph.vertices, sph.faces, keep)
    np.testing.assert_array_equal(v, sph.vertices[index])
    assert keep[index].all()
    used = np.zeros(len(v), bool)
    used[f.ravel()] = True
    assert used.all()
    # an isolated kept vertex (no kept triangle around it) is dropped
    keep2 = keep.copy()
    lonely = int(np.argmin(sph.vertices[:, 2]))  # south pole, all neighbours dropped
    keep2[lonely] = True
    _, _, index2 = submesh(sph.vertices, sph.faces, keep2)
    assert lonely not in index2


def test_open_mesh_has_zero_first_eigenvalue():
    sph = icosphere(3)
    v, f, _ = submesh(sph.vertices, sph.faces, sph.vertices[:, 2] > 0.1)
    res = eigenmodes(v, f, 4)
    assert abs(res.eigenvalues[0]) < 1e-10
    assert np.ptp(res.modes[:, 0]) < 1e-8  # Neumann: constant first mode


def test_errors():
    sph = icosphere(2)
    with pytest.raises(ValueError, match="sigma must be negative"):
        eigenmodes(sph.vertices, sph.faces, 4, sigma=0.0)
    with pytest.raises(ValueError, match="n_modes"):
        eigenmodes(sph.vertices, sph.faces, len(sph.vertices))
    with pytest.raises(ValueError, match="solver"):
        eigenmodes(sph.vertices, sph.faces, 4, solver="magic")  # type: ignore[arg-type]
    bad = sph.vertices.copy()
    bad[sph.faces[0, 1]] = bad[sph.faces[0, 0]]  # collapse an edge: zero-area triangles
    with pytest.raises(ValueError, match="zero area"):
        fem_matrices(bad, sph.faces)
    two = np.vstack([sph.vertices, sph.vertices + 5.0])
    faces2 = np.vstack([sph.faces, sph.faces + len(sph.vertices)])
    assert n_components(faces2, len(two))[0] == 2
    with pytest.raises(ValueError, match="2 connected components"):
        eigenmodes(two, faces2, 4)
    extra = np.vstack([sph.vertices, [[3.0, 3.0, 3.0]]])
    with pytest.raises(ValueError, match="belong to no triangle"):
        eigenmodes(extra, sph.faces, 4)
    with pytest.raises(ValueError, match="faces index"):
        fem_matrices(sph.vertices, sph.faces + 1000)
    with pytest.raises(ValueError, match="shape"):
        fem_matrices(sph.vertices[:, :2], sph.faces)


def test_matrices_are_sparse_csr(sphere4):
    stiff, mass = fem_matrices(sphere4.vertices, sphere4.faces)
    assert sparse.isspmatrix_csr(stiff) or stiff.format == "csr"
    assert mass.format == "csr"
    # 7 non-zeros per row on average for a closed triangulation (6 neighbours + diagonal)
    assert stiff.nnz == pytest.approx(7 * sphere4.vertices.shape[0], rel=0.01)
