"""Position embeddings: ROI x time grids (BrainHarmonix-F) and fixed sin-cos tables.

ROI x time tokens (:class:`RoiTimePosEmbed`)
--------------------------------------------
Each token of the ROI x time-patch grid gets a ROI part and a time part:

* **ROI part** (learned): the ROI's row of the geometric-harmonics table (ROI x K, the
  geometry stage's parcel means of the cortical Laplace-Beltrami eigenmodes) and of the
  functional-gradients table (ROI x G) are each mapped by a linear layer and the results
  averaged (``use_harmonics`` / ``use_gradients`` switch either off; with neither, a
  learned free table per ROI is used instead). The tables are stored as buffers, so a
  saved model carries the exact values it was trained with.
* **Time part** (fixed): 1-D sin-cos of the time-patch index (MAE formula, base 10000).
  A patch always spans ``tau`` seconds (TAPE), so index ``t`` means the same time at every
  TR.

``combine="concat"`` (default, as the official model) gives the first ``time_dim``
channels to time and the rest to the ROI part; ``combine="sum"`` adds two full-width
parts. Token order is ROI-major: token ``roi * P + t``.

Departure from the official code: its ROI part is min-max rescaled to [-1, 1] over the
whole table at every forward pass, a normalisation that depends on the projection weights
as they learn (a moving target). Here each input table is divided once, at construction,
by its root-mean-square (a constant), so the projections see O(1) inputs and the
embedding is a fixed linear function of the learned weights.

``roi_norm="minmax"`` reproduces the official rescaling (the global min-max of the ROI part
to [-1, 1], recomputed at every forward pass); ``brainharmony import-weights bh-f`` sets it
and stores the official tables unscaled (docs/training.md).

Tables on disk
--------------
:func:`read_roi_table` reads what the geometry stage writes (TSV with a ``roi`` name
column then ``mode_1..K`` / ``gradient_1..G``), the official CSVs (optional header row,
optional name column) and ``.npy`` matrices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from brainharmony.io import InputDataError, PathLike

__all__ = [
    "RoiTimePosEmbed",
    "read_roi_table",
    "sincos_1d",
    "sincos_nd",
    "split_even",
]

logger = logging.getLogger(__name__)

Combine = Literal["concat", "sum"]
RoiNorm = Literal["none", "minmax"]


def sincos_1d(positions: Tensor | np.ndarray | Sequence[float], dim: int) -> Tensor:
    """Fixed 1-D sin-cos embedding (MAE): ``[sin(p w_i), cos(p w_i)]``.

    Parameters
    ----------
    positions : array-like of shape (N,)
    dim : int
        Even width; ``w_i = 10000 ** (-i / (dim / 2))``.

    Returns
    -------
    Tensor of shape (N, dim), float32
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"sincos_1d: dim must be even and >= 2; got {dim}")
    if isinstance(positions, Tensor):
        positions = positions.detach().cpu().numpy()
    return torch.from_numpy(_sincos_np(np.asarray(positions, dtype=np.float64), dim))


