"""Batched rigid motion estimation: a known motion is recovered; conventions hold."""

import numpy as np
import pytest
from scipy import ndimage

from brainharmony.func.motion import (
    MotionSettings,
    apply_motion,
    estimate_motion,
    framewise_displacement,
    matrices_to_params,
    params_to_matrices,
)


def test_params_matrices_round_trip():
    rng = np.random.default_rng(1)
    params = np.c_[rng.normal(0, 2, (20, 3)), rng.normal(0, 0.05, (20, 3))]
    center = np.array([3.0, -10.0, 20.0])
    mats = params_to_matrices(params, center)
    np.testing.assert_allclose(matrices_to_params(mats, center), params, atol=1e-12)
    # Rotation about the centre leaves the centre in place (up to the translation).
    moved = mats[:, :3, :3] @ center + mats[:, :3, 3]
    np.testing.assert_allclose(moved, center + params[:, :3], atol=1e-9)


def test_framewise_displacement_is_power():
    params = np.zeros((3, 6))
    params[1] = [0.1, -0.2, 0.0, 0.001, 0.0, -0.002]
    fd = framewise_displacement(params)
    assert fd[0] == 0.0
    assert fd[1] == pytest.approx(0.3 + 50 * 0.003)
    assert fd[2] == pytest.approx(0.3 + 50 * 0.003)


def _moving_head(n_volumes: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (30, 34, 28)
    head = np.zeros(shape)
    ii = np.indices(shape).astype(float)
    c = (np.array(shape) - 1) / 2
    r = np.sqrt((((ii.T - c) / (np.array(shape) / 2.6)) ** 2).sum(-1)).T
    head[r < 1] = 1.0
    head += 0.6 * ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) * (r < 1)
    head = ndimage.gaussian_filter(head, 1.0) * 1000
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-58, -66, -54]
    center = affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]
    params = np.c_[rng.normal(0, 0.6, (n_volumes, 3)), rng.normal(0, 0.01, (n_volumes, 3))]
    params[0] = 0
    mats = params_to_matrices(params, center)
    coef = ndimage.spline_filter(head, order=3)
    grid = np.indices(shape).reshape(3, -1)
    pts = np.r_[grid, np.ones((1, grid.shape[1]))]
    data = np.empty((*shape, n_volumes), dtype=np.float32)
    inv_a = np.linalg.inv(affine)
    for v in range(n_volumes):
        # Volume v shows the head point x_ref at x_v = M_v x_ref.
        m = inv_a @ np.linalg.inv(mats[v]) @ affine
        data[..., v] = ndimage.map_coordinates(
            coef, (m @ pts)[:3], order=3, prefilter=False
        ).reshape(shape)
    data += rng.normal(0, 5.0, data.shape).astype(np.float32)
    return data, affine, params, center


def test_known_motion_is_recovered():
    data, affine, params, center = _moving_head()
    result = estimate_motion(data, affine)
    np.testing.assert_allclose(result.center, center)
    # Relative to volume 0 (the truth's reference).
    rel = result.matrices @ np.linalg.inv(result.matrices[0])
    est = matrices_to_params(rel, center)
    err = np.abs(est - params)
    assert np.median(err[:, :3]) < 0.05  # mm
    assert np.degrees(np.median(err[:, 3:])) < 0.05  # deg
    # Realigning with the estimate makes the volumes agree with the reference.
    aligned = apply_motion(data, affine, result.matrices)
    inner = (slice(6, -6),) * 3
    spread_before = data[inner].std(axis=-1).mean()
    spread_after = aligned[inner].std(axis=-1).mean()
    assert spread_after < 0.5 * spread_before


