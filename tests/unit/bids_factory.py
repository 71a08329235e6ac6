"""Write small synthetic BIDS datasets with tiny real NIfTI files, for tests.

The images are real (nibabel can read them, pybids indexes them) but tiny: a BOLD
run is 8 x 8 x 6 voxels by 60 volumes by default, a T1w 10 x 10 x 8 voxels, so a
whole dataset takes milliseconds to write. Every helper takes the dataset root and
returns the path it wrote, so a test can then break that file on purpose (see
:func:`truncate_file`) and check how a stage reports it.

Typical use::

    root = make_dataset(tmp_path / "ds", subjects=("01", "02", "03"))
    add_bold(root, "04", n_volumes=30)        # a subject with a too-short run
    truncate_file(bold_path(root, "02"))      # an unreadable NIfTI

Nothing here is imported by the package; it is test support only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainharmony.io import write_nifti

#: Phenotype rows used by :func:`make_dataset` (cycled over the subjects).
DEFAULT_PHENOTYPES: tuple[dict[str, str], ...] = (
    {"age": "25", "sex": "F", "fluid_intelligence": "31.5", "diagnosis": "control"},
    {"age": "61.5", "sex": "M", "fluid_intelligence": "24", "diagnosis": "patient"},
    {"age": "43", "sex": "F", "fluid_intelligence": "n/a", "diagnosis": "control"},
    {"age": "n/a", "sex": "M", "fluid_intelligence": "28", "diagnosis": "patient"},
)

_TIME_UNIT_SCALE = {"sec": 1.0, "msec": 1000.0, "usec": 1.0e6}


def entity_prefix(
    sub: str, ses: str | None = None, task: str | None = None, run: str | None = None
) -> str:
    """``sub-<sub>[_ses-<ses>][_task-<task>][_run-<run>]`` in BIDS entity order."""
    parts = [f"sub-{sub}"]
    if ses is not None:
        parts.append(f"ses-{ses}")
    if task is not None:
        parts.append(f"task-{task}")
    if run is not None:
        parts.append(f"run-{run}")
    return "_".join(parts)


def subject_dir(root: Path, sub: str, ses: str | None = None) -> Path:
    """``root/sub-<sub>[/ses-<ses>]``."""
    path = Path(root) / f"sub-{sub}"
    return path / f"ses-{ses}" if ses is not None else path


def bold_path(
    root: Path,
    sub: str,
    ses: str | None = None,
    run: str | None = None,
    *,
    task: str = "rest",
    ext: str = ".nii.gz",
) -> Path:
    """Where :func:`add_bold` writes the BOLD run with these entities."""
    name = f"{entity_prefix(sub, ses, task, run)}_bold{ext}"
    return subject_dir(root, sub, ses) / "func" / name


def t1w_path(
    root: Path, sub: str, ses: str | None = None, run: str | None = None, *, ext: str = ".nii.gz"
) -> Path:
    """Where :func:`add_t1w` writes the T1w with these entities."""
    return subject_dir(root, sub, ses) / "anat" / f"{entity_prefix(sub, ses, None, run)}_T1w{ext}"


def write_image(
    path: Path,
    shape: Sequence[int],
    *,
    zooms: Sequence[float],
    dtype: str = "float32",
    time_units: str = "sec",
    seed: int = 0,
) -> Path:
    """Write a NIfTI-1 image of random data with the given shape and voxel sizes.

    Parameters
    ----------
    path : Path
        Destination (``.nii`` or ``.nii.gz``); parent folders are created.
    shape : sequence of int
        Image shape, 3D or 4D.
    zooms : sequence of float
        ``pixdim`` values, one per axis; for 4D the last one is the header TR in
        ``time_units``.
    dtype : str
        On-disk data type, e.g. ``"float32"`` or ``"int16"``.
    time_units : {"sec", "msec", "usec", "unknown"}
        The header's time unit (``xyzt_units``).
    seed : int
        Seed of the random voxel values (same seed, same bytes).
    """
    rng = np.random.default_rng(seed)
    data = rng.normal(1000.0, 50.0, size=tuple(shape))
    if np.issubdtype(np.dtype(dtype), np.integer):
        data = np.round(data)
    data = data.astype(dtype)
    affine = np.diag([*list(zooms[:3]), 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(float(z) for z in zooms))
    img.header.set_xyzt_units("mm", time_units)
    img.header.set_data_dtype(np.dtype(dtype))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, img)


def write_json_file(path: Path, data: Mapping[str, Any]) -> Path:
    """Write a JSON sidecar (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(data), indent=2) + "\n", encoding="utf-8")
    return path


def slice_times(n_slices: int, tr: float) -> list[float]:
    """Interleaved (odd then even) slice acquisition offsets in [0, tr)."""
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    step = tr / n_slices
    times = [0.0] * n_slices
    for rank, index in enumerate(order):
        times[index] = round(rank * step, 6)
    return times


