"""QC figure of the registration: template edges over the registered T1w, brain-mask outline.

Drawn with numpy and Pillow (no matplotlib: importing and rendering it cost about a
second per T1w, as much as a fifth of a job). Each slice is scaled to its panel with
nearest-neighbour sampling; a contour is the outline of the pixels where the slice,
interpolated linearly at the pixel centres, reaches the contour's level.
"""

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


#: Size of one panel (pixels) and of the header holding the title.
PANEL_PX = (260, 256)
HEADER_PX = 44
EDGE_RGB = (255, 212, 0)
MASK_RGB = (255, 48, 48)


def _pixel_grid(n: int, size: int) -> np.ndarray:
    """Voxel coordinates of the centres of ``size`` pixels spanning ``n`` voxels."""
    return (np.arange(size) + 0.5) * (n / size) - 0.5


def _resample(plane: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """``plane`` (rows up, columns right) sampled on a ``size`` = (height, width) raster,
    top row first (nearest voxel for ``order=0``, linear for ``order=1``)."""
    rows = _pixel_grid(plane.shape[0], size[0])[::-1]
    cols = _pixel_grid(plane.shape[1], size[1])
    if order == 0:
        r = np.clip(np.rint(rows).astype(int), 0, plane.shape[0] - 1)
        c = np.clip(np.rint(cols).astype(int), 0, plane.shape[1] - 1)
        return plane[np.ix_(r, c)]
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndi.map_coordinates(plane.astype(np.float32), [rr, cc], order=1, mode="nearest")


def _outline(inside: np.ndarray) -> np.ndarray:
    """Pixels of a boolean raster that have a 4-neighbour outside it (a 1-pixel contour)."""
    core = ndi.binary_erosion(inside, border_value=1)
    return inside & ~core


def _fit(shape_mm: tuple[float, float], box: tuple[int, int]) -> tuple[int, int]:
    """(height, width) in pixels of a plane of ``shape_mm`` fitted into ``box``."""
    scale = min(box[0] / shape_mm[0], box[1] / shape_mm[1])
    return max(1, round(shape_mm[0] * scale)), max(1, round(shape_mm[1] * scale))


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
        Output PNG (written atomically; the bytes depend only on the inputs: no
        metadata).
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
    from PIL import Image, ImageDraw, ImageFont

    in_brain = registered[mask]
    vmax = float(np.percentile(in_brain, 99.5)) if in_brain.size else float(registered.max())
    scale = 255.0 / vmax if vmax > 0 else 0.0
    edges = ndi.gaussian_filter(template.astype(np.float32), 0.5)
    mask_f = mask.astype(np.float32)
    width, height = PANEL_PX
    canvas = np.zeros((HEADER_PX + 3 * height, per_view * width, 3), np.uint8)
    labels: list[tuple[tuple[int, int], str]] = []
    names = ("sagittal", "coronal", "axial")
    for row, axis in enumerate(range(3)):
        others = [a for a in range(3) if a != axis]
        for col, index in enumerate(_slices(mask, axis, per_view)):
            plane = _take(registered, axis, index)
            shape_mm = (plane.shape[0] * zooms[others[1]], plane.shape[1] * zooms[others[0]])
            size = _fit(shape_mm, (height - 18, width - 4))
            gray = np.clip(_resample(plane, size, 0) * scale, 0, 255).astype(np.uint8)
            rgb = np.repeat(gray[..., None], 3, axis=2)
            edge = _outline(_resample(_take(edges, axis, index), size, 1) >= EDGE_LEVEL)
            rgb[edge] = EDGE_RGB
            outline = _outline(_resample(_take(mask_f, axis, index), size, 1) >= 0.5)
            rgb[outline] = MASK_RGB
            top = HEADER_PX + row * height + 16 + (height - 18 - size[0]) // 2
            left = col * width + (width - size[1]) // 2
            canvas[top : top + size[0], left : left + size[1]] = rgb
            labels.append(
                ((col * width + width // 2, HEADER_PX + row * height + 2), f"{names[axis]} {index}")
            )
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    small, large = ImageFont.load_default(size=10), ImageFont.load_default(size=12)
    for xy, text in labels:
        draw.text(xy, text, fill="white", font=small, anchor="ma")
    header = f"{title}\nyellow: template GM/WM edge; red: brain mask"
    draw.multiline_text(
        (image.width // 2, 6), header, fill="white", font=large, anchor="ma", align="center"
    )
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    logger.info("QC figure written: %s", path)
