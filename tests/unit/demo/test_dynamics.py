"""Numerical building blocks of the demo simulator (no images written)."""

from __future__ import annotations

import numpy as np
import pytest

from brainharmony.demo import acquisition, dynamics, motion
from brainharmony.demo.anatomy import subject_anatomy
from brainharmony.demo.bold import BoldSource, render_volumes


def test_hrf_peaks_near_five_seconds_with_unit_area() -> None:
    dt = 0.1
    h = dynamics.canonical_hrf(dt)
    assert h.sum() * dt == pytest.approx(1.0)
    assert 4.5 <= np.argmax(h) * dt <= 5.5
    assert h[int(16 / dt)] < 0  # undershoot


def test_ou_simulation_matches_its_stationary_covariance() -> None:
    """Without spatial mixing the process is the exact OU: cov = sigma^2/2 Q^-1."""
    w = np.array([[0.0, 0.4, 0.0], [0.4, 0.0, -0.3], [0.0, -0.3, 0.0]])
    rng = np.random.default_rng(0)
    x = dynamics.simulate_neural(w, 200_000, 0.1, rng, tau_s=1.0, sigma=1.0)
    expected = 0.5 * np.linalg.inv(np.eye(3) - w)
    np.testing.assert_allclose(np.cov(x.T), expected, atol=0.03)
    # Lag-1 autocovariance follows the exact propagator expm(-Q dt).
    from scipy.linalg import expm

    lag = (x[1:].T @ x[:-1]) / (len(x) - 1)
    np.testing.assert_allclose(lag, expm(-(np.eye(3) - w) * 0.1) @ expected, atol=0.03)


def test_unstable_coupling_is_rejected() -> None:
    with pytest.raises(ValueError, match="unstable"):
        dynamics.simulate_neural(
            np.array([[0.0, 1.5], [1.5, 0.0]]), 10, 0.1, np.random.default_rng(0)
        )


def test_sample_at_interpolates_and_checks_range() -> None:
    fine = np.stack([np.arange(100.0), 2 * np.arange(100.0)], axis=1)
    out = dynamics.sample_at(fine, t0_s=-1.0, dt_s=0.5, times_s=np.array([[0.0, 1.25]]))
    np.testing.assert_allclose(out, [[[2.0, 4.0], [4.5, 9.0]]])
    with pytest.raises(ValueError, match="outside the fine grid"):
        dynamics.sample_at(fine, -1.0, 0.5, np.array([60.0]))


def test_coupling_is_stable_symmetric_and_carries_the_age_effect() -> None:
    geo = dynamics.roi_geometry()
    same = geo.network[:, None] == geo.network[None, :]
    long_range = same & (geo.distance > dynamics.EffectSizes().long_range_mm)
    short = same & (geo.distance <= 20) & ~np.eye(400, dtype=bool)
    ratios = {}
    for z_age in (-1.5, 1.5):
        w = dynamics.coupling_matrix(z_age, 0.0, 0, np.random.default_rng(1))
        np.testing.assert_allclose(w, w.T)
        assert np.all(np.diag(w) == 0)
        assert np.linalg.eigvalsh(w)[-1] == pytest.approx(dynamics.DynamicsParams().spectral_radius)
        ratios[z_age] = w[long_range].mean() / w[short].mean()
    assert ratios[1.5] < 0.5 * ratios[-1.5]  # older: weaker long-range coupling


def test_no_effects_means_no_phenotype_dependence() -> None:
    none = dynamics.EffectSizes(
        age_long_range=0.0,
        dx_default_within=0.0,
        dx_limbic_within=0.0,
        dx_salience_default=0.0,
        fi_control=0.0,
    )
    a = dynamics.coupling_matrix(-1.5, 2.0, 1, np.random.default_rng(3), effects=none)
    b = dynamics.coupling_matrix(1.5, -2.0, 0, np.random.default_rng(3), effects=none)
    np.testing.assert_allclose(a, b)


