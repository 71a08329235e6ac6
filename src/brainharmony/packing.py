"""Packed training data: one memory-mapped shard per dataset and TR, plus an index.

Series shards
-------------
A shard is one ``.npy`` file of shape ``(total_frames, n_rois)`` (float32) holding
every series of one dataset at one TR back to back. Its index TSV has one row per
series: ``subject, session, run, tr, frames, offset`` (``offset`` = first row of
the series in the shard), then any phenotype columns, then ``fold`` when known.
A JSON sidecar next to the shard records the ROI names, dtype, shape and
provenance. :class:`PackedSeriesDataset` opens the shard with
``np.load(mmap_mode="r")`` (lazily, once per worker process), so only the frames
a sample needs are read from disk, and returns fixed-length windows: a crop when
the series is longer than the window, zero padding and a mask when it is shorter.

Volume shards
-------------
Model-ready T1 volumes likewise: one ``.npy`` of shape ``(n, X, Y, Z)`` (float16
by default: half the bytes, ample for z-scored intensities; a value that does not
fit is an error) and an index ``subject, session, offset, ...``;
:class:`PackedVolumeDataset` returns ``(1, X, Y, Z)`` float32 tensors. A volume whose
JSON sidecar says ``Excluded: true`` (the anatomy stage's QC gate, see
:mod:`brainharmony.anat.gate`) is left out of the shard and listed with its reason in
the shard sidecar's ``ExcludedSources``; when every volume is excluded no shard is
written and packing stops with an error naming the shard (so its dataset).

Robust scaling (:mod:`brainharmony.timeseries.scaling`) is applied on the fly
from a statistics file given to the dataset, never computed inside it.

The command line (``brainharmony pack --kind series|volumes``) is
:mod:`brainharmony.pipelines.pack`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from brainharmony.io import (
    InputDataError,
    PathLike,
    atomic_path,
    provenance,
    sidecar_path,
    write_json,
    write_tsv,
)
from brainharmony.series_files import read_series

logger = logging.getLogger(__name__)

SERIES_KEYS = ("subject", "session", "run", "tr")
VOLUME_KEYS = ("subject", "session")
Crop = Literal["random", "start", "center"]


def _series_shape(path: Path) -> tuple[int, int]:
    if path.suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 2:
            raise InputDataError(path, f"expected (n_volumes, n_rois); got shape {arr.shape}")
        return int(arr.shape[0]), int(arr.shape[1])

    # censored volumes and uncovered parcels are NaN: packed, then masked when read
    series = read_series(path, require_finite=False)
    if series.excluded:
        raise InputDataError(
            path, f"the func stage excluded this run ({series.excluded}); leave it out"
        )
    return series.data.shape  # type: ignore[return-value]


def _extra_columns(manifest: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    skip = {*keys, "path", "offset", "frames", "fold"}
    extra = [c for c in manifest.columns if c not in skip]
    return extra + (["fold"] if "fold" in manifest.columns else [])


def pack_series(
    manifest: pd.DataFrame,
    shard_path: PathLike,
    index_path: PathLike,
    *,
    dtype: Any = np.float32,
    roi_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Concatenate series files into one shard and write its index.

    Parameters
    ----------
    manifest : pandas.DataFrame
        One row per series with columns ``subject, session, run, path`` and
        optionally ``tr`` (seconds; else each file's sidecar ``RepetitionTime``);
        every other column (phenotypes, ``fold``) is copied into the index.
        ``session``/``run`` may be ``"n/a"``.
    shard_path : path-like
        ``.npy`` output of shape (total_frames, n_rois).
    index_path : path-like
        TSV output.
    dtype : numpy dtype
        Shard dtype (float32).
    roi_names : sequence of str, optional
        Recorded in the sidecar; default: the first file's names.

    Returns
    -------
    pandas.DataFrame
        The index (also written).

    Raises
    ------
    InputDataError
        Missing columns or files, ROI counts that differ, TRs that differ within
        the shard, non-finite values.
    """

    for col in ("subject", "session", "run", "path"):
        if col not in manifest.columns:
            raise InputDataError(None, f"manifest has no {col!r} column")
    if manifest.empty:
        raise InputDataError(None, "manifest is empty")
    paths = [Path(p) for p in manifest["path"]]
    shapes = [_series_shape(p) for p in paths]
    n_rois = {s[1] for s in shapes}
    if len(n_rois) != 1:
        first = shapes[0][1]
        bad = next(p for p, s in zip(paths, shapes, strict=True) if s[1] != first)
        raise InputDataError(bad, f"has a different ROI count from {paths[0]} ({first})")
    n_roi = n_rois.pop()
    frames = np.array([s[0] for s in shapes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(frames)[:-1]])
    total = int(frames.sum())
    trs: list[float] = []
    names = list(roi_names) if roi_names is not None else None
    with atomic_path(shard_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, n_roi))
        for i, path in enumerate(paths):
            series = read_series(path, require_finite=False)  # censored volumes are NaN
            if series.data.shape != shapes[i]:  # pragma: no cover - file changed under us
                raise InputDataError(path, "changed while packing")
            if names is None and series.roi_names is not None:
                names = series.roi_names
            tr = manifest["tr"].iloc[i] if "tr" in manifest.columns else series.tr
            if tr is None or pd.isna(tr):
                raise InputDataError(path, "no TR in the manifest or the sidecar")
            if trs and abs(float(tr) - trs[0]) > 1e-6:
                raise InputDataError(
                    path, f"TR {float(tr)} s differs from {trs[0]} s: one shard holds one TR"
                )
            trs.append(float(tr))
            with np.errstate(over="ignore"):
                block = series.data.astype(dtype)
            if np.isinf(block).any():
                raise InputDataError(
                    path, f"values are infinite or do not fit {np.dtype(dtype).name}"
                )
            out[offsets[i] : offsets[i] + frames[i]] = block
        out.flush()
        del out
    index = pd.DataFrame(
        {
            "subject": manifest["subject"].astype(str).to_numpy(),
            "session": manifest["session"].astype(str).to_numpy(),
            "run": manifest["run"].astype(str).to_numpy(),
            "tr": trs,
            "frames": frames,
            "offset": offsets,
        }
    )
    for col in _extra_columns(manifest, SERIES_KEYS):
        index[col] = manifest[col].to_numpy()
    write_tsv(index_path, index)
    write_json(
        sidecar_path(shard_path),
        {
            "Description": "Packed ROI time series: rows offset..offset+frames-1 of the index",
            "Shape": [total, n_roi],
            "DType": np.dtype(dtype).name,
            "RepetitionTime": trs[0],
            "ROINames": names,
            "Index": Path(index_path).name,
            **provenance(step="pack-series", inputs=paths),
        },
    )
    logger.info("packed %d series (%d frames x %d ROIs)", len(paths), total, n_roi)
    return index


