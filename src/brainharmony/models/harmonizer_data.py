"""Per-subject token files of the frozen encoders, and the Harmonizer's dataset.

Token files
-----------
One ``.npz`` per subject and session (written by ``brainharmony embed encoders``,
:mod:`brainharmony.pipelines.embed`), with arrays

``f_tokens`` (Nf, Df)
    BrainHarmonix-F tokens of one run, ROI-major (``roi * P + t``), zero where padded.
``f_valid`` (Nf,) bool
    Real F tokens.
``s_tokens`` (Ns, Ds)
    BrainHarmonix-S tokens of the session's T1 volume.

stored as float16 by default (half the bytes; a value outside its range is an error) or
float32. The index TSV beside them has one row per file: ``subject, session, path`` (the
file, relative to the index's folder), ``f_run``, ``f_tr`` (seconds), ``f_valid_tokens``,
``s_session`` (the session whose T1 was used), then any phenotype columns copied from the
series index. :class:`FusedDataset` reads that index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.io import InputDataError, PathLike, atomic_path

__all__ = [
    "INDEX_COLUMNS",
    "TOKEN_ARRAYS",
    "FusedDataset",
    "read_token_file",
    "read_token_index",
    "write_token_file",
]

#: Arrays of a token file.
TOKEN_ARRAYS = ("f_tokens", "f_valid", "s_tokens")
#: Leading columns of the token index (phenotype columns may follow).
INDEX_COLUMNS = ("subject", "session", "path", "f_run", "f_tr", "f_valid_tokens", "s_session")


def write_token_file(
    path: PathLike,
    *,
    f_tokens: np.ndarray,
    f_valid: np.ndarray,
    s_tokens: np.ndarray,
    dtype: Any = np.float16,
) -> Path:
    """Write one subject/session's token file atomically (uncompressed ``.npz``).

    Parameters
    ----------
    path : path-like
        Destination ``.npz``.
    f_tokens : ndarray of shape (Nf, Df)
    f_valid : ndarray of shape (Nf,), bool
    s_tokens : ndarray of shape (Ns, Ds)
    dtype : numpy dtype
        float16 or float32 storage of the tokens.

    Raises
    ------
    ValueError
        Wrong shapes, or values that are not finite once stored in ``dtype``.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ValueError(f"token files store float16 or float32, not {dtype}")
    f_tokens = np.asarray(f_tokens)
    f_valid = np.asarray(f_valid, dtype=bool)
    s_tokens = np.asarray(s_tokens)
    if f_tokens.ndim != 2 or s_tokens.ndim != 2 or f_valid.shape != f_tokens.shape[:1]:
        raise ValueError(
            f"token shapes: f_tokens {f_tokens.shape}, f_valid {f_valid.shape}, "
            f"s_tokens {s_tokens.shape}; expected (Nf, Df), (Nf,), (Ns, Ds)"
        )
    with np.errstate(over="ignore"):
        f_store = np.where(f_valid[:, None], f_tokens, 0).astype(dtype)
        s_store = s_tokens.astype(dtype)
    for name, arr in (("f_tokens", f_store), ("s_tokens", s_store)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: {name} has values that are not finite in {dtype.name}")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, f_tokens=f_store, f_valid=f_valid, s_tokens=s_store)
    return Path(path)


def read_token_file(path: PathLike) -> dict[str, np.ndarray]:
    """Read a token file; a missing file or array is an :class:`InputDataError`."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "token file not found")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise InputDataError(p, f"unreadable token file: {err}") from None
    missing = [k for k in TOKEN_ARRAYS if k not in arrays]
    if missing:
        raise InputDataError(p, f"token file lacks array(s) {missing}")
    return {k: arrays[k] for k in TOKEN_ARRAYS}


def read_token_index(path: PathLike) -> pd.DataFrame:
    """Read a token index TSV (subject/session as strings; paths made absolute)."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "token index not found")
    frame = pd.read_csv(
        p,
        sep="\t",
        dtype={"subject": str, "session": str, "s_session": str, "f_run": str, "path": str},
        na_values=["n/a"],
        keep_default_na=False,
    )
    for col in ("subject", "session", "path"):
        if col not in frame.columns:
            raise InputDataError(p, f"token index has no {col!r} column")
    for col in ("session", "s_session", "f_run"):
        if col in frame.columns:
            frame[col] = frame[col].fillna("n/a")
    frame["path"] = [str((p.parent / q).resolve()) for q in frame["path"]]
    return frame


class FusedDataset:
    """Fused-token items for the Harmonizer (a map-style dataset).

    Parameters
    ----------
    index : path-like or pandas.DataFrame
        Token index TSV (or the frame :func:`read_token_index` returns).
    rows : sequence of int, optional
        Subset of index rows (e.g. a split).
    targets : sequence of str
        Index columns returned as float32 tensors under their names (NaN when missing).

    Each item: ``f_tokens`` (Nf, Df) float32, ``f_valid`` (Nf,) bool, ``s_tokens``
    (Ns, Ds) float32, ``row`` (index row) and the targets. Every file must have the same
    shapes as the first (checked when read), so default collation works.
    """

    def __init__(
        self,
        index: PathLike | pd.DataFrame,
        *,
        rows: Sequence[int] | None = None,
        targets: Sequence[str] = (),
    ) -> None:
        self.index = index if isinstance(index, pd.DataFrame) else read_token_index(index)
        self.source = None if isinstance(index, pd.DataFrame) else Path(index)
        for col in targets:
            if col not in self.index.columns:
                raise InputDataError(self.source, f"token index has no target column {col!r}")
        self.rows = np.arange(len(self.index)) if rows is None else np.asarray(rows, np.int64)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= len(self.index)):
            raise ValueError(f"rows out of range for a token index of {len(self.index)} rows")
        self.paths = self.index["path"].astype(str).tolist()
        self.targets = {
            t: pd.to_numeric(self.index[t], errors="coerce").to_numpy(np.float32) for t in targets
        }
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        row = int(self.rows[i])
        path = self.paths[row]
        data = read_token_file(path)
        shapes = {k: tuple(v.shape) for k, v in data.items()}
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            raise InputDataError(path, f"token shapes {shapes} differ from {self._shapes}")
        item: dict[str, Any] = {
            "f_tokens": torch.from_numpy(data["f_tokens"].astype(np.float32)),
            "f_valid": torch.from_numpy(data["f_valid"].astype(bool)),
            "s_tokens": torch.from_numpy(data["s_tokens"].astype(np.float32)),
            "row": row,
        }
        for name, values in self.targets.items():
            item[name] = torch.tensor(values[row])
        return item