def test_slice_timing_patterns() -> None:
    st = acquisition.slice_timing(25, 2.0, 1, "interleaved")
    assert st[0] == 0.0 and st[2] == pytest.approx(0.08) and st[1] == pytest.approx(1.04)
    assert st.max() < 2.0 and len(set(st)) == 25
    mb = acquisition.slice_timing(36, 0.735, 4, "interleaved")
    assert len(set(mb)) == 9  # 4 slices per excitation
    np.testing.assert_array_equal(mb[:9], mb[9:18])
    assert mb.max() < 0.735
    with pytest.raises(ValueError, match="divisible"):
        acquisition.slice_timing(35, 0.8, 4, "interleaved")


def test_oriented_affine_codes_and_centre() -> None:
    import nibabel as nib

    center = np.array([1.0, -20.0, 10.0])
    for code in ("LAS", "LPS", "RAS", "ASL"):
        aff = acquisition.oriented_affine(code, (2.0, 3.0, 4.0), (10, 12, 14), center)
        assert "".join(nib.aff2axcodes(aff)) == code
        np.testing.assert_allclose(aff @ np.r_[4.5, 5.5, 6.5, 1.0], np.r_[center, 1.0])
    with pytest.raises(ValueError, match="orientation"):
        acquisition.oriented_affine("LAL", (1, 1, 1), (2, 2, 2), center)


def test_rigid_matrix_rotates_about_its_centre() -> None:
    c = np.array([10.0, -5.0, 3.0])
    m = acquisition.rigid_matrix(np.array([0, 0, 0, 0.1, -0.2, 0.3]), c)
    np.testing.assert_allclose(m @ np.r_[c, 1.0], np.r_[c, 1.0])
    np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-12)
    # rot_x alone turns +y towards +z (right-handed).
    rx = acquisition.rigid_matrix(np.array([0, 0, 0, np.pi / 2, 0, 0]))
    np.testing.assert_allclose(rx[:3, :3] @ [0, 1, 0], [0, 0, 1], atol=1e-12)


def test_framewise_displacement_and_motion_levels() -> None:
    params = np.zeros((3, 6))
    params[1, 0] = 0.3
    params[2, 3] = 0.01  # 0.5 mm at 50 mm
    np.testing.assert_allclose(motion.framewise_displacement(params), [0.0, 0.3, 0.8])
    rng = np.random.default_rng(0)
    clean = motion.simulate_motion(300, 2.0, "clean", rng)
    high = motion.simulate_motion(300, 2.0, "high", rng)
    assert np.all(clean[0] == 0) and np.all(high[0] == 0)
    fd_clean = motion.framewise_displacement(clean)
    fd_high = motion.framewise_displacement(high)
    assert (fd_clean > 0.5).sum() == 0 and fd_clean.mean() < 0.1
    assert (fd_high > 0.5).sum() >= 3
    with pytest.raises(ValueError, match="level"):
        motion.simulate_motion(10, 2.0, "wild", rng)


def test_ageing_thins_cortex_and_grows_ventricles() -> None:
    young = subject_anatomy(22.0, np.random.default_rng(0)).summary()
    old = subject_anatomy(85.0, np.random.default_rng(0)).summary()
    assert old["gm_volume_ml"] < young["gm_volume_ml"] - 30
    assert old["csf_volume_ml"] > young["csf_volume_ml"] + 30


def _toy_source(shape=(8, 8, 8)) -> BoldSource:
    n = int(np.prod(shape))
    static = np.zeros((n, 5), dtype=np.float32)
    static[:, 0] = 1.0  # S0
    static[:, 1] = 1.0  # S0 * amplitude
    labels = np.ones(n, dtype=np.int32)
    return BoldSource(np.eye(4), shape, static, labels)


def test_each_slice_is_sampled_at_its_own_time() -> None:
    """Voxels of slice k carry the parcel signal of slice k's time offset."""
    source = _toy_source()
    n_vol, n_off = 3, 4
    table = np.zeros((n_vol, n_off, 402), dtype=np.float32)
    table[:, :, 1] = (np.arange(n_vol)[:, None] * 10 + np.arange(n_off)[None, :]) / 100.0
    scalars = np.zeros((n_vol, n_off, 4), dtype=np.float32)
    scalars[..., 0] = 1.0
    to_source = np.repeat(np.eye(4)[None], n_vol, axis=0)
    to_source[:, :3, 3] = 1.0  # output (0,0,0) -> source (1,1,1): inside
    slice_group = np.array([0, 2, 1, 3, 0, 2])
    out = render_volumes(source, to_source, (4, 4, 6), slice_group, table, scalars)
    for k, g in enumerate(slice_group):
        expected = np.broadcast_to(1.0 + table[:, g, 1][:, None, None], (n_vol, 4, 4))
        np.testing.assert_allclose(out[:, :, :, k], expected, rtol=1e-6)


