"""Geometric harmonics: cortical Laplace-Beltrami eigenmodes averaged within parcels.

Pipeline, per hemisphere:

1. Take the template surface (default fsLR-32k Conte69) and cut out the medial
   wall: the sub-mesh of the *cortex* vertices. ``cortex="mask"`` (default on
   fsLR-32k) uses the template's cortex mask, which does not depend on the atlas,
   so one set of modes serves every parcellation; ``cortex="labels"`` keeps the
   vertices with a non-zero label of the given parcellation (the only choice on
   fsaverage5, which has no offline mask).
2. Compute ``K`` mass-normalised Laplace-Beltrami eigenmodes on that sub-mesh
   (:mod:`brainharmony.geometry.lbo`).
3. Average each mode within each parcel with **vertex-area weights** (the lumped
   mass, one third of the area of the incident triangles). The weighted mean is
   the surface integral of the mode over the parcel divided by the parcel's
   area, so it does not depend on how densely the mesh samples a region (fsLR
   vertices are not equal-area); an unweighted vertex mean would over-weight
   densely meshed regions. A constant mode stays exactly constant.

The table has one row per parcel, left hemisphere first (ascending label
value), then right, and columns ``mode_1`` .. ``mode_K``. With Schaefer-400 that
is rows 1-200 (LH) then 201-400 (RH), as in the official BrainHarmonix CSV.
``mode_1`` is constant within each hemisphere (``1/sqrt(cortex area)``); unlike the
official file, whose right-hemisphere constant is negative, both are positive
here (see the sign convention in :mod:`brainharmony.geometry.lbo`).

The command line (``brainharmony harmonics``) is :mod:`brainharmony.pipelines.harmonics`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.geometry.lbo import Eigenmodes, eigenmodes, n_components, submesh
from brainharmony.geometry.surfaces import (
    HEMISPHERES,
    Surface,
    SurfaceLabels,
    load_template_labels,
    load_template_surface,
    read_label_file,
    read_surface_file,
    template_cortex_mask,
)
from brainharmony.io import (
    PathLike,
    atomic_path,
    write_text,
    write_tsv,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HemisphereHarmonics:
    """Eigenmodes of one hemisphere and their parcel means.

    Attributes
    ----------
    surface : Surface
        The full hemisphere surface.
    cortex_index : ndarray of shape (n_cortex,)
        Vertices of ``surface`` in the cortex sub-mesh.
    modes : Eigenmodes
        Eigenpairs on the cortex sub-mesh (modes of shape (n_cortex, K)).
    parcels : ndarray of shape (n_parcels,)
        Label values, ascending.
    parcel_means : ndarray of shape (n_parcels, K)
    parcel_area : ndarray of shape (n_parcels,)
        Cortex area inside each parcel (mesh units squared).
    """

    surface: Surface
    cortex_index: np.ndarray
    modes: Eigenmodes
    parcels: np.ndarray
    parcel_means: np.ndarray
    parcel_area: np.ndarray

    def vertex_modes(self, dtype: Any = np.float32) -> np.ndarray:
        """Modes on every surface vertex, NaN outside the cortex.

        Returns
        -------
        ndarray of shape (n_vertices, K)
        """
        out = np.full((self.surface.vertices.shape[0], self.modes.modes.shape[1]), np.nan, dtype)
        out[self.cortex_index] = self.modes.modes
        return out


def parcel_means(
    values: np.ndarray, labels: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean of per-vertex values within each labelled parcel.

    Parameters
    ----------
    values : ndarray of shape (n_vertices, K)
        Per-vertex values; rows with NaN (vertices outside the mesh) are skipped.
    labels : ndarray of shape (n_vertices,), int
        Parcel label per vertex; 0 or negative = unlabelled (skipped).
    weights : ndarray of shape (n_vertices,)
        Non-negative vertex weights (areas).

    Returns
    -------
    parcels : ndarray of shape (n_parcels,)
        Label values present, ascending.
    means : ndarray of shape (n_parcels, K)
    total_weight : ndarray of shape (n_parcels,)

    Raises
    ------
    ValueError
        Shape mismatch, negative weights, or a parcel with no valid vertex.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype=np.float64)
    n = values.shape[0]
    if labels.shape != (n,) or weights.shape != (n,):
        raise ValueError(
            f"values {values.shape}, labels {labels.shape} and weights {weights.shape} "
            "must agree on the number of vertices"
        )
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError("weights must be finite and non-negative")
    parcels = np.unique(labels[labels > 0])
    if parcels.size == 0:
        raise ValueError("no vertex carries a positive label")
    valid = (labels > 0) & np.isfinite(values).all(axis=1) & (weights > 0)
    row = np.searchsorted(parcels, labels[valid])
    total = np.bincount(row, weights=weights[valid], minlength=parcels.size)
    empty = parcels[total == 0]
    if empty.size:
        raise ValueError(
            f"parcels {empty[:10].tolist()} have no vertex inside the cortex mesh; "
            "use cortex='labels' or check the labels"
        )
    sums = np.zeros((parcels.size, values.shape[1]))
    np.add.at(sums, row, values[valid] * weights[valid, None])
    return parcels, sums / total[:, None], total


def hemisphere_harmonics(
    surface: Surface,
    labels: SurfaceLabels,
    n_modes: int,
    *,
    cortex: np.ndarray | None = None,
    **eig_kwargs: Any,
) -> HemisphereHarmonics:
    """Eigenmodes of one hemisphere's cortex and their parcel means.

    Parameters
    ----------
    surface : Surface
    labels : SurfaceLabels
        One label per surface vertex.
    n_modes : int
    cortex : ndarray of shape (n_vertices,), bool, optional
        Cortex vertices; default: the labelled ones.
    **eig_kwargs
        Passed to :func:`brainharmony.geometry.lbo.eigenmodes`.
    """
    n = surface.vertices.shape[0]
    if labels.labels.shape != (n,):
        raise ValueError(
            f"{labels.source}: {labels.labels.shape[0]} labels for a surface of {n} vertices"
        )
    keep = labels.labels > 0 if cortex is None else np.asarray(cortex, dtype=bool)
    if keep.shape != (n,):
        raise ValueError(f"cortex mask has shape {keep.shape}; the surface has {n} vertices")
    v, f, index = submesh(surface.vertices, surface.faces, keep)
    n_comp, comp = n_components(f, v.shape[0])
    if n_comp > 1:
        sizes = np.bincount(comp)
        big = int(sizes.argmax())
        logger.warning(
            "%s: cortex sub-mesh has %d components; keeping the largest (%d of %d vertices)",
            surface.name,
            n_comp,
            sizes[big],
            v.shape[0],
        )
        v, f, sub = submesh(v, f, comp == big)
        index = index[sub]
    modes = eigenmodes(v, f, n_modes, **eig_kwargs)
    full = np.full((n, n_modes), np.nan)
    full[index] = modes.modes
    weights = np.zeros(n)
    weights[index] = modes.vertex_area
    parcels, means, area = parcel_means(full, labels.labels, weights)
    return HemisphereHarmonics(surface, index, modes, parcels, means, area)


def roi_names_for(
    atlas: str | None,
    hemis: Sequence[HemisphereHarmonics],
    label_sets: Sequence[SurfaceLabels],
) -> list[str]:
    """Row names of the table.

    Schaefer-400 from the template gets the project's standard names
    (:func:`brainharmony.atlas.schaefer400_labels`, e.g. ``7Networks_LH_Vis_1``);
    label files with a name for every parcel, unique across hemispheres, give
    those names; otherwise ``ROI_<row>`` (1-based), as in the official CSV.
    """
    n_rows = sum(h.parcels.size for h in hemis)
    if atlas == "schaefer400" and n_rows == 400:
        try:
            from brainharmony.atlas import schaefer400_labels
        except ImportError:  # pragma: no cover - atlas module absent
            pass
        else:
            table = schaefer400_labels()
            return table["name"].tolist()
    names = [
        lab.names.get(int(p), "")
        for h, lab in zip(hemis, label_sets, strict=True)
        for p in h.parcels
    ]
    if all(names) and len(set(names)) == len(names):
        return names
    return [f"ROI_{i}" for i in range(1, n_rows + 1)]


def harmonics_table(hemis: Sequence[HemisphereHarmonics], roi_names: Sequence[str]) -> pd.DataFrame:
    """Stack the hemispheres' parcel means: LH rows, then RH.

    Returns
    -------
    pandas.DataFrame of shape (n_parcels_total, K)
        Index ``roi`` (names), columns ``mode_1`` .. ``mode_K``.
    """
    values = np.vstack([h.parcel_means for h in hemis])
    if len(roi_names) != values.shape[0]:
        raise ValueError(f"{len(roi_names)} ROI names for {values.shape[0]} rows")
    cols = [f"mode_{i}" for i in range(1, values.shape[1] + 1)]
    return pd.DataFrame(values, index=pd.Index(list(roi_names), name="roi"), columns=cols)


def compute_harmonics(
    *,
    n_modes: int = 200,
    template: str = "fslr32k",
    atlas: str | None = "schaefer400",
    label_files: Sequence[PathLike] | None = None,
    surface_files: Sequence[PathLike] | None = None,
    cortex: str = "auto",
    **eig_kwargs: Any,
) -> tuple[pd.DataFrame, list[HemisphereHarmonics]]:
    """ROI x K geometric-harmonics table for both hemispheres.

    Parameters
    ----------
    n_modes : int
        K, eigenmodes per hemisphere (200 in BrainHarmonix).
    template : {"fslr32k", "fsaverage5"}
        Template whose surfaces (unless ``surface_files``) and cortex mask are used.
    atlas : str or None
        Template atlas shipped offline (``schaefer400``...); ignored when
        ``label_files`` is given.
    label_files : (lh, rh) paths, optional
        Per-hemisphere label files (see :func:`read_label_file`).
    surface_files : (lh, rh) paths, optional
        Per-hemisphere surfaces replacing the template's (same vertices as the labels).
    cortex : {"auto", "mask", "labels"}
        Medial-wall removal: the template cortex mask, or the labelled vertices.
        ``auto``: the mask on fsLR-32k with template surfaces, else labels.
    **eig_kwargs
        Passed to :func:`brainharmony.geometry.lbo.eigenmodes`.

    Returns
    -------
    table : pandas.DataFrame of shape (n_parcels_total, n_modes)
    hemispheres : list of HemisphereHarmonics
        LH, RH.
    """
    for name, pair in (("label_files", label_files), ("surface_files", surface_files)):
        if pair is not None and len(pair) != 2:
            raise ValueError(f"{name} must be two paths (lh, rh); got {len(pair)}")
    if cortex == "auto":
        cortex = "mask" if template == "fslr32k" and surface_files is None else "labels"
    if cortex not in ("mask", "labels"):
        raise ValueError(f"cortex must be 'auto', 'mask' or 'labels'; got {cortex!r}")
    hemis: list[HemisphereHarmonics] = []
    label_sets: list[SurfaceLabels] = []
    for i, hemi in enumerate(HEMISPHERES):
        surf = (
            read_surface_file(surface_files[i])
            if surface_files is not None
            else load_template_surface(template, hemi)
        )
        n = surf.vertices.shape[0]
        if label_files is not None:
            labels = read_label_file(label_files[i], n_vertices=n)
        else:
            if atlas is None:
                raise ValueError("give an atlas name or label_files")
            labels = load_template_labels(atlas, template, hemi)
        mask = template_cortex_mask(template, hemi) if cortex == "mask" else None
        if mask is not None and mask.shape != (n,):
            raise ValueError(f"the {template} cortex mask does not fit {surf.name}")
        logger.info("%s: %d vertices, cortex=%s", surf.name, n, cortex)
        hemis.append(hemisphere_harmonics(surf, labels, n_modes, cortex=mask, **eig_kwargs))
        label_sets.append(labels)
    names = roi_names_for(None if label_files is not None else atlas, hemis, label_sets)
    return harmonics_table(hemis, names), hemis


# --------------------------------------------------------------------------- QC figure

#: hemi -> views: (name, direction from the brain to the viewer, screen-x axis)
_VIEWS = {
    "lh": (
        ("lateral", (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
        ("medial", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    ),
    "rh": (
        ("lateral", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
        ("medial", (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    ),
}


#: Anchors of the diverging colour map (blue - white - red), at -1, -0.5, 0, 0.5, 1.
_DIVERGING = np.array(
    [
        [33, 102, 172],
        [146, 197, 222],
        [247, 247, 247],
        [244, 165, 130],
        [178, 24, 43],
    ],
    dtype=np.float64,
)
_NAN_RGB = (204, 204, 204)
_PANEL_PX = (240, 170)  # width, height of one view
_TITLE_PX = 16


def _diverging(x: np.ndarray) -> np.ndarray:
    """RGB (0-255 floats) of values in [-1, 1], linear between the anchors."""
    pos = (np.clip(x, -1.0, 1.0) + 1.0) * 2.0  # 0 .. 4
    lo = np.minimum(pos.astype(int), 3)
    frac = (pos - lo)[:, None]
    return _DIVERGING[lo] * (1.0 - frac) + _DIVERGING[lo + 1] * frac


def render_view(
    surface: Surface,
    values: np.ndarray,
    view: tuple,
    vmax: float,
    size: tuple[int, int] = _PANEL_PX,
) -> np.ndarray:
    """Orthographic rendering of one view of a surface, coloured by vertex values.

    Each face is drawn as its centroid, its corners and its edge midpoints, splatted
    onto 2 x 2 pixels, the nearest face winning each pixel (a z-buffer), and shaded
    by how squarely it faces the viewer. Values are face means on a blue-white-red
    scale from ``-vmax`` to ``vmax``; faces with a NaN value are grey.

    Parameters
    ----------
    surface : Surface
    values : ndarray of shape (n_vertices,)
    view : (name, direction from the brain to the viewer, screen-x axis)
    vmax : float
    size : (width, height) in pixels

    Returns
    -------
    ndarray of shape (height, width, 3), uint8 (white background)
    """
    _name, toward, right = view
    toward = np.asarray(toward, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    up = np.cross(toward, right)
    v, f = surface.vertices.astype(np.float64), surface.faces
    corners = v[f]  # (F, 3, 3)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    shade = 0.55 + 0.45 * np.abs(normals @ toward)
    face_val = values[f].mean(axis=1)
    rgb = np.empty((len(f), 3))
    bad = ~np.isfinite(face_val)
    rgb[~bad] = _diverging(face_val[~bad] / (vmax or 1.0))
    rgb[bad] = _NAN_RGB
    rgb *= shade[:, None]
    # Sample points per face: centroid, corners, edge midpoints (7 per face).
    samples = np.concatenate(
        [
            corners.mean(axis=1, keepdims=True),
            corners,
            (corners + np.roll(corners, -1, axis=1)) / 2.0,
        ],
        axis=1,
    ).reshape(-1, 3)
    owner = np.repeat(np.arange(len(f)), 7)
    sx, sy, depth = samples @ right, samples @ up, samples @ toward
    width, height = size
    span_x = np.ptp(v @ right) or 1.0
    span_y = np.ptp(v @ up) or 1.0
    scale = min((width - 4) / span_x, (height - 4) / span_y)
    col = ((sx - (v @ right).min()) * scale + (width - span_x * scale) / 2).astype(np.int64)
    row = ((v @ up).max() - sy) * scale + (height - span_y * scale) / 2
    row = row.astype(np.int64)
    pix, own, dep = [], [], []
    for dr in (0, 1):
        for dc in (0, 1):
            r, c = row + dr, col + dc
            ok = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            pix.append(r[ok] * width + c[ok])
            own.append(owner[ok])
            dep.append(depth[ok])
    pix_a, own_a, dep_a = np.concatenate(pix), np.concatenate(own), np.concatenate(dep)
    order = np.lexsort((-dep_a, pix_a))  # by pixel, nearest (largest depth) first
    pix_a, own_a = pix_a[order], own_a[order]
    first = np.ones(len(pix_a), dtype=bool)
    first[1:] = pix_a[1:] != pix_a[:-1]
    image = np.full((height * width, 3), 255, dtype=np.uint8)
    image[pix_a[first]] = np.clip(rgb[own_a[first]], 0, 255).astype(np.uint8)
    return image.reshape(height, width, 3)


def plot_harmonics_qc(
    hemis: Sequence[HemisphereHarmonics], path: PathLike, modes: Sequence[int] = (1, 2, 3, 4)
) -> Path:
    """QC figure: the first modes on the surface, lateral and medial, both hemispheres.

    Drawn with numpy and Pillow (:func:`render_view`); each panel is titled with the
    mode, hemisphere, view and eigenvalue, and each mode has its own symmetric colour
    scale (blue negative, red positive).

    Parameters
    ----------
    hemis : (lh, rh) HemisphereHarmonics
    path : path-like
        PNG, written atomically.
    modes : sequence of int
        1-based mode numbers to show, one row each.
    """
    from PIL import Image, ImageDraw, ImageFont

    width, height = _PANEL_PX
    row_px = height + _TITLE_PX
    canvas = np.full((row_px * len(modes), 4 * width, 3), 255, dtype=np.uint8)
    titles: list[tuple[tuple[int, int], str]] = []
    for r, mode in enumerate(modes):
        for h_i, (hemi, h) in enumerate(zip(HEMISPHERES, hemis, strict=True)):
            vals = h.vertex_modes(np.float64)[:, mode - 1]
            vmax = float(np.nanmax(np.abs(vals))) or 1.0
            for v_i, view in enumerate(_VIEWS[hemi]):
                c = 2 * h_i + v_i
                top = r * row_px + _TITLE_PX
                canvas[top : top + height, c * width : (c + 1) * width] = render_view(
                    h.surface, vals, view, vmax
                )
                title = (
                    f"mode {mode} {hemi.upper()} {view[0]}  "
                    f"lambda={h.modes.eigenvalues[mode - 1]:.2e}"
                )
                titles.append(((c * width + width // 2, r * row_px + 2), title))
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=10)
    for xy, text in titles:
        draw.text(xy, text, fill="black", font=font, anchor="ma")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


# ------------------------------------------------------------------------ output


def write_table(table: pd.DataFrame, path: PathLike) -> Path:
    """Write the ROI x K table: ``.csv`` comma-separated, anything else TSV."""
    p = Path(path)
    if p.suffix == ".csv":
        return write_text(p, table.to_csv(lineterminator="\n", float_format="%.12g"))
    return write_tsv(p, table.reset_index(), float_format="%.12g")