def _sincos_np(pos: np.ndarray, dim: int) -> np.ndarray:
    """Computed in numpy (float64), so it works under any default-device context."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    arg = pos.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(arg), np.cos(arg)], axis=1).astype(np.float32)


def split_even(dim: int, parts: int) -> list[int]:
    """Split ``dim`` into ``parts`` even widths as equal as possible (largest first)."""
    if dim % 2 or dim < 2 * parts:
        raise ValueError(f"split_even: cannot split width {dim} into {parts} even parts >= 2")
    half, rem = divmod(dim // 2, parts)
    return [2 * (half + (1 if i < rem else 0)) for i in range(parts)]


def sincos_nd(grid: Sequence[int], dim: int) -> Tensor:
    """Fixed sin-cos embedding of an n-D grid, flattened in C order.

    The width is split into even parts (:func:`split_even`), one per axis, each the 1-D
    embedding of that axis' index.

    Returns
    -------
    Tensor of shape (prod(grid), dim), float32
    """
    grid = [int(g) for g in grid]
    if not grid or any(g < 1 for g in grid):
        raise ValueError(f"sincos_nd: grid sizes must be >= 1; got {grid}")
    widths = split_even(dim, len(grid))
    coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid], indexing="ij")
    parts = [_sincos_np(c, w) for c, w in zip(coords, widths, strict=True)]
    return torch.from_numpy(np.concatenate(parts, axis=1))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_roi_table(
    path: PathLike,
    *,
    n_columns: int | None = None,
    n_rois: int | None = None,
) -> np.ndarray:
    """Read a ROI x feature table (harmonics, gradients).

    Parameters
    ----------
    path : path-like
        ``.npy`` (2-D), ``.tsv`` or ``.csv``. A TSV's first row is its header; in a CSV a
        first row with a non-numeric cell (after the first) is a header (the official
        gradient CSV has none). A first column with non-numeric cells holds ROI names.
        Headers and names are dropped.
    n_columns : int, optional
        Keep the first ``n_columns`` columns (the table must have at least that many).
    n_rois : int, optional
        Required number of rows.

    Returns
    -------
    ndarray of shape (n_rois, n_columns), float64

    Raises
    ------
    InputDataError
        Missing file, unreadable or non-numeric cells, NaN/inf, too few columns, wrong
        row count.
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "ROI table not found")
    if p.suffix == ".npy":
        values = np.load(p, allow_pickle=False)
        if values.ndim != 2:
            raise InputDataError(p, f"expected a 2-D (ROI x feature) array; got {values.shape}")
        values = np.asarray(values, dtype=np.float64)
    else:
        sep = "," if p.suffix == ".csv" else "\t"
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise InputDataError(p, "empty table")
        rows = [ln.split(sep) for ln in lines]
        if len({len(r) for r in rows}) != 1:
            raise InputDataError(p, "rows have different numbers of cells")
        if (
            sep == "\t"  # TSVs (the geometry stage's) always have a header row
            or not all(_is_number(c) for c in rows[0][1:])
            or (len(rows[0]) == 1 and not _is_number(rows[0][0]))
        ):
            rows = rows[1:]
        if rows and not all(_is_number(r[0]) for r in rows):
            rows = [r[1:] for r in rows]  # ROI names
        try:
            values = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
        except ValueError as err:
            raise InputDataError(p, f"non-numeric cell: {err}") from None
        if values.ndim != 2 or values.size == 0:
            raise InputDataError(p, "no numeric ROI x feature block")
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise InputDataError(p, f"non-finite value at row {bad[0] + 1}, column {bad[1] + 1}")
    if n_rois is not None and values.shape[0] != n_rois:
        raise InputDataError(p, f"has {values.shape[0]} ROI rows; the model expects {n_rois}")
    if n_columns is not None:
        if values.shape[1] < n_columns:
            raise InputDataError(p, f"has {values.shape[1]} columns; {n_columns} were asked for")
        values = values[:, :n_columns]
    return values


def _rms_scaled(table: np.ndarray, name: str) -> Tensor:
    rms = float(np.sqrt(np.mean(np.square(table))))
    if rms == 0.0:
        raise ValueError(f"RoiTimePosEmbed: the {name} table is all zeros")
    return torch.as_tensor(table / rms, dtype=torch.float32)


