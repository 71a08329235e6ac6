"""A demo subject's T1w, brain mask and BOLD reference with known alignment (test support).

Built with the demo generator (:mod:`brainharmony.demo`): one subject's anatomy, its
T1w acquired at the demo's 2 mm (as the anatomy stage's ``desc-preproc_T1w``), the
brain mask (the subject's true brain envelope, as a learned extractor would give it)
and a BOLD reference volume (the demo's EPI image formation: tissue ``S0``,
susceptibility dropout, coil profile, thermal noise of a mean over volumes) on a grid
of any voxel size. T1w and BOLD share the scanner world exactly (the truth), so a
planted header offset is the only misalignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

T1_SHAPE = (96, 128, 110)
T1_VOXEL_MM = (2.0, 2.0, 2.0)
#: Field of view of the BOLD grids (mm): whole brain with a margin, as acquired.
BOLD_FOV_MM = (216.0, 216.0, 150.0)


@dataclass
class DemoSubject:
    """One demo subject in the scanner (see the module docstring)."""

    pose: np.ndarray
    t1w: np.ndarray
    t1w_affine: np.ndarray
    brain_mask: np.ndarray
    source: object
    rng_seed: int

    def boldref(
        self, voxel_mm: float, *, orientation: str = "LAS", seed: int = 0, n_average: int = 50
    ) -> tuple[np.ndarray, np.ndarray]:
        """A BOLD reference (mean of ``n_average`` volumes) on a ``voxel_mm`` grid.

        Returns
        -------
        data : ndarray of shape (n_x, n_y, n_z), float32
        affine : ndarray of shape (4, 4)
            The true voxel -> scanner world map (same world as the T1w).
        """
        from brainharmony.demo.acquisition import oriented_affine
        from brainharmony.demo.bold import BoldModel, coil_profile, render_volumes
        from brainharmony.demo.generate import BOLD_FOV_CENTER_MNI

        rng = np.random.default_rng(seed)
        shape = tuple(round(f / voxel_mm) for f in BOLD_FOV_MM)
        center = self.pose[:3, :3] @ BOLD_FOV_CENTER_MNI + self.pose[:3, 3]
        center = center + rng.uniform(-3, 3, 3)
        affine = oriented_affine(orientation, (voxel_mm,) * 3, shape, center)
        to_source = np.linalg.inv(self.source.affine) @ np.linalg.inv(self.pose) @ affine
        n_labels = int(self.source.labels.max()) + 1
        clean = render_volumes(
            self.source,
            to_source[None],
            shape,
            np.zeros(shape[2], dtype=np.int64),
            np.zeros((1, 1, n_labels), dtype=np.float32),
            np.array([[[1.0, 0.0, 0.0, 0.0]]], dtype=np.float32),
        )[0]
        clean *= coil_profile(affine, shape, rng, 0.08)
        model = BoldModel()
        sigma = 1.0 / model.thermal_snr((voxel_mm,) * 3, 2.0) / np.sqrt(n_average)
        real = clean + sigma * rng.standard_normal(shape)
        imag = sigma * rng.standard_normal(shape)
        data = np.sqrt(real**2 + imag**2) * model.gain
        return data.astype(np.float32), affine


def demo_subject(seed: int = 3, age: float = 45.0) -> DemoSubject:
    """Simulate one subject's T1w, brain mask and BOLD source (about 15 s)."""
    from scipy import ndimage as ndi

    from brainharmony.demo import anatomy
    from brainharmony.demo.acquisition import oriented_affine
    from brainharmony.demo.bold import bold_source
    from brainharmony.demo.generate import T1_FOV_CENTER_MNI
    from brainharmony.demo.motion import sample_pose

    rng = np.random.default_rng(seed)
    anat = anatomy.subject_anatomy(age, rng)
    pose = sample_pose(rng)
    center = pose[:3, :3] @ T1_FOV_CENTER_MNI + pose[:3, 3]
    t1_affine = oriented_affine("RAS", T1_VOXEL_MM, T1_SHAPE, center)
    t1 = anatomy.render_t1(anatomy.t1_sources(anat), pose, t1_affine, T1_SHAPE, rng)
    model = anatomy.head_model()
    brain = anat.gm + anat.wm + anat.csf
    to_mni = np.linalg.inv(model.affine) @ np.linalg.inv(pose) @ t1_affine
    mask = ndi.affine_transform(brain, to_mni, output_shape=T1_SHAPE, order=1) > 0.5
    source = bold_source(anatomy.bold_tissues(anat), rng)
    return DemoSubject(pose, t1.astype(np.float32), t1_affine, mask, source, seed)


def rigid(tx: float, ty: float, tz: float, rx: float, ry: float, rz: float) -> np.ndarray:
    """A rigid world map: rotations (degrees, about x then y then z) and translation (mm)."""
    from brainharmony.demo.acquisition import rotation_matrix

    m = np.eye(4)
    m[:3, :3] = rotation_matrix(*np.radians([rx, ry, rz]))
    m[:3, 3] = [tx, ty, tz]
    return m


def mean_displacement(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> float:
    """Mean distance (mm) between two world maps applied to ``points`` (n, 3)."""
    h = np.c_[points, np.ones(len(points))]
    return float(np.linalg.norm(h @ (a - b)[:3].T, axis=1).mean())
