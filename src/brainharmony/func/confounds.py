"""Confound regressors with fMRIPrep's column names.

Columns (fMRIPrep ``desc-confounds_timeseries.tsv`` names and order within a family):

* ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad), each with
  ``_derivative1`` (backward difference, first row n/a), ``_derivative1_power2`` and
  ``_power2``;
* ``global_signal``, ``csf``, ``white_matter`` with the same four expansions;
* ``framewise_displacement`` (Power et al. 2012, 50 mm sphere, first row n/a);
* ``dvars`` and ``std_dvars`` (Nichols 2013 standardisation, first row n/a);
* one-hot outlier columns: ``non_steady_state_outlierNN`` (fMRIPrep's dummy volumes,
  read by :func:`outlier_frames`) and ``motion_outlierNN`` (the frames this package
  censored for motion, written by :func:`with_motion_outliers`).

Tissue masks come from template-space probability maps (nilearn's MNI152 2009 grey
and white matter at 1 mm): white matter = WM probability >= 0.9, eroded once (1 mm);
CSF = the brain mask eroded by 3 mm, minus voxels with GM or WM probability >= 0.1
(so the ventricles remain, not the cortical rim), eroded once (1 mm). Both are
then taken to the working grid as the fraction of each voxel they fill (a voxel
joins when at least half of it is in the mask); where erosion would empty a mask on
a coarse grid, the uneroded 1 mm mask is used and the sidecar says so.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.func.motion import PARAM_NAMES, framewise_displacement
from brainharmony.func.register import resample_image

logger = logging.getLogger(__name__)

TISSUES: tuple[str, ...] = ("global_signal", "csf", "white_matter")
EXPANSIONS: tuple[str, ...] = ("", "_derivative1", "_derivative1_power2", "_power2")
TISSUE_METHOD = (
    "WM: probability >= 0.9, eroded 1 mm; CSF: brain mask eroded 3 mm minus GM/WM "
    "probability >= 0.1, eroded 1 mm; GM: probability >= 0.5; each taken to the working "
    "grid as the fraction of a voxel it fills (>= 0.5 joins)"
)
#: Smallest number of working-grid voxels for a tissue mask.
MIN_TISSUE_VOXELS = 5
#: fMRIPrep's one-hot columns of non-steady-state (dummy) volumes.
NON_STEADY_STATE_PREFIX = "non_steady_state_outlier"
#: fMRIPrep's one-hot columns of censored (motion outlier) frames.
MOTION_OUTLIER_PREFIX = "motion_outlier"


def expand(frame: pd.DataFrame) -> pd.DataFrame:
    """Add fMRIPrep's derivative and square columns for every column of ``frame``.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_volumes, n_columns)

    Returns
    -------
    pandas.DataFrame of shape (n_volumes, 4 * n_columns)
        For each column ``c``: ``c, c_derivative1, c_derivative1_power2, c_power2``;
        the derivative's first row is NaN (written ``n/a``).
    """
    out: dict[str, np.ndarray] = {}
    for name in frame.columns:
        x = frame[name].to_numpy(dtype=np.float64)
        d = np.concatenate([[np.nan], np.diff(x)])
        out[name] = x
        out[f"{name}_derivative1"] = d
        out[f"{name}_derivative1_power2"] = d**2
        out[f"{name}_power2"] = x**2
    return pd.DataFrame(out, index=frame.index)


def _row_percentile(ordered: np.ndarray, q: float, median: float) -> np.ndarray:
    """``np.percentile(x / median * 1000, 100 * q, axis=1)`` (linear method) from the rows
    of ``x`` already sorted (``ordered``; ``median`` 0: no scaling), to the same bits.

    The position is ``q * (n - 1)``; numpy's interpolation is ``a + (b - a) * g``, or
    ``b - (b - a) * (1 - g)`` when ``g >= 0.5``.
    """
    n = ordered.shape[1]
    position = q * (n - 1)
    lo = int(np.floor(position))
    hi = min(lo + 1, n - 1)
    g = position - lo
    a = ordered[:, lo].astype(np.float64)
    b = ordered[:, hi].astype(np.float64)
    if median != 0:
        a = a / median * 1000.0
        b = b / median * 1000.0
    step = b - a
    return b - step * (1 - g) if g >= 0.5 else a + step * g


def dvars(samples: np.ndarray, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and its standardised form (Nichols 2013; as nipype's ComputeDVARS).

    Parameters
    ----------
    samples : ndarray of shape (n_voxels, n_volumes)
        In-brain voxel time series (voxels with zero variance are ignored).
    chunk : int
        Voxels per block: the per-voxel statistics are computed block by block (the
        same numbers as on the whole array, without its float64 temporaries).

    Returns
    -------
    dvars : ndarray of shape (n_volumes,)
        RMS over voxels of the backward temporal difference, after scaling the data
        so that its median is 1000; first value NaN.
    std_dvars : ndarray of shape (n_volumes,)
        ``dvars`` divided by its expected value under temporal independence given each
        voxel's robust SD and lag-1 autocorrelation; first value NaN.
    """
    raw = np.asarray(samples)
    if raw.ndim != 2 or raw.shape[1] < 3:
        raise ValueError(f"samples must have shape (n_voxels, n_volumes >= 3), got {raw.shape}")
    if raw.dtype not in (np.float32, np.float64):
        raw = raw.astype(np.float64)
    n_vox, n_vol = raw.shape
    blocks = [slice(lo, min(lo + chunk, n_vox)) for lo in range(0, n_vox, chunk)]
    # Voxels with finite samples and a non-negligible SD (relative to the largest value).
    finite = np.zeros(n_vox, dtype=bool)
    sd = np.zeros(n_vox)
    peak = 0.0
    for b in blocks:
        block = raw[b].astype(np.float64)
        ok = np.all(np.isfinite(block), axis=1)
        block = block[ok]
        finite[b] = ok
        sd[b.start + np.flatnonzero(ok)] = np.std(block, axis=1)
        peak = max(peak, float(np.abs(block).max(initial=0.0)))
    used = finite & (sd > 1e-8 * max(peak, 1e-30))
    n_used = int(used.sum())
    if n_used == 0:
        nan = np.full(n_vol, np.nan)
        return nan, nan.copy()
    values = raw if n_used == n_vox else raw[used]
    # The median of all values; float32 -> float64 is exact and keeps the order, so the
    # middle elements of the original dtype give np.median's float64 result.
    flat = values.ravel()
    half = flat.size // 2
    if flat.size % 2:
        median = float(np.partition(flat, half)[half])
    else:
        middle = np.partition(flat, [half - 1, half])
        median = (float(middle[half - 1]) + float(middle[half])) / 2.0
    terms = np.empty(n_used)
    sq_sum = None  # column sums of the squared differences, added voxel by voxel
    for b in [slice(lo, min(lo + chunk, n_used)) for lo in range(0, n_used, chunk)]:
        x = values[b].astype(np.float64)
        # Quartiles from the rows sorted in their own dtype (much faster than
        # np.percentile's partition); the scaling below is monotone, so it maps the
        # sorted values onto the sorted scaled ones (reversed for a negative median).
        ordered = np.sort(values[b], axis=1)
        if median < 0:
            ordered = ordered[:, ::-1]
        if median != 0:
            x = x / median * 1000.0
        q75, q25 = (_row_percentile(ordered, q, median) for q in (0.75, 0.25))
        robust_sd = (q75 - q25) / 1.349
        centred = x - x.mean(axis=1, keepdims=True)
        denom = np.sum(centred * centred, axis=1)
        ar1 = np.sum(centred[:, 1:] * centred[:, :-1], axis=1) / np.where(denom > 0, denom, 1.0)
        terms[b] = np.sqrt(np.clip(2.0 * (1.0 - ar1), 0.0, None)) * robust_sd
        diff = np.diff(x, axis=1)
        # np.add.reduce along axis 0 adds rows in order: carry the running sum as the
        # first row so that the total is the whole array's, bit for bit.
        stack = np.empty((diff.shape[0] + (sq_sum is not None), diff.shape[1]))
        if sq_sum is not None:
            stack[0] = sq_sum
        np.multiply(diff, diff, out=stack[stack.shape[0] - diff.shape[0] :])
        sq_sum = np.add.reduce(stack, axis=0)
    expected = float(np.mean(terms))
    dv = np.sqrt(sq_sum / n_used)
    std = dv / expected if expected > 0 else np.full_like(dv, np.nan)
    return np.concatenate([[np.nan], dv]), np.concatenate([[np.nan], std])


