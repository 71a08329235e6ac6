"""The Schaefer-400 (7 networks) atlas as a resource file set.

Writes, for the atlas :func:`brainharmony.func.atlas_lookup.resolve_atlas` chose, the
label volume (int16, 0 background, 1-400 in Schaefer order), its ``.tsv`` label table
(``index, name, network, hemisphere, voxels``) and a ``.json`` sidecar with the
provenance; beside them, on the same grid, the tissue masks every native run needs
(``..._desc-tissues_mask.nii.gz``: brain, grey matter, white matter and CSF as four
uint8 volumes, see :func:`brainharmony.func.confounds.tissue_masks`), computed here
once instead of in every run.

Names (the two can never be mistaken for each other):

* official volume: ``tpl-<space>_res-<r>_atlas-Schaefer2018_desc-400Parcels7Networks
  _dseg.nii.gz`` (TemplateFlow's entities), a copy of the file found (re-oriented to
  RAS when needed, never resampled);
* offline rebuild: ``tpl-<space>_res-<r>_atlas-Schaefer400rebuilt_desc-7Networks
  _dseg.nii.gz`` (:func:`brainharmony.atlas.schaefer400_volume`), whose sidecar says
  how it was built and that it is not the official volume.

The sidecar's ``Identity`` and ``AtlasSource`` (``official`` / ``rebuild``) are what
every parcel-series sidecar repeats as ``Atlas`` and ``AtlasSource``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.atlas import (
    N_PARCELS,
    NETWORK_COUNTS,
    NETWORKS,
    REBUILD_ATLAS,
    REBUILD_DESC,
    schaefer400_provenance,
    schaefer400_volume,
)
from brainharmony.func.atlas_lookup import FSL_MNI152, OFFICIAL_ATLAS, OFFICIAL_DESC, resolve_atlas
from brainharmony.func.confounds import tissue_masks
from brainharmony.func.naming import res_label, template_space
from brainharmony.io import (
    InputDataError,
    PathLike,
    provenance,
    read_resource,
    write_json,
    write_nifti,
    write_tsv,
)

logger = logging.getLogger(__name__)

TISSUES: tuple[str, ...] = ("brain", "gm", "wm", "csf")
_NAME = re.compile(r"^7Networks_(LH|RH)_([A-Za-z]+)(_|$)")


@dataclass(frozen=True)
class AtlasFiles:
    """Paths of the atlas resource files."""

    image: Path
    labels: Path
    sidecar: Path
    tissues: Path
    tissues_sidecar: Path


def atlas_entities(source: str) -> tuple[str, str]:
    """``(atlas, desc)`` entities of the resource name for ``official`` or ``rebuild``."""

    if source == "official":
        return OFFICIAL_ATLAS, OFFICIAL_DESC
    if source == "rebuild":
        return REBUILD_ATLAS, REBUILD_DESC
    raise ValueError(f"source must be 'official' or 'rebuild', got {source!r}")


def atlas_files(
    out_dir: PathLike,
    resolution_mm: float,
    space: str | None = None,
    source: str = "rebuild",
) -> AtlasFiles:
    """Resource file names for a space, resolution and source (``official``/``rebuild``)."""

    space = space or template_space()
    atlas, desc = atlas_entities(source)
    tpl = f"tpl-{space}_res-{res_label(resolution_mm)}"
    stem = f"{tpl}_atlas-{atlas}_desc-{desc}"
    out = Path(out_dir)
    return AtlasFiles(
        out / f"{stem}_dseg.nii.gz",
        out / f"{stem}_dseg.tsv",
        out / f"{stem}_dseg.json",
        out / f"{tpl}_desc-tissues_mask.nii.gz",
        out / f"{tpl}_desc-tissues_mask.json",
    )


def read_official_labels(path: PathLike) -> pd.DataFrame:
    """The label table of an official volume (TemplateFlow ``.tsv`` or CBIG ``.txt``).

    TemplateFlow's table has a header with ``index`` and ``name``; CBIG's
    ``..._order.txt`` / ``.lut`` (what nilearn's fetcher keeps) has none: ``index name
    R G B A`` per line.

    Returns
    -------
    pandas.DataFrame
        400 rows: ``index`` (1-400), ``name`` (the official name, e.g.
        ``7Networks_LH_DorsAttn_Post_1``), ``network``, ``hemisphere``.

    Raises
    ------
    InputDataError
        Not 400 rows numbered 1-400, a name without network and hemisphere, or a
        network order other than the 400-parcel 7-network one.
    """

    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "atlas label table not found")
    first = path.read_text().lstrip().split("\n", 1)[0]
    try:
        if first[:1].isdigit():
            raw = pd.read_csv(path, sep=r"\s+", header=None, usecols=[0, 1], comment="#")
            raw.columns = ["index", "name"]
        else:
            raw = pd.read_csv(path, sep="\t")
    except (ValueError, pd.errors.ParserError) as err:
        raise InputDataError(path, f"cannot read the label table: {err}") from err
    if not {"index", "name"} <= set(raw.columns):
        raise InputDataError(path, f"label table lacks index/name columns: {list(raw.columns)}")
    raw = raw[raw["index"].astype(int) > 0].sort_values("index")
    index = raw["index"].astype(int).tolist()
    if index != list(range(1, N_PARCELS + 1)):
        raise InputDataError(path, f"expected labels 1..{N_PARCELS}, got {len(index)} rows")
    rows = []
    for i, name in zip(index, raw["name"].astype(str), strict=True):
        m = _NAME.match(name)
        if m is None or m.group(2) not in NETWORKS:
            raise InputDataError(path, f"label {i} {name!r} is not a 7-network Schaefer name")
        rows.append({"index": i, "name": name, "network": m.group(2), "hemisphere": m.group(1)})
    table = pd.DataFrame(rows, columns=["index", "name", "network", "hemisphere"])
    expected = [
        (hemi, net)
        for hemi in ("LH", "RH")
        for net, count in zip(NETWORKS, NETWORK_COUNTS[hemi], strict=True)
        for _ in range(count)
    ]
    got = list(zip(table["hemisphere"], table["network"], strict=True))
    if got != expected:
        k = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        raise InputDataError(
            path,
            f"parcel order differs from the 400-parcel 7-network order: label {k + 1} is "
            f"{'_'.join(got[k])}, expected {'_'.join(expected[k])}",
        )
    return table


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _official_image(path: Path, resolution_mm: float) -> tuple[Any, bool]:
    """The official volume as int16 in RAS order (no resampling); (image, reoriented)."""
    import nibabel as nib

    try:
        loaded = nib.load(path)
    except Exception as err:  # nibabel raises several types for damaged files
        raise InputDataError(path, f"cannot read the atlas volume: {err}") from err
    image = nib.as_closest_canonical(loaded)
    reoriented = image is not loaded
    if image.ndim != 3:
        raise InputDataError(path, f"atlas volume must be 3-D, got shape {image.shape}")
    zooms = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    if not np.allclose(zooms, resolution_mm, atol=1e-3):
        raise InputDataError(
            path, f"voxel size {zooms.round(3).tolist()} mm is not {resolution_mm:g} mm"
        )
    data = np.asarray(image.dataobj)
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise InputDataError(path, "atlas volume holds non-integer labels")
    affine = np.asarray(image.affine, dtype=np.float64)
    out = nib.Nifti1Image(data.astype(np.int16), affine)
    out.header.set_data_dtype(np.int16)
    out.header.set_xyzt_units("mm")
    out.header.set_qform(affine, code=4)
    out.header.set_sform(affine, code=4)
    out.header["intent_name"] = b"Label"
    return out, reoriented


def _official(choice: Any) -> tuple[Any, pd.DataFrame, dict[str, Any]]:
    """Image, labels and provenance of an official volume (:class:`AtlasChoice`)."""

    found = choice.official
    image, reoriented = _official_image(found.image, choice.resolution_mm)
    labels = read_official_labels(found.labels)
    space_note = {
        "templateflow": f"TemplateFlow's {found.space} grid, used as published",
        "nilearn": (
            f"CBIG's FSLMNI152 volume: FSL's MNI152 nonlinear 6th generation "
            f"template (TemplateFlow {FSL_MNI152}), used as published"
        ),
        "config": f"{found.space} as stated by the config / file name, used as given",
    }[found.origin]
    prov = {
        "Name": "Schaefer2018_400Parcels_7Networks (official volume)",
        "Official": True,
        "Origin": found.origin,
        "Description": found.describe(choice.resolution_mm),
        "SourceFile": str(found.image),
        "SourceSHA256": _sha256(found.image),
        "LabelFile": str(found.labels),
        "Space": found.space,
        "SpaceDescription": space_note
        + ("; re-oriented to RAS (axis flips, no resampling)" if reoriented else ""),
        "ResolutionMM": float(choice.resolution_mm),
        "Citation": "Schaefer et al. 2018, Cereb Cortex 28:3095 (CBIG, MIT licence)",
    }
    return image, labels, prov


def _rebuild(choice: Any) -> tuple[Any, pd.DataFrame, dict[str, Any]]:

    gm = None if choice.grey_matter is None else str(choice.grey_matter)
    image, labels = schaefer400_volume(choice.resolution_mm, space=choice.space, grey_matter=gm)
    prov = schaefer400_provenance(choice.resolution_mm, space=choice.space, grey_matter=gm)
    return image, labels, prov


def build_atlas(
    out_dir: PathLike,
    resolution_mm: float,
    *,
    source: str = "auto",
    space: str | None = None,
    path: PathLike | None = None,
    path_space: str | None = None,
    choice: Any = None,
) -> AtlasFiles:
    """Write the atlas resource files.

    Parameters
    ----------
    out_dir : path-like
        Folder of the resource (``resources/atlas``).
    resolution_mm : float
        Grid voxel size in mm.
    source : {"auto", "official", "rebuild"}
        ``func.atlas.source`` (see :func:`brainharmony.func.atlas_lookup.resolve_atlas`).
    space : str, optional
        Template space of the BOLD (default the anatomy stage's template).
    path, path_space : optional
        ``func.atlas.path`` and ``func.atlas.space``.
    choice : AtlasChoice, optional
        An already resolved choice (the workflow's); the other lookup arguments are
        then ignored.

    Returns
    -------
    AtlasFiles
    """

    if choice is None:
        choice = resolve_atlas(
            space or template_space(),
            float(resolution_mm),
            source=source,
            path=path,
            path_space=path_space,
        )
    files = atlas_files(out_dir, choice.resolution_mm, choice.space, choice.source)
    if choice.source == "official":
        image, labels, prov = _official(choice)
    else:
        image, labels, prov = _rebuild(choice)
    data = np.asarray(image.dataobj)
    present = np.unique(data[data > 0])
    if present.size != 400 or present[0] != 1 or present[-1] != 400:
        where = choice.official.image if choice.official is not None else files.image
        raise InputDataError(where, f"atlas has {present.size} labels, expected 1..400")
    counts = np.bincount(data.reshape(-1).astype(np.int64), minlength=401)[1:401]
    labels = labels.copy()
    labels["voxels"] = counts
    write_nifti(files.image, image)
    write_tsv(files.labels, labels)
    write_json(
        files.sidecar,
        {
            "Identity": choice.identity,
            "AtlasSource": choice.source,
            "Atlas": prov,
            "Space": choice.space,
            "ResolutionMM": float(choice.resolution_mm),
            "NumberOfParcels": 400,
            "VoxelsPerParcel": {
                "min": int(counts.min()),
                "median": float(np.median(counts)),
                "max": int(counts.max()),
            },
            "Lookup": list(choice.notes),
            "Provenance": provenance(
                step="func atlas",
                parameters={
                    "source": choice.source,
                    "space": choice.space,
                    "resolution_mm": float(choice.resolution_mm),
                },
            ),
        },
    )
    write_tissue_masks(files, image.affine, image.shape[:3])
    logger.info("atlas written: %s (%s)", files.image, choice.identity)
    return files


def write_tissue_masks(files: AtlasFiles, affine: Any, shape: tuple[int, ...]) -> None:
    """Write the brain/GM/WM/CSF masks of the atlas grid (one uint8 volume each)."""
    import nibabel as nib

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
