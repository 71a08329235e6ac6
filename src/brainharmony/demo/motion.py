"""Head motion during a BOLD run and the subject's head pose in the scanner.

Convention (also written to each truth folder's README):

* Parameters ``trans_x, trans_y, trans_z`` (mm) and ``rot_x, rot_y, rot_z`` (rad), as
  fMRIPrep names its confound columns, describe the rigid transform ``M_v`` that takes
  the head from its position at the run's reference (volume 0, where all six are 0) to
  its position during volume ``v``, in scanner world coordinates (RAS+ mm):
  ``x_v = R (x_0 - c) + c + t`` with ``R = Rx(rot_x) Ry(rot_y) Rz(rot_z)``
  (right-handed rotations about the world axes) and ``c`` the centre of the BOLD field
  of view. Registration tools (MCFLIRT, ANTs, SimpleITK) report the inverse
  direction (the transform that brings volume ``v`` back onto the reference), so
  their signs may differ; framewise displacement is the same either way for small
  motion.
* Framewise displacement (Power et al. 2012): ``sum |diff(trans)| + 50 mm *
  sum |diff(rot)|``, 0 for the first volume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from brainharmony.demo.acquisition import rigid_matrix

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class MotionLevel:
    """Motion statistics of one class of subjects.

    Attributes
    ----------
    walk_mm, walk_rad : float
        SD of the random-walk step per sqrt(second) (translation mm, rotation rad).
    spike_rate : float
        Expected spikes per minute.
    spike_mm : tuple of 2 float
        Range of a spike's size (mm of displacement at 50 mm for rotations).
    """

    walk_mm: float
    walk_rad: float
    spike_rate: float
    spike_mm: tuple[float, float]


MOTION_LEVELS: dict[str, MotionLevel] = {
    "clean": MotionLevel(0.01, 0.00015, 0.0, (0.0, 0.0)),
    "moderate": MotionLevel(0.03, 0.0005, 0.4, (0.3, 0.7)),
    "high": MotionLevel(0.04, 0.0007, 3.0, (0.6, 2.0)),
}


def framewise_displacement(params: np.ndarray, radius_mm: float = 50.0) -> np.ndarray:
    """Power's framewise displacement.

    Parameters
    ----------
    params : ndarray of shape (n_volumes, 6)
        Translations (mm) then rotations (rad).

    Returns
    -------
    ndarray of shape (n_volumes,)
        0 for the first volume.
    """
    p = np.asarray(params, dtype=float)
    if p.ndim != 2 or p.shape[1] != 6:
        raise ValueError(f"params must have shape (n_volumes, 6), got {p.shape}")
    d = np.abs(np.diff(p, axis=0))
    fd = d[:, :3].sum(1) + radius_mm * d[:, 3:].sum(1)
    return np.r_[0.0, fd]


def simulate_motion(n_volumes: int, tr: float, level: str, rng: np.random.Generator) -> np.ndarray:
    """Per-volume rigid motion parameters of one run.

    A slow random walk (Gaussian steps scaled by ``sqrt(tr)``) plus, for the
    ``moderate`` and ``high`` levels, spikes: abrupt displacements at random volumes
    that either persist (a shift) or decay back over 1-3 volumes (a jerk).

    Parameters
    ----------
    n_volumes : int
    tr : float
        Seconds per volume.
    level : str
        A key of :data:`MOTION_LEVELS`.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad); the first
        row is zero.
    """
    if level not in MOTION_LEVELS:
        raise ValueError(f"level must be one of {sorted(MOTION_LEVELS)}, got {level!r}")
    spec = MOTION_LEVELS[level]
    step = np.sqrt(tr)
    # Pitch (rot_x) and z translation dominate in real data (nodding on the pillow).
    trans_scale = np.array([0.6, 1.0, 1.4])
    rot_scale = np.array([1.5, 0.7, 0.7])
    walk = np.zeros((n_volumes, 6))
    walk[:, :3] = spec.walk_mm * step * trans_scale * rng.standard_normal((n_volumes, 3))
    walk[:, 3:] = spec.walk_rad * step * rot_scale * rng.standard_normal((n_volumes, 3))
    walk[0] = 0.0
    params = np.cumsum(walk, axis=0)
    n_spikes = rng.poisson(spec.spike_rate * n_volumes * tr / 60.0)
    if n_spikes:
        onsets = np.sort(rng.choice(np.arange(2, n_volumes), size=n_spikes, replace=False))
        for onset in onsets:
            size = rng.uniform(*spec.spike_mm)
            direction = rng.standard_normal(6) * np.r_[trans_scale, rot_scale]
            direction[3:] /= 50.0  # rotations: mm at 50 mm -> rad
            direction *= size / (np.abs(direction[:3]).sum() + 50 * np.abs(direction[3:]).sum())
            profile = np.zeros(n_volumes)
            if rng.uniform() < 0.5:  # persisting shift
                profile[onset:] = 1.0
            else:  # jerk that decays back
                decay = rng.integers(1, 4)
                tail = np.exp(-np.arange(n_volumes - onset) / decay)
                profile[onset:] = tail
            params += profile[:, None] * direction[None, :]
    params -= params[0]
    return params


def motion_matrices(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """World-to-world transforms ``M_v`` (reference head position -> volume ``v``).

    Returns
    -------
    ndarray of shape (n_volumes, 4, 4)
    """
    return rigid_matrix(np.atleast_2d(params), center)


@dataclass(frozen=True)
class PoseModel:
    """Random head pose in the scanner (MNI -> scanner world).

    The subject's head (the template anatomy) is rotated by up to ``max_rot_deg``
    about each axis and placed so that MNI point ``head_center_mni`` lands near the
    scanner isocentre, within ``max_shift_mm`` per axis.
    """

    max_rot_deg: tuple[float, float, float] = (10.0, 5.0, 6.0)
    max_shift_mm: tuple[float, float, float] = (6.0, 8.0, 8.0)
    head_center_mni: tuple[float, float, float] = (0.0, -18.0, 10.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_pose(rng: np.random.Generator, model: PoseModel | None = None) -> np.ndarray:
    """A random rigid head pose.

    Returns
    -------
    ndarray of shape (4, 4)
        ``P`` with ``x_scanner = P @ x_mni`` (homogeneous, mm).
    """
    model = model or PoseModel()
    rot = np.deg2rad(np.asarray(model.max_rot_deg)) * rng.uniform(-1, 1, 3)
    shift = np.asarray(model.max_shift_mm) * rng.uniform(-1, 1, 3)
    pose = rigid_matrix(np.r_[np.zeros(3), rot])
    pose[:3, 3] = shift - pose[:3, :3] @ np.asarray(model.head_center_mni)
    return pose


def small_reposition(rng: np.random.Generator, mm: float = 1.0, deg: float = 1.0) -> np.ndarray:
    """A small rigid change of pose (e.g. between two runs of one session).

    Returns
    -------
    ndarray of shape (4, 4)
    """
    params = np.r_[mm * rng.uniform(-1, 1, 3), np.deg2rad(deg) * rng.uniform(-1, 1, 3)]
    return rigid_matrix(params)