def test_rendering_follows_the_motion() -> None:
    """A half-voxel shift interpolates halfway between two labelled regions."""
    shape = (6, 6, 6)
    source = _toy_source(shape)
    source.static[:, 1] = 0.0
    grid = np.arange(np.prod(shape)).reshape(shape)
    source.static[grid[3:].reshape(-1), 0] = 3.0  # brighter half along i
    scalars = np.zeros((2, 1, 4), dtype=np.float32)
    scalars[..., 0] = 1.0
    table = np.zeros((2, 1, 402), dtype=np.float32)
    to_source = np.repeat(np.eye(4)[None], 2, axis=0)
    to_source[1, 0, 3] = 0.5  # second volume: half a voxel along i
    out = render_volumes(source, to_source, shape, np.zeros(6, int), table, scalars)
    assert out[0, 2, 3, 3] == pytest.approx(1.0) and out[0, 3, 3, 3] == pytest.approx(3.0)
    assert out[1, 2, 3, 3] == pytest.approx(2.0)


def test_a_voxel_moved_into_another_slice_takes_that_slice_time() -> None:
    """Slice timing follows where the head is during the volume, not where it was."""
    source = _toy_source()
    source.static[:, 1] = np.tile(np.arange(8, dtype=np.float32), 64)  # amplitude = source k
    n_off = 6
    table = np.zeros((2, n_off, 402), dtype=np.float32)
    table[:, :, 1] = np.arange(n_off)[None, :] / 100.0
    scalars = np.zeros((2, n_off, 4), dtype=np.float32)
    to_source = np.repeat(np.eye(4)[None], 2, axis=0)
    to_source[:, :3, 3] = 1.0
    to_source[1, 2, 3] = 2.0  # volume 1: the head moved one slice down the k axis
    slice_group = np.arange(6)
    out = render_volumes(source, to_source, (4, 4, 6), slice_group, table, scalars)
    for k in range(1, 5):
        # Volume 0: output slice k shows source slice k + 1 at slice k's time.
        assert out[0, 1, 1, k] == pytest.approx((k + 1) * k / 100.0)
        # Volume 1: it shows source slice k + 2, which now lies in slice k.
        assert out[1, 1, 1, k] == pytest.approx((k + 2) * k / 100.0)


def test_thermal_snr_scales_with_voxel_volume_and_tr():
    from brainharmony.demo.bold import BoldModel

    model = BoldModel()
    ref = model.thermal_snr((3.0, 3.0, 3.0), 2.0)
    assert ref == pytest.approx(85.0)
    assert model.thermal_snr((6.0, 6.0, 6.0), 2.0) == pytest.approx(8 * ref)
    assert model.thermal_snr((3.0, 3.0, 3.0), 0.8) < ref
    with pytest.raises(ValueError):
        model.thermal_snr((0.0, 3.0, 3.0), 2.0)
    with pytest.raises(ValueError):
        model.thermal_snr((3.0, 3.0, 3.0), -1.0)


