"""Rigid head-motion estimation for all volumes of a run at once (numpy or torch).

Method
------
Inverse-compositional Gauss-Newton (Lucas-Kanade, Baker & Matthews 2004) for a rigid
transform per volume, vectorised over volumes: one program aligns every volume of
the run to the template at each iteration (one batched ``grid_sample`` call per chunk
of volumes, one batched 6 x 6 solve), coarse to fine over an image pyramid.

* The template's gradients and the steepest-descent images are computed once per
  level; each volume's Hessian is a single matrix product of its validity mask with
  the precomputed outer products (points that fall outside a volume's field of view
  are left out of that volume's fit only).
* Each iteration also fits a gain and offset per volume (``I ~ a T + b``), so global
  intensity changes do not masquerade as motion.
* Two passes: the first aligns every volume to the temporal mean; the second aligns
  them again to the mean of the realigned volumes, which becomes the BOLD reference
  (``boldref``). Motion parameters are relative to that reference.

Two backends run this algorithm: numpy (trilinear samples from ``scipy.ndimage`` at
float64 coordinates; the CPU default, which spares a CPU job the torch import) and
torch (``grid_sample``, CPU or GPU). They agree to float32 rounding (tested).

Conventions
-----------
All transforms are in world (scanner RAS, mm) coordinates. ``matrices[v]`` maps a
point of the reference (``boldref``) to the place where the same piece of head is
found in volume ``v``: ``x_v = M_v @ x_ref``; sampling volume ``v`` at ``M_v @ x``
for every reference-grid point ``x`` gives the realigned volume.

The six parameters (fMRIPrep's confound names ``trans_x, trans_y, trans_z`` in mm and
``rot_x, rot_y, rot_z`` in radians) describe ``M_v`` as a rotation about the centre
of the reference grid ``c`` followed by a translation:
``M_v = T(c) @ [[R, t], [0, 1]] @ T(-c)`` with ``t = (trans_x, trans_y, trans_z)`` and
``R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)`` (right-handed rotations about the world
axes; see :func:`rotation_matrix`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PARAM_NAMES: tuple[str, ...] = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


# --------------------------------------------------------------------------------------
# Parameters <-> matrices
# --------------------------------------------------------------------------------------
def rotation_matrix(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)``.

    Parameters
    ----------
    rot : ndarray of shape (..., 3)
        Angles in radians about the x, y and z axes (right-handed).

    Returns
    -------
    ndarray of shape (..., 3, 3)
    """
    rot = np.asarray(rot, dtype=np.float64)
    cx, cy, cz = np.cos(rot[..., 0]), np.cos(rot[..., 1]), np.cos(rot[..., 2])
    sx, sy, sz = np.sin(rot[..., 0]), np.sin(rot[..., 1]), np.sin(rot[..., 2])
    one, zero = np.ones_like(cx), np.zeros_like(cx)
    rx = np.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(*cx.shape, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*cx.shape, 3, 3)
    rz = np.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(*cx.shape, 3, 3)
    return rx @ ry @ rz


