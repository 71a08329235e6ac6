"""QC figure of the registration: template edges over the registered T1w, brain-mask outline."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from brainharmony.io import PathLike, atomic_path

logger = logging.getLogger(__name__)

#: Template level drawn as its "edges" (the GM/WM boundary of the [0, 1] template).
EDGE_LEVEL = 0.62


def _slices(mask: np.ndarray, axis: int, n: int) -> list[int]:
    idx = np.argwhere(mask.any(axis=tuple(a for a in range(3) if a != axis)))[:, 0]
    if idx.size == 0:
        return [mask.shape[axis] // 2] * n
    return [round(float(q)) for q in np.linspace(idx.min(), idx.max(), n + 2)[1:-1]]


def _take(data: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(data, index, axis=axis).T  # rows: the last remaining axis (up)


def registration_figure(
    path: PathLike,
    registered: np.ndarray,
    template: np.ndarray,
    mask: np.ndarray,
    title: str,
    per_view: int = 3,
    zooms: Sequence[float] = (1.0, 1.0, 1.0),
) -> None:
    """Write a PNG: slices of the registered T1w, template edges, brain-mask outline.

    Parameters
    ----------
    path : path-like
        Output PNG (written atomically; the bytes depend only on the inputs).
    registered : ndarray of shape (nx, ny, nz)
        T1w in template space (RAS+ axes).
    template : ndarray of shape (nx, ny, nz)
        Template on the same grid, intensities in [0, 1].
    mask : ndarray of bool, shape (nx, ny, nz)
        Brain mask on the same grid.
    title : str
    per_view : int
        Slices per view (sagittal, coronal, axial rows).
    zooms : sequence of 3 floats
        Voxel sizes (for the aspect ratio).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    in_brain = registered[mask]
    vmax = float(np.percentile(in_brain, 99.5)) if in_brain.size else float(registered.max())
    edges = ndi.gaussian_filter(template.astype(np.float32), 0.5)
    fig = Figure(figsize=(2.6 * per_view, 2.6 * 3), dpi=100)
    names = ("sagittal", "coronal", "axial")
    for row, axis in enumerate(range(3)):
        others = [a for a in range(3) if a != axis]
        aspect = zooms[others[1]] / zooms[others[0]]
        for col, index in enumerate(_slices(mask, axis, per_view)):
            ax = fig.add_subplot(3, per_view, row * per_view + col + 1)
            ax.imshow(
                _take(registered, axis, index),
                cmap="gray",
                vmin=0,
                vmax=vmax,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
            ax.contour(
                _take(edges, axis, index), levels=[EDGE_LEVEL], colors=["#ffd400"], linewidths=0.6
            )
            ax.contour(
                _take(mask.astype(np.float32), axis, index),
                levels=[0.5],
                colors=["#ff3030"],
                linewidths=0.8,
            )
            ax.set_axis_off()
            ax.set_title(f"{names[axis]} {index}", fontsize=7, color="white")
    fig.suptitle(
        f"{title}\nyellow: template GM/WM edge; red: brain mask", fontsize=8, color="white"
    )
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.02, hspace=0.12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None}, facecolor="black")
    logger.info("QC figure written: %s", path)