def build_confounds(
    params: np.ndarray,
    tissue_signals: Mapping[str, np.ndarray],
    *,
    dvars_values: tuple[np.ndarray, np.ndarray] | None = None,
    fd_radius_mm: float = 50.0,
) -> pd.DataFrame:
    """Assemble the confounds table.

    Parameters
    ----------
    params : ndarray of shape (n_volumes, 6)
        Motion parameters (:data:`~brainharmony.func.motion.PARAM_NAMES`).
    tissue_signals : mapping of str to ndarray of shape (n_volumes,)
        ``global_signal``, ``csf``, ``white_matter`` mean time series.
    dvars_values : (ndarray, ndarray), optional
        :func:`dvars` output.
    fd_radius_mm : float
        Framewise-displacement sphere radius.

    Returns
    -------
    pandas.DataFrame of shape (n_volumes, n_columns)
    """
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] != 6:
        raise ValueError(f"params must have shape (n_volumes, 6), got {params.shape}")
    n = params.shape[0]
    missing = [t for t in TISSUES if t not in tissue_signals]
    if missing:
        raise ValueError(f"tissue_signals lacks {missing}; expected keys {list(TISSUES)}")
    for name in TISSUES:
        if np.asarray(tissue_signals[name]).shape != (n,):
            raise ValueError(
                f"tissue signal {name!r} has shape {np.asarray(tissue_signals[name]).shape}, "
                f"expected ({n},)"
            )
    tissue = expand(pd.DataFrame({t: np.asarray(tissue_signals[t], float) for t in TISSUES}))
    motion = expand(pd.DataFrame(params, columns=list(PARAM_NAMES)))
    fd = framewise_displacement(params, radius_mm=fd_radius_mm)
    fd[0] = np.nan
    table = pd.concat([tissue, motion], axis=1)
    table["framewise_displacement"] = fd
    if dvars_values is not None:
        table["dvars"] = dvars_values[0]
        table["std_dvars"] = dvars_values[1]
    return table


