"""Acquisition protocols of the demo datasets: grids, orientations, slice timing.

World coordinates are NIfTI RAS+ millimetres (x to the right, y anterior, z superior).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

_AXES = {
    "R": (1.0, 0.0, 0.0),
    "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0),
    "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class DatasetSpec:
    """Protocol and size of one demo dataset.

    Attributes
    ----------
    name : str
        Dataset folder name (``demoA``...).
    tr : float
        BOLD repetition time (s).
    n_subjects, n_volumes : int
        Participants and BOLD volumes per run.
    bold_voxel_mm, bold_shape : tuple of 3
        BOLD voxel size (mm) and grid shape; slices are along the third axis.
    bold_orientation : str
        Axis codes of the stored BOLD array (e.g. ``"LAS"``: i to the left, j
        anterior, k superior).
    multiband : int
        Simultaneous-multislice factor (1: none); ``bold_shape[2]`` is divisible by it.
    slice_order : str
        ``"interleaved"`` (Siemens style) or ``"ascending"`` order of the excitations.
    oblique : bool
        Tilt the BOLD slab about x to follow the head's pitch (an oblique affine).
    t1_voxel_mm, t1_shape : tuple of 3
        T1w voxel size (mm) and grid shape.
    t1_orientation : str
        Axis codes of the stored T1w array.
    second_session_fraction : float
        Fraction of subjects scanned twice (``ses-1``/``ses-2``); > 0 makes the
        dataset use session folders for everyone.
    second_run_fraction : float
        Fraction of subjects with two BOLD runs (``run-1``/``run-2``); > 0 gives
        every BOLD file a run entity.
    echo_time : float
        BOLD echo time (s).
    phase_encoding : str
        BIDS ``PhaseEncodingDirection`` of the BOLD.
    """

    name: str
    tr: float
    n_subjects: int
    n_volumes: int
    bold_voxel_mm: tuple[float, float, float]
    bold_shape: tuple[int, int, int]
    bold_orientation: str
    multiband: int
    slice_order: str
    oblique: bool
    t1_voxel_mm: tuple[float, float, float]
    t1_shape: tuple[int, int, int]
    t1_orientation: str
    second_session_fraction: float = 0.0
    second_run_fraction: float = 0.0
    echo_time: float = 0.03
    phase_encoding: str = "j-"

    def __post_init__(self) -> None:
        if self.tr <= 0:
            raise ValueError(f"{self.name}: tr must be > 0, got {self.tr}")
        if self.n_subjects < 2 or self.n_volumes < 10:
            raise ValueError(f"{self.name}: need >= 2 subjects and >= 10 volumes")
        if self.bold_shape[2] % self.multiband:
            raise ValueError(
                f"{self.name}: {self.bold_shape[2]} slices not divisible by multiband "
                f"{self.multiband}"
            )
        if self.slice_order not in ("interleaved", "ascending"):
            raise ValueError(f"{self.name}: slice_order must be interleaved or ascending")
        for code in (self.bold_orientation, self.t1_orientation):
            check_orientation(code)

    @property
    def uses_sessions(self) -> bool:
        return self.second_session_fraction > 0

    @property
    def uses_runs(self) -> bool:
        return self.second_run_fraction > 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_orientation(code: str) -> None:
    """Raise ValueError unless ``code`` names three distinct anatomical axes."""
    if len(code) != 3 or any(c not in _AXES for c in code):
        raise ValueError(f"orientation must be 3 letters from RLAPSI, got {code!r}")
    if len({int(np.flatnonzero(_AXES[c])[0]) for c in code}) != 3:
        raise ValueError(f"orientation {code!r} repeats an axis")


def oriented_affine(
    orientation: str,
    voxel_mm: tuple[float, float, float],
    shape: tuple[int, int, int],
    center_world: np.ndarray,
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel-to-world affine of a grid stored with ``orientation`` axis codes.

    Parameters
    ----------
    orientation : str
        E.g. ``"LPS"``: the first index grows to the left, the second posterior,
        the third superior (before ``rotation``).
    voxel_mm : tuple of 3 float
    shape : tuple of 3 int
    center_world : ndarray of shape (3,)
        World position (mm) of the grid centre ``(shape - 1) / 2``.
    rotation : ndarray of shape (3, 3), optional
        Rotation applied to the axes (an oblique slab).

    Returns
    -------
    ndarray of shape (4, 4)
    """
    check_orientation(orientation)
    m = np.column_stack(
        [np.asarray(_AXES[c]) * v for c, v in zip(orientation, voxel_mm, strict=True)]
    )
    if rotation is not None:
        m = rotation @ m
    affine = np.eye(4)
    affine[:3, :3] = m
    center_idx = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_world, dtype=float) - m @ center_idx
    return affine


