"""Quality-control figures of a functional run: FD trace, carpet plot, FC matrix.

Figures are written with matplotlib's Agg backend (no display needed), with fixed
metadata so reruns give identical PNG bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainharmony.io import PathLike, atomic_path

logger = logging.getLogger(__name__)

_PNG_META = {"Software": None}
#: zlib level of the PNGs: 2 writes the same pixels about 2.5x faster than PIL's default
#: 6, in files of about the same size (within a few percent either way on these figures).
_PNG_COMPRESS_LEVEL = 2


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots


def _save(fig: Any, path: PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(
            tmp,
            format="png",
            metadata=_PNG_META,
            pil_kwargs={"compress_level": _PNG_COMPRESS_LEVEL},
        )
    return Path(path)


def plot_fd(
    fd: np.ndarray,
    t_r: float,
    threshold: float | None,
    keep: np.ndarray,
    path: PathLike,
    *,
    title: str = "",
) -> Path:
    """Framewise displacement over time with the threshold and censored frames.

    Parameters
    ----------
    fd : ndarray of shape (n_volumes,)
        Framewise displacement (mm); NaN first value allowed.
    t_r : float
        Repetition time in seconds.
    threshold : float or None
    keep : ndarray of bool, shape (n_volumes,)
    path : path-like
        PNG file to write.

    Returns
    -------
    Path
    """
    fd = np.nan_to_num(np.asarray(fd, dtype=float), nan=0.0)
    keep = np.asarray(keep, dtype=bool)
    if fd.shape != keep.shape:
        raise ValueError(f"fd {fd.shape} and keep {keep.shape} differ in shape")
    t = np.arange(fd.size) * float(t_r)
    fig, subplots = _figure(8, 2.6)
    ax = subplots()
    ax.plot(t, fd, lw=0.9, color="k")
    for v in np.flatnonzero(~keep):
        ax.axvspan(t[v] - t_r / 2, t[v] + t_r / 2, color="tab:red", alpha=0.25, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("FD (mm)")
    ax.set_title(
        f"{title}  mean FD {fd[1:].mean() if fd.size > 1 else 0:.3f} mm, "
        f"{int((~keep).sum())} of {fd.size} frames censored",
        fontsize=9,
    )
    ax.set_xlim(t[0], t[-1] if t.size > 1 else 1)
    fig.tight_layout()
    return _save(fig, path)


def plot_carpet(
    samples: np.ndarray,
    order_key: np.ndarray,
    fd: np.ndarray,
    dvars: np.ndarray,
    t_r: float,
    path: PathLike,
    *,
    title: str = "",
    max_rows: int = 2000,
) -> Path:
    """Carpet plot (voxels x time, z-scored) with FD and DVARS traces above it.

    Parameters
    ----------
    samples : ndarray of shape (n_voxels, n_volumes)
        Voxel time series (e.g. grey-matter voxels).
    order_key : ndarray of shape (n_voxels,)
        Rows are sorted by this (e.g. network then parcel label).
    fd, dvars : ndarray of shape (n_volumes,)
    t_r : float
    path : path-like
    max_rows : int
        Rows shown (evenly subsampled).

    Returns
    -------
    Path
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"samples must have shape (n_voxels > 0, n_volumes), got {x.shape}")
    order = np.argsort(np.asarray(order_key), kind="stable")
    if order.size > max_rows:
        order = order[np.linspace(0, order.size - 1, max_rows).astype(int)]
    x = x[order]
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    x = np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)
    t_end = x.shape[1] * float(t_r)
    fig, subplots = _figure(8, 5.5)
    axes = subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1, 5]})
    t = np.arange(x.shape[1]) * float(t_r)
    axes[0].plot(t, np.nan_to_num(fd), lw=0.8, color="k")
    axes[0].set_ylabel("FD (mm)", fontsize=8)
    axes[1].plot(t, np.nan_to_num(dvars), lw=0.8, color="tab:blue")
    axes[1].set_ylabel("DVARS", fontsize=8)
    axes[2].imshow(
        x,
        aspect="auto",
        cmap="gray",
        vmin=-2,
        vmax=2,
        interpolation="nearest",
        extent=(0, t_end, x.shape[0], 0),
    )
    axes[2].set_ylabel("voxels (by network)", fontsize=8)
    axes[2].set_xlabel("time (s)")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_fc(
    series: np.ndarray, networks: Sequence[str], path: PathLike, *, title: str = ""
) -> Path:
    """Parcel-by-parcel correlation matrix with network boundaries.

    Parameters
    ----------
    series : ndarray of shape (n_volumes, n_parcels)
        Denoised series; rows with NaN (censored) and all-NaN columns are ignored.
    networks : sequence of str, length n_parcels
        Network of each parcel (boundaries drawn where it changes).
    path : path-like

    Returns
    -------
    Path
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2 or len(networks) != x.shape[1]:
        raise ValueError(
            f"series {x.shape} and networks ({len(networks)}) disagree on the parcel count"
        )
    rows = ~np.all(np.isnan(x), axis=1)
    x = x[rows]
    good = np.all(np.isfinite(x), axis=0) & (x.shape[0] >= 3)  # no frames: nothing to show
    if good.any():
        good[good] = x[:, good].std(axis=0) > 0
    fc = np.full((x.shape[1], x.shape[1]), np.nan)
    if good.sum() >= 2 and x.shape[0] >= 3:
        fc[np.ix_(good, good)] = np.corrcoef(x[:, good].T)
    # Sort by network (stable: Schaefer order inside a network, LH then RH).
    nets = np.asarray(list(networks))
    names, first = np.unique(nets, return_index=True)
    rank = {n: i for i, n in enumerate(names[np.argsort(first)])}
    order = np.argsort([rank[n] for n in nets], kind="stable")
    fc = fc[np.ix_(order, order)]
    fig, subplots = _figure(6, 5.2)
    ax = subplots()
    im = ax.imshow(fc, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    sorted_nets = nets[order]
    bounds = np.flatnonzero(sorted_nets[1:] != sorted_nets[:-1]) + 0.5
    for b in bounds:
        ax.axhline(b, color="k", lw=0.4)
        ax.axvline(b, color="k", lw=0.4)
    centres = []
    edges = np.r_[-0.5, bounds, len(sorted_nets) - 0.5]
    for i in range(len(edges) - 1):
        centres.append((edges[i] + edges[i + 1]) / 2)
    labels = [sorted_nets[int(np.ceil(e + 0.5))] for e in edges[:-1]]
    ax.set_xticks(centres, labels, rotation=90, fontsize=7)
    ax.set_yticks(centres, labels, fontsize=7)
    ax.set_title(f"{title}  ({int(good.sum())} parcels, {x.shape[0]} frames)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="Pearson r")
    fig.tight_layout()
    return _save(fig, path)