# --------------------------------------------------------------------------------------
# One-hot outlier columns (fMRIPrep's convention)
# --------------------------------------------------------------------------------------
def outlier_frames(table: pd.DataFrame, prefix: str = NON_STEADY_STATE_PREFIX) -> np.ndarray:
    """Frames flagged by the one-hot columns whose names start with ``prefix``.

    Parameters
    ----------
    table : pandas.DataFrame of shape (n_volumes, n_columns)
        A confounds table (fMRIPrep names).
    prefix : str
        ``non_steady_state_outlier`` (default) or ``motion_outlier``.

    Returns
    -------
    ndarray of bool, shape (n_volumes,)
        True where any such column is 1 (all False when there is no such column).

    Raises
    ------
    ValueError
        A column holds anything but 0 and 1 (the message names the column).
    """
    flagged = np.zeros(len(table), dtype=bool)
    for name in (c for c in table.columns if str(c).startswith(prefix)):
        values = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isin(values, (0.0, 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"column {name!r} must be one-hot (0 or 1 in every row); row {row} holds "
                f"{table[name].iloc[row]!r}"
            )
        flagged |= values == 1.0
    return flagged


def outlier_columns(frames: np.ndarray, prefix: str = MOTION_OUTLIER_PREFIX) -> pd.DataFrame:
    """One-hot columns ``<prefix>00, <prefix>01, ...``, one per flagged frame, in time order.

    Parameters
    ----------
    frames : ndarray of bool, shape (n_volumes,)
    prefix : str

    Returns
    -------
    pandas.DataFrame of shape (n_volumes, n_flagged)
        Integer 0/1 columns, as fMRIPrep writes them.
    """
    frames = np.asarray(frames, dtype=bool)
    if frames.ndim != 1:
        raise ValueError(f"frames must be 1-D, got shape {frames.shape}")
    idx = np.flatnonzero(frames)
    onehot = np.zeros((frames.size, idx.size), dtype=np.int64)
    onehot[idx, np.arange(idx.size)] = 1
    return pd.DataFrame(onehot, columns=[f"{prefix}{k:02d}" for k in range(idx.size)])


def with_motion_outliers(
    table: pd.DataFrame, keep: np.ndarray, non_steady: np.ndarray | None = None
) -> tuple[pd.DataFrame, int]:
    """The confounds table with this package's censoring as ``motion_outlierNN`` columns.

    Any ``motion_outlier*`` columns already there (fMRIPrep's own, from its FD and DVARS
    thresholds) are replaced. Frames flagged as non-steady-state stay in their
    ``non_steady_state_outlier*`` columns and get no ``motion_outlier`` column, so the
    union of the two families is exactly the censored set (``~keep``), which is how
    nilearn's ``load_confounds`` and fMRIPrep users read them.

    Parameters
    ----------
    table : pandas.DataFrame of shape (n_volumes, n_columns)
    keep : ndarray of bool, shape (n_volumes,)
        Frames kept by the censoring.
    non_steady : ndarray of bool, shape (n_volumes,), optional
        Frames already flagged by ``non_steady_state_outlier*`` columns of ``table``.

    Returns
    -------
    table : pandas.DataFrame
        The other columns unchanged, then the new one-hot columns.
    replaced : int
        How many ``motion_outlier*`` columns were dropped.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(table),):
        raise ValueError(f"keep has shape {keep.shape}, the table has {len(table)} rows")
    censored = ~keep
    if non_steady is not None:
        non_steady = np.asarray(non_steady, dtype=bool)
        if non_steady.shape != keep.shape:
            raise ValueError(f"non_steady has shape {non_steady.shape}, keep has {keep.shape}")
        censored &= ~non_steady
    old = [c for c in table.columns if str(c).startswith(MOTION_OUTLIER_PREFIX)]
    rest = table.drop(columns=old)
    extra = outlier_columns(censored).set_index(rest.index)
    return pd.concat([rest, extra], axis=1), len(old)


# --------------------------------------------------------------------------------------
# Tissue masks on the working grid
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _tissue_1mm() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """nilearn 1 mm grid affine and boolean masks (brain, gm, wm, csf)."""
    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_wm_template,
    )
    from scipy import ndimage

    brain_img = load_mni152_brain_mask(resolution=1)
    gm = np.asarray(load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    brain = np.asarray(brain_img.get_fdata()) > 0.5
    ball = ndimage.generate_binary_structure(3, 1)
    wm_core = wm >= 0.9
    wm_eroded = ndimage.binary_erosion(wm_core, ball)
    inner = ndimage.binary_erosion(brain, ball, iterations=3)
    csf_core = inner & (gm < 0.1) & (wm < 0.1)
    csf_eroded = ndimage.binary_erosion(csf_core, ball)
    masks = {
        "brain": brain,
        "gm": gm >= 0.5,
        "wm": wm_eroded,
        "wm_uneroded": wm_core,
        "csf": csf_eroded,
        "csf_uneroded": csf_core,
    }
    return np.asarray(brain_img.affine, dtype=np.float64), masks


def tissue_masks(
    affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Brain, grey-matter, white-matter and CSF masks on a template-space grid.

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        Voxel -> world (template RAS mm) of the working grid.
    shape : tuple of 3 int

    Returns
    -------
    masks : dict of str to ndarray of bool, each of shape ``shape``
        ``brain``, ``gm``, ``wm``, ``csf``.
    report : dict
        Voxel counts and whether the erosion had to be dropped.
    """

    src_affine, masks_1mm = _tissue_1mm()
    shape = tuple(int(n) for n in shape)
    zoom = float(np.cbrt(abs(np.linalg.det(np.asarray(affine)[:3, :3]))))
    report: dict[str, Any] = {
        "Source": "nilearn MNI152 2009 GM/WM probability maps and brain mask (1 mm)",
        "Method": TISSUE_METHOD,
    }

    def fraction(mask: np.ndarray) -> np.ndarray:
        data = mask.astype(np.float32)
        if zoom > 1.5:
            from scipy import ndimage

            # Box average over the target voxel footprint before sampling.
            data = ndimage.uniform_filter(data, size=max(1, round(zoom)))
        return resample_image(data, src_affine, affine, shape, order=1)

    out: dict[str, np.ndarray] = {}
    for name in ("brain", "gm"):
        out[name] = fraction(masks_1mm[name]) >= 0.5
    for name in ("wm", "csf"):
        mask = fraction(masks_1mm[name]) >= 0.5
        eroded = True
        if mask.sum() < MIN_TISSUE_VOXELS:
            mask = fraction(masks_1mm[f"{name}_uneroded"]) >= 0.5
            eroded = False
        out[name] = mask & out["brain"]
        report[f"{name.upper()}Eroded"] = eroded
    for name, mask in out.items():
        report[f"{name.upper()}Voxels"] = int(mask.sum())
    return out, report


def tissue_signals(
    samples: np.ndarray, masks: Mapping[str, np.ndarray], usable: np.ndarray
) -> dict[str, np.ndarray]:
    """Mean time series within the brain (global signal), CSF and white matter.

    Parameters
    ----------
    samples : ndarray of shape (n_points, n_volumes)
        Template-space BOLD at the working points.
    masks : mapping of str to ndarray of bool, shape (n_points,)
        ``brain``, ``csf`` and ``wm`` restricted to the working points.
    usable : ndarray of bool, shape (n_points,)
        Points with coverage (the others are ignored).

    Returns
    -------
    dict of str to ndarray of shape (n_volumes,)
        ``global_signal``, ``csf``, ``white_matter``; a tissue with no usable voxel
        raises ValueError.
    """
    out = {}
    for column, key in (("global_signal", "brain"), ("csf", "csf"), ("white_matter", "wm")):
        sel = np.asarray(masks[key], dtype=bool) & np.asarray(usable, dtype=bool)
        if not sel.any():
            raise ValueError(f"no usable {key} voxel for the {column} confound")
        out[column] = np.asarray(samples[sel], dtype=np.float64).mean(axis=0)
    return out