class RoiTimePosEmbed(nn.Module):
    """Position embedding of the ROI x time-patch grid (module docstring).

    Parameters
    ----------
    dim : int
        Embedding width (even).
    n_rois, n_patches : int
        Grid size ``R x P``.
    harmonics : ndarray of shape (R, K), optional
        Geometric harmonics; required when ``use_harmonics``. Stored RMS-scaled.
    gradients : ndarray of shape (R, G), optional
        Functional gradients; required when ``use_gradients``.
    use_harmonics, use_gradients : bool
        Which tables feed the ROI part (both off: a free learned ROI table).
    combine : {"concat", "sum"}
        How the time and ROI parts are joined.
    time_dim : int, optional
        Width of the time part with ``combine="concat"`` (even; default ``dim // 2``
        rounded down to even).
    placeholder_shapes : (K, G), optional
        Build zero tables of these widths instead of taking arrays, to be filled by
        ``load_state_dict`` (rebuilding a saved model whose table files are absent).
    roi_norm : {"none", "minmax"}
        ``"minmax"``: rescale the whole ROI part (projected tables) to [-1, 1] by its global
        minimum and maximum at every call, as the official model (default ``"none"``).
    """

    def __init__(
        self,
        dim: int,
        n_rois: int,
        n_patches: int,
        *,
        harmonics: np.ndarray | None = None,
        gradients: np.ndarray | None = None,
        use_harmonics: bool = True,
        use_gradients: bool = True,
        combine: Combine = "concat",
        time_dim: int | None = None,
        placeholder_shapes: tuple[int, int] | None = None,
        roi_norm: RoiNorm = "none",
    ) -> None:
        super().__init__()
        if roi_norm not in ("none", "minmax"):
            raise ValueError(
                f"RoiTimePosEmbed: roi_norm must be 'none' or 'minmax'; got {roi_norm!r}"
            )
        self.roi_norm: RoiNorm = roi_norm
        if combine not in ("concat", "sum"):
            raise ValueError(f"RoiTimePosEmbed: combine must be 'concat' or 'sum'; got {combine!r}")
        if n_rois < 1 or n_patches < 1:
            raise ValueError(f"RoiTimePosEmbed: empty grid {n_rois} x {n_patches}")
        if combine == "concat":
            td = time_dim if time_dim is not None else 2 * (dim // 4)
            if td < 2 or td % 2 or td >= dim:
                raise ValueError(
                    f"RoiTimePosEmbed: time_dim must be even and in [2, {dim}); got {td}"
                )
            roi_dim = dim - td
        else:
            if dim % 2:
                raise ValueError(f"RoiTimePosEmbed: dim must be even for combine='sum'; got {dim}")
            td, roi_dim = dim, dim
        self.dim, self.n_rois, self.n_patches = int(dim), int(n_rois), int(n_patches)
        self.combine: Combine = combine
        self.time_dim, self.roi_dim = int(td), int(roi_dim)
        self.register_buffer("time_table", sincos_1d(np.arange(n_patches), td), persistent=False)

        tables: dict[str, Tensor] = {}
        wanted = {"harmonics": (use_harmonics, harmonics), "gradients": (use_gradients, gradients)}
        for i, (name, (use, arr)) in enumerate(wanted.items()):
            if not use:
                continue
            if placeholder_shapes is not None:
                width = int(placeholder_shapes[i])
                if width < 1:
                    raise ValueError(f"RoiTimePosEmbed: placeholder width of {name} must be >= 1")
                tables[name] = torch.zeros(n_rois, width)
                continue
            if arr is None:
                raise ValueError(f"RoiTimePosEmbed: use_{name} is on but no {name} table was given")
            arr = np.asarray(arr, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[0] != n_rois:
                raise ValueError(
                    f"RoiTimePosEmbed: {name} table has shape {arr.shape}; expected "
                    f"({n_rois}, n_features)"
                )
            tables[name] = _rms_scaled(arr, name)
        self.sources = tuple(tables)
        self.proj = nn.ModuleDict()
        for name, table in tables.items():
            self.register_buffer(name, table)
            self.proj[name] = nn.Linear(table.shape[1], roi_dim)
        if not tables:
            self.roi_table = nn.Parameter(torch.zeros(n_rois, roi_dim))
            nn.init.trunc_normal_(self.roi_table, std=0.02, a=-0.04, b=0.04)
        else:
            self.roi_table = None
        if placeholder_shapes is not None and tables:
            logger.info("RoiTimePosEmbed: placeholder tables; load a state dict before use")

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, grid=({self.n_rois}, {self.n_patches}), combine={self.combine}, "
            f"time_dim={self.time_dim}, sources={list(self.sources) or ['learned']}, "
            f"roi_norm={self.roi_norm}"
        )

    def roi_embedding(self) -> Tensor:
        """The ROI part, shape (R, roi_dim)."""
        if self.roi_table is not None:
            return self.roi_table
        parts = [self.proj[name](getattr(self, name)) for name in self.sources]
        roi = torch.stack(parts).mean(dim=0)
        if self.roi_norm == "minmax":
            lo, hi = roi.min(), roi.max()
            roi = (roi - lo) / (hi - lo) * 2 - 1
        return roi

    def forward(self) -> Tensor:
        """The table of shape (R, P, dim)."""
        roi = self.roi_embedding()
        r, p = self.n_rois, self.n_patches
        time = self.time_table.to(roi.dtype)
        if self.combine == "concat":
            return torch.cat([time[None].expand(r, p, -1), roi[:, None].expand(r, p, -1)], -1)
        return time[None] + roi[:, None]