def read_index(path: PathLike) -> pd.DataFrame:
    """Read a shard index TSV (subject/session/run as strings)."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "shard index not found")
    frame = pd.read_csv(
        p,
        sep="\t",
        dtype={"subject": str, "session": str, "run": str},
        na_values=["n/a"],
        keep_default_na=False,
    )
    for col in ("session", "run"):  # absent entities stay the literal "n/a"
        if col in frame.columns:
            frame[col] = frame[col].fillna("n/a")
    return frame


def rows_for_split(index: pd.DataFrame, splits: pd.DataFrame, fold: int, split: str) -> np.ndarray:
    """Index rows whose subject is in ``split`` of ``fold`` (from a splits TSV).

    Returns
    -------
    ndarray of int
        Row numbers into ``index``, ascending.
    """
    chosen = splits.loc[(splits["fold"] == fold) & (splits["split"] == split), "subject"]
    return np.flatnonzero(index["subject"].astype(str).isin(set(chosen.astype(str))))


class PackedSeriesDataset:
    """Fixed-length windows of packed series, memory-mapped (a map-style dataset).

    Usable directly with :class:`torch.utils.data.DataLoader` (map-style: ``len``
    and integer indexing). It does not subclass ``torch.utils.data.Dataset`` so
    that importing this module (which the command line does) does not import torch.

    Parameters
    ----------
    shard : path-like
        ``.npy`` shard of shape (total_frames, n_rois).
    index : path-like or pandas.DataFrame
        Its index (``frames``, ``offset`` columns at least).
    window : int, optional
        Frames per sample; default: the longest series (everything padded to it).
    crop : {"random", "start", "center"}
        Where a longer series is cut. ``"random"`` draws from torch's generator
        (seeded per DataLoader worker by PyTorch, reproducible with
        ``torch.manual_seed``).
    rows : sequence of int, optional
        Subset of index rows (e.g. from :func:`rows_for_split`).
    targets : sequence of str
        Index columns returned as ``float32`` tensors under their names.
    scaling : RobustScalingStats, optional
        Applied to every window (``(x - median) / iqr``); padding stays 0.

    Each item is a dict: ``x`` (window, n_rois) float32; ``mask`` (window,) bool,
    True on real, uncensored frames (padding and censored volumes, stored as NaN
    rows, are False); ``roi_mask`` (n_rois,) bool, False for a ROI with no data in
    the window (a parcel the run did not cover); ``length`` (frames taken from the
    series, censored ones included); ``tr`` (float); ``row`` (index row); and the
    targets. Every NaN becomes 0 in ``x`` (after scaling: the ROI's median).
    """

    def __init__(
        self,
        shard: PathLike,
        index: PathLike | pd.DataFrame,
        *,
        window: int | None = None,
        crop: Crop = "random",
        rows: Sequence[int] | None = None,
        targets: Sequence[str] = (),
        scaling: Any | None = None,
    ) -> None:
        self.shard = Path(shard)
        if not self.shard.is_file():
            raise InputDataError(self.shard, "shard not found")
        self.index = index if isinstance(index, pd.DataFrame) else read_index(index)
        for col in ("frames", "offset", *targets):
            if col not in self.index.columns:
                raise ValueError(f"index has no {col!r} column")
        if crop not in ("random", "start", "center"):
            raise ValueError(f"crop must be 'random', 'start' or 'center'; got {crop!r}")
        self.rows = np.arange(len(self.index)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.frames = self.index["frames"].to_numpy(np.int64)
        self.offsets = self.index["offset"].to_numpy(np.int64)
        self.trs = self.index["tr"].to_numpy(np.float64) if "tr" in self.index else None
        self.window = int(window) if window is not None else int(self.frames[self.rows].max())
        if self.window < 1:
            raise ValueError(f"window must be >= 1; got {window}")
        self.crop = crop
        self.targets = {
            t: pd.to_numeric(self.index[t], errors="coerce").to_numpy(np.float32) for t in targets
        }
        shape = np.load(self.shard, mmap_mode="r").shape
        if (self.offsets + self.frames).max() > shape[0]:
            raise InputDataError(self.shard, "index points past the end of the shard")
        self.n_rois = int(shape[1])
        self._median = self._iqr = None
        if scaling is not None:
            if scaling.median.shape[0] != self.n_rois:
                raise ValueError(
                    f"scaling has {scaling.median.shape[0]} ROIs; the shard has {self.n_rois}"
                )
            self._median = scaling.median.astype(np.float32)
            self._iqr = scaling.iqr.astype(np.float32)
        self._data: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def _array(self) -> np.ndarray:
        if self._data is None:  # opened lazily: once per worker process
            self._data = np.load(self.shard, mmap_mode="r")
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = None  # never pickle a memory map into a worker
        return state

    def _start(self, n: int) -> int:
        excess = n - self.window
        if excess <= 0:
            return 0
        if self.crop == "start":
            return 0
        if self.crop == "center":
            return excess // 2
        import torch

        return int(torch.randint(0, excess + 1, (1,)).item())

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        row = int(self.rows[i])
        n = int(self.frames[row])
        start = self._start(n)
        length = min(n, self.window)
        begin = int(self.offsets[row]) + start
        block = np.asarray(self._array()[begin : begin + length], dtype=np.float32)
        if self._median is not None:
            block = (block - self._median) / self._iqr
        nan = np.isnan(block)
        roi_ok = ~nan.all(axis=0)
        frame_ok = ~nan[:, roi_ok].any(axis=1) if roi_ok.any() else np.zeros(length, bool)
        x = np.zeros((self.window, self.n_rois), dtype=np.float32)
        x[:length] = np.where(nan, np.float32(0.0), block)
        mask = np.zeros(self.window, dtype=bool)
        mask[:length] = frame_ok
        item: dict[str, Any] = {
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
            "roi_mask": torch.from_numpy(roi_ok),
            "length": length,
            "row": row,
            "tr": float(self.trs[row]) if self.trs is not None else float("nan"),
        }
        for name, values in self.targets.items():
            item[name] = torch.tensor(values[row])
        return item


def exclusion_reason(preproc_sidecar: PathLike) -> str:
    """Why the anatomy stage excluded a T1w ("" when it did not).

    Parameters
    ----------
    preproc_sidecar : path-like
        The JSON sidecar of ``<p>_space-<T>_desc-preproc_T1w.nii.gz`` (or of any other
        anatomy output: every sidecar carries the flag).
    """
    doc = json.loads(Path(preproc_sidecar).read_text())
    if not doc.get("Excluded"):
        return ""
    return str(doc.get("ExclusionReason") or "excluded by the anatomy stage")


def volume_exclusion(path: PathLike) -> str:
    """Why the anatomy stage excluded a model-ready volume ("" when it is usable).

    Reads the volume's JSON sidecar (``x.nii.gz`` -> ``x.json``); a volume without a
    sidecar (e.g. a hand-made ``.npy``) is usable.

    Parameters
    ----------
    path : path-like
        A ``desc-model_T1w.nii.gz`` (or any volume file).

    Returns
    -------
    str
        The sidecar's ``ExclusionReason`` when it says ``Excluded: true``, else "".
    """
    side = sidecar_path(path)
    if not side.is_file():
        return ""
    try:
        return exclusion_reason(side)
    except json.JSONDecodeError as err:
        raise InputDataError(side, f"not valid JSON: {err}") from None


def set_aside_volumes(manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Split a volume manifest into the usable rows and the anatomy-excluded ones.

    Parameters
    ----------
    manifest : pandas.DataFrame
        Columns ``subject, session, path`` at least.

    Returns
    -------
    kept : pandas.DataFrame
        The rows whose volume is usable, in manifest order (index reset).
    excluded : list of dict
        ``{"subject", "session", "path", "reason"}`` per excluded volume (each logged).
    """
    keep = []
    excluded: list[dict[str, str]] = []
    for rec in manifest[["subject", "session", "path"]].itertuples(index=False):
        reason = volume_exclusion(rec.path)
        keep.append(not reason)
        if reason:
            logger.warning("%s: left out (excluded by anat: %s)", rec.path, reason)
            excluded.append(
                {
                    "subject": str(rec.subject),
                    "session": str(rec.session),
                    "path": str(rec.path),
                    "reason": reason,
                }
            )
    return manifest.loc[keep].reset_index(drop=True), excluded


def pack_volumes(
    manifest: pd.DataFrame,
    shard_path: PathLike,
    index_path: PathLike,
    *,
    dtype: Any = np.float16,
) -> pd.DataFrame:
    """Stack model-ready volumes (``.nii[.gz]`` or ``.npy``) into one shard.

    Volumes the anatomy stage excluded (``Excluded: true`` in their sidecar) are left
    out and listed in the shard sidecar's ``ExcludedSources`` (subject, session, path,
    reason).

    Parameters
    ----------
    manifest : pandas.DataFrame
        Columns ``subject, session, path`` and any others (copied to the index).
    shard_path, index_path : path-like
    dtype : numpy dtype
        float16 (default) or float32.

    Returns
    -------
    pandas.DataFrame
        The index: ``subject, session, offset, ...`` (usable volumes only).

    Raises
    ------
    InputDataError
        Missing columns or files, shapes that differ, values that do not fit
        ``dtype``, or every volume excluded by the anatomy stage (then nothing is
        written; the message names the shard and the reasons).
    """
    for col in ("subject", "session", "path"):
        if col not in manifest.columns:
            raise InputDataError(None, f"manifest has no {col!r} column")
    if manifest.empty:
        raise InputDataError(None, "manifest is empty")
    manifest, excluded = set_aside_volumes(manifest)
    if manifest.empty:
        shown = "; ".join(f"sub-{e['subject']}: {e['reason']}" for e in excluded[:3])
        more = f" (and {len(excluded) - 3} more)" if len(excluded) > 3 else ""
        raise InputDataError(
            shard_path,
            f"the anatomy stage excluded every one of the {len(excluded)} T1w volumes of "
            f"this dataset ({shown}{more}); no volume shard can be packed. Check the "
            "anatomy QC figures and the anat.qc_* thresholds, or leave the dataset out",
        )
    paths = [Path(p) for p in manifest["path"]]

    def load(path: Path, mmap: bool = False) -> np.ndarray:
        if not path.is_file():
            raise InputDataError(path, "volume not found")
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        import nibabel as nib

        img = nib.load(str(path))
        return img.dataobj if mmap else np.asarray(img.get_fdata(dtype=np.float32))

    shape = tuple(load(paths[0], mmap=True).shape)
    if len(shape) != 3:
        raise InputDataError(paths[0], f"expected a 3-D volume; got shape {shape}")
    with atomic_path(shard_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(paths), *shape))
        for i, path in enumerate(paths):
            vol = load(path)
            if vol.shape != shape:
                raise InputDataError(path, f"shape {vol.shape} differs from {paths[0]}'s {shape}")
            with np.errstate(over="ignore", invalid="ignore"):
                cast = vol.astype(dtype)
            if not np.isfinite(cast).all():
                raise InputDataError(
                    path, f"values are NaN/inf or do not fit {np.dtype(dtype).name}"
                )
            out[i] = cast
        out.flush()
        del out
    index = pd.DataFrame(
        {
            "subject": manifest["subject"].astype(str).to_numpy(),
            "session": manifest["session"].astype(str).to_numpy(),
            "offset": np.arange(len(paths)),
        }
    )
    for col in _extra_columns(manifest, VOLUME_KEYS):
        index[col] = manifest[col].to_numpy()
    write_tsv(index_path, index)
    write_json(
        sidecar_path(shard_path),
        {
            "Description": "Packed model-ready volumes: shard[offset] per index row",
            "Shape": [len(paths), *shape],
            "DType": np.dtype(dtype).name,
            "Index": Path(index_path).name,
            "ExcludedSources": excluded,
            **provenance(step="pack-volumes", inputs=paths),
        },
    )
    if excluded:
        logger.info("packed %d volumes; %d excluded by anat left out", len(paths), len(excluded))
    return index