def test_settings_and_inputs_are_checked():
    with pytest.raises(ValueError, match="max_iter"):
        MotionSettings(levels=(2, 1), max_iter=(3,))
    with pytest.raises(ValueError, match="4-D"):
        estimate_motion(np.zeros((4, 4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="at least 2 volumes"):
        estimate_motion(np.zeros((8, 8, 8, 1)), np.eye(4))


def test_inside_grid_matches_the_min_max_test():
    import torch

    from brainharmony.func.motion import inside_grid

    grid = torch.rand(4, 500, 3) * 2.4 - 1.2
    grid[0, :3] = torch.tensor([1.0 + 1e-6, -1.0 - 1e-6, float("nan")])[:, None]
    grid[1, 0] = torch.tensor([1.0, -1.0, 0.5])
    low, high = torch.aminmax(grid, dim=-1)
    for tol in (0.0, 1e-6, 1e-5):
        assert torch.equal(inside_grid(grid, tol), (high <= 1.0 + tol) & (low >= -1.0 - tol))
    assert not inside_grid(grid, 1e-5)[0, 2] and inside_grid(grid, 0.0)[1, 0]
    # A grid laid out points-first (as einsum returns it) still gives a contiguous mask.
    strided = grid.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not strided.is_contiguous() and inside_grid(strided, 1e-6).is_contiguous()


def test_numpy_and_torch_backends_agree():
    """The numpy backend (CPU default) is the torch one to float32 rounding."""
    data, affine, _, _ = _moving_head(n_volumes=12, seed=3)
    valid = np.ones(data.shape[:3], bool)
    valid[3:6, 4:9, 2:5] = False
    ref = estimate_motion(data, affine, valid=valid, backend="torch")
    fast = estimate_motion(data, affine, valid=valid, backend="numpy")
    assert fast.diagnostics["iterations"] == ref.diagnostics["iterations"]
    np.testing.assert_allclose(fast.params[:, :3], ref.params[:, :3], atol=1e-4)  # mm
    np.testing.assert_allclose(fast.params[:, 3:], ref.params[:, 3:], atol=1e-6)  # rad
    np.testing.assert_allclose(fast.reference, ref.reference, rtol=0, atol=1e-5 * 1000)
    assert fast.diagnostics["residual"] == pytest.approx(ref.diagnostics["residual"], rel=1e-4)
    # "auto" on the CPU is numpy.
    auto = estimate_motion(data, affine, valid=valid)
    np.testing.assert_array_equal(auto.params, fast.params)
    a = apply_motion(data, affine, ref.matrices, backend="torch")
    b = apply_motion(data, affine, ref.matrices, backend="numpy")
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_backend_is_checked():
    from brainharmony.func.motion import resolve_backend

    assert resolve_backend("auto", "cpu") == "numpy"
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("jax", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_backend("numpy", "cuda")


def test_inside_voxels_matches_inside_grid():
    """The voxel-coordinate test is grid_sample's [-1, 1] test with the same tolerance."""
    import torch

    from brainharmony.func.motion import _normalizer, inside_grid, inside_voxels

    rng = np.random.default_rng(4)
    shape = (7, 9, 5)
    coords = rng.uniform(-1.0, 10.0, (3, 3, 400))  # (n, 3, P) voxel coordinates
    coords[0, :, :2] = [[-2e-6, 6.0], [8.0, 8.0 + 1e-6], [4.0 + 3e-5, 2.0]]
    pts = np.concatenate([coords, np.ones((3, 1, 400))], axis=1)
    grid = np.einsum("ij,njp->npi", _normalizer(shape), pts)[..., :3]
    for tol in (0.0, 1e-6, 1e-5):
        expected = inside_grid(torch.from_numpy(grid), tol).numpy()
        np.testing.assert_array_equal(inside_voxels(coords, shape, tol), expected)


def test_cpu_motion_and_resampling_do_not_import_torch():
    """The CPU path spares a job the torch import (about 1.7 s)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from brainharmony.func.motion import MotionSettings, estimate_motion\n"
        "from brainharmony.func.register import resample_to_template\n"
        "r2 = ((np.indices((16, 16, 16)) - 7.5) ** 2).sum(0)\n"
        "data = np.repeat((1000 * np.exp(-r2 / 20))[..., None], 3, -1).astype(np.float32)\n"
        "estimate_motion(data, np.eye(4), settings=MotionSettings(levels=(1,), max_iter=(2,)))\n"
        "resample_to_template(data, np.tile(np.eye(4), (3, 1, 1)), np.argwhere(data[..., 0] > 0))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
