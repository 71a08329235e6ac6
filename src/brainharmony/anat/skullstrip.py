"""Head mask (foreground) and the brain mask carried from the template to the T1w.

The native backend does not segment the brain from intensities: the template's brain
mask is pulled back into T1w space through the fitted transform (registration-based
extraction, as the offline resources allow: no deep-learning stripper ships weights).
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample.

    Parameters
    ----------
    values : ndarray of shape (n,)
    bins : int

    Returns
    -------
    float
        The threshold maximising the between-class variance (the middle of the
        maximising range when empty bins make it flat).
    """
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = hist.astype(float)
    w0 = np.cumsum(weight)
    w1 = w0[-1] - w0
    m0 = np.cumsum(weight * centres)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = (w0 * w1 * (mean0 - mean1) ** 2)[:-1]
    # Empty bins between two classes leave a plateau of maxima: take its middle.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[(int(best[0]) + int(best[-1])) // 2 + 1])


def ball(radius_mm: float, zooms: np.ndarray) -> np.ndarray:
    """A boolean ellipsoidal structuring element of ``radius_mm`` for voxel sizes ``zooms``."""
    half = np.maximum(np.floor(radius_mm / np.asarray(zooms, float)).astype(int), 0)
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist = sum((g * z / radius_mm) ** 2 for g, z in zip(grid, zooms, strict=True))
    return np.asarray(dist <= 1.0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean array (empty stays empty)."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def head_mask_array(data: np.ndarray, zooms: np.ndarray) -> tuple[np.ndarray, float]:
    """Foreground (head) mask of a T1w.

    Otsu's threshold on the intensities (clipped to their 0.5-99.5th percentiles,
    after a light Gaussian smoothing), the largest connected component, a 4 mm closing
    and hole filling (in 3D, then slice by slice along each axis).

    Parameters
    ----------
    data : ndarray of shape (nx, ny, nz)
        The image (any intensity scale, background near 0).
    zooms : ndarray of shape (3,)
        Voxel sizes in mm.

    Returns
    -------
    mask : ndarray of bool, shape (nx, ny, nz)
    threshold : float
        The intensity threshold used.
    """
    zooms = np.asarray(zooms, float)
    smooth = ndi.gaussian_filter(data.astype(np.float32), sigma=1.0 / zooms)
    lo, hi = np.percentile(smooth, [0.5, 99.5])
    threshold = otsu_threshold(np.clip(smooth, lo, hi).ravel())
    mask = largest_component(smooth > threshold)
    pad = [(int(h), int(h)) for h in np.ceil(4.0 / zooms)]
    closed = ndi.binary_closing(np.pad(mask, pad), structure=ball(4.0, zooms))
    mask = closed[tuple(slice(p, -p if p else None) for p, _ in pad)] | mask
    mask = ndi.binary_fill_holes(mask)
    for axis in range(3):
        mask = fill_holes_per_slice(mask, axis)
    return mask, threshold


def fill_holes_per_slice(mask: np.ndarray, axis: int) -> np.ndarray:
    """``ndi.binary_fill_holes`` applied to every slice of a 3D mask along ``axis``.

    A hole of a slice is background that no 4-connected path within the slice links to
    the slice's border. All slices are labelled at once (a structuring element that
    connects voxels only within a slice) instead of one fill per slice.
    """
    others = [a for a in range(3) if a != axis]
    structure = np.zeros((3, 3, 3), bool)
    for a in others:
        index = [1, 1, 1]
        for offset in (0, 2):
            index[a] = offset
            structure[tuple(index)] = True
    structure[1, 1, 1] = True
    labels, n = ndi.label(~mask, structure=structure)
    reaches_border = np.zeros(n + 1, bool)
    for a in others:
        for end in (0, -1):
            reaches_border[np.take(labels, end, axis=a)] = True
    reaches_border[0] = False
    return ~reaches_border[labels]


def head_mask(image: sitk.Image) -> tuple[sitk.Image, float]:
    """:func:`head_mask_array` on a SimpleITK image; returns a uint8 image on its grid."""
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    mask, threshold = head_mask_array(data, np.asarray(image.GetSpacing()))
    out = sitk.GetImageFromArray(mask.transpose(2, 1, 0).astype(np.uint8))
    out.CopyInformation(image)
    return out, threshold


def pull_back_mask(
    template_mask: sitk.Image,
    subject_to_template: sitk.Transform,
    reference: sitk.Image,
    threads: int = 1,
) -> sitk.Image:
    """Carry a template-space binary mask onto a subject grid.

    Parameters
    ----------
    template_mask : SimpleITK.Image
        uint8 mask on the template grid.
    subject_to_template : SimpleITK.Transform
        Maps subject points to template points (the inverse of the transform that
        resamples the subject into the template).
    reference : SimpleITK.Image
        The subject grid.
    threads : int

    Returns
    -------
    SimpleITK.Image
        uint8 mask on ``reference``'s grid: linear interpolation of the 0/1 mask,
        thresholded at 0.5 (a partial-volume boundary).
    """
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetTransform(subject_to_template)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetNumberOfThreads(threads)
    soft = resampler.Execute(sitk.Cast(template_mask, sitk.sitkFloat32))
    return sitk.Cast(soft >= 0.5, sitk.sitkUInt8)