def _render_reference(source, to_source, out_shape, slice_group, roi_table, scalars):
    """The straightforward form of ``render_volumes`` (per-voxel row pick of the full
    product, 2-D take, integer matrix product for the linear index)."""
    from scipy import ndimage as ndi

    n_vol, n_lab = to_source.shape[0], roi_table.shape[2]
    head = np.flatnonzero(source.static[:, 0] > 0)
    src_ijk = np.column_stack(np.unravel_index(head, source.shape)).astype(np.float32)
    static4 = np.ascontiguousarray(source.static[head][:, [0, 2, 3, 4]])
    amp, lab = source.static[head, 1], source.labels[head].astype(np.int64)
    field = np.zeros(source.shape, dtype=np.float32)
    nonzero = (source.static[:, 0] > 0).reshape(source.shape)
    reach = ndi.binary_dilation(nonzero, structure=np.ones((3, 3, 3), dtype=bool)).reshape(-1)
    dims = np.asarray(source.shape)
    strides = np.array([dims[1] * dims[2], dims[2], 1])
    upper = (dims - 1 - 1e-3).astype(np.float32)
    ijk = np.stack(
        np.meshgrid(*[np.arange(n, dtype=np.float32) for n in out_shape], indexing="ij"), -1
    ).reshape(-1, 3)
    out = np.zeros((n_vol, int(np.prod(out_shape))), dtype=np.float32)
    for v in range(n_vol):
        k_row = np.linalg.inv(to_source[v])[2].astype(np.float32)
        k = np.clip((src_ijk @ k_row[:3] + (k_row[3] + 0.5)).astype(np.int64), 0, out_shape[2] - 1)
        group = slice_group[k]
        per_offset = static4 @ scalars[v].T
        values = np.take_along_axis(per_offset, group[:, None], axis=1)[:, 0]
        values += amp * roi_table[v].reshape(-1)[group * n_lab + lab]
        field.reshape(-1)[head] = values
        m32 = to_source[v].astype(np.float32)
        coords = np.clip(ijk @ m32[:3, :3].T + m32[:3, 3], 0.0, upper)
        keep = np.flatnonzero(reach[coords.astype(np.int64) @ strides])
        out[v, keep] = ndi.map_coordinates(field, coords[keep].T, order=1, prefilter=False)
    return out.reshape(n_vol, *out_shape)


def test_render_volumes_matches_the_straightforward_form_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    shape, out_shape, n_vol, n_off = (11, 12, 10), (7, 8, 6), 4, 3
    n = int(np.prod(shape))
    static = rng.uniform(0.0, 1.5, (n, 5)).astype(np.float32)
    static[rng.random(n) < 0.3, 0] = 0.0  # empty voxels
    labels = rng.integers(0, 402, n).astype(np.int32)
    source = BoldSource(np.eye(4), shape, static, labels)
    to_source = np.repeat(np.eye(4)[None], n_vol, axis=0)
    for v in range(n_vol):
        to_source[v, :3, :3] = acquisition.rotation_matrix(*rng.normal(0.0, 0.1, 3)) * 1.3
        to_source[v, :3, 3] = rng.uniform(0.0, 2.0, 3)
    slice_group = rng.integers(0, n_off, out_shape[2])
    table = rng.normal(0.0, 0.02, (n_vol, n_off, 402)).astype(np.float32)
    scalars = rng.normal(1.0, 0.1, (n_vol, n_off, 4)).astype(np.float32)
    args = (source, to_source, out_shape, slice_group, table, scalars)
    expected = _render_reference(*args)
    got = render_volumes(*args)
    assert np.count_nonzero(got) > got.size // 4
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_subject_anatomy_matches_the_full_grid_formula_bit_for_bit() -> None:
    from brainharmony.demo.anatomy import head_model

    a = subject_anatomy(78.0, np.random.default_rng(5))
    m = head_model()
    keep = 1.0 - np.clip(a.thinning_mm - m.d_tissue + 1.0, 0.0, 1.0)
    keep_all = 1.0 - np.clip(a.ventricle_mm - m.d_deep_csf + 0.5, 0.0, 1.0) * m.deep
    gm = (m.gm * keep * keep_all * m.envelope).astype(np.float32)
    wm = (m.wm * keep_all * m.envelope).astype(np.float32)
    csf = np.clip(m.envelope - gm - wm, 0.0, 1.0).astype(np.float32)
    for got, want in ((a.gm, gm), (a.wm, wm), (a.csf, csf)):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_nested_single_thread_blas_keeps_the_outer_limit() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads() -> set[int]:
        return {
            p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"
        }

    before = blas_threads()
    with dynamics.single_thread_blas():
        assert blas_threads() == {1}
        with dynamics.single_thread_blas():
            assert blas_threads() == {1}
        assert blas_threads() == {1}  # leaving the inner one does not lift the limit
    assert blas_threads() == before
    with pytest.raises(RuntimeError), dynamics.single_thread_blas():
        raise RuntimeError("boom")
    with dynamics.single_thread_blas():  # the depth was reset by the error
        assert blas_threads() == {1}
    assert blas_threads() == before
