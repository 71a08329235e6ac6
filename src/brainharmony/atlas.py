"""Schaefer-400 (7 networks) volumetric atlas in MNI space, rebuilt offline.

This is **not** the official Schaefer-2018 volume (the functional stage uses that one
when it is found offline, see :mod:`brainharmony.func.atlas_lookup`). No installable
package ships the official 400-parcel volume, so it is rebuilt here from sources that
do ship offline:

* the Schaefer-400 surface labels on the fsLR-32k Conte69 surfaces from brainspace
  (``load_parcellation('schaefer', 400)``: one label per vertex, 0 = medial wall,
  left hemisphere 1-200, right hemisphere 201-400, Schaefer "order" numbering) and
  the Conte69 midthickness-like surfaces themselves (vertex coordinates in MNI mm);
* a 1 mm grey-matter probability map of the target template: nilearn's ICBM152 2009a
  asymmetric map (the default, :data:`SPACE`) or, for another template space, that
  template's TemplateFlow ``label-GM_probseg`` file (``grey_matter=``).

Method: every 1 mm template voxel whose grey-matter probability exceeds
``GM_THRESHOLD`` takes the label of its nearest surface vertex when that vertex is
closer than ``MAX_DISTANCE_MM`` (a medial-wall vertex leaves the voxel unlabelled,
which keeps hippocampus, thalamus and basal ganglia out). Coarser grids take, per
voxel, the label with the largest grey-matter-weighted share of the 1 mm voxels whose
centres fall inside it, provided labelled grey matter fills at least
``MIN_FILL_FRACTION`` of the voxel. A parcel that loses every voxel on a coarse grid
gets back the voxel where its share is largest, so all 400 labels are always present.

See ``docs/atlas.md`` for the limitations (the surfaces' MNI space and the grey-matter
template's differ slightly; label names omit the official sub-region parts).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.io import InputDataError, write_nifti

logger = logging.getLogger(__name__)

#: Network names of the 7-network solution, in Schaefer order.
NETWORKS: tuple[str, ...] = (
    "Vis",
    "SomMot",
    "DorsAttn",
    "SalVentAttn",
    "Limbic",
    "Cont",
    "Default",
)

#: Parcels per network and hemisphere in the Schaefer-2018 400-parcel, 7-network
#: order (LH 1-200, RH 201-400; each network a contiguous run).
NETWORK_COUNTS: dict[str, tuple[int, ...]] = {
    "LH": (31, 37, 23, 22, 13, 22, 52),
    "RH": (30, 40, 23, 25, 13, 30, 39),
}

N_PARCELS = 400
#: Grey-matter probability above which a template voxel may carry a label.
GM_THRESHOLD = 0.3
#: Largest distance (mm) from a voxel centre to its nearest surface vertex.
MAX_DISTANCE_MM = 4.0
#: Smallest labelled grey-matter fill of a coarse voxel (fraction of its volume).
MIN_FILL_FRACTION = 0.25
#: Space of the output grid with nilearn's grey matter (templateflow naming).
SPACE = "MNI152NLin2009aAsym"
#: Atlas and desc entities of the rebuild's file names: never the official
#: ``atlas-Schaefer2018_desc-400Parcels7Networks``, so the two cannot be mistaken.
REBUILD_ATLAS = "Schaefer400rebuilt"
REBUILD_DESC = "7Networks"
#: Corner of nilearn's template grids (world mm of voxel 0,0,0) and the 1 mm shape.
_ORIGIN = np.array([-98.0, -134.0, -72.0])
_SHAPE_1MM = (197, 233, 189)
_ALGORITHM_VERSION = "1"


def schaefer400_labels() -> pd.DataFrame:
    """The 400 parcel labels in Schaefer order.

    Returns
    -------
    pandas.DataFrame
        400 rows with columns ``index`` (1-400), ``name`` (e.g.
        ``7Networks_LH_Vis_1``, numbered within network and hemisphere),
        ``network`` (one of :data:`NETWORKS`) and ``hemisphere`` (``LH`` or ``RH``).
    """
    rows: list[dict[str, Any]] = []
    index = 1
    for hemi in ("LH", "RH"):
        for network, count in zip(NETWORKS, NETWORK_COUNTS[hemi], strict=True):
            for k in range(1, count + 1):
                rows.append(
                    {
                        "index": index,
                        "name": f"7Networks_{hemi}_{network}_{k}",
                        "network": network,
                        "hemisphere": hemi,
                    }
                )
                index += 1
    return pd.DataFrame(rows, columns=["index", "name", "network", "hemisphere"])


@functools.lru_cache(maxsize=1)
def _surface() -> tuple[np.ndarray, np.ndarray]:
    """Conte69 vertex coordinates (64984, 3) and Schaefer-400 labels (64984,)."""
    from brainspace.datasets import load_conte69, load_parcellation

    lh, rh = load_conte69()
    points = np.vstack([np.asarray(lh.points), np.asarray(rh.points)]).astype(np.float64)
    labels = np.concatenate(load_parcellation("schaefer", N_PARCELS)).astype(np.int64)
    if labels.shape != (points.shape[0],):
        raise RuntimeError(
            f"brainspace labels ({labels.shape}) do not match the surface ({points.shape})"
        )
    present = np.unique(labels)
    if present[0] != 0 or present[-1] != N_PARCELS or present.size != N_PARCELS + 1:
        raise RuntimeError("brainspace Schaefer-400 labels are not 0..400 as expected")
    return points, labels


def schaefer400_centroids() -> pd.DataFrame:
    """Parcel centroids on the Conte69 surface (mean vertex position, MNI mm).

    Returns
    -------
    pandas.DataFrame
        400 rows: the columns of :func:`schaefer400_labels` plus ``x``, ``y``, ``z``.
    """
    points, labels = _surface()
    counts = np.bincount(labels, minlength=N_PARCELS + 1)[1:]
    sums = np.stack(
        [np.bincount(labels, weights=points[:, a], minlength=N_PARCELS + 1)[1:] for a in range(3)],
        axis=1,
    )
    centroids = sums / counts[:, None]
    table = schaefer400_labels()
    table[["x", "y", "z"]] = centroids
    return table


def grid_affine(
    resolution_mm: float, grey_matter: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the atlas grid at ``resolution_mm``.

    The grid shares its corner with the 1 mm grey-matter map: nilearn's MNI152
    templates by default (so at 1 and 2 mm it equals their grids exactly), else the
    ``grey_matter`` file's (a TemplateFlow ``res-01`` grid, so at 2 mm it equals that
    template's ``res-02`` grid).

    Parameters
    ----------
    resolution_mm : float
    grey_matter : path-like, optional
        1 mm grey-matter probability map of another template (see
        :func:`schaefer400_volume`).

    Returns
    -------
    affine : ndarray of shape (4, 4)
    shape : tuple of 3 int
    """
    _check_resolution(resolution_mm)
    origin, shape_1mm = _grid_1mm(None if grey_matter is None else str(grey_matter))
    affine = np.diag([resolution_mm, resolution_mm, resolution_mm, 1.0])
    affine[:3, 3] = origin
    shape = tuple(int(np.ceil(n / resolution_mm - 1e-9)) for n in shape_1mm)
    return affine, shape  # type: ignore[return-value]


