"""Stand-ins for the official Schaefer-2018 files and TemplateFlow's grey matter.

Small, correctly named volumes (400 labels, 20 voxels each) and label tables laid out as
a TemplateFlow home and nilearn's data folder hold them; no package ships the real
volumes (see ``tests/unit/func/test_atlas_lookup.py`` for the real label names).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

C_ASYM = "MNI152NLin2009cAsym"
#: Corner of TemplateFlow's MNI152NLin2009cAsym grids (world mm of voxel 0,0,0).
TF_CORNER = np.array([-96.0, -132.0, -78.0])


def labels_volume() -> np.ndarray:
    """A 20 x 20 x 20 volume: label k fills 20 consecutive voxels (k = 1..400)."""
    return np.repeat(np.arange(1, 401, dtype=np.int16), 20).reshape(20, 20, 20)


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def names() -> list[str]:
    from brainharmony.atlas import schaefer400_labels

    return schaefer400_labels()["name"].tolist()


def templateflow_atlas(tf: Path, space: str, res: int, labels: list[str] | None = None) -> Path:
    """A TemplateFlow-named official-like volume and its (res-less) label table."""
    affine = np.diag([float(res)] * 3 + [1.0])
    affine[:3, 3] = TF_CORNER
    ent = "atlas-Schaefer2018_desc-400Parcels7Networks_dseg"
    folder = tf / f"tpl-{space}"
    image = save(folder / f"tpl-{space}_res-{res:02d}_{ent}.nii.gz", labels_volume(), affine)
    pd.DataFrame({"index": range(1, 401), "name": labels or names(), "color": "#781180"}).to_csv(
        folder / f"tpl-{space}_{ent}.tsv", sep="\t", index=False
    )
    return image


def nilearn_atlas(nl: Path, res: int, labels: list[str] | None = None) -> Path:
    """nilearn's fetcher layout: CBIG's FSLMNI152 volume (LAS, as FSL's) + _order.txt."""
    affine = np.diag([-float(res), float(res), float(res), 1.0])
    affine[:3, 3] = [90.0, -126.0, -72.0]
    folder = nl / "schaefer_2018"
    stem = "Schaefer2018_400Parcels_7Networks_order"
    image = save(folder / f"{stem}_FSLMNI152_{res}mm.nii.gz", labels_volume(), affine)
    lines = [f"{i}\t{n}\t120\t18\t134\t0" for i, n in enumerate(labels or names(), start=1)]
    (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    return image


def grey_matter_2009c(tf: Path) -> Path:
    """Stand-in for TemplateFlow's 2009cAsym res-01 GM map, on TemplateFlow's grid.

    nilearn's 1 mm 2009a GM map shifted by whole voxels onto TemplateFlow's 2009cAsym
    grid (193 x 229 x 193, corner -96, -132, -78): same world positions, other grid.
    """
    from nilearn.datasets import load_mni152_gm_template

    src = load_mni152_gm_template(resolution=1)
    data = np.asarray(src.get_fdata(dtype=np.float32))
    shift = (TF_CORNER - src.affine[:3, 3]).astype(int)  # (2, 2, -6) voxels
    out = np.zeros((193, 229, 193), np.float32)
    lo = np.maximum(shift, 0)
    dst_lo = np.maximum(-shift, 0)
    n = np.minimum(np.array(data.shape) - lo, np.array(out.shape) - dst_lo)
    out[tuple(slice(d, d + k) for d, k in zip(dst_lo, n, strict=True))] = data[
        tuple(slice(s, s + k) for s, k in zip(lo, n, strict=True))
    ]
    affine = np.eye(4)
    affine[:3, 3] = TF_CORNER
    return save(tf / f"tpl-{C_ASYM}" / f"tpl-{C_ASYM}_res-01_label-GM_probseg.nii.gz", out, affine)
