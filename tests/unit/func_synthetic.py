"""Small synthetic BOLD runs for the functional-stage tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RES_MM = 6.0


def synthetic_bold(
    folder: Path,
    *,
    n_volumes: int = 60,
    t_r: float = 2.0,
    seed: int = 0,
    name: str = "sub-01_task-rest_bold.nii.gz",
) -> tuple[Path, dict, np.ndarray]:
    """A BOLD run on the 6 mm atlas grid whose world frame is the template's.

    Returns the file, its metadata (RepetitionTime, SliceTiming) and the planted parcel
    signals, shape (n_volumes, 400).
    """
    import nibabel as nib
    from scipy import ndimage

    from brainharmony.atlas import schaefer400_volume
    from brainharmony.func.confounds import tissue_masks

    rng = np.random.default_rng(seed)
    atlas, _ = schaefer400_volume(RES_MM)
    labels = np.asarray(atlas.dataobj).astype(np.int64)
    masks, _ = tissue_masks(atlas.affine, labels.shape)
    base = 500.0 * masks["brain"] + 300.0 * masks["wm"] + 500.0 * masks["csf"]
    base = ndimage.gaussian_filter(base, 0.7) + 20.0
    signals = ndimage.gaussian_filter1d(rng.standard_normal((n_volumes, 401)), 2.0, axis=0)
    signals /= signals.std(axis=0)
    signals[:, 0] = 0.0
    data = base[..., None] * (1.0 + 0.02 * signals[:, labels].transpose(1, 2, 3, 0))
    data += rng.standard_normal(data.shape) * 2.0
    img = nib.Nifti1Image(data.astype(np.float32), atlas.affine)
    img.header.set_xyzt_units("mm", "sec")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nib.save(img, path)
    n_slices = labels.shape[2]
    order = np.r_[0:n_slices:2, 1:n_slices:2]
    times = np.empty(n_slices)
    times[order] = np.arange(n_slices) * t_r / n_slices
    meta = {"RepetitionTime": t_r, "SliceTiming": times.tolist()}
    return path, meta, signals[:, 1:]
