"""Quality-control figures of a functional run: FD trace, carpet plot, FC matrix.

Drawn with numpy and Pillow (no matplotlib: importing it and rendering the three
figures cost about 1.2 s of a func job). Each figure is a raster of fixed size built
from a few primitives (:class:`_Axes`: a frame with ticks and labels, polylines,
shaded spans, images resampled nearest-neighbour); the PNG holds no metadata, so
reruns give identical bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainharmony.io import PathLike, atomic_path

logger = logging.getLogger(__name__)

#: zlib level of the PNGs: 2 writes the same pixels about 2.5x faster than PIL's default
#: 6, in files of about the same size (within a few percent either way on these figures).
_PNG_COMPRESS_LEVEL = 2

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID_GRAY = (90, 90, 90)
RED = (214, 39, 40)
BLUE = (31, 119, 180)
#: ColorBrewer RdBu (11 classes), blue (-1) to red (+1): the FC matrix's diverging map.
RDBU_R = (
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _blend(color: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    """``color`` at opacity ``alpha`` over white."""
    return tuple(round(255 * (1 - alpha) + c * alpha) for c in color)  # type: ignore[return-value]


def nice_ticks(low: float, high: float, target: int = 5) -> np.ndarray:
    """Round tick values (1, 2 or 5 times a power of ten apart) within [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return np.array([low])
    raw = (high - low) / max(1, target)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = np.arange(first, high + step * 1e-9, step)
    return np.round(ticks, 12)


def _tick_label(value: float, ticks: np.ndarray) -> str:
    step = float(np.min(np.diff(ticks))) if ticks.size > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1  # 2.5, 0.25
    return f"{value:.{decimals}f}"


def _rotated_text(image: Any, xy: tuple[int, int], text: str, font: Any, anchor: str) -> None:
    """Text turned 90 degrees counter-clockwise; ``anchor`` ("rm": right-middle of the turned
    text at ``xy``, "mm": centre) places it."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    label = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(label).text((1 - left, 1 - top), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    x, y = xy
    if anchor == "mm":
        x, y = x - label.width // 2, y - label.height // 2
    elif anchor == "mt":  # top-centre of the turned text
        x = x - label.width // 2
    else:
        raise ValueError(f"unknown anchor {anchor!r}")
    image.paste(BLACK, (x, y), label)


class _Axes:
    """A plotting area of a Pillow image: data limits mapped to a pixel box.

    Parameters
    ----------
    image : PIL.Image.Image
    box : tuple of 4 int
        ``(left, top, right, bottom)`` pixels of the plotting area.
    xlim, ylim : tuple of 2 float
        Data values at the left/right and bottom/top edges (``ylim`` may run downwards,
        as an image's row axis does).
    """

    def __init__(
        self,
        image: Any,
        box: tuple[int, int, int, int],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
    ) -> None:
        from PIL import ImageDraw

        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.box = box
        x0, x1 = float(xlim[0]), float(xlim[1])
        y0, y1 = float(ylim[0]), float(ylim[1])
        self.xlim = (x0, x1 if x1 != x0 else x0 + 1.0)
        self.ylim = (y0, y1 if y1 != y0 else y0 + 1.0)

    def px(self, x: np.ndarray) -> np.ndarray:
        left, _, right, _ = self.box
        x0, x1 = self.xlim
        return left + (np.asarray(x, dtype=float) - x0) / (x1 - x0) * (right - left)

    def py(self, y: np.ndarray) -> np.ndarray:
        _, top, _, bottom = self.box
        y0, y1 = self.ylim
        return bottom - (np.asarray(y, dtype=float) - y0) / (y1 - y0) * (bottom - top)

    def line(self, x: np.ndarray, y: np.ndarray, color: tuple[int, int, int], width: int = 1):
        pts = np.c_[self.px(x), self.py(y)]
        if len(pts) > 1:
            self.draw.line([tuple(p) for p in pts.tolist()], fill=color, width=width)

    def hline(self, y: float, color: tuple[int, int, int], dash: int = 0) -> None:
        left, _, right, _ = self.box
        row = float(self.py(y))
        if dash <= 0:
            self.draw.line([(left, row), (right, row)], fill=color)
            return
        for x in range(left, right, 2 * dash):
            self.draw.line([(x, row), (min(x + dash, right), row)], fill=color)

    def vspan(self, x0: float, x1: float, color: tuple[int, int, int]) -> None:
        left, top, right, bottom = self.box
        a, b = np.clip(self.px([x0, x1]), left, right)
        self.draw.rectangle([(round(a), top), (max(round(a), round(b) - 1), bottom)], fill=color)

    def raster(self, rgb: np.ndarray) -> None:
        """An (n_rows, n_cols, 3) uint8 image filling the box (nearest neighbour)."""
        from PIL import Image

        left, top, right, bottom = self.box
        height, width = bottom - top, right - left
        rows = np.minimum((np.arange(height) + 0.5) * rgb.shape[0] / height, rgb.shape[0] - 1)
        cols = np.minimum((np.arange(width) + 0.5) * rgb.shape[1] / width, rgb.shape[1] - 1)
        pixels = rgb[np.ix_(rows.astype(int), cols.astype(int))]
        self.image.paste(Image.fromarray(np.ascontiguousarray(pixels), "RGB"), (left, top))

    def frame(
        self,
        *,
        xticks: np.ndarray | None = None,
        yticks: np.ndarray | None = None,
        xlabels: bool = True,
        font: Any = None,
    ) -> None:
        """The box outline with ticks (and their labels) below and left."""
        font = font or _font(11)
        left, top, right, bottom = self.box
        self.draw.rectangle([(left - 1, top - 1), (right, bottom)], outline=BLACK)
        if xticks is not None:
            for value in xticks:
                col = round(float(self.px(value)))
                self.draw.line([(col, bottom), (col, bottom + 4)], fill=BLACK)
                if xlabels:
                    text = _tick_label(value, xticks)
                    self.draw.text((col, bottom + 6), text, fill=BLACK, font=font, anchor="mt")
        if yticks is not None:
            for value in yticks:
                row = round(float(self.py(value)))
                self.draw.line([(left - 5, row), (left - 1, row)], fill=BLACK)
                text = _tick_label(value, yticks)
                self.draw.text((left - 7, row), text, fill=BLACK, font=font, anchor="rm")


def _new_image(width: int, height: int) -> Any:
    from PIL import Image

    return Image.new("RGB", (width, height), WHITE)


def _title(image: Any, text: str, y: int = 6, size: int = 12) -> None:
    from PIL import ImageDraw

    ImageDraw.Draw(image).multiline_text(
        (image.width // 2, y), text, fill=BLACK, font=_font(size), anchor="ma", align="center"
    )


def _save(image: Any, path: PathLike) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return Path(path)


def _trace_limits(values: np.ndarray, floor: float | None = None) -> tuple[float, float]:
    """y limits with 5 % room around ``values`` (and ``floor``, e.g. the threshold)."""
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if floor is not None:
        lo, hi = min(lo, floor), max(hi, floor)
    if hi <= lo:
        hi = lo + 1.0
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def plot_fd(
    fd: np.ndarray,
    t_r: float,
    threshold: float | None,
    keep: np.ndarray,
    path: PathLike,
    *,
    title: str = "",
) -> Path:
    """Framewise displacement over time with the threshold and censored frames.

    Parameters
    ----------
    fd : ndarray of shape (n_volumes,)
        Framewise displacement (mm); NaN first value allowed.
    t_r : float
        Repetition time in seconds.
    threshold : float or None
    keep : ndarray of bool, shape (n_volumes,)
    path : path-like
        PNG file to write.

    Returns
    -------
    Path
    """
    fd = np.nan_to_num(np.asarray(fd, dtype=float), nan=0.0)
    keep = np.asarray(keep, dtype=bool)
    if fd.shape != keep.shape:
        raise ValueError(f"fd {fd.shape} and keep {keep.shape} differ in shape")
    t = np.arange(fd.size) * float(t_r)
    image = _new_image(800, 260)
    t_end = float(t[-1]) if t.size > 1 else 1.0
    ax = _Axes(image, (66, 30, 786, 214), (0.0, t_end), _trace_limits(fd, threshold))
    shade = _blend(RED, 0.25)
    for v in np.flatnonzero(~keep):
        ax.vspan(t[v] - t_r / 2, t[v] + t_r / 2, shade)
    if threshold is not None:
        ax.hline(threshold, RED, dash=4)
    ax.line(t, fd, BLACK)
    ax.frame(xticks=nice_ticks(0.0, t_end, 8), yticks=nice_ticks(*ax.ylim, 4))
    font = _font(12)
    ax.draw.text((426, 254), "time (s)", fill=BLACK, font=font, anchor="md")
    _rotated_text(image, (12, 122), "FD (mm)", font, "mm")
    mean_fd = fd[1:].mean() if fd.size > 1 else 0
    _title(
        image,
        f"{title}  mean FD {mean_fd:.3f} mm, {int((~keep).sum())} of {fd.size} frames censored",
    )
    return _save(image, path)


def plot_carpet(
    samples: np.ndarray,
    order_key: np.ndarray,
    fd: np.ndarray,
    dvars: np.ndarray,
    t_r: float,
    path: PathLike,
    *,
    title: str = "",
    max_rows: int = 2000,
) -> Path:
    """Carpet plot (voxels x time, z-scored) with FD and DVARS traces above it.

    Parameters
    ----------
    samples : ndarray of shape (n_voxels, n_volumes)
        Voxel time series (e.g. grey-matter voxels).
    order_key : ndarray of shape (n_voxels,)
        Rows are sorted by this (e.g. network then parcel label).
    fd, dvars : ndarray of shape (n_volumes,)
    t_r : float
    path : path-like
    max_rows : int
        Rows shown (evenly subsampled).

    Returns
    -------
    Path
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"samples must have shape (n_voxels > 0, n_volumes), got {x.shape}")
    order = np.argsort(np.asarray(order_key), kind="stable")
    if order.size > max_rows:
        order = order[np.linspace(0, order.size - 1, max_rows).astype(int)]
    x = x[order]
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    x = np.divide(x, sd, out=np.zeros_like(x), where=sd > 0)
    t_end = x.shape[1] * float(t_r)
    t = np.arange(x.shape[1]) * float(t_r)
    image = _new_image(800, 550)
    left, right = 76, 786
    xticks = nice_ticks(0.0, t_end, 8)
    font, small = _font(12), _font(10)
    fd_v, dvars_v = np.nan_to_num(np.asarray(fd, float)), np.nan_to_num(np.asarray(dvars, float))
    boxes = ((left, 34, right, 90), (left, 118, right, 174), (left, 202, right, 490))
    for box, values, color, label in (
        (boxes[0], fd_v, BLACK, "FD (mm)"),
        (boxes[1], dvars_v, BLUE, "DVARS"),
    ):
        ax = _Axes(image, box, (0.0, t_end), _trace_limits(values))
        ax.line(t, values, color)
        ax.frame(xticks=xticks, yticks=nice_ticks(*ax.ylim, 2), xlabels=False, font=small)
        _rotated_text(image, (10, (box[1] + box[3]) // 2), label, small, "mm")
    # Carpet: rows top to bottom in order, z-scores from -2 (black) to 2 (white).
    ax = _Axes(image, boxes[2], (0.0, t_end), (float(x.shape[0]), 0.0))
    gray = np.clip((x + 2.0) / 4.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ax.raster(np.repeat(gray[..., None], 3, axis=2))
    ax.frame(xticks=xticks, yticks=nice_ticks(0.0, float(x.shape[0]), 8))
    ax.draw.text(((left + right) // 2, 544), "time (s)", fill=BLACK, font=font, anchor="md")
    _rotated_text(image, (10, (boxes[2][1] + boxes[2][3]) // 2), "voxels (by network)", small, "mm")
    _title(image, title, y=8)
    return _save(image, path)


def plot_fc(
    series: np.ndarray, networks: Sequence[str], path: PathLike, *, title: str = ""
) -> Path:
    """Parcel-by-parcel correlation matrix with network boundaries.

    Parameters
    ----------
    series : ndarray of shape (n_volumes, n_parcels)
        Denoised series; rows with NaN (censored) and all-NaN columns are ignored.
    networks : sequence of str, length n_parcels
        Network of each parcel (boundaries drawn where it changes).
    path : path-like

    Returns
    -------
    Path
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2 or len(networks) != x.shape[1]:
        raise ValueError(
            f"series {x.shape} and networks ({len(networks)}) disagree on the parcel count"
        )
    rows = ~np.all(np.isnan(x), axis=1)
    x = x[rows]
    good = np.all(np.isfinite(x), axis=0) & (x.shape[0] >= 3)  # no frames: nothing to show
    if good.any():
        good[good] = x[:, good].std(axis=0) > 0
    fc = np.full((x.shape[1], x.shape[1]), np.nan)
    if good.sum() >= 2 and x.shape[0] >= 3:
        fc[np.ix_(good, good)] = np.corrcoef(x[:, good].T)
    # Sort by network (stable: Schaefer order inside a network, LH then RH).
    nets = np.asarray(list(networks))
    names, first = np.unique(nets, return_index=True)
    rank = {n: i for i, n in enumerate(names[np.argsort(first)])}
    order = np.argsort([rank[n] for n in nets], kind="stable")
    fc = fc[np.ix_(order, order)]
    sorted_nets = nets[order]
    n = fc.shape[0]
    title_lines = title.count("\n") + 1
    top = 18 + 15 * title_lines
    image = _new_image(600, 520 + 15 * (title_lines - 1))
    side = 400
    box = (86, top, 86 + side, top + side)
    ax = _Axes(image, box, (-0.5, n - 0.5), (n - 0.5, -0.5))
    ax.raster(_rdbu(fc))
    bounds = np.flatnonzero(sorted_nets[1:] != sorted_nets[:-1]) + 0.5
    for b in bounds:
        col, row = round(float(ax.px(b))), round(float(ax.py(b)))
        ax.draw.line([(col, box[1]), (col, box[3])], fill=GRID_GRAY)
        ax.draw.line([(box[0], row), (box[2], row)], fill=GRID_GRAY)
    ax.frame()
    edges = np.r_[-0.5, bounds, n - 0.5]
    small = _font(10)
    for i in range(len(edges) - 1):
        centre = (edges[i] + edges[i + 1]) / 2
        label = str(sorted_nets[int(np.ceil(edges[i] + 0.5))])
        row, col = round(float(ax.py(centre))), round(float(ax.px(centre)))
        ax.draw.line([(box[0] - 4, row), (box[0] - 1, row)], fill=BLACK)
        ax.draw.text((box[0] - 6, row), label, fill=BLACK, font=small, anchor="rm")
        ax.draw.line([(col, box[3]), (col, box[3] + 4)], fill=BLACK)
        _rotated_text(image, (col, box[3] + 6), label, small, "mt")
    # Colour bar, -1 (bottom) to 1 (top).
    bar = (box[2] + 26, box[1] + 20, box[2] + 46, box[3] - 20)
    cax = _Axes(image, bar, (0.0, 1.0), (-1.0, 1.0))
    levels = np.linspace(1.0, -1.0, bar[3] - bar[1])[:, None]
    cax.raster(_rdbu(levels))
    cax.draw.rectangle([(bar[0] - 1, bar[1] - 1), (bar[2], bar[3])], outline=BLACK)
    for value in np.linspace(-1.0, 1.0, 9):
        row = round(float(cax.py(value)))
        cax.draw.line([(bar[2], row), (bar[2] + 4, row)], fill=BLACK)
        cax.draw.text((bar[2] + 6, row), f"{value:.2f}", fill=BLACK, font=small, anchor="lm")
    _rotated_text(image, (bar[2] + 60, (bar[1] + bar[3]) // 2), "Pearson r", _font(12), "mm")
    _title(image, f"{title}  ({int(good.sum())} parcels, {x.shape[0]} frames)")
    return _save(image, path)


def _rdbu(values: np.ndarray) -> np.ndarray:
    """RGB (uint8) of values in [-1, 1] on :data:`RDBU_R` (linear between its 11 colours;
    NaN white)."""
    v = np.asarray(values, dtype=float)
    pos = (np.clip(np.nan_to_num(v, nan=0.0), -1.0, 1.0) + 1.0) / 2.0 * (len(RDBU_R) - 1)
    low = np.minimum(pos.astype(int), len(RDBU_R) - 2)
    frac = (pos - low)[..., None]
    lut = np.asarray(RDBU_R, dtype=float)
    rgb = lut[low] * (1.0 - frac) + lut[low + 1] * frac
    rgb[np.isnan(v)] = WHITE
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