def slice_timing(n_slices: int, tr: float, multiband: int, order: str) -> np.ndarray:
    """Acquisition offset of each slice (s from the volume onset), BIDS ``SliceTiming``.

    Slices ``k`` and ``k + n_slices / multiband`` ... are excited together. The
    excitations follow ``order``: ``"ascending"`` or ``"interleaved"`` (Siemens
    style: odd number of excitations -> 0, 2, 4, ..., 1, 3, ...; even -> 1, 3, ...,
    0, 2, ...). Offsets are evenly spaced over the TR and rounded to 0.1 ms; the
    simulation samples the signal at exactly these rounded values.

    Returns
    -------
    ndarray of shape (n_slices,)
    """
    if n_slices % multiband:
        raise ValueError(f"n_slices ({n_slices}) must be divisible by multiband ({multiband})")
    n_shots = n_slices // multiband
    if order == "ascending":
        shots = np.arange(n_shots)
    elif order == "interleaved":
        evens, odds = np.arange(0, n_shots, 2), np.arange(1, n_shots, 2)
        shots = np.r_[evens, odds] if n_shots % 2 else np.r_[odds, evens]
    else:
        raise ValueError(f"order must be 'ascending' or 'interleaved', got {order!r}")
    position = np.empty(n_shots)
    position[shots] = np.arange(n_shots)
    times = position[np.arange(n_slices) % n_shots] * (tr / n_shots)
    return np.round(times, 4)


def rotation_matrix(rot_x: float, rot_y: float, rot_z: float) -> np.ndarray:
    """``R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z)`` (radians, right-handed about +x, +y, +z).

    Returns
    -------
    ndarray of shape (3, 3)
    """
    cx, sx = np.cos(rot_x), np.sin(rot_x)
    cy, sy = np.cos(rot_y), np.sin(rot_y)
    cz, sz = np.cos(rot_z), np.sin(rot_z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def rigid_matrix(params: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """4 x 4 rigid transforms from ``trans_x, trans_y, trans_z, rot_x, rot_y, rot_z``.

    ``x' = R (x - c) + c + t`` with ``R`` from :func:`rotation_matrix`.

    Parameters
    ----------
    params : ndarray of shape (6,) or (n, 6)
        Translations (mm) then rotations (rad).
    center : ndarray of shape (3,), optional
        Centre of rotation ``c`` (world mm); default the origin.

    Returns
    -------
    ndarray of shape (4, 4) or (n, 4, 4)
    """
    p = np.atleast_2d(np.asarray(params, dtype=float))
    if p.shape[1] != 6:
        raise ValueError(f"params must have 6 columns, got shape {p.shape}")
    c = np.zeros(3) if center is None else np.asarray(center, dtype=float)
    out = np.tile(np.eye(4), (p.shape[0], 1, 1))
    for i, row in enumerate(p):
        r = rotation_matrix(*row[3:])
        out[i, :3, :3] = r
        out[i, :3, 3] = c + row[:3] - r @ c
    return out[0] if np.ndim(params) == 1 else out


def presets() -> dict[str, tuple[DatasetSpec, ...]]:
    """The ``tiny`` and ``default`` presets (see ``docs/demo-data.md`` for the sizes)."""
    tiny = (
        DatasetSpec(
            name="demoA",
            tr=0.735,
            n_subjects=4,
            n_volumes=120,
            bold_voxel_mm=(5.0, 5.0, 5.0),
            bold_shape=(40, 40, 30),
            bold_orientation="LAS",
            multiband=3,
            slice_order="interleaved",
            oblique=False,
            t1_voxel_mm=(2.0, 2.0, 2.0),
            t1_shape=(96, 128, 110),
            t1_orientation="LAS",
        ),
        DatasetSpec(
            name="demoB",
            tr=2.0,
            n_subjects=3,
            n_volumes=150,
            bold_voxel_mm=(6.0, 6.0, 6.0),
            bold_shape=(34, 34, 25),
            bold_orientation="LPS",
            multiband=1,
            slice_order="interleaved",
            oblique=False,
            t1_voxel_mm=(2.2, 2.2, 2.2),
            t1_shape=(88, 116, 100),
            t1_orientation="LPS",
            second_session_fraction=0.34,
            phase_encoding="j",
        ),
    )
    tiny_a, tiny_b = tiny
    # The default preset: the tiny datasets' scanners at main-job size, plus demoC. demoB
    # (downstream only) carries the subjects the evaluation cross-validates over; demoA
    # and demoC (pretraining) are kept small so the main job fits a 2-core laptop. 60
    # demoB subjects (12 per test fold): with 40, the planted diagnosis effect was not
    # significant for the FC baselines under the corrected test (docs/demo-data.md).
    default = (
        replace(tiny_a, n_subjects=8, n_volumes=160),
        replace(
            tiny_b,
            n_subjects=60,
            bold_voxel_mm=(5.0, 5.0, 5.5),
            bold_shape=(40, 40, 28),
            second_session_fraction=0.15,
        ),
        DatasetSpec(
            name="demoC",
            tr=0.8,
            n_subjects=8,
            n_volumes=160,
            bold_voxel_mm=(5.0, 5.0, 5.0),
            bold_shape=(40, 40, 30),
            bold_orientation="RAS",
            multiband=6,
            slice_order="ascending",
            oblique=True,
            t1_voxel_mm=(2.0, 2.0, 2.0),
            t1_shape=(128, 110, 96),
            t1_orientation="ASL",
            second_run_fraction=0.3,
        ),
    )
    return {"tiny": tiny, "default": default}