class PackedVolumeDataset:
    """Volumes from a packed shard, memory-mapped (a map-style dataset, see above).

    Each item: ``x`` (1, X, Y, Z), ``row``, and the requested targets. ``x`` is
    float32 unless ``as_stored=True``, which returns the shard's dtype (float16:
    half the bytes to collate and copy; convert on the GPU with ``.float()``).
    """

    def __init__(
        self,
        shard: PathLike,
        index: PathLike | pd.DataFrame,
        *,
        rows: Sequence[int] | None = None,
        targets: Sequence[str] = (),
        as_stored: bool = False,
    ) -> None:
        self.shard = Path(shard)
        if not self.shard.is_file():
            raise InputDataError(self.shard, "shard not found")
        self.as_stored = as_stored
        self.index = index if isinstance(index, pd.DataFrame) else read_index(index)
        for col in ("offset", *targets):
            if col not in self.index.columns:
                raise ValueError(f"index has no {col!r} column")
        if self.index.empty:
            raise InputDataError(
                self.shard,
                "the volume index has no rows (were all T1w volumes of this dataset "
                "excluded? see ExcludedSources in the shard's sidecar)",
            )
        self.rows = np.arange(len(self.index)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.offsets = self.index["offset"].to_numpy(np.int64)
        n = np.load(self.shard, mmap_mode="r").shape[0]
        if self.offsets.max() >= n:
            raise InputDataError(self.shard, "index points past the end of the shard")
        self.targets = {
            t: pd.to_numeric(self.index[t], errors="coerce").to_numpy(np.float32) for t in targets
        }
        self._data: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        if self._data is None:
            self._data = np.load(self.shard, mmap_mode="r")
        row = int(self.rows[i])
        stored = self._data[self.offsets[row]]
        vol = np.array(stored) if self.as_stored else np.asarray(stored, dtype=np.float32)
        item: dict[str, Any] = {"x": torch.from_numpy(vol[None]), "row": row}
        for name, values in self.targets.items():
            item[name] = torch.tensor(values[row])
        return item


def shard_info(shard: PathLike) -> dict[str, Any]:
    """The sidecar of a shard (shape, dtype, ROI names, provenance)."""
    return json.loads(sidecar_path(shard).read_text(encoding="utf-8"))