def add_bold(
    root: Path,
    sub: str,
    ses: str | None = None,
    run: str | None = None,
    *,
    task: str = "rest",
    tr: float = 2.0,
    n_volumes: int = 60,
    shape: Sequence[int] = (8, 8, 6),
    dtype: str = "float32",
    header_tr: float | None = None,
    time_units: str = "sec",
    metadata: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    sidecar: bool = True,
    ext: str = ".nii.gz",
    path: Path | None = None,
    seed: int = 0,
) -> Path:
    """Write a BOLD run and (by default) its JSON sidecar; return the NIfTI path.

    Parameters
    ----------
    root : Path
        Dataset root.
    sub, ses, run : str or None
        Entity labels (no prefixes). ``ses``/``run`` None leaves the entity out.
    task : str
        Task label.
    tr : float
        RepetitionTime written to the sidecar, in seconds.
    n_volumes : int
        Number of volumes. ``n_volumes=0`` writes a 3D image of ``shape``.
    shape : sequence of int
        Spatial shape.
    dtype : str
        On-disk data type.
    header_tr : float, optional
        ``pixdim[4]`` in ``time_units``; default: ``tr`` converted to ``time_units``.
    time_units : str
        Header time unit.
    metadata : mapping, optional
        Sidecar entries added to, or replacing, the defaults (RepetitionTime,
        TaskName, SliceTiming).
    drop : iterable of str
        Sidecar keys to leave out (e.g. ``("RepetitionTime",)``).
    sidecar : bool
        Write the sidecar at all.
    ext : str
        ``.nii.gz`` or ``.nii``.
    path : Path, optional
        Write here instead of the BIDS path (for misnamed or misplaced files).
    seed : int
        Seed of the voxel values.
    """
    dest = Path(path) if path is not None else bold_path(root, sub, ses, run, task=task, ext=ext)
    scale = _TIME_UNIT_SCALE.get(time_units, 1.0)
    pixdim4 = tr * scale if header_tr is None else header_tr
    if n_volumes:
        write_image(
            dest,
            (*shape, n_volumes),
            zooms=(3.0, 3.0, 4.0, pixdim4),
            dtype=dtype,
            time_units=time_units,
            seed=seed,
        )
    else:
        write_image(dest, shape, zooms=(3.0, 3.0, 4.0), dtype=dtype, seed=seed)
    if sidecar:
        meta: dict[str, Any] = {
            "RepetitionTime": tr,
            "TaskName": task,
            "SliceTiming": slice_times(int(shape[2]), tr),
        }
        meta.update(metadata or {})
        for key in drop:
            meta.pop(key, None)
        write_json_file(_sidecar_of(dest), meta)
    return dest


def add_t1w(
    root: Path,
    sub: str,
    ses: str | None = None,
    run: str | None = None,
    *,
    shape: Sequence[int] = (10, 10, 8),
    dtype: str = "int16",
    ext: str = ".nii.gz",
    path: Path | None = None,
    seed: int = 1,
) -> Path:
    """Write a T1w image (1 mm voxels) and a minimal sidecar; return the NIfTI path."""
    dest = Path(path) if path is not None else t1w_path(root, sub, ses, run, ext=ext)
    write_image(dest, shape, zooms=(1.0,) * len(shape), dtype=dtype, seed=seed)
    write_json_file(_sidecar_of(dest), {"MagneticFieldStrength": 3})
    return dest


def write_participants(
    root: Path,
    rows: Sequence[Mapping[str, Any]] | None = None,
    *,
    text: str | None = None,
) -> Path:
    """Write ``participants.tsv`` from rows (first row's keys are the columns) or raw text."""
    path = Path(root) / "participants.tsv"
    if text is None:
        rows = list(rows or [])
        columns = list(rows[0]) if rows else ["participant_id"]
        lines = ["\t".join(columns)]
        lines += ["\t".join(str(row.get(col, "n/a")) for col in columns) for row in rows]
        text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_description(root: Path, name: str = "synthetic") -> Path:
    """Write ``dataset_description.json``."""
    return write_json_file(
        Path(root) / "dataset_description.json",
        {"Name": name, "BIDSVersion": "1.9.0", "DatasetType": "raw"},
    )


def make_dataset(
    root: Path,
    subjects: Sequence[str] = ("01", "02", "03"),
    *,
    sessions: Sequence[str | None] = (None,),
    runs: Sequence[str | None] = (None,),
    task: str = "rest",
    tr: float = 2.0,
    n_volumes: int = 60,
    shape: Sequence[int] = (8, 8, 6),
    dtype: str = "float32",
    participants: bool = True,
    extra_columns: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write a complete, valid dataset: T1w per session, BOLD per session and run.

    Parameters
    ----------
    root : Path
        Dataset root (created).
    subjects : sequence of str
        Subject labels.
    sessions, runs : sequence of str or None
        Session and run labels written for every subject (``(None,)``: no entity).
    task, tr, n_volumes, shape, dtype
        Passed to :func:`add_bold`.
    participants : bool
        Write ``participants.tsv`` with :data:`DEFAULT_PHENOTYPES` cycled over the
        subjects.
    extra_columns : mapping, optional
        Additional participants.tsv columns: name -> one value per subject.

    Returns
    -------
    Path
        The dataset root.
    """
    root = Path(root)
    write_description(root)
    for index, sub in enumerate(subjects):
        for ses in sessions:
            add_t1w(root, sub, ses, seed=index)
            for run in runs:
                add_bold(
                    root,
                    sub,
                    ses,
                    run,
                    task=task,
                    tr=tr,
                    n_volumes=n_volumes,
                    shape=shape,
                    dtype=dtype,
                    seed=index,
                )
    if participants:
        rows = []
        for index, sub in enumerate(subjects):
            row = {"participant_id": f"sub-{sub}"}
            row.update(DEFAULT_PHENOTYPES[index % len(DEFAULT_PHENOTYPES)])
            for name, values in (extra_columns or {}).items():
                row[name] = values[index]
            rows.append(row)
        write_participants(root, rows)
    return root


def truncate_file(path: Path, fraction: float = 0.5) -> Path:
    """Cut a file to ``fraction`` of its bytes (a download or copy that stopped early)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * fraction))])
    return Path(path)


def _sidecar_of(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")
