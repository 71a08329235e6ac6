"""Parcel-mean time series in one pass over the data.

The mean of each label's voxels is a sparse ``(n_voxels, n_labels)`` averaging matrix
applied to the data. The data are read once, in blocks that stay in cache: a block of
volumes (when each volume is contiguous in memory, e.g. nibabel's Fortran-ordered 4-D
arrays) or a block of voxels (when each voxel's time series is contiguous). The sums
are accumulated in float64 whatever the input dtype.

Labels with fewer than ``min_voxels`` usable voxels (inside the run's coverage) get a
NaN column and are listed in :attr:`ParcelResult.small`; they are never silently 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParcelResult:
    """Output of :func:`parcel_means`.

    Attributes
    ----------
    series : ndarray of shape (n_volumes, n_labels), float64
        Parcel means; NaN columns for the labels in ``small``.
    labels : ndarray of shape (n_labels,)
        Label value of each column.
    counts : ndarray of shape (n_labels,)
        Usable voxels per label.
    atlas_counts : ndarray of shape (n_labels,)
        Voxels per label in the atlas (before the usable mask).
    small : list of int
        Labels whose column is NaN (fewer than ``min_voxels`` usable voxels).
    info : dict
    """

    series: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    atlas_counts: np.ndarray
    small: list[int]
    info: dict[str, Any] = field(default_factory=dict)


def _layout(data: np.ndarray) -> tuple[np.ndarray, str, str]:
    """View of the data as (n_volumes, n_voxels) 'volume-major' or (n_voxels, n_volumes)
    'voxel-major', without copying when possible. Returns the view, its kind and the
    flattening order of the spatial axes."""
    if data.ndim == 2:
        if data.flags.f_contiguous and not data.flags.c_contiguous:
            return data.T, "volume", "C"
        return np.ascontiguousarray(data), "voxel", "C"
    n_vol = data.shape[-1]
    if data.flags.f_contiguous:
        return data.reshape(-1, n_vol, order="F").T, "volume", "F"
    return np.ascontiguousarray(data).reshape(-1, n_vol), "voxel", "C"


def parcel_means(
    data: np.ndarray,
    labels: np.ndarray,
    *,
    label_values: Sequence[int] | np.ndarray | None = None,
    usable: np.ndarray | None = None,
    min_voxels: int = 1,
    block: int = 8,
) -> ParcelResult:
    """Mean time series of every label.

    Parameters
    ----------
    data : ndarray of shape (n_x, n_y, n_z, n_volumes) or (n_points, n_volumes)
        Finite data (a non-finite value in a labelled, usable voxel raises).
    labels : ndarray of int, shape (n_x, n_y, n_z) or (n_points,)
        Label of each voxel; 0 is background.
    label_values : sequence of int, optional
        Labels to report, in column order (default: the non-zero labels present).
        A label absent from ``labels`` gets a NaN column and is listed as small.
    usable : ndarray of bool, same shape as ``labels``, optional
        Voxels with data (e.g. the run's coverage); others are left out.
    min_voxels : int
        Fewest usable voxels for a label to get a value.
    block : int
        Volumes per block (volume-major data); voxel blocks hold ``block * 4096``
        voxels. The result does not depend on it.

    Returns
    -------
    ParcelResult
    """
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim not in (2, 4):
        raise ValueError(f"data must be 4-D or 2-D (points x volumes), got shape {data.shape}")
    if labels.shape != data.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} does not match the data's spatial shape {data.shape[:-1]}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError("labels must hold integers")
        labels = labels.astype(np.int64)
    if usable is not None and np.asarray(usable).shape != labels.shape:
        raise ValueError(f"usable shape {np.asarray(usable).shape} != labels shape {labels.shape}")
    if min_voxels < 1:
        raise ValueError(f"min_voxels must be >= 1, got {min_voxels!r}")
    from scipy import sparse

    view, kind, order = _layout(data)
    flat_labels = labels.reshape(-1, order=order).astype(np.int64)
    if label_values is None:
        values = np.unique(flat_labels[flat_labels != 0])
    else:
        values = np.asarray(label_values, dtype=np.int64)
        if values.ndim != 1 or np.unique(values).size != values.size or (values == 0).any():
            raise ValueError("label_values must be distinct non-zero integers")
    n_labels = values.size
    # Column of each voxel's label (-1: background or a label not reported).
    lo, hi = int(flat_labels.min(initial=0)), int(flat_labels.max(initial=0))
    if lo >= 0 and hi < 10_000_000:
        lut = np.full(hi + 1, -1, dtype=np.int64)
        inside = values[values <= hi]
        lut[inside] = np.flatnonzero(values <= hi)
        column = lut[flat_labels]
    else:
        lookup = {int(v): i for i, v in enumerate(values)}
        uniq, inverse = np.unique(flat_labels, return_inverse=True)
        column = np.array([lookup.get(int(v), -1) for v in uniq], dtype=np.int64)[inverse]
    atlas_counts = np.bincount(column[column >= 0], minlength=n_labels)
    selected = column >= 0
    if usable is not None:
        selected &= np.asarray(usable, dtype=bool).reshape(-1, order=order)
    idx = np.flatnonzero(selected)
    cols = column[idx]
    counts = np.bincount(cols, minlength=n_labels)
    small_mask = counts < min_voxels
    keep = ~small_mask[cols]
    idx, cols = idx[keep], cols[keep]
    weights = 1.0 / counts[cols]
    averaging = sparse.csr_matrix(
        (weights, (np.arange(idx.size), cols)), shape=(idx.size, n_labels)
    )
    n_vol = data.shape[-1]
    series = np.zeros((n_vol, n_labels), dtype=np.float64)
    if idx.size:
        if kind == "volume":
            step = max(1, int(block))
            for start in range(0, n_vol, step):
                chunk = view[start : start + step, idx].astype(np.float64)
                _check_finite(chunk)
                series[start : start + step] = chunk @ averaging
        else:
            by_col = averaging.T.tocsc()  # (n_labels, n_selected)
            step = max(1, int(block) * 4096)
            acc = np.zeros((n_labels, n_vol), dtype=np.float64)
            for start in range(0, idx.size, step):
                chunk = view[idx[start : start + step]].astype(np.float64)
                _check_finite(chunk)
                acc += by_col[:, start : start + step] @ chunk
            series = acc.T.copy()
    series[:, small_mask] = np.nan
    small = [int(v) for v in values[small_mask]]
    if small:
        logger.info(
            "%d of %d labels have fewer than %d usable voxels", len(small), n_labels, min_voxels
        )
    return ParcelResult(
        series=series,
        labels=values,
        counts=counts,
        atlas_counts=atlas_counts,
        small=small,
        info={"layout": kind, "min_voxels": int(min_voxels), "voxels_used": int(idx.size)},
    )


def _check_finite(chunk: np.ndarray) -> None:
    if not np.isfinite(chunk.sum()):
        raise ValueError("data hold NaN or infinite values in labelled, usable voxels")


def resample_labels(
    labels: np.ndarray,
    labels_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume onto another grid (world coords).

    Parameters
    ----------
    labels : ndarray of int, shape (n_x, n_y, n_z)
    labels_affine, target_affine : ndarray of shape (4, 4)
    target_shape : tuple of 3 int

    Returns
    -------
    ndarray of int32, shape ``target_shape``
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3-D, got shape {labels.shape}")
    m = np.linalg.inv(np.asarray(labels_affine, float)) @ np.asarray(target_affine, float)
    if np.allclose(m, np.eye(4)) and tuple(target_shape) == labels.shape:
        return labels.astype(np.int32)
    out = ndimage.affine_transform(
        labels.astype(np.int32),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=tuple(int(n) for n in target_shape),
        order=0,
        mode="constant",
        cval=0,
    )
    return out.astype(np.int32)
