"""The Schaefer-400 (7 networks) atlas as a resource file set.

Writes ``tpl-<space>_res-<r>_atlas-Schaefer400_desc-7n_dseg.nii.gz`` (int16 labels,
0 background, 1-400 in Schaefer order), the ``.tsv`` label table (``index, name,
network, hemisphere``) and a ``.json`` sidecar with the provenance; beside them, on the
same grid, the tissue masks every native run needs (``..._desc-tissues_mask.nii.gz``:
brain, grey matter, white matter and CSF as four uint8 volumes, see
:func:`brainharmony.func.confounds.tissue_masks`), computed here once instead of in
every run.

Sources
-------
* ``offline`` (default): :func:`brainharmony.atlas.schaefer400_volume`, rebuilt from
  packaged sources (brainspace surface labels + nilearn grey matter), no network.
* ``nilearn``: ``nilearn.datasets.fetch_atlas_schaefer_2018`` (downloads the official
  volume once into nilearn's data folder, or finds it there), resampled to the
  working grid by nearest neighbour. Use it only where network access is allowed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.io import PathLike, provenance, write_json, write_nifti, write_tsv

logger = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("offline", "nilearn")
TISSUES: tuple[str, ...] = ("brain", "gm", "wm", "csf")


@dataclass(frozen=True)
class AtlasFiles:
    """Paths of the atlas resource files."""

    image: Path
    labels: Path
    sidecar: Path
    tissues: Path
    tissues_sidecar: Path


def atlas_files(out_dir: PathLike, resolution_mm: float, space: str | None = None) -> AtlasFiles:
    """Resource file names for a resolution."""
    from brainharmony.func.naming import ATLAS_ENTITY, res_label, template_space

    space = space or template_space()
    tpl = f"tpl-{space}_res-{res_label(resolution_mm)}"
    stem = f"{tpl}_atlas-{ATLAS_ENTITY}_desc-7n"
    out = Path(out_dir)
    return AtlasFiles(
        out / f"{stem}_dseg.nii.gz",
        out / f"{stem}_dseg.tsv",
        out / f"{stem}_dseg.json",
        out / f"{tpl}_desc-tissues_mask.nii.gz",
        out / f"{tpl}_desc-tissues_mask.json",
    )


def _from_nilearn(resolution_mm: float) -> tuple[Any, pd.DataFrame, dict[str, Any]]:
    """The official Schaefer volume through nilearn's fetcher, on the atlas grid."""
    import nibabel as nib
    from nilearn.datasets import fetch_atlas_schaefer_2018

    from brainharmony.atlas import grid_affine
    from brainharmony.func.parcellate import resample_labels

    fetched = fetch_atlas_schaefer_2018(
        n_rois=400, yeo_networks=7, resolution_mm=1 if resolution_mm < 2 else 2
    )
    img = fetched["maps"] if not isinstance(fetched["maps"], str) else nib.load(fetched["maps"])
    affine, shape = grid_affine(resolution_mm)
    data = resample_labels(np.asarray(img.dataobj), img.affine, affine, shape)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in fetched["labels"]]
    names = [n for n in names if n.lower() != "background"]
    if len(names) != 400:
        raise RuntimeError(f"nilearn returned {len(names)} Schaefer labels, expected 400")
    rows = []
    for i, name in enumerate(names, start=1):
        m = re.match(r"7Networks_(LH|RH)_([A-Za-z]+)", name)
        rows.append(
            {
                "index": i,
                "name": name,
                "network": m.group(2) if m else "n/a",
                "hemisphere": m.group(1) if m else "n/a",
            }
        )
    image = nib.Nifti1Image(data.astype(np.int16), affine)
    image.header.set_data_dtype(np.int16)
    prov = {
        "Name": "Schaefer2018_400Parcels_7Networks (nilearn fetcher)",
        "Source": "nilearn.datasets.fetch_atlas_schaefer_2018(n_rois=400, yeo_networks=7)",
        "SpaceDescription": (
            "official volume in FSL MNI152 space, resampled by nearest neighbour to the "
            "working grid"
        ),
        "ResolutionMM": float(resolution_mm),
    }
    return image, pd.DataFrame(rows), prov