def _canonical_1mm(path: str) -> tuple[np.ndarray, Any]:
    """(origin (3,), RAS image) of a 1 mm grey-matter file; refuses other grids.

    An image already in RAS order is returned as loaded (its data is not read).
    """
    import nibabel as nib

    if not Path(path).is_file():
        raise InputDataError(path, "grey-matter probability map not found")
    image = nib.as_closest_canonical(nib.load(path))
    if image.ndim != 3 or not np.allclose(image.affine[:3, :3], np.eye(3), atol=1e-4):
        raise InputDataError(
            path,
            f"expected a 3-D 1 mm grey-matter map on an axis-aligned grid, got shape "
            f"{image.shape} and affine {image.affine[:3, :3].tolist()}",
        )
    return np.asarray(image.affine[:3, 3], dtype=np.float64), image


@functools.lru_cache(maxsize=8)
def _grid_1mm(grey_matter: str | None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Corner (world mm of voxel 0,0,0) and shape of the 1 mm grey-matter grid."""
    if grey_matter is None:
        return _ORIGIN, _SHAPE_1MM
    origin, image = _canonical_1mm(grey_matter)
    return origin, tuple(int(n) for n in image.shape[:3])  # type: ignore[return-value]


def _check_resolution(resolution_mm: float) -> None:
    if not isinstance(resolution_mm, int | float) or not np.isfinite(resolution_mm):
        raise ValueError(f"resolution_mm must be a finite number, got {resolution_mm!r}")
    if not 1.0 <= float(resolution_mm) <= 8.0:
        raise ValueError(f"resolution_mm must be between 1 and 8 mm, got {resolution_mm!r}")


@functools.lru_cache(maxsize=2)
def _labels_1mm(grey_matter: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1 mm labelled voxels: (ijk (n, 3) int, label (n,) int, gm weight (n,) float)."""
    from scipy.spatial import cKDTree

    if grey_matter is None:
        from nilearn.datasets import load_mni152_gm_template

        gm_img = load_mni152_gm_template(resolution=1)
        gm = np.asarray(gm_img.get_fdata(dtype=np.float32))
        if gm.shape != _SHAPE_1MM or not np.allclose(gm_img.affine[:3, 3], _ORIGIN):
            raise RuntimeError(
                f"unexpected nilearn GM template grid {gm.shape} / {gm_img.affine[:3, 3]}"
            )
        origin = _ORIGIN
    else:
        origin, gm_img = _canonical_1mm(grey_matter)
        gm = np.asarray(gm_img.get_fdata(dtype=np.float32))
    points, vertex_labels = _surface()
    ijk = np.argwhere(gm > GM_THRESHOLD)
    xyz = ijk.astype(np.float64) + origin  # 1 mm grid: world = index + origin
    dist, nearest = cKDTree(points).query(xyz, k=1, distance_upper_bound=MAX_DISTANCE_MM)
    ok = np.isfinite(dist)
    label = np.zeros(len(ijk), dtype=np.int64)
    label[ok] = vertex_labels[nearest[ok]]
    keep = label > 0
    logger.info("Schaefer-400 at 1 mm: %d of %d GM voxels labelled", int(keep.sum()), len(ijk))
    weights = gm[tuple(ijk[keep].T)].astype(np.float64)
    return ijk[keep], label[keep], weights


def _vote(resolution_mm: float, grey_matter: str | None = None) -> np.ndarray:
    """Label volume (int16) on the grid of :func:`grid_affine`."""
    _, shape = grid_affine(resolution_mm, grey_matter)
    ijk1, label1, weight1 = _labels_1mm(grey_matter)
    if resolution_mm == 1.0:
        volume = np.zeros(shape, dtype=np.int16)
        volume[tuple(ijk1.T)] = label1
        return volume
    # Target voxel of each 1 mm voxel centre (grids share the corner voxel centre).
    # 1 mm voxel i sits at origin + i mm; coarse voxel j spans origin + j*r +- r/2.
    target_ijk = np.floor(ijk1 / resolution_mm + 0.5)
    target_ijk = np.clip(target_ijk.astype(np.int64), 0, np.array(shape) - 1)
    target = np.ravel_multi_index(tuple(target_ijk.T), shape)
    key = target * (N_PARCELS + 1) + label1
    uniq, inverse = np.unique(key, return_inverse=True)
    score = np.bincount(inverse, weights=weight1)
    u_target = uniq // (N_PARCELS + 1)
    u_label = uniq % (N_PARCELS + 1)
    fill = np.bincount(np.searchsorted(np.unique(u_target), u_target), weights=score)
    # Best label per target voxel: sort by target, then by descending score, then label.
    order = np.lexsort((u_label, -score, u_target))
    first = np.ones(order.size, dtype=bool)
    first[1:] = u_target[order][1:] != u_target[order][:-1]
    winners = order[first]
    targets = u_target[winners]
    volume_fill = fill  # one entry per unique target, same order as np.unique(u_target)
    min_fill = MIN_FILL_FRACTION * resolution_mm**3
    keep = volume_fill >= min_fill
    flat = np.zeros(int(np.prod(shape)), dtype=np.int16)
    flat[targets[keep]] = u_label[winners][keep]
    # Guarantee every parcel: give a missing parcel its best voxel when the current
    # owner keeps at least two voxels.
    counts = np.bincount(flat, minlength=N_PARCELS + 1)
    missing = np.flatnonzero(counts[1:] == 0) + 1
    for lab in missing:
        rows = np.flatnonzero(u_label == lab)
        for row in rows[np.argsort(-score[rows], kind="stable")]:
            owner = int(flat[u_target[row]])
            if owner == 0 or counts[owner] > 2:
                flat[u_target[row]] = lab
                counts[owner] -= 1
                counts[lab] += 1
                break
    if missing.size:
        logger.info(
            "Schaefer-400 at %.3g mm: %d parcels restored to their best voxel",
            resolution_mm,
            missing.size,
        )
    return flat.reshape(shape)


def _check_space(space: str, grey_matter: str | os.PathLike[str] | None) -> str | None:
    """The grey-matter path as a string; refuses a space without its grey-matter map."""
    if not isinstance(space, str) or not space:
        raise ValueError(f"space must be a template name, got {space!r}")
    if grey_matter is None and space != SPACE:
        raise ValueError(
            f"the rebuild in space {space!r} needs that template's 1 mm grey-matter "
            f"probability map (grey_matter=..., e.g. TemplateFlow's tpl-{space}_res-01_"
            f"label-GM_probseg.nii.gz); only {SPACE}'s ships offline (nilearn)"
        )
    return None if grey_matter is None else str(grey_matter)


def schaefer400_provenance(
    resolution_mm: float = 2.0,
    *,
    space: str = SPACE,
    grey_matter: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Where the atlas of :func:`schaefer400_volume` comes from and how it is built.

    Parameters
    ----------
    resolution_mm : float
    space, grey_matter
        As for :func:`schaefer400_volume`.

    Returns
    -------
    dict
        JSON-serialisable description (sources, space, method, parameters). ``Official``
        is false: this is a rebuild, not the published Schaefer-2018 volume.
    """
    import brainspace

    gm = _check_space(space, grey_matter)
    if gm is None:
        import nilearn

        grid = "Grid of nilearn's ICBM152 2009a asymmetric template (corner at -98, -134, -72 mm)."
        gm_source = (
            f"nilearn {nilearn.__version__}: load_mni152_gm_template(resolution=1), "
            "mni_icbm152_gm_tal_nlin_sym_09a"
        )
    else:
        origin, _ = _grid_1mm(gm)
        corner = ", ".join(f"{v:g}" for v in origin)
        grid = f"Grid of the {space} grey-matter map {Path(gm).name} (corner at {corner} mm)."
        gm_source = f"{gm} (1 mm grey-matter probability map of {space})"
    return {
        "Name": "Schaefer400 7 networks, offline rebuild from surface labels",
        "Official": False,
        "NotOfficial": (
            "Rebuilt here from the Schaefer-2018 surface labels; this is NOT the "
            "published Schaefer2018_400Parcels_7Networks volume (boundaries differ)."
        ),
        "Space": space,
        "SpaceDescription": (
            f"{grid} The surface labels come from fsLR-32k Conte69 surfaces in MNI152 "
            "space (HCP; FSL's MNI152 nonlinear 6th generation), so the two MNI spaces "
            "differ by up to a few mm."
        ),
        "ResolutionMM": float(resolution_mm),
        "Sources": {
            "surface_labels": (
                f"brainspace {brainspace.__version__}: "
                "datasets/parcellations/schaefer_400_conte69.csv "
                "(Schaefer et al. 2018, Cereb Cortex 28:3095; CBIG, MIT licence)"
            ),
            "surfaces": f"brainspace {brainspace.__version__}: load_conte69() fsLR-32k",
            "grey_matter": gm_source,
        },
        "Method": (
            "1 mm voxels with GM probability > GM_THRESHOLD take the label of the "
            "nearest Conte69 vertex within MAX_DISTANCE_MM (medial-wall vertex -> "
            "unlabelled); coarser grids: GM-weighted majority of the 1 mm voxels whose "
            "centres fall in each voxel, kept if labelled GM fills >= MIN_FILL_FRACTION "
            "of the voxel; parcels lost on a coarse grid get back their best voxel."
        ),
        "Parameters": {
            "GM_THRESHOLD": GM_THRESHOLD,
            "MAX_DISTANCE_MM": MAX_DISTANCE_MM,
            "MIN_FILL_FRACTION": MIN_FILL_FRACTION,
            "AlgorithmVersion": _ALGORITHM_VERSION,
        },
        "LabelNames": (
            "7Networks_<LH|RH>_<network>_<n>, n counted within network and hemisphere; "
            "the official names' sub-region parts (e.g. DorsAttn_Post) are not "
            "available offline and are omitted."
        ),
        "Numbering": "0 background; 1-200 left hemisphere, 201-400 right (Schaefer order)",
    }


@functools.lru_cache(maxsize=8)
def _cached_volume(resolution_mm: float, grey_matter: str | None = None) -> np.ndarray:
    volume = _vote(resolution_mm, grey_matter)
    volume.setflags(write=False)
    return volume


def _cache_name(resolution_mm: float, space: str = SPACE) -> str:
    res = f"{resolution_mm:g}".replace(".", "p")
    return (
        f"tpl-{space}_res-{res}mm_atlas-{REBUILD_ATLAS}_desc-{REBUILD_DESC}"
        f"_v{_ALGORITHM_VERSION}_dseg.nii.gz"
    )


def schaefer400_volume(
    resolution_mm: float = 2.0,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    space: str = SPACE,
    grey_matter: str | os.PathLike[str] | None = None,
) -> tuple[Any, pd.DataFrame]:
    """Schaefer-400 7-network label volume in MNI space (offline rebuild).

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size in mm (1 to 8). The grid shares its corner with the
        grey-matter map's 1 mm grid (:func:`grid_affine`).
    cache_dir : path-like, optional
        Folder for a file cache of the built volume (read if present, else written).
        The in-process cache (``functools.lru_cache``) is always used.
    space : str
        Template space of the result (default :data:`SPACE`, nilearn's template).
    grey_matter : path-like, optional
        1 mm grey-matter probability map of ``space`` on an axis-aligned grid (e.g.
        TemplateFlow's ``tpl-<space>_res-01_label-GM_probseg.nii.gz``); required for
        any space but :data:`SPACE`, whose map nilearn ships.

    Returns
    -------
    image : nibabel.Nifti1Image
        int16 labels of shape :func:`grid_affine` ``[1]``: 0 background, 1-400.
    labels : pandas.DataFrame
        :func:`schaefer400_labels` (columns ``index, name, network, hemisphere``).

    Raises
    ------
    ValueError
        A resolution out of range, or a space other than :data:`SPACE` without
        ``grey_matter``.
    """
    import nibabel as nib

    _check_resolution(resolution_mm)
    gm = _check_space(space, grey_matter)
    resolution_mm = float(resolution_mm)
    affine, shape = grid_affine(resolution_mm, gm)
    data: np.ndarray | None = None
    cache_file = Path(cache_dir) / _cache_name(resolution_mm, space) if cache_dir else None
    if cache_file is not None and cache_file.exists():
        cached = nib.load(cache_file)
        if cached.shape == shape and np.allclose(cached.affine, affine):
            data = np.asarray(cached.dataobj, dtype=np.int16)
        else:
            logger.warning("ignoring atlas cache %s: grid does not match", cache_file)
    if data is None:
        data = np.array(_cached_volume(resolution_mm, gm))
    image = _make_image(data, affine)
    if cache_file is not None and not cache_file.exists():
        write_nifti(cache_file, image)
    return image, schaefer400_labels()


def _make_image(data: np.ndarray, affine: np.ndarray) -> Any:
    import nibabel as nib

    image = nib.Nifti1Image(data.astype(np.int16), affine)
    image.header.set_data_dtype(np.int16)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=4)  # MNI152
    image.header.set_sform(affine, code=4)
    image.header["descrip"] = b"Schaefer400 7Networks offline rebuild"
    image.header["intent_name"] = b"Label"
    return image