def rotation_angles(matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrix` (angles within +-pi/2 about y).

    Parameters
    ----------
    matrix : ndarray of shape (..., 3, 3)

    Returns
    -------
    ndarray of shape (..., 3)
    """
    m = np.asarray(matrix, dtype=np.float64)
    # R = Rx Ry Rz: R[0,2] = sin(y); R[1,2] = -sin(x) cos(y); R[2,2] = cos(x) cos(y);
    # R[0,1] = -cos(y) sin(z); R[0,0] = cos(y) cos(z).
    ry = np.arcsin(np.clip(m[..., 0, 2], -1.0, 1.0))
    rx = np.arctan2(-m[..., 1, 2], m[..., 2, 2])
    rz = np.arctan2(-m[..., 0, 1], m[..., 0, 0])
    return np.stack([rx, ry, rz], axis=-1)


def params_to_matrices(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """World 4 x 4 matrices from motion parameters.

    Parameters
    ----------
    params : ndarray of shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (radians).
    center : ndarray of shape (3,)
        Centre of rotation (world mm).

    Returns
    -------
    ndarray of shape (n_volumes, 4, 4)
    """
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    if params.shape[-1] != 6:
        raise ValueError(f"params must have shape (n, 6), got {params.shape}")
    c = np.asarray(center, dtype=np.float64).reshape(3)
    out = np.tile(np.eye(4), (params.shape[0], 1, 1))
    rot = rotation_matrix(params[:, 3:])
    out[:, :3, :3] = rot
    out[:, :3, 3] = params[:, :3] + c - rot @ c
    return out


def matrices_to_params(matrices: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Motion parameters from world 4 x 4 rigid matrices (inverse of
    :func:`params_to_matrices`).

    Parameters
    ----------
    matrices : ndarray of shape (n_volumes, 4, 4)
    center : ndarray of shape (3,)

    Returns
    -------
    ndarray of shape (n_volumes, 6)
    """
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] != (4, 4):
        raise ValueError(f"matrices must have shape (n, 4, 4), got {m.shape}")
    c = np.asarray(center, dtype=np.float64).reshape(3)
    rot = m[:, :3, :3]
    trans = m[:, :3, 3] - c + rot @ c
    return np.concatenate([trans, rotation_angles(rot)], axis=1)


def framewise_displacement(params: np.ndarray, radius_mm: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement.

    Parameters
    ----------
    params : ndarray of shape (n_volumes, 6)
        ``trans_*`` in mm then ``rot_*`` in radians.
    radius_mm : float
        Radius of the sphere that converts rotations to arc length (50 mm).

    Returns
    -------
    ndarray of shape (n_volumes,)
        ``sum |diff(trans)| + radius * sum |diff(rot)|``; the first value is 0.
    """
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] != 6:
        raise ValueError(f"params must have shape (n_volumes, 6), got {params.shape}")
    diff = np.abs(np.diff(params, axis=0))
    fd = diff[:, :3].sum(axis=1) + radius_mm * diff[:, 3:].sum(axis=1)
    return np.concatenate([[0.0], fd])


# --------------------------------------------------------------------------------------
# Estimation
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MotionSettings:
    """Settings of :func:`estimate_motion`.

    Attributes
    ----------
    levels : tuple of int
        Pyramid down-sampling factors, coarse to fine (1 = the original grid).
    max_iter : tuple of int
        Gauss-Newton iterations per level (same length as ``levels``).
    passes : int
        1: align to the temporal mean only; 2: then again to the mean of the
        realigned volumes (better, default).
    tol_mm : float
        Stop a level when every volume's update is below this (translation in mm plus
        rotation as arc length on a 50 mm sphere).
    chunk : int
        Volumes processed together (bounds memory; the result does not depend on it).
    mask_fraction : float
        Template voxels brighter than this fraction of its 99th percentile (then
        dilated by one voxel) may drive the fit.
    gradient_quantile : float
        Of those, only voxels whose template gradient magnitude exceeds this quantile
        drive the fit (flat voxels carry no information about motion; 0 keeps all).
    max_points : int
        At most this many driving voxels per level (the strongest gradients); the
        precision of six parameters needs far fewer than a brain's voxels.
    """

    levels: tuple[int, ...] = (4, 2, 1)
    max_iter: tuple[int, ...] = (12, 8, 6)
    passes: int = 2
    tol_mm: float = 1e-3
    chunk: int = 128
    mask_fraction: float = 0.1
    gradient_quantile: float = 0.5
    max_points: int = 12000

    def __post_init__(self) -> None:
        if not self.levels or any(int(f) < 1 for f in self.levels):
            raise ValueError(f"levels must be positive integers, got {self.levels!r}")
        if len(self.max_iter) != len(self.levels):
            raise ValueError(
                f"max_iter ({len(self.max_iter)} values) must match levels "
                f"({len(self.levels)} values)"
            )
        if self.passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {self.passes!r}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk!r}")
        if not 0.0 <= self.gradient_quantile < 1.0:
            raise ValueError(f"gradient_quantile must be in [0, 1), got {self.gradient_quantile!r}")


@dataclass(frozen=True)
class MotionResult:
    """Output of :func:`estimate_motion`.

    Attributes
    ----------
    params : ndarray of shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad).
    matrices : ndarray of shape (n_volumes, 4, 4)
        World (RAS mm) maps from the reference to each volume (module docstring).
    reference : ndarray of shape (n_x, n_y, n_z)
        The BOLD reference: mean of the realigned volumes (float32, input grid).
    center : ndarray of shape (3,)
        Rotation centre (world mm): centre of the input grid.
    diagnostics : dict
        Iterations per level and pass, final mean residual.
    """

    params: np.ndarray
    matrices: np.ndarray
    reference: np.ndarray
    center: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)


def estimate_motion(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    settings: MotionSettings | None = None,
    valid: np.ndarray | None = None,
    device: str = "cpu",
    backend: str = "auto",
) -> MotionResult:
    """Estimate rigid head motion of every volume of a run.

    Parameters
    ----------
    data : ndarray of shape (n_x, n_y, n_z, n_volumes)
        BOLD data, finite (replace non-finite values before calling).
    affine : ndarray of shape (4, 4)
        Voxel-to-world (RAS mm) affine of the data.
    settings : MotionSettings, optional
    valid : ndarray of bool, shape (n_x, n_y, n_z), optional
        Voxels that may drive the fit (e.g. without dropped-out values); default all.
    device : str
        Torch device of the torch backend.
    backend : {"auto", "numpy", "torch"}
        ``numpy`` (scipy.ndimage sampling, CPU) or ``torch`` (``grid_sample``, CPU or
        GPU); ``auto`` takes numpy on ``device="cpu"`` (no torch import: about 1.7 s
        of a CPU job) and torch on any other device. Both run the same algorithm and
        agree to float32 rounding (tests/unit/func/test_motion.py).

    Returns
    -------
    MotionResult
    """
    settings = settings or MotionSettings()
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim != 4:
        raise ValueError(f"data must be 4-D (x, y, z, t), got shape {data.shape}")
    if data.shape[3] < 2:
        raise ValueError(f"motion estimation needs at least 2 volumes, got {data.shape[3]}")
    if min(data.shape[:3]) < 4:
        raise ValueError(f"each spatial axis needs at least 4 voxels, got {data.shape[:3]}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4 x 4 matrix, got {affine!r}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError("affine is singular")
    shape = np.array(data.shape[:3])
    center = affine[:3, :3] @ ((shape - 1) / 2.0) + affine[:3, 3]
    if resolve_backend(backend, device) == "numpy":
        warps, reference, diagnostics = _estimate_numpy(data, affine, center, settings, valid)
    else:
        warps, reference, diagnostics = _estimate_torch(
            data, affine, center, settings, valid, device
        )
    matrices = _to_world(warps, center)
    params = matrices_to_params(matrices, center)
    logger.info(
        "motion: %d volumes, max |trans| %.3f mm, max |rot| %.4f rad, %s",
        data.shape[3],
        float(np.abs(params[:, :3]).max()),
        float(np.abs(params[:, 3:]).max()),
        diagnostics["iterations"],
    )
    return MotionResult(params, matrices, reference, center, diagnostics)


BACKENDS: tuple[str, ...] = ("auto", "numpy", "torch")


def resolve_backend(backend: str, device: str) -> str:
    """``numpy`` or ``torch`` for a ``backend`` of :data:`BACKENDS` on ``device``
    (``auto``: numpy on the CPU, torch elsewhere; numpy runs on the CPU only)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numpy" if str(device) == "cpu" else "torch"
    if backend == "numpy" and str(device) != "cpu":
        raise ValueError(f"the numpy backend runs on the CPU only, got device {device!r}")
    return backend


def _estimate_torch(
    data: np.ndarray,
    affine: np.ndarray,
    center: np.ndarray,
    settings: MotionSettings,
    valid: np.ndarray | None,
    device: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Centred warps, reference and diagnostics of :func:`estimate_motion` (torch)."""
    import torch

    dev = torch.device(device)
    vols = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, 3, 0), dtype=np.float32))
    vols = vols.unsqueeze(1).to(dev)  # (N, 1, X, Y, Z)
    if valid is not None:
        valid_t = torch.from_numpy(np.asarray(valid, dtype=bool)).to(dev)
    else:
        valid_t = None
    n_vol = vols.shape[0]
    warps = torch.eye(4, dtype=torch.float64, device=dev).repeat(n_vol, 1, 1)
    template = vols.mean(dim=0, keepdim=True)
    diagnostics: dict[str, Any] = {"iterations": [], "residual": None}
    pyramids = {f: _pool(vols, f) for f in settings.levels}
    for pass_index in range(settings.passes):
        schedule = list(zip(settings.levels, settings.max_iter, strict=True))
        if pass_index > 0 and len(schedule) > 1:
            schedule = schedule[1:]  # warm start: the coarsest level adds nothing
        for factor, n_iter in schedule:
            level_affine = _level_affine(affine, factor)
            tmpl = _pool(template, factor)[0, 0]
            mask = None if valid_t is None else _pool_mask(valid_t, factor)
            warps, used, resid = _align_level(
                pyramids[factor], tmpl, level_affine, center, warps, n_iter, settings, mask
            )
            diagnostics["iterations"].append(
                {"pass": pass_index + 1, "level": factor, "iterations": used}
            )
            diagnostics["residual"] = resid
        template = _resample_mean(vols, affine, center, warps, settings.chunk)
    reference = template[0, 0].cpu().numpy().astype(np.float32)
    return warps.cpu().numpy(), reference, diagnostics


def _to_world(warps: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Centred warps (template-centred -> volume-centred coordinates) to world maps."""
    shift = np.eye(4)
    shift[:3, 3] = center
    unshift = np.eye(4)
    unshift[:3, 3] = -center
    return shift @ warps @ unshift


def _level_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of a grid pooled by ``factor`` (voxel i' covers voxels f i' .. f i' + f-1)."""
    scale = np.diag([factor, factor, factor, 1.0]).astype(np.float64)
    scale[:3, 3] = (factor - 1) / 2.0
    return affine @ scale


def _pool(x: Any, factor: int) -> Any:
    import torch.nn.functional as F

    if factor == 1:
        return x
    return F.avg_pool3d(x, kernel_size=factor, stride=factor, ceil_mode=False)


def _pool_mask(mask: Any, factor: int) -> Any:
    import torch.nn.functional as F

    m = mask[None, None].float()
    if factor > 1:
        m = F.avg_pool3d(m, kernel_size=factor, stride=factor, ceil_mode=False)
    return m[0, 0] > 0.999


def _gradient(t: Any) -> Any:
    """Central-difference gradient of a 3-D tensor (voxel units), shape (3, X, Y, Z)."""
    import torch

    grads = []
    for axis in range(3):
        g = torch.zeros_like(t)
        sl_c = [slice(None)] * 3
        sl_p = [slice(None)] * 3
        sl_m = [slice(None)] * 3
        sl_c[axis] = slice(1, -1)
        sl_p[axis] = slice(2, None)
        sl_m[axis] = slice(None, -2)
        g[tuple(sl_c)] = (t[tuple(sl_p)] - t[tuple(sl_m)]) / 2.0
        grads.append(g)
    return torch.stack(grads)


def _small_rigid(delta: Any) -> Any:
    """4 x 4 matrices from (N, 6) updates (translation, rotation vector), float64."""
    import torch

    t, w = delta[:, :3], delta[:, 3:]
    theta = torch.linalg.norm(w, dim=1, keepdim=True).clamp_min(1e-12)
    k = w / theta
    kx = torch.zeros(delta.shape[0], 3, 3, dtype=delta.dtype, device=delta.device)
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s = torch.sin(theta)[:, :, None]
    c = torch.cos(theta)[:, :, None]
    eye = torch.eye(3, dtype=delta.dtype, device=delta.device)
    rot = eye + s * kx + (1 - c) * (kx @ kx)
    out = torch.eye(4, dtype=delta.dtype, device=delta.device).repeat(delta.shape[0], 1, 1)
    out[:, :3, :3] = rot
    out[:, :3, 3] = t
    return out


def _normalizer(shape: Sequence[int]) -> np.ndarray:
    """4 x 4 map from voxel indices (i, j, k) to grid_sample coordinates (z, y, x) in [-1, 1]."""
    out = np.zeros((4, 4))
    for row, axis in enumerate((2, 1, 0)):
        out[row, axis] = 2.0 / (shape[axis] - 1)
        out[row, 3] = -1.0
    out[3, 3] = 1.0
    return out


def inside_grid(grid: Any, tol: float) -> Any:
    """Whether every coordinate of each point of ``grid`` (..., 3) lies in [-1 - tol, 1 + tol]
    (grid_sample coordinates; six comparisons on the coordinate views: no copy of the
    grid as abs() would make, and about twice as fast as a min/max over the last axis).
    Returned contiguous: the result of elementwise operations keeps the memory order of a
    non-contiguous grid (einsum's), and a transposed mask would send the matrix products
    it weights down another BLAS path, changing their rounding."""
    high, low = 1.0 + tol, -1.0 - tol
    x, y, z = grid.unbind(-1)
    inside = (x <= high) & (x >= low) & (y <= high) & (y >= low) & (z <= high) & (z >= low)
    return inside.contiguous()


def _sample(vols: Any, grid: Any) -> tuple[Any, Any]:
    """Trilinear samples of ``vols`` (n, 1, X, Y, Z) at grid coordinates (n, P, 3).

    ``grid`` holds grid_sample coordinates (z, y, x order, [-1, 1] spans the grid).
    Returns the samples (n, P) and a validity mask (n, P) (inside the grid).
    """
    return _trilinear(vols, grid), inside_grid(grid, 1e-6)


def _trilinear(vols: Any, grid: Any) -> Any:
    """The samples (n, P) of :func:`_sample` alone (no inside-the-grid test)."""
    import torch.nn.functional as F

    values = F.grid_sample(
        vols, grid[:, None, None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return values[:, 0, 0, 0, :]


def _align_level(
    vols: Any,
    template: Any,
    affine: np.ndarray,
    center: np.ndarray,
    warps: Any,
    n_iter: int,
    settings: MotionSettings,
    valid: Any | None,
) -> tuple[Any, int, float]:
    """Inverse-compositional Gauss-Newton at one pyramid level; returns new warps."""
    import torch

    dev = vols.device
    # Driving points: bright template voxels (dilated), away from the grid border.
    thr = settings.mask_fraction * torch.quantile(template.flatten()[::7].float(), 0.99)
    mask = template > thr
    mask = torch.nn.functional.max_pool3d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0
    border = torch.zeros_like(mask)
    border[1:-1, 1:-1, 1:-1] = True
    mask &= border
    if valid is not None:
        mask &= valid
    grad_all = _gradient(template.double())
    if settings.gradient_quantile > 0:
        magnitude = grad_all.norm(dim=0)
        cut = torch.quantile(magnitude[mask].float()[::3], settings.gradient_quantile)
        mask &= magnitude > cut
    if int(mask.sum()) > settings.max_points:
        magnitude = grad_all.norm(dim=0)
        cut = torch.topk(magnitude[mask].float(), settings.max_points).values[-1]
        mask &= magnitude >= cut
    idx = torch.nonzero(mask)  # (P, 3) voxel indices
    if idx.shape[0] < 50:
        raise ValueError(
            f"motion estimation: only {idx.shape[0]} usable voxels at pyramid level "
            "(empty or constant images?)"
        )
    a64 = torch.from_numpy(affine).to(dev)
    c64 = torch.from_numpy(np.asarray(center, dtype=np.float64)).to(dev)
    ijk1 = torch.cat(
        [idx.double(), torch.ones(idx.shape[0], 1, dtype=torch.float64, device=dev)], 1
    )
    pts = (ijk1 @ a64.T)[:, :3] - c64  # centred world coordinates (P, 3)
    grad_vox = grad_all[:, mask].T  # (P, 3)
    grad = grad_vox @ torch.linalg.inv(a64[:3, :3])  # world gradient: inv(A)^T g
    tvals = template.double()[mask]  # (P,)
    sd = torch.cat([grad, torch.linalg.cross(pts, grad, dim=1)], dim=1)  # (P, 6)
    outer = (sd[:, :, None] * sd[:, None, :]).reshape(-1, 36)  # (P, 36)
    to_grid = torch.from_numpy(_normalizer(template.shape)).to(dev) @ torch.linalg.inv(a64)
    shift = torch.eye(4, dtype=torch.float64, device=dev)
    shift[:3, 3] = c64
    pts_h = torch.cat([pts, torch.ones(pts.shape[0], 1, dtype=torch.float64, device=dev)], 1)
    scale = torch.tensor([1, 1, 1, 50, 50, 50], dtype=torch.float64, device=dev)
    warps = warps.clone()
    sd32, outer32, t32 = sd.float(), outer.float(), tvals.float()
    pts_h32 = pts_h.float()
    t_stack = torch.stack([torch.ones_like(t32), t32, t32 * t32], dim=1)  # (P, 3)
    ridge = 1e-9 * torch.eye(6, dtype=torch.float64, device=dev)
    active = torch.arange(vols.shape[0], device=dev)
    used = 0
    resid = torch.zeros(vols.shape[0], dtype=torch.float64, device=dev)
    for it in range(n_iter):
        used = it + 1
        deltas = []
        for start in range(0, active.numel(), settings.chunk):
            sel = active[start : start + settings.chunk]
            to_vox = to_grid @ shift @ warps[sel]  # (n, 4, 4)
            coords = torch.einsum("pk,nqk->npq", pts_h32, to_vox[:, :3, :].float())
            values, inside = _sample(vols[sel], coords)
            w = inside.float()
            wv = w * values
            # Photometric fit per volume, values ~ gain * T + offset, from sums.
            s_w, s_t, s_tt = (w @ t_stack).double().unbind(1)
            s_v = wv.sum(1).double()
            s_vt = (wv @ t32).double()
            s_w = s_w.clamp_min(1.0)
            mt, mv = s_t / s_w, s_v / s_w
            var = (s_tt - s_w * mt * mt).clamp_min(1e-12)
            gain = ((s_vt - s_w * mt * mv) / var).clamp_min(1e-3)
            inv_gain = (1.0 / gain).float()[:, None]
            offset = (mt - mv / gain).float()[:, None]
            err = (values * inv_gain + offset - t32[None, :]) * w
            resid[sel] = ((err * err).sum(1) / s_w.float()).double()
            hess = (w @ outer32).double().reshape(-1, 6, 6)
            rhs = (err @ sd32).double()
            scale_h = hess.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)[:, None, None]
            deltas.append(torch.linalg.solve(hess + ridge * scale_h, rhs[:, :, None])[:, :, 0])
        delta = torch.cat(deltas)
        warps[active] = warps[active] @ torch.linalg.inv(_small_rigid(delta))
        moving = (delta.abs() * scale).sum(1) >= settings.tol_mm
        active = active[moving]
        if active.numel() == 0:
            break
    return warps, used, float(resid.mean())


def _resample_mean(
    vols: Any, affine: np.ndarray, center: np.ndarray, warps: Any, chunk: int
) -> Any:
    """Mean of all volumes realigned to the template grid (1, 1, X, Y, Z)."""
    import torch

    dev = vols.device
    shape = vols.shape[2:]
    grid = torch.stack(
        torch.meshgrid(
            *[torch.arange(n, dtype=torch.float64, device=dev) for n in shape], indexing="ij"
        ),
        dim=-1,
    ).reshape(-1, 3)
    a64 = torch.from_numpy(affine).to(dev)
    c64 = torch.from_numpy(np.asarray(center, dtype=np.float64)).to(dev)
    shift = torch.eye(4, dtype=torch.float64, device=dev)
    shift[:3, 3] = c64
    unshift = torch.eye(4, dtype=torch.float64, device=dev)
    unshift[:3, 3] = -c64
    pts_h = torch.cat([grid, torch.ones(grid.shape[0], 1, dtype=torch.float64, device=dev)], 1)
    to_grid = torch.from_numpy(_normalizer(shape)).to(dev) @ torch.linalg.inv(a64)
    total = torch.zeros(grid.shape[0], dtype=torch.float64, device=dev)
    pts32 = pts_h.float()
    for start in range(0, vols.shape[0], chunk):
        stop = min(vols.shape[0], start + chunk)
        to_vox = to_grid @ shift @ warps[start:stop] @ unshift @ a64  # template voxel -> grid
        coords = pts32 @ to_vox[:, :3, :].transpose(1, 2).float()
        values = _trilinear(vols[start:stop], coords)
        total += values.double().sum(0)
    return (total / vols.shape[0]).float().reshape(1, 1, *shape)


# --------------------------------------------------------------------------------------
# numpy backend: the same algorithm, sampled with scipy.ndimage (CPU, no torch import)
# --------------------------------------------------------------------------------------
def _estimate_numpy(
    data: np.ndarray,
    affine: np.ndarray,
    center: np.ndarray,
    settings: MotionSettings,
    valid: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Centred warps, reference and diagnostics of :func:`estimate_motion` (numpy twin of
    :func:`_estimate_torch`: same pyramid, driving points, photometric fit and updates;
    trilinear samples from ``scipy.ndimage`` at float64 coordinates)."""
    vols = np.ascontiguousarray(np.moveaxis(data, 3, 0), dtype=np.float32)  # (N, X, Y, Z)
    valid_b = None if valid is None else np.asarray(valid, dtype=bool)
    warps = np.tile(np.eye(4), (vols.shape[0], 1, 1))
    template = vols.mean(axis=0, dtype=np.float64).astype(np.float32)
    diagnostics: dict[str, Any] = {"iterations": [], "residual": None}
    pyramids = {f: _pool_np(vols, f) for f in settings.levels}
    for pass_index in range(settings.passes):
        schedule = list(zip(settings.levels, settings.max_iter, strict=True))
        if pass_index > 0 and len(schedule) > 1:
            schedule = schedule[1:]  # warm start: the coarsest level adds nothing
        for factor, n_iter in schedule:
            level_affine = _level_affine(affine, factor)
            tmpl = _pool_np(template[None], factor)[0]
            mask = None if valid_b is None else _pool_mask_np(valid_b, factor)
            warps, used, resid = _align_level_np(
                pyramids[factor], tmpl, level_affine, center, warps, n_iter, settings, mask
            )
            diagnostics["iterations"].append(
                {"pass": pass_index + 1, "level": factor, "iterations": used}
            )
            diagnostics["residual"] = resid
        template = _resample_mean_np(vols, affine, center, warps)
    return warps, template, diagnostics


def _pool_np(x: np.ndarray, factor: int) -> np.ndarray:
    """Block means of (n, X, Y, Z) over ``factor``-cubes (a partial block is dropped)."""
    if factor == 1:
        return x
    n, *shape = x.shape
    m = [s // factor for s in shape]
    blocks = x[:, : m[0] * factor, : m[1] * factor, : m[2] * factor].reshape(
        n, m[0], factor, m[1], factor, m[2], factor
    )
    return blocks.mean(axis=(2, 4, 6), dtype=np.float64).astype(np.float32)


def _pool_mask_np(mask: np.ndarray, factor: int) -> np.ndarray:
    """Blocks of ``mask`` that are valid throughout."""
    if factor == 1:
        return mask
    m = [s // factor for s in mask.shape]
    blocks = mask[: m[0] * factor, : m[1] * factor, : m[2] * factor].reshape(
        m[0], factor, m[1], factor, m[2], factor
    )
    return blocks.all(axis=(1, 3, 5))


def _dilate_np(mask: np.ndarray) -> np.ndarray:
    """Dilation by the 3 x 3 x 3 cube (outside the grid counts as False)."""
    out = mask
    for axis in range(3):
        pad = [(0, 0)] * 3
        pad[axis] = (1, 1)
        p = np.pad(out, pad)
        lo = [slice(None)] * 3
        mid = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], mid[axis], hi[axis] = slice(None, -2), slice(1, -1), slice(2, None)
        out = p[tuple(lo)] | p[tuple(mid)] | p[tuple(hi)]
    return out


def _gradient_np(t: np.ndarray) -> np.ndarray:
    """Central-difference gradient (voxel units, zero on the border), shape (3, X, Y, Z)."""
    grads = np.zeros((3, *t.shape), dtype=t.dtype)
    for axis in range(3):
        sl_c = [slice(None)] * 3
        sl_p = [slice(None)] * 3
        sl_m = [slice(None)] * 3
        sl_c[axis] = slice(1, -1)
        sl_p[axis] = slice(2, None)
        sl_m[axis] = slice(None, -2)
        grads[axis][tuple(sl_c)] = (t[tuple(sl_p)] - t[tuple(sl_m)]) / 2.0
    return grads


def _small_rigid_np(delta: np.ndarray) -> np.ndarray:
    """4 x 4 matrices from (N, 6) updates (translation, rotation vector), float64."""
    t, w = delta[:, :3], delta[:, 3:]
    theta = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    k = w / theta
    kx = np.zeros((delta.shape[0], 3, 3))
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2], k[:, 1]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2], -k[:, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1], k[:, 0]
    s = np.sin(theta)[:, :, None]
    c = np.cos(theta)[:, :, None]
    out = np.tile(np.eye(4), (delta.shape[0], 1, 1))
    out[:, :3, :3] = np.eye(3) + s * kx + (1 - c) * (kx @ kx)
    out[:, :3, 3] = t
    return out


def inside_voxels(coords: np.ndarray, shape: Sequence[int], tol: float) -> np.ndarray:
    """Whether points (n, 3, P) in voxel coordinates lie in the grid of ``shape``, with
    ``tol`` in grid_sample units (the numpy twin of :func:`inside_grid`: a tolerance of
    ``tol`` there is ``tol * (size - 1) / 2`` voxels along an axis of ``size``)."""
    inside = np.ones((coords.shape[0], coords.shape[2]), dtype=bool)
    for axis, size in enumerate(shape):
        slack = tol * (size - 1) / 2.0
        x = coords[:, axis, :]
        inside &= (x >= -slack) & (x <= size - 1 + slack)
    return inside


def sample_volumes(
    vols: np.ndarray, coords: np.ndarray, *, mode: str = "nearest", out: np.ndarray | None = None
) -> np.ndarray:
    """Trilinear samples of each volume at its own points (scipy.ndimage).

    The numpy twin of ``grid_sample(mode="bilinear", align_corners=True)``: ``mode``
    ``"nearest"`` is its ``padding_mode="border"``, ``"grid-constant"`` (zero outside)
    its ``"zeros"``.

    Parameters
    ----------
    vols : ndarray of shape (n, X, Y, Z)
    coords : ndarray of shape (n, 3, P)
        Voxel coordinates of the points at which each volume is sampled.
    mode : str
    out : ndarray of shape (n, P), optional
        float32 output (allocated when absent).

    Returns
    -------
    ndarray of shape (n, P), float32
    """
    from scipy import ndimage as ndi

    if out is None:
        out = np.empty((coords.shape[0], coords.shape[2]), dtype=np.float32)
    for v in range(coords.shape[0]):
        ndi.map_coordinates(
            vols[v], coords[v], output=out[v], order=1, mode=mode, cval=0.0, prefilter=False
        )
    return out


def _align_level_np(
    vols: np.ndarray,
    template: np.ndarray,
    affine: np.ndarray,
    center: np.ndarray,
    warps: np.ndarray,
    n_iter: int,
    settings: MotionSettings,
    valid: np.ndarray | None,
) -> tuple[np.ndarray, int, float]:
    """Numpy twin of :func:`_align_level`."""
    # Driving points: bright template voxels (dilated), away from the grid border.
    thr = settings.mask_fraction * np.quantile(template.ravel()[::7], 0.99)
    mask = _dilate_np(template > thr)
    border = np.zeros_like(mask)
    border[1:-1, 1:-1, 1:-1] = True
    mask &= border
    if valid is not None:
        mask &= valid
    grad_all = _gradient_np(template.astype(np.float64))
    if settings.gradient_quantile > 0:
        magnitude = np.sqrt((grad_all * grad_all).sum(axis=0))
        cut = np.quantile(magnitude[mask].astype(np.float32)[::3], settings.gradient_quantile)
        mask &= magnitude > cut
    if int(mask.sum()) > settings.max_points:
        magnitude = np.sqrt((grad_all * grad_all).sum(axis=0))
        strength = magnitude[mask].astype(np.float32)
        kth = strength.size - settings.max_points
        mask &= magnitude >= np.partition(strength, kth)[kth]
    idx = np.argwhere(mask)  # (P, 3) voxel indices
    if idx.shape[0] < 50:
        raise ValueError(
            f"motion estimation: only {idx.shape[0]} usable voxels at pyramid level "
            "(empty or constant images?)"
        )
    c64 = np.asarray(center, dtype=np.float64)
    ijk1 = np.concatenate([idx.astype(np.float64), np.ones((idx.shape[0], 1))], 1)
    pts = (ijk1 @ affine.T)[:, :3] - c64  # centred world coordinates (P, 3)
    grad = grad_all[:, mask].T @ np.linalg.inv(affine[:3, :3])  # world gradient
    tvals = template.astype(np.float64)[mask]
    sd = np.concatenate([grad, np.cross(pts, grad)], axis=1)  # (P, 6)
    outer = (sd[:, :, None] * sd[:, None, :]).reshape(-1, 36)
    shift = np.eye(4)
    shift[:3, 3] = c64
    to_vox = np.linalg.inv(affine) @ shift  # centred world -> voxel of the level
    pts_h = np.concatenate([pts, np.ones((pts.shape[0], 1))], 1)
    scale = np.array([1, 1, 1, 50, 50, 50], dtype=np.float64)
    warps = warps.copy()
    sd32, outer32, t32 = sd.astype(np.float32), outer.astype(np.float32), tvals.astype(np.float32)
    t_stack = np.stack([np.ones_like(t32), t32, t32 * t32], axis=1)  # (P, 3)
    ridge = 1e-9 * np.eye(6)
    shape = template.shape
    active = np.arange(vols.shape[0])
    used = 0
    resid = np.zeros(vols.shape[0])
    for it in range(n_iter):
        used = it + 1
        deltas = []
        for start in range(0, active.size, settings.chunk):
            sel = active[start : start + settings.chunk]
            coords = (to_vox @ warps[sel])[:, :3, :] @ pts_h.T  # (n, 3, P) voxel coords
            values = sample_volumes(vols[sel], coords)
            w = inside_voxels(coords, shape, 1e-6).astype(np.float32)
            wv = w * values
            # Photometric fit per volume, values ~ gain * T + offset, from sums.
            s_w, s_t, s_tt = (w @ t_stack).astype(np.float64).T
            s_v = wv.sum(axis=1, dtype=np.float64)
            s_vt = (wv @ t32).astype(np.float64)
            s_w = np.maximum(s_w, 1.0)
            mt, mv = s_t / s_w, s_v / s_w
            var = np.maximum(s_tt - s_w * mt * mt, 1e-12)
            gain = np.maximum((s_vt - s_w * mt * mv) / var, 1e-3)
            inv_gain = (1.0 / gain).astype(np.float32)[:, None]
            offset = (mt - mv / gain).astype(np.float32)[:, None]
            err = (values * inv_gain + offset - t32[None, :]) * w
            resid[sel] = (err * err).sum(axis=1, dtype=np.float64) / s_w
            hess = (w @ outer32).astype(np.float64).reshape(-1, 6, 6)
            rhs = (err @ sd32).astype(np.float64)
            scale_h = np.maximum(hess.diagonal(axis1=1, axis2=2).mean(axis=1), 1e-12)
            deltas.append(
                np.linalg.solve(hess + ridge * scale_h[:, None, None], rhs[:, :, None])[:, :, 0]
            )
        delta = np.concatenate(deltas)
        warps[active] = warps[active] @ np.linalg.inv(_small_rigid_np(delta))
        moving = (np.abs(delta) * scale).sum(axis=1) >= settings.tol_mm
        active = active[moving]
        if active.size == 0:
            break
    return warps, used, float(resid.mean())


def _resample_mean_np(
    vols: np.ndarray, affine: np.ndarray, center: np.ndarray, warps: np.ndarray
) -> np.ndarray:
    """Mean of all volumes realigned to the template grid (X, Y, Z), float32."""
    from scipy import ndimage as ndi

    shift = np.eye(4)
    shift[:3, 3] = center
    unshift = np.eye(4)
    unshift[:3, 3] = -np.asarray(center, dtype=np.float64)
    maps = np.linalg.inv(affine) @ shift @ warps @ unshift @ affine  # template -> volume voxel
    total = np.zeros(vols.shape[1:])
    out = np.empty(vols.shape[1:], dtype=np.float32)
    for v in range(vols.shape[0]):
        ndi.affine_transform(
            vols[v],
            maps[v, :3, :3],
            offset=maps[v, :3, 3],
            output=out,
            order=1,
            mode="nearest",
            prefilter=False,
        )
        total += out
    return (total / vols.shape[0]).astype(np.float32)


def apply_motion(
    data: np.ndarray,
    affine: np.ndarray,
    matrices: np.ndarray,
    *,
    device: str = "cpu",
    backend: str = "auto",
) -> np.ndarray:
    """Realign every volume onto the reference grid (trilinear), for checks and figures.

    Parameters
    ----------
    data : ndarray of shape (n_x, n_y, n_z, n_volumes)
    affine : ndarray of shape (4, 4)
    matrices : ndarray of shape (n_volumes, 4, 4)
        World maps reference -> volume (:class:`MotionResult`).
    device : str
    backend : {"auto", "numpy", "torch"}
        As in :func:`estimate_motion`.

    Returns
    -------
    ndarray of shape (n_x, n_y, n_z, n_volumes), float32
    """
    data = np.asarray(data)
    matrices = np.asarray(matrices, dtype=np.float64)
    if data.ndim != 4 or matrices.shape != (data.shape[3], 4, 4):
        raise ValueError(
            f"data {data.shape} and matrices {matrices.shape} do not match "
            "(expected (x, y, z, n) and (n, 4, 4))"
        )
    if resolve_backend(backend, device) == "numpy":
        from scipy import ndimage as ndi

        maps = np.linalg.inv(affine) @ matrices @ affine  # reference voxel -> volume voxel
        out = np.empty(data.shape, dtype=np.float32)
        for v in range(data.shape[3]):
            out[..., v] = ndi.affine_transform(
                np.asarray(data[..., v], dtype=np.float32),
                maps[v, :3, :3],
                offset=maps[v, :3, 3],
                order=1,
                mode="nearest",
                prefilter=False,
            )
        return out
    import torch

    vols = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, 3, 0), dtype=np.float32))
    vols = vols.unsqueeze(1).to(device)
    shape = data.shape[:3]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    pts_h = np.concatenate([grid.reshape(-1, 3), np.ones((grid[..., 0].size, 1))], 1)
    to_grid = _normalizer(shape) @ np.linalg.inv(affine)
    out = np.empty((data.shape[3], int(np.prod(shape))), dtype=np.float32)
    pts_t = torch.from_numpy(pts_h.astype(np.float32)).to(device)
    for start in range(0, data.shape[3], 64):
        stop = min(data.shape[3], start + 64)
        to_vox = torch.from_numpy((to_grid @ matrices[start:stop] @ affine).astype(np.float32))
        to_vox = to_vox.to(device)
        vox = pts_t @ to_vox[:, :3, :].transpose(1, 2)
        out[start:stop] = _trilinear(vols[start:stop], vox).cpu().numpy()
    return np.moveaxis(out.reshape(data.shape[3], *shape), 0, 3)