def build_atlas(
    out_dir: PathLike,
    resolution_mm: float,
    *,
    source: str = "offline",
    space: str | None = None,
) -> AtlasFiles:
    """Write the atlas resource files.

    Parameters
    ----------
    out_dir : path-like
        Folder of the resource (``resources/atlas``).
    resolution_mm : float
        Working-grid voxel size (the grid of :func:`brainharmony.atlas.grid_affine`).
    source : {"offline", "nilearn"}
    space : str, optional
        Template space entity (default the anatomy stage's template).

    Returns
    -------
    AtlasFiles
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    files = atlas_files(out_dir, resolution_mm, space)
    if source == "offline":
        from brainharmony.atlas import schaefer400_provenance, schaefer400_volume

        image, labels = schaefer400_volume(float(resolution_mm))
        prov = schaefer400_provenance(float(resolution_mm))
    else:
        image, labels, prov = _from_nilearn(float(resolution_mm))
    data = np.asarray(image.dataobj)
    present = np.unique(data[data > 0])
    if present.size != 400 or present[0] != 1 or present[-1] != 400:
        raise RuntimeError(f"atlas has {present.size} labels, expected 1..400")
    counts = np.bincount(data.reshape(-1).astype(np.int64), minlength=401)[1:]
    labels = labels.copy()
    labels["voxels"] = counts
    write_nifti(files.image, image)
    write_tsv(files.labels, labels)
    write_json(
        files.sidecar,
        {
            "Atlas": prov,
            "Space": files.image.name.split("_")[0].removeprefix("tpl-"),
            "ResolutionMM": float(resolution_mm),
            "NumberOfParcels": 400,
            "VoxelsPerParcel": {
                "min": int(counts.min()),
                "median": float(np.median(counts)),
                "max": int(counts.max()),
            },
            "Provenance": provenance(
                step="func atlas",
                parameters={"source": source, "resolution_mm": float(resolution_mm)},
            ),
        },
    )
    write_tissue_masks(files, image.affine, image.shape[:3])
    logger.info("atlas written: %s (%s)", files.image, source)
    return files


def write_tissue_masks(files: AtlasFiles, affine: Any, shape: tuple[int, ...]) -> None:
    """Write the brain/GM/WM/CSF masks of the atlas grid (one uint8 volume each)."""
    import nibabel as nib

    from brainharmony.func.confounds import tissue_masks

    masks, report = tissue_masks(np.asarray(affine, dtype=np.float64), tuple(shape))
    stack = np.stack([masks[name] for name in TISSUES], axis=-1).astype(np.uint8)
    image = nib.Nifti1Image(stack, np.asarray(affine, dtype=np.float64))
    image.header.set_data_dtype(np.uint8)
    write_nifti(files.tissues, image)
    write_json(
        files.tissues_sidecar,
        {
            "Volumes": list(TISSUES),
            "Tissues": report,
            "Provenance": provenance(step="func atlas (tissue masks)"),
        },
    )


def read_tissue_masks(path: PathLike, atlas_image: Any) -> tuple[dict[str, np.ndarray], dict]:
    """Load the tissue masks written by :func:`build_atlas` for ``atlas_image``'s grid.

    Returns the masks (``brain``, ``gm``, ``wm``, ``csf``; bool arrays of the atlas
    shape) and the report :func:`~brainharmony.func.confounds.tissue_masks` gave.
    A file that is missing, unreadable or on another grid is an
    :class:`~brainharmony.io.InputDataError` naming it.
    """
    from brainharmony.io import InputDataError, read_resource

    path = Path(path)
    image, data, meta = read_resource(path, "tissue-mask resource", "run the atlas rule")
    grid = tuple(int(n) for n in atlas_image.shape[:3])
    if data.shape != (*grid, len(TISSUES)) or meta.get("Volumes") != list(TISSUES):
        raise InputDataError(
            path,
            f"shape {data.shape} and volumes {meta.get('Volumes')} do not match the atlas "
            f"grid {grid} with volumes {list(TISSUES)}",
        )
    if not np.allclose(image.affine, atlas_image.affine, atol=1e-4):
        raise InputDataError(path, "affine differs from the atlas grid's")
    masks = {name: data[..., i] > 0 for i, name in enumerate(TISSUES)}
    return masks, dict(meta.get("Tissues", {}))


def read_atlas(image_path: PathLike, labels_path: PathLike) -> tuple[Any, pd.DataFrame]:
    """Load the atlas resource: (label image, label table)."""
    import nibabel as nib

    from brainharmony.io import InputDataError

    image_path, labels_path = Path(image_path), Path(labels_path)
    for p in (image_path, labels_path):
        if not p.exists():
            raise InputDataError(p, "atlas resource file not found (run the atlas rule)")
    image = nib.load(image_path)
    table = pd.read_csv(labels_path, sep="\t")
    missing = {"index", "name", "network", "hemisphere"} - set(table.columns)
    if missing:
        raise InputDataError(labels_path, f"label table lacks columns {sorted(missing)}")
    return image, table
